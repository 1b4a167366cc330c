"""DDIM and DDPM ancestral sampling for an affine path with increasing signal-to-noise ratio.

The forward (noising) Markov kernel from t to an earlier time s < t that keeps the path's
marginals is  x_s = (α_s/α_t) x_t + ς_{s|t} ξ,  ς²_{s|t} = σ_s² − (α_s/α_t)² σ_t²  (DIF.12),
a kernel exactly when α_s/σ_s ≤ α_t/σ_t (the SNR increases in t). Its posterior given
the data x₁ (DIF.13) is Gaussian:

    q(x_t | x_s, x₁) = N(x_t; (α_s σ_t²/(α_t σ_s²)) x_s + (α_t ς²/σ_s²) x₁,  τ² I),
    τ² = σ_t² ς²/σ_s².

One step from s to t (DIF.14), with the model's (x̂₀, x̂₁) at (x_s, s) and η ∈ [0, 1]:

    x_t = α_t x̂₁ + √(σ_t² − η²τ²) x̂₀ + η τ ξ.

η = 0 is DDIM (deterministic; exact in one step for a single data point); η = 1 is DDPM
ancestral sampling (the posterior above with x₁ replaced by x̂₁). A step to t = 1 where
σ_1 = 0 returns x̂₁ exactly: the final denoising step is built in.
"""
import numpy as onp

from .._validate import as_finite_float, as_generator, as_points
from ..losses import _check_path
from .predictors import Predictor
from .sde import check_grid

__all__ = ["forward_kernel", "posterior_coefficients", "ddim_step", "ddpm_step_mean_and_var", "sample_ddim"]

# ς² = σ_s² − (α_s σ_t/α_t)² cancels for s close to t: a relative rounding of a few ulps of
# σ_s² is not a non-monotone SNR; beyond 1e-12 relative it is.
_SNR_ROUNDING = 1e-12


def _times(path, s, t):
    _check_path(path)
    s = as_finite_float(s, "s", lo=0.0, hi=1.0)
    t = as_finite_float(t, "t", lo=0.0, hi=1.0)
    if not s < t:
        raise ValueError(f"t: expected a time after s = {s!r} (the sampler moves toward the data), got {t!r}")
    return s, t


def forward_kernel(path, s, t):
    """(a, ς²): x_s = a x_t + ς ξ keeps the marginals, a = α_s/α_t, ς² = σ_s² − a²σ_t².

    Needs α_t > 0 and an SNR α/σ that does not decrease from s to t.

    Derivation: derivations/09-diffusion.md (DIF.12)
    """
    s, t = _times(path, s, t)
    a_s, s_s, a_t, s_t = path._alpha(s), path._sigma(s), path._alpha(t), path._sigma(t)
    if a_t == 0.0:
        raise ValueError(f"t: α_t = 0 at t = {t!r}: no forward kernel from there")
    a = a_s / a_t
    var = s_s**2 - (a * s_t) ** 2
    if var < 0.0:
        if var < -_SNR_ROUNDING * s_s**2:
            raise ValueError(f"path: the signal-to-noise ratio α/σ decreases from s = {s!r} to t = {t!r}; "
                             "DDPM/DDIM need it increasing")
        var = 0.0
    return float(a), float(var)


def posterior_coefficients(path, s, t):
    """(c_x, c_1, τ²): q(x_t | x_s, x₁) = N(c_x x_s + c_1 x₁, τ² I); needs σ_s > 0.

    c_x = α_s σ_t²/(α_t σ_s²), c_1 = α_t ς²/σ_s², τ² = σ_t² ς²/σ_s².

    Derivation: derivations/09-diffusion.md (DIF.13)
    """
    a, var = forward_kernel(path, s, t)
    s_s = path._sigma(s)
    if s_s == 0.0:
        raise ValueError(f"s: σ_s = 0 at s = {s!r}: the state is already data")
    s_t, a_t = path._sigma(t), path._alpha(t)
    return float(a * s_t**2 / s_s**2), float(a_t * var / s_s**2), float(s_t**2 * var / s_s**2)


def _check_eta(eta):
    return as_finite_float(eta, "eta", lo=0.0, hi=1.0)


def ddim_step(path, x_s, s, t, x0_hat, x1_hat, eta=0.0, rng=None):
    """x_t = α_t x̂₁ + √(σ_t² − η²τ²) x̂₀ + η τ ξ, shape (n, d) (DIF.14).

    Parameters
    ----------
    path : AffinePath with increasing SNR
    x_s : array, shape (n, d), the state at s (only its shape is used: the step acts
        through the predictions at (x_s, s))
    s, t : float, 0 ≤ s < t ≤ 1
    x0_hat, x1_hat : array, shape (n, d), the predictions at (x_s, s)
    eta : float in [0, 1] (0: DDIM, 1: DDPM ancestral)
    rng : numpy.random.Generator, needed when eta > 0

    Derivation: derivations/09-diffusion.md (DIF.14)
    """
    eta = _check_eta(eta)
    x_s = as_points(x_s, "x_s")
    x0_hat = as_points(x0_hat, "x0_hat", dim=x_s.shape[1], n=x_s.shape[0])
    x1_hat = as_points(x1_hat, "x1_hat", dim=x_s.shape[1], n=x_s.shape[0])
    _, _, tau2 = posterior_coefficients(path, s, t)
    s_t, a_t = path._sigma(t), path._alpha(t)
    c = eta * onp.sqrt(tau2)
    mean = a_t * x1_hat + onp.sqrt(max(s_t**2 - c**2, 0.0)) * x0_hat
    if c == 0.0:
        return mean
    return mean + c * as_generator(rng).standard_normal(x_s.shape)


def ddpm_step_mean_and_var(path, x_s, s, t, x1_hat):
    """DDPM's step (η = 1): the mean c_x x_s + c_1 x̂₁, shape (n, d), and the variance τ² (float).

    Derivation: derivations/09-diffusion.md (DIF.13)
    """
    x_s = as_points(x_s, "x_s")
    x1_hat = as_points(x1_hat, "x1_hat", dim=x_s.shape[1], n=x_s.shape[0])
    c_x, c_1, tau2 = posterior_coefficients(path, s, t)
    return c_x * x_s + c_1 * x1_hat, tau2


def sample_ddim(predictor, x, ts, eta=0.0, rng=None, keep=False):
    """Carry x (samples of p_{ts[0]}) to ts[-1] by DDIM (η = 0) or DDPM (η = 1) steps (DIF.14).

    The predictions (x̂₀, x̂₁) at each (x_s, s) come from ``predictor`` (a model of any
    parameterisation, converted; or the closed form). ts may end at 1: the last step
    then returns x̂₁.

    Returns
    -------
    array, shape (n, d), or (m, n, d) with every grid state if ``keep``

    Derivation: derivations/09-diffusion.md (DIF.14)
    """
    if not isinstance(predictor, Predictor):
        raise TypeError(f"predictor: expected a fm_ref.diffusion.Predictor, got {type(predictor).__name__}")
    eta = _check_eta(eta)
    if eta > 0.0:
        rng = as_generator(rng)
    x = as_points(x, "x")
    ts = check_grid(ts)
    states = [x]
    for s, t in zip(ts[:-1], ts[1:]):
        s, t = float(s), float(t)
        x = ddim_step(predictor.path, x, s, t, predictor(x, s, "eps"), predictor(x, s, "x1"), eta, rng)
        states.append(x)
    return onp.stack(states) if keep else x
