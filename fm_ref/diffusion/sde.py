"""The family of SDEs with the marginals p_t of an affine path, and Euler–Maruyama.

For any g_t ≥ 0, the SDE

    dX = [u_t(X) + ½ g_t² ∇log p_t(X)] dt + g_t dW,    X_0 ~ p_0,

has the same marginals p_t as the probability-flow ODE dX = u_t(X) dt (g = 0): its
Fokker–Planck equation reduces to the continuity equation of (u_t, p_t)
(derivations/09-diffusion.md (DIF.3)). The named choice ``g="reverse"``,
g_t² = 2σ_t D_t/α_t (DIF.4), is the reverse-time SDE of the path's forward Markov
diffusion; for ``VP`` it is g_t² = β(1 − t), Song et al.'s reverse VP SDE in fm_ref's
time (DIF.5).

Endpoint. Where σ_t = 0 (t = 1 for every path but CondOT with σ_min > 0) the score of a
data set is infinite; a grid must therefore end at t_max with σ_{t_max} > 0. Three
documented ways to reach the data: CondOT(σ_min > 0) (σ_1 = σ_min, the target is the data
blurred by σ_min); stopping at t_max < 1 (the samples follow p_{t_max}); and
``denoise=True``, a final step returning x̂₁ = E[x₁ | X_{t_max}] (Tweedie's denoiser).
"""
import numbers

import numpy as onp

from .._validate import as_generator, as_points
from ..losses import _check_path
from .predictors import Predictor

__all__ = ["REVERSE", "diffusion_coefficient", "reverse_diffusion_g2", "same_marginal_drift",
           "check_grid", "euler_maruyama", "sample_sde", "vp_sde_coefficients"]

#: The named choice of g_t: the reverse-time SDE of the forward diffusion (DIF.4).
REVERSE = "reverse"


def reverse_diffusion_g2(path, t):
    """g_t² = 2σ_t D_t/α_t = −dσ²/dt + 2(α'_t/α_t)σ_t², float or shape (n,); needs α_t > 0.

    Derivation: derivations/09-diffusion.md (DIF.4)
    """
    _check_path(path)
    t = onp.asarray(t, dtype=float)
    alpha = path._alpha(t)
    if onp.any(alpha == 0.0):
        raise ValueError("t: α_t vanishes, so the reverse diffusion's g_t² = 2σ_t D_t/α_t is infinite there")
    path._check_d_sigma(t)
    return 2.0 * path._sigma(t) * path._gap(t) / alpha


def diffusion_coefficient(path, g, t):
    """g_t as a float for a float t: a number, a callable g(t), or ``"reverse"`` (DIF.4).

    Raises ``ValueError`` naming ``g`` when g_t is negative or not finite.

    Derivation: derivations/09-diffusion.md (DIF.3)
    """
    if isinstance(g, str):
        if g != REVERSE:
            raise ValueError(f"g: expected a number >= 0, a callable g(t) or {REVERSE!r}, got {g!r}")
        value = float(onp.sqrt(reverse_diffusion_g2(path, t)))
    elif callable(g):
        value = g(t)
        if isinstance(value, onp.ndarray) and value.ndim == 0 and value.dtype.kind in "fiu":
            value = float(value)
    elif isinstance(g, numbers.Real) and not isinstance(g, bool):
        value = g
    else:
        raise TypeError(f"g: expected a number >= 0, a callable g(t) or {REVERSE!r}, got {type(g).__name__}")
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not onp.isfinite(value) or value < 0:
        raise ValueError(f"g: expected g_t finite and >= 0, got {value!r} at t = {t!r}")
    return float(value)


def same_marginal_drift(predictor, g, x, t):
    """b(x, t) = u_t(x) + ½ g_t² ∇log p_t(x), shape (n, d), from a ``Predictor``.

    Derivation: derivations/09-diffusion.md (DIF.3)
    """
    g_t = diffusion_coefficient(predictor.path, g, t)
    u = predictor(x, t, "velocity")
    if g_t == 0.0:
        return u
    return u + 0.5 * g_t**2 * predictor(x, t, "score")


def check_grid(ts, name="ts"):
    """A strictly increasing float64 grid in [0, 1] with at least two times, shape (m,)."""
    ts = onp.asarray(ts)
    if ts.dtype.kind not in "fiu" or ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"{name}: expected a 1-D array of at least two times, got shape {ts.shape}")
    ts = ts.astype(float)
    if not onp.all(onp.isfinite(ts)) or ts[0] < 0.0 or ts[-1] > 1.0:
        raise ValueError(f"{name}: expected finite times in [0, 1], got [{ts[0]!r}, {ts[-1]!r}]")
    if not onp.all(onp.diff(ts) > 0.0):
        raise ValueError(f"{name}: expected strictly increasing times")
    return ts


def euler_maruyama(drift, diffusion, x, ts, rng, keep=False):
    """X_{k+1} = X_k + h_k b(X_k, t_k) + g(t_k) √h_k ξ_k,  ξ_k ~ N(0, I) from ``rng``.

    Weak order 1 for smooth coefficients: |E f(X_N) − E f(X(t_N))| = O(max h_k).

    Parameters
    ----------
    drift : callable b(x, t) -> (n, d), t a float
    diffusion : callable g(t) -> float ≥ 0
    x : array, shape (n, d), the state at ts[0]
    ts : array, shape (m,), strictly increasing
    rng : numpy.random.Generator (one (n, d) draw per step, in order)
    keep : bool, return every grid state

    Returns
    -------
    array, shape (n, d) at ts[-1], or shape (m, n, d) if ``keep``

    Derivation: derivations/09-diffusion.md (DIF.11)
    """
    x = as_points(x, "x")
    ts = check_grid(ts)
    rng = as_generator(rng)
    states = [x] if keep else None
    for k in range(len(ts) - 1):
        t, h = float(ts[k]), float(ts[k + 1] - ts[k])
        g_t = diffusion(t)
        b = drift(x, t)
        if onp.shape(b) != x.shape:
            raise ValueError(f"drift: expected b(x, t) of shape {x.shape}, got {onp.shape(b)}")
        x = x + h * b
        if g_t != 0.0:
            x = x + (g_t * onp.sqrt(h)) * rng.standard_normal(x.shape)
        if not onp.all(onp.isfinite(x)):
            raise FloatingPointError(f"euler_maruyama: the state became non-finite at t = {ts[k + 1]!r}")
        if keep:
            states.append(x)
    return onp.stack(states) if keep else x


def sample_sde(predictor, x, ts, rng, g=REVERSE, denoise=False, keep=False):
    """Carry x (samples of p_{ts[0]}) to ts[-1] along the same-marginal SDE (DIF.3).

    Parameters
    ----------
    predictor : Predictor (a model of any parameterisation, or the closed form)
    x : array, shape (n, d)
    ts : array, shape (m,), strictly increasing; σ_{ts[-1]} > 0 (the score must be
        finite at every grid time; see the module's note on the endpoint)
    rng : numpy.random.Generator
    g : a number >= 0, a callable g(t), or ``"reverse"`` (the reverse diffusion, DIF.4)
    denoise : bool, return x̂₁(X, ts[-1]) = E[x₁ | X] instead of X at the last time
    keep : bool, return the states at every grid time, shape (m, n, d) (with ``denoise``
        the last one is the denoised state)

    Derivation: derivations/09-diffusion.md (DIF.3) (DIF.11)
    """
    if not isinstance(predictor, Predictor):
        raise TypeError(f"predictor: expected a fm_ref.diffusion.Predictor, got {type(predictor).__name__}")
    path = predictor.path
    ts = check_grid(ts)
    if path._sigma(ts[-1]) == 0.0:
        raise ValueError(f"ts: σ_t = 0 at the last time {ts[-1]!r}, where the score is infinite; end at "
                         "t_max < 1 (optionally with denoise=True) or use CondOT(sigma_min > 0)")
    diffusion_coefficient(path, g, float(ts[0]))  # validates g before any work
    out = euler_maruyama(lambda y, t: same_marginal_drift(predictor, g, y, t),
                         lambda t: diffusion_coefficient(path, g, t), x, ts, rng, keep=keep)
    if not denoise:
        return out
    last = predictor(out[-1] if keep else out, float(ts[-1]), "x1")
    return onp.concatenate([out[:-1], last[None]]) if keep else last


def vp_sde_coefficients(path, tau):
    """Song et al.'s VP SDE in their time τ = 1 − t: (β(τ), log-mean coefficient).

    dX = −½β(τ) X dτ + √β(τ) dW, β(τ) = β_min + τ(β_max − β_min); the mean coefficient
    m(τ) = exp(−½∫₀^τ β) = exp(−½(τβ_min + ½τ²(β_max − β_min))), so x_τ = m x_data + √(1 − m²) ε.
    Returns (β(τ), log m(τ)).

    Derivation: derivations/09-diffusion.md (DIF.5)
    """
    from ..paths import VP

    if not isinstance(path, VP):
        raise TypeError(f"path: expected a VP path, got {type(path).__name__}")
    tau = onp.asarray(tau, dtype=float)
    beta = path.beta_min + tau * (path.beta_max - path.beta_min)
    return beta, -0.5 * (tau * path.beta_min + 0.5 * tau**2 * (path.beta_max - path.beta_min))
