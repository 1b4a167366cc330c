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
