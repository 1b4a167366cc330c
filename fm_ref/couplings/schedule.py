"""The change of schedule between two affine paths (Lipman et al. 2024, "Flow Matching
Guide and Code", the scheduler change).

Two affine paths x_t = σ_t x₀ + α_t x₁ (the source schedule) and x̄_r = σ̄_r x₀ + ᾱ_r x₁
(the target schedule) with the same x₀ and x₁ are related by a time change and a scale:
x̄_r = s_r x_{t_r} with

    ρ(t_r) = ρ̄(r)  (ρ = α/σ, the signal-to-noise ratio),     s_r = σ̄_r / σ_{t_r},

so a velocity u_t of the source path (a closed-form marginal velocity or a trained model)
gives the target path's (derivations/10-couplings.md (CPL.15) (CPL.16)):

    ū_r(x) = (ṡ_r / s_r) x + s_r ṫ_r u_{t_r}(x / s_r),
    ṫ_r = ρ̄'(r) / ρ'(t_r),   ṡ_r = (σ̄'_r − s_r σ'_{t_r} ṫ_r) / σ_{t_r},   ρ' = (α'σ − ασ')/σ².

t_r is the root of α(t) − ρ̄(r) σ(t), which increases strictly in t (α' > 0 > σ'), found
by ``scipy.optimize.brentq`` to a few ulps. The map is undefined (and raises) where ρ̄(r)
lies outside the source path's range [ρ(0), ρ(1)] (e.g. VP's ρ(0) > 0 cannot reach
CondOT's ρ̄(0) = 0), where σ̄_r = 0 (the scale vanishes) or where σ'_t is infinite.
"""
import numpy as onp
from scipy.optimize import brentq

from .._validate import as_points, as_time
from ..paths import AffinePath

__all__ = ["schedule_map", "change_schedule"]

# brentq's tolerances: xtol 1e-300 makes rtol (4 ulps, its smallest) the binding one, so
# t_r is found to a few ulps and the converted velocity stays within ~1e-14 relative.
_XTOL, _RTOL = 1e-300, 4.0 * onp.finfo(float).eps


def _check_paths(path_from, path_to):
    for name, p in (("path_from", path_from), ("path_to", path_to)):
        if not isinstance(p, AffinePath):
            raise TypeError(f"{name}: expected an AffinePath such as CondOT(), got {type(p).__name__}")


def _time_at(path, rho_bar, r):
    """t with α(t) = ρ̄ σ(t) on [0, 1]; raises if ρ̄ lies outside [ρ(0), ρ(1)]."""
    f = lambda t: float(path._alpha(t) - rho_bar * path._sigma(t))  # noqa: E731
    lo, hi = f(0.0), f(1.0)
    if lo > 0.0 or hi < 0.0:
        raise ValueError(f"r: the target path's signal-to-noise ratio {rho_bar!r} at r = {float(r)!r} lies outside the "
                         f"source path {path!r}'s range [{float(path._alpha(0.0) / path._sigma(0.0))!r}, "
                         f"{'inf' if path._sigma(1.0) == 0.0 else float(path._alpha(1.0) / path._sigma(1.0))}]; "
                         "the schedule change is undefined there")
    if lo == 0.0:
        return 0.0
    if hi == 0.0:
        return 1.0
    return brentq(f, 0.0, 1.0, xtol=_XTOL, rtol=_RTOL, maxiter=500)


def schedule_map(path_from, path_to, r):
    """(t_r, s_r, ṫ_r, ṡ_r): the time and scale with x̄_r = s_r x_{t_r}, and their r-derivatives.

    Parameters
    ----------
    path_from, path_to : AffinePath, the source schedule (α, σ) and the target (ᾱ, σ̄)
    r : float or array, shape (n,), times of the target path with σ̄_r > 0

    Returns
    -------
    t_r, s_r, dt_r, ds_r : arrays of shape (n,) (or floats for a float r)

    Derivation: derivations/10-couplings.md (CPL.15)
    """
    _check_paths(path_from, path_to)
    r_in = as_time(r, name="r")
    rs = onp.atleast_1d(r_in).astype(float)
    out = onp.empty((4, rs.shape[0]))
    for k, r_k in enumerate(rs):
        sb = float(path_to._sigma(r_k))
        if sb <= 0.0:
            raise ValueError(f"r: σ̄_r = 0 at r = {r_k!r} for {path_to!r}: the scale s_r = σ̄_r/σ_t vanishes "
                             "and x/s_r is undefined; use r with σ̄_r > 0")
        path_to._check_d_sigma(r_k)
        ab = float(path_to._alpha(r_k))
        t = _time_at(path_from, ab / sb, r_k)
        s = float(path_from._sigma(t))
        if s <= 0.0:
            raise ValueError(f"r: the source path {path_from!r} has σ_t = 0 at t_r = {t!r}; undefined there")
        path_from._check_d_sigma(t)
        d_rho_bar = float(path_to._d_alpha(r_k) * sb - ab * path_to._d_sigma(r_k)) / sb**2
        d_rho = float(path_from._d_alpha(t) * s - path_from._alpha(t) * path_from._d_sigma(t)) / s**2
        scale = sb / s
        dt = d_rho_bar / d_rho
        out[:, k] = t, scale, dt, (float(path_to._d_sigma(r_k)) - scale * float(path_from._d_sigma(t)) * dt) / s
    return tuple(out) if onp.ndim(r_in) else tuple(float(v[0]) for v in out)


def change_schedule(velocity, path_from, path_to, x, r):
    """ū_r(x) = (ṡ_r/s_r) x + s_r ṫ_r u_{t_r}(x / s_r): a source-path velocity on the target path.

    Parameters
    ----------
    velocity : callable(x, t) -> (n, d), the source path's velocity (t an (n,) array)
    path_from, path_to : AffinePath
    x : array, shape (n, d)
    r : float or array, shape (n,)

    Returns
    -------
    array, shape (n, d)

    Derivation: derivations/10-couplings.md (CPL.16)
    """
    if not callable(velocity):
        raise TypeError(f"velocity: expected a callable velocity(x, t), got {type(velocity).__name__}")
    x = as_points(x, "x")
    r = as_time(r, n=x.shape[0], name="r")
    t, s, dt, ds = schedule_map(path_from, path_to, onp.broadcast_to(r, (x.shape[0],)))
    u = velocity(x / s[:, None], t)
    if onp.shape(u) != x.shape:
        raise ValueError(f"velocity: expected velocity(x, t) of shape {x.shape}, got {onp.shape(u)}")
    return (ds / s)[:, None] * x + (s * dt)[:, None] * u
