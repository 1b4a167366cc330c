"""Flow layers: exact log-determinants, inverses, identity parameters, root solves, errors.

Every log-determinant is compared with slogdet of the autograd Jacobian of the map (an
independent route: autograd never sees the closed-form determinant), and every inverse
with the forward map. derivations/07-normalizing-flows.md (NF.3)
"""
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import brentq

from fm_ref.flows import (AffineCoupling, ElementwiseAffine, Flow, MaskedAutoregressive, Permutation, Planar,
                          Radial, Reverse, default_flow)
from fm_ref.flows.residual import ROOT_TOL, planar_root, softplus
from fm_ref.verify.flows import INVERSE_RTOL, LOGDET_RTOL, check_inverse, check_log_det, inverse_error, log_det_error
from tests.strategies import worst, FLOW_LAYER_KINDS, dims, fewer, flow_layers, flow_stacks, make_flow_layer, points, seeds

# Identity parameters: exactly the identity for every layer but Planar, whose û is
# u + (softplus(log(e−1)) − 1 − log(e−1))·w = O(ε) after rounding: a few ulps of |z|.
IDENTITY_ATOL = 1e-15
# Root solves vs scipy's brentq (xtol 1e-15, rtol 4ε): both reach a few ulps of the root
# on well-conditioned cases (F' ≥ 0.05 here); 1e-12 relative leaves the ill-conditioning
# factor 1/F' room.
ROOT_RTOL = 1e-12
# Central differences with step H = 1e-6: truncation O(H²)·|a'''| ~ 1e-12 plus rounding
# ε/H ~ 1e-10 (DESIGN tier for central differences).
FD_STEP = 1e-6
FD_RTOL = 1e-6


def conditioning(layer_or_flow, params):
    """κ = Π over planar layers of max(1, 1/softplus(wᵀu)) ≥ 1/F'(a*): the condition number of
    the scalar root problem, which bounds how much a rounding of wᵀx + b moves a* (NF.18).
    Round trips through a planar layer are accurate to ~ε·κ, not ε (κ = 1 for wᵀu ≥ 0.55)."""
    pairs = zip(layer_or_flow.layers, params) if isinstance(layer_or_flow, Flow) else [(layer_or_flow, params)]
    kappa = 1.0
    for layer, p in pairs:
        if isinstance(layer, Planar):
            kappa *= max(1.0, 1.0 / float(softplus(max(float(np.dot(p[0], p[1])), -700.0))))
    return kappa


# ------------------------------------------------------------------ 3a: log-determinants

@given(flow_layers(), st.data())
def test_log_det_matches_slogdet_of_jacobian(layer_params, data):
    """derivations/07-normalizing-flows.md (NF.6), (NF.9), (NF.13), (NF.16), (NF.21)"""
    layer, params = layer_params
    z = data.draw(points(layer.dim, n=3))
    assert worst(log_det_error(layer, params, z)) <= LOGDET_RTOL


@given(flow_layers(), st.data())
def test_inverse_log_det_matches_slogdet_of_the_inverse_jacobian(layer_params, data):
    """The inverse's log-det against slogdet of the autograd Jacobian of the inverse map; for
    Planar this differentiates through planar_root's implicit-function gradient.
    derivations/07-normalizing-flows.md (NF.2), (NF.19)"""
    layer, params = layer_params
    x = data.draw(points(layer.dim, n=3))
    assert worst(log_det_error(layer, params, x, inverse=True)) <= LOGDET_RTOL


@fewer(0.5)
@given(flow_stacks(), st.data())
def test_composition_log_det_matches_slogdet_of_jacobian(flow_params, data):
    """derivations/07-normalizing-flows.md (NF.3)"""
    flow, params = flow_params
    z = data.draw(points(flow.dim, n=2))
    assert worst(log_det_error(flow, params, z)) <= LOGDET_RTOL
    assert log_det_error(flow, params, z, inverse=True) <= LOGDET_RTOL


class _DroppedTermCoupling(AffineCoupling):
    """A coupling layer whose log-det forgets the first transformed coordinate's s_i."""

    def _forward(self, params, z):
        x, _ = super()._forward(params, z)
        s, _ = self.log_scale_and_shift(params, z)
        return x, anp.sum(s[:, self.changed[1:]], axis=1)


class _WrongSechPlanar(Planar):
    """A planar layer whose log-det uses h'(a) = 1 instead of sech²(a) (a dropped factor)."""

    def _forward(self, params, z):
        x, _ = super()._forward(params, z)
        u_hat, _ = self.u_hat(params)
        return x, anp.log(anp.abs(1.0 + anp.dot(params[0], u_hat))) * anp.ones(z.shape[0])


def test_slogdet_check_rejects_a_dropped_log_det_term():
    """The same comparison fails for log-dets with a dropped term."""
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 1.0, (3, 3))
    bad = _DroppedTermCoupling(3, mask=[1.0, 0.0, 0.0], hidden=(8,))
    params = [(rng.normal(size=W.shape), rng.normal(size=b.shape)) for W, b in bad.identity_params()]
    assert log_det_error(bad, params, z) > 1e-3
    assert log_det_error(AffineCoupling(3, mask=[1.0, 0.0, 0.0], hidden=(8,)), params, z) <= LOGDET_RTOL
    planar_params = (rng.normal(size=3), rng.normal(size=3), np.array(0.3))
    assert log_det_error(_WrongSechPlanar(3), planar_params, z) > 1e-3


def test_registered_checks_pass():
    for check in (check_log_det, check_inverse):
        result = check()
        assert result.passed, (result.name, result.measured)


# ------------------------------------------------------------------ 3b: inverses

@given(flow_layers(), st.data())
def test_inverse_inverts(layer_params, data):
    """inverse(forward(z)) = z and forward(inverse(x)) = x.
    derivations/07-normalizing-flows.md (NF.10), (NF.14), (NF.18), (NF.23)"""
    layer, params = layer_params
    z = data.draw(points(layer.dim, n=5, scale=3.0))
    err_z, _ = inverse_error(layer, params, z)
    x_back = layer.forward_and_log_det(params, layer.inverse_and_log_det(params, z)[0])[0]
    err_x = np.max(np.abs(x_back - z)) / (1.0 + np.max(np.abs(z)))
    assert worst(max(err_z, err_x) / conditioning(layer, params)) <= INVERSE_RTOL


@given(flow_layers(), st.data())
def test_forward_log_det_is_minus_inverse_log_det(layer_params, data):
    """derivations/07-normalizing-flows.md (NF.2)"""
    layer, params = layer_params
    _, err_ld = inverse_error(layer, params, data.draw(points(layer.dim, n=5, scale=3.0)))
    assert worst(err_ld / conditioning(layer, params)) <= INVERSE_RTOL


@fewer(0.5)
@given(flow_stacks(), st.data())
def test_flow_inverse_inverts(flow_params, data):
    """derivations/07-normalizing-flows.md (NF.3)"""
    flow, params = flow_params
    err_z, err_ld = inverse_error(flow, params, data.draw(points(flow.dim, n=4)))
    assert worst(max(err_z, err_ld) / conditioning(flow, params)) <= INVERSE_RTOL


def test_inverse_check_rejects_a_wrong_inverse():
    """The round-trip measure is not blind: an inverse with the wrong sign of s fails."""

    class WrongInverse(ElementwiseAffine):
        def _inverse(self, params, x):
            s, b = params
            return (x - b) * anp.exp(s), -anp.sum(s) * anp.ones(x.shape[0])

    params = (np.array([0.3, -0.2]), np.array([0.1, 0.0]))
    z = np.random.default_rng(1).normal(size=(4, 2))
    assert inverse_error(WrongInverse(2), params, z)[0] > 1e-2
    assert inverse_error(ElementwiseAffine(2), params, z)[0] <= INVERSE_RTOL


# ------------------------------------------------------------------ 3c: identity parameters

@pytest.mark.parametrize("kind", [k for k in FLOW_LAYER_KINDS if k not in ("permutation", "reverse")])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_identity_at_identity_params(kind, dim):
    """identity_params() (zeros, or Planar's w = e₁, u = log(e−1)e₁) give x = z, log_det = 0.
    (Permutations have no parameters: they are fixed reorderings, never the identity.)

    derivations/07-normalizing-flows.md (NF.6), (NF.11), (NF.17), (NF.22)"""
    if kind == "coupling" and dim == 1:
        return
    layer = make_flow_layer(kind, dim, np.random.default_rng(dim))
    z = np.random.default_rng(7).normal(0.0, 2.0, (5, dim))
    for method in (layer.forward_and_log_det, layer.inverse_and_log_det):
        x, log_det = method(layer.identity_params(), z)
        assert np.max(np.abs(x - z)) <= IDENTITY_ATOL * (1.0 + np.max(np.abs(z)))
        assert np.max(np.abs(log_det)) <= IDENTITY_ATOL


@pytest.mark.parametrize("kind", ["coupling", "made_z", "made_x", "planar", "radial", "elementwise"])
def test_init_starts_at_the_identity(kind):
    """init(rng) draws hidden layers (or the planar w / radial z₀) but starts at the identity."""
    layer = make_flow_layer(kind, 2, np.random.default_rng(0), hidden=(8, 8))
    params = layer.init(np.random.default_rng(3))
    z = np.random.default_rng(4).normal(size=(5, 2))
    x, log_det = layer.forward_and_log_det(params, z)
    assert np.max(np.abs(x - z)) <= 1e-14 and np.max(np.abs(log_det)) <= 1e-14
    flow = default_flow(2, "coupling", n_layers=2)
    assert np.allclose(flow.forward_and_log_det(flow.init(np.random.default_rng(0)), z)[0], z, rtol=0, atol=1e-14)


def test_data_init_standardises_the_data():
    """derivations/07-normalizing-flows.md (NF.6)"""
    rng = np.random.default_rng(0)
    x = rng.normal([3.0, -1.0], [2.0, 0.5], (500, 2))
    flow = Flow([Planar(2), ElementwiseAffine(2)])
    params = flow.data_init(flow.init(rng), x)
    z, _ = flow.layers[1].inverse_and_log_det(params[1], x)
    assert np.max(np.abs(z.mean(axis=0))) <= 1e-12 and np.max(np.abs(z.std(axis=0) - 1.0)) <= 1e-12


def test_data_init_walks_through_the_inverses_and_into_nested_flows():
    """NF.6 for an ElementwiseAffine BELOW a non-identity layer, and one inside a nested
    Flow: each standardises the data as it reaches that layer (pulled back through the
    layers above it), so its output z has mean 0 and standard deviation 1."""
    rng = np.random.default_rng(1)
    x = rng.normal([3.0, -1.0], [2.0, 0.5], (500, 2))
    above = Planar(2)
    inner = Flow([Planar(2), ElementwiseAffine(2)])
    flow = Flow([ElementwiseAffine(2), above])
    nested = Flow([inner, Reverse(2)])
    for f in (flow, nested):
        params = f.data_init(f.init(rng), x)
        assert not all(np.all(leaf == 0) for leaf in (params[0] if f is flow else params[0][1]))
    params = flow.data_init(flow.init(rng), x)
    h, _ = above.inverse_and_log_det(params[1], x)  # what reaches the affine layer
    z, _ = flow.layers[0].inverse_and_log_det(params[0], h)
    assert np.max(np.abs(z.mean(axis=0))) <= 1e-12 and np.max(np.abs(z.std(axis=0) - 1.0)) <= 1e-12
    params = nested.data_init(nested.init(rng), x)
    h, _ = Reverse(2).inverse_and_log_det(params[1], x)
    z, _ = inner.layers[1].inverse_and_log_det(params[0][1], h)
    assert np.max(np.abs(z.mean(axis=0))) <= 1e-12 and np.max(np.abs(z.std(axis=0) - 1.0)) <= 1e-12


def test_planar_root_is_relatively_accurate_for_a_huge_w_dot_u():
    """NF.18: for m = wᵀû ≫ 1 the root is ≈ y/(1 + m), below any absolute tolerance; the
    relative stopping rule solves it to full relative accuracy (an absolute rule returned
    0 at m = 1e50 and 1.7e-4 relative error at 1e30)."""
    y = np.array([-0.7, 0.3, 2.0])
    for m in (1e8, 1e20, 1e30, 1e50):
        a = planar_root(m + 1.0, y)  # sp = softplus(wᵀu) = 1 + m
        assert np.max(np.abs(a * (1.0 + m) - y) / np.abs(y)) <= 1e-14


# ------------------------------------------------------------------ root solves

@given(st.floats(-6.0, 6.0), st.lists(st.floats(-50.0, 50.0), min_size=1, max_size=5))
def test_planar_root_matches_brentq(c, ys):
    """derivations/07-normalizing-flows.md (NF.18)"""
    sp, m = float(softplus(c)), float(softplus(c)) - 1.0
    y = np.array(ys)
    a = planar_root(sp, y)
    ref = np.array([brentq(lambda s: s + m * np.tanh(s) - yi, yi - abs(m) - 1e-12, yi + abs(m) + 1e-12,
                           xtol=1e-15, rtol=4 * np.finfo(float).eps) for yi in y])
    assert worst(np.max(np.abs(a - ref) / (1.0 + np.abs(ref)))) <= ROOT_RTOL
    assert ROOT_TOL <= ROOT_RTOL


def test_planar_root_handles_the_edge_of_invertibility():
    """m → −1 (softplus(wᵀu) = e^{-30}): F'(0) ≈ 1e-13, Newton is safeguarded by bisection."""
    sp = float(softplus(-30.0))
    y = np.array([0.0, 1e-8, -1e-3, 0.5, 40.0])
    a = planar_root(sp, y)
    assert np.max(np.abs(a + (sp - 1.0) * np.tanh(a) - y)) <= 4e-16 * (1.0 + np.max(np.abs(y)))


def test_planar_root_gradient_matches_central_differences():
    """The implicit-function gradients of planar_root vs central differences (step FD_STEP).
    derivations/07-normalizing-flows.md (NF.19)"""
    y = np.array([-2.0, 0.1, 0.7, 3.0])
    wts = np.array([0.3, -1.0, 2.0, 0.5])
    for sp in (0.2, 1.0, 4.0):
        f = lambda s, yy: float(np.dot(wts, planar_root(s, yy)))  # noqa: E731
        g_sp, g_y = grad(lambda s, yy: anp.dot(wts, planar_root(s, yy)), (0, 1))(sp, y)
        fd_sp = (f(sp + FD_STEP, y) - f(sp - FD_STEP, y)) / (2 * FD_STEP)
        fd_y = np.array([(f(sp, y + FD_STEP * e) - f(sp, y - FD_STEP * e)) / (2 * FD_STEP) for e in np.eye(4)])
        assert abs(g_sp - fd_sp) <= FD_RTOL * (1.0 + abs(fd_sp))
        assert np.max(np.abs(g_y - fd_y)) <= FD_RTOL * (1.0 + np.max(np.abs(fd_y)))


def test_log_prob_parameter_gradient_matches_central_differences():
    """∂ log p / ∂θ through every inverse (planar root, radial quadratic, MADE recursion,
    coupling) vs central differences in each raw parameter of the planar and radial layers."""
    rng = np.random.default_rng(5)
    flow = Flow([Planar(2), Radial(2), MaskedAutoregressive(2, hidden=(4,)), AffineCoupling(2, hidden=(4,))])
    params = [(rng.normal(size=2), rng.normal(size=2), np.array(0.2)), (rng.normal(size=2), np.array(0.3),
              np.array(-0.4))] + [[(rng.normal(size=W.shape), rng.normal(size=b.shape)) for W, b in p]
                                  for p in flow.identity_params()[2:]]
    x = rng.normal(size=(4, 2))
    total = lambda p: anp.sum(flow.log_prob(p, x))  # noqa: E731
    g = grad(total)(params)
    for k in (0, 1):
        for j, leaf in enumerate(params[k]):
            for idx in np.ndindex(np.shape(leaf)):
                def shifted(h):
                    p = [list(q) for q in params[:2]] + params[2:]
                    new = np.array(leaf, dtype=float)
                    new[idx] += h
                    p[k][j] = new
                    return float(total([tuple(q) for q in p[:2]] + p[2:]))
                fd = (shifted(FD_STEP) - shifted(-FD_STEP)) / (2 * FD_STEP)
                assert abs(np.asarray(g[k][j])[idx] - fd) <= FD_RTOL * (1.0 + abs(fd))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_radial_at_its_centre(dim):
    """At z = z₀ the radial map is differentiable with J = (1 + β/α) I: the autograd Jacobian
    (through row_norm's zero derivative at 0) and the log-det agree; z₀ is a fixed point."""
    params = (np.linspace(-1.0, 1.0, dim), np.array(0.4), np.array(-1.5))
    z0 = params[0][None, :]
    layer = Radial(dim)
    for method in (layer.forward_and_log_det, layer.inverse_and_log_det):
        out, _ = method(params, z0)
        assert np.max(np.abs(out - z0)) <= 1e-15
        assert log_det_error(layer, params, z0, inverse=method == layer.inverse_and_log_det) <= LOGDET_RTOL
    alpha, beta = float(softplus(0.4)), float(softplus(-1.5) - softplus(0.4))
    _, log_det = layer.forward_and_log_det(params, z0)
    assert abs(log_det[0] - dim * np.log1p(beta / alpha)) <= 1e-14 * dim


@given(dims, seeds, st.sampled_from([-20.0, -3.0, 0.0, 3.0]), st.sampled_from([-30.0, -5.0, 0.0, 5.0]))
def test_radial_radius_matches_brentq(dim, seed, a_raw, b_raw):
    """The closed-form radius of the radial inverse against brentq on ρ = r(r + sp)/(α + r).
    derivations/07-normalizing-flows.md (NF.23)"""
    rng = np.random.default_rng(seed)
    params = (rng.normal(size=dim), np.array(a_raw), np.array(b_raw))
    x = rng.normal(0.0, 2.0, (4, dim))
    z, _ = Radial(dim).inverse_and_log_det(params, x)
    alpha, sp = float(softplus(a_raw)), float(softplus(b_raw))
    r = np.linalg.norm(z - params[0], axis=1)
    for rho, r_i in zip(np.linalg.norm(x - params[0], axis=1), r):
        ref = brentq(lambda s: s * (s + sp) / (alpha + s) - rho, 0.0, rho + alpha, xtol=1e-15, rtol=1e-15)
        assert abs(r_i - ref) <= ROOT_RTOL * (1.0 + ref)


# ------------------------------------------------------------------ dtype and errors

def test_outputs_are_float64():
    flow = default_flow(2, "coupling", n_layers=2, hidden=(4,))
    params = flow.init(np.random.default_rng(0))
    x, log_det = flow.forward_and_log_det(params, np.ones((3, 2), dtype=np.float32))
    assert x.dtype == np.float64 and log_det.dtype == np.float64 and log_det.shape == (3,)
    assert flow.log_prob(params, x).dtype == np.float64


@pytest.mark.parametrize("kind", FLOW_LAYER_KINDS)
def test_layer_bad_input_raises_naming_the_argument(kind):
    layer = make_flow_layer(kind, 2, np.random.default_rng(0))
    params = layer.identity_params()
    for method, name in ((layer.forward_and_log_det, "z"), (layer.inverse_and_log_det, "x")):
        with pytest.raises(ValueError, match=rf"^{name}:"):
            method(params, np.zeros((3, 3)))             # wrong dimension
        with pytest.raises(ValueError, match=rf"^{name}:"):
            method(params, np.zeros(2))                  # not (n, d)
        with pytest.raises(ValueError, match=rf"^{name}:"):
            method(params, np.array([[0.0, np.nan]]))    # non-finite
        with pytest.raises(TypeError, match=rf"^{name}:"):
            method(params, np.zeros((1, 2), dtype=int))  # integer input
        with pytest.raises(TypeError, match="params"):
            method([params], np.zeros((1, 2)))           # wrong structure
    if kind not in ("permutation", "reverse"):
        from fm_ref.train import tree_map
        bad = tree_map(lambda a: np.full(np.shape(a), np.inf), params)
        with pytest.raises(ValueError, match="params"):
            layer.forward_and_log_det(bad, np.zeros((1, 2)))
        wrong = tree_map(lambda a: np.zeros(np.shape(a) + (1,)), params)
        with pytest.raises(ValueError, match="params"):
            layer.forward_and_log_det(wrong, np.zeros((1, 2)))


def test_constructor_errors_name_the_argument():
    with pytest.raises(ValueError, match="dim"):
        AffineCoupling(1)
    for mask in ([1.0, 1.0], [1.0, 0.0, 1.0], [2.0, 0.0], "diagonal"):
        with pytest.raises(ValueError, match="mask"):
            AffineCoupling(2, mask=mask)
    with pytest.raises(ValueError, match="scale_bound"):
        AffineCoupling(2, scale_bound=0.0)
    with pytest.raises(ValueError, match="order"):
        MaskedAutoregressive(3, order=[0, 0, 1])
    with pytest.raises(ValueError, match="conditioner"):
        MaskedAutoregressive(3, conditioner="y")
    with pytest.raises(ValueError, match="activation"):
        MaskedAutoregressive(3, activation="relu")
    with pytest.raises(ValueError, match="perm"):
        Permutation(3, [0, 1, 1])
    with pytest.raises(TypeError, match="perm"):
        Permutation(2, [0.0, 1.0])
    for cls in (Planar, Radial, ElementwiseAffine, Reverse):
        with pytest.raises(ValueError, match="dim"):
            cls(0)
        with pytest.raises(TypeError, match="dim"):
            cls(2.0)


def test_planar_zero_w_and_overflow_raise():
    with pytest.raises(ValueError, match="params"):
        Planar(2).forward_and_log_det((np.zeros(2), np.ones(2), np.array(0.0)), np.zeros((1, 2)))
    for tiny in (1e-160, 1e-170):  # ‖w‖² subnormal (û inaccurate) or underflowed to 0
        with pytest.raises(ValueError, match=r"^params:.*‖w‖²"):
            Planar(2).forward_and_log_det((np.array([tiny, 0.0]), np.ones(2), np.array(0.0)), np.zeros((1, 2)))
    with pytest.raises((FloatingPointError, ValueError)):
        ElementwiseAffine(1).forward_and_log_det((np.array([800.0]), np.array([0.0])), np.ones((1, 1)))
    with pytest.raises(ValueError, match=r"^x:"):
        ElementwiseAffine(2).data_init(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"^x:"):
        ElementwiseAffine(2).data_init(np.ones((1, 2)))


# ------------------------------------------------------- layers against hand-built references
# Each layer's map built again here from its documented definition in plain NumPy (loops,
# textbook formulas, the named activation written out), sharing no code with fm_ref.flows.
# A layer that is invertible with the right log-det and unit mass but computes another map
# (a permutation that became the identity, another smooth conditioner) fails these.

#: Reference and layer evaluate the same expressions in other orders: a few ulps.
REFERENCE_RTOL = 1e-12

_HAND_ACTIVATIONS = {
    "tanh": np.tanh,
    "softplus": lambda a: np.log1p(np.exp(-np.abs(a))) + np.maximum(a, 0.0),
    "swish": lambda a: a / (1.0 + np.exp(-a)),
}


def _hand_net(params, inputs, activation, masks=None):
    """A dense network by hand: act(h W + b) on each hidden layer, affine output."""
    h = inputs
    for i, (W, b) in enumerate(params):
        W = W if masks is None else W * masks[i]
        h = h @ W + b
        if i < len(params) - 1:
            h = _HAND_ACTIVATIONS[activation](h)
    return h


def test_permutation_moves_coordinate_perm_i_to_position_i():
    """x_i = z_{perm[i]} (documented), written as a loop; the inverse puts them back;
    Reverse is perm[i] = d − 1 − i; log-det 0."""
    perm = [2, 0, 3, 1]
    z = np.random.default_rng(0).standard_normal((3, 4))
    x, ld = Permutation(4, perm).forward_and_log_det((), z)
    for i in range(4):
        np.testing.assert_array_equal(x[:, i], z[:, perm[i]])
    zi, ldi = Permutation(4, perm).inverse_and_log_det((), x)
    np.testing.assert_array_equal(zi, z)
    np.testing.assert_array_equal(ld, 0.0)
    np.testing.assert_array_equal(ldi, 0.0)
    xr, _ = Reverse(4).forward_and_log_det((), z)
    np.testing.assert_array_equal(xr, z[:, [3, 2, 1, 0]])
    layer = Permutation.random(5, np.random.default_rng(3))
    assert sorted(layer.perm.tolist()) == list(range(5)) and layer.perm.tolist() != list(range(5))


def test_elementwise_affine_is_z_exp_s_plus_b():
    s, b = np.array([0.3, -1.2]), np.array([2.0, -0.5])
    z = np.random.default_rng(1).standard_normal((4, 2))
    x, ld = ElementwiseAffine(2).forward_and_log_det((s, b), z)
    np.testing.assert_allclose(x, z * np.exp(s) + b, rtol=REFERENCE_RTOL)
    np.testing.assert_allclose(ld, np.full(4, 0.3 - 1.2), rtol=REFERENCE_RTOL)
    zi, ldi = ElementwiseAffine(2).inverse_and_log_det((s, b), x)
    np.testing.assert_allclose(zi, z, rtol=REFERENCE_RTOL, atol=1e-15)
    np.testing.assert_allclose(ldi, -ld, rtol=REFERENCE_RTOL)


@pytest.mark.parametrize("mask, activation, bound", [("even", "tanh", 3.0), ("odd", "softplus", 0.7),
                                                     ([0, 1, 1, 0, 1], "swish", 2.0)])
def test_affine_coupling_matches_a_coupling_built_by_hand(mask, activation, bound):
    """x_A = z_A, x_B = z_B exp(c tanh(s_raw/c)) + t with (s_raw, t) the named-activation
    network of [z_A, 0] (the MLP's time input held at 0), s_raw the first |B| outputs."""
    d = 5
    layer = AffineCoupling(d, mask=mask, hidden=(6, 4), activation=activation, scale_bound=bound)
    params = layer.net.init(np.random.default_rng(2), scale=2.0)  # a non-zero output layer
    z = np.random.default_rng(3).standard_normal((7, d)) * 2
    m = np.array({"even": [1, 0, 1, 0, 1], "odd": [0, 1, 0, 1, 0]}[mask] if isinstance(mask, str) else mask)
    A, B = np.flatnonzero(m == 1), np.flatnonzero(m == 0)
    out = _hand_net(params, np.column_stack([z[:, A], np.zeros(7)]), activation)
    s = bound * np.tanh(out[:, :len(B)] / bound)
    want = z.copy()
    want[:, B] = z[:, B] * np.exp(s) + out[:, len(B):]
    x, ld = layer.forward_and_log_det(params, z)
    np.testing.assert_allclose(x, want, rtol=REFERENCE_RTOL, atol=1e-14)
    np.testing.assert_allclose(ld, s.sum(axis=1), rtol=REFERENCE_RTOL, atol=1e-14)
    zi, ldi = layer.inverse_and_log_det(params, x)
    np.testing.assert_allclose(zi, z, rtol=1e-10, atol=1e-12)  # a round trip through exp(±s)
    np.testing.assert_allclose(ldi, -ld, rtol=REFERENCE_RTOL, atol=1e-14)


def _hand_made_masks(degrees, hidden):
    """MADE masks from the definition, one connection at a time: hidden unit k has degree
    (k mod max(d − 1, 1)) + 1; into a hidden unit when deg_src ≤ its degree, into output
    i (s_i and t_i) when deg_src < deg_i."""
    d = len(degrees)
    layer_deg = [list(degrees)] + [[(k % max(d - 1, 1)) + 1 for k in range(h)] for h in hidden]
    masks = []
    for src, dst in zip(layer_deg[:-1], layer_deg[1:]):
        masks.append(np.array([[1.0 if a <= b else 0.0 for b in dst] for a in src]))
    out_deg = list(degrees) * 2
    masks.append(np.array([[1.0 if a < b else 0.0 for b in out_deg] for a in layer_deg[-1]]))
    return masks


@pytest.mark.parametrize("conditioner, order, activation, bound", [
    ("z", None, "tanh", 3.0), ("x", [2, 0, 3, 1], "softplus", 1.5), ("z", [3, 1, 0, 2], "swish", 0.8)])
def test_masked_autoregressive_matches_a_masked_network_built_by_hand(conditioner, order, activation, bound):
    """The one-pass direction (forward for 'z', inverse for 'x') against a MADE network
    built by hand: degrees deg_i = position of i in the order + 1, the masks from their
    definition, the named activation; s = c tanh(s_raw/c), s_raw the first d outputs."""
    d = 4
    layer = MaskedAutoregressive(d, hidden=(5, 6), order=order, conditioner=conditioner,
                                 activation=activation, scale_bound=bound)
    rng = np.random.default_rng(4)
    params = [(rng.standard_normal(W.shape), rng.standard_normal(b.shape)) for W, b in layer.identity_params()]
    order_ = list(range(d)) if order is None else order
    degrees = [order_.index(i) + 1 for i in range(d)]
    masks = _hand_made_masks(degrees, (5, 6))
    for got, want in zip(layer.masks, masks):
        np.testing.assert_array_equal(got, want)
    y = rng.standard_normal((6, d))
    out = _hand_net(params, y, activation, masks)
    s, t = bound * np.tanh(out[:, :d] / bound), out[:, d:]
    if conditioner == "z":
        got, ld = layer.forward_and_log_det(params, y)
        want, want_ld = y * np.exp(s) + t, s.sum(axis=1)
    else:
        got, ld = layer.inverse_and_log_det(params, y)
        want, want_ld = (y - t) * np.exp(-s), -s.sum(axis=1)
    np.testing.assert_allclose(got, want, rtol=REFERENCE_RTOL, atol=1e-13)
    np.testing.assert_allclose(ld, want_ld, rtol=REFERENCE_RTOL, atol=1e-13)


def test_masked_autoregressive_init_draws_hidden_layers_and_zeroes_the_output():
    """init: W ~ N(0, 1/fan_in), b ~ N(0, 0.1²) on hidden layers (moments over many
    entries, z ≤ 5), the output layer exactly zero (the layer starts as the identity)."""
    layer = MaskedAutoregressive(3, hidden=(400, 400))
    params = layer.init(np.random.default_rng(0))
    W, b = params[1]
    n = W.size
    assert abs(np.mean(W)) <= 5 * np.sqrt(1 / 400 / n)
    assert abs(np.mean(W**2) * 400 - 1.0) <= 5 * np.sqrt(2 / n)  # var of a χ²₁ mean
    assert abs(np.mean(b**2) / 0.01 - 1.0) <= 5 * np.sqrt(2 / b.size)
    assert not np.any(params[-1][0]) and not np.any(params[-1][1])


def test_planar_matches_the_textbook_map():
    """x = z + û tanh(wᵀz + b), û = u + (−1 + softplus(wᵀu) − wᵀu) w/‖w‖²,
    log|det| = log|1 + (1 − tanh²(a)) wᵀû| (Rezende & Mohamed 2015, their appendix A)."""
    w, u, b = np.array([0.7, -1.1, 0.4]), np.array([-2.0, 0.5, 1.5]), np.array(0.3)
    z = np.random.default_rng(5).standard_normal((6, 3))
    wu = w @ u
    u_hat = u + (-1.0 + np.log1p(np.exp(wu)) - wu) * w / (w @ w)
    a = z @ w + 0.3
    x, ld = Planar(3).forward_and_log_det((w, u, b), z)
    np.testing.assert_allclose(x, z + np.tanh(a)[:, None] * u_hat, rtol=REFERENCE_RTOL)
    np.testing.assert_allclose(ld, np.log(np.abs(1 + (1 - np.tanh(a) ** 2) * (w @ u_hat))), rtol=1e-11)


@pytest.mark.parametrize("a_raw, b_raw", [(0.3, -0.8), (-1.0, 2.0)])
def test_radial_matches_the_textbook_map(a_raw, b_raw):
    """x = z + β h(r)(z − z₀), h = 1/(α + r), α = softplus(a_raw), β = −α + softplus(b_raw);
    log|det| = (d − 1) log(1 + βh) + log(1 + βh + βh'(r) r), h' = −1/(α + r)²."""
    d = 3
    z0 = np.array([0.5, -0.2, 1.0])
    z = np.random.default_rng(6).standard_normal((5, d))
    alpha = np.log1p(np.exp(a_raw))
    beta = -alpha + np.log1p(np.exp(b_raw))
    r = np.sqrt(np.sum((z - z0) ** 2, axis=1))
    h, dh = 1 / (alpha + r), -1 / (alpha + r) ** 2
    x, ld = Radial(d).forward_and_log_det((z0, np.array(a_raw), np.array(b_raw)), z)
    np.testing.assert_allclose(x, z + (beta * h)[:, None] * (z - z0), rtol=REFERENCE_RTOL)
    want = (d - 1) * np.log(1 + beta * h) + np.log(1 + beta * h + beta * dh * r)
    np.testing.assert_allclose(ld, want, rtol=1e-11)


def test_flow_composes_its_layers_in_order():
    """Flow([f1, f2]) maps z to f2(f1(z)) with log-det the sum; log_prob(x) is
    log N(z; 0, I) − Σ log-det along the forward pass from z = f⁻¹(x)."""
    from scipy.stats import multivariate_normal

    f1, f2 = ElementwiseAffine(2), Permutation(2, [1, 0])
    p1 = (np.array([0.5, -0.3]), np.array([1.0, 2.0]))
    flow = Flow([f1, f2])
    z = np.random.default_rng(7).standard_normal((5, 2))
    x, ld = flow.forward_and_log_det([p1, ()], z)
    np.testing.assert_allclose(x, (z * np.exp(p1[0]) + p1[1])[:, [1, 0]], rtol=REFERENCE_RTOL)
    np.testing.assert_allclose(ld, np.full(5, 0.2), rtol=REFERENCE_RTOL)
    want = multivariate_normal(np.zeros(2), np.eye(2)).logpdf(z) - 0.2
    np.testing.assert_allclose(flow.log_prob([p1, ()], x), want, rtol=REFERENCE_RTOL)


def test_data_init_accepts_two_points_and_refuses_one():
    """The documented minimum, n ≥ 2: two points give s = log(|x₁ − x₂|/2) (the population
    std) and b = their midpoint; one point raises by name."""
    x = np.array([[1.0, -3.0], [4.0, 1.0]])
    s, b = ElementwiseAffine(2).data_init(x)
    np.testing.assert_allclose(s, np.log([1.5, 2.0]), rtol=1e-15)
    np.testing.assert_allclose(b, [2.5, -1.0], rtol=1e-15)
    with pytest.raises(ValueError, match=r"^x:"):
        ElementwiseAffine(2).data_init(x[:1])


def test_mask_entries_other_than_zero_and_one_raise():
    """A numeric mask with a 2 or a 0.5 in it is refused by name (as is a string dtype)."""
    for bad in ([0, 2, 1], [0.5, 1.0, 0.0], np.array(["0", "1", "1"])):
        with pytest.raises(ValueError, match=r"^mask:"):
            AffineCoupling(3, mask=bad, hidden=(4,))


@pytest.mark.parametrize("hidden", [(3,), (3, 4), (3, 4, 5)])
def test_masked_autoregressive_init_has_its_sizes_for_any_depth(hidden):
    """init gives len(hidden) + 1 layers of sizes d → hidden → 2d, the last zero."""
    layer = MaskedAutoregressive(2, hidden=hidden)
    params = layer.init(np.random.default_rng(0))
    layer.check_params(params)
    sizes = (2,) + hidden + (4,)
    assert [W.shape for W, _ in params] == list(zip(sizes[:-1], sizes[1:]))
    assert all(np.any(W) for W, _ in params[:-1]) and not np.any(params[-1][0])


def test_reprs_name_each_layer_and_its_configuration():
    """A Flow's repr lists its layers in order, each with its configuration."""
    flow = Flow([ElementwiseAffine(2), Permutation(2, [1, 0]), Reverse(2)])
    assert repr(flow) == "Flow([ElementwiseAffine(dim=2), Permutation(dim=2, perm=[1, 0]), Reverse(dim=2)])"
