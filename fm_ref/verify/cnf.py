"""Theorem checks of the CNF group: change of variables, linear fields, mass, adjoint.

Each registered check is deterministic (fixed seeds), takes about a second, and returns
(measured, tolerance, reason); tests/test_cnf.py and tests/test_adjoint.py call the
same functions and show that each comparison rejects a deliberately wrong input.
"""
import itertools

import numpy as onp
from scipy.integrate import quad
from scipy.linalg import expm

from ..adjoint import adjoint_nll_grad
from ..cnf import CNF
from ..distributions import GaussianMixture
from ..divergence import MLPTrace, divergence, hutchinson_variance
from ..marginal import marginal_log_prob, marginal_velocity
from ..nn import MLP
from ..paths import CondOT
from ..train import tree_flatten
from . import register

__all__ = ["mass_d1_flow", "adjoint_fd_gap", "trace_route_gap", "MASS_D1_HALF_WIDTH"]

# The setting and bound for the change of variables: solver rtol = atol = 1e-10,
# |log p − closed form| ≤ 1e-7 (measured ≈ 1e-11: the bound has four orders of margin).
COV_SOLVER_TOL, COV_ATOL = 1e-10, 1e-7
# Mass in d = 1: quad's error estimate is ~1e-10 and the solver error in log p ~1e-9
# relative; the bound 1e-6.
MASS_D1_TOL = 1e-6
#: Half-width of the d = 1 quadrature interval: the density at ±12 is ~1e-30 (measured).
MASS_D1_HALF_WIDTH = 12.0
# Central differences of the NLL with step 1e-4 at solver tolerance 1e-12: truncation
# ~1e-8 · |f'''| and solver noise ~1e-12/1e-4 = 1e-8 relative; the issue's bound 1e-5.
ADJ_FD_STEP, ADJ_FD_RTOL, ADJ_SOLVER_TOL = 1e-4, 1e-5, 1e-12


def _mixture():
    means = onp.array([[-1.5, 0.5], [1.0, 1.5], [0.5, -1.5]])
    covs = onp.array([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.25, 0.0], [0.0, 0.25]]])
    return GaussianMixture(means, covs, onp.array([0.3, 0.3, 0.4]))


@register("cnf-change-of-variables", "CNF log p_1 of the closed-form marginal velocity (CondOT, "
          "σ_min = 0.05, 2-D mixture) vs closed-form log p_1", "cnf")
def check_change_of_variables_mixture():
    """derivations/06-cnf.md (CNF.4) against derivations/03-mixture-marginals.md (MIX.2)."""
    target, path = _mixture(), CondOT(0.05)
    x = target.sample(3, onp.random.default_rng(10))
    flow = CNF(lambda z, t: marginal_velocity(target, path, z, t), 2, rtol=COV_SOLVER_TOL, atol=COV_SOLVER_TOL)
    err = onp.max(onp.abs(flow.log_prob(x).log_prob - marginal_log_prob(target, path, x, 1.0)))
    return err, COV_ATOL, "issue bound at solver rtol = atol = 1e-10 (measured ~1e-11)"


@register("cnf-linear-field", "push-forward, log p and sample_with_log_prob (default times) of "
          "v = (1 + t)(A x + b) vs the matrix exponential and the Gaussian log-density", "cnf")
def check_linear_field():
    """derivations/06-cnf.md (CNF.6)."""
    A0, b0 = onp.array([[0.2, 1.0], [-0.5, 0.4]]), onp.array([0.3, -0.6])
    block = onp.zeros((3, 3))
    block[:2, :2], block[:2, 2] = 1.5 * A0, 1.5 * b0  # c(1) = 1 + 1/2
    E = expm(block)
    Phi, m = E[:2, :2], E[:2, 2]
    flow = CNF(lambda x, t: (1.0 + t) * (x @ A0.T + b0), 2, rtol=COV_SOLVER_TOL, atol=COV_SOLVER_TOL)
    x0 = onp.random.default_rng(11).normal(size=(4, 2))
    moved = flow.push_forward(x0).x
    gauss = GaussianMixture(m[None], (Phi @ Phi.T)[None])
    drawn = flow.sample_with_log_prob(4, onp.random.default_rng(12))
    err = max(onp.max(onp.abs(moved - (x0 @ Phi.T + m))),
              onp.max(onp.abs(flow.log_prob(moved).log_prob - gauss.log_prob(moved))),
              onp.max(onp.abs(drawn.log_prob - gauss.log_prob(drawn.x))))
    return err, COV_ATOL, "ODE error at solver tolerance 1e-10 (measured ~1e-11)"


def mass_d1_flow():
    """The fixed random 1-D MLP CNF (hidden (16, 16), tanh) of the mass checks."""
    mlp = MLP(1, (16, 16))
    return CNF.from_mlp(mlp, mlp.init(onp.random.default_rng(0)), rtol=1e-9, atol=1e-9)


@register("cnf-mass-d1", "∫ exp(log p_1) dx of a random 1-D MLP CNF by adaptive quadrature (scipy quad "
          "on [-12, 12], one ODE solve per node) vs 1", "cnf")
def check_mass_d1():
    """derivations/06-cnf.md (CNF.15)."""
    flow = mass_d1_flow()
    L = MASS_D1_HALF_WIDTH
    mass, _ = quad(lambda s: float(onp.exp(flow.log_prob(onp.array([[s]])).log_prob[0])), -L, L,
                   epsabs=1e-9, epsrel=1e-9, limit=200)
    return abs(mass - 1.0), MASS_D1_TOL, "issue bound; quad error ~1e-10, solver 1e-9, tails < 1e-29"


def adjoint_fd_gap(grad_fn=adjoint_nll_grad, n_dirs=3, seed=30):
    """max over random unit directions u of |∇L·u − central difference of L along u| / |∇L·u|.

    L is the mean NLL computed by ``CNF.log_prob`` (an independent code path from the
    adjoint). ``grad_fn(mlp, params, x, rtol, atol) -> (loss, grads)``: the adjoint by
    default; the tests pass wrong ones.

    Derivation: derivations/06-cnf.md (CNF.13)
    """
    mlp = MLP(2, (8, 8))
    params = mlp.init(onp.random.default_rng(seed))
    x = onp.random.default_rng(seed + 1).normal(0.0, 1.5, (6, 2))
    _, grads = grad_fn(mlp, params, x, ADJ_SOLVER_TOL, ADJ_SOLVER_TOL)
    g = tree_flatten(grads)
    flat = tree_flatten(params)
    shapes = [(W.shape, b.shape) for W, b in params]

    def unflatten(v):
        out, i = [], 0
        for sw, sb in shapes:
            nw, nb = int(onp.prod(sw)), int(onp.prod(sb))
            out.append((v[i:i + nw].reshape(sw), v[i + nw:i + nw + nb].reshape(sb)))
            i += nw + nb
        return out

    def nll(v):
        flow = CNF.from_mlp(mlp, unflatten(v), rtol=ADJ_SOLVER_TOL, atol=ADJ_SOLVER_TOL)
        return -float(onp.mean(flow.log_prob(x).log_prob))

    rng = onp.random.default_rng(seed + 2)
    worst = 0.0
    for _ in range(n_dirs):
        u = rng.normal(size=flat.size)
        u /= onp.linalg.norm(u)
        fd = (nll(flat + ADJ_FD_STEP * u) - nll(flat - ADJ_FD_STEP * u)) / (2.0 * ADJ_FD_STEP)
        worst = max(worst, abs(g @ u - fd) / abs(fd))
    return worst


@register("cnf-adjoint-vs-fd", "adjoint θ-gradient of the mean NLL vs central differences (step 1e-4) of "
          "CNF.log_prob at solver tolerance 1e-12, 3 random directions", "cnf")
def check_adjoint_fd():
    """derivations/06-cnf.md (CNF.13)."""
    return adjoint_fd_gap(), ADJ_FD_RTOL, "issue bound; FD truncation and solver noise ~1e-8 relative"


@register("cnf-hutchinson-variance", "Rademacher Hutchinson variance closed form vs exact enumeration of "
          "all 2^4 sign vectors, random non-symmetric 4x4 matrices", "cnf")
def check_hutchinson_variance():
    """derivations/06-cnf.md (CNF.10)."""
    rng = onp.random.default_rng(12)
    signs = onp.array(list(itertools.product([-1.0, 1.0], repeat=4)))
    worst = 0.0
    for _ in range(5):
        A = rng.normal(size=(4, 4))
        quad_forms = onp.einsum("ki,ij,kj->k", signs, A, signs)
        exact = onp.mean((quad_forms - onp.trace(A)) ** 2)
        worst = max(worst, abs(hutchinson_variance(A, "rademacher") - exact) / exact)
    return worst, 1e-12, "two closed forms of a finite sum: rounding only"


def trace_route_gap(make_trace=MLPTrace, seed=13):
    """Worst relative gap, over depths 1–3 and d = 1, 2, 5, between ``make_trace(mlp, θ)``'s
    divergence (the CNF's fast route: CNF.16, or CNF.8 beyond two hidden layers) and the
    reverse-mode autograd trace (CNF.7): d VJPs, no shared formula."""
    rng = onp.random.default_rng(seed)
    worst = 0.0
    for d, hidden in itertools.product((1, 2, 5), ((16,), (16, 12), (8, 8, 8))):
        mlp = MLP(d, hidden)
        params = mlp.init(rng)
        x = rng.normal(size=(20, d))
        fast = make_trace(mlp, params)(x, 0.7)[1]
        ref = divergence(lambda z, t: mlp.apply(params, z, t), x, 0.7)
        worst = max(worst, onp.max(onp.abs(fast - ref)) / onp.max(onp.abs(ref)))
    return worst


@register("cnf-trace-routes", "the CNF's closed-form trace (cyclic, CNF.16; tangents beyond two hidden "
          "layers) vs d reverse-mode VJPs, depths 1-3, d = 1, 2, 5", "cnf")
def check_trace_routes():
    """derivations/06-cnf.md (CNF.16) against (CNF.7)."""
    return trace_route_gap(), 1e-10, "exact formulas, rounding only (measured ~1e-15)"
