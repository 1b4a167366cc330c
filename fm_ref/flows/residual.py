"""Planar and radial flows (Rezende & Mohamed 2015), invertible for any raw parameters.

Planar:  x = z + û tanh(wᵀz + b), with û reparameterised so that wᵀû > −1.
Radial:  x = z + β (z − z₀)/(α + ‖z − z₀‖), with α > 0 and β > −α.

Both inverses reduce to one scalar equation per point. The planar one,
a + m tanh(a) = wᵀx + b for a = wᵀz + b, is solved by a vectorised safeguarded
Newton iteration inside the bracket [y − |m|, y + |m|] (ROOT_TOL below); its gradient
comes from the implicit-function theorem, so log_prob (which uses the inverse) can be
differentiated by autograd. The radial one is a quadratic in the radius, solved in
closed form with the cancellation-free root.

Derivation: derivations/07-normalizing-flows.md (NF.18)
"""
import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from .._validate import as_generator, as_positive_int
from .layers import Layer, sech2, tanh

__all__ = ["Planar", "Radial", "planar_root", "ROOT_TOL", "MIN_WU"]

#: A point of the planar root solve is done when F(a) = 0 exactly, when the last Newton or
#: bisection step moved it by ≤ ROOT_TOL·|a_new| (relative to the new iterate, no absolute
#: floor), or when its bracket has closed. A Newton step that small leaves an error of
#: order its square, so the root is accurate to a few ulps unless f'(a) is tiny (an
#: ill-conditioned point). derivations/07-normalizing-flows.md, numerics note N2.
ROOT_TOL = 1e-13
#: Bisection halves the bracket 2|m| each step; 2000 steps cover any float64 width.
ROOT_MAX_ITER = 2000
#: log(e − 1): softplus of this is exactly 1 in exact arithmetic, so m = 0.
LOG_E_MINUS_1 = float(onp.log(onp.expm1(1.0)))
#: wᵀu enters softplus floored at −700, so softplus(wᵀu) ≥ e^{−700} ≈ 1e-304 stays a
#: positive float64 and log det J stays finite; this changes the map only where
#: wᵀu < −700, where det J on the hyperplane wᵀz + b = 0 is below 1e-304 anyway.
MIN_WU = -700.0


def softplus(a):
    """log(1 + e^a), overflow-free."""
    return np.logaddexp(0.0, a)


@primitive
def row_norm(v):
    """‖v_i‖ for each row of v, shape (n,), with the derivative v_i/‖v_i‖ taken as 0 at
    v_i = 0 (sqrt's derivative there is infinite and would give 0·∞ = NaN; the radial map
    itself is differentiable at its centre, and this zero is the limit its Jacobian needs)."""
    return onp.sqrt(onp.sum(v**2, axis=1))


defvjp(row_norm, lambda ans, v: lambda g: (g / np.where(ans > 0, ans, 1.0))[:, None] * v)


def _fprime(a, sp):
    """f'(a) = 1 + m sech²(a) with m = sp − 1, written tanh²(a) + sech²(a)·sp (> 0, no cancellation)."""
    return tanh(a) ** 2 + sech2(a) * sp


def _solve_planar(sp, y):
    """The root of F(a) = a + (sp − 1) tanh(a) − y for each y (plain NumPy), by Newton
    steps inside the shrinking bracket [y − |m|, y + |m|], bisection when a step leaves it.

    Derivation: derivations/07-normalizing-flows.md (NF.18)
    """
    m = sp - 1.0
    lo, hi = y - abs(m), y + abs(m)
    a = onp.clip(y - m * onp.tanh(y), lo, hi)
    done = onp.zeros(y.shape, dtype=bool)
    with onp.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(ROOT_MAX_ITER):
            f = a + m * onp.tanh(a) - y
            lo = onp.where(f < 0, a, lo)
            hi = onp.where(f > 0, a, hi)
            newton = a - f / _fprime(a, sp)
            inside = onp.isfinite(newton) & (newton > lo) & (newton < hi)
            a_new = onp.where(inside, newton, 0.5 * (lo + hi))
            a_new = onp.where(done | (f == 0), a, a_new)
            # relative: the root is ≈ y/(1 + m) for large m, far below any absolute tolerance
            done = done | (f == 0) | (onp.abs(a_new - a) <= ROOT_TOL * onp.abs(a_new)) | (hi - lo <= 0)
            a = a_new
            if onp.all(done):
                return a
    raise RuntimeError(f"planar inverse: the root solve did not converge in {ROOT_MAX_ITER} steps")


@primitive
def planar_root(sp, y):
    """a(sp, y) solving a + (sp − 1) tanh(a) = y, shape (n,) for y of shape (n,), sp > 0.

    Gradients by the implicit-function theorem: ∂a/∂y = 1/f'(a), ∂a/∂sp = −tanh(a)/f'(a).

    Derivation: derivations/07-normalizing-flows.md (NF.19)
    """
    return _solve_planar(float(sp), onp.asarray(y, dtype=onp.float64))


defvjp(
    planar_root,
    lambda ans, sp, y: lambda g: -np.sum(g * tanh(ans) / _fprime(ans, sp)),
    lambda ans, sp, y: lambda g: g / _fprime(ans, sp),
)


class Planar(Layer):
    """Planar flow x = z + û tanh(wᵀz + b) (Rezende & Mohamed 2015).

    Parameters (pytree): ``(w, u, b)``, shapes (d,), (d,), (); w ≠ 0. The raw u is
    mapped to û = u + (m(wᵀu) − wᵀu) w/‖w‖², m(a) = −1 + softplus(a), so that
    wᵀû = m(wᵀu) > −1 and the map is invertible for every raw (w, u, b).

    log|det ∂x/∂z| = log(1 + sech²(a) wᵀû) = log(tanh²(a) + sech²(a) softplus(wᵀu)),
    a = wᵀz + b, a convex combination of 1 and softplus(wᵀu) > 0
    (derivations/07-normalizing-flows.md (NF.16)); wᵀu is floored at MIN_WU = −700 inside
    softplus so that this stays a positive float64.

    Precision near the edge: û is computed with cancellation when |wᵀu| ≫ 1, so the float
    value of 1 + wᵀû carries an absolute error ~ε(1 + ‖u‖‖w‖ + |wᵀu|); where the exact
    det J is below that (only on the hyperplane wᵀz + b ≈ 0 when wᵀu ≲ −30), the float map
    cannot resolve it.

    Inverse: a solves a + m tanh(a) = wᵀx + b (``planar_root``, to ROOT_TOL), and
    z = x − û tanh(a). A rounding of wᵀx + b moves the root by itself times
    κ = 1/F'(a) ≤ max(1, 1/softplus(wᵀu)), so round trips are accurate to ~ε·κ: to the
    rounding of x, ~ε(1 + ‖x‖), for wᵀu ≥ 0.55, looser as wᵀu → −∞ (the inverse is
    ill-conditioned there). The root solve stops on a relative step, so a huge wᵀu
    (a root ≈ y/wᵀu) is still solved to full relative accuracy.

    ``identity_params()``: w = e₁, u = log(e − 1) e₁, b = 0, so m = 0, û = 0 (to
    rounding, |û| ≲ 1e-16). ``init(rng)`` is the same with w ~ N(0, I/d) random.

    Derivation: derivations/07-normalizing-flows.md (NF.15)
    """

    def __init__(self, dim):
        self.dim = as_positive_int(dim, "dim")

    def identity_params(self):
        w = onp.eye(self.dim)[0]
        return (w, LOG_E_MINUS_1 * w, onp.zeros(()))

    def init(self, rng):
        w = as_generator(rng).standard_normal(self.dim) / onp.sqrt(self.dim)
        return (w, LOG_E_MINUS_1 * w / (w @ w), onp.zeros(()))

    def check_params(self, params):
        super().check_params(params)
        w = onp.asarray(getval(params[0]), dtype=onp.float64)
        if not onp.any(w):
            raise ValueError("params: the planar w must be non-zero (û divides by ‖w‖²)")
        if w @ w < onp.finfo(onp.float64).tiny:  # subnormal or underflowed: û loses its digits
            raise ValueError(f"params: the planar ‖w‖² = {w @ w:.3g} is below the smallest normal float64 "
                             f"(û divides by it); rescale w")

    def u_hat(self, params):
        """û = u + (m(wᵀu) − wᵀu) w/‖w‖², shape (d,), and softplus(wᵀu) = 1 + wᵀû.

        Derivation: derivations/07-normalizing-flows.md (NF.17)
        """
        w, u, _ = params
        c = np.dot(w, u)
        sp = softplus(np.maximum(c, MIN_WU))
        return u + (sp - 1.0 - c) * w / np.dot(w, w), sp

    def _forward(self, params, z):
        w, _, b = params
        u_hat, sp = self.u_hat(params)
        a = z @ w + b
        x = z + tanh(a)[:, None] * u_hat[None, :]
        return x, np.log(_fprime(a, sp))

    def _inverse(self, params, x):
        w, _, b = params
        u_hat, sp = self.u_hat(params)
        a = planar_root(sp, x @ w + b)
        z = x - tanh(a)[:, None] * u_hat[None, :]
        return z, -np.log(_fprime(a, sp))


class Radial(Layer):
    """Radial flow x = z + β h(r)(z − z₀), h = 1/(α + r), r = ‖z − z₀‖ (Rezende & Mohamed 2015).

    Parameters (pytree): ``(z0, a_raw, b_raw)``, shapes (d,), (), (); α = softplus(a_raw)
    > 0 and β = −α + softplus(b_raw) > −α, the invertibility condition. Zeros give
    β = 0: the identity, exactly.

    log|det ∂x/∂z| = (d − 1) log[(r + sp)/(α + r)] + log[(r² + 2αr + α sp)/(α + r)²],
    sp = softplus(b_raw) = α + β, both brackets positive.

    Inverse: ρ = ‖x − z₀‖ = r (r + sp)/(α + r) is the quadratic r² + (sp − ρ) r − αρ = 0,
    whose non-negative root is taken in cancellation-free form; then
    z = z₀ + (x − z₀)(α + r)/(r + sp) (derivations/07-normalizing-flows.md (NF.23));
    the reparameterisation of α, β is derivations/07-normalizing-flows.md (NF.22).

    Derivation: derivations/07-normalizing-flows.md (NF.20)
    """

    def __init__(self, dim):
        self.dim = as_positive_int(dim, "dim")

    def identity_params(self):
        return (onp.zeros(self.dim), onp.zeros(()), onp.zeros(()))

    def init(self, rng):
        """z₀ ~ N(0, I), α = log 2, β = 0: the identity with a random centre."""
        return (as_generator(rng).standard_normal(self.dim), onp.zeros(()), onp.zeros(()))

    def _log_det(self, r, alpha, sp):
        """log|det ∂x/∂z| at radius r, shape (n,).  Derivation: derivations/07-normalizing-flows.md (NF.21)"""
        f1 = (r + sp) / (alpha + r)
        f2 = (r * (r + 2.0 * alpha) + alpha * sp) / (alpha + r) ** 2
        return (self.dim - 1) * np.log(f1) + np.log(f2)

    def _forward(self, params, z):
        z0, a_raw, b_raw = params
        alpha, sp = softplus(a_raw), softplus(b_raw)
        diff = z - z0
        r = row_norm(diff)
        x = z + ((sp - alpha) / (alpha + r))[:, None] * diff
        return x, self._log_det(r, alpha, sp)

    def _inverse(self, params, x):
        z0, a_raw, b_raw = params
        alpha, sp = softplus(a_raw), softplus(b_raw)
        diff = x - z0
        rho = row_norm(diff)
        B = sp - rho
        # q = −(B + sign(B)√D)/2 never vanishes (D = B² + 4αρ > 0 as sp > 0); the roots are q and −αρ/q.
        root_d = np.sqrt(B**2 + 4.0 * alpha * rho)
        q = -0.5 * (B + np.where(B >= 0, root_d, -root_d))
        r = np.where(B >= 0, -alpha * rho / q, q)
        z = z0 + ((alpha + r) / (r + sp))[:, None] * diff
        return z, -self._log_det(r, alpha, sp)
