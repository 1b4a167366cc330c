"""Closed-form marginals of a Gaussian-mixture target, each checked by an independent route.

- log p_t against scipy: a mixture of N(α μ_k, α² Σ_k + σ² I);
- the score against autograd's gradient of log p_t;
- u_t against the autograd score pushed through the path's conversion (issue 2 §8 d);
- E[x₁|x] against Tweedie, E[x₀|x] against −σ ∇log p, and x = σ E[x₀|x] + α E[x₁|x];
- Theorem 1 (u_t generates p_t): the continuity residual by autograd, and the same check
  rejecting wrong velocities;
- known answers (a single data point, a single isotropic Gaussian, t = 0), stability and errors.

Derivation: derivations/03-mixture-marginals.md (MIX.2), derivations/03-mixture-marginals.md (MIX.6)
"""
import math
from fractions import Fraction

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import elementwise_grad
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

from fm_ref.distributions import Empirical, GaussianMixture, StandardNormal
from fm_ref.marginal import (marginal_log_prob, marginal_score, marginal_velocity, posterior_mean,
                             posterior_noise_mean)
from fm_ref.paths import PATHS, VP, CondOT, Cosine, LinearVP, Polynomial
from fm_ref.verify.foundation import residual_of_continuity
from strategies import fewer, interior_times, mixtures, paths, points, seeds

# log p_t two ways (eigendecomposition here, scipy's factorisation there): a few ulps of the
# terms of log p, i.e. of max(1, |log p|).
LOGPDF_RTOL = 1e-12
# autograd of the same log p_t against the closed-form gradient: rounding of a few ulps of the
# largest term; measured ≤ 2e-15.
AUTOGRAD_RTOL = 1e-10
# Closed-form identities between the marginal quantities (no division by α or σ).
CLOSED_FORM_RTOL = 1e-12
# Routes that divide by α_t (Tweedie, score → velocity) amplify rounding by 1/α_t (α = 8e-6 for
# Polynomial(3) at t = 0.02: plain relative error measured 3.2e-10 for Tweedie, 1.1e-10 for the
# velocity). So such errors are measured relative to the size of the terms the route sums
# (e.g. |α'|(|x| + σ²|∇log p|)/α for score → velocity), where rounding lives.
TERMS_RTOL = 1e-10
# Continuity residual relative to the sum of |terms| (issue 2 §8 e).
CONTINUITY_RTOL = 1e-9
# Backward error of a symmetric eigensolver, in ulps of ‖Σ‖ (LAPACK's bound is a small multiple
# of d·ε; 2×2 here).
EIGH_ULPS = 8.0
EPS = float(np.finfo(np.float64).eps)
# A wrong velocity leaves a residual of order one.
REJECT_MIN = 1e-3




def rel_err(got, want, scale=None):
    """max |got − want| / scale (default max |want|)."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.max(np.abs(want))) if scale is None else scale
    return float(np.max(np.abs(got - want)) / max(scale, 1e-300))


def autograd_score(target, path, x, t):
    return elementwise_grad(lambda y: marginal_log_prob(target, path, y, t))(x)


def scipy_log_prob(target, alpha, sigma, x):
    """log Σ_k w_k N(x; α μ_k, α² Σ_k + σ² I) by scipy (float α, σ)."""
    eye = np.eye(target.dim)
    comps = [np.log(w) + multivariate_normal(alpha * m, alpha**2 * c + sigma**2 * eye).logpdf(x).reshape(-1)
             for w, m, c in zip(target.weights, target.means, target.covs) if w > 0]  # log 0: no term
    return logsumexp(np.stack(comps, axis=1), axis=1)


def score_to_velocity_terms(path, x, t, score):
    """The size of the terms that score → velocity sums: x̂₀ = −σ s, x̂₁ = (x + σ² s)/α,
    u = α' x̂₁ + σ' x̂₀, so max |α'|(|x| + σ²|s|)/α + |σ'|σ|s| (rounding lives at this scale)."""
    a, s_, da, ds = path.alpha_t(t), path.sigma_t(t), path.d_alpha_t(t), path.d_sigma_t(t)
    return float(np.max(abs(da) * (np.abs(x) + s_**2 * np.abs(score)) / a + abs(ds) * s_ * np.abs(score)))


# --------------------------------------------------------- log p_t and the score


@given(mixtures(allow_empirical=True), paths(), interior_times, st.data())
def test_log_prob_matches_a_scipy_mixture(target, path, t, data):
    x = data.draw(points(target.dim))
    got = marginal_log_prob(target, path, x, t)
    want = scipy_log_prob(target, path.alpha_t(t), path.sigma_t(t), x)
    assert got.shape == (x.shape[0],) and got.dtype == np.float64
    assert np.all(np.abs(got - want) <= LOGPDF_RTOL * np.maximum(1.0, np.abs(want)))


@given(mixtures(allow_empirical=False), st.data())
def test_log_prob_at_the_endpoints_is_noise_and_data(target, data):
    x = data.draw(points(target.dim))
    for path in (CondOT(), Cosine(), LinearVP(), Polynomial(2.0)):
        at0 = marginal_log_prob(target, path, x, 0.0)
        assert np.all(np.abs(at0 - StandardNormal(target.dim).log_prob(x)) <= LOGPDF_RTOL * np.maximum(1, np.abs(at0)))
    at1 = marginal_log_prob(target, CondOT(), x, 1.0)
    assert np.all(np.abs(at1 - scipy_log_prob(target, 1.0, 0.0, x)) <= LOGPDF_RTOL * np.maximum(1, np.abs(at1)))


@given(mixtures(), paths(), interior_times, st.data())
def test_score_matches_autograd(target, path, t, data):
    x = data.draw(points(target.dim))
    score = marginal_score(target, path, x, t)
    assert score.shape == x.shape and score.dtype == np.float64
    assert rel_err(score, autograd_score(target, path, x, t)) <= AUTOGRAD_RTOL


# ------------------------------------------- velocity and posterior means (§8 d, g)


@given(mixtures(), paths(), interior_times, st.data())
def test_velocity_equals_the_converted_autograd_score(target, path, t, data):
    x = data.draw(points(target.dim))
    score = autograd_score(target, path, x, t)
    u = marginal_velocity(target, path, x, t)
    assert u.shape == x.shape and u.dtype == np.float64
    via_score = path.convert(score, x, t, "score", "velocity")
    assert rel_err(u, via_score, scale=score_to_velocity_terms(path, x, t, score)) <= TERMS_RTOL


@given(mixtures(), paths(), interior_times, st.data())
def test_posterior_mean_is_tweedie(target, path, t, data):
    """α E[x₁|x] = x + σ² ∇log p_t(x), with the autograd score (no division by α)."""
    x = data.draw(points(target.dim))
    score = autograd_score(target, path, x, t)
    alpha, sigma = path.alpha_t(t), path.sigma_t(t)
    x1_hat = posterior_mean(target, path, x, t)
    assert x1_hat.shape == x.shape and x1_hat.dtype == np.float64
    rhs = x + sigma**2 * score
    terms = float(np.max(np.abs(x) + sigma**2 * np.abs(score) + alpha * np.abs(x1_hat)))
    assert rel_err(alpha * x1_hat, rhs, scale=terms) <= TERMS_RTOL


@given(mixtures(), paths(), interior_times, st.data())
def test_posterior_noise_mean_is_minus_sigma_score(target, path, t, data):
    x = data.draw(points(target.dim))
    score = autograd_score(target, path, x, t)
    x0_hat = posterior_noise_mean(target, path, x, t)
    assert rel_err(x0_hat, -path.sigma_t(t) * score) <= AUTOGRAD_RTOL


@given(mixtures(), paths(), interior_times, st.data())
def test_posterior_means_recompose_x_and_convert_into_each_other(target, path, t, data):
    x = data.draw(points(target.dim))
    alpha, sigma = path.alpha_t(t), path.sigma_t(t)
    x0_hat, x1_hat = posterior_noise_mean(target, path, x, t), posterior_mean(target, path, x, t)
    terms = float(np.max(np.abs(x) + sigma * np.abs(x0_hat) + alpha * np.abs(x1_hat)))
    assert rel_err(sigma * x0_hat + alpha * x1_hat, x, scale=terms) <= CLOSED_FORM_RTOL
    # §8 g: the conversions map the closed-form quantities onto each other
    u, score = marginal_velocity(target, path, x, t), marginal_score(target, path, x, t)
    da, ds = path.d_alpha_t(t), path.d_sigma_t(t)
    x1_terms = float(np.max(abs(da) * np.abs(x1_hat) + abs(ds) / sigma * (np.abs(x) + alpha * np.abs(x1_hat))))
    assert rel_err(path.convert(x1_hat, x, t, "x1", "velocity"), u, scale=x1_terms) <= TERMS_RTOL
    assert rel_err(path.convert(x0_hat, x, t, "eps", "score"), score) <= CLOSED_FORM_RTOL
    gap = da * sigma - alpha * ds  # D_t, the divisor of velocity → ε
    u_terms = float(np.max(abs(da) * np.abs(x) + alpha * np.abs(u))) / abs(gap)
    assert rel_err(path.convert(u, x, t, "velocity", "eps"), x0_hat, scale=u_terms) <= TERMS_RTOL


@pytest.mark.parametrize("name", sorted(PATHS))
def test_velocity_and_tweedie_checks_reject_wrong_answers(name):
    """The same comparisons as above, fed a velocity with its σ' term dropped or its sign
    flipped, and a posterior mean from the prior weights instead of the posterior ones."""
    path, t = PATHS[name](), 0.4
    target = GaussianMixture([[-1.0, 0.5], [1.5, -0.5]], [0.3, 0.6], [0.3, 0.7])
    x = np.array([[0.2, 0.1], [-1.0, 2.0], [1.0, -0.4]])
    score = autograd_score(target, path, x, t)
    via_score = path.convert(score, x, t, "score", "velocity")
    scale = score_to_velocity_terms(path, x, t, score)
    x1_hat = posterior_mean(target, path, x, t)
    for wrong in (path.d_alpha_t(t) * x1_hat, -marginal_velocity(target, path, x, t)):
        assert rel_err(wrong, via_score, scale=scale) > REJECT_MIN
    alpha, sigma = path.alpha_t(t), path.sigma_t(t)
    prior_weighted = target.weights @ target.means + 0.0 * x  # E[x₁], not E[x₁|x]
    rhs = x + sigma**2 * score
    terms = float(np.max(np.abs(x) + sigma**2 * np.abs(score) + alpha * np.abs(x1_hat)))
    assert rel_err(alpha * prior_weighted, rhs, scale=terms) > REJECT_MIN


# ------------------------------------------------------------ Theorem 1 (§8 e)




def _marginal_case(target, path, seed, n=4):
    """Times in (0.05, 0.95) and points drawn from p_t itself, where the density has mass."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0.05, 0.95, n)
    alpha, sigma = path.alpha_t(t), path.sigma_t(t)
    x = sigma[:, None] * rng.standard_normal((n, target.dim)) + alpha[:, None] * target.sample(n, rng)
    return x, t


@fewer(0.6)
@given(mixtures(), paths(), seeds)
def test_theorem_1_marginal_velocity_generates_the_marginal_path(target, path, seed):
    x, t = _marginal_case(target, path, seed)
    res = residual_of_continuity(lambda y, s: marginal_log_prob(target, path, y, s),
                              lambda y, s: marginal_velocity(target, path, y, s), x, t)
    assert res <= CONTINUITY_RTOL


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("wrong", ["sign_flipped", "sigma_term_dropped", "prior_weights"])
def test_theorem_1_check_rejects_a_wrong_velocity(name, wrong):
    path = PATHS[name]()
    target = GaussianMixture([[-1.0, 0.5], [1.5, -0.5]], [[0.3, 0.1], [0.6, 0.2]], [0.3, 0.7])
    x, t = _marginal_case(target, path, seed=3)
    col = lambda v: anp.reshape(v, (-1, 1))  # noqa: E731

    def bad_velocity(y, s):
        if wrong == "sign_flipped":
            return -marginal_velocity(target, path, y, s)
        if wrong == "sigma_term_dropped":
            return col(path.d_alpha_t(s)) * posterior_mean(target, path, y, s)
        # Σ_k w_k u_t(x | k): the component velocities averaged with the prior weights
        comps = [marginal_velocity(GaussianMixture(m[None], c[None]), path, y, s)
                 for m, c in zip(target.means, target.covs)]
        return sum(w * u for w, u in zip(target.weights, comps))

    res = residual_of_continuity(lambda y, s: marginal_log_prob(target, path, y, s), bad_velocity, x, t)
    assert res > REJECT_MIN


# ------------------------------------------------------------------ known answers


@given(paths(), interior_times, st.integers(1, 3), seeds)
def test_a_single_data_point_gives_the_conditional_quantities(path, t, d, seed):
    """q = δ(x₁): u_t is the conditional velocity of the paths module (an independent route),
    E[x₁|x] = x₁ and ∇log p_t = −(x − α x₁)/σ², by hand."""
    rng = np.random.default_rng(seed)
    point, x = rng.normal(0.0, 1.5, (1, d)), rng.normal(0.0, 2.0, (5, d))
    target = Empirical(point)
    x_1 = np.repeat(point, 5, axis=0)
    alpha, sigma = path.alpha_t(t), path.sigma_t(t)
    u = marginal_velocity(target, path, x, t)
    assert rel_err(u, path.conditional_velocity(x, x_1, t)) <= CLOSED_FORM_RTOL
    assert rel_err(posterior_mean(target, path, x, t), x_1) <= CLOSED_FORM_RTOL
    assert rel_err(marginal_score(target, path, x, t), -(x - alpha * x_1) / sigma**2) <= CLOSED_FORM_RTOL


@given(paths(), interior_times, st.integers(1, 3), seeds)
def test_a_single_isotropic_gaussian_has_the_linear_velocity(path, t, d, seed):
    """q = N(μ, s² I): p_t = N(α μ, (α² s² + σ²) I), and the velocity is the time derivative
    of the affine map that carries its quantiles, u = α' μ + (αα' s² + σσ')/(α² s² + σ²)(x − α μ)."""
    rng = np.random.default_rng(seed)
    mu, s2 = rng.normal(0.0, 1.5, (1, d)), rng.uniform(0.05, 2.0)
    x = rng.normal(0.0, 2.0, (4, d))
    target = GaussianMixture(mu, [s2])
    a, s, da, ds = path.alpha_t(t), path.sigma_t(t), path.d_alpha_t(t), path.d_sigma_t(t)
    var = a * a * s2 + s * s
    want = da * mu + (a * da * s2 + s * ds) / var * (x - a * mu)
    assert rel_err(marginal_velocity(target, path, x, t), want) <= CLOSED_FORM_RTOL
    want_log_p = norm.logpdf(x, a * mu, np.sqrt(var)).sum(axis=1)
    assert np.all(np.abs(marginal_log_prob(target, path, x, t) - want_log_p) <= LOGPDF_RTOL * np.abs(want_log_p))


@given(mixtures(), st.data())
def test_velocity_at_time_zero_is_known(target, data):
    """At t = 0 (α₀ = 0, σ₀ = 1) the posterior is the prior: u₀(x) = α'₀ E_q[x₁] + σ'₀ x."""
    x = data.draw(points(target.dim))
    mean = target.weights @ target.means
    for path in (CondOT(), CondOT(0.2), Cosine(), LinearVP(), Polynomial(1.0), Polynomial(2.0)):
        want = path.d_alpha_t(0.0) * mean + path.d_sigma_t(0.0) * x
        assert rel_err(marginal_velocity(target, path, x, 0.0), want,
                       scale=max(1.0, float(np.max(np.abs(want))))) <= CLOSED_FORM_RTOL


# ---------------------------------------------------------------------- stability
# NumPy warnings are errors in this suite (pyproject filterwarnings, conftest errstate), so
# "no warnings" is checked by every call below returning at all.

ALL = (marginal_log_prob, posterior_mean, posterior_noise_mean, marginal_velocity, marginal_score)


def _all_finite(target, path, x, t):
    out = [f(target, path, x, t) for f in ALL]
    assert all(np.all(np.isfinite(o)) and o.dtype == np.float64 for o in out)
    return out


@fewer(0.5)
@given(mixtures(), paths(), interior_times, seeds)
def test_far_points_are_finite_and_agree_with_autograd_and_scipy(target, path, t, seed):
    x = np.random.default_rng(seed).normal(0.0, 1.0, (3, target.dim))
    x = 1e3 * x / np.linalg.norm(x, axis=1, keepdims=True)
    log_p, _, _, u, score = _all_finite(target, path, x, t)
    want = scipy_log_prob(target, path.alpha_t(t), path.sigma_t(t), x)
    assert np.all(np.abs(log_p - want) <= LOGPDF_RTOL * np.abs(want))
    assert rel_err(score, autograd_score(target, path, x, t)) <= AUTOGRAD_RTOL
    via = path.convert(score, x, t, "score", "velocity")
    assert rel_err(u, via, scale=score_to_velocity_terms(path, x, t, score)) <= TERMS_RTOL


@pytest.mark.parametrize("name", sorted(PATHS))
def test_times_near_zero_are_finite_and_satisfy_theorem_1(name):
    """At t = 1e-6 the routes that divide by α_t are meaningless (α = 1e-6 or 1e-12), so the
    independent check is the continuity residual, which divides by nothing."""
    path, t = PATHS[name](), 1e-6
    target = GaussianMixture([[-1.0, 0.5], [1.5, -0.5]], [[0.3, 0.1], [0.6, 0.2]], [0.3, 0.7])
    x = np.array([[0.2, 0.1], [-1.0, 2.0], [3.0, -4.0]])
    _all_finite(target, path, x, 0.0)
    _all_finite(target, path, x, t)
    _, _, _, _, score = _all_finite(target, path, x, t)
    assert rel_err(score, autograd_score(target, path, x, t)) <= AUTOGRAD_RTOL
    res = residual_of_continuity(lambda y, s: marginal_log_prob(target, path, y, s),
                              lambda y, s: marginal_velocity(target, path, y, s), x, np.full(3, t))
    assert res <= CONTINUITY_RTOL


@pytest.mark.parametrize("target", [Empirical([[-1.0, 0.5], [1.5, -0.5], [0.0, 2.0]]),
                                    GaussianMixture([[-1.0, 0.5], [1.5, -0.5]], [[0.3, 0.1], [0.6, 0.2]])],
                         ids=["empirical", "gaussian"])
def test_times_near_one_are_finite_and_satisfy_theorem_1(target):
    """CondOT with σ_min = 1e-4 at t = 1 − 1e-6: p_t is sharply peaked at the data points."""
    path, t = CondOT(1e-4), 1.0 - 1e-6
    x = np.array([[-1.0 + 3e-5, 0.5], [1.5, -0.5 - 1e-4], [0.0, 2.0 + 2e-4]])
    _, _, _, u, score = _all_finite(target, path, x, t)
    _all_finite(target, path, x, 1.0)
    assert rel_err(score, autograd_score(target, path, x, t)) <= AUTOGRAD_RTOL
    via = path.convert(score, x, t, "score", "velocity")
    assert rel_err(u, via, scale=score_to_velocity_terms(path, x, t, score)) <= TERMS_RTOL
    res = residual_of_continuity(lambda y, s: marginal_log_prob(target, path, y, s),
                              lambda y, s: marginal_velocity(target, path, y, s), x, np.full(3, t))
    assert res <= CONTINUITY_RTOL


def exact_log_prob_2d(cov, mu, alpha, sigma, x):
    """log N(x; α μ, α² Σ + σ² I) in d = 2 in exact rational arithmetic on the stored floats.

    Returns (log p, Mahalanobis distance, smallest eigenvalue of C), each shape (n,) or float.
    """
    a, s = Fraction(float(alpha)), Fraction(float(sigma))
    c11, c22 = a * a * Fraction(cov[0, 0]) + s * s, a * a * Fraction(cov[1, 1]) + s * s
    c12 = a * a * Fraction(cov[0, 1])
    det = c11 * c22 - c12 * c12
    maha = []
    for xi in x:
        d1, d2 = Fraction(xi[0]) - a * Fraction(mu[0]), Fraction(xi[1]) - a * Fraction(mu[1])
        maha.append(float((c22 * d1 * d1 - 2 * c12 * d1 * d2 + c11 * d2 * d2) / det))
    maha = np.array(maha)
    c_min = float(det) / float(c11 + c22)  # = λ_min λ_max / (λ_min + λ_max) ≤ λ_min ≤ 2× that
    return -0.5 * maha - 0.5 * math.log(det) - math.log(2.0 * math.pi), maha, c_min


@pytest.mark.parametrize("t", [0.5, 1.0 - 1e-6, 1.0])
@pytest.mark.parametrize("sigma_min", [0.0, 1e-4])
@pytest.mark.parametrize("rotated", [False, True])
def test_near_singular_covariance_matches_hand_computed_density(t, sigma_min, rotated):
    """Σ = R diag(1, 1e-12) Rᵀ (as stored in float64), p_t = N(α μ, α² Σ + σ² I) computed in
    exact rational arithmetic. Everything finite, and agreeing with autograd.

    For the rotated Σ a backward-stable eigh perturbs the thin eigenvalue of α²Σ by
    δ ≲ EIGH_ULPS·ε·α²‖Σ‖, which moves log p by |δ|/(2 c_min)·(1 + Mahalanobis): that bound
    is added to the tolerance (it is ~4e-3 at t = 1, measured 1.6e-5; a clamped eigenvalue
    errs by ~0.1). The unrotated Σ is exactly diagonal, keeps its eigenvalues exactly, and
    must agree to LOGPDF_RTOL."""
    path = CondOT(sigma_min)
    angle = 0.3 if rotated else 0.0
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    cov = (R * np.array([1.0, 1e-12])) @ R.T
    mu = np.array([0.5, -0.2])
    target = GaussianMixture(mu[None], cov[None])
    a, s = path.alpha_t(t), path.sigma_t(t)  # at t = 1, σ_min = 0 the density still exists: α²·1e-12 > 0
    z = np.array([[0.3, 2e-6], [-1.0, -1e-6]])  # offsets in the eigenbasis, a few std of the thin axis
    x = a * mu + z @ R.T
    want, maha, c_min = exact_log_prob_2d(cov, mu, a, s, x)
    log_p, _, _, _, score = _all_finite(target, path, x, t)
    bound = LOGPDF_RTOL * np.abs(want)
    if rotated:  # eigh's perturbation of the thin eigenvalue; an exactly diagonal Σ skips eigh
        bound = bound + EIGH_ULPS * EPS * a * a * np.max(np.abs(cov)) / c_min * (1.0 + maha)
    assert np.all(np.abs(log_p - want) <= bound), (log_p - want, bound)
    assert rel_err(score, autograd_score(target, path, x, t)) <= AUTOGRAD_RTOL


def test_near_singular_check_rejects_a_clamped_eigenvalue():
    """Treating the eigenvalue 1e-12 as 0 (p_t's thin variance σ² instead of α²·1e-12 + σ²)
    errs far beyond the bound above."""
    t, cov, mu = 1.0 - 1e-6, np.diag([1.0, 1e-12]), np.array([0.5, -0.2])
    a, s = t, 1.0 - t
    x = a * mu + np.array([[0.3, 2e-6]])
    want, maha, c_min = exact_log_prob_2d(cov, mu, a, s, x)
    clamped = marginal_log_prob(GaussianMixture(mu[None], np.diag([1.0, 0.0])[None]), CondOT(), x, t)
    bound = LOGPDF_RTOL * np.abs(want) + EIGH_ULPS * EPS * a * a / c_min * (1.0 + maha)
    assert np.all(np.abs(clamped - want) > 10 * bound)


# ------------------------------------------------------------------------ errors

DATA = Empirical([[-1.0, 0.5], [1.5, -0.5]])
XS = np.array([[0.2, 0.1], [-1.0, 2.0]])


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_an_empirical_target_at_time_one_without_sigma_min_raises(f):
    for path in (CondOT(), Cosine(), Polynomial(2.0)):
        with pytest.raises(ValueError, match="^t: "):
            f(DATA, path, XS, 1.0)
        with pytest.raises(ValueError, match="^t: "):
            f(DATA, path, XS, np.array([0.5, 1.0]))


@pytest.mark.parametrize("path", [VP(), LinearVP()], ids=repr)
def test_marginal_velocity_raises_where_sigma_prime_is_infinite(path):
    target = GaussianMixture([[0.0, 0.0]], [1.0])  # p_1 = q is a fine density, u_1 is not defined
    assert np.all(np.isfinite(marginal_log_prob(target, path, XS, 1.0)))
    with pytest.raises(ValueError, match="^t: "):
        marginal_velocity(target, path, XS, 1.0)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_bad_input_raises_naming_the_argument(f):
    path = CondOT()
    with pytest.raises(TypeError, match="^target: "):
        f(object(), path, XS, 0.5)
    with pytest.raises(TypeError, match="^target: "):
        f(DATA.means, path, XS, 0.5)
    with pytest.raises(TypeError, match="^path: "):
        f(DATA, "condot", XS, 0.5)
    with pytest.raises(ValueError, match="^x: "):
        f(DATA, path, np.ones((2, 3)), 0.5)  # dimension mismatch
    with pytest.raises(ValueError, match="^x: "):
        f(DATA, path, XS[0], 0.5)  # a single point must be (1, d)
    with pytest.raises(ValueError, match="^x: "):
        f(DATA, path, np.array([[np.nan, 0.0]]), 0.5)
    with pytest.raises(ValueError, match="^x: "):
        f(DATA, path, np.array([[np.inf, 0.0]]), 0.5)
    with pytest.raises(TypeError, match="^x: "):
        f(DATA, path, np.ones((2, 2), dtype=np.int64), 0.5)
    for t in (-0.1, 1.5, float("nan"), np.array([0.5, 0.5, 0.5]), np.array([[0.5, 0.5]])):
        with pytest.raises(ValueError, match="^t: "):
            f(DATA, path, XS, t)


@pytest.mark.parametrize("f", ALL, ids=lambda f: f.__name__)
def test_float32_points_give_float64_results(f):
    out = f(DATA, CondOT(), XS.astype(np.float32), np.array([0.3, 0.6], dtype=np.float32))
    assert out.dtype == np.float64
    assert rel_err(out, f(DATA, CondOT(), XS.astype(np.float32).astype(np.float64),
                          np.array([0.3, 0.6], dtype=np.float32).astype(np.float64))) == 0.0
