"""Normalizing-flow checks (group 'flows'): log-determinants against the autograd
Jacobian, inverse ∘ forward, and the mass ∫ p = 1 by quadrature.

The measuring functions take the flow (or a log-density function) as an argument, so the
tests run them on drawn layers and on deliberately wrong densities; the registered checks
run them on fixed, seeded examples of every layer kind.

Derivation: derivations/07-normalizing-flows.md (NF.1)
"""
import autograd.numpy as np
import numpy as onp
from autograd import jacobian
from scipy.integrate import quad

from ..flows import (AffineCoupling, ElementwiseAffine, Flow, MaskedAutoregressive, Permutation, Planar,
                     Radial, Reverse)
from ..train import tree_map
from . import register

__all__ = [
    "LOGDET_RTOL", "INVERSE_RTOL", "MASS_D1_TOL", "MASS_D2_TOL",
    "random_params", "example_layers", "example_flow", "slogdet_of_jacobian",
    "log_det_error", "inverse_error", "mass_by_quadrature", "grid_2d", "mass_on_grid",
]

# log|det| by formula vs slogdet of the autograd Jacobian: both are rounding-level exact,
# but slogdet's LU loses ~cond(J)·ε; measured ≤ 1e-14 on the examples (DESIGN tier 1e-10).
LOGDET_RTOL = 1e-10
# inverse(forward(z)) vs z, relative to 1 + max|z|: closed-form inverses are exact to a few
# ulps; the planar root is solved to ROOT_TOL = 1e-13 and amplified by |û|; measured ≤ 1e-14.
INVERSE_RTOL = 1e-10
# d = 1: scipy's adaptive Gauss–Kronrod quad on (−∞, ∞), asked for 1e-10; the bound.
MASS_D1_TOL = 1e-6
# d = 2: trapezoid rule after x = sinh(s) per axis, 401² nodes, |x| ≤ 1000 (grid_2d). On 16
# random 9-layer example flows the error is ≤ 8e-4 at 401² and ≤ 1e-4 at 801² (geometric
# convergence; a plain [−10, 10]² box misses up to 0.6 of the mass of the heavier-tailed
# ones); the bound.
MASS_D2_TOL = 1e-3


def random_params(template, rng, scale=1.0):
    """Leaves drawn N(0, scale²) with the shapes of ``template`` (e.g. identity_params())."""
    return tree_map(lambda leaf: scale * rng.standard_normal(onp.shape(leaf)), template)


def example_layers(dim, hidden=(8, 8)):
    """One layer of every kind in dimension ``dim`` (coupling layers only for d ≥ 2)."""
    layers = [
        ElementwiseAffine(dim), Reverse(dim), Permutation(dim, onp.roll(onp.arange(dim), 1)),
        Planar(dim), Radial(dim),
        MaskedAutoregressive(dim, hidden=hidden, conditioner="z"),
        MaskedAutoregressive(dim, hidden=hidden, conditioner="x", order=onp.arange(dim)[::-1]),
    ]
    if dim >= 2:
        layers += [AffineCoupling(dim, "even", hidden=hidden), AffineCoupling(dim, "odd", hidden=hidden)]
    return layers


def example_flow(dim, seed=0, scale=0.5):
    """A fixed stack of every layer kind with random parameters (a Flow and its params)."""
    flow = Flow(example_layers(dim))
    rng = onp.random.default_rng(seed)
    return flow, random_params(flow.identity_params(), rng, scale)


def slogdet_of_jacobian(fn, z):
    """(sign, log|det|) of the autograd Jacobian of a batched map, per point; shapes (n,).

    ``fn`` maps an (n, d) array to an (n, d) array row by row.
    """
    signs, logs = [], []
    for row in onp.asarray(z):
        J = jacobian(lambda v: fn(v[None, :])[0])(row)
        sign, logabs = onp.linalg.slogdet(J)
        signs.append(sign)
        logs.append(logabs)
    return onp.array(signs), onp.array(logs)


def log_det_error(layer, params, z, inverse=False):
    """max |log_det − slogdet(autograd Jacobian)| / max(1, |slogdet|) over the points.

    ``layer`` is a Layer or a Flow; ``inverse`` checks the inverse map at x = z.

    Derivation: derivations/07-normalizing-flows.md (NF.3)
    """
    method = layer.inverse_and_log_det if inverse else layer.forward_and_log_det
    _, log_det = method(params, z)
    _, ref = slogdet_of_jacobian(lambda v: method(params, v)[0], z)
    return float(onp.max(onp.abs(log_det - ref) / onp.maximum(1.0, onp.abs(ref))))


def inverse_error(layer, params, z):
    """max |inverse(forward(z)) − z| / (1 + max|z|), and max |ld_fwd + ld_inv| / max(1, |ld_fwd|).

    Derivation: derivations/07-normalizing-flows.md (NF.2)
    """
    x, ld_fwd = layer.forward_and_log_det(params, z)
    z_back, ld_inv = layer.inverse_and_log_det(params, x)
    err_z = float(onp.max(onp.abs(z_back - z)) / (1.0 + onp.max(onp.abs(z))))
    err_ld = float(onp.max(onp.abs(ld_fwd + ld_inv) / onp.maximum(1.0, onp.abs(ld_fwd))))
    return err_z, err_ld


def mass_by_quadrature(log_prob):
    """(∫ exp(log_prob(x)) dx over R, quad's error estimate) for a 1-D log-density.

    ``log_prob`` maps an (n, 1) array to (n,).

    The integral is split at the highest of the densities on a sinh-spaced grid (|x| up
    to 1.1e4): a flow may move the mass far from 0 (a planar layer with a tiny ‖w‖ shifts
    it by about 60), where quad over (−∞, ∞) would sample only the empty tails.

    Derivation: derivations/07-normalizing-flows.md (NF.1)
    """
    grid = onp.sinh(onp.linspace(-10.0, 10.0, 4001))[:, None]
    centre = float(grid[int(onp.argmax(log_prob(grid))), 0])
    density = lambda s: float(np.exp(log_prob(onp.array([[s]]))[0]))  # noqa: E731
    parts = [quad(density, lo, hi, epsabs=1e-11, epsrel=1e-11, limit=400)
             for lo, hi in ((-onp.inf, centre), (centre, onp.inf))]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def grid_2d(nodes=401, s_max=7.6):
    """Nodes and weights of the trapezoid rule in s after the substitution x = sinh(s) per
    axis, s ∈ [−s_max, s_max] (|x| ≤ sinh(7.6) ≈ 1000): ∫ f(x) dx ≈ Σ_k w_k f(x_k).

    The substitution turns the Gaussian-like tails of flow densities into doubly
    exponentially decaying ones, where the trapezoid rule converges geometrically, and
    spaces the nodes densely near the origin (Δx ≈ 0.04) and sparsely far out.

    Returns
    -------
    points : shape (nodes², 2); weights : shape (nodes²,)
    """
    s = onp.linspace(-s_max, s_max, nodes)
    w = (s[1] - s[0]) * onp.cosh(s)
    w[0] /= 2.0
    w[-1] /= 2.0
    x = onp.sinh(s)
    X, Y = onp.meshgrid(x, x, indexing="ij")
    return onp.stack([X.ravel(), Y.ravel()], axis=1), onp.outer(w, w).ravel()


def mass_on_grid(log_prob, nodes=401):
    """∫ exp(log_prob(x)) dx over R² by the sinh-substituted trapezoid rule ``grid_2d``.

    Derivation: derivations/07-normalizing-flows.md (NF.1)
    """
    points, weights = grid_2d(nodes)
    return float(weights @ onp.exp(log_prob(points)))


@register("flows-logdet-slogdet",
          "every layer kind's log|det ∂x/∂z| (d = 1, 2, 3) and a composition vs slogdet of the autograd Jacobian "
          "(the log-det of the map each layer computes, not that the map is the documented one: a wrong shift, "
          "conditioner or planar offset passes; tests/test_flows.py compares each layer with a hand-built reference)",
          "flows")
def check_log_det():
    """Largest relative log-det error over every layer kind and dimension."""
    rng = onp.random.default_rng(1)
    worst = 0.0
    for dim in (1, 2, 3):
        z = rng.normal(0.0, 1.5, (3, dim))
        for layer in example_layers(dim):
            params = random_params(layer.identity_params(), rng, 0.7)
            worst = max(worst, log_det_error(layer, params, z), log_det_error(layer, params, z, inverse=True))
        flow, params = example_flow(dim, seed=dim)
        worst = max(worst, log_det_error(flow, params, z))
    return worst, LOGDET_RTOL, "autograd vs closed form (DESIGN tier); slogdet's LU loses ~cond(J)·ε"


@register("flows-inverse", "inverse(forward(z)) = z and log_det_forward = −log_det_inverse, every layer kind",
          "flows")
def check_inverse():
    """Largest round-trip error (state and log-det) over every layer kind and dimension."""
    rng = onp.random.default_rng(2)
    worst = 0.0
    for dim in (1, 2, 3):
        z = rng.normal(0.0, 2.0, (20, dim))
        for layer in example_layers(dim):
            params = random_params(layer.identity_params(), rng, 0.7)
            worst = max(worst, *inverse_error(layer, params, z))
        flow, params = example_flow(dim, seed=10 + dim)
        worst = max(worst, *inverse_error(flow, params, z))
    return worst, INVERSE_RTOL, "closed-form inverses to rounding; planar root to ROOT_TOL = 1e-13"


@register("flows-mass-d1", "∫ p(x) dx = 1 for a 1-D stack of every layer kind, adaptive quadrature", "flows")
def check_mass_d1():
    flow, params = example_flow(1, seed=3)
    mass, _ = mass_by_quadrature(lambda x: flow.log_prob(params, x))
    return abs(mass - 1.0), MASS_D1_TOL, "scipy quad on (−∞, ∞) asked for 1e-10; the issue's bound"


@register("flows-mass-d2", "∫ p(x) dx = 1 for a 2-D stack of every layer kind, trapezoid rule in sinh-stretched "
          "coordinates, 401² nodes", "flows")
def check_mass_d2():
    flow, params = example_flow(2, seed=4, scale=0.3)
    mass = mass_on_grid(lambda x: flow.log_prob(params, x))
    return abs(mass - 1.0), MASS_D2_TOL, "trapezoid rule after x = sinh(s), geometric convergence; the issue's bound"
