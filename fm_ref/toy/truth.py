"""The true density and the true NLL (entropy) of the toy data sets that have one in closed form.

``fm_ref.toy`` defines the sets by how they are drawn. Two of them have a density in
closed form:

- ``8gaussians``: q = (1/8) Σ_k N(μ_k, 0.2² I), μ_k = 2 (cos kπ/4, sin kπ/4);
- ``checkerboard``: q = 1/8 on the 8 dark unit squares of [-2, 2]², 0 elsewhere;

the others (moons, circles, spirals: a curve blurred by Gaussian noise) have a density
only as an integral along the curve, and are reported as "not in closed form".

The true NLL of the data is the entropy H(q) = −E_q[log q(x)]: no model can have a
lower expected NLL, and a model p's expected excess is E_q[−log p + log q] = KL(q ‖ p).
For the mixture, H(q) is a 2-D integral, computed by composite Gauss–Legendre
quadrature; for the checkerboard H(q) = log 8.

Derivation: derivations/08-evaluation.md (EVAL.7)
"""
import functools

import numpy as np

from .._validate import as_points

__all__ = ["CLOSED_FORM", "toy_log_prob", "toy_entropy", "eight_gaussians_mixture"]

#: The toy sets whose density is known in closed form.
CLOSED_FORM = ("8gaussians", "checkerboard")
# The mixture's support is within 2 + 10·0.2 = 4 of the origin up to a mass e^{-50}: the
# quadrature square [-4, 4]² loses nothing at float64 precision.
_HALF_WIDTH = 4.0
# 32 panels of 16 Gauss–Legendre nodes per axis: a panel is 0.25 = 1.25 σ wide; the
# error estimate toy_entropy returns is the change from 8 nodes per panel.
_PANELS, _NODES = 32, 16


def eight_gaussians_mixture():
    """The 8gaussians data set as an ``fm_ref.distributions.GaussianMixture``."""
    from ..distributions import GaussianMixture

    angle = np.arange(8) * np.pi / 4.0
    means = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return GaussianMixture(means, np.full(8, 0.2 ** 2))


def _checkerboard_log_prob(x):
    """log(1/8) on the dark squares, −inf elsewhere (the construction of ``fm_ref.toy``)."""
    col = np.floor(x[:, 0] + 2.0)
    row = np.floor(x[:, 1] + 2.0)
    inside = (np.abs(x[:, 0]) <= 2.0) & (np.abs(x[:, 1]) <= 2.0)
    dark = (row - col) % 2 == 0  # column 0 holds rows 0 and 2, column 1 rows 1 and 3, ...
    return np.where(inside & dark, -np.log(8.0), -np.inf)


def toy_log_prob(name, x):
    """The exact log-density of the toy set ``name`` at x.

    Parameters
    ----------
    name : one of ``CLOSED_FORM``
    x : array, shape (n, 2)

    Returns
    -------
    log_q : ndarray, shape (n,) (−inf outside the checkerboard's support)

    Derivation: derivations/08-evaluation.md (EVAL.7)
    """
    if name not in CLOSED_FORM:
        raise ValueError(f"name: expected a toy set with a closed-form density {CLOSED_FORM}, got {name!r}")
    x = as_points(x, "x", dim=2)
    if name == "checkerboard":
        return _checkerboard_log_prob(x)
    return _eight_gaussians_log_prob(x)


def _gauss_legendre_square(panels, nodes):
    """Nodes (m, 2) and weights (m,) of a composite Gauss–Legendre rule on [-L, L]²."""
    u, w = np.polynomial.legendre.leggauss(nodes)
    edges = np.linspace(-_HALF_WIDTH, _HALF_WIDTH, panels + 1)
    half = 0.5 * np.diff(edges)
    pts = (0.5 * (edges[:-1] + edges[1:])[:, None] + half[:, None] * u[None, :]).ravel()
    wts = (half[:, None] * w[None, :]).ravel()
    gx, gy = np.meshgrid(pts, pts)
    return np.stack([gx.ravel(), gy.ravel()], axis=1), np.outer(wts, wts).ravel()


def _eight_gaussians_log_prob(x):
    """log (1/8) Σ_k N(x; μ_k, s² I) written out for the isotropic components (s = 0.2),
    a log-sum-exp over k; ``eight_gaussians_mixture().log_prob`` is the general route."""
    s2 = 0.2 ** 2
    mix = eight_gaussians_mixture()
    sq = np.sum((x[:, None, :] - mix.means[None, :, :]) ** 2, axis=2)  # (n, 8)
    log_terms = -0.5 * sq / s2 - np.log(2.0 * np.pi * s2) - np.log(8.0)
    top = np.max(log_terms, axis=1)
    # terms below e^-700 of the largest change the sum by < 1e-303 relative; clipping them
    # there keeps exp out of underflow (slow subnormals, and an error under errstate(raise))
    return top + np.log(np.sum(np.exp(np.maximum(log_terms - top[:, None], -700.0)), axis=1))


def _mixture_entropy(panels, nodes):
    x, w = _gauss_legendre_square(panels, nodes)
    log_q = _eight_gaussians_log_prob(x)
    q = np.exp(np.maximum(log_q, -700.0))  # log q ≥ −420 on the square: the clip never acts there
    return -float(np.sum(w * q * log_q))


@functools.lru_cache(maxsize=None)
def toy_entropy(name):
    """The true NLL H(q) = −∫ q log q of the toy set ``name``, in nats.

    Returns
    -------
    (value, error) : float, float; ``error`` is the change from a rule with half the
        nodes per panel (8gaussians), 0.0 for the checkerboard's exact log 8.

    Derivation: derivations/08-evaluation.md (EVAL.7)
    """
    if name not in CLOSED_FORM:
        raise ValueError(f"name: expected a toy set with a closed-form density {CLOSED_FORM}, got {name!r}")
    if name == "checkerboard":
        return float(np.log(8.0)), 0.0
    fine = _mixture_entropy(_PANELS, _NODES)
    coarse = _mixture_entropy(_PANELS, _NODES // 2)
    return fine, abs(fine - coarse)
