"""The MLP v_θ(x, t): forward pass against a hand-written one with textbook activations, the
closed-form Jacobian and divergence against autograd, time dependence, init, errors.

Derivation: derivations/06-cnf.md (CNF.8)
"""
import autograd
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fm_ref.nn import ACTIVATIONS, MLP
from strategies import dims, seeds

# Closed-form forward-mode Jacobian vs autograd's reverse mode: the same sums in another order,
# a few ulps of the largest entry (issue 2: analytic trace = autograd trace to 1e-12).
JACOBIAN_RTOL = 1e-12
# Forward pass vs the hand-written one (log1p/exp softplus, a/(1 + e^{−a}) swish): a few ulps
# per layer.
FORWARD_RTOL = 1e-12
# Central differences on one weight, step FD_STEP: truncation H²|f'''| ~ 1e-12, rounding ε|f|/H ~ 1e-10.
FD_STEP = 1e-5
FD_RTOL = 1e-6
# A wrong Jacobian (transposed, or a wrong φ') differs at order one.
REJECT_MIN = 1e-3

HIDDEN = [(), (5,), (4, 3)]


def rel_err(got, want):
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


@st.composite
def networks(draw, activation=None):
    """(mlp, params, x, t): a drawn architecture with parameters and a batch from a seed."""
    d = draw(dims)
    mlp = MLP(d, hidden=draw(st.sampled_from(HIDDEN)),
              activation=draw(st.sampled_from(sorted(ACTIVATIONS))) if activation is None else activation,
              time_features=draw(st.sampled_from([0, 2])))
    rng = np.random.default_rng(draw(seeds))
    params = mlp.init(rng, scale=draw(st.sampled_from([0.5, 1.0, 2.0])))
    n = draw(st.integers(1, 4))
    return mlp, params, rng.normal(0.0, 1.5, (n, d)), rng.uniform(0.0, 1.0, n)


TEXTBOOK = {
    "tanh": np.tanh,
    "softplus": lambda a: np.where(a > 30, a + np.log1p(np.exp(-np.abs(a))), np.log1p(np.exp(np.minimum(a, 30)))),
    "swish": lambda a: a / (1.0 + np.exp(-np.clip(a, -700, 700))),
}


def hand_forward(mlp, params, x, t):
    """[x, t, sin 2πkt, cos 2πkt] through affine layers and the textbook activation."""
    t = np.broadcast_to(np.asarray(t, dtype=float), (x.shape[0],))[:, None]
    k = 2.0 * np.pi * np.arange(1, mlp.time_features + 1)
    h = np.concatenate([x, t, np.sin(t * k), np.cos(t * k)], axis=1)
    for i, (W, b) in enumerate(params):
        h = h @ W + b
        if i < len(params) - 1:
            h = TEXTBOOK[mlp.activation](h)
    return h


def autograd_jacobians(mlp, params, x, t):
    """∂v/∂x per sample by autograd's reverse mode, shape (n, out, d)."""
    return np.stack([autograd.jacobian(lambda xi, ti=ti: mlp(params, xi[None], ti)[0])(xi)
                     for xi, ti in zip(x, t)])


# --------------------------------------------------------------------- forward


@given(networks())
def test_forward_matches_a_hand_written_pass(net):
    mlp, params, x, t = net
    v = mlp(params, x, t)
    assert v.shape == x.shape and v.dtype == np.float64
    assert rel_err(v, hand_forward(mlp, params, x, t)) <= FORWARD_RTOL


@given(networks())
def test_rows_are_independent_and_float_time_equals_constant_array(net):
    mlp, params, x, t = net
    v = mlp(params, x, t)
    for i in range(x.shape[0]):
        assert rel_err(mlp(params, x[i:i + 1], t[i]), v[i:i + 1]) <= FORWARD_RTOL  # BLAS order may differ
    assert np.array_equal(mlp(params, x, 0.3), mlp(params, x, np.full(x.shape[0], 0.3)))


@given(networks())
def test_time_enters_the_output(net):
    mlp, params, x, _ = net
    assert np.max(np.abs(mlp(params, x, 0.2) - mlp(params, x, 0.7))) > 1e-6


def test_forward_stays_finite_for_saturated_activations():
    """Pre-activations of order 1e3: no overflow warning (warnings are errors here)."""
    for activation in sorted(ACTIVATIONS):
        mlp = MLP(2, hidden=(8,), activation=activation)
        params = mlp.init(np.random.default_rng(0), scale=1e3)
        x = np.array([[3.0, -2.0], [-5.0, 4.0]])
        v, jac = mlp.value_and_jacobian(params, x, 0.5)
        assert np.all(np.isfinite(v)) and np.all(np.isfinite(jac))
        assert rel_err(v, hand_forward(mlp, params, x, 0.5)) <= FORWARD_RTOL
        # and reverse mode through the saturated units (training, the adjoint): sigmoid
        # is built on tanh, whose derivative is 1 − tanh², not autograd's 1/cosh²
        g = autograd.grad(lambda p: autograd.numpy.sum(mlp.value_and_divergence(p, x, 0.5)[1]))(params)
        assert all(np.all(np.isfinite(leaf)) for pair in g for leaf in pair)


# -------------------------------------------------------------- Jacobian, trace


@given(networks())
def test_jacobian_matches_autograd(net):
    mlp, params, x, t = net
    v, jac = mlp.value_and_jacobian(params, x, t)
    assert jac.shape == (x.shape[0], mlp.dim, mlp.dim) and jac.dtype == np.float64
    assert np.array_equal(v, mlp(params, x, t))
    ad = autograd_jacobians(mlp, params, x, t)
    assert rel_err(jac, ad) <= JACOBIAN_RTOL
    assert np.array_equal(mlp.jacobian(params, x, t), jac)


@given(networks())
def test_divergence_is_the_autograd_trace(net):
    mlp, params, x, t = net
    ad_trace = np.trace(autograd_jacobians(mlp, params, x, t), axis1=1, axis2=2)
    div = mlp.divergence(params, x, t)
    assert div.shape == (x.shape[0],) and div.dtype == np.float64
    scale = max(float(np.max(np.abs(ad_trace))), 1e-300)
    assert np.max(np.abs(div - ad_trace)) <= JACOBIAN_RTOL * scale
    v2, div2 = mlp.value_and_divergence(params, x, t)
    assert np.array_equal(v2, mlp(params, x, t)) and np.array_equal(div2, div)


@pytest.mark.parametrize("in_dim,out_dim", [(3, 1), (1, 3), (2, 4)])
def test_jacobian_with_other_input_and_output_sizes(in_dim, out_dim):
    mlp = MLP(2, hidden=(6,), activation="swish", time_features=1, in_dim=in_dim, out_dim=out_dim)
    params = mlp.init(np.random.default_rng(1))
    x, t = np.random.default_rng(2).normal(size=(3, in_dim)), np.array([0.1, 0.5, 0.9])
    v, jac = mlp.value_and_jacobian(params, x, t)
    assert v.shape == (3, out_dim) and jac.shape == (3, out_dim, in_dim)
    assert rel_err(jac, autograd_jacobians(mlp, params, x, t)) <= JACOBIAN_RTOL
    if in_dim != out_dim:
        with pytest.raises(ValueError, match="out_dim"):
            mlp.divergence(params, x, t)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_jacobian_check_rejects_a_wrong_jacobian(activation):
    mlp = MLP(3, hidden=(5, 4), activation=activation)
    params = mlp.init(np.random.default_rng(3))
    x, t = np.random.default_rng(4).normal(size=(2, 3)), np.array([0.2, 0.8])
    ad = autograd_jacobians(mlp, params, x, t)
    jac = mlp.jacobian(params, x, t)
    assert rel_err(np.swapaxes(jac, 1, 2), ad) > REJECT_MIN  # transposed
    wrong = MLP(3, hidden=(5, 4), activation=activation)
    wrong.d_act = lambda a: ACTIVATIONS[activation][1](a) + 0.3  # a wrong φ'
    assert rel_err(wrong.jacobian(params, x, t), ad) > REJECT_MIN


def test_parameters_are_differentiable_by_autograd():
    """autograd.grad through __call__ in θ agrees with central differences on a few weights."""
    mlp = MLP(2, hidden=(4,), activation="softplus", time_features=1)
    params = mlp.init(np.random.default_rng(5))
    x, t = np.random.default_rng(6).normal(size=(3, 2)), np.array([0.1, 0.4, 0.7])

    def loss(p):
        return autograd.numpy.sum(mlp(p, x, t) ** 2)

    grads = autograd.grad(loss)(params)
    for layer, which, index in ((0, 0, (1, 2)), (0, 1, (3,)), (1, 0, (2, 1)), (1, 1, (0,))):
        def shifted(h):
            new = [[np.array(W), np.array(b)] for W, b in params]
            new[layer][which][index] += h
            return loss([tuple(p) for p in new])
        fd = (shifted(FD_STEP) - shifted(-FD_STEP)) / (2 * FD_STEP)
        assert abs(grads[layer][which][index] - fd) <= FD_RTOL * max(1.0, abs(fd))


# ------------------------------------------------------------------------ init


@given(dims, st.sampled_from(HIDDEN), st.sampled_from([0, 3]), seeds)
def test_init_is_deterministic_and_shaped(d, hidden, k, seed):
    mlp = MLP(d, hidden=hidden, time_features=k)
    a, b = mlp.init(np.random.default_rng(seed)), mlp.init(np.random.default_rng(seed))
    c = mlp.init(np.random.default_rng(seed + 1))
    sizes = (d + 1 + 2 * k,) + tuple(hidden) + (d,)
    assert len(a) == len(sizes) - 1
    for (Wa, ba), (Wb, bb), (Wc, _), fan_in, fan_out in zip(a, b, c, sizes[:-1], sizes[1:]):
        assert Wa.shape == (fan_in, fan_out) and ba.shape == (fan_out,)
        assert Wa.dtype == ba.dtype == np.float64
        assert np.array_equal(Wa, Wb) and np.array_equal(ba, bb) and not np.array_equal(Wa, Wc)


# ---------------------------------------------------------------------- errors


def test_bad_constructor_arguments_raise_naming_them():
    with pytest.raises(ValueError, match="^activation: "):
        MLP(2, activation="relu")
    with pytest.raises(ValueError, match="^dim: "):
        MLP(0)
    with pytest.raises(TypeError, match="^dim: "):
        MLP(2.0)
    with pytest.raises(ValueError, match="^hidden: "):
        MLP(2, hidden=(4, 0))
    with pytest.raises(TypeError, match="^hidden: "):
        MLP(2, hidden=(4.5,))
    with pytest.raises(ValueError, match="^time_features: "):
        MLP(2, time_features=-1)
    with pytest.raises(TypeError, match="^rng: "):
        MLP(2).init(0)


def test_bad_call_arguments_raise_naming_them():
    mlp = MLP(2, hidden=(4,))
    params = mlp.init(np.random.default_rng(0))
    x = np.zeros((2, 2))
    for method in (mlp.__call__, mlp.value_and_jacobian, mlp.jacobian, mlp.divergence, mlp.value_and_divergence):
        with pytest.raises(TypeError, match="^params: "):
            method(params[:1], x, 0.5)
        with pytest.raises(TypeError, match="^params: "):
            method("weights", x, 0.5)
        with pytest.raises(ValueError, match="^params: "):
            method([(params[0][0].T, params[0][1]), params[1]], x, 0.5)  # W transposed
        with pytest.raises(ValueError, match="^params: "):
            method([params[0], (params[1][0], np.zeros(3))], x, 0.5)  # b of the wrong size
        with pytest.raises(ValueError, match="^x: "):
            method(params, np.zeros((2, 3)), 0.5)
        with pytest.raises(ValueError, match="^x: "):
            method(params, np.zeros(2), 0.5)
        with pytest.raises(ValueError, match="^x: "):
            method(params, np.array([[np.nan, 0.0]]), 0.5)
        with pytest.raises(TypeError, match="^x: "):
            method(params, np.zeros((2, 2), dtype=int), 0.5)
        for t in (np.array([0.1, 0.2, 0.3]), np.zeros((2, 1)), 1.5, -0.1, float("nan")):
            with pytest.raises(ValueError, match="^t: "):
                method(params, x, t)


def test_tanh_derivatives_stay_finite_for_saturated_units():
    """Autograd's own tanh derivative 1/cosh² overflows past |a| ≈ 355; the MLP's tanh
    differentiates as 1 − tanh² (first and second order), against the closed forms."""
    from autograd import elementwise_grad

    from fm_ref.nn import ACTIVATIONS

    act, d_act = ACTIVATIONS["tanh"]
    a = np.array([-900.0, -0.7, 0.0, 0.3, 400.0])
    th = np.tanh(a)
    # the same expressions evaluated by autograd's VJPs: equal up to one rounding
    assert np.allclose(elementwise_grad(act)(a), 1.0 - th**2, rtol=1e-15, atol=0)
    assert np.allclose(elementwise_grad(d_act)(a), -2.0 * th * (1.0 - th**2), rtol=1e-14, atol=0)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_init_draws_the_documented_scales(scale):
    """W ~ N(0, scale²/fan_in), b ~ N(0, 0.1² scale²) (documented; scale off its default
    too): the second moments of many entries within 5 standard errors (a χ²₁ mean has
    relative standard error √(2/n)), the means within 5 standard errors of 0."""
    mlp = MLP(3, hidden=(300, 300))
    params = mlp.init(np.random.default_rng(0), scale=scale)
    W, b = params[1]
    for x, var in ((W, scale**2 / 300), (b, 0.01 * scale**2)):
        n = x.size
        assert abs(np.mean(x**2) / var - 1.0) <= 5 * np.sqrt(2 / n)
        assert abs(np.mean(x)) <= 5 * np.sqrt(var / n)
    W0, _ = params[0]
    assert abs(np.mean(W0**2) / (scale**2 / 4) - 1.0) <= 5 * np.sqrt(2 / W0.size)  # fan_in = d + 1
