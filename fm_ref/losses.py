"""The flow-matching losses L_FM and L_CFM: Monte Carlo and deterministic quadrature.

    L_FM(θ)  = E_{t, x ~ p_t} ‖v_θ(x, t) − u_t(x)‖²                  (FM.1)
    L_CFM(θ) = E_{t, x₁ ~ q, x₀ ~ N(0, I)} ‖v_θ(x_t, t) − u_t(x_t | x₁)‖²  (FM.2)

with t ~ U[t_min, t_max] and x_t = σ_t x₀ + α_t x₁. Theorem 2 (FM.3): their difference
is a constant in θ, so their gradients agree. Both are written in ``autograd.numpy``
so that ``autograd.grad`` in the parameters gives ∇θ.

The Monte Carlo estimators take the samples (t, x₀, x₁) as arguments, so the two
losses can be evaluated on common random numbers. The quadrature versions replace the
expectations by Gauss–Legendre nodes in t, the trapezoid rule for Gaussian weights in x₀ (and in x₁
for Gaussian components) and the exact sum over the target's components (FM.5, FM.6).

For VP and LinearVP, σ'_t² ~ 1/(1 − t) near t = 1, so E‖u_t(x_t|x₁)‖² is not
integrable on [0, 1]: L_CFM is infinite (L_FM too for a data set; it stays finite for
non-singular Σ_k) and has no gradient; what stays finite, and agrees between the two
losses, is the expected per-sample gradient (it needs only |σ'_t| integrable). The quadrature functions
therefore require ``t_max < 1`` with those paths, and so should Monte Carlo training
(derivations/04-flow-matching.md (FM.7)).
"""
import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from ._validate import as_finite_float, as_generator, as_points, as_positive_int, as_time, finite_result
from .distributions import GaussianMixture
from .marginal import marginal_velocity
from .paths import AffinePath, _col

__all__ = [
    "conditional_target",
    "cfm_loss",
    "fm_loss",
    "sample_training_batch",
    "cfm_quadrature_nodes",
    "fm_quadrature_nodes",
    "cfm_loss_quadrature",
    "fm_loss_quadrature",
    "conditional_energy",
]


def _check_model(model):
    if not callable(model):
        raise TypeError(f"model: expected a callable model(params, x, t), got {type(model).__name__}")


def _check_path(path):
    if not isinstance(path, AffinePath):
        raise TypeError(f"path: expected an AffinePath such as CondOT(), got {type(path).__name__}")


def _check_target(target):
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target: expected a GaussianMixture (or Empirical), got {type(target).__name__}")


def _validate_batch(path, t, x_0, x_1, check_d_sigma=True):
    """(t (n,), x_0, x_1) checked; σ'_t checked finite unless ``check_d_sigma`` is False
    (for targets that do not use it)."""
    _check_path(path)
    x_0 = as_points(x_0, "x_0")
    x_1 = as_points(x_1, "x_1", dim=x_0.shape[1], n=x_0.shape[0])
    t = as_time(t, n=x_0.shape[0])
    if onp.ndim(t) == 0:
        t = onp.full(x_0.shape[0], t)
    if check_d_sigma:
        path._check_d_sigma(t)
    return t, x_0, x_1


def conditional_target(path, t, x_0, x_1):
    """x_t and the regression target u_t(x_t | x₁) = α'_t x₁ + σ'_t x₀, both (n, d).

    Derivation: derivations/01-gaussian-paths.md (PATH.4)
    """
    t, x_0, x_1 = _validate_batch(path, t, x_0, x_1)
    x_t = _col(path._sigma(t)) * x_0 + _col(path._alpha(t)) * x_1
    u_t = _col(path._d_sigma(t)) * x_0 + _col(path._d_alpha(t)) * x_1
    return x_t, u_t


def _marginal_target(target, path, x, t, velocity):
    if velocity is None:
        return marginal_velocity(target, path, x, t)
    if not callable(velocity):
        raise TypeError(f"velocity: expected a callable velocity(x, t), got {type(velocity).__name__}")
    u = velocity(x, t)
    if onp.shape(u) != onp.shape(x):
        raise ValueError(f"velocity: expected velocity(x, t) of shape {onp.shape(x)}, got {onp.shape(u)}")
    _check_real(u, "velocity")
    return u


def _check_real(value, name):
    """A model or velocity output must be real: a complex one would lose its imaginary
    part (with only a warning) on the way to a float loss."""
    kind = onp.asarray(getval(value)).dtype.kind
    if kind not in "fiu":
        raise TypeError(f"{name}: expected real floating-point output, got dtype {onp.asarray(getval(value)).dtype}")


def _weighted_sq_error(model, params, x, t, target, weights):
    v = model(params, x, t)
    if onp.shape(v) != onp.shape(target):  # a broadcast (n, 1) or (n,) would give a wrong number
        raise ValueError(f"model: expected model(params, x, t) of shape {onp.shape(target)}, got {onp.shape(v)}")
    _check_real(v, "model")
    return finite_result("model", "the squared error between the model and its target",
                         lambda: np.sum(weights * np.sum((v - target) ** 2, axis=1)))


def cfm_loss(model, params, path, t, x_0, x_1):
    """Monte Carlo L_CFM: mean over samples of ‖v_θ(x_t, t) − u_t(x_t | x₁)‖², a float.

    Parameters
    ----------
    model : callable, model(params, x, t) -> shape (n, d)
    params : pytree of the model's parameters (differentiable by autograd)
    path : AffinePath
    t : array, shape (n,) (or a float)
    x_0, x_1 : array, shape (n, d), noise and data samples

    Derivation: derivations/04-flow-matching.md (FM.2)
    """
    _check_model(model)
    x_t, u_t = conditional_target(path, t, x_0, x_1)
    t = onp.broadcast_to(t, (x_t.shape[0],))
    n = x_t.shape[0]
    return _weighted_sq_error(model, params, x_t, t, u_t, onp.full(n, 1.0 / n))


def fm_loss(model, params, path, target, t, x_0, x_1, velocity=None):
    """Monte Carlo L_FM: mean of ‖v_θ(x_t, t) − u_t(x_t)‖², x_t = σ_t x₀ + α_t x₁ ~ p_t.

    The regression target is the closed-form marginal velocity of ``target``
    (fm_ref.marginal), or ``velocity(x, t) -> (n, d)`` if given (t an (n,) array); on
    the same (t, x₀, x₁) as ``cfm_loss`` this gives common random numbers.

    Derivation: derivations/04-flow-matching.md (FM.1)
    """
    _check_model(model)
    _check_target(target)
    x_t, _ = conditional_target(path, t, x_0, x_1)
    t = onp.broadcast_to(t, (x_t.shape[0],))
    u_t = _marginal_target(target, path, x_t, t, velocity)
    n = x_t.shape[0]
    return _weighted_sq_error(model, params, x_t, t, u_t, onp.full(n, 1.0 / n))


def sample_training_batch(target, n, rng, t_min=0.0, t_max=1.0):
    """Draw (t, x₀, x₁): t ~ U[t_min, t_max), x₀ ~ N(0, I), x₁ ~ target; shapes (n,), (n, d), (n, d).

    ``target`` is a distribution with ``sample(n, rng)`` and ``dim`` (a GaussianMixture,
    Empirical data set, ...). The three draws come from ``rng`` in that order.
    """
    n = as_positive_int(n, "n")
    rng = as_generator(rng)
    t_min = as_finite_float(t_min, "t_min", lo=0.0, hi=1.0)
    t_max = as_finite_float(t_max, "t_max", lo=t_min, hi=1.0, lo_open=True)
    t = t_min + (t_max - t_min) * rng.uniform(size=n)
    x_0 = rng.standard_normal((n, target.dim))
    x_1 = target.sample(n, rng)
    return t, x_0, x_1


# ----------------------------------------------------------------- quadrature


#: Half-width of the trapezoid rule for N(0, 1): beyond |z| = 8 lie 1.2e-15 of the mass,
#: 8.2e-14 of E z² and 5.4e-12 of E z⁴ (derivations/04-flow-matching.md (FM.5)).
_TRAPEZOID_HALF_WIDTH = 8.0


#: Largest rule built (a few GB of autograd tape for a small MLP).
_MAX_NODES = 4_000_000
#: Most Gauss–Legendre nodes in t: exact for polynomials of degree 1999, far beyond any
#: use; leggauss costs O(n_t³) (measured: 1000 nodes 3.7 s, 3000 nodes 90 s under load).
_MAX_T_NODES = 1000


def _as_n_t(n_t):
    """A checked Gauss–Legendre node count in [1, _MAX_T_NODES]."""
    n_t = as_positive_int(n_t, "n_t")
    if n_t > _MAX_T_NODES:
        raise ValueError(f"n_t: expected at most {_MAX_T_NODES} Gauss-Legendre nodes, got {n_t}")
    return n_t


def _gaussian_rule(n_x, dim):
    """Tensor trapezoid rule for E[f(z)], z ~ N(0, I_dim): nodes (n_x^dim, dim), weights.

    On [−8, 8] with step h = 16/(n_x − 1) and weights h φ(z_j). For integrands analytic
    in the strip |Im z| < τ (the MLP, the mixture's marginal velocity) the error falls
    like exp(−2πτ/h), exponentially in n_x; Gauss–Hermite nodes converge only like
    exp(−c√n_x) for such functions. Measured on FM.4's gradient gap (d = 1, numerics
    note N1 of derivations/04-flow-matching.md (FM.5)): the trapezoid rule reaches
    2.4e-11 (CondOT) and 1.0e-10 (VP) at 64 nodes, Gauss–Hermite 3.3e-8 and 4.6e-8 at 64
    and 1.1e-9 and 6.4e-9 at 96. The truncation at |z| = 8 leaves ~1e-13 relative for a
    quadratic integrand and ~2e-12 for a quartic one.

    Derivation: derivations/04-flow-matching.md (FM.5)
    """
    z = onp.linspace(-_TRAPEZOID_HALF_WIDTH, _TRAPEZOID_HALF_WIDTH, n_x)
    w = (z[1] - z[0]) * onp.exp(-0.5 * z**2) / onp.sqrt(2.0 * onp.pi)
    grids = onp.meshgrid(*([z] * dim), indexing="ij")
    wgrids = onp.meshgrid(*([w] * dim), indexing="ij")
    nodes = onp.stack([g.ravel() for g in grids], axis=1)
    weights = onp.prod(onp.stack([g.ravel() for g in wgrids], axis=1), axis=1)
    return nodes, weights


def _gauss_legendre(n_t, t_min, t_max):
    s, w = onp.polynomial.legendre.leggauss(n_t)
    return t_min + 0.5 * (t_max - t_min) * (s + 1.0), 0.5 * (t_max - t_min) * w


def _validate_time_range(path, t_min, t_max):
    """0 ≤ t_min < t_max ≤ 1, and t_max < 1 where σ'_t diverges at 1 (FM.7)."""
    t_min = as_finite_float(t_min, "t_min", lo=0.0, hi=1.0)
    t_max = as_finite_float(t_max, "t_max", lo=t_min, hi=1.0, lo_open=True)
    try:
        path._check_d_sigma(t_max)
    except ValueError as exc:
        raise ValueError(f"t_max: {exc} (σ'_t² is not integrable up to t = 1)") from None
    return t_min, t_max


#: Fewest trapezoid nodes per axis: the rule's relative error in E[1] is ≈ 2 exp(−2π²/h²),
#: h = 16/(n_x − 1): 5e-2 at n_x = 8, 2e-4 at 12, 6e-8 at 16, below 1e-15 from 24.
_MIN_NODES_PER_AXIS = 12


def _validate_quadrature(path, target, n_t, n_x, t_min, t_max, rule):
    """Checked (n_t, n_x, t_min, t_max); ``rule`` 'cfm' (x₀ nodes × x₁ nodes per component)
    or 'fm' (x nodes per component) sets the node count held against _MAX_NODES."""
    _check_path(path)
    _check_target(target)
    n_t = _as_n_t(n_t)
    n_x = as_positive_int(n_x, "n_x", minimum=_MIN_NODES_PER_AXIS)
    t_min, t_max = _validate_time_range(path, t_min, t_max)
    if rule == "fm":
        per_t = target.k * n_x**target.dim
    else:
        point_masses = int(onp.sum(onp.all(target.eigvals == 0.0, axis=1)))
        per_t = n_x**target.dim * (point_masses + (target.k - point_masses) * n_x**target.dim)
    if per_t * n_t > _MAX_NODES:
        raise ValueError(f"n_x: {n_x} nodes per axis in d = {target.dim} make {per_t * n_t} points "
                         f"(more than {_MAX_NODES}); lower n_x or n_t")
    return n_t, n_x, t_min, t_max


def cfm_quadrature_nodes(path, target, n_t=16, n_x=12, t_min=0.0, t_max=1.0):
    """Nodes (t, x₀, x₁) and weights of a deterministic rule for E_{t, x₀, x₁}[·].

    Gauss–Legendre in t on [t_min, t_max], the tensor trapezoid rule for x₀ ~ N(0, I) (``_gaussian_rule``),
    the exact sum over components, and for a component with covariance Σ_k = U diag(λ) Uᵀ,
    x₁ = μ_k + U √λ η with η on the same rule (a point mass needs none).

    Returns
    -------
    t : shape (m,);  x_0, x_1 : shape (m, d);  weights : shape (m,), summing to t_max − t_min
    up to the trapezoid rule's error (2e-4 relative at n_x = 12, 6e-8 at 16, < 1e-15 from 24)

    Accuracy: the defaults (n_t = 16, n_x = 12) are for a quick look, about 1e-3 relative
    for a 2-D target; for an integrand analytic in the strip |Im z| < τ the x-rule's error
    falls like exp(−2πτ(n_x − 1)/16) (only the weights' sum, an entire integrand, falls like
    exp(−2π²(n_x − 1)²/256)), and the t-rule's like Gauss–Legendre's, so raise both until the
    result stops moving. The convergence table (numerics note N1 of
    derivations/04-flow-matching.md (FM.5), a 1-D gradient gap): ~3e-6 at n_x = 32, ~1e-8 at
    48, 2e-11 to 1e-10 at 64, ~1e-14 at 96. n_x is at least 12; the node count is capped at
    4·10⁶.

    Derivation: derivations/04-flow-matching.md (FM.5)
    """
    n_t, n_x, t_min, t_max = _validate_quadrature(path, target, n_t, n_x, t_min, t_max, "cfm")
    d = target.dim
    t_nodes, t_w = _gauss_legendre(n_t, t_min, t_max)
    z, zw = _gaussian_rule(n_x, d)
    blocks = []
    for k in range(target.k):
        if onp.all(target.eigvals[k] == 0.0):
            x1, w1 = target.means[k][None], onp.ones(1)
        else:
            x1 = target.means[k] + (z * onp.sqrt(target.eigvals[k])) @ target.eigvecs[k].T
            w1 = zw
        # every x₀ node with every x₁ node
        x0 = onp.repeat(z, len(w1), axis=0)
        x1 = onp.tile(x1, (len(zw), 1))
        w = onp.repeat(zw, len(w1)) * onp.tile(w1, len(zw)) * target.weights[k]
        blocks.append((x0, x1, w))
    x0 = onp.concatenate([b[0] for b in blocks])
    x1 = onp.concatenate([b[1] for b in blocks])
    w = onp.concatenate([b[2] for b in blocks])
    m = len(w)
    return (onp.repeat(t_nodes, m), onp.tile(x0, (n_t, 1)), onp.tile(x1, (n_t, 1)),
            onp.repeat(t_w, m) * onp.tile(w, n_t))


def fm_quadrature_nodes(path, target, n_t=16, n_x=12, t_min=0.0, t_max=1.0):
    """Nodes (t, x) and weights of a deterministic rule for E_{t, x ~ p_t}[·].

    p_t = Σ_k w_k N(α_t μ_k, C_k), C_k = U_k diag(α_t²λ_k + σ_t²) U_kᵀ: each component
    gets the tensor trapezoid rule x = α_t μ_k + U_k √c ξ.

    Returns
    -------
    t : shape (m,);  x : shape (m, d);  weights : shape (m,), summing to t_max − t_min
    up to the trapezoid rule's error; accuracy, defaults and limits as in
    ``cfm_quadrature_nodes``

    Derivation: derivations/04-flow-matching.md (FM.6)
    """
    n_t, n_x, t_min, t_max = _validate_quadrature(path, target, n_t, n_x, t_min, t_max, "fm")
    t_nodes, t_w = _gauss_legendre(n_t, t_min, t_max)
    z, zw = _gaussian_rule(n_x, target.dim)
    ts, xs, ws = [], [], []
    for t, tw in zip(t_nodes, t_w):
        alpha, sigma = path._alpha(t), path._sigma(t)
        for k in range(target.k):
            c = alpha**2 * target.eigvals[k] + sigma**2
            xs.append(alpha * target.means[k] + (z * onp.sqrt(c)) @ target.eigvecs[k].T)
            ws.append(tw * target.weights[k] * zw)
            ts.append(onp.full(len(zw), t))
    return onp.concatenate(ts), onp.concatenate(xs), onp.concatenate(ws)


def cfm_loss_quadrature(model, params, path, target, n_t=16, n_x=12, t_min=0.0, t_max=1.0):
    """L_CFM by the deterministic rule of ``cfm_quadrature_nodes``, divided by (t_max − t_min).

    Derivation: derivations/04-flow-matching.md (FM.5)
    """
    _check_model(model)
    t, x_0, x_1, w = cfm_quadrature_nodes(path, target, n_t, n_x, t_min, t_max)
    x_t = _col(path._sigma(t)) * x_0 + _col(path._alpha(t)) * x_1
    u_t = _col(path._d_sigma(t)) * x_0 + _col(path._d_alpha(t)) * x_1
    return _weighted_sq_error(model, params, x_t, t, u_t, w / (t_max - t_min))


def fm_loss_quadrature(model, params, path, target, n_t=16, n_x=12, t_min=0.0, t_max=1.0, velocity=None):
    """L_FM by the deterministic rule of ``fm_quadrature_nodes``, divided by (t_max − t_min).

    ``velocity(x, t)`` replaces the closed-form marginal velocity if given.

    Derivation: derivations/04-flow-matching.md (FM.6)
    """
    _check_model(model)
    t, x, w = fm_quadrature_nodes(path, target, n_t, n_x, t_min, t_max)
    path._check_d_sigma(t)
    u_t = _marginal_target(target, path, x, t, velocity)
    return _weighted_sq_error(model, params, x, t, u_t, w / (t_max - t_min))


def conditional_energy(path, target, n_t=16, t_min=0.0, t_max=1.0):
    """E_{t, x₀, x₁} ‖u_t(x_t | x₁)‖² = E_t[α'_t² E‖x₁‖² + σ'_t² d], Gauss–Legendre in t.

    The θ-free part of L_CFM in closed form in x (only t is integrated numerically);
    with the same t nodes, L_CFM − L_FM = conditional_energy − E‖u_t(x_t)‖² (FM.3).

    Derivation: derivations/04-flow-matching.md (FM.8)
    """
    _check_path(path)
    _check_target(target)
    n_t = _as_n_t(n_t)
    t_min, t_max = _validate_time_range(path, t_min, t_max)
    t, w = _gauss_legendre(n_t, t_min, t_max)
    second = target.second_moment()  # raises naming 'means' beyond float64
    return float(finite_result("target", "the conditional energy", lambda: onp.sum(
        w * (path._d_alpha(t) ** 2 * second + path._d_sigma(t) ** 2 * target.dim)) / (t_max - t_min)))
