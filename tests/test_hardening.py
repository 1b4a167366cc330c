"""Reliability: no silent NaN, no escaping warning, no hang, no object that changes behind
its back. Each test names the kind it closes (issue kinds: non-finite inputs, overflow,
singular-by-rounding covariances, caller-owned arrays, stiff ODEs, node caps, complex
outputs, scalar vs array times)."""
import copy

import numpy as np
import pytest

from fm_ref import divergence, losses, metrics
from fm_ref.adjoint import adjoint_nll_grad
from fm_ref.cnf import CNF, MAX_NFE, NFELimitError
from fm_ref.distributions import Empirical, GaussianMixture, StandardNormal
from fm_ref.flows import ElementwiseAffine, gaussian_baseline_nll
from fm_ref.nn import MLP
from fm_ref.paths import PATHS, CondOT, Polynomial
from fm_ref.train import adam

RNG = np.random.default_rng(0)
MLP2 = MLP(2, (8,))
PARAMS = MLP2.init(np.random.default_rng(1))
X = np.random.default_rng(2).standard_normal((5, 2))


# ----------------------------------------------------------------------------- MLP parameters

@pytest.mark.parametrize("value, error, words", [(np.nan, ValueError, "finite"), (np.inf, ValueError, "finite"),
                                                 (1j, TypeError, "complex"), (None, TypeError, "int64")])
def test_mlp_parameters_with_nan_inf_or_complex_entries_raise(value, error, words):
    """Before: shapes were checked, values not, and a NaN came back."""
    bad = copy.deepcopy(PARAMS)
    W = bad[1][0].astype(complex) if value == 1j else bad[1][0].copy()
    if value is None:
        W = np.ones(W.shape, dtype=np.int64)
    else:
        W[0, 0] = value
    bad[1] = (W, bad[1][1])
    for call in (lambda: MLP2(bad, X, 0.5), lambda: MLP2.divergence(bad, X, 0.5),
                 lambda: CNF.from_mlp(MLP2, bad), lambda: MLP2.sq_error_and_grad(bad, X, 0.5, X)):
        with pytest.raises(error, match=rf"^params: layer 1 W expected .*{words}"):
            call()


def test_mlp_output_overflow_raises_naming_params():
    """Finite weights of 1e200 on inputs of ±1e150 make inf − inf = NaN inside: named, not returned."""
    huge = [(np.full_like(W, 1e200), b) for W, b in PARAMS]
    for call in (MLP2, MLP2.divergence, MLP2.value_and_jacobian):
        with pytest.raises(ValueError, match=r"^params: the network's .*overflows float64"):
            call(huge, np.array([[1e150, -1e150]]), 0.5)


# ----------------------------------------------------------------------------- adam

def test_adam_refuses_non_finite_parameters_and_gradients_and_names_the_cause():
    """Before: NaN or −inf parameters came back (a NaN gradient on the last step, NaN starting
    parameters), and a NaN loss was blamed on the learning rate."""
    with pytest.raises(ValueError, match=r"^params: leaf 0 expected finite values"):
        adam(lambda p, s: (0.0, p), [np.array([np.nan])], 2)
    with pytest.raises(TypeError, match=r"^params: leaf 0 expected real"):
        adam(lambda p, s: (0.0, p), [np.array([1j])], 2)

    def nan_grad_last(p, s):
        return 1.0, [np.array([np.nan if s == 2 else 1.0])]

    with pytest.raises(FloatingPointError, match=r"^loss_and_grad: the gradient \(leaf 0\) is non-finite at step 2"):
        adam(nan_grad_last, [np.zeros(1)], 3)
    with pytest.raises(FloatingPointError, match="at the starting parameters") as info:
        adam(lambda p, s: (np.nan, p), [np.zeros(1)], 2)
    assert "lower lr" not in str(info.value)
    with pytest.raises(TypeError, match=r"^loss_and_grad: expected a real scalar loss"):
        adam(lambda p, s: (1j, p), [np.zeros(1)], 2)
    with pytest.raises(TypeError, match=r"^loss_and_grad: gradient leaf 0 expected real"):
        adam(lambda p, s: (1.0, [np.array([1j])]), [np.zeros(1)], 2)


def test_adam_with_eps_zero_keeps_a_zero_gradient_coordinate_in_place():
    """m = v = 0 with eps = 0 made 0/0 = NaN; the limit (no gradient ever: no move) is 0."""
    params, _ = adam(lambda p, s: (1.0, [np.array([0.0, 1.0])]), [np.array([3.0, 3.0])], 4, lr=0.1, eps=0.0)
    assert params[0][0] == 3.0 and np.isclose(params[0][1], 3.0 - 0.4, rtol=0, atol=1e-15)


def test_adam_overflowing_update_raises():
    with pytest.raises(FloatingPointError, match=r"^adam: the parameters \(leaf 0\) became non-finite"):
        adam(lambda p, s: (1.0, [np.array([1.0])]), [np.array([1.7e308])], 2, lr=1e308)


# ----------------------------------------------------------------------------- overflow

FAR = np.array([[1e200, -1e200]])
BIG_MIX = GaussianMixture(np.array([[1e200, 1e200]]), np.ones(1))


@pytest.mark.parametrize("name, call", [
    ("x", lambda: CondOT().conditional_log_prob(FAR, np.zeros((1, 2)), 0.5)),
    ("x", lambda: StandardNormal(2).log_prob(FAR)),
    ("x", lambda: GaussianMixture(np.zeros((1, 2)), np.ones(1)).log_prob(FAR)),
    ("means", lambda: BIG_MIX.second_moment()),
    ("means", lambda: losses.conditional_energy(CondOT(), BIG_MIX)),
    ("x", lambda: metrics.wasserstein2(FAR, -FAR)),
    ("train", lambda: gaussian_baseline_nll(np.array([[1e200, 0.0], [-1e200, 1.0], [0.0, 2.0]]), np.zeros((1, 2)))),
    ("test", lambda: gaussian_baseline_nll(X, FAR)),
    ("model", lambda: losses.cfm_loss(lambda p, x, t: x * 1e200, None, CondOT(), np.full(5, 0.5), X, X)),
    ("model", lambda: losses.cfm_loss_quadrature(MLP2, PARAMS, CondOT(), BIG_MIX)),
])
def test_overflow_raises_naming_the_argument_never_nan_or_a_warning(name, call):
    """Before: a RuntimeWarning (an error in the tests) and NaN or inf came back."""
    with pytest.raises(ValueError, match=rf"^{name}: .*overflows float64"):
        call()


def test_moments_are_right_where_only_an_intermediate_would_overflow():
    """Values of 1e300 have a representable mean and standard error; a mixture with means
    of 1e200 has a representable covariance: computed, not refused, and exact here."""
    mean, se = metrics.mean_and_stderr(np.array([1e300, -1e300, 1e300]))
    assert mean == pytest.approx(1e300 / 3, rel=1e-15) and se == pytest.approx(2e300 / 3, rel=1e-15)
    assert metrics.mean_and_stderr(np.array([1.7e308, 1.7e308])) == (1.7e308, 0.0)
    assert np.array_equal(BIG_MIX.covariance(), np.eye(2))
    s, b = ElementwiseAffine(2).data_init(np.array([[1e200, 1e-200], [-1e200, -1e-200]]))
    assert np.array_equal(s, np.log([1e200, 1e-200])) and np.array_equal(b, [0.0, 0.0])
    data = np.random.default_rng(3).standard_normal((50, 2))
    assert metrics.mean_and_stderr(data[:, 0]) == (float(np.mean(data[:, 0])), float(np.std(data[:, 0], ddof=1) / np.sqrt(50)))


def test_a_covariance_singular_up_to_rounding_is_refused():
    """Before: it passed the Cholesky by rounding and gave a plausible, wrong NLL (−13.04)."""
    collinear = np.array([[0.1, 0.3], [0.2, 0.6], [0.7, 2.1], [0.4, 1.2]])  # x₂ = 3 x₁, rounded
    for train in (collinear, np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.000000000000001]])):
        with pytest.raises(ValueError, match=r"^train: the sample covariance is singular"):
            gaussian_baseline_nll(train, np.zeros((1, 2)))
    tilted = collinear + np.array([[0.0, 1e-3], [0.0, -1e-3], [0.0, 0.0], [0.0, 2e-3]])
    assert np.isfinite(gaussian_baseline_nll(tilted, np.zeros((1, 2))))  # nearly but not singular: a value


# ----------------------------------------------------------------------------- caller-owned arrays

def test_a_mixture_is_not_changed_by_the_caller_mutating_its_arrays():
    means, covs, weights = np.zeros((2, 2)), np.ones((2, 2)), np.array([0.5, 0.5])
    q = GaussianMixture(means, covs, weights)
    points = np.ones((3, 2))
    e = Empirical(points)
    before = q.log_prob(X), q.sample(4, np.random.default_rng(0)), e.sample(4, np.random.default_rng(0))
    means[:] = 5.0
    covs[:] = 9.0
    weights[:] = [1.0, 0.0]
    points[:] = -7.0
    after = q.log_prob(X), q.sample(4, np.random.default_rng(0)), e.sample(4, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    with pytest.raises(ValueError, match="read-only"):
        q.means[0, 0] = 1.0


# ----------------------------------------------------------------------------- hangs

def test_a_stiff_field_stops_at_max_nfe_with_a_clear_error(monkeypatch):
    """Before: dx/dt = −10⁶ x ran DOP853 for millions of evaluations (minutes to hours)."""
    flow = CNF(lambda x, t: -1e6 * x, 2, max_nfe=2000)
    with pytest.raises(NFELimitError, match=r"^max_nfe: .*2000 right-hand-side evaluations.*stiff.*'Radau' or 'BDF'"):
        flow.push_forward(np.ones((3, 2)))
    with pytest.raises(NFELimitError, match="stiff"):
        flow.log_prob(np.ones((3, 2)))
    assert CNF(lambda x, t: -1e6 * x, 2, method="Radau").push_forward(np.ones((3, 2))).nfev < 2000
    assert CNF(lambda x, t: -x, 2).max_nfe == MAX_NFE
    with pytest.raises(NFELimitError, match=r"^max_nfe: the ODE solve"):  # the forward pass (38 here)
        adjoint_nll_grad(MLP2, PARAMS, X, max_nfe=20)
    from fm_ref import adjoint

    real = CNF.from_mlp
    monkeypatch.setattr(adjoint.CNF, "from_mlp", lambda *a, **k: real(*a, **dict(k, max_nfe=MAX_NFE)))
    with pytest.raises(NFELimitError, match=r"^max_nfe: the adjoint pass"):  # the backward pass alone
        adjoint_nll_grad(MLP2, PARAMS, X, max_nfe=20)
    for bad in (0, 1.5, True):
        with pytest.raises((TypeError, ValueError), match=r"^max_nfe:"):
            CNF(lambda x, t: -x, 2, max_nfe=bad)


def test_fixed_step_rk4_caps_its_step_count():
    from fm_ref.adjoint import nll_rk4

    with pytest.raises(ValueError, match=r"^steps: expected at most 100000"):
        nll_rk4(MLP2, PARAMS, X, 10**9)


def test_every_quadrature_entry_point_caps_its_node_count():
    """Before: conditional_energy built n_t Gauss–Legendre nodes for any n_t (O(n_t³) time)."""
    target = GaussianMixture(np.zeros((1, 1)), np.ones(1))
    for call in (lambda n: losses.conditional_energy(CondOT(), target, n_t=n),
                 lambda n: losses.cfm_quadrature_nodes(CondOT(), target, n_t=n),
                 lambda n: losses.fm_quadrature_nodes(CondOT(), target, n_t=n)):
        with pytest.raises(ValueError, match=r"^n_t: expected at most 1000"):
            call(10**6)
        call(2)


# ----------------------------------------------------------------------------- complex outputs

def test_complex_velocities_and_model_outputs_raise():
    """Before: a ComplexWarning, and the imaginary part dropped."""
    flow = CNF(lambda x, t: (1 + 1j) * x, 2)
    for call in (lambda: flow.push_forward(X), lambda: flow.log_prob(X)):
        with pytest.raises(TypeError, match=r"^velocity: expected real floating-point values, got dtype complex128"):
            call()
    for call in (divergence.divergence, divergence.jacobian):
        with pytest.raises(TypeError, match=r"^f: expected real floating-point values"):
            call(lambda x, t: x * (1 + 1j), X, 0.5)
        with pytest.raises(FloatingPointError, match=r"^f: non-finite value"):
            call(lambda x, t: x * np.nan, X, 0.5)
    with pytest.raises(TypeError, match=r"^model: expected real floating-point output"):
        losses.cfm_loss(lambda p, x, t: x * (1 + 0j), None, CondOT(), np.full(5, 0.5), X, X)
    target = GaussianMixture(np.zeros((1, 2)), np.ones(1))
    with pytest.raises(TypeError, match=r"^velocity: expected real floating-point output"):
        losses.fm_loss(MLP2, PARAMS, CondOT(), target, np.full(5, 0.5), X, X, velocity=lambda x, t: x + 0j)


# ----------------------------------------------------------------------------- scalar vs array time

def test_a_float_time_goes_through_the_array_code_path():
    """The contract: a schedule at a float t is bit-identical to t inside an array, because
    both run the same contiguous-array loop (NumPy's SIMD power and the C library's pow
    may differ by an ulp). Before: the float reached the schedule as a Python float."""
    seen = []

    class Spy(Polynomial):
        def _alpha(self, t):
            seen.append(np.shape(t))
            return super()._alpha(t)

    value = Spy(2.5).alpha_t(0.3)
    assert seen[-1] == (1,) and type(value) is float
    assert value == Spy(2.5).alpha_t(np.array([0.1, 0.3]))[1]
    strided = np.linspace(0.0, 1.0, 9)[::2]
    for name, cls in PATHS.items():
        path = cls()
        for method in (path.alpha_t, path.sigma_t, path.d_alpha_t):
            assert np.array_equal(method(strided), [method(float(s)) for s in strided]), name
