"""Optimisation: Adam over parameter pytrees, and the flow-matching training loop.

Parameters are lists of ``(W, b)`` tuples (or any nesting of lists/tuples of arrays);
Adam keeps its moment estimates in the same structure. Progress is reported through
an optional ``callback(step, loss, params)``; training loops never print by themselves.
"""
import numpy as onp

from ._validate import as_finite_float, as_generator, as_points, as_positive_int

__all__ = ["adam", "tree_map", "tree_flatten", "train_cfm"]


def tree_map(fn, *trees):
    """Apply ``fn`` leafwise over matching nested lists/tuples of arrays (plain lists and
    tuples: a namedtuple is rebuilt as its fields, positionally). Trees of different
    structure raise ``ValueError`` (zip would silently drop the extra leaves)."""
    first = trees[0]
    if isinstance(first, (list, tuple)):
        if any(not isinstance(t, (list, tuple)) or len(t) != len(first) for t in trees[1:]):
            raise ValueError(f"trees: expected matching structures, got lengths "
                             f"{[len(t) if isinstance(t, (list, tuple)) else 'leaf' for t in trees]}")
        children = [tree_map(fn, *c) for c in zip(*trees)]
        return type(first)(*children) if hasattr(first, "_fields") else type(first)(children)
    if any(isinstance(t, (list, tuple)) for t in trees[1:]):
        raise ValueError("trees: expected matching structures, got a leaf against a list/tuple")
    return fn(*trees)


def tree_flatten(tree):
    """All leaves of a pytree concatenated into one float64 vector."""
    if isinstance(tree, (list, tuple)):
        parts = [tree_flatten(c) for c in tree]
        return onp.concatenate(parts) if parts else onp.zeros(0)
    return onp.ravel(onp.asarray(tree, dtype=onp.float64))


def _leaves(tree):
    """The arrays of a pytree, depth first."""
    if isinstance(tree, (list, tuple)):
        return [leaf for child in tree for leaf in _leaves(child)]
    return [tree]


def _rebuild(tree, leaves):
    """A pytree shaped like ``tree`` holding ``leaves`` (consumed from an iterator)."""
    if isinstance(tree, (list, tuple)):
        children = [_rebuild(child, leaves) for child in tree]
        return type(tree)(*children) if hasattr(tree, "_fields") else type(tree)(children)
    return next(leaves)


def _checked_loss(loss, i):
    """The loss as a float; a complex or non-numeric loss raises ``TypeError``, a
    non-finite one ``FloatingPointError`` saying where the cause may lie."""
    raw = onp.asarray(loss)
    if raw.shape != () or raw.dtype.kind not in "fiu":
        raise TypeError(f"loss_and_grad: expected a real scalar loss, got {raw.dtype} of shape {raw.shape}")
    loss = float(raw)
    if not onp.isfinite(loss):
        cause = ("at the starting parameters: the data, the parameters or the model give a non-finite loss"
                 if i == 0 else "after finite updates: the data or the model give a non-finite loss here, or "
                 "the steps diverged (lower lr)")
        raise FloatingPointError(f"adam: the loss became {loss} at step {i}, {cause}")
    return loss


def _flat_grads(g, shapes, out):
    """The gradient's leaves, checked to be shaped like θ (``shapes``) and real, written
    one after another into the float64 vector ``out`` (their finiteness is checked by
    ``adam`` on the moments they feed)."""
    grads = _leaves(g)
    if [getattr(g_j, "shape", None) for g_j in grads] != shapes:  # a wrong shape, or a leaf not an array
        if len(grads) != len(shapes) or [onp.shape(g_j) for g_j in grads] != shapes:
            raise ValueError(f"loss_and_grad: expected a gradient shaped like params ({len(shapes)} leaves of "
                             f"shapes {shapes}), got {[onp.shape(g_j) for g_j in grads]}")
        grads = [onp.asarray(g_j) for g_j in grads]
    for j, g_j in enumerate(grads):
        if g_j.dtype.kind not in "fiu":
            raise TypeError(f"loss_and_grad: gradient leaf {j} expected real values, got dtype {g_j.dtype}")
    if grads:
        onp.concatenate([g_j.ravel() for g_j in grads], out=out)
    return out


def adam(loss_and_grad, params, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, callback=None):
    """Minimise with Adam (Kingma & Ba 2015).

    m ← β₁m + (1−β₁)g,  v ← β₂v + (1−β₂)g²,  θ ← θ − lr · (m/(1−β₁ᵏ)) / (√(v/(1−β₂ᵏ)) + ε).

    Parameters
    ----------
    loss_and_grad : callable
        ``loss_and_grad(params, step) -> (loss, grad)``, grad shaped like params; the
        step index lets the caller draw a fresh mini-batch from its own Generator.
    params : pytree of arrays (not modified)
    steps : int
    lr, b1, b2, eps : float
    callback : callable, optional
        ``callback(step, loss, params)`` after each step (params are fresh arrays each step).

    Returns
    -------
    params : pytree, the final parameters
    losses : ndarray, shape (steps,), the loss at each step (before its update)
    """
    steps = as_positive_int(steps, "steps")
    lr = as_finite_float(lr, "lr", lo=0.0, lo_open=True)
    b1 = as_finite_float(b1, "b1", lo=0.0, hi=1.0, hi_open=True)  # b1 = 1 divides by 1 − b1ᵏ = 0
    b2 = as_finite_float(b2, "b2", lo=0.0, hi=1.0, hi_open=True)
    eps = as_finite_float(eps, "eps", lo=0.0)
    theta = []
    for j, leaf in enumerate(_leaves(params)):
        raw = onp.asarray(leaf)
        if raw.dtype.kind not in "fiu":
            raise TypeError(f"params: leaf {j} expected real floating-point values, got dtype {raw.dtype}")
        if not onp.all(onp.isfinite(raw)):
            raise ValueError(f"params: leaf {j} expected finite values, got NaN or inf")
        theta.append(onp.array(raw, dtype=onp.float64))
    # The update is elementwise, so it runs on one flat vector (the iterates of the per-leaf
    # rule, bit for bit, with a few NumPy calls per step instead of a dozen per leaf); the
    # leaves handed to loss_and_grad and callback are fresh views of each step's vector.
    shapes = [leaf.shape for leaf in theta]
    ends = onp.cumsum([leaf.size for leaf in theta], dtype=onp.int64)
    starts = ends - [leaf.size for leaf in theta]
    flat = onp.concatenate([leaf.ravel() for leaf in theta]) if theta else onp.zeros(0)

    cuts = list(zip(starts.tolist(), ends.tolist(), shapes))
    pairs = [len(c) for c in params] if (type(params) is list and all(
        type(c) is tuple and not any(isinstance(leaf, (list, tuple)) for leaf in c) for c in params)) else None

    def tree(vec):
        views = [vec[a:b].reshape(shape) for a, b, shape in cuts]
        if pairs is None:
            return _rebuild(params, iter(views))
        out, k = [], 0  # a list of (W, b)-like tuples, built without the recursion
        for size in pairs:
            out.append(tuple(views[k:k + size]))
            k += size
        return out

    def leaf_of(ok):  # the leaf holding the first False of a flat mask
        return int(onp.searchsorted(ends, int(onp.argmin(ok)), side="right"))

    m = onp.zeros_like(flat)
    v = onp.zeros_like(flat)
    work = onp.empty_like(flat)
    g_flat = onp.empty_like(flat)
    losses = onp.empty(steps)
    for i in range(steps):
        loss, g = loss_and_grad(tree(flat), i)
        loss = _checked_loss(loss, i)
        losses[i] = loss
        c1, c2 = 1.0 - b1 ** (i + 1), 1.0 - b2 ** (i + 1)
        g_flat = _flat_grads(g, shapes, g_flat)
        # Written in place, each product and sum rounded as in the formula above:
        # m ← b1·m + (1−b1)·g, v ← b2·v + (1−b2)·(g·g), step = m / (√(v/c2) + ε).
        with onp.errstate(all="ignore"):  # a NaN, inf or overflow is found and named below
            m *= b1
            m += onp.multiply(g_flat, 1.0 - b1, out=work)
            v *= b2
            onp.multiply(g_flat, g_flat, out=work)
            work *= 1.0 - b2
            v += work
            ok = onp.isfinite(v)  # a NaN or inf in g makes v so too
            if not ok.all():
                ok_g = onp.isfinite(g_flat)
                if not ok_g.all():
                    raise FloatingPointError(f"loss_and_grad: the gradient (leaf {leaf_of(ok_g)}) is non-finite at "
                                             f"step {i} although the loss is finite: check the data, the parameters "
                                             f"and the model")
                raise FloatingPointError(f"loss_and_grad: the gradient (leaf {leaf_of(ok)}) at step {i} is too "
                                         f"large for Adam: its square overflows float64 (|g| > 1e154); rescale "
                                         f"the loss")
            onp.divide(v, c2, out=work)
            onp.sqrt(work, out=work)
            work += eps
            if eps > 0.0:  # the denominator is positive
                onp.divide(m, work, out=work)
            else:  # a coordinate whose gradient has been exactly 0 so far (m = v = 0) stays put
                positive = work > 0.0
                work = onp.where(positive, m / onp.where(positive, work, 1.0), 0.0)
            work *= lr / c1
            flat = flat - work  # a fresh vector: the views handed out before stay as they were
        ok = onp.isfinite(flat)
        if not ok.all():
            raise FloatingPointError(f"adam: the parameters (leaf {leaf_of(ok)}) became non-finite at step {i}: "
                                     f"the update overflowed; lower lr (now {lr!r})")
        if callback is not None:
            callback(i, float(loss), tree(flat))
    return tree(flat), losses


def train_cfm(mlp, path, data, steps, rng, batch=256, lr=1e-3, params=None, callback=None,
              t_min=0.0, t_max=1.0, coupling=None, workers=1):
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
    coupling : callable(x_0, x_1, rng) -> (x_0, x_1), optional
        Re-pairs each batch (``fm_ref.couplings.plans``: exact OT, entropic); with a
        pair-conditioned ``path`` (``fm_ref.couplings.paths.PairPath``) the target is
        u_t(x_t | x₀, x₁) instead: derivations/10-couplings.md (CPL.3)
    workers : int, threads that share each step's batch (``fm_ref._split_grad.SplitGrad``);
        the same batches, and the same result to rounding

    Returns
    -------
    params, losses : the trained parameters and the per-step loss, shape (steps,)

    Derivation: derivations/04-flow-matching.md (FM.2)
    """
    from .losses import conditional_target, sample_training_batch
    from .nn import MLP
    from .paths import AffinePath
    from .couplings.paths import PairPath

    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp: expected an fm_ref.nn.MLP, got {type(mlp).__name__}")
    if not isinstance(path, (AffinePath, PairPath)):
        raise TypeError(f"path: expected an AffinePath or a PairPath, got {type(path).__name__}")
    if coupling is not None and not callable(coupling):
        raise TypeError(f"coupling: expected a callable coupling(x_0, x_1, rng), got {type(coupling).__name__}")
    rng = as_generator(rng)
    batch = as_positive_int(batch, "batch")
    source = _data_source(data, mlp.dim)
    workers = as_positive_int(workers, "workers")
    if params is None:
        params = mlp.init(rng)
    mlp.check_params(params)
    if workers > 1:
        from ._split_grad import SplitGrad

        sq_error_and_grad = SplitGrad(mlp._sq_error_and_grad, workers)
    else:
        sq_error_and_grad = mlp._sq_error_and_grad

    sample_training_batch(source, 1, onp.random.default_rng(0), t_min, t_max)  # validates the range
    if isinstance(path, PairPath):
        path.check_time_range(t_min, t_max)
    else:
        try:
            conditional_target(path, onp.array([t_min, t_max]), onp.zeros((2, mlp.dim)), onp.zeros((2, mlp.dim)))
        except ValueError as exc:
            raise ValueError(f"t_max: {exc}") from None

    def loss_and_grad(p, step):
        # (PATH.1), (PATH.4) on validated inputs, without re-validating every step
        t = t_min + (t_max - t_min) * rng.uniform(size=batch)
        x_0 = rng.standard_normal((batch, mlp.dim))
        x_1 = source.sample(batch, rng)
        if coupling is not None:  # (CPL.4) to (CPL.8)
            x_0, x_1 = coupling(x_0, x_1, rng)
        if isinstance(path, PairPath):  # (CPL.3)
            x_t, u_t = path._target(t, x_0, x_1, rng)
            return sq_error_and_grad(p, x_t, t, u_t)
        tc = t[:, None]
        x_t = path._sigma(tc) * x_0 + path._alpha(tc) * x_1
        u_t = path._d_sigma(tc) * x_0 + path._d_alpha(tc) * x_1
        return sq_error_and_grad(p, x_t, t, u_t)

    return adam(loss_and_grad, params, steps, lr=lr, callback=callback)


def _data_source(data, dim):
    """What a training loop draws x₁ from: a distribution with ``sample(n, rng)`` and ``dim``
    (checked against ``dim``), or the rows of a data array (n, dim), drawn by ``_Rows``."""
    if hasattr(data, "sample"):
        if getattr(data, "dim", dim) != dim:
            raise ValueError(f"data: expected a distribution in dimension {dim} (the MLP's), got {data.dim}")
        return data
    return _Rows(as_points(data, "data", dim=dim))


class _Rows:
    """A data array seen as a distribution: ``sample`` draws rows with replacement."""

    def __init__(self, points):
        self.points, self.dim = points, points.shape[1]

    def sample(self, n, rng):
        return onp.take(self.points, rng.integers(0, self.points.shape[0], n), axis=0)
