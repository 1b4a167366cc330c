"""Theorem checks of the couplings: OT plans, Sinkhorn, the pair-conditioned marginals
(Theorems 1 and 2), the Gaussian population fields and the change of schedule.

The measuring functions take their inputs (and, where a check must be able to fail, a
replacement for the quantity under test), so the tests run them on drawn cases and on
deliberately wrong inputs; the registered checks run them on fixed cases.
"""
import itertools

import autograd.numpy as np
import numpy as onp
from autograd import grad
from scipy.integrate import solve_ivp
from scipy.optimize import minimize

from ..couplings.closed_form import PairMixture
from ..couplings.evaluate import straightness
from ..couplings.gaussian import (GaussianCouplingField, entropic_cross_covariance, monge_map,
                                  wasserstein2_gaussian)
from ..couplings.paths import BrownianBridge, ConstantSigma
from ..couplings.plans import SINKHORN_TOL, cost_matrix, ot_permutation, ot_plan, sinkhorn
from ..couplings.schedule import change_schedule, schedule_map
from ..distributions import GaussianMixture
from ..losses import _gauss_legendre, _gaussian_rule
from ..marginal import marginal_velocity
from ..nn import MLP
from ..paths import VP, CondOT, Cosine, LinearVP, Polynomial
from ..train import tree_flatten
from . import register
from .foundation import AUTOGRAD_RTOL, CONTINUITY_RTOL, example_target, rel_err, residual_of_continuity

__all__ = ["enumeration_gap", "lp_marginal_error", "entropic_dual_solve", "sinkhorn_epsilon_gap",
           "pair_continuity_residual", "pair_gradient_gap_quadrature", "gaussian_continuity_residual",
           "schedule_change_error", "schedule_ode_error", "example_sets", "example_gaussians"]

# Identities between closed forms (an assignment's cost against the minimum over all
# permutations; two float64 sums of the same n terms in another order): a few ulps.
CLOSED_RTOL = 1e-12
# LP marginals: HiGHS is asked for primal feasibility 1e-10; vertex solutions meet the
# equalities to rounding (measured ≤ 4e-16).
LP_MARGINAL_TOL = 1e-12
# Sinkhorn (stopped at ‖π1 − a‖₁ ≤ 1e-13) against the entropic dual maximised by Newton's
# method (trust-exact) to gradient ~1e-14: both within ~1e-13 of the optimum; 1e-10
# leaves a factor ≥ 100 (measured ≤ 3e-13).
DUAL_RTOL = 1e-10
# Quadrature gradient gap for the pair mixture (trapezoid nodes, exponential convergence;
# measured 6e-12 and 5e-10 at 64 nodes, ≤ 6e-13 at 96, in d = 1).
QUAD_GAP = 1e-9
# The schedule change: root finding to 4 ulps and u evaluated at another point (the issue's
# bound; measured ≤ 2e-13 over every ordered pair of the six paths).
SCHEDULE_RTOL = 1e-10
# ODE mapping: two DOP853 solves at rtol = atol = 1e-11 of fields of size ~10, over unit time.
ODE_TOL, ODE_BOUND = 1e-11, 1e-8
# Straightness by the augmented solve at rtol = atol = 1e-10 (energy ~10, error ≤ 1e-9).
STRAIGHT_SOLVE_TOL, STRAIGHT_BOUND = 1e-10, 1e-7


def example_sets(seed=0, n0=3, n1=4, d=2, weights=False):
    """Two small fixed point sets (x₀ around 0, x₁ shifted), and random weights if asked."""
    rng = onp.random.default_rng(seed)
    x_0, x_1 = rng.normal(0.0, 1.0, (n0, d)), rng.normal(0.0, 1.0, (n1, d)) + onp.linspace(1.0, 2.0, d)
    if not weights:
        return x_0, x_1, None, None
    a, b = rng.uniform(0.2, 1.0, n0), rng.uniform(0.2, 1.0, n1)
    return x_0, x_1, a / a.sum(), b / b.sum()


def example_gaussians(d=2, seed=0):
    """(m0, S0, m1, S1), well-conditioned."""
    rng = onp.random.default_rng(seed)
    A, B = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    return (rng.normal(size=d), A @ A.T / d + 0.5 * onp.eye(d), rng.normal(size=d) + 2.0,
            B @ B.T / d + 0.2 * onp.eye(d))


# ------------------------------------------------------------------ (a) OT plans


def enumeration_gap(x_0, x_1, perm=None):
    """|cost(perm) − min over all n! permutations| / min, perm from ``ot_permutation`` by
    default (a wrong permutation must give a gap), and the LP optimum's relative gap.

    Derivation: derivations/10-couplings.md (CPL.4)
    """
    C = cost_matrix(x_0, x_1)
    n = C.shape[0]
    if perm is None:
        perm, _ = ot_permutation(x_0, x_1)
    perms = onp.array(list(itertools.permutations(range(n))))
    best = float(onp.min(C[onp.arange(n), perms].sum(axis=1))) / n
    got = float(C[onp.arange(n), perm].sum()) / n
    _, lp = ot_plan(x_0, x_1)
    return abs(got - best) / best, abs(lp - best) / best


def lp_marginal_error(x_0, x_1, a, b):
    """max(|π1 − a|, |πᵀ1 − b|, max(−π, 0)) of the LP plan.  Derivation: derivations/10-couplings.md (CPL.5)"""
    plan, _ = ot_plan(x_0, x_1, a, b)
    return float(max(onp.max(onp.abs(plan.sum(1) - a)), onp.max(onp.abs(plan.sum(0) - b)), -plan.min()))


def entropic_dual_solve(C, a, b, epsilon):
    """Maximise the entropic dual D(f, g) = ⟨f, a⟩ + ⟨g, b⟩ − ε Σ a_i b_j (e^{(f_i + g_j − C_ij)/ε} − 1)
    with ``scipy.optimize.minimize`` (trust-exact with the analytic gradient and Hessian,
    g_m = 0 fixing the constant shared by f and g), finished by Newton steps on the same
    Hessian: an independent route to the entropic optimum. Returns (objective, plan).

    Derivation: derivations/10-couplings.md (CPL.6)
    """
    n, m = C.shape
    log_ab = onp.log(a)[:, None] + onp.log(b)[None, :]

    def plan_of(z):
        f, g = z[:n], onp.concatenate([z[n:], [0.0]])
        return f, g, onp.exp(log_ab + (f[:, None] + g[None, :] - C) / epsilon)

    def neg_dual(z):
        f, g, plan = plan_of(z)
        val = f @ a + g @ b - epsilon * (plan.sum() - 1.0)
        return -val, -onp.concatenate([a - plan.sum(1), (b - plan.sum(0))[:-1]])

    def hess(z):
        plan = plan_of(z)[2]
        return onp.block([[onp.diag(plan.sum(1)), plan[:, :-1]],
                          [plan[:, :-1].T, onp.diag(plan.sum(0)[:-1])]]) / epsilon

    res = minimize(neg_dual, onp.zeros(n + m - 1), jac=True, hess=hess, method="trust-exact",
                   options={"gtol": 1e-14, "maxiter": 1000})
    z = res.x
    for _ in range(20):  # trust-exact may stop at gradient ~1e-8 ("precision loss"): Newton steps finish
        val, jac = neg_dual(z)
        if onp.max(onp.abs(jac)) <= 1e-15:
            break
        z = z - onp.linalg.solve(hess(z), jac)
    return -float(neg_dual(z)[0]), plan_of(z)[2]


def sinkhorn_epsilon_gap(x_0, x_1, epsilons, a=None, b=None):
    """max over ε of (⟨π_ε, C⟩ − OT) / (ε log min(n, m) + tol · max C) (≤ 1 by CPL.6's bound),
    and ‖π_ε − π₀‖₁ at each ε (π₀ the LP plan).

    Derivation: derivations/10-couplings.md (CPL.6)
    """
    C = cost_matrix(x_0, x_1)
    plan0, ot = ot_plan(x_0, x_1, a, b)
    ratios, dists = [], []
    for eps in epsilons:
        res = sinkhorn(x_0, x_1, eps, a, b, max_iter=200_000)
        ratios.append((float(onp.sum(res.plan * C)) - ot) / (eps * onp.log(min(C.shape)) + SINKHORN_TOL * C.max()))
        dists.append(float(onp.sum(onp.abs(res.plan - plan0))))
    return max(ratios), dists


# ------------------------------------------------------------------ (b) Theorems 1 and 2


def pair_continuity_residual(mixture, x, t, velocity=None):
    """The continuity residual (CE.5) of the pair mixture's closed-form p_t and u_t (or a
    replacement ``velocity``), by autograd.  Derivation: derivations/10-couplings.md (CPL.10)"""
    return residual_of_continuity(mixture.log_prob, velocity or mixture.velocity, x, t)


def mixture_points(mixture, t, seed):
    """One point x ~ p_t per time t (pairs drawn from the plan, then the path's noise)."""
    rng = onp.random.default_rng(seed)
    i, j = mixture.components()
    k = rng.choice(len(i), size=len(t), p=mixture.plan[i, j])
    return mixture.path.sample(mixture.x_0[i[k]], mixture.x_1[j[k]], t, rng.standard_normal((len(t), mixture.dim)))


def _pair_quadrature(mixture, n_t, n_x, t_min, t_max):
    """Nodes t, x = m_k(t) + σ_t z, the CFM targets x₁ⱼ − x₀ᵢ + σ'_t z, and weights."""
    t_nodes, t_w = _gauss_legendre(n_t, t_min, t_max)
    z, zw = _gaussian_rule(n_x, mixture.dim)
    i, j = mixture.components()
    ts, xs, us, ws = [], [], [], []
    for t, tw in zip(t_nodes, t_w):
        s, ds = float(mixture.path._sigma(t)), float(mixture.path._d_sigma(t))
        for i_k, j_k in zip(i, j):
            xs.append((1.0 - t) * mixture.x_0[i_k] + t * mixture.x_1[j_k] + s * z)
            us.append(mixture.x_1[j_k] - mixture.x_0[i_k] + ds * z)
            ws.append(tw * mixture.plan[i_k, j_k] * zw)
            ts.append(onp.full(len(zw), t))
    return onp.concatenate(ts), onp.concatenate(xs), onp.concatenate(us), onp.concatenate(ws) / (t_max - t_min)


def pair_gradient_gap_quadrature(model, params, mixture, n_t=8, n_x=96, t_min=0.05, t_max=0.95, velocity=None):
    """‖∇θ L_CFM − ∇θ L_FM‖ / ‖∇θ L_CFM‖ for a pair-conditioned path and a fixed coupling,
    both losses by the same deterministic rule: L_CFM regresses on u_t(x | z), L_FM on the
    closed-form marginal velocity (or ``velocity(x, t)``).

    Derivation: derivations/10-couplings.md (CPL.10)
    """
    t, x, u_cond, w = _pair_quadrature(mixture, n_t, n_x, t_min, t_max)
    u_marg = (velocity or mixture.velocity)(x, t)

    def loss(p, target):
        return np.sum(w * np.sum((model(p, x, t) - target) ** 2, axis=1))

    g_cfm = tree_flatten(grad(lambda p: loss(p, u_cond))(params))
    g_fm = tree_flatten(grad(lambda p: loss(p, u_marg))(params))
    return float(onp.linalg.norm(g_cfm - g_fm) / onp.linalg.norm(g_cfm))


# ------------------------------------------------------------------ (c) Gaussians


def gaussian_continuity_residual(field, t, seed=0, velocity=None):
    """The continuity residual of N(m_t, Σ_t) and the linear field u_t (or ``velocity``), x ~ p_t.

    Derivation: derivations/10-couplings.md (CPL.11)
    """
    rng = onp.random.default_rng(seed)
    L = onp.linalg.cholesky(field.cov(t))
    x = field.mean(t) + onp.einsum("nij,nj->ni", L, rng.standard_normal((len(t), field.dim)))
    return residual_of_continuity(field.log_prob, velocity or field.velocity, x, t)


def gaussian_fields(d=2, seed=0, sigma=0.5):
    """(name, field) for the independent, OT (σ = 0 and σ > 0) and entropic-bridge couplings."""
    g = example_gaussians(d, seed)
    return [("independent", GaussianCouplingField.independent(*g, ConstantSigma(0.0))),
            ("independent-sigma", GaussianCouplingField.independent(*g, ConstantSigma(sigma))),
            ("ot", GaussianCouplingField.optimal(*g, ConstantSigma(0.0))),
            ("ot-sigma", GaussianCouplingField.optimal(*g, ConstantSigma(sigma))),
            ("sb-bridge", GaussianCouplingField.entropic(*g, BrownianBridge(sigma)))]


# ------------------------------------------------------------------ (d) schedule change


def all_paths_with_zero_noise():
    """The six paths of the vectors (CondOT with σ_min = 0 and 0.01)."""
    return [CondOT(0.0), CondOT(0.01), VP(), LinearVP(), Cosine(), Polynomial(2.0)]


def schedule_change_error(target, path_from, path_to, x, r, velocity=None):
    """Relative error of the converted source velocity (the closed-form marginal, or
    ``velocity``) against the target path's closed-form marginal velocity.

    Derivation: derivations/10-couplings.md (CPL.16)
    """
    u = velocity or (lambda x_, t_: marginal_velocity(target, path_from, x_, t_))
    return rel_err(change_schedule(u, path_from, path_to, x, r), marginal_velocity(target, path_to, x, r))


def schedule_ode_error(target, path_from, path_to, x, r0, r1):
    """max |x̄(r1) − s_{r1} x(t_{r1})| / max |x̄(r1)|: the target path's ODE from r0 against the
    source path's ODE from t_{r0} started at x / s_{r0}, both DOP853 at rtol = atol = ODE_TOL.

    Derivation: derivations/10-couplings.md (CPL.15)
    """
    n, d = x.shape

    def solve(path, a, b, y0):
        rhs = lambda s, y: marginal_velocity(target, path, y.reshape(n, d), onp.full(n, s)).ravel()  # noqa: E731
        sol = solve_ivp(rhs, (a, b), y0.ravel(), method="DOP853", rtol=ODE_TOL, atol=ODE_TOL)
        if sol.status != 0:
            raise RuntimeError(f"solve_ivp failed: {sol.message}")
        return sol.y[:, -1].reshape(n, d)

    (t0, t1), (s0, s1), _, _ = schedule_map(path_from, path_to, onp.array([r0, r1]))
    x_bar = solve(path_to, r0, r1, x)
    x_src = solve(path_from, t0, t1, x / s0)
    return float(onp.max(onp.abs(x_bar - s1 * x_src)) / onp.max(onp.abs(x_bar)))


# ------------------------------------------------------------------ registered checks


@register("ot-enumeration", "OT cost: linear_sum_assignment and the LP vs the minimum over all n! permutations, "
          "n = 2..7", "couplings")
def check_ot_enumeration():
    worst = 0.0
    for n in range(2, 8):
        x_0, x_1, _, _ = example_sets(seed=n, n0=n, n1=n)
        worst = max(worst, *enumeration_gap(x_0, x_1))
    return worst, CLOSED_RTOL, "the same sum of n squared distances in another order: a few ulps"


@register("lp-marginals", "LP plan (HiGHS) for 5 × 7 points with random weights: marginal error and "
          "negativity", "couplings")
def check_lp_marginals():
    return lp_marginal_error(*example_sets(seed=11, n0=5, n1=7, weights=True)), LP_MARGINAL_TOL, \
        "vertex solutions meet the equalities to rounding (HiGHS asked for 1e-10)"


@register("sinkhorn-marginals", "Sinkhorn's ‖π1 − a‖₁ at its stop ≤ tol, and ‖πᵀ1 − b‖₁, for ε ∈ {1, 0.3, 0.1}",
          "couplings")
def check_sinkhorn_marginals():
    x_0, x_1, a, b = example_sets(seed=12, n0=5, n1=7, weights=True)
    worst = 0.0
    for eps in (1.0, 0.3, 0.1):
        res = sinkhorn(x_0, x_1, eps, a, b)
        worst = max(worst, float(onp.sum(onp.abs(res.plan.sum(1) - a))), float(onp.sum(onp.abs(res.plan.sum(0) - b))))
    return worst, SINKHORN_TOL, "the stopping rule itself (the column marginal is exact after a g-update)"


@register("sinkhorn-vs-dual", "Sinkhorn's entropic objective vs the dual maximised by scipy.optimize.minimize "
          "(trust-exact)", "couplings")
def check_sinkhorn_dual():
    x_0, x_1, a, b = example_sets(seed=13, n0=4, n1=5, weights=True)
    C, worst = cost_matrix(x_0, x_1), 0.0
    for eps in (2.0, 0.5):
        res = sinkhorn(x_0, x_1, eps, a, b, tol=1e-13)
        obj, plan = entropic_dual_solve(C, a, b, eps)
        worst = max(worst, abs(res.objective - obj) / abs(obj), float(onp.max(onp.abs(res.plan - plan))))
    return worst, DUAL_RTOL, "both within ~1e-13 of the optimum; measured ≤ 1e-12"


@register("sinkhorn-eps-to-zero", "(⟨π_ε, C⟩ − OT) / (ε log n): ≤ 1 for ε ∈ {1, 0.3, 0.1, 0.03} (max C ≈ 9)",
          "couplings")
def check_sinkhorn_epsilon():
    x_0, x_1, a, b = example_sets(seed=14, n0=5, n1=6, weights=True)
    ratio, _ = sinkhorn_epsilon_gap(x_0 + 1.0, x_1, (1.0, 0.3, 0.1, 0.03), a, b)
    return ratio, 1.0, "0 ≤ ⟨π_ε, C⟩ − OT ≤ ε KL(π₀ ‖ a bᵀ) ≤ ε log min(n, m), plus tol · max C for the stop"


@register("thm1-pair-mixture", "∂_t p_t + ∇·(p_t u_t) = 0 by autograd, 2 pair paths × 3 couplings, d = 2",
          "couplings")
def check_pair_theorem_1():
    x_0, x_1, _, _ = example_sets(seed=15)
    plans = [None, ot_plan(x_0, x_1)[0], sinkhorn(x_0, x_1, 0.5).plan]
    worst, t = 0.0, onp.linspace(0.05, 0.95, 10)
    for path in (ConstantSigma(0.3), BrownianBridge(0.6)):
        for k, plan in enumerate(plans):
            mixture = PairMixture(x_0, x_1, plan, path)
            worst = max(worst, pair_continuity_residual(mixture, mixture_points(mixture, t, k), t))
    return worst, CONTINUITY_RTOL, "relative to |∂_t p| + |∇·(pu)| (CE.5); measured ~1e-15"


@register("thm2-pair-quadrature", "‖∇L_CFM − ∇L_FM‖/‖∇L_CFM‖ by quadrature, 2 × 3 points in d = 1, "
          "entropic plan, 2 pair paths", "couplings")
def check_pair_theorem_2():
    x_0, x_1, _, _ = example_sets(seed=16, n0=2, n1=3, d=1)
    plan = sinkhorn(x_0, x_1, 0.5).plan
    model = MLP(1, (8,))
    params = model.init(onp.random.default_rng(17))
    worst = max(pair_gradient_gap_quadrature(model, params, PairMixture(x_0, x_1, plan, path))
                for path in (ConstantSigma(0.3), BrownianBridge(0.6)))
    return worst, QUAD_GAP, "96 trapezoid nodes per pair and 8 Gauss–Legendre times; gap falls exponentially"


@register("gaussian-fields-thm1", "continuity residual of N(m_t, Σ_t) and the linear field: independent, OT, "
          "entropic-bridge couplings, d = 2", "couplings")
def check_gaussian_fields():
    t = onp.linspace(0.05, 0.95, 10)
    return max(gaussian_continuity_residual(f, t, k) for k, (_, f) in enumerate(gaussian_fields())), \
        CONTINUITY_RTOL, "relative to |∂_t p| + |∇·(pu)| (CE.5); measured ~1e-15"


@register("gaussian-ot-map", "OT field at the displacement x_t vs T(x₀) − x₀ (Monge map); entropic plan's "
          "joint precision block vs −(2/ε)I; independent field vs marginal.py", "couplings")
def check_gaussian_closed_forms():
    m0, S0, m1, S1 = example_gaussians(3, 1)
    rng = onp.random.default_rng(18)
    A = monge_map(S0, S1)
    x0 = m0 + rng.standard_normal((20, 3)) @ onp.linalg.cholesky(S0).T
    t = rng.uniform(0.0, 1.0, 20)
    tx = m1 + (x0 - m0) @ A
    field = GaussianCouplingField.optimal(m0, S0, m1, S1, ConstantSigma(0.0))
    errs = [rel_err(field.velocity((1 - t)[:, None] * x0 + t[:, None] * tx, t), tx - x0)]
    for eps in (0.1, 1.0, 5.0):
        C = entropic_cross_covariance(S0, S1, eps)
        P = onp.linalg.inv(onp.block([[S0, C], [C.T, S1]]))
        errs.append(rel_err(P[:3, 3:], -(2.0 / eps) * onp.eye(3)))
    indep = GaussianCouplingField.independent(onp.zeros(3), onp.eye(3), m1, S1, ConstantSigma(0.0))
    errs.append(rel_err(indep.velocity(tx, t), marginal_velocity(GaussianMixture(m1[None], S1[None]), CondOT(0.0), tx, t)))
    return max(errs), AUTOGRAD_RTOL, "matrix square roots and solves of conditioned matrices (cond ≤ 1e2)"


@register("straightness", "∫₀¹ E‖u_t‖² dt (Gauss–Legendre) vs W₂² (Bures) for the OT displacement; "
          "trajectory gap ∫‖v‖² − ‖x₁ − x₀‖² by ODE", "couplings")
def check_straightness():
    g = example_gaussians(2, 2)
    field = GaussianCouplingField.optimal(*g, ConstantSigma(0.0))
    t, w = _gauss_legendre(8, 0.0, 1.0)
    energy = float(onp.sum(w * field.kinetic_energy(t)))
    quad = abs(energy - wasserstein2_gaussian(*g)) / wasserstein2_gaussian(*g)
    x0 = g[0] + onp.random.default_rng(19).standard_normal((20, 2)) @ onp.linalg.cholesky(g[1]).T
    gap, e, _ = straightness(field.velocity, x0, STRAIGHT_SOLVE_TOL, STRAIGHT_SOLVE_TOL)
    return max(quad / CLOSED_RTOL, abs(gap) / e / STRAIGHT_BOUND), 1.0, \
        f"in units of the bounds: {CLOSED_RTOL:g} (closed forms) and {STRAIGHT_BOUND:g} (ODE at rtol 1e-10)"


@register("schedule-change", "converted marginal velocity vs the target path's closed form, all ordered pairs "
          "of 6 paths where defined", "couplings")
def check_schedule_change():
    target = example_target()
    x = onp.random.default_rng(20).normal(0.0, 2.0, (12, 2))
    r = onp.linspace(0.05, 0.95, 12)
    worst = 0.0
    for a, b in itertools.product(all_paths_with_zero_noise(), repeat=2):
        keep = [k for k in range(12) if _defined(a, b, r[k])]
        if keep:
            worst = max(worst, schedule_change_error(target, a, b, x[keep], r[keep]))
    return worst, SCHEDULE_RTOL, "root finding to 4 ulps; measured ≤ 2e-13"


def _defined(path_from, path_to, r):
    try:
        schedule_map(path_from, path_to, r)
        return True
    except ValueError:
        return False


@register("schedule-change-ode", "ODE of the target path vs s_r × (ODE of the source path at t_r), "
          "CondOT → Cosine and VP → CondOT", "couplings")
def check_schedule_ode():
    target = example_target()
    x = onp.random.default_rng(21).normal(0.0, 1.0, (4, 2))
    worst = max(schedule_ode_error(target, CondOT(0.0), Cosine(), x, 0.1, 0.9),
                schedule_ode_error(target, VP(), CondOT(0.0), x, 0.1, 0.9))
    return worst, ODE_BOUND, f"two DOP853 solves at rtol = atol = {ODE_TOL:g} over unit time"
