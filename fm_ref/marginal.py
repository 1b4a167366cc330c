"""Closed-form marginal quantities of an affine Gaussian path with a mixture target.

For the target q = Σ_k w_k N(μ_k, Σ_k) (an ``Empirical`` data set has Σ_k = 0) and
x₀ ~ N(0, I) independent of x₁ ~ q, the marginal of x_t = σ_t x₀ + α_t x₁ is

    p_t(x) = Σ_k w_k N(x; α_t μ_k, C_k),   C_k = α_t² Σ_k + σ_t² I,

and everything else follows from the per-component Gaussian conditionals:

    E[x₁ | x_t = x, k] = μ_k + α_t Σ_k C_k⁻¹ (x − α_t μ_k),
    E[x₀ | x_t = x, k] = σ_t C_k⁻¹ (x − α_t μ_k),
    ∇ log p_t(x)       = −Σ_k r_k(x) C_k⁻¹ (x − α_t μ_k),
    u_t(x)             = α'_t E[x₁ | x_t = x] + σ'_t E[x₀ | x_t = x],

with posterior weights r_k(x) = w_k N(x; α_t μ_k, C_k) / p_t(x) computed by a
softmax over log-weights (logsumexp), so points far from the data (|x| ~ 1e3) and
near-singular C_k are handled. No formula divides by σ_t, so the quantities stay
defined at t = 1 whenever every C_k is non-singular there.

Derivation: derivations/03-mixture-marginals.md (MIX.2) to (MIX.6)

Every function takes a ``GaussianMixture`` target, a path, points x of shape (n, d)
and t, a float or an array of shape (n,); all are written in ``autograd.numpy`` and
are differentiable in x and t.
"""
import autograd.numpy as np
from autograd.scipy.special import logsumexp

from ._validate import as_points, as_time
from .distributions import GaussianMixture
from .paths import AffinePath, _col

__all__ = [
    "marginal_log_prob",
    "posterior_mean",
    "posterior_noise_mean",
    "marginal_velocity",
    "marginal_score",
]


def _validate(target, path, x, t):
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"target: expected a GaussianMixture (or Empirical), got {type(target).__name__}")
    if not isinstance(path, AffinePath):
        raise TypeError(f"path: expected an AffinePath such as CondOT(), got {type(path).__name__}")
    x = as_points(x, "x", dim=target.dim)
    return x, as_time(t, n=x.shape[0])


def _cube(v):
    """A scalar stays; a per-point array (n,) becomes (n, 1, 1) to meet (n, k, d) terms."""
    return np.reshape(v, (-1, 1, 1)) if np.ndim(v) else v


def _responsibilities(log_joint):
    """log p = logsumexp_k log_joint, shape (n,), and the posterior weights r_k, shape (n, k)."""
    log_p = logsumexp(log_joint, axis=1)
    return log_p, np.exp(log_joint - log_p[:, None])


def _terms(target, path, x, t):
    """Responsibilities (n, k) and the per-component terms at (x, t)."""
    alpha, sigma = path._alpha(t), path._sigma(t)
    log_joint, prec_diff, cov_prec_diff = target.component_terms(x, alpha, sigma)
    log_p, resp = _responsibilities(log_joint)
    return log_p, resp, prec_diff, cov_prec_diff, alpha, sigma


def marginal_log_prob(target, path, x, t):
    """log p_t(x), shape (n,).

    Derivation: derivations/03-mixture-marginals.md (MIX.2)
    """
    x, t = _validate(target, path, x, t)
    return _terms(target, path, x, t)[0]


def posterior_mean(target, path, x, t):
    """E[x₁ | x_t = x], shape (n, d): the optimal x₁-prediction (denoiser).

    Derivation: derivations/03-mixture-marginals.md (MIX.3)
    """
    x, t = _validate(target, path, x, t)
    _, resp, _, cov_prec_diff, alpha, _ = _terms(target, path, x, t)
    comp = target.means[None] + _cube(alpha) * cov_prec_diff
    return np.einsum("nk,nkd->nd", resp, comp)


def posterior_noise_mean(target, path, x, t):
    """E[x₀ | x_t = x], shape (n, d): the optimal ε-prediction.

    Derivation: derivations/03-mixture-marginals.md (MIX.4)
    """
    x, t = _validate(target, path, x, t)
    _, resp, prec_diff, _, _, sigma = _terms(target, path, x, t)
    return _col(sigma) * np.einsum("nk,nkd->nd", resp, prec_diff)


def marginal_score(target, path, x, t):
    """∇ₓ log p_t(x), shape (n, d).

    Derivation: derivations/03-mixture-marginals.md (MIX.5)
    """
    x, t = _validate(target, path, x, t)
    _, resp, prec_diff, _, _, _ = _terms(target, path, x, t)
    return -np.einsum("nk,nkd->nd", resp, prec_diff)


def marginal_velocity(target, path, x, t):
    """u_t(x) = E[u_t(x | x₁) | x_t = x] = α'_t E[x₁|x] + σ'_t E[x₀|x], shape (n, d).

    The velocity field that generates p_t (Theorem 1). Raises where σ'_t is infinite
    (t = 1 for VP and LinearVP) or p_t is degenerate.

    Derivation: derivations/03-mixture-marginals.md (MIX.6)
    """
    x, t = _validate(target, path, x, t)
    path._check_d_sigma(t)
    _, resp, prec_diff, cov_prec_diff, alpha, sigma = _terms(target, path, x, t)
    x1_k = target.means[None] + _cube(alpha) * cov_prec_diff
    x0_k = _cube(sigma) * prec_diff
    u_k = _cube(path._d_alpha(t)) * x1_k + _cube(path._d_sigma(t)) * x0_k
    return np.einsum("nk,nkd->nd", resp, u_k)
