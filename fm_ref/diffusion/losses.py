"""Regression losses for a model of any parameterisation, and their time weightings.

A model f_θ(x, t) may predict one of ``KINDS`` (fm_ref.paths): the velocity, x₁ (the
denoiser), x₀ = ε (DDPM's noise), the score, or Salimans & Ho's v = α_t x₀ − σ_t x₁.
Each kind k has a conditional regression target y_k(x₀, x₁, t) and a marginal one, its
conditional expectation given x_t = x (derivations/09-diffusion.md (DIF.7), (DIF.8)):

    kind      conditional target            marginal target (closed form, fm_ref.marginal)
    velocity  α'_t x₁ + σ'_t x₀             u_t(x)
    x1        x₁                            E[x₁ | x]
    eps       x₀                            E[x₀ | x]
    score     −x₀/σ_t                       ∇ log p_t(x)
    v         α_t x₀ − σ_t x₁               α_t E[x₀ | x] − σ_t E[x₁ | x]

and the losses  L_k^λ = E_t λ(t) E‖f_θ(x_t, t) − y_k‖²  (conditional) and the same with the
marginal target (marginal). The weight λ(t) is uniform (``weight=None``), the caller's
``weight(t) -> (n,)``, or ``"cfm"``: the weight w_k(t) of (DIF.9) under which the loss of
each sample equals the CFM loss of the model converted to a velocity, sample by sample.

Every loss is written in ``autograd.numpy``: ``autograd.grad`` in the parameters gives ∇θ.
"""
import autograd.numpy as np
import numpy as onp

from .._validate import as_points, as_time
from ..losses import _check_model, _check_path, _check_target, _validate_batch, cfm_quadrature_nodes, fm_quadrature_nodes
from ..marginal import marginal_score, marginal_velocity, posterior_mean, posterior_noise_mean
from ..paths import KINDS, _col, _require_nonzero

__all__ = ["KINDS", "check_kind", "conditional_regression_target", "marginal_regression_target", "cfm_weight",
           "time_weight", "per_sample_conditional_loss", "per_sample_marginal_loss", "conditional_loss",
           "marginal_loss", "conditional_loss_quadrature", "marginal_loss_quadrature"]


def check_kind(kind, name="kind"):
    """``kind`` if it is one of ``KINDS``; else ``ValueError`` naming the argument."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"{name}: expected one of {KINDS}, got {kind!r}")
    return kind


def _batch(path, t, x_0, x_1):
    """The batch checked as ``fm_ref.losses`` does; σ'_t is checked where a kind needs it."""
    return _validate_batch(path, t, x_0, x_1, check_d_sigma=False)


def _conditional_target(path, kind, t, x_0, x_1):
    """(DIF.7) on validated inputs: x_t and y_k, both (n, d)."""
    alpha, sigma = path._alpha(t), path._sigma(t)
    x_t = _col(sigma) * x_0 + _col(alpha) * x_1
    if kind == "velocity":
        path._check_d_sigma(t)
        return x_t, _col(path._d_sigma(t)) * x_0 + _col(path._d_alpha(t)) * x_1
    if kind == "x1":
        return x_t, x_1
    if kind == "eps":
        return x_t, x_0
    if kind == "score":
        _require_nonzero(sigma, "σ_t (the conditional score is −x₀/σ_t)", t)
        return x_t, -x_0 / _col(sigma)
    return x_t, _col(alpha) * x_0 - _col(sigma) * x_1


def conditional_regression_target(path, kind, t, x_0, x_1):
    """x_t = σ_t x₀ + α_t x₁ and the conditional target y_k of ``kind``, both shape (n, d).

    Parameters
    ----------
    path : AffinePath
    kind : one of KINDS
    t : float or array, shape (n,)
    x_0, x_1 : array, shape (n, d)

    Derivation: derivations/09-diffusion.md (DIF.7)
    """
    check_kind(kind)
    t, x_0, x_1 = _batch(path, t, x_0, x_1)
    return _conditional_target(path, kind, t, x_0, x_1)


def _marginal_target(target, path, kind, x, t):
    if kind == "velocity":
        return marginal_velocity(target, path, x, t)
    if kind == "x1":
        return posterior_mean(target, path, x, t)
    if kind == "eps":
        return posterior_noise_mean(target, path, x, t)
    if kind == "score":
        return marginal_score(target, path, x, t)
    return (_col(path._alpha(t)) * posterior_noise_mean(target, path, x, t)
            - _col(path._sigma(t)) * posterior_mean(target, path, x, t))


def marginal_regression_target(target, path, kind, x, t):
    """The minimiser of the loss of ``kind``: E[y_k | x_t = x] in closed form, shape (n, d).

    u_t(x), E[x₁|x], E[x₀|x], ∇ log p_t(x) or α_t E[x₀|x] − σ_t E[x₁|x] of a mixture target.

    Derivation: derivations/09-diffusion.md (DIF.8)
    """
    check_kind(kind)
    _check_target(target)
    _check_path(path)
    x = as_points(x, "x", dim=target.dim)
    return _marginal_target(target, path, kind, x, as_time(t, n=x.shape[0]))


def cfm_weight(path, kind, t):
    """w_k(t): ‖v − u_t(x_t|x₁)‖² = w_k(t) ‖f − y_k‖² when v is f converted to a velocity.

    velocity 1;  x1 D²/σ²;  eps D²/α²;  score D²σ²/α²;  v D²/(α² + σ²)²,  with
    D_t = α'_t σ_t − α_t σ'_t. Raises where the divisor vanishes (σ_t = 0 for x1, α_t = 0
    for eps and score) or σ'_t is infinite.

    Parameters
    ----------
    path : AffinePath;  kind : one of KINDS;  t : float or array, shape (n,)

    Returns
    -------
    float or array, shape (n,)

    Derivation: derivations/09-diffusion.md (DIF.9)
    """
    check_kind(kind)
    _check_path(path)
    t = as_time(t)
    return _cfm_weight(path, kind, t)


def _cfm_weight(path, kind, t):
    if kind == "velocity":
        return 1.0 + 0.0 * t
    path._check_d_sigma(t)
    alpha, sigma, gap = path._alpha(t), path._sigma(t), path._gap(t)
    if kind == "x1":
        _require_nonzero(sigma, "σ_t (the weight D²/σ² of x1)", t)
        return (gap / sigma) ** 2
    if kind == "v":
        return (gap / (alpha**2 + sigma**2)) ** 2
    _require_nonzero(alpha, f"α_t (the weight of {kind} divides by α²)", t)
    if kind == "eps":
        return (gap / alpha) ** 2
    return (gap * sigma / alpha) ** 2


def time_weight(weight, path, kind, t):
    """λ(t) of shape (n,): 1 for ``None``, w_k(t) for ``"cfm"``, or ``weight(t)`` checked ≥ 0 and finite.

    Derivation: derivations/09-diffusion.md (DIF.9)
    """
    t = onp.asarray(t, dtype=float)
    if weight is None:
        return onp.ones_like(t)
    if isinstance(weight, str):
        if weight != "cfm":
            raise ValueError(f"weight: expected None, 'cfm' or a callable weight(t) -> (n,), got {weight!r}")
        return onp.asarray(_cfm_weight(path, kind, t), dtype=float)
    if not callable(weight):
        raise TypeError(f"weight: expected None, 'cfm' or a callable weight(t) -> (n,), got {type(weight).__name__}")
    lam = onp.asarray(weight(t), dtype=float)
    if lam.shape != t.shape or not onp.all(onp.isfinite(lam)) or onp.any(lam < 0.0):
        raise ValueError(f"weight: expected weight(t) finite and >= 0 of shape {t.shape}, got shape {lam.shape}")
    return lam


def _sq_error(model, params, x, t, y):
    f = model(params, x, t)
    if onp.shape(f) != onp.shape(y):
        raise ValueError(f"model: expected model(params, x, t) of shape {onp.shape(y)}, got {onp.shape(f)}")
    return np.sum((f - y) ** 2, axis=1)


def per_sample_conditional_loss(model, params, path, kind, t, x_0, x_1, weight=None):
    """λ(t_i) ‖f_θ(x_t, t_i) − y_k‖² per sample, shape (n,).

    Parameters
    ----------
    model : callable, model(params, x, t) -> shape (n, d), read as a prediction of ``kind``
    params : pytree;  path : AffinePath;  kind : one of KINDS
    t : array, shape (n,) (or a float);  x_0, x_1 : array, shape (n, d)
    weight : None, 'cfm' or callable weight(t) -> (n,)

    Derivation: derivations/09-diffusion.md (DIF.10)
    """
    _check_model(model)
    check_kind(kind)
    t, x_0, x_1 = _batch(path, t, x_0, x_1)
    lam = time_weight(weight, path, kind, t)
    x_t, y = _conditional_target(path, kind, t, x_0, x_1)
    return lam * _sq_error(model, params, x_t, t, y)


def per_sample_marginal_loss(model, params, path, target, kind, t, x_0, x_1, weight=None):
    """λ(t_i) ‖f_θ(x_t, t_i) − E[y_k | x_t]‖² per sample, shape (n,), x_t = σ_t x₀ + α_t x₁.

    Derivation: derivations/09-diffusion.md (DIF.10)
    """
    _check_model(model)
    check_kind(kind)
    _check_target(target)
    t, x_0, x_1 = _batch(path, t, x_0, x_1)
    lam = time_weight(weight, path, kind, t)
    x_t = _col(path._sigma(t)) * x_0 + _col(path._alpha(t)) * x_1
    return lam * _sq_error(model, params, x_t, t, _marginal_target(target, path, kind, x_t, t))


def conditional_loss(model, params, path, kind, t, x_0, x_1, weight=None):
    """Monte Carlo conditional loss: the mean of ``per_sample_conditional_loss``, a float.

    Derivation: derivations/09-diffusion.md (DIF.10)
    """
    return np.mean(per_sample_conditional_loss(model, params, path, kind, t, x_0, x_1, weight))


def marginal_loss(model, params, path, target, kind, t, x_0, x_1, weight=None):
    """Monte Carlo marginal loss on the same (t, x₀, x₁): common random numbers, a float.

    Derivation: derivations/09-diffusion.md (DIF.10)
    """
    return np.mean(per_sample_marginal_loss(model, params, path, target, kind, t, x_0, x_1, weight))


def conditional_loss_quadrature(model, params, path, target, kind, weight=None, n_t=16, n_x=12, t_min=0.0,
                                t_max=1.0):
    """The conditional loss by the deterministic rule of ``fm_ref.losses.cfm_quadrature_nodes``.

    Divided by (t_max − t_min). Gauss–Legendre nodes never touch t_min, t_max.

    Derivation: derivations/09-diffusion.md (DIF.10)
    """
    _check_model(model)
    check_kind(kind)
    t, x_0, x_1, w = cfm_quadrature_nodes(path, target, n_t, n_x, t_min, t_max)
    x_t, y = _conditional_target(path, kind, t, x_0, x_1)
    lam = time_weight(weight, path, kind, t)
    return np.sum(w * lam * _sq_error(model, params, x_t, t, y)) / (t_max - t_min)


def marginal_loss_quadrature(model, params, path, target, kind, weight=None, n_t=16, n_x=12, t_min=0.0,
                             t_max=1.0, regression_target=None):
    """The marginal loss by the deterministic rule of ``fm_ref.losses.fm_quadrature_nodes``.

    ``regression_target(x, t) -> (n, d)`` replaces the closed-form E[y_k | x] if given.

    Derivation: derivations/09-diffusion.md (DIF.10)
    """
    _check_model(model)
    check_kind(kind)
    t, x, w = fm_quadrature_nodes(path, target, n_t, n_x, t_min, t_max)
    if regression_target is None:
        y = _marginal_target(target, path, kind, x, t)
    elif callable(regression_target):
        y = regression_target(x, t)
    else:
        raise TypeError(f"regression_target: expected a callable (x, t) -> (n, d), got "
                        f"{type(regression_target).__name__}")
    lam = time_weight(weight, path, kind, t)
    return np.sum(w * lam * _sq_error(model, params, x, t, y)) / (t_max - t_min)
