"""Affine Gaussian probability paths  x_t = Ψ_t(x₀ | x₁) = σ_t x₀ + α_t x₁.

x₀ ~ N(0, I) is the noise at t = 0 and x₁ ~ q the data at t = 1. A path is fixed by
its two schedules α_t (signal) and σ_t (noise); the conditional probability path is
p_t(x | x₁) = N(x; α_t x₁, σ_t² I) and its conditional velocity is

    u_t(x | x₁) = (σ'_t / σ_t)(x − α_t x₁) + α'_t x₁ ,

(derivations/01-gaussian-paths.md (PATH.3)), which on the path equals α'_t x₁ + σ'_t x₀
(derivations/01-gaussian-paths.md (PATH.4)).
σ_t + α_t = 1 holds for CondOT with σ_min = 0 and for Polynomial, not in general.

Every method takes ``t`` as a float or an array of shape (n,), one time per point, and
is written in ``autograd.numpy`` so that tests can differentiate it in t and x. The
schedules α_t, σ_t, α'_t, σ'_t at a float t are bit-identical to the same t inside an
array (a float is evaluated as a one-element array: ``_array_route``).

Endpoints. α_t, σ_t are defined on [0, 1]. Where a quantity is undefined, it raises:
σ'_t = −∞ at t = 1 for VP and LinearVP; everything that divides by σ_t raises where
σ_t = 0 (t = 1 unless CondOT has σ_min > 0); a conversion that divides by α_t raises
where α_t = 0 (t = 0, except VP, whose α₀ = exp(−(β_min + β_max)/4) ≈ 6.6e-3 for the
default β's: VP never reaches pure noise).
"""
import functools

import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval, isbox

from ._validate import as_finite_float, as_points, as_time, check_same_shape, finite_result

__all__ = ["AffinePath", "CondOT", "VP", "LinearVP", "Cosine", "Polynomial", "PATHS", "KINDS"]

LOG_2PI = float(onp.log(2.0 * onp.pi))
#: The quantities a model may predict, and ``AffinePath.convert`` translates between:
#: velocity, x₁, ε (= x₀), score, and the "v" of Salimans & Ho (2022), v = α_t x̂₀ − σ_t x̂₁.
KINDS = ("velocity", "x1", "eps", "score", "v")


def _col(t):
    """A time as a column that multiplies an (n, d) array: scalar stays, (n,) -> (n, 1)."""
    return np.reshape(t, (-1, 1)) if np.ndim(t) else t


#: The schedule methods every path defines; ``AffinePath.__init_subclass__`` routes them.
_SCHEDULES = ("_alpha", "_sigma", "_d_alpha", "_d_sigma")


def _array_route(fn):
    """``fn(self, t)`` evaluated for a scalar t as a one-element array, then unpacked.

    NumPy's vectorised loops (SIMD ``power``, ``exp``, ``sin``) may round differently from
    the scalar C library by an ulp, and a 0-d array or a Python float takes the scalar
    route; so a time alone and the same time inside an array could differ in the last
    bit. Through this wrapper both go through the same contiguous-array loop: the
    schedules at a float are bit-identical to the same time in an array (the contract
    tested in tests/test_paths.py).
    """
    def wrapped(self, t):
        if onp.ndim(t):  # NumPy's ndim reads a box's ndim too, without autograd's wrapper
            return fn(self, t if isbox(t) else onp.ascontiguousarray(t))  # a strided view: same loop
        out = fn(self, np.reshape(t, (1,)))[0]
        return out if isbox(out) else float(out)

    wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__ = fn.__name__, fn.__doc__, fn
    return wrapped


def _overflow_named(name, what):
    """Decorate a method so that a result beyond float64 raises ``ValueError`` naming
    ``name`` (``_validate.finite_result``), never NaN, inf or a RuntimeWarning."""
    def decorate(method):
        @functools.wraps(method)
        def wrapped(self, *args, **kwargs):
            return finite_result(name, what, lambda: method(self, *args, **kwargs))

        return wrapped

    return decorate


def _require_nonzero(value, what, t):
    """Raise if a divisor vanishes anywhere."""
    raw = onp.asarray(getval(value))
    if onp.any(raw == 0.0):
        t_raw = onp.ravel(onp.asarray(getval(t)))
        idx = int(onp.argmax(onp.ravel(raw == 0.0))) if raw.ndim else 0
        t_bad = float(t_raw[idx if t_raw.size > 1 else 0])
        raise ValueError(f"t: {what} vanishes at t = {t_bad!r}; this quantity is undefined there")


class AffinePath:
    """Base class: subclasses define ``_alpha, _sigma, _d_alpha, _d_sigma`` (autograd.numpy).

    Derivation: derivations/01-gaussian-paths.md (PATH.1)
    """

    name = "affine"

    def __init_subclass__(cls, **kwargs):
        """Route the schedules of every subclass so that a float time and the same time in
        an array give bit-identical values (``_array_route``)."""
        super().__init_subclass__(**kwargs)
        for name in _SCHEDULES:
            fn = cls.__dict__.get(name)
            if fn is not None and not hasattr(fn, "__wrapped__"):
                setattr(cls, name, _array_route(fn))

    # --- schedules -----------------------------------------------------------------
    def alpha_t(self, t):
        """α_t, float or shape (n,).  Derivation: derivations/01-gaussian-paths.md (PATH.1)"""
        return self._alpha(as_time(t))

    def sigma_t(self, t):
        """σ_t, float or shape (n,).  Derivation: derivations/01-gaussian-paths.md (PATH.1)"""
        return self._sigma(as_time(t))

    def d_alpha_t(self, t):
        """α'_t = dα_t/dt, float or shape (n,).  Derivation: derivations/01-gaussian-paths.md (PATH.5)"""
        return self._d_alpha(as_time(t))

    def d_sigma_t(self, t):
        """σ'_t = dσ_t/dt, float or shape (n,); raises where it is infinite.

        Derivation: derivations/01-gaussian-paths.md (PATH.5)
        """
        t = as_time(t)
        self._check_d_sigma(t)
        return self._d_sigma(t)

    def _check_d_sigma(self, t):
        """Paths whose σ'_t diverges at t = 1 override this."""

    # --- the conditional path ---------------------------------------------------
    def _validate(self, x, x_1, t, x_name="x", x1_name="x_1"):
        x = as_points(x, x_name)
        x_1 = as_points(x_1, x1_name, dim=x.shape[1])
        check_same_shape(x, x_1, x_name, x1_name)
        return x, x_1, as_time(t, n=x.shape[0])

    @_overflow_named("x_1", "x_t")
    def sample(self, x_0, x_1, t):
        """x_t = σ_t x₀ + α_t x₁, shape (n, d).

        Parameters
        ----------
        x_0, x_1 : array, shape (n, d)
        t : float or array, shape (n,)

        Derivation: derivations/01-gaussian-paths.md (PATH.1)
        """
        x_0, x_1, t = self._validate(x_0, x_1, t, x_name="x_0")
        return _col(self._sigma(t)) * x_0 + _col(self._alpha(t)) * x_1

    @_overflow_named("x", "the conditional velocity")
    def conditional_velocity(self, x, x_1, t):
        """u_t(x | x₁) = (σ'_t/σ_t)(x − α_t x₁) + α'_t x₁, shape (n, d). Needs σ_t > 0.

        Derivation: derivations/01-gaussian-paths.md (PATH.3)
        """
        x, x_1, t = self._validate(x, x_1, t)
        sigma = self._sigma(t)
        _require_nonzero(sigma, "σ_t", t)
        self._check_d_sigma(t)
        alpha = _col(self._alpha(t))
        return _col(self._d_sigma(t) / sigma) * (x - alpha * x_1) + _col(self._d_alpha(t)) * x_1

    def conditional_log_prob(self, x, x_1, t):
        """log p_t(x | x₁) = log N(x; α_t x₁, σ_t² I), shape (n,). Needs σ_t > 0.

        Derivation: derivations/01-gaussian-paths.md (PATH.2)
        """
        x, x_1, t = self._validate(x, x_1, t)
        sigma = self._sigma(t)
        _require_nonzero(sigma, "σ_t", t)
        d = x.shape[1]

        def log_density():
            r2 = np.sum((x - _col(self._alpha(t)) * x_1) ** 2, axis=1)
            return -0.5 * r2 / sigma**2 - d * np.log(sigma) - 0.5 * d * LOG_2PI

        return finite_result("x", "the conditional log-density", log_density)

    # --- conversions between parameterisations ---------------------------------
    @_overflow_named("value", "the converted prediction")
    def convert(self, value, x, t, frm, to):
        """Translate a prediction at (x, t) between velocity, x₁, ε (= x₀), score and "v".

        A model's output is read as one of ``KINDS``: the velocity v, the clean-data
        estimate x̂₁ = E[x₁|x_t], the noise estimate x̂₀ = E[x₀|x_t] (ε-prediction), or
        the score ∇ log p_t, or Salimans & Ho's v = α_t x̂₀ − σ_t x̂₁ (on a path with
        α² + σ² = 1, the angular velocity dx/dφ, φ = arctan(σ_t/α_t)). Each pins the pair
        (x̂₀, x̂₁) with x = σ_t x̂₀ + α_t x̂₁, and from the pair every other kind follows
        (derivations/05-conversions.md (CONV.1) to (CONV.4);
        derivations/09-diffusion.md (DIF.1) for "v", defined for every t since α² + σ² > 0).

        Parameters
        ----------
        value, x : array, shape (n, d)
        t : float or array, shape (n,)
        frm, to : one of 'velocity', 'x1', 'eps', 'score', 'v'

        Returns
        -------
        array, shape (n, d)

        Raises ``ValueError`` where a divisor vanishes: σ_t = 0 (from x1 to anything
        but x1; to score), α_t = 0 (from eps or score to x1 or velocity) or
        D_t = α'_tσ_t − α_tσ'_t (from velocity).

        Derivation: derivations/05-conversions.md (CONV.1)
        """
        for name, kind in (("frm", frm), ("to", to)):
            if kind not in KINDS:
                raise ValueError(f"{name}: expected one of {KINDS}, got {kind!r}")
        value, x, t = self._validate(value, x, t, x_name="value", x1_name="x")
        if frm == to:
            return value
        alpha, sigma = self._alpha(t), self._sigma(t)
        if to in ("velocity",) or frm == "velocity":
            self._check_d_sigma(t)
        cache = {}

        def x0_hat():
            if "x0" not in cache:
                cache["x0"] = self._x0_from(value, x, t, frm, alpha, sigma)
            return cache["x0"]

        def x1_hat():
            if "x1" not in cache:
                cache["x1"] = self._x1_from(value, x, t, frm, alpha, sigma)
            return cache["x1"]

        if to == "x1":
            return x1_hat()
        if to == "eps":
            return x0_hat()
        if to == "score":
            _require_nonzero(sigma, "σ_t (the score is −x̂₀/σ_t)", t)
            return -x0_hat() / _col(sigma)
        if to == "v":  # (DIF.1)
            return _col(alpha) * x0_hat() - _col(sigma) * x1_hat()
        return _col(self._d_alpha(t)) * x1_hat() + _col(self._d_sigma(t)) * x0_hat()

    def _gap(self, t):
        """D_t = α'_t σ_t − α_t σ'_t (> 0 on (0, 1) for every path here)."""
        return self._d_alpha(t) * self._sigma(t) - self._alpha(t) * self._d_sigma(t)

    def _x0_from(self, value, x, t, frm, alpha, sigma):
        if frm == "eps":
            return value
        if frm == "v":  # (DIF.1): x̂₀ = (σ_t x + α_t v)/(α_t² + σ_t²)
            return (_col(sigma) * x + _col(alpha) * value) / _col(alpha**2 + sigma**2)
        if frm == "score":  # (CONV.3)
            return -_col(sigma) * value
        if frm == "x1":  # (CONV.2)
            _require_nonzero(sigma, "σ_t (x̂₀ = (x − α_t x̂₁)/σ_t)", t)
            return (x - _col(alpha) * value) / _col(sigma)
        gap = self._gap(t)  # velocity, (CONV.4)
        _require_nonzero(gap, "D_t = α'σ − ασ'", t)
        return (_col(self._d_alpha(t)) * x - _col(alpha) * value) / _col(gap)

    def _x1_from(self, value, x, t, frm, alpha, sigma):
        if frm == "x1":
            return value
        if frm == "v":  # (DIF.1): x̂₁ = (α_t x − σ_t v)/(α_t² + σ_t²)
            return (_col(alpha) * x - _col(sigma) * value) / _col(alpha**2 + sigma**2)
        if frm == "velocity":  # (CONV.4)
            gap = self._gap(t)
            _require_nonzero(gap, "D_t = α'σ − ασ'", t)
            return (_col(sigma) * value - _col(self._d_sigma(t)) * x) / _col(gap)
        _require_nonzero(alpha, "α_t (x̂₁ = (x − σ_t x̂₀)/α_t)", t)
        x0 = self._x0_from(value, x, t, frm, alpha, sigma)  # (CONV.2)
        return (x - _col(sigma) * x0) / _col(alpha)

    def __repr__(self):
        return f"{type(self).__name__}()"


class CondOT(AffinePath):
    """Conditional optimal transport: α_t = t, σ_t = 1 − (1 − σ_min) t, σ_min ∈ [0, 1).

    Derivation: derivations/01-gaussian-paths.md (PATH.6)
    """

    name = "condot"

    def __init__(self, sigma_min=0.0):
        self.sigma_min = as_finite_float(sigma_min, "sigma_min", lo=0.0, hi=1.0, hi_open=True)

    def _alpha(self, t):
        return t

    def _sigma(self, t):
        # (1 − t) + σ_min t, not 1 − (1 − σ_min) t: σ₁ = σ_min exactly, and no cancellation
        # near t = 1 (the latter has relative error ~ε/σ_min there)
        return (1.0 - t) + self.sigma_min * t

    def _d_alpha(self, t):
        return 1.0 + 0.0 * t

    def _d_sigma(self, t):
        return -(1.0 - self.sigma_min) + 0.0 * t

    def __repr__(self):
        return f"CondOT(sigma_min={self.sigma_min!r})"


class VP(AffinePath):
    """Variance preserving (Song et al. 2021) in the t = 0 noise convention.

    T_t = ½(1 − t)²(β_max − β_min) + (1 − t) β_min,  α_t = e^{−T_t/2},
    σ_t = √(1 − e^{−T_t}). α₀ = e^{−(β_min+β_max)/4} ≠ 0; σ'_t → −∞ as t → 1.

    Derivation: derivations/01-gaussian-paths.md (PATH.7)
    """

    name = "vp"

    def __init__(self, beta_min=0.1, beta_max=20.0):
        self.beta_min = as_finite_float(beta_min, "beta_min", lo=0.0, lo_open=True)
        self.beta_max = as_finite_float(beta_max, "beta_max", lo=self.beta_min)  # = beta_min: a constant rate

    def _T(self, t):
        s = 1.0 - t
        return 0.5 * s**2 * (self.beta_max - self.beta_min) + s * self.beta_min

    def _d_T(self, t):
        return -(1.0 - t) * (self.beta_max - self.beta_min) - self.beta_min

    def _alpha(self, t):
        return np.exp(-0.5 * self._T(t))

    def _sigma(self, t):
        return np.sqrt(-np.expm1(-self._T(t)))

    def _d_alpha(self, t):
        return -0.5 * self._d_T(t) * self._alpha(t)

    def _d_sigma(self, t):
        return 0.5 * np.exp(-self._T(t)) * self._d_T(t) / self._sigma(t)

    def _check_d_sigma(self, t):
        if onp.any(onp.asarray(getval(t)) == 1.0):
            raise ValueError("t: σ'_t = −∞ at t = 1 for the VP path; use t < 1")

    def __repr__(self):
        return f"VP(beta_min={self.beta_min!r}, beta_max={self.beta_max!r})"


class LinearVP(AffinePath):
    """α_t = t, σ_t = √(1 − t²) (α² + σ² = 1); σ'_t = −t/σ_t → −∞ as t → 1.

    Derivation: derivations/01-gaussian-paths.md (PATH.8)
    """

    name = "linear_vp"

    def _alpha(self, t):
        return t

    def _sigma(self, t):
        return np.sqrt((1.0 - t) * (1.0 + t))

    def _d_alpha(self, t):
        return 1.0 + 0.0 * t

    def _d_sigma(self, t):
        return -t / self._sigma(t)

    def _check_d_sigma(self, t):
        if onp.any(onp.asarray(getval(t)) == 1.0):
            raise ValueError("t: σ'_t = −∞ at t = 1 for the LinearVP path; use t < 1")


class Cosine(AffinePath):
    """α_t = sin(πt/2), σ_t = sin(π(1 − t)/2) = cos(πt/2), exact zeros at the ends.

    Derivation: derivations/01-gaussian-paths.md (PATH.9)
    """

    name = "cosine"

    def _alpha(self, t):
        return np.sin(0.5 * np.pi * t)

    def _sigma(self, t):
        return np.sin(0.5 * np.pi * (1.0 - t))

    def _d_alpha(self, t):
        return 0.5 * np.pi * np.sin(0.5 * np.pi * (1.0 - t))

    def _d_sigma(self, t):
        return -0.5 * np.pi * np.sin(0.5 * np.pi * t)


class Polynomial(AffinePath):
    """α_t = tⁿ, σ_t = 1 − tⁿ, for a real exponent n ≥ 1.

    Derivation: derivations/01-gaussian-paths.md (PATH.10)
    """

    name = "polynomial"

    def __init__(self, n=2.0):
        self.n = as_finite_float(n, "n", lo=1.0)

    def _alpha(self, t):
        return t**self.n

    def _sigma(self, t):
        # 1 − tⁿ cancels near t = 1 (relative error ~ε/(1 − t)); there −expm1(n log1p(t − 1))
        # is accurate to a few ulps (t − 1 is exact for t ≥ ½). Both branches are finite
        # everywhere (log1p's argument is clipped), so np.where is safe under autograd.
        near_one = -np.expm1(self.n * np.log1p(-np.minimum(1.0 - t, 0.5)))
        return np.where(t > 0.5, near_one, 1.0 - t**self.n)

    def _d_alpha(self, t):
        return self.n * t ** (self.n - 1.0)

    def _d_sigma(self, t):
        return -self.n * t ** (self.n - 1.0)

    def __repr__(self):
        return f"Polynomial(n={self.n!r})"


#: Constructors by name, for the CLI and the reference vectors.
PATHS = {cls.name: cls for cls in (CondOT, VP, LinearVP, Cosine, Polynomial)}
