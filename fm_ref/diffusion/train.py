"""Training a model of any parameterisation through the one Adam loop of ``fm_ref.train``.

``train_diffusion`` is ``train_cfm`` with the regression target of ``kind`` and a time
weight: the same batch draws (t, x₀, x₁) from the same Generator in the same order, the
same ``adam`` loop and the MLP's hand-written backward pass. With ``kind='velocity'``
and no weight it reproduces ``train_cfm`` bit for bit.
"""
import numpy as onp

from .._validate import as_generator, as_positive_int
from ..losses import sample_training_batch
from ..train import _data_source, adam
from .losses import _conditional_target, check_kind, time_weight

__all__ = ["train_diffusion"]


def _weighted_sq_error_and_grad(mlp, params, x, t, y, lam):
    """(1/n) Σ λ_i ‖f_i − y_i‖² and its gradient by the MLP's backward pass.

    The backward pass of (1/n) Σ ‖f − y'‖² at y' = f − λ(f − y) has the output gradient
    (2/n) λ (f − y), which is that of the weighted loss; the loss itself is formed from f.
    """
    f = mlp.apply(params, x, t)
    resid = f - y
    _, grads = mlp._sq_error_and_grad(params, x, t, f - lam[:, None] * resid)
    return float(onp.sum(lam * onp.sum(resid * resid, axis=1)) / x.shape[0]), grads


def train_diffusion(mlp, path, data, steps, rng, kind="eps", weight=None, batch=256, lr=1e-3, params=None,
                    callback=None, t_min=0.0, t_max=1.0):
    """Train f_θ to predict ``kind`` by Adam on the mini-batch conditional loss (DIF.10).

    Each step draws t ~ U[t_min, t_max), x₀ ~ N(0, I), x₁ from ``data`` (as ``train_cfm``),
    forms x_t and the target y_k (DIF.7) and takes an Adam step on
    (1/B) Σ λ(t_i) ‖f_θ(x_t, t_i) − y_k‖².

    Parameters
    ----------
    mlp : fm_ref.nn.MLP
    path : AffinePath
    data : array, shape (N, d), or a distribution with ``sample(n, rng)``
    steps, batch : int
    rng : numpy.random.Generator
    kind : one of KINDS ('eps' by default: DDPM's simple loss)
    weight : None (uniform), 'cfm' (the CFM loss of the converted model, DIF.9) or weight(t) -> (n,)
    lr, params, callback : as in ``train_cfm``
    t_min, t_max : the time range; the target and weight must be finite on it (score:
        σ_t > 0; 'cfm' weights of eps and score: α_t > 0; velocity on VP: t_max < 1)

    Returns
    -------
    params, losses (shape (steps,))

    Derivation: derivations/09-diffusion.md (DIF.10)
    """
    from ..nn import MLP
    from ..paths import AffinePath

    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp: expected an fm_ref.nn.MLP, got {type(mlp).__name__}")
    if not isinstance(path, AffinePath):
        raise TypeError(f"path: expected an AffinePath, got {type(path).__name__}")
    check_kind(kind)
    rng = as_generator(rng)
    batch = as_positive_int(batch, "batch")
    source = _data_source(data, mlp.dim)
    if params is None:
        params = mlp.init(rng)
    mlp.check_params(params)
    sample_training_batch(source, 1, onp.random.default_rng(0), t_min, t_max)  # validates the range
    ends = onp.array([t_min, t_max])
    try:
        _conditional_target(path, kind, ends, onp.zeros((2, mlp.dim)), onp.zeros((2, mlp.dim)))
        time_weight(weight, path, kind, ends)
    except ValueError as exc:
        if str(exc).startswith("weight:"):
            raise
        raise ValueError(f"t_max: {exc} (the target or weight is undefined at an end of [t_min, t_max])") from None

    def loss_and_grad(p, step):
        t = t_min + (t_max - t_min) * rng.uniform(size=batch)
        x_0 = rng.standard_normal((batch, mlp.dim))
        x_1 = source.sample(batch, rng)
        x_t, y = _conditional_target(path, kind, t, x_0, x_1)
        if weight is None:
            return mlp._sq_error_and_grad(p, x_t, t, y)
        return _weighted_sq_error_and_grad(mlp, p, x_t, t, y, time_weight(weight, path, kind, t))

    return adam(loss_and_grad, params, steps, lr=lr, callback=callback)
