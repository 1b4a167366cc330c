"""Paths conditioned on a pair z = (x₀, x₁): x_t ~ N(μ_t(z), σ_t² I), μ_t = (1 − t)x₀ + t x₁.

Two noise schedules σ_t (Tong et al. 2023):

- ``ConstantSigma(σ)``: σ_t = σ (I-CFM and OT-CFM); σ = 0 is allowed wherever nothing
  divides by it (sampling, the regression target, the velocity);
- ``BrownianBridge(σ)``: σ_t = σ√(t(1 − t)) (SB-CFM), whose σ'_t/σ_t = (1 − 2t)/(2t(1 − t))
  is infinite at t = 0 and t = 1, where the velocity therefore raises.

The conditional velocity that generates N(μ_t, σ_t² I) is

    u_t(x | z) = (x₁ − x₀) + (σ'_t/σ_t)(x − μ_t),

which on the path x_t = μ_t + σ_t ε equals (x₁ − x₀) + σ'_t ε (derivations/10-couplings.md
(CPL.1) (CPL.2)). Every method is written in ``autograd.numpy`` (differentiable in x and t).
"""
import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from .._validate import as_finite_float, as_generator, as_points, as_time, check_same_shape

__all__ = ["PairPath", "ConstantSigma", "BrownianBridge", "PAIR_PATHS"]


def _col(t):
    return np.reshape(t, (-1, 1)) if np.ndim(t) else t


class PairPath:
    """Base class of the pair-conditioned Gaussian paths; subclasses define σ_t, σ'_t,
    ``_ratio(t)`` = σ'_t/σ_t written without dividing by σ, and ``_sigma_d_sigma(t)`` = σ_tσ'_t.

    Derivation: derivations/10-couplings.md (CPL.1)
    """

    name = "pair"

    def __init__(self, sigma=0.0):
        self.sigma = as_finite_float(sigma, "sigma", lo=0.0)

    # --- schedules (subclasses) --------------------------------------------------
    def sigma_t(self, t):
        """σ_t, float or shape (n,).  Derivation: derivations/10-couplings.md (CPL.1)"""
        return self._sigma(as_time(t))

    def d_sigma_t(self, t):
        """σ'_t, float or shape (n,); raises where it is infinite.

        Derivation: derivations/10-couplings.md (CPL.2)
        """
        t = as_time(t)
        self._check_interior(t)
        return self._d_sigma(t)

    def _check_interior(self, t):
        """Paths whose σ'_t diverges at an endpoint override this."""

    # --- the conditional path --------------------------------------------------------
    def _validate(self, x_0, x_1, t, more=()):
        x_0 = as_points(x_0, "x_0")
        x_1 = as_points(x_1, "x_1", dim=x_0.shape[1])
        check_same_shape(x_0, x_1, "x_0", "x_1")
        for name, arr in more:
            check_same_shape(x_0, as_points(arr, name, dim=x_0.shape[1]), "x_0", name)
        return x_0, x_1, as_time(t, n=x_0.shape[0])

    def mean(self, x_0, x_1, t):
        """μ_t = (1 − t) x₀ + t x₁, shape (n, d).  Derivation: derivations/10-couplings.md (CPL.1)"""
        x_0, x_1, t = self._validate(x_0, x_1, t)
        return _col(1.0 - t) * x_0 + _col(t) * x_1

    def sample(self, x_0, x_1, t, eps):
        """x_t = μ_t + σ_t ε, shape (n, d), for given noise ε of shape (n, d).

        Derivation: derivations/10-couplings.md (CPL.1)
        """
        x_0, x_1, t = self._validate(x_0, x_1, t, (("eps", eps),))
        return _col(1.0 - t) * x_0 + _col(t) * x_1 + _col(self._sigma(t)) * eps

    def conditional_velocity(self, x, x_0, x_1, t):
        """u_t(x | x₀, x₁) = (x₁ − x₀) + (σ'_t/σ_t)(x − μ_t), shape (n, d).

        σ'_t/σ_t is written without a division by σ, so σ = 0 is allowed; the bridge's
        ratio (1 − 2t)/(2t(1 − t)) raises at t = 0 and t = 1.

        Derivation: derivations/10-couplings.md (CPL.2)
        """
        x_0, x_1, t = self._validate(x_0, x_1, t, (("x", x),))
        self._check_interior(t)
        mu = _col(1.0 - t) * x_0 + _col(t) * x_1
        return (x_1 - x_0) + _col(self._ratio(t)) * (x - mu)

    def regression_target(self, t, x_0, x_1, rng):
        """(x_t, u_t): x_t = μ_t + σ_t ε with ε ~ N(0, I) from ``rng``, and the CFM target
        u_t(x_t | z) = (x₁ − x₀) + σ'_t ε, both shape (n, d). No ε is drawn when σ = 0.

        Derivation: derivations/10-couplings.md (CPL.3)
        """
        x_0, x_1, t = self._validate(x_0, x_1, t)
        rng = as_generator(rng)
        self._check_interior(t)
        return self._target(t, x_0, x_1, rng)

    def _target(self, t, x_0, x_1, rng):
        """``regression_target`` on validated inputs (the training loop's fast path)."""
        mu = _col(1.0 - t) * x_0 + _col(t) * x_1
        if self.sigma == 0.0:
            return mu, x_1 - x_0
        eps = rng.standard_normal(x_0.shape)
        return mu + _col(self._sigma(t)) * eps, (x_1 - x_0) + _col(self._d_sigma(t)) * eps

    def check_time_range(self, t_min, t_max):
        """Raise if σ'_t is infinite somewhere in [t_min, t_max] (the bridge at 0 and 1)."""
        try:
            self._check_interior(onp.array([t_min, t_max]))
        except ValueError as exc:
            raise ValueError(f"t_min, t_max: {exc}; train on [t_min, t_max] with 0 < t_min, t_max < 1") from None

    def __repr__(self):
        return f"{type(self).__name__}(sigma={self.sigma!r})"


class ConstantSigma(PairPath):
    """σ_t = σ ≥ 0 (I-CFM, OT-CFM): σ'_t = 0, so u_t(x | z) = x₁ − x₀ everywhere.

    Derivation: derivations/10-couplings.md (CPL.1)
    """

    name = "constant"

    def _sigma(self, t):
        return self.sigma + 0.0 * t

    def _d_sigma(self, t):
        return 0.0 * t

    def _ratio(self, t):
        return 0.0 * t

    def _sigma_d_sigma(self, t):
        return 0.0 * t


class BrownianBridge(PairPath):
    """σ_t = σ√(t(1 − t)), the bridge of σ W between x₀ and x₁ (SB-CFM).

    σ'_t = σ(1 − 2t)/(2√(t(1 − t))), σ'_t/σ_t = (1 − 2t)/(2t(1 − t)), both infinite
    at t ∈ {0, 1}, where the velocity raises. The entropic plan that pairs with it has
    ε = 2σ² (``fm_ref.couplings.plans.bridge_epsilon``).

    Derivation: derivations/10-couplings.md (CPL.2)
    """

    name = "bridge"

    def _sigma(self, t):
        return self.sigma * np.sqrt(t * (1.0 - t))

    def _d_sigma(self, t):
        return self.sigma * (1.0 - 2.0 * t) / (2.0 * np.sqrt(t * (1.0 - t)))

    def _ratio(self, t):
        return (1.0 - 2.0 * t) / (2.0 * t * (1.0 - t))

    def _sigma_d_sigma(self, t):
        # σ_t σ'_t = σ²(1 − 2t)/2: finite at the endpoints, where σ'_t alone is not
        return 0.5 * self.sigma**2 * (1.0 - 2.0 * t)

    def _check_interior(self, t):
        raw = onp.asarray(getval(t))
        if onp.any((raw == 0.0) | (raw == 1.0)):
            raise ValueError("t: the Brownian bridge's σ'_t/σ_t = (1 − 2t)/(2t(1 − t)) is infinite at "
                             "t = 0 and t = 1; use 0 < t < 1")


#: Constructors by name, for the vectors and the demo.
PAIR_PATHS = {cls.name: cls for cls in (ConstantSigma, BrownianBridge)}
