"""Affine Gaussian paths, each quantity checked by a route that does not share its formula.

- α_t, σ_t against the formulas of issue 2 §3 written out here with ``math``;
- α'_t, σ'_t against autograd and against central differences;
- u_t(x | x₁) against d/dt Ψ_t(x₀ | x₁) by autograd (Lipman et al. 2023, Thm 3);
- log p_t(x | x₁) against scipy; the continuity equation by autograd, and the same
  residual check rejecting a wrong velocity;
- the conversions: round trips, and a known answer (a single data point, where every
  prediction is known by hand).

Derivation: derivations/01-gaussian-paths.md (PATH.3), derivations/05-conversions.md (CONV.1)
"""
import itertools
import math

import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import elementwise_grad
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

from fm_ref.paths import KINDS, PATHS, VP, CondOT, Cosine, LinearVP, Polynomial
from fm_ref.verify.foundation import residual_of_continuity
from strategies import dims, fewer, interior_times, paths, seeds

# Closed forms written two ways (code vs the issue's formulas here): rounding only, a few ulps
# amplified by 1/(1 − e^{−T}) ≤ ~200 for VP near t = 0.98.
CLOSED_FORM_RTOL = 1e-12
# autograd differentiates the same α, σ code that the closed-form α', σ' do not share.
AUTOGRAD_RTOL = 1e-10
# Central differences with step H: truncation H²|f'''|/6 ≲ 1e-10·1e4 (VP/LinearVP near t = 0.98)
# plus rounding ε|f|/H ≈ 2e-11, relative to max(1, |f'|).
FD_STEP = 1e-5
FD_RTOL = 1e-6
# log N from the code vs scipy: a few ulps of |log p| (scipy factorises σ²I its own way).
LOGPDF_RTOL = 1e-12
# Continuity residual relative to the sum of |terms|: autograd rounding is ~1e-15 of the terms.
CONTINUITY_RTOL = 1e-9
# A wrong velocity must leave a residual of order one; far above CONTINUITY_RTOL.
REJECT_MIN = 1e-3
# Round trips through the conversions: measured worst 5e-12 (Polynomial(3), t = 0.02, where
# x̂₁ = (x − σ x̂₀)/α divides by α = 8e-6), so 1e-10 keeps a margin of 20.
ROUND_TRIP_RTOL = 1e-10
# The single-point known answers: closed forms, a few roundings each (measured ≤ 1e-14).
KNOWN_ANSWER_RTOL = 1e-12




def rel_err(got, want):
    """max |got − want| / max |want| (a zero reference counts as scale 1e-300)."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def reference_schedule(path, t):
    """(α_t, σ_t) from the formulas in issue 2 §3, with ``math`` (no code shared)."""
    if isinstance(path, CondOT):
        return t, 1.0 - (1.0 - path.sigma_min) * t
    if isinstance(path, VP):
        T = 0.5 * (1.0 - t) ** 2 * (path.beta_max - path.beta_min) + (1.0 - t) * path.beta_min
        return math.exp(-T / 2.0), math.sqrt(1.0 - math.exp(-T))
    if isinstance(path, LinearVP):
        return t, math.sqrt(1.0 - t * t)
    if isinstance(path, Cosine):
        return math.sin(math.pi * t / 2.0), math.cos(math.pi * t / 2.0)
    assert isinstance(path, Polynomial)
    return t**path.n, 1.0 - t**path.n


# ----------------------------------------------------------------------- schedules


@given(paths(), interior_times)
def test_schedules_match_the_issue_formulas(path, t):
    alpha, sigma = reference_schedule(path, t)
    assert abs(path.alpha_t(t) - alpha) <= CLOSED_FORM_RTOL * abs(alpha)
    assert abs(path.sigma_t(t) - sigma) <= CLOSED_FORM_RTOL * abs(sigma)


@given(paths(), interior_times)
def test_derivatives_match_autograd(path, t):
    for closed, schedule in ((path.d_alpha_t, path.alpha_t), (path.d_sigma_t, path.sigma_t)):
        ad = autograd.grad(schedule)(t)
        assert abs(closed(t) - ad) <= AUTOGRAD_RTOL * abs(ad), (schedule.__name__, closed(t), ad)


@given(paths(), interior_times)
def test_derivatives_match_central_differences(path, t):
    for closed, name in ((path.d_alpha_t, "alpha"), (path.d_sigma_t, "sigma")):
        f = lambda s: reference_schedule(path, s)[0 if name == "alpha" else 1]  # noqa: E731
        fd = (f(t + FD_STEP) - f(t - FD_STEP)) / (2.0 * FD_STEP)
        assert abs(closed(t) - fd) <= FD_RTOL * max(1.0, abs(fd)), (name, closed(t), fd)


def test_derivative_checks_reject_a_wrong_derivative():
    """The autograd route sees a σ' that is off by a factor (here a wrong sign)."""
    path, t = VP(), 0.4
    assert abs(-path.d_sigma_t(t) - autograd.grad(path.sigma_t)(t)) > 1e3 * AUTOGRAD_RTOL


@given(paths(), st.lists(interior_times, min_size=1, max_size=5))
def test_array_times_agree_with_float_times(path, ts):
    t = np.array(ts)
    for method in (path.alpha_t, path.sigma_t, path.d_alpha_t, path.d_sigma_t):
        out = method(t)
        assert out.shape == t.shape and out.dtype == np.float64
        assert np.array_equal(out, [method(float(s)) for s in ts])


@pytest.mark.parametrize("name", sorted(PATHS))
def test_endpoint_values(name):
    path = PATHS[name]()
    if name == "vp":
        for bmin, bmax in ((0.1, 20.0), (0.5, 5.0)):
            vp = VP(bmin, bmax)
            a0 = math.exp(-(bmin + bmax) / 4.0)
            assert abs(vp.alpha_t(0.0) - a0) <= CLOSED_FORM_RTOL * a0
            assert abs(vp.alpha_t(0.0) ** 2 + vp.sigma_t(0.0) ** 2 - 1.0) <= CLOSED_FORM_RTOL
            assert vp.alpha_t(1.0) == 1.0 and vp.sigma_t(1.0) == 0.0
        assert abs(VP().alpha_t(0.0) - 6.5716e-3) < 1e-7  # the documented α₀ = e^{−20.1/4} ≈ 6.6e-3
        return
    assert path.alpha_t(0.0) == 0.0 and path.sigma_t(0.0) == 1.0
    assert path.alpha_t(1.0) == 1.0 and path.sigma_t(1.0) == 0.0
    for s_min in (0.0, 1e-4, 0.3, 1e-12):
        ot = CondOT(s_min)
        assert ot.alpha_t(0.0) == 0.0 and ot.sigma_t(0.0) == 1.0
        assert ot.alpha_t(1.0) == 1.0 and ot.sigma_t(1.0) == s_min  # exactly: the score divides by σ₁²


@given(interior_times)
def test_variance_preserving_paths_have_alpha2_plus_sigma2_one(t):
    for path in (VP(), VP(0.5, 5.0), LinearVP(), Cosine()):
        assert abs(path.alpha_t(t) ** 2 + path.sigma_t(t) ** 2 - 1.0) <= CLOSED_FORM_RTOL


# ------------------------------------------------------------- the conditional path


@given(paths(), interior_times, dims, seeds)
def test_conditional_velocity_is_the_time_derivative_of_the_path(path, t, d, seed):
    rng = np.random.default_rng(seed)
    x_0, x_1 = rng.standard_normal((4, d)), rng.normal(0.0, 2.0, (4, d))
    dx_dt = autograd.jacobian(lambda s: path.sample(x_0, x_1, s))(t)
    u = path.conditional_velocity(path.sample(x_0, x_1, t), x_1, t)
    assert u.shape == (4, d) and u.dtype == np.float64
    assert rel_err(u, dx_dt) <= AUTOGRAD_RTOL


@given(paths(), interior_times, dims, seeds)
def test_sample_is_sigma_x0_plus_alpha_x1(path, t, d, seed):
    rng = np.random.default_rng(seed)
    x_0, x_1 = rng.standard_normal((3, d)), rng.standard_normal((3, d))
    alpha, sigma = reference_schedule(path, t)
    assert rel_err(path.sample(x_0, x_1, t), sigma * x_0 + alpha * x_1) <= CLOSED_FORM_RTOL


@given(paths(), interior_times, dims, seeds)
def test_conditional_log_prob_matches_scipy(path, t, d, seed):
    rng = np.random.default_rng(seed)
    x, x_1 = rng.normal(0.0, 2.0, (3, d)), rng.normal(0.0, 2.0, (3, d))
    alpha, sigma = reference_schedule(path, t)
    want = [multivariate_normal(alpha * m, sigma**2 * np.eye(d)).logpdf(xi) for xi, m in zip(x, x_1)]
    got = path.conditional_log_prob(x, x_1, t)
    assert got.shape == (3,)
    assert np.all(np.abs(got - want) <= LOGPDF_RTOL * np.maximum(1.0, np.abs(want)))




def _conditional_case(path, d, seed, n=4):
    rng = np.random.default_rng(seed)
    x_1 = rng.normal(0.0, 1.5, (n, d))
    t = rng.uniform(0.05, 0.95, n)
    alpha, sigma = (np.array(v) for v in zip(*(reference_schedule(path, s) for s in t)))
    x = sigma[:, None] * rng.standard_normal((n, d)) + alpha[:, None] * x_1  # where p_t(·|x₁) has mass
    return x, x_1, t


@fewer(0.5)
@given(paths(), dims, seeds)
def test_conditional_density_satisfies_the_continuity_equation(path, d, seed):
    x, x_1, t = _conditional_case(path, d, seed)
    res = residual_of_continuity(lambda y, s: path.conditional_log_prob(y, x_1, s),
                              lambda y, s: path.conditional_velocity(y, x_1, s), x, t)
    assert res <= CONTINUITY_RTOL


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("wrong", ["sign_flipped", "sigma_term_dropped", "alpha_term_dropped"])
def test_continuity_check_rejects_a_wrong_conditional_velocity(name, wrong):
    path = PATHS[name]()
    x, x_1, t = _conditional_case(path, 2, seed=7)

    def bad_velocity(y, s):
        u = path.conditional_velocity(y, x_1, s)
        if wrong == "sign_flipped":
            return -u
        col = lambda v: anp.reshape(v, (-1, 1))  # noqa: E731
        alpha_term = col(path.d_alpha_t(s)) * x_1
        return alpha_term if wrong == "sigma_term_dropped" else u - alpha_term

    res = residual_of_continuity(lambda y, s: path.conditional_log_prob(y, x_1, s), bad_velocity, x, t)
    assert res > REJECT_MIN


# -------------------------------------------------------------------- conversions


@given(paths(), interior_times, dims, seeds)
def test_conversions_round_trip(path, t, d, seed):
    rng = np.random.default_rng(seed)
    x, value = rng.normal(0.0, 2.0, (3, d)), rng.normal(0.0, 2.0, (3, d))
    for frm, to in itertools.product(KINDS, KINDS):
        there = path.convert(value, x, t, frm, to)
        assert there.shape == value.shape and there.dtype == np.float64
        back = path.convert(there, x, t, to, frm)
        assert rel_err(back, value) <= ROUND_TRIP_RTOL, (frm, to)


@given(paths(), interior_times, dims, seeds)
def test_conversions_know_the_answer_for_a_single_data_point(path, t, d, seed):
    """With q = δ(x₁), every optimal prediction is known by hand at any x."""
    rng = np.random.default_rng(seed)
    x, x_1 = rng.normal(0.0, 2.0, (3, d)), rng.normal(0.0, 1.5, (3, d))
    alpha, sigma = reference_schedule(path, t)
    eps = (x - alpha * x_1) / sigma
    score = -(x - alpha * x_1) / sigma**2
    velocity = path.conditional_velocity(x, x_1, t)
    assert rel_err(path.convert(velocity, x, t, "velocity", "x1"), x_1) <= KNOWN_ANSWER_RTOL
    assert rel_err(path.convert(velocity, x, t, "velocity", "eps"), eps) <= KNOWN_ANSWER_RTOL
    assert rel_err(path.convert(velocity, x, t, "velocity", "score"), score) <= KNOWN_ANSWER_RTOL
    assert rel_err(path.convert(x_1, x, t, "x1", "velocity"), velocity) <= KNOWN_ANSWER_RTOL
    assert rel_err(path.convert(eps, x, t, "eps", "score"), score) <= KNOWN_ANSWER_RTOL
    # the score is also the autograd gradient of the conditional log-density
    ad_score = elementwise_grad(lambda y: path.conditional_log_prob(y, x_1, t))(x)
    assert rel_err(ad_score, score) <= AUTOGRAD_RTOL


def test_known_answer_check_rejects_a_wrong_conversion():
    path, t = CondOT(), 0.3
    x, x_1 = np.array([[0.4, -1.0]]), np.array([[1.0, 2.0]])
    velocity = path.conditional_velocity(x, x_1, t)
    # the velocity read as a score is not the score
    assert rel_err(velocity, -(x - t * x_1) / (1 - t) ** 2) > REJECT_MIN
    # flipping σ' in u = α' x̂₁ + σ' x̂₀ gives a velocity that does not convert back to x₁
    wrong = x_1 + (1.0) * (x - t * x_1) / (1 - t)
    assert rel_err(path.convert(wrong, x, t, "velocity", "x1"), x_1) > REJECT_MIN


# ------------------------------------------------------------ endpoints and errors

X2 = np.array([[0.3, -0.2], [1.0, 0.5]])
X1 = np.array([[1.0, 2.0], [-1.0, 0.0]])


@pytest.mark.parametrize("path", [VP(), LinearVP()], ids=repr)
def test_d_sigma_raises_at_one_where_it_diverges(path):
    with pytest.raises(ValueError, match=r"^t:"):
        path.d_sigma_t(1.0)
    with pytest.raises(ValueError, match=r"^t:"):
        path.d_sigma_t(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"^t:"):
        path.convert(X2, X2, 1.0, "x1", "velocity")
    assert np.isfinite(path.d_sigma_t(1.0 - 1e-9))


@pytest.mark.parametrize("path", [CondOT(), VP(), LinearVP(), Cosine(), Polynomial(2.0)], ids=repr)
def test_quantities_that_divide_by_sigma_raise_at_one(path):
    for call in (lambda: path.conditional_velocity(X2, X1, 1.0),
                 lambda: path.conditional_velocity(X2, X1, np.array([0.5, 1.0])),
                 lambda: path.conditional_log_prob(X2, X1, 1.0),
                 lambda: path.convert(X2, X2, 1.0, "x1", "eps"),
                 lambda: path.convert(X2, X2, 1.0, "eps", "score")):
        with pytest.raises(ValueError, match=r"^t:"):
            call()


def test_condot_with_sigma_min_is_defined_at_one():
    path = CondOT(1e-4)
    u = path.conditional_velocity(X2, X1, 1.0)
    # u₁(x|x₁) = x₁ + (σ'/σ)(x − x₁) with σ₁ = σ_min, σ' = −(1 − σ_min)
    want = X1 - (1.0 - 1e-4) / 1e-4 * (X2 - X1)
    assert rel_err(u, want) <= KNOWN_ANSWER_RTOL


@pytest.mark.parametrize("path", [CondOT(), LinearVP(), Cosine(), Polynomial(2.0)], ids=repr)
def test_conversions_that_divide_by_alpha_raise_at_zero(path):
    for frm, to in (("eps", "x1"), ("score", "x1"), ("eps", "velocity"), ("score", "velocity")):
        with pytest.raises(ValueError, match=r"^t:"):
            path.convert(X2, X2, 0.0, frm, to)
    # at t = 0 the eps → score conversion only divides by σ₀ = 1
    assert np.array_equal(path.convert(X2, X2, 0.0, "eps", "score"), -X2)


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("t", [-1e-12, 1.0 + 1e-12, -3.0, 2.0, float("nan"), float("inf")])
def test_time_outside_the_unit_interval_raises_naming_t(name, t):
    path = PATHS[name]()
    for call in (lambda: path.alpha_t(t), lambda: path.sigma_t(t), lambda: path.d_alpha_t(t),
                 lambda: path.d_sigma_t(t), lambda: path.sample(X2, X1, t),
                 lambda: path.conditional_velocity(X2, X1, t), lambda: path.conditional_log_prob(X2, X1, t),
                 lambda: path.convert(X2, X2, t, "x1", "eps"), lambda: path.sample(X2, X1, np.array([0.5, t]))):
        with pytest.raises(ValueError, match="^t: "):
            call()


@pytest.mark.parametrize("sigma_min", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_sigma_min_outside_zero_one_raises_naming_it(sigma_min):
    with pytest.raises(ValueError, match="sigma_min"):
        CondOT(sigma_min)


@pytest.mark.parametrize("bad", ["0.1", None, [0.1]])
def test_sigma_min_of_the_wrong_type_raises_naming_it(bad):
    with pytest.raises(TypeError, match="sigma_min"):
        CondOT(bad)


def test_hyper_parameters_out_of_range_raise_naming_them():
    with pytest.raises(ValueError, match="beta_min"):
        VP(0.0, 20.0)
    with pytest.raises(ValueError, match="beta_max"):
        VP(1.0, 0.5)
    with pytest.raises(ValueError, match="n"):
        Polynomial(0.5)


@pytest.mark.parametrize("name", sorted(PATHS))
def test_wrong_shapes_raise_naming_the_argument(name):
    path = PATHS[name]()
    with pytest.raises(ValueError, match="^t: "):
        path.sample(X2, X1, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="^t: "):
        path.conditional_velocity(X2, X1, np.array([[0.1, 0.2]]))
    with pytest.raises(ValueError, match="^x_1: "):
        path.conditional_velocity(X2, X1[:1], 0.5)
    with pytest.raises(ValueError, match="^x_1: "):
        path.conditional_log_prob(X2, np.ones((2, 3)), 0.5)
    with pytest.raises(ValueError, match="^x_0: "):
        path.sample(X2[0], X1[0], 0.5)
    with pytest.raises(ValueError, match="^x: "):
        path.conditional_velocity(np.array([[np.nan, 0.0], [0.0, 0.0]]), X1, 0.5)
    with pytest.raises(TypeError, match="^x_1: "):
        path.conditional_log_prob(X2, np.ones((2, 2), dtype=int), 0.5)
    with pytest.raises(ValueError, match="^value: "):
        path.convert(X2[0], X2, 0.5, "x1", "eps")
    with pytest.raises(ValueError, match="^frm: "):
        path.convert(X2, X2, 0.5, "noise", "eps")
    with pytest.raises(ValueError, match="^to: "):
        path.convert(X2, X2, 0.5, "eps", "x0")


def test_convert_shape_mismatch_names_value_or_x():
    """convert(value, x, t, ...) has no argument x_1; a mismatch must name value or x."""
    path = CondOT()
    with pytest.raises(ValueError, match="^(value|x): "):
        path.convert(np.ones((3, 2)), X2, 0.5, "x1", "eps")
    with pytest.raises(ValueError, match="^(value|x): "):
        path.convert(X2, np.ones((2, 3)), 0.5, "x1", "eps")


@pytest.mark.parametrize("n", [2.0, 3.0, 2.5])
def test_polynomial_sigma_is_relatively_accurate_near_one(n):
    """PATH.10: σ_t = 1 − tⁿ cancels as t → 1; against 60-digit decimal arithmetic (an
    independent route), σ_t is within 4 ulp relative for 1 − t down to 2⁻⁴⁰, where the
    plain formula errs by ~1e-4 relative; and CondOT(σ_min)'s σ_t likewise."""
    from decimal import Decimal, getcontext

    getcontext().prec = 60
    path = Polynomial(n)
    for k in (2, 10, 20, 30, 40):
        t = 1.0 - 2.0 ** -k  # exactly representable
        exact = float(1 - Decimal(t) ** Decimal(n))
        assert abs(path.sigma_t(t) - exact) <= 4 * np.finfo(float).eps * exact, (k, path.sigma_t(t), exact)
        for s_min in (1e-3, 1e-9):
            want = float((1 - Decimal(t)) + Decimal(s_min) * Decimal(t))
            assert abs(CondOT(s_min).sigma_t(t) - want) <= 4 * np.finfo(float).eps * want
    t = 1.0 - 2.0 ** -40  # the same check rejects the plain formula
    plain = 1.0 - t**n
    assert abs(plain - float(1 - Decimal(t) ** Decimal(n))) > 1e3 * np.finfo(float).eps * plain


def test_vp_with_a_constant_rate_is_allowed():
    """PATH.7 with β_min = β_max = β: T_t = (1 − t)β, α_t = e^{−(1−t)β/2}."""
    path = VP(2.0, 2.0)
    for t in (0.0, 0.3, 0.9):
        assert abs(path.alpha_t(t) - np.exp(-(1.0 - t))) <= 1e-15


def test_conversions_without_a_velocity_work_where_sigma_prime_is_infinite():
    """VP at t = 1: α = 1, σ = 0 and σ'_t is infinite. Converting ε or the score to x₁ never
    uses σ'_t, so it works there: x̂₁ = (x − σ x̂₀)/α = x and (x + σ² s)/α = x; only the
    conversions to or from the velocity need σ'_t and raise by name."""
    path = VP()
    rng = np.random.default_rng(0)
    x, value = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    np.testing.assert_allclose(path.convert(value, x, 1.0, "eps", "x1"), x, rtol=1e-15)
    np.testing.assert_allclose(path.convert(value, x, 1.0, "score", "x1"), x, rtol=1e-15)
    for frm, to in (("eps", "velocity"), ("velocity", "x1")):
        with pytest.raises(ValueError, match=r"^t:"):
            path.convert(value, x, 1.0, frm, to)


@pytest.mark.parametrize("path", [CondOT(0.0), CondOT(0.1), Cosine(), Polynomial(2.0)])
def test_derivatives_at_the_endpoint_t0_match_autograd(path):
    """α'_t, σ'_t at t = 0 exactly (a float and inside an (n,) array), against autograd of
    α_t, σ_t (DESIGN tier 1e-10): the endpoint is in the documented range [0, 1]. atol
    1e-15: where the derivative is 0 (cosine σ'_0), autograd's cos(π/2) leaves ~1e-16."""
    for f, df in ((path.alpha_t, path.d_alpha_t), (path.sigma_t, path.d_sigma_t)):
        want = autograd.grad(f)(0.0)
        assert np.isclose(df(0.0), want, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(df(np.array([0.0, 0.5])), [want, autograd.grad(f)(0.5)], rtol=1e-10, atol=1e-15)
