"""The sampler vectors' closed forms and rules: the Gaussian flow map moves along the
marginal velocity of ``fm_ref.marginal`` (the posterior route, MIX.6) and pushes the base
to the marginal; it composes as a flow; the fixed-step rules converge at their orders;
each check rejects a wrong variant.

Derivation: derivations/03-mixture-marginals.md (MIX.9) (MIX.10) (MIX.11); derivations/06-cnf.md (CNF.17)
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fm_ref.cnf import CNF
from fm_ref.distributions import GaussianMixture
from fm_ref.marginal import marginal_velocity
from fm_ref.nn import MLP
from fm_ref.vectors.cases import PATH_SPECS, make_path
from fm_ref.vectors.samplers import (FLOW_MAP_TARGETS, TABLEAUS, fixed_step_trajectory, gaussian_flow_map,
                                     gaussian_velocity, mixture_flow_map_1d)
from strategies import seeds

PATHS = [make_path({"name": n, "params": p}) for n, p in PATH_SPECS]
TIMES = (0.1, 0.4, 0.7, 0.95)
# Central differences with h = 1e-5 of a smooth map of size ~3: truncation h²|φ'''| ~ 1e-9,
# rounding ε|φ|/h ~ 1e-10; 1e-7 leaves a factor 100. A missing square root is O(1) off.
FD_STEP, FD_TOL = 1e-5, 1e-7
# gaussian_velocity (eigenbasis, MIX.9) against marginal_velocity (posterior, MIX.6): two
# closed forms in float64, relative 1e-12 (DESIGN.md's closed-form tier).
CLOSED_TOL = 1e-12


def _target(mean, cov):
    return GaussianMixture(mean[None], cov[None], np.array([1.0]))


def _fd_residual(flow_map, path, mean, cov, x_0, t):
    """max |d/dt φ_t(x₀) − u_t(φ_t(x₀))| / (1 + |u|), d/dt by central differences."""
    dphi = (flow_map(path, mean, cov, x_0, t + FD_STEP) - flow_map(path, mean, cov, x_0, t - FD_STEP)) / (2 * FD_STEP)
    u = marginal_velocity(_target(mean, cov), path, flow_map(path, mean, cov, x_0, t), t)
    return np.max(np.abs(dphi - u) / (1.0 + np.abs(u)))


@pytest.mark.parametrize("path", PATHS, ids=repr)
@pytest.mark.parametrize("name, mean, cov", FLOW_MAP_TARGETS, ids=[t[0] for t in FLOW_MAP_TARGETS])
def test_flow_map_moves_along_the_marginal_velocity(path, name, mean, cov):
    x_0 = np.random.default_rng(1).normal(size=(5, mean.size))
    for t in TIMES:
        assert _fd_residual(gaussian_flow_map, path, mean, cov, x_0, t) <= FD_TOL
        x = 2.0 * x_0
        u = marginal_velocity(_target(mean, cov), path, x, t)
        np.testing.assert_allclose(gaussian_velocity(path, mean, cov, x, t), u, rtol=CLOSED_TOL, atol=CLOSED_TOL)


def test_the_flow_map_checks_reject_a_missing_square_root():
    def no_sqrt(path, mean, cov, x, t):  # c(t)/c(0) instead of its square root
        lam, U = np.linalg.eigh(cov)
        c = lambda s: path.alpha_t(s) ** 2 * lam + path.sigma_t(s) ** 2  # noqa: E731
        return path.alpha_t(t) * mean + ((x - path.alpha_t(0.0) * mean) @ U) * (c(t) / c(0.0)) @ U.T

    _, mean, cov = FLOW_MAP_TARGETS[0]
    x_0 = np.random.default_rng(1).normal(size=(5, 2))
    assert _fd_residual(no_sqrt, PATHS[0], mean, cov, x_0, 0.5) > 1e-2


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_flow_map_pushes_the_base_to_the_marginal(path):
    """φ_t is affine: φ_t(x) = m + A x with A C₀ Aᵀ = C_t and φ_t(α₀μ) = α_tμ (p_0 ↦ p_t)."""
    _, mean, cov = FLOW_MAP_TARGETS[1]
    d, t = mean.size, 0.6
    C = lambda s: path.alpha_t(s) ** 2 * cov + path.sigma_t(s) ** 2 * np.eye(d)  # noqa: E731
    at = lambda x: gaussian_flow_map(path, mean, cov, x, t)  # noqa: E731
    A = (at(np.eye(d)) - at(np.zeros((1, d)))).T  # columns φ(e_i) − φ(0)
    np.testing.assert_allclose(A @ C(0.0) @ A.T, C(t), rtol=CLOSED_TOL, atol=CLOSED_TOL)
    np.testing.assert_allclose(at(path.alpha_t(0.0) * mean[None]), path.alpha_t(t) * mean[None],
                               rtol=CLOSED_TOL, atol=CLOSED_TOL)
    np.testing.assert_allclose(A, A.T, atol=CLOSED_TOL)


@given(seeds, st.sampled_from(PATHS), st.lists(st.floats(0.0, 0.98), min_size=3, max_size=3))
def test_flow_map_composes_as_a_flow(seed, path, times):
    """φ_{s→t} ∘ φ_{r→s} = φ_{r→t} for any r, s, t (a flow, MIX.10)."""
    r, s, t = times
    _, mean, cov = FLOW_MAP_TARGETS[seed % 2]
    x = np.random.default_rng(seed).normal(size=(3, mean.size))
    two = gaussian_flow_map(path, mean, cov, gaussian_flow_map(path, mean, cov, x, s, r), t, s)
    np.testing.assert_allclose(two, gaussian_flow_map(path, mean, cov, x, t, r), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- fixed steps

ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


@pytest.fixture(scope="module")
def field_and_exact():
    mlp = MLP(2, (8,), "tanh", 1)
    params = mlp.init(np.random.default_rng(3))
    x = np.random.default_rng(4).normal(size=(3, 2))
    exact = CNF.from_mlp(mlp, params, rtol=1e-13, atol=1e-13).push_forward(x).x
    return (lambda y, t: mlp.apply(params, y, t)), x, exact


def _observed_order(field, x, exact, tableau):
    saved = dict(TABLEAUS)
    TABLEAUS["trial"] = tableau
    try:
        errs = [np.max(np.abs(fixed_step_trajectory(field, x, n, "trial")[1][-1] - exact)) for n in (8, 16, 32)]
    finally:
        TABLEAUS.clear()
        TABLEAUS.update(saved)
    return np.log2(errs[1] / errs[2])


@pytest.mark.parametrize("method", sorted(ORDERS))
def test_fixed_steps_converge_at_their_orders(field_and_exact, method):
    """Halving h divides the error by 2^p (measured from N = 16 to 32; within 0.3 of p)."""
    assert abs(_observed_order(*field_and_exact, TABLEAUS[method]) - ORDERS[method]) < 0.3


def test_fixed_step_rules_reject_a_shifted_stage_time(field_and_exact):
    """The midpoint rule with its stage at t_k instead of t_k + h/2 drops to order 1."""
    c, A, b = TABLEAUS["midpoint"]
    assert abs(_observed_order(*field_and_exact, ((0.0, 0.0), A, b)) - 2) > 0.5


def test_tableaus_are_consistent():
    """Σ_j a_ij = c_i and Σ b_i = 1 for each rule (pins the coefficients' structure)."""
    for c, A, b in TABLEAUS.values():
        assert all(sum(row) == ci for row, ci in zip(A, c)) and abs(sum(b) - 1.0) <= 2.2e-16  # RK4: 1/6 rounds


def test_fixed_step_grid_is_k_over_n():
    ts, xs = fixed_step_trajectory(lambda y, t: np.zeros_like(y), np.ones((1, 1)), 3, "euler")
    assert ts.tolist() == [0.0, 1 / 3, 2 / 3, 1.0] and xs.shape == (4, 1, 1)


# ----------------------------------------------------------------------------- a 1-D mixture

MIX_MEANS, MIX_VARS, MIX_WEIGHTS = np.array([-2.0, 1.0]), np.array([0.25, 1.0]), np.array([0.4, 0.6])


def _mixture_fd_residual(flow_map, path, t):
    x_0 = np.array([[-1.5], [0.0], [0.7], [2.0]])
    phi = lambda s: flow_map(path, MIX_MEANS, MIX_VARS, MIX_WEIGHTS, x_0, s)  # noqa: E731
    dphi = (phi(t + FD_STEP) - phi(t - FD_STEP)) / (2 * FD_STEP)
    target = GaussianMixture(MIX_MEANS[:, None], MIX_VARS[:, None, None], MIX_WEIGHTS)
    u = marginal_velocity(target, path, phi(t), t)
    return np.max(np.abs(dphi - u) / (1.0 + np.abs(u)))


@pytest.mark.parametrize("path", PATHS, ids=repr)
def test_mixture_flow_map_moves_along_the_marginal_velocity(path):
    """F_t⁻¹ ∘ F_0 (MIX.11) differentiated in t equals the posterior-weighted velocity (MIX.6)."""
    for t in (0.3, 0.8):
        assert _mixture_fd_residual(mixture_flow_map_1d, path, t) <= FD_TOL


def test_the_mixture_flow_map_check_rejects_the_moment_matched_gaussian_map():
    mean = MIX_WEIGHTS @ MIX_MEANS
    var = MIX_WEIGHTS @ (MIX_VARS + MIX_MEANS**2) - mean**2

    def moment_matched(path, means, variances, weights, x, t):
        return gaussian_flow_map(path, np.array([mean]), np.array([[var]]), x, t)

    assert _mixture_fd_residual(moment_matched, PATHS[0], 0.8) > 1e-2
