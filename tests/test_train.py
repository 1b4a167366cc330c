"""Adam and the CFM training loop: convergence on a known minimum, determinism, errors."""
import numpy as np
import pytest

from fm_ref.distributions import GaussianMixture, make_toy
from fm_ref.losses import cfm_loss_quadrature
from fm_ref.nn import MLP
from fm_ref.paths import VP, CondOT
from fm_ref.train import adam, train_cfm, tree_flatten
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
    with pytest.raises(ValueError, match="lr"):
        adam(lambda p, s: (0.0, p), [np.zeros(1)], 2, lr=-1.0)
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
