"""CNF: change of variables against closed forms, linear fields, push-forward moments,
round trips, mass conservation, the Euler-step limit, Hutchinson log-densities, errors.

Independent routes: the closed-form mixture marginal log p_t (fm_ref.marginal) and
its moments; the matrix exponential for linear fields; quadrature of exp(log p);
a discrete residual flow with slogdet log-determinants. Each check is shown to reject
a deliberately wrong CNF (the divergence with a flipped sign, a flipped velocity term).
"""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from scipy.linalg import expm

from fm_ref.cnf import CNF, FlowResult, Trajectory
from fm_ref.distributions import GaussianMixture, StandardNormal
from fm_ref.divergence import MLPTrace, divergence, divergence_hutchinson
from fm_ref.marginal import marginal_log_prob, marginal_velocity, posterior_mean, posterior_noise_mean
from fm_ref.nn import MLP
from fm_ref.paths import VP, CondOT, Cosine, LinearVP, Polynomial
from fm_ref.verify import cnf as checks
from strategies import mixtures, paths, seeds, square_matrices

# Solver tolerance of the closed-form comparisons (the setting).
TIGHT = 1e-10
# log p against the closed form at TIGHT: the bound; measured 1.8e-11 to 5.3e-11 per path.
LOG_PROB_ATOL = 1e-7
# Two solves (forward and backward) each within a few TIGHT·(1 + |y|): 100·TIGHT is ample.
FORWARD_BACKWARD_ATOL = 100 * TIGHT
# 0 → 1 → 0 at solver tolerance 1e-11: the bound for returning to x.
ROUND_TRIP_TOL, ROUND_TRIP_SOLVER = 1e-8, 1e-11
# Monte Carlo: 5 standard errors.
Z_MAX = 5.0


def mixture_target():
    """A 2-D, 3-component mixture with full covariances (its p_1 has a density on every path)."""
    means = np.array([[-1.5, 0.5], [1.0, 1.5], [0.5, -1.5]])
    covs = np.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.25, 0.0], [0.0, 0.25]]])
    return GaussianMixture(means, covs, np.array([0.3, 0.3, 0.4]))


def marginal_as_mixture(target, path, t):
    """p_t itself, as a GaussianMixture: Σ_k w_k N(α_t μ_k, α_t² Σ_k + σ_t² I) (exact, all t)."""
    a, s = path.alpha_t(t), path.sigma_t(t)
    return GaussianMixture(a * target.means, a * a * target.covs + s * s * np.eye(target.dim), target.weights)


def marginal_cnf(target, path, tol=TIGHT, **kw):
    """The CNF of the closed-form marginal velocity, base = p_0 of the path (exact)."""
    return CNF(lambda x, t: marginal_velocity(target, path, x, t), target.dim,
               base=marginal_as_mixture(target, path, 0.0), rtol=tol, atol=tol, **kw)


# VP and LinearVP have σ'_t = −∞ at t = 1, so their end time is 1 − 1e-3 (the marginal
# velocity raises at t = 1); the other paths reach t = 1.
PATHS = [(CondOT(0.05), 1.0), (VP(), 0.999), (LinearVP(), 0.999), (Cosine(), 1.0), (Polynomial(2.0), 1.0)]


# ------------------------------------------------------------------ (c) change of variables
@pytest.mark.parametrize("path,t1", PATHS, ids=lambda p: repr(p))
def test_log_prob_matches_closed_form_marginal_for_each_path(path, t1):
    """derivations/06-cnf.md (CNF.4): log p_{t1}(x) by the augmented ODE = closed form."""
    target = mixture_target()
    x = target.sample(3, np.random.default_rng(10))
    res = marginal_cnf(target, path).log_prob(x, t1=t1)
    assert isinstance(res, FlowResult) and res.nfev > 0 and res.log_prob.dtype == np.float64
    assert np.max(np.abs(res.log_prob - marginal_log_prob(target, path, x, t1))) <= LOG_PROB_ATOL


# A few drawn (mixture, path, points) cases by default; many under HYPOTHESIS_PROFILE=thorough.
_DRAWN_CASES = 3 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else 60


@given(target=mixtures(dim=2, k_max=3, min_var=0.05), path=paths(), seed=seeds)
@settings(max_examples=_DRAWN_CASES)
def test_log_prob_matches_closed_form_marginal_for_drawn_mixtures(target, path, seed):
    t1 = 0.999 if isinstance(path, (VP, LinearVP)) else 1.0
    x = target.sample(2, np.random.default_rng(seed))
    res = marginal_cnf(target, path).log_prob(x, t1=t1)
    assert np.max(np.abs(res.log_prob - marginal_log_prob(target, path, x, t1))) <= LOG_PROB_ATOL


@pytest.mark.parametrize("path", [CondOT(0.0), VP()], ids=repr)
def test_log_prob_from_zero_to_any_time_is_log_p_t(path):
    target = mixture_target()
    x = np.random.default_rng(11).normal(size=(3, 2))
    flow = marginal_cnf(target, path)
    for t in (0.3, 0.7):
        assert np.max(np.abs(flow.log_prob(x, t1=t).log_prob - marginal_log_prob(target, path, x, t))) <= LOG_PROB_ATOL


def test_the_change_of_variables_check_rejects_a_flipped_divergence():
    # (the check itself, cnf-change-of-variables, runs in tests/test_verify.py)
    target, path = mixture_target(), CondOT(0.05)
    x = target.sample(3, np.random.default_rng(10))
    flow = marginal_cnf(target, path)
    wrong = CNF(flow.velocity, 2, base=flow.base, rtol=1e-6, atol=1e-6,  # the gap is O(1): loose is enough
                divergence_fn=lambda z, t: -divergence(flow.velocity, z, t))
    assert np.max(np.abs(wrong.log_prob(x).log_prob - marginal_log_prob(target, path, x, 1.0))) > 1e3 * LOG_PROB_ATOL


def test_sample_with_log_prob_agrees_with_log_prob():
    mlp = MLP(2, (16, 16))
    flow = CNF.from_mlp(mlp, mlp.init(np.random.default_rng(12), scale=1.5), rtol=TIGHT, atol=TIGHT)
    fwd = flow.sample_with_log_prob(20, np.random.default_rng(13))
    back = flow.log_prob(fwd.x)
    assert fwd.nfev > 0 and back.nfev > 0
    assert np.max(np.abs(fwd.log_prob - back.log_prob)) <= FORWARD_BACKWARD_ATOL
    # the pulled-back points are the base samples (same seed draws them first)
    x0 = flow.base.sample(20, np.random.default_rng(13))
    assert np.max(np.abs(back.x - x0)) <= FORWARD_BACKWARD_ATOL


# --------------------------------------------------------------------------- (d) linear fields
def linear_flow_closed_form(A0, b0, t):
    """v = (1 + t)(A0 x + b0): x(t) = Φ x₀ + m, Φ = e^{c A0}, m = A0⁻¹(Φ − I) b0, c = t + t²/2.

    m comes from the exponential of the block matrix [[cA0, c b0], [0, 0]] (no inverse).
    Derivation: derivations/06-cnf.md (CNF.6)
    """
    d = A0.shape[0]
    c = t + 0.5 * t * t
    block = np.zeros((d + 1, d + 1))
    block[:d, :d], block[:d, d] = c * A0, c * b0
    E = expm(block)
    return E[:d, :d], E[:d, d]


@pytest.mark.parametrize("t0, t1", [(0.2, 0.9), (0.9, 0.2), (1.0, 0.0)])
def test_log_prob_and_sample_with_log_prob_on_any_interval_and_direction(t0, t1):
    """derivations/06-cnf.md (CNF.4), (CNF.5), (CNF.6) on an interval [t0, t1] of either
    direction, with a non-standard base at t0 (a Gaussian N(μ, Σ)), exact and through the
    Hutchinson route with explicit probes: x(t1) = Φ₀₁ x(t0) + m₀₁ with Φ₀₁ = Φ(t1)Φ(t0)⁻¹, m₀₁ = m(t1) − Φ₀₁ m(t0), so
    p_{t1} = N(Φ₀₁ μ + m₀₁, Φ₀₁ Σ Φ₀₁ᵀ) exactly."""
    A0, b0 = np.array([[0.2, 1.0], [-0.5, 0.4]]), np.array([0.3, -0.6])
    mu, cov = np.array([0.5, -1.0]), np.array([[1.0, 0.3], [0.3, 0.5]])
    base = GaussianMixture(mu[None], cov[None])
    flow = CNF(lambda x, t: (1.0 + t) * (x @ A0.T + b0), 2, base=base, rtol=TIGHT, atol=TIGHT)
    (P0, m0), (P1, m1) = linear_flow_closed_form(A0, b0, t0), linear_flow_closed_form(A0, b0, t1)
    Phi = P1 @ np.linalg.inv(P0)
    target = GaussianMixture((Phi @ mu + m1 - Phi @ m0)[None], (Phi @ cov @ Phi.T)[None])
    y = np.random.default_rng(37).normal(size=(6, 2))
    assert np.max(np.abs(flow.log_prob(y, t0=t0, t1=t1).log_prob - target.log_prob(y))) <= LOG_PROB_ATOL
    drawn = flow.sample_with_log_prob(6, np.random.default_rng(38), t0=t0, t1=t1)
    assert np.max(np.abs(drawn.log_prob - target.log_prob(drawn.x))) <= LOG_PROB_ATOL
    # the Hutchinson route with the K = d probes ε_k = √d e_k: the mean of ε_kᵀ J ε_k is
    # Σ_k J_kk = tr J exactly, for any J, so it must give the exact answer too
    basis = np.stack([np.tile(e, (6, 1)) for e in np.eye(2)]) * np.sqrt(2.0)
    hutch = flow.log_prob(y, t0=t0, t1=t1, divergence="hutchinson", eps=basis)
    assert np.max(np.abs(hutch.log_prob - target.log_prob(y))) <= LOG_PROB_ATOL


@given(A0=square_matrices(dim=2, scale=0.7))
@settings(max_examples=6)
def test_linear_field_push_forward_and_log_prob_match_the_gaussian(A0):
    b0 = np.array([0.3, -0.6])
    flow = CNF(lambda x, t: (1.0 + t) * (x @ A0.T + b0), 2, rtol=TIGHT, atol=TIGHT)
    x0 = np.random.default_rng(14).normal(size=(4, 2))
    for t in (0.5, 1.0):
        Phi, m = linear_flow_closed_form(A0, b0, t)
        moved = flow.push_forward(x0, 0.0, t)
        # the local error per step is ≤ TIGHT·(1 + |x|); tens of steps accumulate: 100x
        assert np.max(np.abs(moved.x - (x0 @ Phi.T + m))) <= 100 * TIGHT * (1 + np.abs(moved.x).max())
        gauss = GaussianMixture(m[None], (Phi @ Phi.T)[None])
        y = moved.x + 0.5  # any points: the density is compared pointwise
        assert np.max(np.abs(flow.log_prob(y, t1=t).log_prob - gauss.log_prob(y))) <= LOG_PROB_ATOL


def test_the_linear_check_passes_and_rejects_a_flipped_divergence():
    assert checks.check_linear_field().passed
    A0, b0 = np.array([[0.2, 1.0], [-0.5, 0.4]]), np.zeros(2)
    wrong = CNF(lambda x, t: (1.0 + t) * (x @ A0.T), 2, rtol=TIGHT, atol=TIGHT,
                divergence_fn=lambda x, t: -(1.0 + t) * np.trace(A0) * np.ones(x.shape[0]))
    Phi, m = linear_flow_closed_form(A0, b0, 1.0)
    y = np.ones((2, 2))
    gauss = GaussianMixture(m[None], (Phi @ Phi.T)[None])
    assert np.max(np.abs(wrong.log_prob(y).log_prob - gauss.log_prob(y))) > 0.1


# ---------------------------------------------------------------------------- (e) push-forward
def moment_z_scores(samples, mean, cov):
    """|sample moment − exact| / standard error, for the mean and every covariance entry."""
    n = samples.shape[0]
    centred = samples - mean
    z_mean = np.abs(samples.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
    prods = centred[:, :, None] * centred[:, None, :]
    z_cov = np.abs(prods.mean(0) - cov) / (prods.std(0, ddof=1) / np.sqrt(n))
    return max(z_mean.max(), z_cov.max())


@pytest.mark.parametrize("t", [0.6, 1.0])
def test_push_forward_has_the_marginal_moments(t):
    target, path = mixture_target(), CondOT(0.05)
    flow = CNF(lambda x, s: marginal_velocity(target, path, x, s), 2, rtol=1e-7, atol=1e-7)
    res = flow.sample(2000, np.random.default_rng(15), t1=t)
    a, s = path.alpha_t(t), path.sigma_t(t)
    mean, cov = a * target.mean(), a * a * target.covariance() + s * s * np.eye(2)
    assert moment_z_scores(res.x, mean, cov) <= Z_MAX


def test_the_moment_check_rejects_a_flipped_noise_term():
    target, path = mixture_target(), CondOT(0.05)

    def wrong_velocity(x, s):  # α'E[x₁|x] − σ'E[x₀|x]: the σ' term with the wrong sign
        return (path.d_alpha_t(s) * posterior_mean(target, path, x, s)
                - path.d_sigma_t(s) * posterior_noise_mean(target, path, x, s))

    res = CNF(wrong_velocity, 2, rtol=1e-7, atol=1e-7).sample(2000, np.random.default_rng(15), t1=0.6)
    a, s = path.alpha_t(0.6), path.sigma_t(0.6)
    assert moment_z_scores(res.x, a * target.mean(), a * a * target.covariance() + s * s * np.eye(2)) > Z_MAX


def test_round_trip_zero_one_zero_returns_x():
    target, path = mixture_target(), CondOT(0.05)
    flow = marginal_cnf(target, path, tol=ROUND_TRIP_SOLVER)
    x0 = np.random.default_rng(16).normal(size=(10, 2))
    there = flow.push_forward(x0, 0.0, 1.0)
    back = flow.push_forward(there.x, 1.0, 0.0)
    assert there.nfev > 0 and back.t1 == 0.0
    assert np.max(np.abs(back.x - x0)) <= ROUND_TRIP_TOL
    assert np.max(np.abs(there.x - x0)) > 0.1  # the flow did move the points


def test_trajectory_matches_push_forward_and_nfev_counts_calls():
    mlp = MLP(2, (8,))
    params = mlp.init(np.random.default_rng(17))
    calls = []

    def v(x, t):
        calls.append(t)
        return mlp.apply(params, x, t)

    flow = CNF(v, 2, rtol=TIGHT, atol=TIGHT)
    x = np.random.default_rng(18).normal(size=(5, 2))
    ts = np.linspace(0.0, 1.0, 5)
    traj = flow.trajectory(x, ts)
    assert isinstance(traj, Trajectory) and traj.xs.shape == (5, 5, 2)
    assert traj.nfev == len(calls)  # nfev is the number of right-hand-side evaluations
    assert np.array_equal(traj.xs[0], x)
    for k in (2, 4):  # two solves, each within tens of local errors TIGHT·(1 + |x|) of the path
        assert np.max(np.abs(traj.xs[k] - flow.push_forward(x, 0.0, ts[k]).x)) <= 100 * TIGHT


def test_a_solver_failure_raises_with_the_solver_message():
    flow = CNF(lambda x, t: x * x, 1, rtol=1e-8, atol=1e-8)  # blows up at t = 1/x₀ = 0.1
    with pytest.raises(RuntimeError, match="solve_ivp"):
        flow.push_forward(np.array([[10.0]]))


# ---------------------------------------------------------------------------- (f) mass
# The bounds. Measured: 2.5e-11 (d = 1, quad) and 1.0e-9 (d = 2, grid); what they
# must reject, a wrong-sign divergence, gives a mass off by 0.43 and −0.14.
MASS_D1_TOL = 1e-6
MASS_D2_TOL = 1e-3


def test_mass_is_one_in_d1_by_adaptive_quadrature():
    result = checks.check_mass_d1()
    assert result.passed, result


def test_the_d1_mass_check_rejects_a_wrong_sign_divergence():
    flow = checks.mass_d1_flow()
    wrong = CNF(flow.velocity, 1, rtol=1e-9, atol=1e-9, divergence_fn=lambda x, t: -flow._vdiv(x, t)[1])
    grid = np.linspace(-checks.MASS_D1_HALF_WIDTH, checks.MASS_D1_HALF_WIDTH, 801)
    mass = np.trapezoid(np.exp(wrong.log_prob(grid[:, None]).log_prob), grid)
    assert abs(mass - 1.0) > 1e3 * MASS_D1_TOL


def grid_mass(flow, n_nodes, half_width=8.0):
    """∫ exp(log p) over [−L, L]² by the tensor trapezoid rule (spectral for smooth, decaying p)."""
    g = np.linspace(-half_width, half_width, n_nodes)
    X, Y = np.meshgrid(g, g)
    res = flow.log_prob(np.column_stack([X.ravel(), Y.ravel()]))
    return np.sum(np.exp(res.log_prob)) * (g[1] - g[0]) ** 2, res


def test_mass_is_one_in_d2_on_a_grid_and_rejects_a_wrong_sign():
    mlp = MLP(2, (16, 16))
    flow = CNF.from_mlp(mlp, mlp.init(np.random.default_rng(2)), rtol=1e-8, atol=1e-8)
    coarse, _ = grid_mass(flow, 41)
    fine, res = grid_mass(flow, 61)
    # observed convergence: 41 → 61 nodes per axis (measured 8e-6 → 1e-9)
    assert abs(fine - 1.0) <= MASS_D2_TOL and abs(fine - 1.0) <= abs(coarse - 1.0)
    assert np.exp(res.log_prob).reshape(61, 61)[[0, -1], :].max() < 1e-12  # negligible mass at the edge
    wrong = CNF(flow.velocity, 2, rtol=1e-6, atol=1e-6, divergence_fn=lambda x, t: -flow._vdiv(x, t)[1])
    assert abs(grid_mass(wrong, 41)[0] - 1.0) > 10 * MASS_D2_TOL  # measured mass − 1 ≈ −0.14


# ---------------------------------------------------------------------------- (g) Euler limit
def euler_flow_log_prob(mlp, params, x0, steps, sign=1.0):
    """K residual steps x ← x + h v(x, t) as a discrete flow; returns (x_K, log p_K(x_K)).

    log p_K(x_K) = log p₀(x₀) − Σ_k log|det(I + h J_k)|.  Derivation: derivations/06-cnf.md (CNF.11)
    """
    h = 1.0 / steps
    x, log_p = x0, StandardNormal(x0.shape[1]).log_prob(x0)
    eye = np.eye(x0.shape[1])
    for k in range(steps):
        v, J = mlp.value_and_jacobian(params, x, k * h)
        sgn, logdet = np.linalg.slogdet(eye + h * J)
        assert np.all(sgn > 0)
        log_p = log_p - sign * logdet
        x = x + h * v
    return x, log_p


def euler_errors(sign=1.0, ks=(8, 16, 32, 64, 128)):
    mlp = MLP(2, (16, 16))
    params = mlp.init(np.random.default_rng(19), scale=1.5)
    flow = CNF.from_mlp(mlp, params, rtol=1e-11, atol=1e-11)
    x0 = np.random.default_rng(20).normal(size=(6, 2))
    errs = []
    for k in ks:
        xk, lp = euler_flow_log_prob(mlp, params, x0, k, sign)
        errs.append(np.max(np.abs(lp - flow.log_prob(xk).log_prob)))
    return np.array(errs)


def test_euler_steps_converge_to_the_cnf_at_first_order():
    """Error(K)/Error(2K) → 2: measured 8→128 ratios ≈ 1.9–2.0."""
    errs = euler_errors()
    ratios = errs[:-1] / errs[1:]
    assert np.all(np.abs(ratios[1:] - 2.0) <= 0.3), (errs, ratios)
    assert errs[-1] < errs[0] / 10
    # with the log-determinant's sign flipped the error does not shrink
    wrong = euler_errors(sign=-1.0, ks=(32, 128))
    assert wrong[1] > 0.5 * wrong[0] and wrong[1] > 100 * errs[-1]


# ---------------------------------------------------------------------------- Hutchinson in the ODE
def test_hutchinson_log_prob_is_unbiased_with_a_fixed_probe():
    mlp = MLP(2, (16, 16))
    flow = CNF.from_mlp(mlp, mlp.init(np.random.default_rng(21), scale=1.5), rtol=1e-8, atol=1e-8)
    x = np.random.default_rng(22).normal(size=(2, 2))
    k = 500
    est = flow.log_prob(np.tile(x, (k, 1)), divergence="hutchinson", rng=np.random.default_rng(23)).log_prob
    est = est.reshape(k, 2)
    exact = flow.log_prob(x).log_prob
    se = est.std(0, ddof=1) / np.sqrt(k)
    assert np.all(np.abs(est.mean(0) - exact) <= Z_MAX * se)
    assert np.all(est.std(0) > 1e-3)  # genuinely stochastic, so the test can fail
    # the same probe array gives the same answer: the probe is held fixed within a solve
    eps = np.random.default_rng(24).choice([-1.0, 1.0], size=(1, 2, 2))
    a = flow.log_prob(x, divergence="hutchinson", eps=eps).log_prob
    assert np.array_equal(a, flow.log_prob(x, divergence="hutchinson", eps=eps).log_prob)


def test_threaded_right_hand_side_matches_the_serial_one():
    mlp = MLP(2, (16, 16))
    params = mlp.init(np.random.default_rng(25))
    x = np.random.default_rng(26).normal(size=(101, 2))
    serial = CNF.from_mlp(mlp, params).log_prob(x)
    threaded = CNF.from_mlp(mlp, params, workers=2).log_prob(x)
    # the same arithmetic on slices: BLAS blocking may differ by a few ulps per step
    assert threaded.nfev == serial.nfev and np.max(np.abs(threaded.log_prob - serial.log_prob)) <= 1e-12


class _TooManyEvaluations(Exception):
    pass


def test_a_probe_redrawn_at_every_evaluation_breaks_the_solver():
    """The trap of derivations/06-cnf.md (CNF.9): with a fresh probe per call the right-hand
    side is noise, the step size collapses, and the solve does not finish in 15x the NFE of
    the fixed-probe solve (measured: the fixed probe needs 62; the redrawn one > 5 minutes)."""
    mlp = MLP(2, (16, 16))
    params = mlp.init(np.random.default_rng(21), scale=1.5)
    v = lambda x, t: mlp.apply(params, x, t)  # noqa: E731
    x = np.random.default_rng(22).normal(size=(20, 2))
    fixed = CNF(v, 2, rtol=1e-6, atol=1e-6).log_prob(x, divergence="hutchinson", rng=np.random.default_rng(1))
    rng, calls = np.random.default_rng(0), [0]

    def redrawn(z, t):
        calls[0] += 1
        if calls[0] > 15 * fixed.nfev:
            raise _TooManyEvaluations
        return divergence_hutchinson(v, z, t, rng)

    with pytest.raises(_TooManyEvaluations):
        CNF(v, 2, rtol=1e-6, atol=1e-6, divergence_fn=redrawn).log_prob(x)


# ---------------------------------------------------------------------------- (h) bad input
def test_bad_input_raises_naming_the_argument():
    v = lambda x, t: -x  # noqa: E731
    with pytest.raises(TypeError, match="velocity"):
        CNF("v", 2)
    with pytest.raises(ValueError, match="dim"):
        CNF(v, 0)
    with pytest.raises(ValueError, match="method"):
        CNF(v, 2, method="Euler")
    with pytest.raises(ValueError, match="rtol"):
        CNF(v, 2, rtol=0.0)
    with pytest.raises(ValueError, match="atol"):
        CNF(v, 2, atol=np.nan)
    with pytest.raises(ValueError, match="base"):
        CNF(v, 2, base=StandardNormal(3))
    with pytest.raises(TypeError, match="base"):
        CNF(v, 2, base="normal")
    with pytest.raises(TypeError, match="divergence_fn"):
        CNF(v, 2, divergence_fn=1.0)
    flow = CNF(v, 2)
    with pytest.raises(ValueError, match=r"^x:"):
        flow.push_forward(np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"^x:"):
        flow.log_prob(np.array([[np.inf, 0.0]]))
    with pytest.raises(ValueError, match="t0"):
        flow.push_forward(np.zeros((1, 2)), t0=-0.1)
    with pytest.raises(ValueError, match="t1"):
        flow.log_prob(np.zeros((1, 2)), t1=1.5)
    with pytest.raises(ValueError, match="divergence"):
        flow.log_prob(np.zeros((1, 2)), divergence="trace")
    with pytest.raises(TypeError, match="rng"):
        flow.log_prob(np.zeros((1, 2)), divergence="hutchinson")
    with pytest.raises(ValueError, match="probe"):
        flow.log_prob(np.zeros((1, 2)), divergence="hutchinson", rng=np.random.default_rng(0), probe="x")
    with pytest.raises(ValueError, match="eps"):
        flow.log_prob(np.zeros((1, 2)), divergence="hutchinson", eps=np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match=r"^n:"):
        flow.sample(0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        flow.sample_with_log_prob(3, 0)
    with pytest.raises(ValueError, match=r"^ts:"):
        flow.trajectory(np.zeros((1, 2)), [0.0, 0.5, 0.2])
    with pytest.raises(ValueError, match=r"^ts:"):
        flow.trajectory(np.zeros((1, 2)), [0.5])
    with pytest.raises(ValueError, match="velocity"):
        CNF(lambda x, t: x[:, :1], 2).push_forward(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="divergence_fn"):
        CNF(v, 2, divergence_fn=lambda x, t: np.zeros((x.shape[0], 1))).log_prob(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="mlp"):
        CNF.from_mlp("mlp", [])
    with pytest.raises(ValueError, match="workers"):
        CNF.from_mlp(MLP(2, (4,)), MLP(2, (4,)).init(np.random.default_rng(0)), workers=0)
    mlp = MLP(2, (4,))
    with pytest.raises(ValueError, match="params"):
        CNF.from_mlp(mlp, MLP(3, (4,)).init(np.random.default_rng(0)))
    with pytest.raises(ValueError, match=r"^rtol:"):  # solve_ivp would quietly use 2.2e-14
        CNF(v, 2, rtol=1e-20)
    with pytest.raises(ValueError, match=r"^eps:"):  # no probes at all
        flow.log_prob(np.zeros((1, 2)), divergence="hutchinson", eps=np.ones((0, 1, 2)))
    with pytest.raises(ValueError, match=r"^n_probes:"):  # eps holds 2 probes
        flow.log_prob(np.zeros((1, 2)), divergence="hutchinson", eps=np.ones((2, 1, 2)), n_probes=5)


class _BadBase(StandardNormal):
    """A base distribution whose outputs break the contract in one chosen way."""

    def __init__(self, dim, fault):
        super().__init__(dim)
        self.fault = fault

    def log_prob(self, x):
        out = super().log_prob(x)
        return {"column": out[:, None], "nan": out * np.nan}.get(self.fault, out)

    def sample(self, n, rng):
        out = super().sample(n, rng)
        return np.concatenate([out, out[:, :1]], axis=1) if self.fault == "wide" else out


def test_non_finite_fields_and_bad_bases_raise_instead_of_hanging_or_returning_garbage():
    """A NaN slope at the first evaluation used to send solve_ivp round without end
    (t = NaN); it raises FloatingPointError naming the culprit. A base that returns
    log-densities of shape (n, 1), NaN log-densities or samples of the wrong dimension
    is caught where it is called."""
    x = np.ones((3, 2))
    with pytest.raises(FloatingPointError, match=r"^velocity:"):
        CNF(lambda z, t: z * np.nan, 2).push_forward(x)
    with pytest.raises(FloatingPointError, match=r"^velocity:"):
        CNF(lambda z, t: z * np.nan, 2).log_prob(x)
    with np.errstate(invalid="ignore"):  # the field's own log(negative) is not the point here
        with pytest.raises(FloatingPointError, match=r"^divergence:"):
            CNF(lambda z, t: -z, 2, divergence_fn=lambda z, t: np.log(z[:, 0] - 5.0)).log_prob(x)
    with pytest.raises(ValueError, match=r"^base.log_prob:"):
        CNF(lambda z, t: -z, 2, base=_BadBase(2, "column")).log_prob(x)
    with pytest.raises(FloatingPointError, match=r"^base.log_prob:"):
        CNF(lambda z, t: -z, 2, base=_BadBase(2, "nan")).sample_with_log_prob(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^base.sample:"):
        CNF(lambda z, t: -z, 2, base=_BadBase(2, "wide")).sample_with_log_prob(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^base.sample:"):
        CNF(lambda z, t: -z, 2, base=_BadBase(2, "wide")).sample(3, np.random.default_rng(0))


def test_a_field_independent_of_x_has_zero_divergence_and_no_warning():
    """v(x, t) = (t, −t): the autograd trace is 0 and log p moves only with x (tests run
    with warnings as errors, so the warning autograd gives for such a field would fail)."""
    import autograd.numpy as anp

    flow = CNF(lambda z, t: anp.ones(z.shape) * anp.array([t, -t]), 2)
    x = np.random.default_rng(34).normal(size=(4, 2))
    res = flow.log_prob(x)
    shift = np.array([0.5, -0.5])  # ∫₀¹ (t, −t) dt: x(0) = x(1) − shift
    # a field linear in t and constant in x: every Runge–Kutta step is exact, so only
    # rounding remains (a few ulps of O(1) numbers)
    assert np.max(np.abs(res.x - (x - shift))) <= 1e-12
    assert np.max(np.abs(res.log_prob - StandardNormal(2).log_prob(x - shift))) <= 1e-12


def test_from_mlp_takes_the_dimension_from_the_mlp_input():
    """An MLP built with in_dim = out_dim = 3 (dim = 2 only sets the defaults) is a 3-D
    field: the flow and the adjoint work in 3-D, and 2-D points are refused by name."""
    mlp = MLP(2, (6,), in_dim=3, out_dim=3)
    params = mlp.init(np.random.default_rng(35))
    x = np.random.default_rng(36).normal(size=(4, 3))
    flow = CNF.from_mlp(mlp, params)
    assert flow.dim == 3 and flow.log_prob(x).log_prob.shape == (4,)
    from fm_ref.adjoint import adjoint_nll_grad

    loss, _ = adjoint_nll_grad(mlp, params, x)
    assert abs(loss + np.mean(flow.log_prob(x).log_prob)) <= 1e-6  # two solves at tolerance 1e-8
    with pytest.raises(ValueError, match=r"^x:"):
        flow.log_prob(x[:, :2])


# ---------------------------------------------------------------------------- benchmark smoke test
def test_the_benchmark_runs_and_reports_small_errors():
    """Not a timing test: the benchmark's functions run on a tiny problem and return dicts."""
    from fm_ref.bench import cnf as bench_cnf

    res = bench_cnf.run_all(quick=True, n=20, hidden=(8,), dims=(2, 3))
    text = bench_cnf.format_report(res)
    assert "NFE" in text and res["machine"]["cores"] >= 1
    rows = res["log_likelihood"]["rows"]
    assert {r["method"] for r in rows} == {"DOP853", "RK45"} and all(r["nfev"] > 0 for r in rows)
    assert all(r["max_err"] <= 1e3 * r["tol"] for r in rows)  # errors track the tolerance
    assert [r["dim"] for r in res["dimensions"]["rows"]] == [2, 3]


def _slice_field(x, t):
    """A pointwise field that fails (log of a negative under errors-raise) on rows with
    x₀ > 50: placing such a row picks which slice fails."""
    if np.any(x[:, 0] > 50.0):
        return np.log(-x), x[:, 0]
    return 2.0 * x, x[:, 0] * t


def _all_stop(threads):
    """True when the threads end within a second, after a garbage collection (call it
    once the last reference to their SplitBatch is gone)."""
    import gc

    gc.collect()
    for th in threads:
        th.join(timeout=1.0)
    return not any(th.is_alive() for th in threads)


def test_split_batch_is_reproducible_and_stops_its_threads():
    """fm_ref._threads.SplitBatch: the same call twice gives bit-identical output, equal to
    the unsplit field; a new shape with the same n gets new buffers; dropping the object
    ends its worker threads."""
    from fm_ref._threads import SplitBatch

    split = SplitBatch(lambda: _slice_field, 3)
    x = np.random.default_rng(27).normal(size=(30, 2))
    v1, d1 = (a.copy() for a in split(x, 0.5))
    v2, d2 = split(x, 0.5)
    assert np.array_equal(v1, v2) and np.array_equal(d1, d2) and np.array_equal(v1, 2.0 * x)
    x3 = np.random.default_rng(28).normal(size=(30, 3))
    assert np.array_equal(split(x3, 0.5)[0], 2.0 * x3)
    with pytest.raises(ValueError, match="workers"):
        SplitBatch(lambda: _slice_field, 1)
    threads = list(split._threads)
    assert threads and all(th.is_alive() for th in threads)
    del split
    assert _all_stop(threads)


@pytest.mark.parametrize("bad_rows", [[-1], [0, -1], [12, -1]], ids=["worker", "caller-and-worker", "two-workers"])
def test_split_batch_raises_every_slice_error_and_leaves_none_behind(bad_rows):
    """An error in any slice reaches the caller (the worker runs under the caller's
    errstate); the object stays usable; no error is left holding the object, so its
    threads still stop when it is dropped."""
    from fm_ref._threads import SplitBatch

    split = SplitBatch(lambda: _slice_field, 3)
    x = np.random.default_rng(27).normal(size=(30, 2))
    bad = x.copy()
    bad[bad_rows, 0] = 100.0
    with pytest.raises(FloatingPointError):
        split(bad, 0.5)
    assert np.array_equal(split(x, 0.5)[1], 0.5 * x[:, 0])
    with pytest.raises(FloatingPointError):  # dropped right after a failed call
        split(bad, 0.5)
    threads = list(split._threads)
    del split
    assert _all_stop(threads)


def test_split_batch_passes_the_error_callback_and_works_in_a_forked_child():
    """errstate(invalid='call') reaches the workers with the caller's callback; in a child
    forked after the threads started (they do not survive a fork) the slices run on the
    calling thread instead of waiting for workers that are gone."""
    import os

    from fm_ref._threads import SplitBatch

    split = SplitBatch(lambda: _slice_field, 2)
    x = np.random.default_rng(27).normal(size=(30, 2))
    bad = x.copy()
    bad[-1, 0] = 100.0
    seen = []
    with np.errstate(invalid="call", call=lambda kind, flag: seen.append(kind)):
        split(bad, 0.5)
    assert "invalid value" in seen
    split(x, 0.5)
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the split call returns the right values
        import signal

        signal.alarm(20)  # a wait for the parent's workers would hang: die instead
        try:
            ok = np.array_equal(split(x, 0.5)[0], 2.0 * x)
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("hidden", [(8,), (8, 8), (6, 6, 6)])
def test_from_mlp_copies_the_parameters(hidden):
    """MLPTrace forms c or M from θ once (CNF.16): the flow must not see later in-place
    changes of the caller's arrays, or its trace and its velocity would disagree; its own
    copies (flow.params) are read-only, and MLPTrace copies θ too."""
    mlp = MLP(2, hidden)
    params = mlp.init(np.random.default_rng(28))
    x = np.random.default_rng(29).normal(size=(5, 2))
    flow = CNF.from_mlp(mlp, params)
    trace = MLPTrace(mlp, params)
    before, before_trace = flow.log_prob(x).log_prob, [a.copy() for a in trace(x, 0.5)]
    for W, b in params:
        W *= 3.0
    assert np.array_equal(flow.log_prob(x).log_prob, before)
    assert all(np.array_equal(a, b) for a, b in zip(trace(x, 0.5), before_trace))
    with pytest.raises(ValueError, match="read-only"):
        flow.params[-1][0][...] *= 2.0


@pytest.mark.parametrize("time_features", [0, 2])
def test_from_mlp_push_forward_matches_the_generic_route(time_features):
    """CNF.from_mlp moves points with MLPTrace.value (plain NumPy, exp-based tanh); the
    generic CNF over mlp.apply (autograd.numpy, NumPy's tanh) solves the same ODE. The
    two fields differ by a few ulps; the bound is 100x the solver tolerance 1e-10, in case
    that difference flips one step's accept/reject decision (measured: the same steps,
    ~1e-14 apart). A wrong field (a missing bias, a wrong tanh) moves points by O(0.1)."""
    mlp = MLP(2, (16, 16), time_features=time_features)
    params = mlp.init(np.random.default_rng(30))
    x = np.random.default_rng(31).normal(size=(40, 2))
    fast = CNF.from_mlp(mlp, params, rtol=1e-10, atol=1e-10)
    generic = CNF(lambda z, t: mlp.apply(params, z, t), 2, rtol=1e-10, atol=1e-10)
    assert np.max(np.abs(fast.push_forward(x).x - generic.push_forward(x).x)) <= 1e-8
    ts = np.array([1.0, 0.5, 0.0])
    assert np.max(np.abs(fast.trajectory(x, ts).xs - generic.trajectory(x, ts).xs)) <= 1e-8
    assert np.array_equal(MLPTrace(mlp, params).value(x, 0.3), MLPTrace(mlp, params)(x, 0.3)[0])


@pytest.mark.parametrize("hidden", [(), (8,), (8, 8), (6, 7, 5)])
def test_mlp_trace_value_is_the_forward_pass_and_allocates_no_trace_arrays(hidden):
    """MLPTrace.value against mlp.apply (NumPy's tanh; the exp-based tanh is within 2 ulp),
    before and after a trace call on the same instance (they share the forward arrays),
    and without the (d, n, h) tangents: the push-forward never needs them."""
    mlp = MLP(4, hidden)
    params = mlp.init(np.random.default_rng(32))
    x = np.random.default_rng(33).normal(size=(9, 4))
    trace = MLPTrace(mlp, params)
    ref = mlp.apply(params, x, 0.6)
    first = trace.value(x, 0.6)
    assert not hasattr(trace, "tangent") and not hasattr(trace, "dphi")
    trace(x, 0.1)
    # tanh within 2 ulp(1) per unit, summed over ≤ 8 units of O(1) output weights: ~1e-14
    assert np.max(np.abs(first - ref)) <= 1e-13 and np.array_equal(trace.value(x, 0.6), first)


# ----------------------------------------------------------------- shortcuts' bookkeeping

def test_empty_interval_returns_the_input_with_zero_nfev_and_its_times():
    """t0 = t1 (here 0.4, off the defaults): no solve, so nfev = 0 and the velocity is never
    called; x comes back as a copy (changing it leaves the input alone), the log-density is
    the base's at those points, and the result records the times asked for."""
    calls = []
    base = GaussianMixture(np.array([[1.0, -1.0]]), np.array([[[2.0, 0.3], [0.3, 0.5]]]))

    def velocity(x, t):
        calls.append(t)
        return -x

    flow = CNF(velocity, 2, base=base)
    x = np.array([[0.3, -0.2], [1.5, 2.0]])
    for res in (flow.push_forward(x, t0=0.4, t1=0.4), flow.log_prob(x, t0=0.4, t1=0.4)):
        assert res.nfev == 0 and (res.t0, res.t1) == (0.4, 0.4)
        np.testing.assert_array_equal(res.x, x)
        assert res.x is not x and not np.shares_memory(res.x, x)
    assert flow.push_forward(x, t0=0.4, t1=0.4).log_prob is None
    np.testing.assert_allclose(flow.log_prob(x, t0=0.4, t1=0.4).log_prob, base.log_prob(x), rtol=1e-14)
    drawn = flow.sample_with_log_prob(3, np.random.default_rng(0), t0=0.4, t1=0.4)
    assert drawn.nfev == 0 and (drawn.t0, drawn.t1) == (0.4, 0.4)
    np.testing.assert_array_equal(drawn.x, base.sample(3, np.random.default_rng(0)))
    np.testing.assert_allclose(drawn.log_prob, base.log_prob(drawn.x), rtol=1e-14)
    assert calls == []


def test_results_record_the_interval_and_a_positive_nfev():
    """A solve on [0.25, 0.75] records t0 = 0.25, t1 = 0.75 and the solver's count; the
    linear field v = −x gives x(t1) = e^{−(t1 − t0)} x(t0) (rtol 1e-8, atol 1e-8 default:
    1e-6 is a generous multiple)."""
    flow = CNF(lambda x, t: -x, 2)
    x = np.array([[1.0, -2.0]])
    res = flow.push_forward(x, t0=0.25, t1=0.75)
    assert (res.t0, res.t1) == (0.25, 0.75) and res.nfev > 0
    np.testing.assert_allclose(res.x, np.exp(-0.5) * x, rtol=1e-6)
