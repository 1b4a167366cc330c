"""Base and target distributions: the standard normal, Gaussian mixtures, data sets.

A data set is a mixture of point masses (``Empirical``): a Gaussian mixture whose
covariances are zero. Every target of fm_ref is therefore a ``GaussianMixture``, and
the closed-form marginals of ``fm_ref.marginal`` apply to all of them.

Derivation: derivations/03-mixture-marginals.md (MIX.1)
"""
import autograd.numpy as np
import numpy as onp
from autograd.scipy.special import logsumexp
from autograd.tracer import getval

from ._validate import as_float_array, as_generator, as_points, as_positive_int, finite_result
from .toy import TOY_DATASETS, make_toy

__all__ = ["StandardNormal", "GaussianMixture", "Empirical", "make_toy", "TOY_DATASETS"]

LOG_2PI = float(onp.log(2.0 * onp.pi))
# Relative asymmetry (and negative eigenvalue) tolerated in a full covariance, relative to
# that component's own max|Σ_k|: far below any meaningful asymmetry, far above the
# rounding of a matrix built as A Aᵀ.
_SYM_RTOL = 1e-10
# An eigenvalue of a full Σ_k below EIG_ULPS · d · ε · max|Σ_k| is within eigh's rounding
# error of 0 (its absolute error is a few ε‖Σ_k‖), so it is set to 0.
_EIG_ULPS = 16.0


def _check_covs(covs, k, d):
    """Bring covariances to shape (k, d, d), check them symmetric positive semi-definite,
    and return (full, eigenvalues (k, d), eigenvectors (k, d, d)).

    Isotropic and diagonal input, and full matrices that are exactly diagonal, keep their
    variances exactly as eigenvalues (U = I: no eigh, so no rounding and no cutoff: a
    variance of 1e-300 stays 1e-300). Other full matrices go through eigh, each checked
    and cut off on its own scale max|Σ_k|."""
    covs = as_float_array(covs, "covs")
    if covs.shape == (k,):
        variances = onp.repeat(covs[:, None], d, axis=1)
    elif covs.shape == (k, d):
        variances = covs
    elif covs.shape == (k, d, d):
        variances = None
    else:
        raise ValueError(
            f"covs: expected shape ({k}, {d}, {d}) (full), ({k}, {d}) (diagonal) or ({k},) "
            f"(isotropic) for {k} components in d = {d}, got {covs.shape}"
        )
    if variances is not None:
        if onp.any(variances < 0):
            raise ValueError(f"covs: expected non-negative variances, got {float(onp.min(variances)):.3g}")
        full = variances[:, :, None] * onp.eye(d)[None]
        return full, variances.copy(), onp.broadcast_to(onp.eye(d), (k, d, d)).copy()
    full = covs.copy()
    lam = onp.empty((k, d))
    U = onp.empty((k, d, d))
    for j in range(k):
        S = full[j]
        scale = float(onp.max(onp.abs(S)))
        if onp.max(onp.abs(S - S.T)) > _SYM_RTOL * scale:
            raise ValueError(f"covs: expected symmetric matrices, got an asymmetric covariance (component {j})")
        S = 0.5 * (S + S.T)
        full[j] = S
        if not onp.any(S - onp.diag(onp.diag(S))):  # exactly diagonal: exact eigenvalues
            lam[j], U[j] = onp.diag(S), onp.eye(d)
            if onp.any(lam[j] < 0):
                raise ValueError(f"covs: expected positive semi-definite matrices, got an eigenvalue "
                                 f"{float(onp.min(lam[j])):.3g} (component {j})")
            continue
        lam[j], U[j] = onp.linalg.eigh(S)
        if onp.min(lam[j]) < -_SYM_RTOL * scale:
            raise ValueError(f"covs: expected positive semi-definite matrices, got an eigenvalue "
                             f"{float(onp.min(lam[j])):.3g} (component {j})")
        lam[j] = onp.where(lam[j] < _EIG_ULPS * d * onp.finfo(onp.float64).eps * scale, 0.0, lam[j])
    return full, lam, U


def _frozen(a):
    """A read-only float64 copy of ``a``."""
    a = onp.array(a, dtype=onp.float64)
    a.setflags(write=False)
    return a


def _check_weights(weights, k):
    if weights is None:
        return onp.full(k, 1.0 / k)
    weights = as_float_array(weights, "weights")
    if weights.shape != (k,):
        raise ValueError(f"weights: expected shape ({k},) for {k} components, got {weights.shape}")
    if onp.any(weights < 0):
        raise ValueError("weights: expected non-negative weights, got a negative one")
    # Sum to one up to accumulated rounding of k terms (k ulps, with room to spare).
    if abs(float(onp.sum(weights)) - 1.0) > 1e-12 * max(k, 10):
        raise ValueError(f"weights: expected weights that sum to 1, got sum {float(onp.sum(weights))!r}")
    return weights


class GaussianMixture:
    """A mixture of Gaussians  q(x) = Σ_k w_k N(x; μ_k, Σ_k)  in R^d.

    Parameters
    ----------
    means : array_like, shape (k, d)
    covs : array_like, shape (k, d, d), (k, d) or (k,)
        Full covariances, diagonals, or isotropic variances; zero is allowed (a point
        mass), and any covariance must be symmetric positive semi-definite.
    weights : array_like, shape (k,), optional
        Non-negative and summing to 1; uniform if omitted.

    Each covariance is stored with its eigendecomposition Σ_k = U_k diag(λ_k) U_kᵀ,
    which the closed-form marginals use (derivations/03-mixture-marginals.md (MIX.2)).
    """

    def __init__(self, means, covs, weights=None):
        means = as_points(means, "means")
        self.k, self.dim = means.shape
        # Read-only copies: a later change to the caller's arrays cannot reach the mixture
        # (sample and log_prob would disagree), and the attributes cannot be changed in place.
        self.means = _frozen(means)
        self.covs, self.eigvals, self.eigvecs = map(_frozen, _check_covs(covs, self.k, self.dim))
        self.weights = _frozen(_check_weights(weights, self.k))
        with onp.errstate(divide="ignore"):
            self.log_weights = _frozen(onp.log(self.weights))

    def component_terms(self, x, alpha, sigma):
        """Per-component terms of  Σ_k w_k N(x; α μ_k, α² Σ_k + σ² I).

        Parameters
        ----------
        x : array, shape (n, d)
        alpha, sigma : float or array of shape (n,)

        Returns
        -------
        log_joint : shape (n, k), log w_k + log N(x; α μ_k, C_k), C_k = α²Σ_k + σ²I
        prec_diff : shape (n, k, d), C_k⁻¹ (x − α μ_k)
        cov_prec_diff : shape (n, k, d), Σ_k C_k⁻¹ (x − α μ_k)

        Derivation: derivations/03-mixture-marginals.md (MIX.2)
        """
        a = np.reshape(alpha, (-1, 1, 1)) if np.ndim(alpha) else alpha
        s = np.reshape(sigma, (-1, 1, 1)) if np.ndim(sigma) else sigma
        diff = x[:, None, :] - a * self.means[None, :, :]
        z = np.einsum("nkd,kde->nke", diff, self.eigvecs)
        c = a**2 * self.eigvals[None] + s**2
        if onp.min(getval(c)) <= 0.0:
            raise ValueError(
                "t: the distribution is degenerate here (σ_t = 0 and a component covariance "
                "is singular), so it has no density; use t < 1 or a path with sigma_min > 0"
            )
        with onp.errstate(over="ignore"):  # reported below, by name, instead of as NaN later
            zc = z / c
            quad = np.sum(z * zc, axis=2)
        if not onp.all(onp.isfinite(getval(quad))):
            raise ValueError("x: a point is so far from the mixture, relative to its spread at this t, that "
                             "its squared Mahalanobis distance overflows float64")
        log_norm = -0.5 * quad - 0.5 * np.sum(np.log(c), axis=2)
        log_joint = self.log_weights[None, :] + log_norm - 0.5 * self.dim * LOG_2PI
        prec_diff = np.einsum("nke,kde->nkd", zc, self.eigvecs)
        cov_prec_diff = np.einsum("nke,kde->nkd", self.eigvals[None] * zc, self.eigvecs)
        return log_joint, prec_diff, cov_prec_diff

    def log_prob(self, x):
        """log q(x), shape (n,), for x of shape (n, d). Raises for singular covariances.

        Derivation: derivations/03-mixture-marginals.md (MIX.1)
        """
        x = as_points(x, "x", dim=self.dim)
        if onp.min(self.eigvals) <= 0.0:
            raise ValueError("covs: a component covariance is singular, so the mixture has no density")
        log_joint, _, _ = self.component_terms(x, 1.0, 0.0)
        return logsumexp(log_joint, axis=1)

    def sample(self, n, rng):
        """n independent draws, shape (n, d)."""
        n = as_positive_int(n, "n")
        rng = as_generator(rng)
        comp = rng.choice(self.k, size=n, p=self.weights)
        eps = rng.standard_normal((n, self.dim))
        scaled = onp.sqrt(self.eigvals[comp]) * eps
        return self.means[comp] + onp.einsum("nde,ne->nd", self.eigvecs[comp], scaled)

    def mean(self):
        """E[x], shape (d,)."""
        return self.weights @ self.means

    def covariance(self):
        """Cov[x] = Σ_k w_k (Σ_k + μ_k μ_kᵀ) − E[x]E[x]ᵀ = Σ_k w_k (Σ_k + (μ_k − E[x])(μ_k − E[x])ᵀ),
        shape (d, d), computed by the second form (no cancellation); one beyond float64
        raises naming ``means``."""
        def cov():  # Σ_k w_k (Σ_k + (μ_k − m)(μ_k − m)ᵀ): no cancellation, no overflow of μμᵀ
            dev = self.means - self.mean()
            return onp.einsum("k,kde->de", self.weights, self.covs + dev[:, :, None] * dev[:, None, :])

        return finite_result("means", "the covariance", cov)

    def second_moment(self):
        """E‖x‖² = Σ_k w_k (‖μ_k‖² + tr Σ_k), a float."""
        return float(finite_result("means", "the second moment E‖x‖²", lambda: self.weights @ (
            onp.sum(self.means**2, axis=1) + onp.trace(self.covs, axis1=1, axis2=2))))


class Empirical(GaussianMixture):
    """A data set as a mixture of point masses: q = Σ_i w_i δ(x − x_i).

    Parameters
    ----------
    points : array_like, shape (k, d)
    weights : array_like, shape (k,), optional (uniform if omitted)

    It has no density (``log_prob`` raises), but its flow-matching marginals p_t,
    t < 1, are Gaussian mixtures with closed forms like any other target.
    """

    def __init__(self, points, weights=None):
        points = as_points(points, "points")
        super().__init__(points, onp.zeros(points.shape[0]), weights)

    def log_prob(self, x):
        raise ValueError("x: an empirical distribution (point masses) has no density")


class StandardNormal(GaussianMixture):
    """The base distribution p₀ = N(0, I_d).

    Derivation: derivations/03-mixture-marginals.md (MIX.1)
    """

    def __init__(self, dim):
        dim = as_positive_int(dim, "dim")
        super().__init__(onp.zeros((1, dim)), onp.ones(1))

    def log_prob(self, x):
        """log N(x; 0, I) = −½‖x‖² − (d/2) log 2π, shape (n,)."""
        x = as_points(x, "x", dim=self.dim)
        return finite_result("x", "the log-density", lambda: -0.5 * np.sum(x**2, axis=1) - 0.5 * self.dim * LOG_2PI)

    def sample(self, n, rng):
        n = as_positive_int(n, "n")
        return as_generator(rng).standard_normal((n, self.dim))
