"""Flows as densities: invertibility along lines, triangular Jacobians, mass, goodness of
fit of the sampler, maximum-likelihood training, and the Flow-level error messages.

derivations/07-normalizing-flows.md (NF.1)
"""
import copy

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import jacobian
from hypothesis import given, target
from scipy import stats
from scipy.integrate import cumulative_trapezoid, quad

from fm_ref.distributions import StandardNormal, make_toy
from fm_ref.flows import (ElementwiseAffine, Flow, MaskedAutoregressive, Planar, Radial, default_flow,
                          gaussian_baseline_nll, train_flow_mle)
from fm_ref.flows.coupling import made_masks
from fm_ref.flows.residual import softplus
from fm_ref.verify.flows import (MASS_D1_TOL, MASS_D2_TOL, check_mass_d1, check_mass_d2, grid_2d,
                                 mass_by_quadrature, mass_on_grid, random_params)
from tests.strategies import adversarial_planar_radial, fewer, flow_stacks, seeds

# A determinant is "resolved" when it exceeds the rounding floor of the autograd Jacobian and
# its LU factorisation, ~d·ε·κ·‖J‖^d, κ the relative rounding of J's entries (1 for a plain
# formula; 1 + ‖u‖‖w‖ + |wᵀu| for planar, whose û is computed with cancellation; 1 + |β|/α for
# radial, whose 1 + βh cancels when β ≈ −α); 100× that is the margin below which slogdet's sign
# means nothing.
SIGN_FLOOR = 100.0 * np.finfo(float).eps
# Monte Carlo: 5 standard errors (DESIGN tier).
Z_BOUND = 5.0
# KS test of the PIT values: reject below the two-sided p-value of a 5-standard-error event.
PIT_P_MIN = 5.7e-7
# Training: held-out NLL must beat the Gaussian baseline by this much (nats/point); the
# measured gap after TRAIN_STEPS is ~0.4 on moons, so 0.1 is far outside the noise of 2000
# held-out points (standard error of the mean NLL ≈ 0.02).
TRAIN_MARGIN = 0.1
TRAIN_STEPS = 150


# ------------------------------------------------------------------ 3d: invertibility

def negative_signs_along_line(fn, start, direction, half_length=6.0, nodes=81, kappa=1.0):
    """(count of resolved points where sign det J < 0, count of resolved points) along
    start + τ·direction, τ ∈ [−L, L], J the autograd Jacobian of the batched map ``fn``;
    ``kappa`` is the relative rounding of J's entries (see SIGN_FLOOR)."""
    negative = resolved = 0
    for tau in np.linspace(-half_length, half_length, nodes):
        J = jacobian(lambda v: fn(v[None, :])[0])(start + tau * direction)
        sign, logabs = np.linalg.slogdet(J)
        floor = SIGN_FLOOR * kappa * len(start) * max(np.linalg.norm(J), 1.0) ** len(start)
        if np.exp(min(logabs, 700.0)) > floor:
            resolved += 1
            negative += int(sign < 0)
    return negative, resolved


def _line_through_the_critical_set(layer, params, rng):
    """For Planar: the line along w through the hyperplane wᵀz + b = 0 (where det J is
    smallest); for Radial: a line passing 1e-3 from the centre z₀ (where it is smallest)."""
    d = layer.dim
    if isinstance(layer, Planar):
        w = params[0]
        return -float(params[2]) * w / (w @ w), w / np.linalg.norm(w)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    offset = rng.standard_normal(d)
    offset -= (offset @ direction) * direction
    offset = offset / np.linalg.norm(offset) if d > 1 and np.linalg.norm(offset) > 0 else np.zeros(d)
    return params[0] + 1e-3 * offset + 1e-3 * direction / 7.0, direction


@fewer(0.75)
@given(adversarial_planar_radial(), seeds)
def test_planar_and_radial_determinant_never_changes_sign(layer_params, seed):
    """For any raw parameters, det ∂x/∂z > 0 along a line through the critical set (sign of
    slogdet of the autograd Jacobian, wherever LU resolves it); a random line as well.
    derivations/07-normalizing-flows.md (NF.17), (NF.22)"""
    layer, params = layer_params
    rng = np.random.default_rng(seed)
    fn = lambda v: layer.forward_and_log_det(params, v)[0]  # noqa: E731
    if isinstance(layer, Planar):
        w, u, _ = params
        kappa = 1.0 + np.linalg.norm(u) * np.linalg.norm(w) + abs(w @ u)
    else:
        alpha = float(softplus(params[1]))
        kappa = 1.0 + abs(float(softplus(params[2])) - alpha) / alpha
    start, direction = _line_through_the_critical_set(layer, params, rng)
    negative, resolved = negative_signs_along_line(fn, start, direction, kappa=kappa)
    assert negative == 0 and resolved >= 66
    direction = rng.standard_normal(layer.dim)
    negative, resolved = negative_signs_along_line(fn, rng.standard_normal(layer.dim), direction, nodes=41,
                                                   kappa=kappa)
    assert negative == 0 and resolved >= 35


def test_sign_check_rejects_an_unconstrained_planar_layer():
    """Without the reparameterisation (û = u with wᵀu < −1) or with β < −α the same check
    finds a negative determinant."""
    w, u, b = np.array([1.0, 0.5]), np.array([-2.0, -1.0]), 0.3   # wᵀu = −2.5 < −1
    naive_planar = lambda v: v + anp.tanh(v @ w + b)[:, None] * u[None, :]  # noqa: E731
    negative, _ = negative_signs_along_line(naive_planar, -b * w / (w @ w), w / np.linalg.norm(w))
    assert negative > 0
    z0, alpha, beta = np.zeros(2), 1.0, -3.0                         # β < −α
    naive_radial = lambda v: v + (beta / (alpha + anp.sqrt(anp.sum((v - z0) ** 2, axis=1))))[:, None] * (v - z0)  # noqa
    negative, _ = negative_signs_along_line(naive_radial, np.array([1e-3, 2e-3]), np.array([0.6, 0.8]))
    assert negative > 0


# ------------------------------------------------------------------ 3e: triangular Jacobians

def upper_entries(layer, params, z, inverse=False):
    """(max |J_ij| over deg(j) > deg(i), min |J_ij| over deg(j) < deg(i)) of the autograd
    Jacobian of the layer's forward (or inverse) map, in the layer's ordering."""
    method = layer.inverse_and_log_det if inverse else layer.forward_and_log_det
    later = layer.degrees[None, :] > layer.degrees[:, None]
    earlier = layer.degrees[None, :] < layer.degrees[:, None]
    worst_upper, smallest_lower = 0.0, np.inf
    for row in z:
        J = jacobian(lambda v: method(params, v[None, :])[0][0])(row)
        worst_upper = max(worst_upper, float(np.max(np.abs(J[later]), initial=0.0)))
        smallest_lower = min(smallest_lower, float(np.min(np.abs(J[earlier]), initial=np.inf)))
    return worst_upper, smallest_lower


@pytest.mark.parametrize("conditioner", ["z", "x"])
@pytest.mark.parametrize("order", [[0, 1, 2], [2, 0, 1], [1, 2, 0]])
def test_autoregressive_jacobian_is_triangular_in_its_order(conditioner, order):
    """∂x_i/∂z_j = 0 exactly when deg(j) > deg(i), both directions; the lower part is not
    zero, so the check can see a dependence. derivations/07-normalizing-flows.md (NF.12), (NF.13)"""
    layer = MaskedAutoregressive(3, hidden=(8, 8), order=order, conditioner=conditioner)
    params = random_params(layer.identity_params(), np.random.default_rng(0), 1.0)
    z = np.random.default_rng(1).normal(size=(4, 3))
    for inverse in (False, True):
        upper, lower = upper_entries(layer, params, z, inverse)
        assert upper == 0.0 and lower > 1e-8


def test_triangularity_check_rejects_a_broken_mask():
    """With the output mask allowing deg(j) ≤ deg(i) (a classic MADE bug) the same check fails."""
    layer = MaskedAutoregressive(3, hidden=(8, 8), order=[2, 0, 1])
    broken = copy.copy(layer)
    broken.masks = made_masks(layer.degrees, layer.hidden)
    broken.masks[-1] = np.ones_like(broken.masks[-1])
    params = random_params(layer.identity_params(), np.random.default_rng(0), 1.0)
    z = np.random.default_rng(1).normal(size=(4, 3))
    assert upper_entries(broken, params, z)[0] > 1e-6


# ------------------------------------------------------------------ 3f: mass

def _flipped_log_prob(flow, params):
    """log p₀(z) − Σ log|det ∂z/∂x|: the change of variables with the wrong sign."""
    def log_prob(x):
        z, log_det = flow.inverse_and_log_det(params, x)
        return flow.base.log_prob(z) - log_det
    return log_prob


@fewer(0.2)
@given(flow_stacks(dim=1, max_layers=3, scale=0.7))
def test_mass_is_one_in_d1_by_adaptive_quadrature(flow_params):
    """derivations/07-normalizing-flows.md (NF.1)"""
    flow, params = flow_params
    mass, err = mass_by_quadrature(lambda x: flow.log_prob(params, x))
    target(abs(mass - 1.0))
    assert abs(mass - 1.0) <= MASS_D1_TOL and err <= MASS_D1_TOL


@fewer(0.15)
@given(flow_stacks(dim=2, max_layers=3, scale=0.3))
def test_mass_is_one_in_d2_on_a_grid(flow_params):
    """derivations/07-normalizing-flows.md (NF.1)"""
    flow, params = flow_params
    mass = mass_on_grid(lambda x: flow.log_prob(params, x))
    target(abs(mass - 1.0))
    assert abs(mass - 1.0) <= MASS_D2_TOL


def test_registered_mass_checks_pass():
    for check in (check_mass_d1, check_mass_d2):
        result = check()
        assert result.passed, (result.name, result.measured)


def test_mass_check_rejects_a_flipped_log_det():
    """The same quadratures report mass ≠ 1 when the log-det enters with the wrong sign."""
    rng = np.random.default_rng(0)
    flow1 = Flow([ElementwiseAffine(1), Planar(1), Radial(1)])
    params1 = random_params(flow1.identity_params(), rng, 0.7)
    mass, _ = mass_by_quadrature(_flipped_log_prob(flow1, params1))
    assert abs(mass - 1.0) > 100 * MASS_D1_TOL
    flow2 = Flow([ElementwiseAffine(2), Planar(2), MaskedAutoregressive(2, hidden=(4,))])
    params2 = random_params(flow2.identity_params(), rng, 0.3)
    assert abs(mass_on_grid(_flipped_log_prob(flow2, params2)) - 1.0) > 10 * MASS_D2_TOL


# ------------------------------------------------------------------ 3g: goodness of fit

def _cdf_on_grid(flow, params, lo, hi, nodes=40001):
    """F(x) = ∫_{−∞}^x p by quad on (−∞, lo] plus a cumulative trapezoid on [lo, hi]."""
    grid = np.linspace(lo, hi, nodes)
    dens = np.exp(flow.log_prob(params, grid[:, None]))
    tail, _ = quad(lambda s: float(np.exp(flow.log_prob(params, np.array([[s]]))[0])), -np.inf, lo)
    return grid, tail + cumulative_trapezoid(dens, grid, initial=0.0)


def _pit_p_value(flow, params, samples):
    grid, cdf = _cdf_on_grid(flow, params, samples.min() - 1.0, samples.max() + 1.0)
    return stats.kstest(np.interp(samples[:, 0], grid, cdf), "uniform").pvalue


def _d1_example(seed=0):
    flow = Flow([ElementwiseAffine(1), Planar(1), Radial(1), MaskedAutoregressive(1, hidden=(4,)), Planar(1)])
    return flow, random_params(flow.identity_params(), np.random.default_rng(seed), 0.8)


def test_samples_have_the_density_log_prob_says_d1():
    """PIT: F(X) ~ U(0, 1) for X from ``sample``, F by quadrature of exp(log_prob); KS test.
    derivations/07-normalizing-flows.md (NF.26)"""
    flow, params = _d1_example()
    samples = flow.sample(params, 20000, np.random.default_rng(1))
    assert _pit_p_value(flow, params, samples) >= PIT_P_MIN


def _expected_log_density_z(flow, params, samples):
    """(MC mean of log p over samples − grid quadrature of ∫ p log p) / its standard error."""
    lp = flow.log_prob(params, samples)
    nodes, weights = grid_2d()
    log_p = flow.log_prob(params, nodes)
    exact = float(weights @ (np.exp(log_p) * log_p))
    return (lp.mean() - exact) / (lp.std(ddof=1) / np.sqrt(lp.size))


def _d2_example(seed=0):
    flow = Flow([ElementwiseAffine(2), Planar(2), Radial(2), MaskedAutoregressive(2, hidden=(8,)),
                 default_flow(2, "coupling", n_layers=1, hidden=(8,)).layers[0]])
    return flow, random_params(flow.identity_params(), np.random.default_rng(seed), 0.3)


def test_expected_log_density_matches_quadrature_d2():
    """E_p[log p] by Monte Carlo over ``sample`` vs ∫ p log p on a grid, within 5 SE.
    derivations/07-normalizing-flows.md (NF.26)"""
    flow, params = _d2_example()
    samples = flow.sample(params, 20000, np.random.default_rng(2))
    assert abs(_expected_log_density_z(flow, params, samples)) <= Z_BOUND


def test_goodness_of_fit_rejects_a_wrong_sampler():
    """Samples pushed from z ~ N(0, 1.2² I) instead of N(0, I) fail both checks."""
    flow, params = _d1_example()
    z = 1.2 * np.random.default_rng(1).standard_normal((20000, 1))
    assert _pit_p_value(flow, params, flow.forward_and_log_det(params, z)[0]) < PIT_P_MIN
    flow2, params2 = _d2_example()
    z2 = 1.2 * np.random.default_rng(2).standard_normal((20000, 2))
    assert abs(_expected_log_density_z(flow2, params2, flow2.forward_and_log_det(params2, z2)[0])) > Z_BOUND


@fewer(0.5)
@given(flow_stacks(), seeds)
def test_sample_with_log_prob_matches_log_prob(flow_params, seed):
    """Forward route (NF.5: log p₀(z) − Σ forward log-dets) vs inverse route (NF.4).
    derivations/07-normalizing-flows.md (NF.4), (NF.5)"""
    flow, params = flow_params
    x, lp = flow.sample_with_log_prob(params, 50, np.random.default_rng(seed))
    ref = flow.log_prob(params, x)
    err = float(np.max(np.abs(lp - ref) / np.maximum(1.0, np.abs(ref))))
    target(err)
    assert err <= 1e-10
    assert np.array_equal(flow.sample(params, 50, np.random.default_rng(seed)), x)


# ------------------------------------------------------------------ training

def test_gaussian_baseline_matches_scipy():
    """derivations/07-normalizing-flows.md (NF.25)"""
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 2)) @ np.array([[1.0, 0.4], [0.0, 0.5]]) + 1.0
    test = rng.normal(size=(100, 2))
    ref = -stats.multivariate_normal(train.mean(0), np.cov(train.T, bias=True)).logpdf(test).mean()
    assert abs(gaussian_baseline_nll(train, test) - ref) <= 1e-12 * abs(ref)
    # The rejecting companion: the unbiased covariance is not the MLE baseline.
    wrong = -stats.multivariate_normal(train.mean(0), np.cov(train.T)).logpdf(test).mean()
    assert abs(gaussian_baseline_nll(train, test) - wrong) > 1e-6


def test_mle_training_beats_the_gaussian_baseline():
    """A small coupling flow trained for TRAIN_STEPS beats the fitted Gaussian (NF.25) on
    held-out moons by TRAIN_MARGIN, far beyond the NLL's standard error, and its NLL
    decreases. derivations/07-normalizing-flows.md (NF.24)"""
    rng = np.random.default_rng(0)
    train, test = make_toy("moons", 2000, rng), make_toy("moons", 2000, rng)
    flow = default_flow(2, "coupling", n_layers=4, hidden=(16, 16))
    start = flow.data_init(flow.init(np.random.default_rng(1)), train)
    seen = []
    params, losses = train_flow_mle(flow, train, TRAIN_STEPS, np.random.default_rng(1), lr=1e-2, batch=128,
                                    callback=lambda step, loss, p: seen.append(step))
    assert seen == list(range(TRAIN_STEPS)) and losses.shape == (TRAIN_STEPS,)
    nll_start = -flow.log_prob(start, test).mean()
    nll_end = -flow.log_prob(params, test).mean()
    assert nll_end < nll_start - TRAIN_MARGIN
    assert nll_end < gaussian_baseline_nll(train, test) - TRAIN_MARGIN
    assert losses[-20:].mean() < losses[:20].mean()


# ------------------------------------------------------------------ 3h: Flow-level errors

def test_flow_bad_input_raises_naming_the_argument():
    flow = default_flow(2, "planar", n_layers=2)
    params = flow.init(np.random.default_rng(0))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="layers"):
        Flow([])
    with pytest.raises(ValueError, match="layers"):
        Flow([Planar(2), Planar(3)])
    with pytest.raises(TypeError, match="layers"):
        Flow([Planar(2), "planar"])
    with pytest.raises(ValueError, match="base"):
        Flow([Planar(2)], base=StandardNormal(3))
    with pytest.raises(TypeError, match="params"):
        flow.log_prob(params[:-1], np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"^x:"):
        flow.log_prob(params, np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"^x:"):
        flow.log_prob(params, np.array([[np.inf, 0.0]]))
    with pytest.raises(ValueError, match=r"^z:"):
        flow.forward_and_log_det(params, np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"^n:"):
        flow.sample(params, 0, rng)
    with pytest.raises(TypeError, match="rng"):
        flow.sample(params, 5, 0)
    with pytest.raises(TypeError, match="rng"):
        flow.init(0)
    data = np.random.default_rng(1).normal(size=(20, 2))
    with pytest.raises(ValueError, match="data"):
        train_flow_mle(flow, np.zeros((20, 3)), 1, rng)
    with pytest.raises(ValueError, match="steps"):
        train_flow_mle(flow, data, 0, rng)
    with pytest.raises(ValueError, match="batch"):
        train_flow_mle(flow, data, 1, rng, batch=0)
    with pytest.raises(TypeError, match="rng"):
        train_flow_mle(flow, data, 1, None)
    with pytest.raises(TypeError, match="flow"):
        train_flow_mle(Planar(2), data, 1, rng)
    with pytest.raises(ValueError, match="lr"):
        train_flow_mle(flow, data, 1, rng, lr=-1.0)
    with pytest.raises(ValueError, match="train"):
        gaussian_baseline_nll(np.ones((5, 2)), data)
    with pytest.raises(ValueError, match="test"):
        gaussian_baseline_nll(data, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="kind"):
        default_flow(2, "glow")
    with pytest.raises(ValueError, match="dim"):
        default_flow(1, "coupling")
    with pytest.raises(ValueError, match="n_layers"):
        default_flow(2, "maf", n_layers=0)
