"""Evaluating a learned (or closed-form) velocity field: Euler sampling with k steps and
the straightness of its trajectories.

Straightness. Along a trajectory x(t) of dx/dt = v(x, t) on [0, 1], Cauchy–Schwarz gives

    ∫₀¹ ‖v(x(t), t)‖² dt ≥ ‖x(1) − x(0)‖²,

with equality iff the trajectory is a straight line run at constant speed. ``path_energy``
returns both sides per trajectory; the gap E∫‖v‖² − E‖x(1) − x(0)‖² ≥ 0 (``straightness``)
is 0 for the OT displacement interpolation (derivations/10-couplings.md (CPL.14)), where
few Euler steps suffice, and positive for I-CFM's curved field.
"""
import numpy as onp
from scipy.integrate import solve_ivp

from .._validate import as_finite_float, as_points, as_positive_int

__all__ = ["euler_sample", "path_energy", "straightness"]


def _check_velocity(velocity):
    if not callable(velocity):
        raise TypeError(f"velocity: expected a callable velocity(x, t) -> (n, d), got {type(velocity).__name__}")


def _field(velocity, n, d):
    def v(x, t):
        out = onp.asarray(velocity(x, onp.full(n, t)), dtype=float)
        if out.shape != (n, d):
            raise ValueError(f"velocity: expected velocity(x, t) of shape {(n, d)}, got {out.shape}")
        if not onp.all(onp.isfinite(out)):
            raise FloatingPointError(f"velocity: non-finite value at t = {t!r}")
        return out
    return v


def euler_sample(velocity, x_0, steps):
    """x at t = 1 after ``steps`` explicit Euler steps of dx/dt = v(x, t) from x₀ at t = 0.

    x_{k+1} = x_k + h v(x_k, k h), h = 1/steps; ``steps`` velocity evaluations (NFE).

    Parameters
    ----------
    velocity : callable(x, t) -> (n, d), t an array of shape (n,)
    x_0 : array, shape (n, d)
    steps : int ≥ 1

    Returns
    -------
    array, shape (n, d)

    Derivation: derivations/10-couplings.md (CPL.17)
    """
    _check_velocity(velocity)
    x = as_points(x_0, "x_0").copy()
    steps = as_positive_int(steps, "steps")
    v = _field(velocity, *x.shape)
    h = 1.0 / steps
    for k in range(steps):
        x = x + h * v(x, k * h)
    return x


def path_energy(velocity, x_0, rtol=1e-9, atol=1e-9):
    """Per trajectory: ∫₀¹ ‖v‖² dt and ‖x(1) − x(0)‖², by one adaptive solve (DOP853) of
    the augmented system dx/dt = v(x, t), de/dt = ‖v(x, t)‖².

    Parameters
    ----------
    velocity : callable(x, t) -> (n, d)
    x_0 : array, shape (n, d), starting points at t = 0
    rtol, atol : float, the solver tolerances

    Returns
    -------
    energy : shape (n,);  displacement : shape (n,);  x_1 : shape (n, d)

    Raises ``RuntimeError`` if the solver fails.

    Derivation: derivations/10-couplings.md (CPL.17)
    """
    _check_velocity(velocity)
    x_0 = as_points(x_0, "x_0")
    rtol = as_finite_float(rtol, "rtol", lo=1e-14)
    atol = as_finite_float(atol, "atol", lo=0.0, lo_open=True)
    n, d = x_0.shape
    v = _field(velocity, n, d)

    def rhs(t, y):
        u = v(y[:n * d].reshape(n, d), t)
        return onp.concatenate([u.ravel(), onp.sum(u**2, axis=1)])

    sol = solve_ivp(rhs, (0.0, 1.0), onp.concatenate([x_0.ravel(), onp.zeros(n)]), method="DOP853",
                    rtol=rtol, atol=atol)
    if sol.status != 0:
        raise RuntimeError(f"path_energy: solve_ivp (DOP853) failed: {sol.message}")
    x_1 = sol.y[:n * d, -1].reshape(n, d)
    return sol.y[n * d:, -1], onp.sum((x_1 - x_0) ** 2, axis=1), x_1


def straightness(velocity, x_0, rtol=1e-9, atol=1e-9):
    """E∫₀¹‖v‖² dt − E‖x(1) − x(0)‖² over the trajectories from x₀ (≥ 0; 0 iff straight), and
    the two means: returns (gap, mean energy, mean squared displacement).

    Derivation: derivations/10-couplings.md (CPL.17)
    """
    energy, disp, _ = path_energy(velocity, x_0, rtol, atol)
    return float(onp.mean(energy) - onp.mean(disp)), float(onp.mean(energy)), float(onp.mean(disp))
