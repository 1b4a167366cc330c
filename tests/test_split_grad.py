"""The batch split of CFM training (fm_ref._split_grad.SplitGrad, train_cfm(workers=k)):
the size-weighted mean of the slices' losses and gradients is the batch's, to rounding."""
import numpy as np
import pytest

from fm_ref._split_grad import SplitGrad
from fm_ref.distributions import make_toy
from fm_ref.nn import MLP
from fm_ref.paths import CondOT
from fm_ref.train import train_cfm

# Sums grouped by slice instead of over the whole batch: a few ulps of the largest term,
# relative; 1e-12 leaves three orders of margin.
REL_ROUNDING = 1e-12


def _problem(n, seed=0):
    rng = np.random.default_rng(seed)
    mlp = MLP(2, (16, 16))
    return mlp, mlp.init(rng), rng.normal(size=(n, 2)), rng.uniform(size=n), rng.normal(size=(n, 2))


def _close(a, b):
    return abs(a - b) <= REL_ROUNDING * max(abs(a), abs(b))


@pytest.mark.parametrize("workers,n", [(2, 256), (3, 101), (2, 3)])
def test_split_loss_and_gradient_equal_the_whole_batch(workers, n):
    mlp, params, x, t, u = _problem(n)
    loss, grads = mlp._sq_error_and_grad(params, x, t, u)
    split_loss, split_grads = SplitGrad(mlp._sq_error_and_grad, workers)(params, x, t, u)
    assert _close(loss, split_loss)
    for (dw, db), (sw, sb) in zip(grads, split_grads):
        np.testing.assert_allclose(sw, dw, rtol=REL_ROUNDING, atol=REL_ROUNDING * np.max(np.abs(dw)))
        np.testing.assert_allclose(sb, db, rtol=REL_ROUNDING, atol=REL_ROUNDING * np.max(np.abs(db)))


def test_unweighted_mean_of_slices_is_rejected():
    """The check can fail: averaging unequal slices without their sizes is not the batch mean."""
    mlp, params, x, t, u = _problem(101)
    loss, _ = mlp._sq_error_and_grad(params, x, t, u)
    parts = [mlp._sq_error_and_grad(params, x[a:b], t[a:b], u[a:b]) for a, b in ((0, 10), (10, 101))]
    assert not _close(loss, 0.5 * (parts[0][0] + parts[1][0]))


def test_train_cfm_with_two_workers_follows_the_same_path():
    data = make_toy("8gaussians", 500, np.random.default_rng(0))
    mlp = MLP(2, (16, 16))
    one = train_cfm(mlp, CondOT(), data, 20, np.random.default_rng(1), batch=64)
    two = train_cfm(mlp, CondOT(), data, 20, np.random.default_rng(1), batch=64, workers=2)
    np.testing.assert_allclose(two[1], one[1], rtol=1e-9)  # 20 Adam steps amplify rounding a little
    for (w1, b1), (w2, b2) in zip(one[0], two[0]):
        np.testing.assert_allclose(w2, w1, rtol=1e-9, atol=1e-12)


def test_errors_in_a_slice_reach_the_caller_and_bad_workers_are_refused():
    def boom(params, x, t, u):
        if x.shape[0] and x[0, 0] > 0.5:
            raise ArithmeticError("slice failed")
        return 0.0, [(np.zeros(1), np.zeros(1))]
    x = np.zeros((8, 2))
    x[4:] = 1.0
    with pytest.raises(ArithmeticError, match="slice failed"):
        SplitGrad(boom, 2)(None, x, np.zeros(8), x)
    with pytest.raises(ValueError, match=r"^workers:"):
        SplitGrad(boom, 1)
    with pytest.raises(ValueError, match=r"^workers:"):
        train_cfm(MLP(2, (4,)), CondOT(), x, 1, np.random.default_rng(0), workers=0)


def test_a_stopped_worker_thread_is_reported_not_waited_for():
    """The shared dispatch (``_Channel.run``) raises, naming the caller, when a worker thread
    has ended, instead of polling forever for a result that cannot come; the caller's own
    slice has run before the check, and the threads' error slots are left clean."""
    mlp, params, x, t, u = _problem(64)
    split = SplitGrad(mlp._sq_error_and_grad, 2)
    split._channel.close()
    for thread in split._threads:
        thread.join(5.0)
        assert not thread.is_alive()
    with pytest.raises(RuntimeError, match=r"^SplitGrad: worker thread 1 has stopped$"):
        split(params, x, t, u)
