"""Adam and the CFM training loop: convergence on a known minimum, determinism, errors."""
import numpy as np
import pytest

from fm_ref.distributions import GaussianMixture, make_toy
from fm_ref.losses import cfm_loss_quadrature
from fm_ref.nn import MLP
from fm_ref.paths import VP, CondOT
from fm_ref.train import adam, train_cfm, tree_flatten, tree_map
from fm_ref.verify.foundation import example_target


def test_adam_finds_the_minimum_of_a_quadratic():
    """f(p) = ½‖A p − b‖² has its minimum at the least-squares solution (closed form)."""
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((6, 3)), rng.standard_normal(6)
    solution = np.linalg.lstsq(A, b, rcond=None)[0]

    def loss_and_grad(p, step):
        r = A @ p[0] - b
        return 0.5 * r @ r, [A.T @ r]

    (p,), losses = adam(loss_and_grad, [np.zeros(3)], 3000, lr=0.05)
    # Adam's last steps oscillate with amplitude ~lr·(step-size decay); 1e-6 is far below
    # the distance from the start (‖solution‖ ~ 1) and far above float64 rounding.
    assert np.max(np.abs(p - solution)) <= 1e-6
    assert losses[-1] < losses[0]


def test_train_cfm_is_bit_identical_for_a_seed_and_lowers_the_loss():
    """Same seed, same parameters; the exact L_CFM (quadrature, an independent
    evaluation) falls from the initial network to the trained one."""
    data = make_toy("8gaussians", 500, np.random.default_rng(1))
    mlp = MLP(2, (16, 16))
    runs = [train_cfm(mlp, CondOT(), data, 150, np.random.default_rng(2), batch=64, lr=3e-3) for _ in range(2)]
    assert np.array_equal(tree_flatten(runs[0][0]), tree_flatten(runs[1][0]))
    assert np.array_equal(runs[0][1], runs[1][1])
    target = example_target(dim=2)
    params, _ = train_cfm(mlp, CondOT(), target, 300, np.random.default_rng(3), batch=128, lr=3e-3)
    start = mlp.init(np.random.default_rng(3))
    before = cfm_loss_quadrature(mlp, start, CondOT(), target, n_t=8, n_x=12)
    after = cfm_loss_quadrature(mlp, params, CondOT(), target, n_t=8, n_x=12)
    assert after < 0.8 * before


def test_callback_sees_every_step():
    seen = []
    train_cfm(MLP(1, (4,)), CondOT(), np.zeros((5, 1)), 7, np.random.default_rng(0), batch=4,
              callback=lambda step, loss, params: seen.append((step, loss)))
    assert [s for s, _ in seen] == list(range(7)) and all(np.isfinite(l) for _, l in seen)


def test_bad_input_names_the_argument():
    mlp = MLP(2, (4,))
    with pytest.raises(ValueError, match="data"):
        train_cfm(mlp, CondOT(), np.zeros((5, 3)), 2, np.random.default_rng(0))
    with pytest.raises(TypeError, match="rng"):
        train_cfm(mlp, CondOT(), np.zeros((5, 2)), 2, 0)
    with pytest.raises(ValueError, match="steps"):
        train_cfm(mlp, CondOT(), np.zeros((5, 2)), 0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="path"):
        train_cfm(mlp, "ot", np.zeros((5, 2)), 2, np.random.default_rng(0))
    with pytest.raises(TypeError, match="mlp"):
        train_cfm(lambda p, x, t: x, CondOT(), np.zeros((5, 2)), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="t_max"):  # σ'² is not integrable at t = 1 for VP
        train_cfm(mlp, VP(), np.zeros((5, 2)), 2, np.random.default_rng(0))
    for lr in (-1.0, 0.0):  # lr > 0: a step of zero size is refused too
        with pytest.raises(ValueError, match=r"^lr: expected a value > 0"):
            adam(lambda p, s: (0.0, p), [np.zeros(1)], 2, lr=lr)
    with pytest.raises(FloatingPointError, match="loss"):
        adam(lambda p, s: (np.nan, p), [np.zeros(1)], 2)
    for bad in (dict(b1=1.0), dict(b2=1.0), dict(b1=-0.5), dict(b2=1.5), dict(eps=-1.0)):
        with pytest.raises(ValueError, match=rf"^{next(iter(bad))}:"):
            adam(lambda p, s: (0.0, p), [np.zeros(1)], 2, **bad)
    with pytest.raises(ValueError, match=r"^loss_and_grad:"):  # a leaf missing from the gradient
        adam(lambda p, s: (0.0, p[:1]), [np.zeros(1), np.zeros(2)], 2)
    with pytest.raises(ValueError, match=r"^loss_and_grad:"):  # a (1,) gradient for a (3,) leaf
        adam(lambda p, s: (0.0, [np.zeros(1)]), [np.zeros(3)], 2)
    with pytest.raises(ValueError, match=r"^data:"):  # a 1-D distribution for a 2-D MLP
        train_cfm(mlp, CondOT(), GaussianMixture(np.zeros((1, 1)), np.ones(1)), 2, np.random.default_rng(0))


def test_tree_map_refuses_mismatched_trees_and_keeps_namedtuples():
    from collections import namedtuple

    from fm_ref.train import tree_map

    with pytest.raises(ValueError, match=r"^trees:"):
        tree_map(lambda a, b: a + b, [np.zeros(1), np.zeros(1)], [np.zeros(1)])
    with pytest.raises(ValueError, match=r"^trees:"):
        tree_map(lambda a, b: a + b, [np.zeros(1)], [[np.zeros(1)]])
    Pair = namedtuple("Pair", "w b")
    out = tree_map(lambda a: 2 * a, Pair(np.ones(2), np.ones(1)))
    assert isinstance(out, Pair) and np.array_equal(out.w, [2.0, 2.0])
    params, _ = adam(lambda p, s: (0.0, tree_map(np.zeros_like, p)), [Pair(np.ones(2), np.ones(1))], 2)
    assert isinstance(params[0], Pair)


# ----------------------------------------------------------------- exact update rules
# Adam's rule written out by hand in its unrolled form, a route that shares no code with
# fm_ref.train: m_k = (1 − β₁) Σ_{i≤k} β₁^{k−i} g_i, v_k likewise with β₂ and g_i²,
# θ_{k+1} = θ_k − lr (m_k / (1 − β₁^{k+1})) / (√(v_k / (1 − β₂^{k+1})) + ε).

#: Adam's update is a few flops per step; the hand computation differs only in rounding.
ADAM_RTOL = 1e-12


def _adam_by_hand(theta0, grads, lr, b1, b2, eps):
    """The iterates θ_1, …, θ_K for a fixed gradient sequence (each g_k an array)."""
    out, theta = [], np.array(theta0, dtype=float)
    for k in range(len(grads)):
        m = (1 - b1) * sum(b1 ** (k - i) * grads[i] for i in range(k + 1))
        v = (1 - b2) * sum(b2 ** (k - i) * grads[i] ** 2 for i in range(k + 1))
        theta = theta - lr * (m / (1 - b1 ** (k + 1))) / (np.sqrt(v / (1 - b2 ** (k + 1))) + eps)
        out.append(theta)
    return out


@pytest.mark.parametrize("hyper", [dict(), dict(lr=0.3, b1=0.6, b2=0.75, eps=0.2)])
def test_adam_steps_match_the_hand_computation(hyper):
    """A gradient sequence that changes sign and size, over a two-leaf (W, b) tree: every
    iterate, every recorded loss and every callback call match the unrolled rule, so each of
    lr, b1, b2, eps, the bias corrections and the step count is pinned (defaults included:
    lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8)."""
    full = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8) | hyper
    rng = np.random.default_rng(5)
    W0, b0 = rng.standard_normal((2, 3)), rng.standard_normal(3)
    gW = [rng.standard_normal((2, 3)) * s for s in (1.0, -3.0, 0.01, 2.0)]
    gb = [rng.standard_normal(3) * s for s in (0.5, 4.0, -1.0, 1e-3)]
    W0_before = W0.copy()
    calls, seen = [], []

    def loss_and_grad(p, step):
        calls.append(step)
        return 10.0 + step * step, [(gW[step], gb[step])]

    params, losses = adam(loss_and_grad, [(W0, b0)], 4, callback=lambda i, l, p: seen.append((i, l, p)), **hyper)
    want_W = _adam_by_hand(W0, gW, **full)
    want_b = _adam_by_hand(b0, gb, **full)
    assert calls == [0, 1, 2, 3] and [s[0] for s in seen] == [0, 1, 2, 3]
    np.testing.assert_array_equal(losses, [10.0, 11.0, 14.0, 19.0])
    assert [s[1] for s in seen] == [10.0, 11.0, 14.0, 19.0]
    for k, (_, _, p) in enumerate(seen):
        np.testing.assert_allclose(p[0][0], want_W[k], rtol=ADAM_RTOL)
        np.testing.assert_allclose(p[0][1], want_b[k], rtol=ADAM_RTOL)
    np.testing.assert_allclose(params[0][0], want_W[-1], rtol=ADAM_RTOL)
    np.testing.assert_allclose(params[0][1], want_b[-1], rtol=ADAM_RTOL)
    np.testing.assert_array_equal(W0, W0_before)  # the input is not modified


def test_adam_with_a_constant_gradient_steps_by_lr_each_time():
    """For a constant g the bias corrections make m̂ = g and v̂ = g² at every step, so each
    step is exactly −lr·g/(|g| + ε), for any β₁, β₂ (the issue's hand computation)."""
    g = np.array([2.0, -0.5, 1e-3, 0.0])
    lr, eps = 0.1, 0.01
    for b1, b2 in ((0.9, 0.999), (0.5, 0.3)):
        (p,), losses = adam(lambda p, s: (1.0, [g]), [np.zeros(4)], 5, lr=lr, b1=b1, b2=b2, eps=eps)
        np.testing.assert_allclose(p, -5 * lr * g / (np.abs(g) + eps), rtol=ADAM_RTOL, atol=0)
        assert losses.shape == (5,)


def test_rows_reaches_every_row_with_equal_frequency():
    """Training draws data rows uniformly with replacement: with N = 5 rows and 20 000
    draws every row appears, each row's count is within 5 standard errors of n/N, and the
    drawn mean is the data mean within 5 standard errors."""
    from fm_ref.train import _Rows

    points = np.arange(10.0).reshape(5, 2) ** 2
    n = 20_000
    drawn = _Rows(points).sample(n, np.random.default_rng(0))
    assert drawn.shape == (n, 2)
    counts = np.array([np.sum(np.all(drawn == row, axis=1)) for row in points])
    assert counts.sum() == n
    se = np.sqrt(n * 0.2 * 0.8)
    assert np.all(np.abs(counts - n / 5) <= 5 * se)
    se_mean = points.std(axis=0) / np.sqrt(n)
    assert np.all(np.abs(drawn.mean(axis=0) - points.mean(axis=0)) <= 5 * se_mean)


@pytest.mark.parametrize("as_array", [False, True])
def test_train_cfm_first_step_is_adam_on_the_cfm_loss_of_its_batch(as_array):
    """One step of train_cfm on a time range [0.2, 0.7) equals Adam's first step
    θ − lr·g/(|g| + ε) with g the autograd gradient of ``cfm_loss`` on the batch that
    ``sample_training_batch`` draws from the same Generator state (the documented order:
    t, x₀, x₁); the recorded loss is that batch's L_CFM. For a data array, the batch rows
    are the rows that ``rng.integers(0, N, n)`` picks."""
    import autograd

    from fm_ref.losses import cfm_loss, sample_training_batch

    mlp, path, lr = MLP(2, (5,)), VP(), 0.05
    params = mlp.init(np.random.default_rng(0))
    target = GaussianMixture(np.array([[1.0, -2.0], [0.5, 3.0]]), np.array([0.3, 0.2]))
    points = target.sample(7, np.random.default_rng(9))

    class _Source:  # data rows, drawn as train_cfm documents for an array
        dim = 2

        def sample(self, n, rng):
            return points[rng.integers(0, len(points), n)]

    data, source = (points, _Source()) if as_array else (target, target)
    seen = []
    train_cfm(mlp, path, data, 1, np.random.default_rng(4), batch=6, lr=lr, params=params,
              t_min=0.2, t_max=0.7, callback=lambda i, l, p: seen.append((l, p)))
    t, x_0, x_1 = sample_training_batch(source, 6, np.random.default_rng(4), 0.2, 0.7)
    assert np.all((t >= 0.2) & (t < 0.7))
    loss, g = autograd.value_and_grad(lambda p: cfm_loss(mlp, p, path, t, x_0, x_1))(params)
    np.testing.assert_allclose(seen[0][0], loss, rtol=1e-12)  # two summation orders of one sum
    want = tree_flatten(params) - lr * tree_flatten(g) / (np.abs(tree_flatten(g)) + 1e-8)
    # the hand-written backward pass against autograd, then one Adam step of size ≤ lr
    np.testing.assert_allclose(tree_flatten(seen[0][1]), want, rtol=1e-10, atol=1e-12)


def test_adam_names_the_leaf_and_keeps_each_steps_parameters():
    """Adam's update runs on one flat vector: its errors still name the leaf they come from,
    and the parameters a callback receives are fresh each step (later steps leave an
    earlier snapshot as it was)."""
    tree = [(np.zeros((2, 3)), np.zeros(3)), (np.zeros((3, 1)), np.ones(1))]
    big = [(np.ones((2, 3)), np.ones(3)), (np.full((3, 1), 1e200), np.ones(1))]  # g² overflows in leaf 2
    with pytest.raises(FloatingPointError, match=r"^loss_and_grad: the gradient \(leaf 2\) at step 0 is too large"):
        adam(lambda p, s: (1.0, big), tree, 3)
    huge = [(np.zeros((2, 3)), np.full(3, 1.7e308)), (np.zeros((3, 1)), np.zeros(1))]
    with pytest.raises(FloatingPointError, match=r"^adam: the parameters \(leaf 1\) became non-finite at step 0"):
        adam(lambda p, s: (1.0, [(np.ones((2, 3)), -np.ones(3)), (np.ones((3, 1)), np.ones(1))]), huge, 2,
             lr=1e307)  # lr/(1 − b1) = 1e308: finite alone, beyond float64 added to 1.7e308
    seen = []
    grads = [(np.ones((2, 3)), np.ones(3)), (np.ones((3, 1)), -np.ones(1))]
    params, _ = adam(lambda p, s: (1.0, grads), tree, 3, lr=0.5,
                     callback=lambda i, loss, p: seen.append((p, [a.copy() for a in _flat_leaves(p)])))
    for p, copies in seen:
        assert all(np.array_equal(a, c) for a, c in zip(_flat_leaves(p), copies))
    assert type(params) is list and type(params[1]) is tuple and params[1][0].shape == (3, 1)
    # three steps of lr·|g|/(|g| + eps) against g = −1 (the constant-gradient rule)
    np.testing.assert_allclose(params[1][1], [1.0 + 3 * 0.5 / (1.0 + 1e-8)], rtol=1e-14)  # 3 rounded steps


def _flat_leaves(tree):
    return [leaf for pair in tree for leaf in pair]



def test_adam_names_a_non_finite_gradient_by_leaf_and_reads_leaves_of_any_array_type():
    """Gradient checks run on the flat vector: a NaN or an infinity in any leaf is named
    with its leaf and step (an infinity is non-finite, not an overflow of g²); a gradient
    with a Python float, integer and float32 leaves steps exactly like the same values in
    float64 arrays; a wrong shape is refused; a list of lists comes back as one."""
    tree = [[np.zeros((2, 2)), np.zeros(2)], [np.zeros((2, 1)), np.zeros(())]]

    def grads(bad_leaf=None, value=np.nan):
        out = [[np.ones((2, 2)), np.ones(2)], [np.ones((2, 1)), np.ones(())]]
        if bad_leaf is not None:
            leaf = out[bad_leaf // 2][bad_leaf % 2]
            leaf[(0,) * leaf.ndim] = value
        return out

    for leaf, value in ((3, np.nan), (1, -np.inf), (2, np.inf)):
        with pytest.raises(FloatingPointError,
                           match=rf"^loss_and_grad: the gradient \(leaf {leaf}\) is non-finite at step 1 "):
            adam(lambda p, s: (1.0, grads(leaf if s == 1 else None, value)), tree, 3)
    # a Python float for the 0-d leaf, integers and float32 for others (lists would be subtrees)
    mixed = [[np.array([[1, -2], [3, 0]]), np.array([3.0, -0.5], dtype=np.float32)], [np.array([[1.5], [-2.0]]), 0.75]]
    as_float64 = [[np.asarray(a, dtype=np.float64) for a in pair] for pair in mixed]
    p_mixed, _ = adam(lambda p, s: (1.0, mixed), tree, 3, lr=0.1)
    p_float64, _ = adam(lambda p, s: (1.0, as_float64), tree, 3, lr=0.1)
    assert np.array_equal(tree_flatten(p_mixed), tree_flatten(p_float64))
    assert type(p_mixed) is list and all(type(pair) is list for pair in p_mixed) and p_mixed[1][1].shape == ()
    with pytest.raises(ValueError, match=r"^loss_and_grad: expected a gradient shaped like params \(4 leaves"):
        adam(lambda p, s: (1.0, [[np.ones((2, 2)), np.ones(3)], [np.ones((2, 1)), np.ones(())]]), tree, 2)
    with pytest.raises(ValueError, match=r"^loss_and_grad: expected a gradient shaped like params"):
        adam(lambda p, s: (1.0, [[np.ones((2, 2)), np.ones(2)]]), tree, 2)


def test_adam_returns_the_structure_it_was_given():
    """A list of (W, b) tuples is rebuilt without recursion; every other structure (a tuple
    of tuples, a pair holding a nested tuple) keeps its own nesting and types, and steps
    alike."""
    W, b, c = np.zeros((2, 2)), np.zeros(2), np.zeros(3)
    g = {"W": np.ones((2, 2)), "b": np.full(2, -1.0), "c": np.full(3, 2.0)}
    shapes = {
        "list of pairs": ([(W, b), (W, c)], lambda: [(g["W"], g["b"]), (g["W"], g["c"])]),
        "tuple of pairs": (((W, b), (W, c)), lambda: ((g["W"], g["b"]), (g["W"], g["c"]))),
        "nested pair": ([(W, (b, c))], lambda: [(g["W"], (g["b"], g["c"]))]),
    }
    for name, (params, grads) in shapes.items():
        out, _ = adam(lambda p, s: (1.0, grads()), params, 2, lr=0.5)
        assert tree_map(lambda a: a.shape, out) == tree_map(lambda a: a.shape, params), name
        assert type(out) is type(params) and all(type(o) is type(p) for o, p in zip(out, params)), name
        flat_g = tree_flatten(grads())  # two constant-gradient steps of −lr·g/(|g| + eps)
        # rtol 1e-14: two rounded steps (a few ulps) against the product computed at once
        np.testing.assert_allclose(tree_flatten(out), -2 * 0.5 * flat_g / (np.abs(flat_g) + 1e-8), rtol=1e-14)
