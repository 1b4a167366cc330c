"""Couplings of a source batch x₀ (n points, weights a) and a target batch x₁ (m points,
weights b), for the squared Euclidean cost C_ij = ‖x₀ᵢ − x₁ⱼ‖².

- ``independent_plan``: π = a bᵀ (I-CFM);
- ``ot_permutation``: exact OT for n = m and uniform weights, a permutation found by
  ``scipy.optimize.linear_sum_assignment``: every point is used exactly once (CPL.4);
- ``ot_plan``: exact OT for any sizes and weights, the linear program
  min ⟨π, C⟩ s.t. π1 = a, πᵀ1 = b, π ≥ 0 solved by ``scipy.optimize.linprog`` (HiGHS),
  pairs then drawn from π with ``sample_pairs`` (CPL.5);
- ``sinkhorn``: entropic OT, min ⟨π, C⟩ + ε KL(π ‖ a bᵀ), by log-domain Sinkhorn
  iterations with a stated stopping rule (CPL.6, CPL.7); ``bridge_epsilon(σ)`` = 2σ² ties
  ε to the Brownian bridge σ√(t(1 − t)) (CPL.8).

The training couplings (``IndependentCoupling``, ``ExactOTCoupling``,
``EntropicCoupling``) are callables ``coupling(x_0, x_1, rng) -> (x_0, x_1)`` that pair
one batch; ``fm_ref.train.train_cfm`` accepts them.

Derivation: derivations/10-couplings.md (CPL.4) to (CPL.8)
"""
import dataclasses

import numpy as onp
from scipy.optimize import linprog
from scipy.spatial.distance import cdist

from .._validate import as_finite_float, as_float_array, as_generator, as_points, as_positive_int
from ..metrics import optimal_assignment

__all__ = ["cost_matrix", "independent_plan", "ot_permutation", "ot_plan", "sinkhorn", "SinkhornResult",
           "bridge_epsilon", "sample_pairs", "plan_cost", "IndependentCoupling", "ExactOTCoupling",
           "EntropicCoupling", "SINKHORN_TOL", "SINKHORN_MAX_ITER", "PLAIN_DOMAIN_MAX"]

#: Default stopping rule of ``sinkhorn``: ‖π1 − a‖₁ ≤ 1e-9 (the column marginal is exact
#: after each g-update). 1e-9 is far below a mini-batch's sampling noise (~1/√n) and
#: reached in tens to hundreds of iterations for ε ≥ 1e-2 · max C.
SINKHORN_TOL = 1e-9
#: Iteration cap; reaching it raises rather than returning a plan with wrong marginals.
SINKHORN_MAX_ITER = 10_000
#: Up to this max C/ε the log-sum-exps run in the plain domain, as logs of products with
#: e^{−C/ε} (entries ≥ e^{−50}; the potentials stay within a few max C of 0, so no term
#: over- or underflows), ~20 times faster on 256 × 256; beyond it, max-shifted in the log
#: domain, where e^{−C/ε} may underflow (it is exactly 0 once C/ε > 745).
PLAIN_DOMAIN_MAX = 50.0


def cost_matrix(x_0, x_1):
    """C_ij = ‖x₀ᵢ − x₁ⱼ‖², shape (n, m), computed as differences (never negative)."""
    x_0 = as_points(x_0, "x_0")
    x_1 = as_points(x_1, "x_1", dim=x_0.shape[1])
    return cdist(x_0, x_1, "sqeuclidean")


def _weights(w, n, name, positive=False):
    """Uniform if None; else shape (n,), non-negative (positive if asked), summing to 1."""
    if w is None:
        return onp.full(n, 1.0 / n)
    w = as_float_array(w, name)
    if w.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) to match the {n} points, got {w.shape}")
    if onp.any(w < 0.0) or (positive and onp.any(w == 0.0)):
        raise ValueError(f"{name}: expected {'positive' if positive else 'non-negative'} weights, "
                         f"got {float(onp.min(w))!r}")
    # sum to one up to the rounding of n terms (n ulps, with room to spare)
    if abs(float(onp.sum(w)) - 1.0) > 1e-12 * max(n, 10):
        raise ValueError(f"{name}: expected weights that sum to 1, got sum {float(onp.sum(w))!r}")
    return w


def independent_plan(a, b):
    """π = a bᵀ, shape (n, m), for weight vectors a (n,) and b (m,).

    Derivation: derivations/10-couplings.md (CPL.4)
    """
    a = as_float_array(a, "a")
    b = as_float_array(b, "b")
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"a, b: expected 1-D weight vectors, got shapes {a.shape} and {b.shape}")
    return onp.outer(_weights(a, a.shape[0], "a"), _weights(b, b.shape[0], "b"))


def ot_permutation(x_0, x_1):
    """Exact OT between two equal-size, equal-weight batches: the permutation π with
    x₀ᵢ paired to x₁_{π(i)} that minimises Σ_i ‖x₀ᵢ − x₁_{π(i)}‖².

    Parameters
    ----------
    x_0, x_1 : array, shape (n, d) each

    Returns
    -------
    perm : ndarray of int, shape (n,), a permutation of 0..n−1
    cost : float, (1/n) Σ_i ‖x₀ᵢ − x₁_{perm[i]}‖² (the squared W₂ of the two batches)

    Derivation: derivations/10-couplings.md (CPL.4)
    """
    x_0 = as_points(x_0, "x_0")
    x_1 = as_points(x_1, "x_1", dim=x_0.shape[1])
    if x_1.shape[0] != x_0.shape[0]:
        raise ValueError(f"x_1: a permutation needs batches of equal size, got {x_0.shape[0]} and "
                         f"{x_1.shape[0]} points; use ot_plan for unequal sizes or weights")
    perm, cost = optimal_assignment(x_0, x_1)
    return perm, float(onp.mean(cost))


def ot_plan(x_0, x_1, a=None, b=None):
    """Exact OT plan for any sizes and weights, by the linear program (HiGHS).

    min_π Σ_ij C_ij π_ij  subject to  Σ_j π_ij = a_i,  Σ_i π_ij = b_j,  π_ij ≥ 0.

    Parameters
    ----------
    x_0 : array, shape (n, d);  x_1 : array, shape (m, d)
    a : array, shape (n,), optional;  b : array, shape (m,), optional
        Non-negative weights summing to 1 (uniform if omitted).

    Returns
    -------
    plan : ndarray, shape (n, m), non-negative; its marginals equal a and b to the LP's
        feasibility tolerance (1e-10 requested; measured ≤ 1e-16 on vertex solutions)
    cost : float, ⟨π, C⟩

    Raises ``RuntimeError`` if HiGHS does not report an optimum.

    Derivation: derivations/10-couplings.md (CPL.5)
    """
    C = cost_matrix(x_0, x_1)
    n, m = C.shape
    a, b = _weights(a, n, "a"), _weights(b, m, "b")
    rows = onp.kron(onp.eye(n), onp.ones((1, m)))  # Σ_j π_ij
    cols = onp.kron(onp.ones((1, n)), onp.eye(m))  # Σ_i π_ij
    res = linprog(C.ravel(), A_eq=onp.vstack([rows, cols]), b_eq=onp.concatenate([a, b]), bounds=(0.0, None),
                  method="highs", options={"primal_feasibility_tolerance": 1e-10,
                                           "dual_feasibility_tolerance": 1e-10})
    if res.status != 0:
        raise RuntimeError(f"ot_plan: linprog (HiGHS) did not find the optimum: {res.message}")
    plan = onp.maximum(res.x.reshape(n, m), 0.0)  # HiGHS may return −0.0 or −1e-18 at bounds
    return plan, float(onp.sum(plan * C))


def plan_cost(plan, C):
    """⟨π, C⟩, a float."""
    return float(onp.sum(plan * C))


def bridge_epsilon(sigma):
    """ε = 2σ²: the entropic regularisation whose plan pairs with the bridge σ√(t(1 − t)).

    Derivation: derivations/10-couplings.md (CPL.8)
    """
    sigma = as_finite_float(sigma, "sigma", lo=0.0, lo_open=True)
    return 2.0 * sigma**2


@dataclasses.dataclass(frozen=True)
class SinkhornResult:
    """The entropic plan and how it was reached.

    plan : shape (n, m), π_ij = a_i b_j exp((f_i + g_j − C_ij)/ε)
    f, g : shapes (n,), (m,), the dual potentials
    iterations : number of (f, g) updates made
    marginal_error : ‖π1 − a‖₁ at the stop (πᵀ1 = b holds to rounding after a g-update)
    objective : ⟨π, C⟩ + ε KL(π ‖ a bᵀ) at the returned plan
    """

    plan: onp.ndarray
    f: onp.ndarray
    g: onp.ndarray
    iterations: int
    marginal_error: float
    objective: float


def sinkhorn(x_0, x_1, epsilon, a=None, b=None, tol=SINKHORN_TOL, max_iter=SINKHORN_MAX_ITER):
    """Entropic OT by log-domain Sinkhorn: min_π ⟨π, C⟩ + ε KL(π ‖ a bᵀ) over couplings of a, b.

    Iterations (CPL.7), starting from g = 0:
        f_i ← −ε log Σ_j b_j exp((g_j − C_ij)/ε),   g_j ← −ε log Σ_i a_i exp((f_i − C_ij)/ε).
    One iteration is an f- and a g-update. After each g-update πᵀ1 = b exactly (to
    rounding); the loop stops at the first iteration with ‖π1 − a‖₁ ≤ tol and raises ``RuntimeError`` if that has not happened after
    ``max_iter`` iterations (it never returns a plan that misses its marginals).

    Parameters
    ----------
    x_0 : array, shape (n, d);  x_1 : array, shape (m, d)
    epsilon : float > 0 (``bridge_epsilon(σ)`` for SB-CFM)
    a, b : positive weights, shapes (n,), (m,), summing to 1 (uniform if omitted)
    tol : float > 0, the L1 marginal error at which to stop
    max_iter : int

    Returns
    -------
    SinkhornResult

    Derivation: derivations/10-couplings.md (CPL.6) (CPL.7)
    """
    C = cost_matrix(x_0, x_1)
    n, m = C.shape
    epsilon = as_finite_float(epsilon, "epsilon", lo=0.0, lo_open=True)
    tol = as_finite_float(tol, "tol", lo=0.0, lo_open=True)
    max_iter = as_positive_int(max_iter, "max_iter")
    a, b = _weights(a, n, "a", positive=True), _weights(b, m, "b", positive=True)
    log_a, log_b, K = onp.log(a), onp.log(b), -C / epsilon
    plain = float(C.max()) / epsilon <= PLAIN_DOMAIN_MAX
    if plain:
        # e^{−C/ε} ≥ e^{−50}: each log-sum-exp is the log of a matrix-vector product
        E = onp.exp(K)

        def lse_rows(h):  # log Σ_j exp(K_ij + h_j)
            return onp.log(E @ onp.exp(h))

        def lse_cols(h):  # log Σ_i exp(K_ij + h_i)
            return onp.log(E.T @ onp.exp(h))
    else:
        work = onp.empty_like(K)

        def lse_rows(h):
            return _logsumexp(onp.add(K, h[None, :], out=work), axis=1)

        def lse_cols(h):
            return _logsumexp(onp.add(K, h[:, None], out=work), axis=0)
    # lse_i = log Σ_j b_j exp((g_j − C_ij)/ε): the f-update's sum is also the row marginal,
    # π1 = a exp(f/ε + lse), so each iteration costs two log-sum-exps
    lse = lse_rows(log_b)
    f = -epsilon * lse
    for it in range(1, max_iter + 1):
        g = -epsilon * lse_cols(log_a + f / epsilon)
        lse = lse_rows(log_b + g / epsilon)
        err = float(onp.sum(a * onp.abs(onp.expm1(f / epsilon + lse))))
        if err <= tol:
            plan = (onp.outer(onp.exp(log_a + f / epsilon), onp.exp(log_b + g / epsilon)) * E if plain
                    else onp.exp(log_a[:, None] + log_b[None, :] + (f[:, None] + g[None, :]) / epsilon + K))
            # ε KL(π ‖ abᵀ) = Σ π_ij (f_i + g_j − C_ij), so the objective ⟨π, C⟩ + ε KL is
            # ⟨f, π1⟩ + ⟨g, πᵀ1⟩ (CPL.6), without a log of the n × m plan
            objective = float(f @ plan.sum(axis=1) + g @ plan.sum(axis=0))
            return SinkhornResult(plan, f, g, it, err, objective)
        f = -epsilon * lse
    raise RuntimeError(f"sinkhorn: marginal error {err:.3e} > tol = {tol:g} after max_iter = {max_iter} "
                       f"iterations (epsilon = {epsilon:g}, max C = {float(C.max()):.3g}); raise max_iter, "
                       "epsilon or tol")


def _logsumexp(M, axis):
    """log Σ exp along an axis of a finite array, max-shifted; overwrites M (a scratch array)."""
    mx = onp.max(M, axis=axis, keepdims=True)
    onp.subtract(M, mx, out=M)
    onp.exp(M, out=M)
    return onp.squeeze(mx, axis) + onp.log(onp.sum(M, axis=axis))


def sample_pairs(plan, n, rng):
    """Draw n index pairs (i, j) with probability π_ij (with replacement).

    Parameters
    ----------
    plan : array, shape (n0, n1), non-negative, summing to 1
    n : int
    rng : numpy.random.Generator

    Returns
    -------
    i, j : ndarrays of int, shape (n,) each

    Derivation: derivations/10-couplings.md (CPL.5)
    """
    plan = as_float_array(plan, "plan")
    if plan.ndim != 2:
        raise ValueError(f"plan: expected a 2-D array (n0, n1), got shape {plan.shape}")
    p = _weights(plan.ravel(), plan.size, "plan")
    return _draw_pairs(p.reshape(plan.shape), as_positive_int(n, "n"), as_generator(rng))


def _draw_pairs(plan, n, rng):
    """``sample_pairs`` on a validated non-negative plan (any positive total): inverse-CDF
    draws over the flattened plan, k the first index whose cumulative probability exceeds
    a uniform u ∈ [0, 1) (a zero entry is never drawn)."""
    cdf = onp.cumsum(plan.ravel())
    cdf /= cdf[-1]
    k = onp.searchsorted(cdf, rng.random(n), side="right")
    return k // plan.shape[1], k % plan.shape[1]


class IndependentCoupling:
    """Pairs the batches as drawn (x₀ independent of x₁): I-CFM.

    Derivation: derivations/10-couplings.md (CPL.4)
    """

    name = "independent"

    def __call__(self, x_0, x_1, rng):
        return x_0, x_1

    def __repr__(self):
        return "IndependentCoupling()"


class ExactOTCoupling:
    """Re-pairs a batch by the exact OT permutation: every x₀ and every x₁ used once (OT-CFM).

    Derivation: derivations/10-couplings.md (CPL.4)
    """

    name = "ot"

    def __call__(self, x_0, x_1, rng):
        perm, _ = ot_permutation(x_0, x_1)
        return x_0, x_1[perm]

    def __repr__(self):
        return "ExactOTCoupling()"


class EntropicCoupling:
    """Draws n pairs from the entropic plan of the batch, ε = 2σ² (SB-CFM with the bridge σ).

    Derivation: derivations/10-couplings.md (CPL.8)
    """

    name = "entropic"

    def __init__(self, sigma, tol=SINKHORN_TOL, max_iter=SINKHORN_MAX_ITER):
        self.sigma = as_finite_float(sigma, "sigma", lo=0.0, lo_open=True)
        self.epsilon, self.tol, self.max_iter = bridge_epsilon(sigma), tol, max_iter

    def __call__(self, x_0, x_1, rng):
        res = sinkhorn(x_0, x_1, self.epsilon, tol=self.tol, max_iter=self.max_iter)
        i, j = _draw_pairs(res.plan, x_0.shape[0], rng)  # sinkhorn's plan: finite, non-negative
        return x_0[i], x_1[j]

    def __repr__(self):
        return f"EntropicCoupling(sigma={self.sigma!r})"
