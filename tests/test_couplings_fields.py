"""Pair-conditioned paths and the closed forms they are checked against: the finite
mixture marginal of any coupling (Theorems 1 and 2), the Gaussian population fields
(independent, OT, entropic), straightness, the schedule change, training with a coupling.

Derivation: derivations/10-couplings.md (CPL.1) to (CPL.3), (CPL.9) to (CPL.17)
"""
import numpy as np
import pytest
from autograd import elementwise_grad
from hypothesis import given
from hypothesis import strategies as st
from scipy.linalg import sqrtm
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from fm_ref.couplings import (BrownianBridge, ConstantSigma, ExactOTCoupling, GaussianCouplingField, PairMixture,
                              change_schedule, entropic_cross_covariance, euler_sample, monge_map, ot_plan,
                              path_energy, schedule_map, sinkhorn, straightness, wasserstein2_gaussian)
from fm_ref.distributions import GaussianMixture
from fm_ref.losses import _gauss_legendre
from fm_ref.marginal import marginal_velocity
from fm_ref.nn import MLP
from fm_ref.paths import VP, CondOT, Cosine, Polynomial
from fm_ref.train import train_cfm
from fm_ref.verify.couplings import (AUTOGRAD_RTOL, CLOSED_RTOL, QUAD_GAP, SCHEDULE_RTOL, example_gaussians,
                                     example_sets, gaussian_continuity_residual, mixture_points,
                                     pair_continuity_residual, pair_gradient_gap_quadrature, schedule_change_error,
                                     schedule_ode_error, ODE_BOUND)
from fm_ref.verify.foundation import CONTINUITY_RTOL, example_target, rel_err
from strategies import fewer, gaussian_pairs, interior_times, pair_paths, path_pairs, point_sets, seeds

# ------------------------------------------------------------------ pair paths (CPL.1 to CPL.3)


@given(pair_paths(positive=False), point_sets(n=4, m=4), seeds)
def test_pair_velocity_is_the_time_derivative_of_the_path(path, sets, seed):
    x_0, x_1, _, _ = sets
    rng = np.random.default_rng(seed)
    eps, t = rng.standard_normal(x_0.shape), rng.uniform(0.02, 0.98, 4)
    d_dt = np.stack([elementwise_grad(lambda s, k=k: path.sample(x_0, x_1, s, eps)[:, k])(t)
                     for k in range(x_0.shape[1])], axis=1)
    x_t = path.sample(x_0, x_1, t, eps)
    assert rel_err(path.conditional_velocity(x_t, x_0, x_1, t), d_dt) <= AUTOGRAD_RTOL
    # the training target is the same velocity on the path: (x₁ − x₀) + σ'_t ε
    assert rel_err((x_1 - x_0) + path.d_sigma_t(t)[:, None] * eps, d_dt) <= AUTOGRAD_RTOL


def test_bridge_schedule_and_ratio_are_the_stated_formulas():
    path, t = BrownianBridge(0.7), np.array([0.1, 0.25, 0.5, 0.8])
    np.testing.assert_allclose(path.sigma_t(t), 0.7 * np.sqrt(t * (1 - t)), rtol=CLOSED_RTOL)
    e = np.ones((4, 1))
    u = path.conditional_velocity(e, np.zeros((4, 1)), np.zeros((4, 1)), t)
    np.testing.assert_allclose(u[:, 0], (1 - 2 * t) / (2 * t * (1 - t)), rtol=CLOSED_RTOL)
    np.testing.assert_allclose(path.d_sigma_t(t), 0.7 * (1 - 2 * t) / (2 * np.sqrt(t * (1 - t))), rtol=CLOSED_RTOL)


def test_constant_sigma_zero_is_allowed_where_nothing_divides():
    path = ConstantSigma(0.0)
    rng = np.random.default_rng(0)
    x_0, x_1, t = rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), np.linspace(0.0, 1.0, 5)
    x_t, u_t = path.regression_target(t, x_0, x_1, rng)
    np.testing.assert_array_equal(u_t, x_1 - x_0)
    np.testing.assert_allclose(x_t, (1 - t)[:, None] * x_0 + t[:, None] * x_1, rtol=CLOSED_RTOL)
    np.testing.assert_array_equal(path.conditional_velocity(x_t + 1.0, x_0, x_1, t), x_1 - x_0)
    with pytest.raises(ValueError, match=r"^path: the marginal has a density only for sigma > 0"):
        PairMixture(x_0, x_1, None, path)


@pytest.mark.parametrize("t", [0.0, 1.0])
def test_bridge_velocity_raises_at_the_endpoints(t):
    z = np.zeros((1, 2))
    with pytest.raises(ValueError, match=r"^t: the Brownian bridge"):
        BrownianBridge(0.5).conditional_velocity(z, z, z, t)
    with pytest.raises(ValueError, match=r"^t_min, t_max: "):
        train_cfm(MLP(2, (4,)), BrownianBridge(0.5), z, 1, np.random.default_rng(0), t_min=0.0, t_max=0.9)


def test_negative_sigma_raises():
    for cls in (ConstantSigma, BrownianBridge):
        with pytest.raises(ValueError, match=r"^sigma: expected a value >= 0"):
            cls(-0.1)


# ------------------------------------------------------------------ the finite mixture (CPL.9, CPL.10)


def _plan(kind, x_0, x_1, a, b):
    if kind == "independent":
        return None if a is None else np.outer(a, b)
    if kind == "ot":
        return ot_plan(x_0, x_1, a, b)[0]
    return sinkhorn(x_0, x_1, 0.5, a, b).plan


@fewer(0.5)
@given(pair_paths(), point_sets(max_n=4, weights=True), st.sampled_from(["independent", "ot", "entropic"]), seeds)
def test_theorem_1_for_every_pair_path_and_coupling(path, sets, kind, seed):
    x_0, x_1, a, b = sets
    mixture = PairMixture(x_0, x_1, _plan(kind, x_0, x_1, a, b), path)
    t = np.random.default_rng(seed).uniform(0.05, 0.95, 6)
    assert pair_continuity_residual(mixture, mixture_points(mixture, t, seed), t) <= CONTINUITY_RTOL


@pytest.mark.parametrize("wrong", ["dropped-bridge-term", "flipped-displacement"])
def test_theorem_1_check_rejects_a_wrong_velocity(wrong):
    x_0, x_1, _, _ = example_sets(seed=1)
    mixture = PairMixture(x_0, x_1, sinkhorn(x_0, x_1, 0.5).plan, BrownianBridge(0.6))
    t = np.linspace(0.1, 0.9, 6)
    x = mixture_points(mixture, t, 1)
    if wrong == "dropped-bridge-term":  # u without σσ'∇log p: the drift alone
        velocity = lambda y, s: mixture.velocity(y, s) + mixture.path._sigma_d_sigma(s)[:, None] * mixture.score(y, s)  # noqa: E731
    else:
        velocity = lambda y, s: mixture.velocity(y, s) - 2 * np.ones_like(y)  # noqa: E731
    assert pair_continuity_residual(mixture, x, t, velocity) > 1e-3


@given(pair_paths(), point_sets(max_n=3, weights=True), interior_times, seeds)
def test_mixture_density_and_velocity_by_independent_routes(path, sets, t, seed):
    """log p_t against scipy's Gaussians summed over pairs; the score by autograd; u_t as
    the π- and density-weighted average of the conditional velocities, pair by pair."""
    x_0, x_1, a, b = sets
    plan = ot_plan(x_0, x_1, a, b)[0]
    mixture = PairMixture(x_0, x_1, plan, path)
    x = mixture_points(mixture, np.full(4, t), seed)
    s = float(path.sigma_t(t))
    log_terms, u_terms = [], []
    for i in range(len(x_0)):
        for j in range(len(x_1)):
            if plan[i, j] > 0:
                log_terms.append(np.log(plan[i, j]) + multivariate_normal((1 - t) * x_0[i] + t * x_1[j], s**2)
                                 .logpdf(x).reshape(4))
                u_terms.append(path.conditional_velocity(x, np.tile(x_0[i], (4, 1)), np.tile(x_1[j], (4, 1)), t))
    log_terms = np.array(log_terms)
    log_p = logsumexp(log_terms, axis=0)
    weights = np.exp(log_terms - log_p)
    assert rel_err(mixture.log_prob(x, t), log_p) <= 1e-12
    assert rel_err(mixture.velocity(x, t), np.einsum("kn,knd->nd", weights, np.array(u_terms))) <= 1e-10
    score = elementwise_grad(lambda y: mixture.log_prob(y, t))(x)
    assert rel_err(mixture.score(x, t), score) <= AUTOGRAD_RTOL


def test_theorem_2_by_quadrature_and_its_rejection():
    x_0, x_1, _, _ = example_sets(seed=16, n0=2, n1=3, d=1)
    plan = sinkhorn(x_0, x_1, 0.5).plan
    model = MLP(1, (8,))
    params = model.init(np.random.default_rng(17))
    mixture = PairMixture(x_0, x_1, plan, BrownianBridge(0.6))
    assert pair_gradient_gap_quadrature(model, params, mixture) <= QUAD_GAP
    drift_only = lambda y, s: mixture.velocity(y, s) + mixture.path._sigma_d_sigma(s)[:, None] * mixture.score(y, s)  # noqa: E731
    assert pair_gradient_gap_quadrature(model, params, mixture, velocity=drift_only) > 1e-3


# ------------------------------------------------------------------ Gaussians (CPL.11 to CPL.14)


@fewer(0.5)
@given(gaussian_pairs(), st.sampled_from(["independent", "optimal", "entropic"]), pair_paths(positive=False), seeds)
def test_gaussian_fields_satisfy_the_continuity_equation(g, coupling, path, seed):
    if coupling == "entropic" and path.sigma == 0.0:
        path = BrownianBridge(0.5)
    field = getattr(GaussianCouplingField, coupling)(*g, path)
    t = np.random.default_rng(seed).uniform(0.05, 0.95, 5)
    assert gaussian_continuity_residual(field, t, seed) <= CONTINUITY_RTOL
    # and a wrong field is rejected: B_t with its sign flipped
    wrong = lambda x, s: 2 * (field.m1 - field.m0) - field.velocity(x, s)  # noqa: E731
    assert gaussian_continuity_residual(field, t, seed, velocity=wrong) > 1e-3


@given(gaussian_pairs(), seeds)
def test_ot_field_moves_points_along_the_monge_map(g, seed):
    m0, S0, m1, S1 = g
    A = monge_map(S0, S1)
    np.testing.assert_allclose(A @ S0 @ A, S1, rtol=1e-10, atol=1e-12)  # T pushes N(m0, S0) to N(m1, S1)
    r = np.real(sqrtm(S0))  # scipy's Schur-based square root, not eigh
    np.testing.assert_allclose(A, np.linalg.solve(r, np.real(sqrtm(r @ S1 @ r))) @ np.linalg.inv(r), rtol=1e-8, atol=1e-10)
    rng = np.random.default_rng(seed)
    x0 = m0 + rng.standard_normal((6, len(m0))) @ np.linalg.cholesky(S0).T
    t = rng.uniform(0.0, 1.0, 6)
    tx = m1 + (x0 - m0) @ A
    field = GaussianCouplingField.optimal(m0, S0, m1, S1, ConstantSigma(0.0))
    assert rel_err(field.velocity((1 - t)[:, None] * x0 + t[:, None] * tx, t), tx - x0) <= 1e-9
    # straight, constant-speed trajectories: one Euler step lands on T(x₀)
    assert rel_err(euler_sample(field.velocity, x0, 1), tx) <= 1e-9


@given(gaussian_pairs(), st.sampled_from([0.01, 0.3, 1.0, 5.0]))
def test_entropic_cross_covariance_has_the_gibbs_precision(g, eps):
    """exp(−‖x − y‖²/ε) × (a product) ⇔ the joint precision's off-diagonal block is −(2/ε)I."""
    m0, S0, m1, S1 = g
    d = len(m0)
    C = entropic_cross_covariance(S0, S1, eps)
    P = np.linalg.inv(np.block([[S0, C], [C.T, S1]]))
    assert rel_err(P[:d, d:], -(2.0 / eps) * np.eye(d)) <= 1e-8
    wrong = entropic_cross_covariance(S0, S1, 2 * eps)
    P_wrong = np.linalg.inv(np.block([[S0, wrong], [wrong.T, S1]]))
    assert rel_err(P_wrong[:d, d:], -(2.0 / eps) * np.eye(d)) > 0.1


def test_entropic_plan_tends_to_the_ot_plan_and_the_bridge_field_to_the_ot_field():
    m0, S0, m1, S1 = example_gaussians(2, 3)
    C_ot = S0 @ monge_map(S0, S1)
    errs = [rel_err(entropic_cross_covariance(S0, S1, e), C_ot) for e in (1.0, 1e-2, 1e-4)]
    assert errs[0] > errs[1] > errs[2] and errs[2] <= 1e-3
    x, t = np.random.default_rng(3).normal(size=(5, 2)) + 1.0, np.full(5, 0.4)
    ot = GaussianCouplingField.optimal(m0, S0, m1, S1, ConstantSigma(0.0)).velocity(x, t)
    assert rel_err(GaussianCouplingField.entropic(m0, S0, m1, S1, BrownianBridge(1e-3)).velocity(x, t), ot) <= 1e-4


def test_independent_field_matches_the_mixture_marginal_of_marginal_py():
    _, _, m1, S1 = example_gaussians(2, 4)
    field = GaussianCouplingField.independent(np.zeros(2), np.eye(2), m1, S1, ConstantSigma(0.0))
    x, t = np.random.default_rng(4).normal(size=(8, 2)), np.linspace(0.0, 1.0, 8)
    assert rel_err(field.velocity(x, t), marginal_velocity(GaussianMixture(m1[None], S1[None]), CondOT(0.0), x, t)) \
        <= 1e-12


@given(gaussian_pairs())
def test_displacement_interpolation_is_straight(g):
    """∫₀¹ E‖u_t‖² dt = E‖T(x₀) − x₀‖² = W₂² (Bures), while I-CFM's field spends more."""
    t, w = _gauss_legendre(8, 0.0, 1.0)
    w2 = wasserstein2_gaussian(*g)
    ot = GaussianCouplingField.optimal(*g, ConstantSigma(0.0))
    indep = GaussianCouplingField.independent(*g, ConstantSigma(0.0))
    assert abs(np.sum(w * ot.kinetic_energy(t)) - w2) <= CLOSED_RTOL * w2 * 10
    t, w = _gauss_legendre(64, 0.0, 1.0)
    assert np.sum(w * indep.kinetic_energy(t)) >= w2 * (1 - 1e-12)  # Benamou–Brenier


def test_straightness_of_the_ot_and_independent_fields_by_ode():
    g = example_gaussians(2, 5)
    x0 = g[0] + np.random.default_rng(5).standard_normal((30, 2)) @ np.linalg.cholesky(g[1]).T
    gap_ot, energy, disp = straightness(GaussianCouplingField.optimal(*g, ConstantSigma(0.0)).velocity, x0, 1e-10, 1e-10)
    assert abs(gap_ot) <= 1e-7 * energy
    gap_i, _, _ = straightness(GaussianCouplingField.independent(*g, ConstantSigma(0.0)).velocity, x0, 1e-10, 1e-10)
    assert gap_i > 1e-2
    e, d, _ = path_energy(GaussianCouplingField.independent(*g, ConstantSigma(0.0)).velocity, x0)
    assert np.all(e >= d * (1 - 1e-8))  # Cauchy–Schwarz per trajectory


def test_euler_sample_is_the_stated_rule():
    v = lambda x, t: x * t[:, None] + 1.0  # noqa: E731
    x = np.array([[1.0, -2.0]])
    h = 0.5
    step1 = x + h * (x * 0.0 + 1.0)
    np.testing.assert_array_equal(euler_sample(v, x, 2), step1 + h * (step1 * 0.5 + 1.0))


# ------------------------------------------------------------------ schedule change (CPL.15, CPL.16)


def _defined(a, b, r):
    try:
        schedule_map(a, b, r)
        return True
    except ValueError:
        return False


@given(path_pairs, interior_times, seeds)
def test_schedule_change_reproduces_the_other_paths_velocity(pair, r, seed):
    a, b = pair
    if not _defined(a, b, r):
        with pytest.raises(ValueError, match=r"^r: "):
            change_schedule(lambda x, t: x, a, b, np.zeros((1, 2)), r)
        return
    x = np.random.default_rng(seed).normal(0.0, 2.0, (5, 2))
    assert schedule_change_error(example_target(), a, b, x, np.full(5, r)) <= SCHEDULE_RTOL


def test_schedule_map_scale_and_time_by_independent_routes():
    """s_r = ᾱ_r/α_{t_r} (the other half of x̄ = s x), and ṫ_r, ṡ_r by central differences."""
    a, b, r = CondOT(0.0), Cosine(), np.array([0.1, 0.4, 0.7])
    t, s, dt, ds = schedule_map(a, b, r)
    np.testing.assert_allclose(s, b.alpha_t(r) / a.alpha_t(t), rtol=1e-13)
    h = 1e-6
    tp, sp, _, _ = schedule_map(a, b, r + h)
    tm, sm, _, _ = schedule_map(a, b, r - h)
    np.testing.assert_allclose(dt, (tp - tm) / (2 * h), rtol=1e-8)  # central differences, h = 1e-6
    np.testing.assert_allclose(ds, (sp - sm) / (2 * h), rtol=1e-8)


def test_schedule_change_rejects_a_dropped_scale_term_and_a_wrong_time():
    target, a, b = example_target(), CondOT(0.0), Cosine()
    x, r = np.random.default_rng(6).normal(size=(5, 2)), np.full(5, 0.3)  # ṡ_r = 0 at r = ½ (symmetry)
    t, s, dt, ds = schedule_map(a, b, r)
    dropped = s[:, None] * dt[:, None] * marginal_velocity(target, a, x / s[:, None], t)
    assert rel_err(dropped, marginal_velocity(target, b, x, r)) > 1e-2
    wrong_t = change_schedule(lambda y, q: marginal_velocity(target, a, y, q + 0.05), a, b, x, r)
    assert rel_err(wrong_t, marginal_velocity(target, b, x, r)) > 1e-3


def test_schedule_change_maps_the_ode_solutions():
    target = example_target()
    x = np.random.default_rng(7).normal(size=(3, 2))
    assert schedule_ode_error(target, CondOT(0.0), Polynomial(2.0), x, 0.1, 0.9) <= ODE_BOUND


@pytest.mark.parametrize("a, b, r, match", [
    (VP(), Polynomial(2.0), 0.02, r"^r: the target path's signal-to-noise ratio"),
    (CondOT(0.0), Cosine(), 1.0, r"^r: σ̄_r = 0"),
    (VP(), CondOT(0.0), 0.0, r"^r: the target path's signal-to-noise ratio"),
])
def test_schedule_change_raises_where_undefined(a, b, r, match):
    with pytest.raises(ValueError, match=match):
        schedule_map(a, b, r)


# ------------------------------------------------------------------ training (CPL.3)


def test_train_cfm_with_a_coupling_is_deterministic_and_uses_the_pair_target():
    data = np.random.default_rng(8).normal(2.0, 0.5, (64, 2))
    mlp = MLP(2, (8,))
    runs = [train_cfm(mlp, BrownianBridge(0.3), data, 3, np.random.default_rng(9), batch=16,
                      t_min=0.01, t_max=0.99, coupling=ExactOTCoupling())[1] for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    # σ = 0 with the independent coupling is CondOT(0) CFM, draw for draw
    a = train_cfm(mlp, ConstantSigma(0.0), data, 3, np.random.default_rng(10), batch=16)[1]
    b = train_cfm(mlp, CondOT(0.0), data, 3, np.random.default_rng(10), batch=16)[1]
    np.testing.assert_allclose(a, b, rtol=1e-12)
    with pytest.raises(TypeError, match=r"^coupling: expected a callable"):
        train_cfm(mlp, CondOT(0.0), data, 1, np.random.default_rng(0), coupling=3)


def test_ot_cfm_is_closer_to_the_ot_field_than_i_cfm():
    """Measured (derivations/10-couplings.md §5 table, first row): the same MLP and budget,
    with and without the exact minibatch OT coupling; distances to the OT population field
    (CPL.12) by Monte Carlo, compared in standard errors (z > 5)."""
    m0, S0, m1, S1 = np.zeros(1), np.eye(1), np.array([2.0]), np.array([[0.25]])
    target = GaussianMixture(m1[None], S1[None])
    field = GaussianCouplingField.optimal(m0, S0, m1, S1, ConstantSigma(0.0))
    errs = []
    for coupling in (None, ExactOTCoupling()):
        mlp = MLP(1, (16, 16))
        params, _ = train_cfm(mlp, ConstantSigma(0.0), target, 300, np.random.default_rng(1), batch=64,
                              coupling=coupling)
        errs.append(field.field_error(lambda x, t: mlp(params, x, t), np.random.default_rng(2)))
    (e_i, se_i), (e_ot, se_ot) = errs
    assert e_i - e_ot > 5.0 * np.hypot(se_i, se_ot)


# ------------------------------------------------------------------ edge cases (mutation run)


def test_entropic_field_in_1d_is_the_bridge_joint():
    """(CPL.13) In 1-D the bridge σW pairs x₀, x₁ with density ∝ N₀N₁-reweighted
    exp(−(x₁ − x₀)²/(2σ²)), so the joint precision's off-diagonal is −1/σ²: with
    Cov = [[s0², c], [c, s1²]] that is c/(s0²s1² − c²) = 1/σ², i.e. c² + σ²c − s0²s1² = 0,
    c = √(s0²s1² + σ⁴/4) − σ²/2 (the positive root).

    Derivation: derivations/10-couplings.md (CPL.13)"""
    s0, s1 = 0.7, 1.6
    for sigma in (0.3, 1.0):
        c = np.sqrt(s0**2 * s1**2 + sigma**4 / 4) - sigma**2 / 2
        for path in (BrownianBridge(sigma), ConstantSigma(sigma)):
            field = GaussianCouplingField.entropic([0.0], [[s0**2]], [1.0], [[s1**2]], path)
            # two square roots and an eigh of 1×1 matrices: a few ulps
            assert field.C[0, 0] == pytest.approx(c, rel=1e-12)


def test_pair_mixture_takes_empirical_sets_and_arrays_alike():
    """(CPL.9) An Empirical set with weights w is the array of its points with the
    independent plan w₀w₁ᵀ: the same density and velocity.

    Derivation: derivations/10-couplings.md (CPL.9)"""
    from fm_ref.distributions import Empirical

    x_0, x_1, a, b = example_sets(seed=30, n0=3, n1=4, weights=True)
    path = BrownianBridge(0.5)
    x = np.random.default_rng(31).normal(size=(5, 2))
    t = np.full(5, 0.4)
    from_sets = PairMixture(Empirical(x_0, a), Empirical(x_1, b), None, path)
    from_arrays = PairMixture(x_0, x_1, np.outer(a, b), path)
    # the same sums in the same order
    np.testing.assert_allclose(from_sets.log_prob(x, t), from_arrays.log_prob(x, t), rtol=1e-14)
    np.testing.assert_allclose(from_sets.velocity(x, t), from_arrays.velocity(x, t), rtol=1e-12, atol=1e-14)
    # arrays alone: uniform weights
    uniform = PairMixture(x_0, x_1, None, path)
    np.testing.assert_allclose(uniform.log_prob(x, t), PairMixture(x_0, x_1, np.full((3, 4), 1 / 12), path).log_prob(x, t),
                               rtol=1e-14)


@pytest.mark.parametrize("t", [0.0, 1.0])
def test_pair_mixture_raises_where_sigma_t_vanishes(t):
    """(CPL.9) σ_t = 0 (the bridge at t = 0, 1): p_t is a sum of point masses, no density.

    Derivation: derivations/10-couplings.md (CPL.9)"""
    x_0, x_1, _, _ = example_sets(seed=32)
    mix = PairMixture(x_0, x_1, None, BrownianBridge(0.5))
    with pytest.raises(ValueError, match=r"^t: σ_t = 0 here"):
        mix.log_prob(np.zeros((2, 2)), t)


def test_pair_mixture_drops_zero_weight_sources_from_the_components():
    """(CPL.9) Only pairs with π_ij > 0 are components; a source point of weight 0 adds none.

    Derivation: derivations/10-couplings.md (CPL.9)"""
    x_0, x_1, _, _ = example_sets(seed=33, n0=3, n1=2)
    plan = np.array([[0.25, 0.25], [0.0, 0.0], [0.5, 0.0]])
    i, j = PairMixture(x_0, x_1, plan, ConstantSigma(0.3)).components()
    assert list(zip(i.tolist(), j.tolist())) == [(0, 0), (0, 1), (2, 0)]


@pytest.mark.parametrize("r", [0.0, 1.0])
def test_schedule_map_of_a_path_to_itself_is_the_identity_at_the_ends(r):
    """(CPL.15) ρ(t_r) = ρ̄(r) with the same path gives t_r = r, s_r = 1, ṫ_r = 1, ṡ_r = 0,
    including at the ends, where the SNR is exactly ρ(0) = 0 and ρ(1) = 1/σ_min (σ_min = ½,
    so 1/σ_min · σ_min = 1 is exact).

    Derivation: derivations/10-couplings.md (CPL.15)"""
    path = CondOT(0.5)
    t, s, dt, ds = schedule_map(path, CondOT(0.5), r)
    # the endpoints are returned as exact constants; ṫ, ṡ are ratios of exact floats
    assert (t, s) == (r, 1.0)
    assert dt == pytest.approx(1.0, rel=1e-15) and ds == pytest.approx(0.0, abs=1e-15)
    v = change_schedule(lambda x, tt: x + tt[:, None], path, CondOT(0.5), np.ones((2, 2)), r)
    np.testing.assert_allclose(v, 1.0 + r, rtol=1e-15)


# ------------------------------------------------------------------ mutation-sample gaps


def test_bridge_regression_target_is_the_time_derivative_of_its_sample():
    """(CPL.3) The bridge's target u = (x₁ − x₀) + σ'_t ε equals d/dt[μ_t + σ_t ε] at fixed
    (x₀, x₁, ε) and the conditional velocity at the returned x_t; ε is recovered from x_t.

    Derivation: derivations/10-couplings.md (CPL.3)"""
    path = BrownianBridge(0.8)
    rng = np.random.default_rng(5)
    x_0, x_1 = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    t = np.array([0.1, 0.2, 0.35, 0.5, 0.7, 0.9])
    x_t, u = path.regression_target(t, x_0, x_1, np.random.default_rng(11))
    sig = 0.8 * np.sqrt(t * (1 - t))
    eps = (x_t - (1 - t)[:, None] * x_0 - t[:, None] * x_1) / sig[:, None]
    h = 1e-5
    d_dt = (path.sample(x_0, x_1, t + h, eps) - path.sample(x_0, x_1, t - h, eps)) / (2 * h)
    # central differences: O(h²) truncation plus O(1e-16/h) rounding, both ≪ 1e-7
    np.testing.assert_allclose(u, d_dt, rtol=1e-7, atol=1e-7)
    # rounding only: the same quantity by the (x − μ_t) form
    np.testing.assert_allclose(u, path.conditional_velocity(x_t, x_0, x_1, t), rtol=1e-10, atol=1e-12)


def test_gaussian_field_log_prob_matches_scipy():
    """(CPL.11) log N(x; m_t, Σ_t) against scipy's multivariate normal at the same m_t, Σ_t.

    Derivation: derivations/10-couplings.md (CPL.11)"""
    S0, S1 = np.array([[1.0, 0.3], [0.3, 0.5]]), np.array([[0.7, -0.2], [-0.2, 1.2]])
    field = GaussianCouplingField.optimal(np.array([0.5, -1.0]), S0, np.array([1.0, 2.0]), S1, ConstantSigma(0.2))
    x = np.random.default_rng(2).normal(size=(5, 2))
    for t in (0.0, 0.3, 1.0):
        ref = multivariate_normal(field.mean(t), field.cov(t)).logpdf(x)
        # rounding in the solve and log-determinant of a well-conditioned 2×2
        np.testing.assert_allclose(field.log_prob(x, t), ref, rtol=1e-12, atol=1e-12)


def test_gaussian_field_float_and_array_time_agree():
    """(CPL.11) A float t and an array t of the same value give the same log p_t and u_t.

    Derivation: derivations/10-couplings.md (CPL.11)"""
    S0, S1 = np.array([[1.0, 0.3], [0.3, 0.5]]), np.array([[0.7, -0.2], [-0.2, 1.2]])
    field = GaussianCouplingField.independent(np.zeros(2), S0, np.ones(2), S1, BrownianBridge(0.5))
    x = np.random.default_rng(3).normal(size=(4, 2))
    t = np.full(4, 0.4)
    # identical arithmetic up to broadcasting: only rounding may differ
    np.testing.assert_allclose(field.log_prob(x, 0.4), field.log_prob(x, t), rtol=1e-14, atol=0)
    np.testing.assert_allclose(field.velocity(x, 0.4), field.velocity(x, t), rtol=1e-14, atol=0)
    assert field.log_prob(x, 0.4).shape == (4,) and field.velocity(x, 0.4).shape == (4, 2)


@pytest.mark.parametrize("S1", [np.eye(3)[:2], np.eye(3)])
def test_gaussian_field_rejects_a_covariance_of_the_wrong_shape(S1):
    """(CPL.11) S1 must be square (d, d) with the d of S0; otherwise a ValueError names S1.

    Derivation: derivations/10-couplings.md (CPL.11)"""
    with pytest.raises(ValueError, match=r"^S1: expected a square matrix"):
        GaussianCouplingField.independent(np.zeros(2), np.eye(2), np.zeros(2), S1, ConstantSigma(0.1))
    with pytest.raises(ValueError, match=r"^S1: expected a square matrix"):
        monge_map(np.eye(2), S1)


def test_pair_mixture_plan_sum_tolerates_rounding_only():
    """(CPL.9) A plan summing to 1 + 5e-12 (rounding) is accepted; 1 + 1e-6 is refused.

    Derivation: derivations/10-couplings.md (CPL.9)"""
    rng = np.random.default_rng(4)
    x_0, x_1 = rng.normal(size=(2, 2)), rng.normal(size=(5, 2))
    plan = np.full((2, 5), 0.1)
    plan[0, 0] += 5e-12
    PairMixture(x_0, x_1, plan, ConstantSigma(0.3))
    plan[0, 0] += 1e-6
    with pytest.raises(ValueError, match=r"^plan: expected entries that sum to 1"):
        PairMixture(x_0, x_1, plan, ConstantSigma(0.3))


def test_path_energy_tolerances_are_checked_and_defaults_run():
    """(CPL.17) atol = 0 raises naming atol; straightness runs with its default tolerances and
    a constant field (straight lines) has gap 0, energy = displacement = ‖v‖².

    Derivation: derivations/10-couplings.md (CPL.17)"""
    x_0 = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"^atol"):
        path_energy(lambda x, t: np.ones_like(x), x_0, atol=0.0)
    gap, energy, disp = straightness(lambda x, t: np.ones_like(x) * np.array([1.0, 2.0]), x_0)
    # a constant field is integrated exactly by DOP853 up to rounding
    assert abs(gap) <= 1e-12 and energy == pytest.approx(5.0, rel=1e-12) and disp == pytest.approx(5.0, rel=1e-12)


def test_gaussian_field_is_differentiable_in_a_float_time():
    """(CPL.11) d/dt of Σ log p_t(x) and Σ u_t(x) at a float t, by autograd, equals the
    central difference of the same functions.

    Derivation: derivations/10-couplings.md (CPL.11)"""
    from autograd import grad
    S0, S1 = np.array([[1.0, 0.3], [0.3, 0.5]]), np.array([[0.7, -0.2], [-0.2, 1.2]])
    field = GaussianCouplingField.independent(np.zeros(2), S0, np.ones(2), S1, BrownianBridge(0.5))
    x = np.random.default_rng(3).normal(size=(4, 2))
    h = 1e-5
    for fn in (lambda s: np.sum(field.log_prob(x, s)), lambda s: np.sum(field.velocity(x, s))):
        fd = (fn(0.4 + h) - fn(0.4 - h)) / (2 * h)
        # central differences: O(h²) truncation, O(1e-16/h) rounding, both ≪ 1e-6
        assert grad(fn)(0.4) == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_pair_path_mean_and_sample_are_the_straight_line():
    """(CPL.1) μ_t = (1 − t)x₀ + t x₁: ``mean`` equals the line written out, as does ``sample``
    with σ = 0 and the average of ``sample`` over antithetic noise ±ε (σ > 0).

    Derivation: derivations/10-couplings.md (CPL.1)"""
    rng = np.random.default_rng(11)
    x_0, x_1 = rng.normal(size=(6, 3)) + 2.0, rng.normal(size=(6, 3)) - 1.0
    t = np.linspace(0.05, 0.95, 6)
    line = (1.0 - t)[:, None] * x_0 + t[:, None] * x_1
    eps = rng.normal(size=(6, 3))
    for path in (ConstantSigma(0.0), ConstantSigma(0.7), BrownianBridge(0.7)):
        # a few flops of rounding on O(1) entries
        assert np.allclose(path.mean(x_0, x_1, t), line, rtol=1e-13, atol=1e-13)
        avg = 0.5 * (path.sample(x_0, x_1, t, eps) + path.sample(x_0, x_1, t, -eps))
        # ±σ_t ε cancel exactly up to rounding
        assert np.allclose(avg, line, rtol=1e-13, atol=1e-13)
    # σ = 0: the noise is multiplied by 0, so the sample is the line up to rounding
    assert np.allclose(ConstantSigma(0.0).sample(x_0, x_1, t, eps), line, rtol=1e-13, atol=1e-13)


def test_gaussian_field_psd_check_is_relative_to_the_joint_scale():
    """(CPL.11) The joint covariance [[S0, C], [Cᵀ, S1]] must be PSD: with S0 = S1 = s I and
    C = c I its eigenvalues are s ± c, so c = s(1 + 1e-13) (min eigenvalue −1e-13 s, within
    rounding of PSD at scale s = 1e4) is accepted, and c = 1.01 s (−0.01 s) raises.

    Derivation: derivations/10-couplings.md (CPL.11)"""
    s = 1e4
    S = s * np.eye(2)
    m = np.zeros(2)
    GaussianCouplingField(m, S, m, S, s * (1.0 + 1e-13) * np.eye(2), ConstantSigma(0.1))
    GaussianCouplingField(m, S, m, S, s * np.eye(2), ConstantSigma(0.1))  # exactly singular joint
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianCouplingField(m, S, m, S, 1.01 * s * np.eye(2), ConstantSigma(0.1))
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianCouplingField(m, np.eye(2), m, np.eye(2), 1.01 * np.eye(2), ConstantSigma(0.1))


def test_path_energy_defaults_are_accurate_on_a_linear_field():
    """(CPL.17) For v(x, t) = a x, x(t) = x₀ e^{at}: ∫₀¹‖v‖² dt = a‖x₀‖²(e^{2a} − 1)/2 and
    ‖x(1) − x(0)‖² = ‖x₀‖²(e^a − 1)²; the default tolerances reproduce both; rtol ≤ 0 raises.

    Derivation: derivations/10-couplings.md (CPL.17)"""
    a = 1.5
    x_0 = np.array([[1.0, -0.5], [0.3, 2.0], [-1.2, 0.4]])
    r2 = np.sum(x_0**2, axis=1)
    energy, disp, x_1 = path_energy(lambda x, t: a * x, x_0)
    # DOP853 at rtol = atol = 1e-9 on a smooth 1-D exponential: global error ≪ 1e-7
    assert np.allclose(energy, a * r2 * np.expm1(2 * a) / 2, rtol=1e-7, atol=0)
    assert np.allclose(disp, r2 * np.expm1(a) ** 2, rtol=1e-7, atol=0)
    assert np.allclose(x_1, x_0 * np.exp(a), rtol=1e-7, atol=0)
    for bad in (0.0, -1e-3):
        with pytest.raises(ValueError, match="rtol"):
            path_energy(lambda x, t: a * x, x_0, rtol=bad)


# ---- mutation sample seed 3: allowances at their boundary, float times, defaults ----

def test_symmetry_allowance_is_1e_14_times_the_larger_of_one_and_max_abs():
    """(CPL.11) S counts as symmetric when |S − Sᵀ| ≤ 1e-14 · max(1, max|S|): at max|S| = 1 an
    asymmetry of 0.8e-14 passes and 1.5e-14 raises, and so at max|S| = 0.25 (the floor 1 holds);
    at max|S| = 4 (allowance 4e-14) 3e-14 passes and 6e-14 raises; 1e-3 raises at any scale.

    Derivation: derivations/10-couplings.md (CPL.11)"""
    for scale, ok, bad in ((1.0, 0.8e-14, 1.5e-14), (4.0, 3e-14, 6e-14), (0.25, 0.8e-14, 1.5e-14), (1.0, 0.0, 1e-3)):
        S = scale * np.array([[1.0, 0.5], [0.5, 0.75]])
        S_ok, S_bad = S.copy(), S.copy()
        S_ok[1, 0] += ok
        S_bad[1, 0] += bad
        monge_map(S_ok, np.eye(2))
        with pytest.raises(ValueError, match=r"^S0: expected a symmetric matrix"):
            monge_map(S_bad, np.eye(2))
    # the accepted matrix is symmetrised: ½(S + Sᵀ) enters, exactly symmetric
    A = monge_map(S_ok, np.eye(2))
    assert np.array_equal(A, A.T)


def test_kinetic_energy_by_the_field_s_own_linear_map():
    """(CPL.14) u_t(x) = (m₁ − m₀) + M (x − m_t) is affine, so E‖u_t‖² = ‖m₁ − m₀‖² + tr(M Σ_t Mᵀ);
    M is read off ``velocity`` at m_t + e_i (not from B_t Σ_t⁻¹). A float t gives a float, an
    array t the array of the same values.

    Derivation: derivations/10-couplings.md (CPL.14)"""
    m0, S0, m1, S1 = example_gaussians(d=2, seed=4)
    # the entropic field's matrix M is symmetric (a gradient field); a generic C gives a
    # non-symmetric B_t, where tr(B Σ⁻¹ B) ≠ tr(B Σ⁻¹ Bᵀ)
    generic = GaussianCouplingField(m0, S0, m1, S1, np.array([[0.1, 0.3], [-0.2, 0.05]]), ConstantSigma(0.3))
    for field in (GaussianCouplingField.entropic(m0, S0, m1, S1, BrownianBridge(0.6)), generic):
        _check_kinetic_energy(field, m0, m1)


def _check_kinetic_energy(field, m0, m1):
    ts = np.array([0.1, 0.45, 0.8])
    for t in ts:
        mt = field.mean(float(t))
        pts = np.vstack([mt, mt + np.eye(2)])
        u = field.velocity(pts, float(t))
        M = (u[1:] - u[0]).T
        want = np.sum((m1 - m0) ** 2) + np.trace(M @ field.cov(float(t)) @ M.T)
        got = field.kinetic_energy(float(t))
        assert isinstance(got, float)
        # a 2×2 solve and differences of O(1) velocities: rounding ~1e-15 relative
        assert got == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(field.kinetic_energy(ts), [field.kinetic_energy(float(t)) for t in ts], rtol=1e-14)


def test_coupling_field_defaults_are_the_documented_values():
    """(CPL.11) (CPL.17) ConstantSigma() and BrownianBridge() have σ = 0; sqrtm_spd's power is ½;
    field_error draws n = 4000; path_energy and straightness use rtol = atol = 1e-9. Each
    default call equals the explicit one (the same operations: identical floats).

    Derivation: derivations/10-couplings.md (CPL.17)"""
    from fm_ref.couplings.gaussian import sqrtm_spd
    assert ConstantSigma().sigma == 0.0 and BrownianBridge().sigma == 0.0
    S = np.array([[2.0, 0.3], [0.3, 1.0]])
    np.testing.assert_array_equal(sqrtm_spd(S), sqrtm_spd(S, 0.5))
    m0, S0, m1, S1 = example_gaussians(d=2, seed=1)
    field = GaussianCouplingField.independent(m0, S0, m1, S1, ConstantSigma(0.2))
    v = lambda x, t: 0.9 * field.velocity(x, t)  # noqa: E731
    assert field.field_error(v, np.random.default_rng(3)) == field.field_error(v, np.random.default_rng(3), n=4000)
    x_0 = np.array([[1.0, -0.5], [0.3, 2.0]])
    w = lambda x, t: np.sin(x) + t[:, None]  # noqa: E731
    for a, b in zip(path_energy(w, x_0), path_energy(w, x_0, rtol=1e-9, atol=1e-9)):
        np.testing.assert_array_equal(a, b)
    assert straightness(w, x_0) == straightness(w, x_0, rtol=1e-9, atol=1e-9)


def test_pair_mixture_plan_sum_allowance_is_1e_12_times_max_size_10():
    """(CPL.9) |Σπ − 1| ≤ 1e-12 · max(π.size, 10) is accepted: at sizes 3 and 10, 0.95e-11 passes and
    1.05e-11 raises; at size 24 (allowance 2.4e-11), 2.3e-11 passes and 2.5e-11 raises. At
    size 1175967 the allowance fl(1e-12 · size) is a multiple of 2⁻⁵³, so a plan summing to
    exactly 1 − allowance exists, and it is accepted (the bound is inclusive).

    Derivation: derivations/10-couplings.md (CPL.9)"""
    check = PairMixture._check_plan
    for n0, n1, ok, bad in ((1, 3, 0.95e-11, 1.05e-11), (2, 5, 0.95e-11, 1.05e-11), (4, 6, 2.3e-11, 2.5e-11)):
        for shift, passes in ((ok, True), (-ok, True), (bad, False), (-bad, False)):
            plan = np.full((n0, n1), 1.0 / (n0 * n1))
            plan[0, 0] += shift
            if passes:
                check(plan, n0, n1)
            else:
                with pytest.raises(ValueError, match=r"^plan: expected entries that sum to 1"):
                    check(plan, n0, n1)
    size = 1175967
    allowance = 1e-12 * size
    assert allowance * 2.0**53 == np.round(allowance * 2.0**53)
    plan = np.zeros((1, size))
    plan[0, 0] = 1.0 - allowance  # exact: a multiple of 2⁻⁵³ below 1
    assert abs(float(plan.sum()) - 1.0) == allowance
    check(plan, 1, size)


def test_a_singular_covariance_is_refused():
    """(CPL.11) S0, S1 must be positive definite: a smallest eigenvalue of exactly 0 (diag(1, 0))
    raises naming the matrix, for the field and for the Monge map.

    Derivation: derivations/10-couplings.md (CPL.11)"""
    singular = np.diag([1.0, 0.0])
    with pytest.raises(ValueError, match=r"^S1: expected a positive definite matrix"):
        GaussianCouplingField.independent(np.zeros(2), np.eye(2), np.zeros(2), singular, ConstantSigma(0.1))
    with pytest.raises(ValueError, match=r"^S0: expected a positive definite matrix"):
        monge_map(singular, np.eye(2))


def test_joint_psd_allowance_is_inclusive():
    """(CPL.11) The joint [[S0, C], [Cᵀ, S1]] passes while its smallest eigenvalue is ≥ −1e-10 max|joint|
    (inclusive). In d = 1 with S0 = S1 = s and C = c the eigenvalues are s ± c; c = 0.2637534635141492
    and s = c − fl(1e-10 c) (found by search; both exact, asserted below) put s − c on the bound;
    the next float of c puts it past.

    Derivation: derivations/10-couplings.md (CPL.11)"""
    c = 0.2637534635141492
    bound = -1e-10 * c
    s = c + bound
    assert c - s == -bound and np.linalg.eigvalsh(np.array([[s, c], [c, s]])).min() == bound
    m = np.zeros(1)
    GaussianCouplingField(m, [[s]], m, [[s]], [[c]], ConstantSigma(0.1))
    with pytest.raises(ValueError, match="positive semi-definite"):
        GaussianCouplingField(m, [[s]], m, [[s]], [[np.nextafter(c, 1.0)]], ConstantSigma(0.1))


def test_schedule_map_raises_where_the_source_sigma_vanishes_at_t_r():
    """(CPL.15) A target with σ̄_1 = 1e-17 > 0 asks the source CondOT(0) for ρ = 1e17, whose root
    t_r = 1/(1 + 1e-17) rounds to 1.0, where σ_1 = 0: the scale s_r = σ̄_r/σ_t is undefined and
    a ValueError names r (not a division by zero).

    Derivation: derivations/10-couplings.md (CPL.15)"""
    with pytest.raises(ValueError, match=r"^r: the source path CondOT\(sigma_min=0.0\) has σ_t = 0 at t_r = 1.0"):
        schedule_map(CondOT(0.0), CondOT(1e-17), 1.0)


def test_pair_mixture_displacements_are_those_of_its_components():
    """(CPL.10) ``displacements`` holds x₁ⱼ − x₀ᵢ for exactly the pairs with π_ij > 0, in the order
    of ``components()``: a plan with zeros inside positive rows leaves those pairs out.

    Derivation: derivations/10-couplings.md (CPL.10)"""
    rng = np.random.default_rng(0)
    x_0, x_1 = rng.normal(size=(3, 2)), rng.normal(size=(3, 2)) + 1.0
    plan = np.zeros((3, 3))
    plan[0, 0], plan[0, 1], plan[1, 2], plan[2, 0] = 0.3, 0.2, 0.2, 0.3
    pm = PairMixture(x_0, x_1, plan, BrownianBridge(0.5))
    i, j = pm.components()
    assert list(zip(i, j)) == [(0, 0), (0, 1), (1, 2), (2, 0)]
    np.testing.assert_array_equal(pm.displacements, x_1[j] - x_0[i])


def test_field_error_averages_over_t_uniform_on_0_1():
    """(CPL.11) For v = 1.5 u_t, ‖v − u_t‖² = ¼‖u_t‖², so field_error's mean is ¼ ∫₀¹ E‖u_t‖² dt:
    the closed-form kinetic energy integrated by 24-node Gauss–Legendre (exact to ~1e-12
    for this smooth rational integrand). E‖u_0‖² is 15% above the integral, so drawing every
    t at one end would be off by ~20 standard errors.

    Derivation: derivations/10-couplings.md (CPL.11)"""
    m0, S0, m1, S1 = example_gaussians(d=2, seed=1)
    field = GaussianCouplingField.independent(m0, S0, m1, S1, ConstantSigma(0.2))
    nodes, weights = np.polynomial.legendre.leggauss(24)
    want = 0.25 * np.sum(0.5 * weights * field.kinetic_energy(0.5 * (nodes + 1.0)))
    mean, se = field.field_error(lambda x, t: 1.5 * field.velocity(x, t), np.random.default_rng(3))
    # Monte Carlo over (t, x): within Z_BOUND = 5 standard errors (DESIGN.md)
    assert abs(mean - want) <= 5.0 * se


def test_pair_mixture_repr_names_sizes_dimension_and_path():
    pm = PairMixture(np.zeros((2, 3)), np.ones((4, 3)), None, ConstantSigma(0.5))
    assert repr(pm) == "PairMixture(2 x 4 points, d = 3, ConstantSigma(sigma=0.5))"


def test_constant_sigma_derivative_is_zero_at_every_time_including_the_ends():
    """(CPL.2) ConstantSigma has σ'_t = 0 for all t ∈ [0, 1], the ends included, so the CFM target
    is u = x₁ − x₀ exactly there even when noise is drawn (σ > 0).

    Derivation: derivations/10-couplings.md (CPL.2)"""
    path = ConstantSigma(0.5)
    t = np.array([0.0, 0.5, 1.0])
    np.testing.assert_array_equal(path.d_sigma_t(t), np.zeros(3))
    assert path.d_sigma_t(0.0) == 0.0
    rng = np.random.default_rng(2)
    x_0, x_1 = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    x_t, u = path.regression_target(t, x_0, x_1, np.random.default_rng(5))
    np.testing.assert_array_equal(u, x_1 - x_0)
