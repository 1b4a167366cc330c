"""Optimisation: Adam over parameter pytrees, and the flow-matching training loop.

Parameters are lists of ``(W, b)`` tuples (or any nesting of lists/tuples of arrays);
Adam keeps its moment estimates in the same structure. Progress is reported through
an optional ``callback(step, loss, params)``; training loops never print by themselves.
"""
import time

import autograd.numpy as np
import numpy as onp
from autograd import value_and_grad

from ._validate import as_finite_float, as_generator, as_positive_int

__all__ = ["adam", "tree_map", "tree_flatten", "train_cfm"]


def tree_map(fn, *trees):
    """Apply ``fn`` leafwise over matching nested lists/tuples of arrays."""
    first = trees[0]
    if isinstance(first, (list, tuple)):
        return type(first)(tree_map(fn, *children) for children in zip(*trees))
    return fn(*trees)


def tree_flatten(tree):
    """All leaves of a pytree concatenated into one float64 vector."""
    if isinstance(tree, (list, tuple)):
        parts = [tree_flatten(c) for c in tree]
        return onp.concatenate(parts) if parts else onp.zeros(0)
    return onp.ravel(onp.asarray(tree, dtype=onp.float64))


def adam(loss_and_grad, params, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, callback=None):
    """Minimise with Adam (Kingma & Ba 2015).

    Parameters
    ----------
    loss_and_grad : callable
        ``loss_and_grad(params, step) -> (loss, grad)``, grad shaped like params; the
        step index lets the caller draw a fresh mini-batch from its own Generator.
    params : pytree of arrays
    steps : int
    lr, b1, b2, eps : float
    callback : callable, optional
        ``callback(step, loss, params)`` after each step.

    Returns
    -------
    params : pytree, the final parameters
    losses : ndarray, shape (steps,), the loss at each step (before its update)
    """
    steps = as_positive_int(steps, "steps")
    lr = as_finite_float(lr, "lr", lo=0.0, lo_open=True)
    m = tree_map(onp.zeros_like, params)
    v = tree_map(onp.zeros_like, params)
    losses = onp.empty(steps)
    for i in range(steps):
        loss, g = loss_and_grad(params, i)
        if not onp.isfinite(loss):
            raise FloatingPointError(f"adam: the loss became {loss} at step {i}; lower lr")
        losses[i] = loss
        m = tree_map(lambda m_, g_: b1 * m_ + (1.0 - b1) * g_, m, g)
        v = tree_map(lambda v_, g_: b2 * v_ + (1.0 - b2) * g_ * g_, v, g)
        c1, c2 = 1.0 - b1 ** (i + 1), 1.0 - b2 ** (i + 1)
        params = tree_map(lambda p, m_, v_: p - lr * (m_ / c1) / (onp.sqrt(v_ / c2) + eps), params, m, v)
        if callback is not None:
            callback(i, float(loss), params)
    return params, losses


def train_cfm(mlp, path, data, steps, rng, batch=256, lr=1e-3, params=None, callback=None,
              t_min=0.0, t_max=1.0):
    """Train v_θ by conditional flow matching: Adam on mini-batch L_CFM.

    Each step draws t ~ U[t_min, t_max), x₀ ~ N(0, I) and x₁ from ``data`` (rows drawn
    with replacement; or ``data.sample`` for a distribution), forms
    x_t = σ_t x₀ + α_t x₁ and the target u_t(x_t | x₁) = α'_t x₁ + σ'_t x₀, and takes
    one Adam step on (1/B) Σ ‖v_θ(x_t, t) − u_t(x_t | x₁)‖², with the gradient from the
    MLP's hand-written backward pass (``MLP.sq_error_and_grad``).

    Parameters
    ----------
    mlp : fm_ref.nn.MLP
    path : fm_ref.paths.AffinePath
    data : array, shape (N, d), or a distribution with ``sample(n, rng)``
    steps, batch : int
    rng : numpy.random.Generator (initialisation, if ``params`` is None, and batches)
    lr : float
    params : initial parameters (default: ``mlp.init(rng)``)
    callback : callable(step, loss, params), optional
    t_min, t_max : float, the time range (use t_max < 1 for VP and LinearVP, whose
        σ'_t² is not integrable at t = 1: derivations/04-flow-matching.md (FM.7))

    Returns
    -------
    params, losses : the trained parameters and the per-step loss, shape (steps,)

    Derivation: derivations/04-flow-matching.md (FM.2)
    """
    from .losses import conditional_target, sample_training_batch
    from .nn import MLP
    from .paths import AffinePath
    from ._validate import as_points

    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp: expected an fm_ref.nn.MLP, got {type(mlp).__name__}")
    if not isinstance(path, AffinePath):
        raise TypeError(f"path: expected an AffinePath, got {type(path).__name__}")
    rng = as_generator(rng)
    batch = as_positive_int(batch, "batch")
    if hasattr(data, "sample"):
        source = data
    else:
        points = as_points(data, "data", dim=mlp.dim)
        source = _Rows(points)
    if params is None:
        params = mlp.init(rng)
    mlp.check_params(params)

    def loss_and_grad(p, step):
        t, x_0, x_1 = sample_training_batch(source, batch, rng, t_min, t_max)
        x_t, u_t = conditional_target(path, t, x_0, x_1)
        return mlp._sq_error_and_grad(p, x_t, t, u_t)

    return adam(loss_and_grad, params, steps, lr=lr, callback=callback)


class _Rows:
    """A data array seen as a distribution: ``sample`` draws rows with replacement."""

    def __init__(self, points):
        self.points, self.dim = points, points.shape[1]

    def sample(self, n, rng):
        return self.points[rng.integers(0, self.points.shape[0], n)]
