"""Two-dimensional toy data sets, generated in pure NumPy (no download).

Each generator draws ``n`` points of shape ``(n, 2)`` from an explicit
``numpy.random.Generator``; the same seed gives bit-identical points. The scales are
chosen so that every set lies roughly in [-4, 4]², comparable with N(0, I).

=============  ==============================================================
name           definition
=============  ==============================================================
moons          two interleaved half circles (radius 1), centred and scaled ×2,
               Gaussian noise std 0.1 (before scaling)
8gaussians     eight Gaussians, std 0.2, centred on the circle of radius 2 at
               angles kπ/4
checkerboard   uniform on the 8 dark squares of a 4×4 board of side 1 on [-2, 2]²
circles        two concentric circles of radii 2 and 1, Gaussian noise std 0.08
spirals        two interleaved Archimedean spirals (r ∝ angle up to 3π), noise
               std 0.1
=============  ==============================================================
"""
import numpy as np

from .._validate import as_generator, as_positive_int

__all__ = ["make_toy", "TOY_DATASETS"]


def _moons(n, rng):
    n_out = n // 2
    theta = rng.uniform(0.0, np.pi, n)
    upper = np.arange(n) < n_out
    x = np.where(upper, np.cos(theta), 1.0 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    pts = np.stack([x - 0.5, y - 0.25], axis=1) + 0.1 * rng.standard_normal((n, 2))
    return 2.0 * pts


def _eight_gaussians(n, rng):
    k = rng.integers(0, 8, n)
    angle = k * np.pi / 4.0
    centres = 2.0 * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + 0.2 * rng.standard_normal((n, 2))


def _checkerboard(n, rng):
    x = rng.uniform(-2.0, 2.0, n)
    y_cell = rng.uniform(0.0, 1.0, n) + 2.0 * rng.integers(0, 2, n)  # in [0,1) ∪ [2,3)
    y = y_cell - 2.0 + (np.floor(x + 2.0) % 2)  # shift odd columns by one cell
    return np.stack([x, y], axis=1)


def _circles(n, rng):
    radius = np.where(rng.integers(0, 2, n) == 0, 2.0, 1.0)
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    pts = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return pts + 0.08 * rng.standard_normal((n, 2))


def _spirals(n, rng):
    s = np.sqrt(rng.uniform(0.0, 1.0, n)) * 3.0 * np.pi
    sign = np.where(rng.integers(0, 2, n) == 0, 1.0, -1.0)
    pts = sign[:, None] * np.stack([s * np.cos(s), s * np.sin(s)], axis=1) / (1.5 * np.pi)
    return pts + 0.1 * rng.standard_normal((n, 2))


TOY_DATASETS = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "circles": _circles,
    "spirals": _spirals,
}


def make_toy(name, n, rng):
    """Draw n points of a 2-D toy data set.

    Parameters
    ----------
    name : {'moons', '8gaussians', 'checkerboard', 'circles', 'spirals'}
    n : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray, shape (n, 2), float64
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"name: expected one of {sorted(TOY_DATASETS)}, got {name!r}")
    n = as_positive_int(n, "n")
    rng = as_generator(rng)
    return np.asarray(TOY_DATASETS[name](n, rng), dtype=np.float64)
