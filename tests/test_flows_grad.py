"""The hand-written gradient of a flow's mean NLL (``Flow._nll_and_grad``), against autograd.

The independent route is ``autograd.value_and_grad`` of the NLL written with the layers'
``_inverse`` (the fallback ``train_flow_mle`` takes): autograd differentiates the forward
formulas mechanically and shares none of the backward rules.
derivations/07-normalizing-flows.md (NF.27)
"""
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, value_and_grad
from hypothesis import given
from hypothesis import strategies as st

from fm_ref import flows
from fm_ref.distributions import GaussianMixture
from fm_ref.flows import AffineCoupling, ElementwiseAffine, Flow, Planar, Reverse, default_flow, train_flow_mle
from fm_ref.nn import MLP
from fm_ref.train import _leaves
from tests.strategies import worst, hand_backward_flows, hand_backward_layers, mlp_fields, points, seeds

# Hand vs autograd gradients, leaf by leaf (‖Δ‖ ≤ GRAD_RTOL ‖autograd's leaf‖): the routes
# form the same products and sums in other orders (BLAS blocking, autograd's sums of
# broadcast gradients and of the scatter matrices) and the softplus/swish derivatives by
# other formulas (autograd differentiates logaddexp and the tanh form of the sigmoid), so
# each entry differs by a few ε times the sum of the magnitudes of its terms; measured
# ~1e-15 on the leaf norms, and 1e-10 leaves room for cancellation within a leaf up to ~1e5.
GRAD_RTOL = 1e-10
# The loss: the same arithmetic up to the order of the log-det sums (K layers, d ≤ 4
# coordinates): a few ε of its largest terms.
LOSS_RTOL = 1e-13
# Adam iterates from the two routes: the gradients differ by ~1e-15 relative, and Adam's
# step m̂/(√v̂ + ε) moves by at most that relative amount times lr (θ of order 1).
ITERATE_ATOL = 1e-10


def autograd_nll_and_grad(flow, params, x):
    """value_and_grad of −mean(log p₀(z) + log_det) through ``Flow._inverse`` (what the
    fallback of ``train_flow_mle`` differentiates)."""
    def nll(p):
        z, log_det = flow._inverse(p, x)
        return -anp.mean(flow.base.log_prob(z) + log_det)

    return value_and_grad(nll)(params)


def leaf_errors(got, ref):
    """max over leaves of ‖got − ref‖ / ‖ref‖ (0 where both are zero), and the structures agree."""
    a, b = _leaves(got), _leaves(ref)
    assert len(a) == len(b)
    worst = 0.0
    for u, v in zip(a, b):
        u, v = np.asarray(u), np.asarray(v)
        assert u.shape == v.shape
        diff, size = np.linalg.norm(u - v), np.linalg.norm(v)
        worst = max(worst, diff / size if size > 0 else (0.0 if diff == 0 else np.inf))
    return worst


def gradient_gap(flow, params, x):
    """(relative loss gap, worst relative leaf gap) of the hand route against autograd."""
    assert flow._hand_gradient_available()
    loss, g = flow._nll_and_grad(params, x)
    ref_loss, ref = autograd_nll_and_grad(flow, params, x)
    return abs(loss - ref_loss) / max(abs(ref_loss), 1.0), leaf_errors(g, ref)


# --------------------------------------------------------------------------- the gradient


@given(hand_backward_flows())
def test_hand_gradient_matches_autograd(case):
    flow, params, x = case
    loss_gap, grad_gap = gradient_gap(flow, params, x)
    assert loss_gap <= LOSS_RTOL
    assert worst(grad_gap) <= GRAD_RTOL


def test_hand_gradient_matches_autograd_on_the_default_flow():
    rng = np.random.default_rng(3)
    flow = default_flow(3)
    params = [tuple(rng.normal(0.0, 0.7, np.shape(leaf)) for leaf in p) if isinstance(p, tuple)
              else [(rng.normal(0.0, 0.7, W.shape), rng.normal(0.0, 0.7, b.shape)) for W, b in p]
              for p in flow.identity_params()]
    loss_gap, grad_gap = gradient_gap(flow, params, rng.normal(0.0, 2.0, (64, 3)))
    assert loss_gap <= LOSS_RTOL and grad_gap <= GRAD_RTOL


@given(hand_backward_layers(), seeds)
def test_layer_backward_is_autograds_vjp(case, seed):
    """Each layer's ``_backward`` with arbitrary upstream gradients (gz, gl), not only the
    NLL's z/n and −1/n, is autograd's VJP of (z, log_det) = f⁻¹(x) in (params, x); the cached
    inverse is ``_inverse``."""
    layer, params, x = case
    rng = np.random.default_rng(seed)
    gz, gl = rng.normal(size=x.shape), rng.normal(size=x.shape[0])
    z, log_det, cache = layer._inverse_cached(params, x)
    ref_z, ref_log_det = layer._inverse(params, x)
    np.testing.assert_array_equal(z, ref_z)  # the same operations on every entry
    np.testing.assert_allclose(log_det, ref_log_det, rtol=LOSS_RTOL, atol=LOSS_RTOL * np.max(np.abs(ref_log_det)))
    g_params, g_x = layer._backward(params, cache, gz, gl)

    def pairing(p, y):
        z_, ld_ = layer._inverse(p, y)
        return anp.sum(gz * z_) + anp.sum(gl * ld_)

    ref_params, ref_x = grad(pairing, (0, 1))(params, x)
    assert worst(max(leaf_errors(g_params, ref_params), leaf_errors(g_x, ref_x))) <= GRAD_RTOL


@given(mlp_fields(), st.data())
def test_mlp_vjp_matches_autograd(field, data):
    """``MLP._vjp`` gives autograd's gradients of Σ G ⊙ apply(params, x, t) in params and x
    (time features included: they carry no x-gradient); ``_forward_cached`` is ``apply``."""
    mlp, params = field
    x = data.draw(points(mlp.dim, n=data.draw(st.integers(1, 9))))
    t = np.random.default_rng(data.draw(seeds)).uniform(size=x.shape[0])
    G = np.random.default_rng(data.draw(seeds)).normal(size=(x.shape[0], mlp.out_dim))
    out, cache = mlp._forward_cached(params, x, t)
    np.testing.assert_array_equal(out, mlp.apply(params, x, t))
    g_params, g_x = mlp._vjp(params, cache, G)
    ref_params, ref_x = grad(lambda p, y: anp.sum(G * mlp.apply(p, y, t)), (0, 1))(params, x)
    assert worst(max(leaf_errors(g_params, ref_params), leaf_errors(g_x, ref_x))) <= GRAD_RTOL
    assert mlp._vjp(params, cache, G, x_grad=False)[1] is None


@pytest.mark.parametrize("activation", ["tanh", "softplus", "swish"])
def test_mlp_vjp_with_other_input_and_output_sizes(activation):
    """in_dim ≠ out_dim (a coupling's network: |A| inputs, 2|B| outputs) and a constant t."""
    rng = np.random.default_rng(5)
    mlp = MLP(1, (6, 5), activation=activation, in_dim=1, out_dim=4)
    params = mlp.init(rng, scale=1.5)
    x, G = rng.normal(size=(7, 1)), rng.normal(size=(7, 4))
    out, cache = mlp._forward_cached(params, x, 0.0)
    g_params, g_x = mlp._vjp(params, cache, G)
    ref_params, ref_x = grad(lambda p, y: anp.sum(G * mlp.apply(p, y, 0.0)), (0, 1))(params, x)
    assert g_x.shape == (7, 1)
    assert max(leaf_errors(g_params, ref_params), leaf_errors(g_x, ref_x)) <= GRAD_RTOL


# --------------------------------------------------------------------------- the checks can fail


def _broken(name):
    """A deliberately wrong backward, as (class, attribute, replacement) for monkeypatch."""
    coupling_backward, affine_backward = AffineCoupling._backward, ElementwiseAffine._backward
    if name == "coupling log-det term dropped":
        return AffineCoupling, "_backward", lambda self, p, c, gz, gl: coupling_backward(self, p, c, gz, 0.0 * gl)
    if name == "tanh-bound derivative omitted":  # u = 0 makes sech²(u) = 1: ∂s/∂s_raw taken as 1
        return AffineCoupling, "_backward", lambda self, p, c, gz, gl: coupling_backward(
            self, p, (c[0], 0.0 * c[1], c[2], c[3]), gz, gl)
    if name == "elementwise log-det term dropped":
        return ElementwiseAffine, "_backward", lambda self, p, c, gz, gl: affine_backward(self, p, c, gz, 0.0 * gl)
    if name == "activation derivative dropped":
        return MLP, "_d_act_given", lambda self, a, h: np.ones_like(a)
    raise ValueError(name)


@pytest.mark.parametrize("name", ["coupling log-det term dropped", "tanh-bound derivative omitted",
                                  "elementwise log-det term dropped", "activation derivative dropped"])
def test_the_gradient_check_rejects_a_wrong_backward(monkeypatch, name):
    rng = np.random.default_rng(11)
    layers = [AffineCoupling(2, mask=m, hidden=(6,), scale_bound=1.0) for m in ("even", "odd")]
    flow = Flow(layers + [ElementwiseAffine(2)])
    params = [[(rng.normal(size=W.shape), rng.normal(size=b.shape)) for W, b in p] for p in flow.identity_params()[:2]]
    params.append((rng.normal(size=2), rng.normal(size=2)))
    x = rng.normal(0.0, 1.5, (20, 2))
    assert gradient_gap(flow, params, x)[1] <= GRAD_RTOL
    monkeypatch.setattr(*_broken(name))
    assert gradient_gap(flow, params, x)[1] > 1e-3


# --------------------------------------------------------------------------- training


def _toy_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(size=n), 0.5 * rng.normal(size=n) ** 2])


def test_training_iterates_match_the_autograd_path(monkeypatch):
    """train_flow_mle takes the hand route for default_flow and its first iterates and losses
    are those of the autograd route (forced by monkeypatching the availability check)."""
    data = _toy_data()
    flow = default_flow(2, n_layers=3, hidden=(8, 8))
    calls = []
    hand = Flow._nll_and_grad
    monkeypatch.setattr(Flow, "_nll_and_grad", lambda self, p, x: calls.append(1) or hand(self, p, x))
    fast, fast_losses = train_flow_mle(flow, data, 6, np.random.default_rng(1), lr=1e-2, batch=64)
    assert len(calls) == 6
    monkeypatch.setattr(Flow, "_hand_gradient_available", lambda self: False)
    slow, slow_losses = train_flow_mle(flow, data, 6, np.random.default_rng(1), lr=1e-2, batch=64)
    assert len(calls) == 6
    np.testing.assert_allclose(fast_losses, slow_losses, rtol=LOSS_RTOL)
    gap = max(np.max(np.abs(a - b)) for a, b in zip(_leaves(fast), _leaves(slow)))
    assert gap <= ITERATE_ATOL
    moved = max(np.max(np.abs(a - b)) for a, b in zip(_leaves(fast), _leaves(flow.data_init(
        flow.init(np.random.default_rng(1)), data))))
    assert moved > 1e-3  # the iterates did move, by steps far above the tolerance


def test_the_fallback_is_autograd_for_other_layers_and_bases(monkeypatch):
    """Planar, MAF, another base and a subclass overriding the covered arithmetic take
    autograd; with the base N(0, I) written as a one-component mixture the autograd route
    gives the hand route's losses."""
    assert default_flow(2)._hand_gradient_available()
    assert default_flow(4)._hand_gradient_available()
    with_planar = Flow([AffineCoupling(2, hidden=(4,)), Planar(2), ElementwiseAffine(2)])
    mixture_base = Flow([AffineCoupling(2, hidden=(4,)), Reverse(2), AffineCoupling(2, hidden=(4,))],
                        base=GaussianMixture(np.zeros((1, 2)), np.ones(1)))

    class ShiftedCoupling(AffineCoupling):
        def log_scale_and_shift(self, params, y):
            s, t = super().log_scale_and_shift(params, y)
            return s, t + 1.0

    class OtherFlow(Flow):
        def _inverse(self, params, x):
            return super()._inverse(params, x)

    subclassed = Flow([ShiftedCoupling(2, hidden=(4,)), ElementwiseAffine(2)])
    patched = AffineCoupling(2, hidden=(4,))
    patched._inverse = lambda params, x: (x, np.zeros(x.shape[0]))  # on the instance
    others = [with_planar, default_flow(2, "maf", n_layers=2, hidden=(4,)), default_flow(2, "radial", n_layers=2),
              mixture_base, subclassed, Flow([Flow([ShiftedCoupling(2, hidden=(4,))])]),
              OtherFlow([AffineCoupling(2, hidden=(4,))]), Flow([patched])]
    assert not any(flow._hand_gradient_available() for flow in others)

    data = _toy_data(100)
    monkeypatch.setattr(Flow, "_nll_and_grad", lambda *a: pytest.fail("the hand route was taken"))
    for flow in others[:2]:
        _, losses = train_flow_mle(flow, data, 2, np.random.default_rng(0), batch=32)
        assert np.all(np.isfinite(losses))
    _, mixture_losses = train_flow_mle(mixture_base, data, 4, np.random.default_rng(2), lr=1e-2, batch=32)
    monkeypatch.undo()
    normal_base = Flow(mixture_base.layers)
    assert normal_base._hand_gradient_available()
    _, normal_losses = train_flow_mle(normal_base, data, 4, np.random.default_rng(2), lr=1e-2, batch=32)
    # the mixture's log-density is N(0, I)'s by another formula (eigendecomposition, logsumexp)
    np.testing.assert_allclose(mixture_losses, normal_losses, rtol=1e-12)


def test_the_batch_gradient_is_the_mean_of_the_per_point_gradients():
    """∂L/∂θ of a batch is the mean of the per-point gradients (NF.24's mean), checked
    against the hand route on each point alone: the seeds z/n and −1/n scale with n."""
    rng = np.random.default_rng(4)
    flow = Flow([AffineCoupling(3, mask="odd", hidden=(5,)), ElementwiseAffine(3)])
    params = [[(rng.normal(size=W.shape), rng.normal(size=b.shape)) for W, b in flow.identity_params()[0]],
              (rng.normal(size=3), rng.normal(size=3))]
    x = rng.normal(size=(5, 3))
    loss, g = flow._nll_and_grad(params, x)
    singles = [flow._nll_and_grad(params, x[i:i + 1]) for i in range(5)]
    assert abs(loss - np.mean([s[0] for s in singles])) <= LOSS_RTOL * abs(loss)
    mean = [np.mean([_leaves(s[1])[j] for s in singles], axis=0) for j in range(len(_leaves(g)))]
    assert leaf_errors(g, mean) <= GRAD_RTOL


@pytest.mark.parametrize("kind", ["coupling", "planar"])
def test_flat_adam_gives_the_per_leaf_iterates(kind):
    """train_flow_mle's losses, iterates and callback parameters are those of ``adam`` on the
    pytree with the flow's gradient and the same batches, bit for bit (``adam`` runs its
    elementwise update on one flat vector; test_train.py pins it against the per-leaf rule)."""
    from fm_ref.train import adam

    data = _toy_data(200)
    flow = default_flow(2, kind, n_layers=3, hidden=(6,))
    seen = []
    got, got_losses = train_flow_mle(flow, data, 8, np.random.default_rng(1), batch=32,
                                     callback=lambda i, loss, p: seen.append(p))
    rng = np.random.default_rng(1)
    start = flow.data_init(flow.init(rng), data)
    nll_and_grad = flow._nll_and_grad if kind == "coupling" else (
        lambda p, x: autograd_nll_and_grad(flow, p, x))
    ref, ref_losses = adam(lambda p, step: nll_and_grad(p, data[rng.choice(200, size=32, replace=False)]),
                           start, 8, lr=5e-3)
    np.testing.assert_array_equal(got_losses, ref_losses)
    assert [np.shape(a) for a in _leaves(got)] == [np.shape(b) for b in _leaves(ref)]
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(got), _leaves(ref)))
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(seen[-1]), _leaves(got))) and len(seen) == 8
    assert type(got[-1]) is tuple and type(got) is list  # the pytree's own containers


def test_the_default_batch_is_256_and_a_batch_of_n_uses_the_whole_set_without_drawing(monkeypatch):
    """Each step's batch has ``batch`` rows (256 by default); with batch ≥ n it is the data
    itself and the Generator is not drawn from (with params given, none of its draws are used)."""
    flow = default_flow(2, n_layers=2, hidden=(4,))
    seen = []
    hand = Flow._nll_and_grad
    monkeypatch.setattr(Flow, "_nll_and_grad", lambda self, p, x: seen.append(x) or hand(self, p, x))
    data = _toy_data(300)
    params = flow.init(np.random.default_rng(0))
    train_flow_mle(flow, data, 2, np.random.default_rng(1), params=params)
    assert [x.shape for x in seen] == [(256, 2)] * 2
    for batch in (300, 301):
        seen.clear()
        rng = np.random.default_rng(2)
        train_flow_mle(flow, data, 2, rng, batch=batch, params=params)
        assert all(x is data for x in seen) and len(seen) == 2
        assert rng.random() == np.random.default_rng(2).random()
