"""Reference-vector cases of the couplings: an exact OT permutation and an entropic plan
for fixed batches, the pair-conditioned paths (x_t and u_t), the Gaussian OT field and
the change of schedule between affine paths.

Derivation: derivations/10-couplings.md (CPL.1) to (CPL.16); tolerances as in
derivations/08-evaluation.md (EVAL.5).
"""
import numpy as np

__all__ = ["COUPLING_BUILDERS", "COUPLING_FLOAT32", "make_pair_path"]


def _tol(abs_, rel, reason):
    return {"abs": abs_, "rel": rel, "reason": reason}


# Closed forms (pair paths): a few ulps per operation, as the other closed-form kinds (EVAL.5).
TOL_PAIR = _tol(1e-14, 1e-12, "closed form in float64: a few ulps per operation; 1e-12 relative is 4 orders "
                              "above rounding and far below any formula error (EVAL.5)")
# An assignment is a set of integers and its cost a sum of n squared distances.
TOL_ASSIGN = _tol(1e-12, 1e-12, "a permutation (integers, exact) and a sum of 6 squared distances (a few ulps); "
                                "any other permutation differs by O(1) (EVAL.5)")
# Sinkhorn stopped at ‖π1 − a‖₁ ≤ 1e-13: the plan is within ~κ·1e-13 of the optimum, κ ≈ max C/ε ≈ 40
# here; measured against a Newton solve of the dual: ≤ 3e-13.
TOL_ENTROPIC = _tol(1e-11, 1e-9, "Sinkhorn stopped at L1 marginal error 1e-13; the plan's distance from the "
                                 "optimum is that times the dual's conditioning (~max C/eps = 40): 4e-12 "
                                 "(EVAL.5); a wrong eps or a missing a_i b_j factor is O(1e-2)")
# Matrix square roots (eigh) and a linear solve of Σ_t (condition numbers ≤ 1e2 here).
TOL_GAUSS = _tol(1e-12, 1e-10, "symmetric square roots by eigh and a solve with Sigma_t (cond <= 1e2): "
                               "~1e2 ulps; 1e-10 leaves a factor ~100 (EVAL.5)")
# The schedule change: t_r by root finding to 4 ulps; ṫ_r, ṡ_r from it through quotients.
TOL_SCHEDULE = _tol(1e-13, 1e-11, "t_r is a root found to 4 ulps; s_r, dt_r/dr, ds_r/dr follow through a few "
                                  "quotients (~100 ulps near t = 0 where alpha_t is small) (EVAL.5)")


#: The float32 tier of these kinds (``fm-ref check --tier float32``), set by reasoning with a
#: factor >= 10 over float32 rounding (ε₃₂ = 1.2e-7), not measured with a float32 port.
COUPLING_FLOAT32 = {
    "ot_permutation": _tol(1e-5, 1e-5, "float32: a permutation is exact while the best and second-best "
                                       "assignments differ by more than float32 rounding of the costs (~1e-6 "
                                       "relative; the gaps here are 4e-3 and 4e-2); the cost a sum of 7 squares"),
    "entropic_plan": _tol(1e-5, 1e-3, "float32 Sinkhorn: ~1e-6 relative per update times the dual's conditioning "
                                      "(~40); set by reasoning, not measured (EVAL.5)"),
    "pair_path": _tol(1e-5, 1e-4, "float32 closed forms: a few ulps per operation, x5 through the bridge's "
                                  "1/(2t(1 - t)) at t = 0.1; set by reasoning, not measured (EVAL.5)"),
    "gaussian_ot_field": _tol(1e-4, 1e-3, "float32 matrix square roots and a solve (cond <= 1e2): ~1e-5 relative; "
                                          "set by reasoning, not measured (EVAL.5)"),
    "schedule_change": _tol(1e-4, 1e-3, "float32 root of alpha - rho sigma (~1e-7 in t) carried through quotients "
                                        "and alpha_t ~ 7e-3 for VP; set by reasoning, not measured (EVAL.5)"),
}


def make_pair_path(spec):
    """A pair path from its spec {'name': 'constant' | 'bridge', 'sigma': float}."""
    from ..couplings.paths import PAIR_PATHS

    if not isinstance(spec, dict) or spec.get("name") not in PAIR_PATHS:
        raise ValueError(f"path: expected {{'name': one of {sorted(PAIR_PATHS)}, 'sigma': ...}}, got {spec!r}")
    return PAIR_PATHS[spec["name"]](spec["sigma"])


def _ot_permutation_cases():
    from ..couplings.plans import ot_permutation

    cases = []
    for k, (n, d) in enumerate(((6, 2), (7, 3))):
        rng = np.random.default_rng(600 + k)
        x_0, x_1 = rng.normal(size=(n, d)), rng.normal(1.0, 1.5, (n, d))
        perm, cost = ot_permutation(x_0, x_1)
        cases.append({
            "id": f"ot_permutation/n={n}-d={d}", "kind": "ot_permutation",
            "description": "exact OT between two equal-size, equal-weight batches for the cost |x_0i - x_1j|^2: "
                           "x_0[i] is paired with x_1[perm[i]] (every point once); cost = (1/n) sum_i "
                           "|x_0i - x_1perm(i)|^2 (the squared W2 of the two batches)",
            "inputs": {"x_0": x_0, "x_1": x_1},
            "outputs": {"perm": perm.astype(np.float64), "cost": cost},
            "tolerance": TOL_ASSIGN})
    return cases


def _entropic_plan_cases():
    from ..couplings.plans import bridge_epsilon, sinkhorn

    cases = []
    for k, (n, m, sigma) in enumerate(((4, 5, 0.5), (5, 3, 1.0))):
        rng = np.random.default_rng(610 + k)
        x_0, x_1 = rng.normal(size=(n, 2)), rng.normal(1.0, 1.0, (m, 2))
        a, b = rng.uniform(0.2, 1.0, n), rng.uniform(0.2, 1.0, m)
        a, b = a / a.sum(), b / b.sum()
        eps = bridge_epsilon(sigma)
        res = sinkhorn(x_0, x_1, eps, a, b, tol=1e-13)
        cases.append({
            "id": f"entropic_plan/{n}x{m}-sigma={sigma!r}", "kind": "entropic_plan",
            "description": "entropic OT: the plan minimising <pi, C> + eps KL(pi | a b^T) over couplings of a and b, "
                           "C_ij = |x_0i - x_1j|^2, eps = 2 sigma^2 (the Brownian bridge's); objective = "
                           "<pi, C> + eps KL(pi | a b^T). Reference: log-domain Sinkhorn to L1 marginal error 1e-13",
            "inputs": {"x_0": x_0, "x_1": x_1, "a": a, "b": b, "sigma": sigma, "epsilon": eps},
            "outputs": {"plan": res.plan, "objective": res.objective},
            "tolerance": TOL_ENTROPIC})
    return cases


def _pair_path_cases():
    cases = []
    t = np.array([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    for k, spec in enumerate(({"name": "constant", "sigma": 0.0}, {"name": "constant", "sigma": 0.3},
                              {"name": "bridge", "sigma": 0.5})):
        path = make_pair_path(spec)
        tt = t[1:-1] if spec["name"] == "bridge" else t
        note = " (t = 0 and 1 left out: the bridge's velocity is infinite there)" if spec["name"] == "bridge" else ""
        rng = np.random.default_rng(620 + k)
        n = len(tt)
        x_0, x_1, eps, x = (rng.normal(size=(n, 2)), rng.normal(1.0, 1.5, (n, 2)), rng.normal(size=(n, 2)),
                            rng.normal(0.0, 2.0, (n, 2)))
        x_t = path.sample(x_0, x_1, tt, eps)
        cases.append({
            "id": f"pair_path/{spec['name']}-sigma={spec['sigma']!r}", "kind": "pair_path",
            "description": f"{path!r}: x_t = (1 - t) x_0 + t x_1 + sigma_t eps with sigma_t = "
                          + ("sigma" if spec["name"] == "constant" else "sigma sqrt(t (1 - t))")
                          + "; u_t(x | x_0, x_1) = (x_1 - x_0) + (sigma'_t / sigma_t)(x - mu_t) at x_t and at free "
                            f"points x{note}",
            "inputs": {"path": spec, "t": tt, "x_0": x_0, "x_1": x_1, "eps": eps, "x": x},
            "outputs": {"x_t": x_t, "u_t_at_x_t": path.conditional_velocity(x_t, x_0, x_1, tt),
                        "u_t_at_x": path.conditional_velocity(x, x_0, x_1, tt)},
            "tolerance": TOL_PAIR})
    return cases


def _gaussian_ot_field_cases():
    from ..couplings.gaussian import GaussianCouplingField, monge_map, wasserstein2_gaussian
    from ..couplings.paths import ConstantSigma

    cases = []
    for k, d in enumerate((2, 3)):
        rng = np.random.default_rng(630 + k)
        A, B = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        m0, S0, m1, S1 = rng.normal(size=d), A @ A.T / d + 0.3 * np.eye(d), rng.normal(2.0, 1.0, d), \
            B @ B.T / d + 0.2 * np.eye(d)
        field = GaussianCouplingField.optimal(m0, S0, m1, S1, ConstantSigma(0.0))
        t, x = np.linspace(0.0, 1.0, 6), rng.normal(1.0, 1.5, (6, d))
        cases.append({
            "id": f"gaussian_ot_field/d={d}", "kind": "gaussian_ot_field",
            "description": "OT between N(m0, S0) and N(m1, S1): the Monge map T(x) = m1 + A (x - m0), A = "
                           "S0^-1/2 (S0^1/2 S1 S0^1/2)^1/2 S0^-1/2; the displacement interpolation's velocity "
                           "u_t(x) = (m1 - m0) + (A - I)((1 - t) I + t A)^-1 (x - m_t), m_t = (1 - t) m0 + t m1 "
                           "(OT-CFM's population field); w2_squared = W2(N0, N1)^2",
            "inputs": {"m0": m0, "S0": S0, "m1": m1, "S1": S1, "t": t, "x": x},
            "outputs": {"A": monge_map(S0, S1), "velocity": field.velocity(x, t),
                        "w2_squared": wasserstein2_gaussian(m0, S0, m1, S1)},
            "tolerance": TOL_GAUSS})
    return cases


def _schedule_change_cases():
    from ..couplings.schedule import schedule_map
    from .cases import _path_id, make_path

    pairs = ((("condot", {"sigma_min": 0.0}), ("cosine", {})), (("cosine", {}), ("vp", {"beta_min": 0.1, "beta_max": 20.0})),
             (("vp", {"beta_min": 0.1, "beta_max": 20.0}), ("condot", {"sigma_min": 0.01})),
             (("linear_vp", {}), ("polynomial", {"n": 2.0})))
    r = np.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    cases = []
    for (na, pa), (nb, pb) in pairs:
        src, dst = make_path({"name": na, "params": pa}), make_path({"name": nb, "params": pb})
        t_r, s_r, dt, ds = schedule_map(src, dst, r)
        cases.append({
            "id": f"schedule_change/{_path_id(na, pa)}->{_path_id(nb, pb)}", "kind": "schedule_change",
            "description": f"the change of schedule from {src!r} (alpha, sigma) to {dst!r} (alpha_bar, sigma_bar): "
                           "t_r with alpha(t_r)/sigma(t_r) = alpha_bar(r)/sigma_bar(r), s_r = sigma_bar(r)/sigma(t_r), "
                           "and their r-derivatives; the target path's velocity is "
                           "(ds_r/s_r) x + s_r dt_r u_{t_r}(x / s_r)",
            "inputs": {"path_from": {"name": na, "params": pa}, "path_to": {"name": nb, "params": pb}, "r": r},
            "outputs": {"t_r": t_r, "s_r": s_r, "dt_r": dt, "ds_r": ds},
            "tolerance": TOL_SCHEDULE})
    return cases


COUPLING_BUILDERS = {"ot_permutation": _ot_permutation_cases, "entropic_plan": _entropic_plan_cases,
                     "pair_path": _pair_path_cases, "gaussian_ot_field": _gaussian_ot_field_cases,
                     "schedule_change": _schedule_change_cases}
