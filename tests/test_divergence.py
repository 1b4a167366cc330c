"""Divergence: exact autograd trace, closed-form MLP trace, Hutchinson's estimator.

Routes: autograd Jacobian vs central differences; closed-form MLP trace vs autograd;
Hutchinson's mean vs the exact trace (5 standard errors); its variance vs the closed
form (Rademacher: exact enumeration of all 2^d sign vectors; Gaussian: Monte Carlo).
Each check is also shown to reject a deliberately wrong input.
"""
import itertools

import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fm_ref.divergence import (
    divergence,
    divergence_hutchinson,
    draw_probes,
    hutchinson_variance,
    jacobian,
    mlp_value_and_divergence,
    value_and_divergence,
)
from fm_ref.nn import MLP
from strategies import dims, mlp_fields, points, seeds, square_matrices

# Central differences with step H: truncation ~H² |f'''| ~ 1e-10 and rounding ~ε/H ~ 2e-11
# relative, so 1e-6 (the project's central-difference tier) has wide margin.
FD_STEP = 1e-5
FD_RTOL = 1e-6
# Autograd against a closed form: the same arithmetic in another order, a few ulps per layer.
AUTOGRAD_RTOL = 1e-10
# Two closed forms of the same trace (MLPTrace's cyclic form or plain-NumPy tangents, and
# the tangents of MLP.value_and_divergence): a few ulps of O(1) sums.
CLOSED_RTOL = 1e-12
# Monte Carlo: 5 standard errors (a false alarm has probability < 1e-6 per check).
Z_MAX = 5.0


def nonlinear_field(x, t):
    """A pointwise field with a non-symmetric Jacobian and curvature in every entry."""
    A = anp.array([[0.5, -1.0, 0.3], [2.0, 0.1, -0.7], [0.0, 0.4, 1.2]])[: x.shape[1], : x.shape[1]]
    return anp.sin(x @ A) * (1.0 + t) + x**3 / 3.0 - t * anp.roll(x, 1, axis=1) ** 2


def fd_jacobian(f, x, t, h=FD_STEP):
    """J[n, i, j] by central differences in x_j, shape (n, d, d)."""
    n, d = x.shape
    cols = []
    for j in range(d):
        e = np.zeros(d)
        e[j] = h
        cols.append((f(x + e, t) - f(x - e, t)) / (2.0 * h))
    return np.stack(cols, axis=2)


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1.0))


# ----------------------------------------------------------------------- (a) exact trace
@given(d=dims, x=st.data(), t=st.sampled_from([0.0, 0.3, 1.0]))
def test_jacobian_matches_central_differences(d, x, t):
    pts = x.draw(points(d, scale=1.0))
    J = jacobian(nonlinear_field, pts, t)
    assert J.shape == (pts.shape[0], d, d) and J.dtype == np.float64
    assert rel_err(J, fd_jacobian(nonlinear_field, pts, t)) <= FD_RTOL


@given(d=dims, x=st.data())
def test_divergence_is_trace_of_jacobian_and_of_central_differences(d, x):
    pts = x.draw(points(d, scale=1.0))
    div = divergence(nonlinear_field, pts, 0.4)
    assert div.shape == (pts.shape[0],)
    assert rel_err(div, np.trace(jacobian(nonlinear_field, pts, 0.4), axis1=1, axis2=2)) <= CLOSED_RTOL
    fd_trace = np.trace(fd_jacobian(nonlinear_field, pts, 0.4), axis1=1, axis2=2)
    assert rel_err(div, fd_trace) <= FD_RTOL
    value, div2 = value_and_divergence(nonlinear_field, pts, 0.4)
    assert np.array_equal(div, div2) and np.allclose(value, nonlinear_field(pts, 0.4), rtol=0, atol=0)


def test_the_trace_check_rejects_a_transposed_sum():
    # Σ_ij J_ij (a plausible slip for tr J) differs from the central-difference trace.
    pts = np.random.default_rng(0).normal(size=(4, 3))
    wrong = np.sum(jacobian(nonlinear_field, pts, 0.4), axis=(1, 2))
    fd_trace = np.trace(fd_jacobian(nonlinear_field, pts, 0.4), axis1=1, axis2=2)
    assert rel_err(wrong, fd_trace) > 1e3 * FD_RTOL


def test_linear_field_jacobian_is_its_matrix():
    A = np.array([[1.0, 2.0], [-3.0, 0.5]])
    pts = np.random.default_rng(1).normal(size=(5, 2))
    J = jacobian(lambda x, t: x @ A.T + t, pts, 0.5)
    assert np.max(np.abs(J - A)) <= CLOSED_RTOL
    assert np.max(np.abs(divergence(lambda x, t: x @ A.T, pts, 0.5) - 1.5)) <= CLOSED_RTOL


@given(field=mlp_fields(), data=st.data(), t=st.sampled_from([0.0, 0.37, 1.0]))
def test_mlp_closed_form_trace_matches_autograd(field, data, t):
    """derivations/06-cnf.md (CNF.8): the forward-mode trace equals d reverse passes."""
    mlp, params = field
    pts = data.draw(points(mlp.dim))
    value, div = mlp_value_and_divergence(mlp, params, pts, t)
    assert value.dtype == np.float64 and div.shape == (pts.shape[0],)
    ref_value, ref_div = value_and_divergence(lambda x, s: mlp.apply(params, x, s), pts, t)
    assert rel_err(value, ref_value) <= CLOSED_RTOL
    assert rel_err(div, ref_div) <= AUTOGRAD_RTOL
    assert rel_err(div, mlp.divergence(params, pts, t)) <= CLOSED_RTOL
    traced_value, traced_div = mlp.value_and_divergence(params, pts, t)
    assert rel_err(traced_div, ref_div) <= AUTOGRAD_RTOL and rel_err(traced_value, ref_value) <= CLOSED_RTOL


def test_the_mlp_trace_check_rejects_a_dropped_activation_derivative():
    mlp = MLP(3, (16, 16))
    params = mlp.init(np.random.default_rng(2))
    pts = np.random.default_rng(3).normal(size=(6, 3))

    def wrong_trace(x, t):  # the tangent skips φ'(a_2) of the second hidden layer
        h = np.tanh(mlp.features(x, t) @ params[0][0] + params[0][1])
        T = params[0][0][:3][:, None, :] * (1 - h**2)[None]
        T = (T.reshape(-1, 16) @ params[1][0]).reshape(3, -1, 16)
        return sum(T[i] @ params[2][0][:, i] for i in range(3))

    ref = divergence(lambda x, s: mlp.apply(params, x, s), pts, 0.5)
    assert rel_err(mlp_value_and_divergence(mlp, params, pts, 0.5)[1], ref) <= AUTOGRAD_RTOL
    assert rel_err(wrong_trace(pts, 0.5), ref) > 1e-3


# ------------------------------------------------------------------------ (b) Hutchinson
def per_probe_estimates(f, x, t, rng, k, probe):
    """k independent single-probe estimates at each point: shape (k, n), in ONE batched call."""
    n, d = x.shape
    rep = np.tile(x, (k, 1))
    return divergence_hutchinson(f, rep, t, rng, probe=probe).reshape(k, n)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    mlp = MLP(3, (16, 16), activation="swish")
    params = mlp.init(np.random.default_rng(4), scale=1.5)
    f = lambda x, t: mlp.apply(params, x, t)  # noqa: E731
    pts = np.random.default_rng(5).normal(size=(3, 3))
    est = per_probe_estimates(f, pts, 0.6, np.random.default_rng(6), 4000, probe)
    exact = divergence(f, pts, 0.6)
    se = est.std(axis=0, ddof=1) / np.sqrt(est.shape[0])
    assert np.all(np.abs(est.mean(axis=0) - exact) <= Z_MAX * se)
    # the same check rejects a biased estimator: the trace shifted by 2 Z_MAX standard
    # errors, a bias of 0.16 standard deviations of one estimate, small next to its noise
    assert np.all(np.abs(est.mean(axis=0) + 2 * Z_MAX * se - exact) > Z_MAX * se)


@given(A=square_matrices())
def test_rademacher_variance_matches_exact_enumeration(A):
    """derivations/06-cnf.md (CNF.10): the 2^d sign vectors are equiprobable, so the
    variance is an exact finite average; the closed form must equal it."""
    d = A.shape[0]
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=d)))
    quad = np.einsum("ki,ij,kj->k", signs, A, signs)
    assert abs(quad.mean() - np.trace(A)) <= CLOSED_RTOL * max(1.0, np.abs(A).sum())
    exact_var = np.mean((quad - quad.mean()) ** 2)
    scale = max(1.0, np.sum(A * A))
    assert abs(hutchinson_variance(A, "rademacher") - exact_var) <= CLOSED_RTOL * scale
    # dropping the −2 Σ A_ii² term (i.e. using the Gaussian formula) is rejected when diag(A) ≠ 0
    if np.sum(np.diag(A) ** 2) > 1e-3:
        assert abs(hutchinson_variance(A, "gaussian") - exact_var) > 1e-3


def sample_variance_z(est, claimed):
    """z-score of the sample variance of ``est`` against ``claimed``: SE² ≈ (m₄ − s⁴)/k."""
    k = est.shape[0]
    dev = est - est.mean()
    s2 = np.mean(dev**2)
    se = np.sqrt((np.mean(dev**4) - s2**2) / k)
    return abs(s2 - claimed) / se


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_variance_matches_closed_form_monte_carlo(probe):
    # non-symmetric, with ‖A‖_F² = 19, tr(A²) = 18.25, Σ A_ii² = 6.25: every term matters
    A = np.array([[1.0, 2.0, 0.0, -1.0], [1.5, -1.0, 1.5, 0.0], [0.0, 1.0, 0.5, 1.0], [-0.5, 0.0, 1.0, 2.0]])
    f = lambda x, t: x @ A.T  # noqa: E731  (J = A exactly)
    est = per_probe_estimates(f, np.zeros((1, 4)), 0.0, np.random.default_rng(7), 40000, probe)[:, 0]
    assert sample_variance_z(est, hutchinson_variance(A, probe)) <= Z_MAX
    # the check rejects the variance formula with tr(A²) dropped (‖A‖_F² alone)
    frob_only = np.sum(A * A) + (0.0 if probe == "gaussian" else -2.0 * np.sum(np.diag(A) ** 2))
    assert sample_variance_z(est, frob_only) > Z_MAX


@given(seed=seeds, probe=st.sampled_from(["rademacher", "gaussian"]))
@settings(max_examples=10)
def test_fixed_probes_give_a_deterministic_estimate(seed, probe):
    pts = np.random.default_rng(seed).normal(size=(4, 2))
    eps = draw_probes(np.random.default_rng(seed + 1), (3, 4, 2), probe)
    a = divergence_hutchinson(nonlinear_field, pts, 0.2, eps=eps)
    b = divergence_hutchinson(nonlinear_field, pts, 0.2, eps=eps)
    J = jacobian(nonlinear_field, pts, 0.2)
    direct = np.mean(np.einsum("knd,nde,kne->kn", eps, J, eps), axis=0)
    assert np.array_equal(a, b) and rel_err(a, direct) <= CLOSED_RTOL
    # one probe given as (n, d) is the same as (1, n, d)
    single = divergence_hutchinson(nonlinear_field, pts, 0.2, eps=eps[0])
    assert np.array_equal(single, divergence_hutchinson(nonlinear_field, pts, 0.2, eps=eps[:1], n_probes=1))


def test_probes_have_zero_mean_unit_variance_and_the_right_support():
    """E ε = 0 and E ε² = 1 (unbiasedness needs E[ε εᵀ] = I), within Z_MAX standard errors:
    a Rademacher probe's mean has SE 1/√m; a Gaussian's variance SE √(2/m). A ±1 probe with
    P(+1) = 0.52 (mean 0.04, 20 SE at this m) is rejected by the same check."""
    r = draw_probes(np.random.default_rng(8), (100_000,), "rademacher")
    assert set(np.unique(r)) == {-1.0, 1.0}
    assert abs(r.mean()) <= Z_MAX / np.sqrt(r.size)
    g = draw_probes(np.random.default_rng(8), (100_000,), "gaussian")
    assert abs(g.mean()) <= Z_MAX / np.sqrt(g.size) and abs(g.var() - 1.0) <= Z_MAX * np.sqrt(2.0 / g.size)
    lopsided = np.where(np.random.default_rng(9).random(r.size) < 0.52, 1.0, -1.0)
    assert abs(lopsided.mean()) > Z_MAX / np.sqrt(lopsided.size)


# ------------------------------------------------------------------------ (h) bad input
def test_bad_input_raises_naming_the_argument():
    x = np.zeros((3, 2))
    with pytest.raises(TypeError, match=r"^f:"):
        divergence("not callable", x, 0.5)
    with pytest.raises(ValueError, match=r"^x:"):
        divergence(nonlinear_field, np.zeros(3), 0.5)
    with pytest.raises(ValueError, match=r"^x:"):
        jacobian(nonlinear_field, np.array([[np.nan, 0.0]]), 0.5)
    with pytest.raises(TypeError, match=r"^x:"):
        divergence(nonlinear_field, np.zeros((2, 2), dtype=int), 0.5)
    with pytest.raises(ValueError, match=r"^t:"):
        divergence(nonlinear_field, x, 1.5)
    with pytest.raises(ValueError, match=r"^t:"):
        divergence(nonlinear_field, x, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"^f:"):
        divergence(lambda z, t: z[:, :1], x, 0.5)
    with pytest.raises(TypeError, match="rng"):
        divergence_hutchinson(nonlinear_field, x, 0.5)
    with pytest.raises(ValueError, match="probe"):
        divergence_hutchinson(nonlinear_field, x, 0.5, np.random.default_rng(0), probe="uniform")
    with pytest.raises(ValueError, match="n_probes"):
        divergence_hutchinson(nonlinear_field, x, 0.5, np.random.default_rng(0), n_probes=0)
    with pytest.raises(ValueError, match="eps"):
        divergence_hutchinson(nonlinear_field, x, 0.5, eps=np.ones((2, 3, 3)))
    with pytest.raises(ValueError, match="A"):
        hutchinson_variance(np.ones((2, 3)))
    with pytest.raises(ValueError, match="probe"):
        hutchinson_variance(np.eye(2), "uniform")
    mlp = MLP(2, (4,))
    params = mlp.init(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^x:"):
        mlp_value_and_divergence(mlp, params, np.zeros((3, 3)), 0.5)
    with pytest.raises(TypeError, match="mlp"):
        mlp_value_and_divergence("mlp", params, x, 0.5)
    with pytest.raises(ValueError, match="params"):
        mlp_value_and_divergence(mlp, params[:1] + params[:1], x, 0.5)
    with pytest.raises(ValueError, match="mlp"):
        mlp_value_and_divergence(MLP(2, (4,), out_dim=3), MLP(2, (4,), out_dim=3).init(np.random.default_rng(0)),
                                 x, 0.5)


def test_fast_tanh_is_within_two_ulps_of_one_of_numpy_tanh():
    """The exp-based tanh of MLPTrace, given −2a: tanh within 2 ulp(1) = 4.4e-16 of NumPy's
    everywhere, 1 − tanh² within 4 ulp(1) (h² doubles the error of h); in the tails, where
    e^{−2a} overflows or underflows and 2/(1 + e^{−2a}) is subnormal, exactly ±1 and 0,
    with no warning or error even under errstate(all='raise'); a NaN stays NaN."""
    from fm_ref.divergence import _tanh_and_derivative

    tails = [19.0, 20.0, 21.0, 354.4, 354.6, 355.0, 400.0, 710.0, 1e300,
             -354.4, -354.6, -354.7, -355.0, -710.0, -1e300]
    a = np.concatenate([np.linspace(-50.0, 50.0, 200001), np.logspace(-300, 1, 2000),
                        -np.logspace(-300, 1, 2000), [0.0], tails])
    with np.errstate(all="raise"):
        h, dphi = _tanh_and_derivative(-2.0 * a, np.empty_like(a))
    eps = np.finfo(float).eps
    assert np.max(np.abs(h - np.tanh(a))) <= 2 * eps
    assert np.max(np.abs(dphi - (1.0 - np.tanh(a) ** 2))) <= 4 * eps
    far = np.abs(a) > 354.0
    assert np.all(h[far] == np.sign(a[far])) and np.all(dphi[far] == 0.0)
    with np.errstate(invalid="raise"):
        assert np.isnan(_tanh_and_derivative(np.array([np.nan]))[0][0])


def test_mlp_trace_reuses_work_arrays_and_handles_new_batch_sizes():
    from fm_ref.divergence import MLPTrace

    mlp = MLP(2, (8, 8))
    params = mlp.init(np.random.default_rng(9))
    trace = MLPTrace(mlp, params)
    for n in (5, 5, 3):
        x = np.random.default_rng(n).normal(size=(n, 2))
        v, div = trace(x, 0.5)
        ref_v, ref_div = mlp.value_and_divergence(params, x, 0.5)
        assert rel_err(v, ref_v) <= CLOSED_RTOL and rel_err(div, ref_div) <= CLOSED_RTOL


@given(d=st.integers(1, 6), hidden=st.sampled_from([(5,), (6, 9), (7, 5, 6)]), seed=seeds)
def test_cyclic_trace_matches_the_forward_mode_trace_for_every_depth_and_dimension(d, hidden, seed):
    """derivations/06-cnf.md (CNF.16) against (CNF.8): MLPTrace's d-independent trace
    (one and two hidden layers) equals MLP.value_and_divergence's forward-mode tangents."""
    from fm_ref.divergence import MLPTrace

    mlp = MLP(d, hidden)
    params = mlp.init(np.random.default_rng(seed))
    x = np.random.default_rng(seed + 1).normal(size=(7, d))
    v, div = MLPTrace(mlp, params)(x, 0.3)
    ref_v, ref_div = mlp.value_and_divergence(params, x, 0.3)
    assert rel_err(div, ref_div) <= CLOSED_RTOL and rel_err(v, ref_v) <= CLOSED_RTOL


def test_the_cyclic_trace_check_rejects_an_untransposed_coupling():
    """The same comparison fails for M = W₂ ⊙ (W₃ W₁[:d]) instead of W₂ ⊙ (W₁[:d]ᵀ W₃ᵀ)
    (square hidden layers, so the wrong M has the right shape)."""
    from fm_ref.divergence import MLPTrace

    mlp = MLP(3, (8, 8))
    params = mlp.init(np.random.default_rng(4))
    x = np.random.default_rng(5).normal(size=(6, 3))
    good, wrong = MLPTrace(mlp, params), MLPTrace(mlp, params)
    wrong.coupling = params[1][0] * (params[0][0][:3].T @ params[2][0].T).T
    ref = mlp.value_and_divergence(params, x, 0.5)[1]
    assert rel_err(good(x, 0.5)[1], ref) <= CLOSED_RTOL
    assert rel_err(wrong(x, 0.5)[1], ref) > 1e-3


def test_the_trace_routes_check_passes_and_rejects_a_trace_missing_a_diagonal_factor():
    """fm-ref verify's cnf-trace-routes: the CNF's fast trace vs d reverse-mode VJPs, and
    the same comparison on a trace that drops φ'(a₂) (sums φ'(a₁) M) fails it."""
    from fm_ref.divergence import MLPTrace
    from fm_ref.verify.cnf import check_trace_routes, trace_route_gap

    res = check_trace_routes()
    assert res.passed and res.measured <= 1e-13

    class DroppedFactor(MLPTrace):
        def __call__(self, x, t):
            v, div = super().__call__(x, t)
            if len(self.params) == 3:
                div = (self.dphi[0] @ self.coupling).sum(axis=1)
            return v, div

    assert trace_route_gap(DroppedFactor) > 1e-2


def test_hutchinson_variance_of_a_batch_is_each_matrix_by_enumeration():
    """The documented batched form A of shape (n, d, d) gives shape (n,), entry i the variance
    of εᵀA_iε by exact enumeration of the 2^d Rademacher vectors, and for Gaussian probes
    2‖S_i‖_F², S = (A + Aᵀ)/2 (Isserlis): routes that share no code with the closed form."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((4, 3, 3)) + np.diag([2.0, -1.0, 0.5])
    signs = np.array(list(itertools.product([-1.0, 1.0], repeat=3)))
    got_r, got_g = hutchinson_variance(A, "rademacher"), hutchinson_variance(A, "gaussian")
    assert got_r.shape == got_g.shape == (4,)
    for i in range(4):
        q = np.einsum("ki,ij,kj->k", signs, A[i], signs)
        S = 0.5 * (A[i] + A[i].T)
        assert np.isclose(got_r[i], np.var(q), rtol=1e-12)
        assert np.isclose(got_g[i], 2 * np.sum(S * S), rtol=1e-12)
