"""Sampler vectors: the closed-form flow map of a Gaussian target for every path, and
fixed-step Euler, midpoint, Heun and RK4 trajectories of a given MLP.

A port's integrator can be checked against these step by step (the same grid, the same
update rule, so the same numbers to rounding), not only in the limit of small steps as
the adaptive ``cnf_log_prob`` reference allows.

- ``flow_map``: target q = N(μ, Σ), base N(0, I), independent coupling. The marginal
  velocity is affine in x and its flow from t = 0 is closed-form in the eigenbasis of Σ
  (derivations/03-mixture-marginals.md (MIX.9) (MIX.10)); for a 1-D mixture the flow map
  is F_t⁻¹ ∘ F_0 (MIX.11). A case gives φ_t(x₀) and u_t(φ_t(x₀)) at several t.
- ``fixed_step``: x_{k+1} = x_k + h Σ_i b_i k_i on the grid t_k = k/N (computed as k/N,
  not by summing h), h = t_{k+1} − t_k, for the four explicit Runge–Kutta tableaux of
  derivations/06-cnf.md (CNF.17).
"""
import numpy as np

__all__ = ["gaussian_flow_map", "gaussian_velocity", "mixture_flow_map_1d", "fixed_step_trajectory", "TABLEAUS", "BUILDERS",
           "FLOW_MAP_TARGETS", "FIXED_STEP_SPECS"]

#: Explicit Runge–Kutta tableaux (c, A, b) of the fixed-step samplers (CNF.17).
TABLEAUS = {
    "euler": ((0.0,), ((),), (1.0,)),
    "midpoint": ((0.0, 0.5), ((), (0.5,)), (0.0, 1.0)),
    "heun": ((0.0, 1.0), ((), (1.0,)), (0.5, 0.5)),
    "rk4": ((0.0, 0.5, 0.5, 1.0), ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), (1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6)),
}


def _tol(abs_, rel, reason):
    return {"abs": abs_, "rel": rel, "reason": reason}


# The flow map: an eigendecomposition of a 2x2 or 3x3 Σ whose eigenvalues are ≥ 0.3 apart
# (eigenvectors to ~ε‖Σ‖/gap), square roots and ratios: ~100 ulps; 1e-11 leaves a factor 10.
TOL_FLOW_MAP = _tol(1e-12, 1e-11, "closed form through the eigendecomposition of Sigma (eigenvalue gaps "
                                  ">= 0.3, eigenvectors to ~eps |Sigma|/gap) and square roots: ~100 ulps; "
                                  "a Schur-based matrix square root gives the same to 1e-13 (EVAL.5)")
# Fixed steps: the same rule on the same grid repeats the MLP's rounding (~100 ulps per
# evaluation, TOL_NETWORK) at each of ≤ 4N evaluations, which the flow carries on with
# a growth factor ≤ e^{Lip v} (≈ e² here): ≲ 1e-12 after 64 RK4 evaluations.
TOL_FIXED_STEP = _tol(1e-11, 1e-10, "the same update rule on the same grid: the MLP's rounding (~100 ulps) at "
                                    "each of <= 4N evaluations, carried by the flow (growth <= e^Lip ~ e^2); "
                                    "a wrong coefficient or a shifted stage time is >= 1e-4 (EVAL.5)")

#: (name, mean, covariance) of the Gaussian targets of the flow-map cases.
FLOW_MAP_TARGETS = (
    ("gauss2d", np.array([1.0, -0.5]), np.array([[1.5, 0.6], [0.6, 0.4]])),
    ("gauss3d", np.array([0.5, 0.0, -1.0]), np.diag([0.25, 1.0, 2.25]) + 0.1 * np.ones((3, 3))),
)
#: (name, dim, hidden, activation, time features, seed, steps) of the fixed-step cases.
FIXED_STEP_SPECS = (("tanh-2d", 2, (16, 16), "tanh", 0, 600, (1, 4, 16)),
                    ("swish-3d", 3, (8, 8), "swish", 2, 601, (1, 4, 16)))


def _affine_terms(path, mean, cov, t):
    """(m_t, c_t, c'_t, U): mean α_t μ, eigenvalues c_i = α_t² λ_i + σ_t² of C_t, their
    t-derivatives, and Σ's eigenvectors U (columns). t a float."""
    lam, U = np.linalg.eigh(cov)
    a, s = float(path.alpha_t(t)), float(path.sigma_t(t))
    da, ds = float(path.d_alpha_t(t)), float(path.d_sigma_t(t))
    return a * mean, da * mean, a * a * lam + s * s, 2.0 * (a * da * lam + s * ds), U


def gaussian_velocity(path, mean, cov, x, t):
    """u_t(x) = α'_t μ + U diag(c'_i / 2c_i) Uᵀ (x − α_t μ) for q = N(μ, Σ), shape (n, d).

    Derivation: derivations/03-mixture-marginals.md (MIX.9)
    """
    m, dm, c, dc, U = _affine_terms(path, mean, cov, t)
    return dm + ((x - m) @ U) * (0.5 * dc / c) @ U.T


def gaussian_flow_map(path, mean, cov, x_0, t, s=0.0):
    """φ_{s→t}(x) = α_t μ + U diag(√(c_i(t)/c_i(s))) Uᵀ (x − α_s μ), shape (n, d).

    Derivation: derivations/03-mixture-marginals.md (MIX.10)
    """
    m_s, _, c_s, _, U = _affine_terms(path, mean, cov, s)
    m_t, _, c_t, _, _ = _affine_terms(path, mean, cov, t)
    return m_t + ((x_0 - m_s) @ U) * np.sqrt(c_t / c_s) @ U.T


def _mixture_cdf_1d(path, means, variances, weights, y, t, upper):
    """F_t(y) (or 1 − F_t(y) with upper=True, without cancellation) of p_t for a 1-D mixture."""
    from scipy.special import ndtr

    a, s = float(path.alpha_t(t)), float(path.sigma_t(t))
    z = (y - a * means) / np.sqrt(a * a * variances + s * s)
    return float(np.sum(weights * ndtr(-z if upper else z)))


def mixture_flow_map_1d(path, means, variances, weights, x_0, t):
    """φ_t(x₀) = F_t⁻¹(F_0(x₀)) for a 1-D mixture target, shape (n, 1), by Brent's method.

    The side of the median decides between F and 1 − F, so that no tail probability is
    formed by cancellation; the root is found to ~1e-15 relative.

    Derivation: derivations/03-mixture-marginals.md (MIX.11)
    """
    from scipy.optimize import brentq

    a, s = float(path.alpha_t(t)), float(path.sigma_t(t))
    spread = 50.0 * float(np.sqrt(a * a * np.max(variances) + s * s))
    lo, hi = a * np.min(means) - spread, a * np.max(means) + spread
    out = []
    for x in np.asarray(x_0)[:, 0]:
        upper = _mixture_cdf_1d(path, means, variances, weights, x, 0.0, False) > 0.5
        level = _mixture_cdf_1d(path, means, variances, weights, x, 0.0, upper)
        f = lambda y: _mixture_cdf_1d(path, means, variances, weights, y, t, upper) - level  # noqa: E731
        out.append(brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=200))
    return np.array(out)[:, None]


def fixed_step_trajectory(field, x, steps, method, t0=0.0, t1=1.0):
    """The explicit Runge–Kutta trajectory of dx/dt = field(x, t) on t_k = t0 + (t1 − t0) k/N.

    Parameters
    ----------
    field : callable, (x (n, d), t float) -> (n, d)
    x : array, shape (n, d), the state at t0
    steps : int, N
    method : one of ``TABLEAUS`` ('euler', 'midpoint', 'heun', 'rk4')

    Returns
    -------
    ts : shape (N + 1,); xs : shape (N + 1, n, d), xs[0] = x

    Derivation: derivations/06-cnf.md (CNF.17)
    """
    c, A, b = TABLEAUS[method]
    ts = t0 + (t1 - t0) * (np.arange(steps + 1) / steps)
    xs = [np.asarray(x, dtype=np.float64)]
    for k in range(steps):
        t, h, y = ts[k], ts[k + 1] - ts[k], xs[-1]
        ks = []
        for ci, row in zip(c, A):
            stage = y
            for aij, kj in zip(row, ks):
                if aij != 0.0:
                    stage = stage + (h * aij) * kj
            ks.append(field(stage, t + ci * h))
        incr = sum(bi * ki for bi, ki in zip(b, ks) if bi != 0.0)
        xs.append(y + h * incr)
    return ts, np.stack(xs)


def _flow_map_cases():
    from .cases import PATH_SPECS, _path_id, make_path

    cases = []
    t = np.array([0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
    for j, (tname, mean, cov) in enumerate(FLOW_MAP_TARGETS):
        x_0 = np.random.default_rng(700 + j).normal(size=(4, mean.size))
        for name, params in PATH_SPECS:
            path = make_path({"name": name, "params": params})
            tt = t[:-1] if name in ("vp", "linear_vp") else t  # σ'_1 = −∞ there
            xs = np.stack([gaussian_flow_map(path, mean, cov, x_0, ti) for ti in tt])
            us = np.stack([gaussian_velocity(path, mean, cov, xi, ti) for xi, ti in zip(xs, tt)])
            cases.append({
                "id": f"flow_map/{tname}/{_path_id(name, params)}", "kind": "flow_map",
                "description": f"{path!r}, target N(mean, cov), base N(0, I) at t = 0 (for VP the flow starts "
                               "from p_0 = N(alpha_0 mean, alpha_0^2 cov + sigma_0^2 I)): x_t = phi_t(x_0), the "
                               "flow of the marginal velocity from t = 0, at each t; u_t_at_x_t = u_t(x_t). "
                               "phi_t(x) = alpha_t mean + U diag(sqrt(c_i(t)/c_i(0))) U^T (x - alpha_0 mean), "
                               "c_i = alpha_t^2 lambda_i + sigma_t^2, cov = U diag(lambda) U^T",
                "inputs": {"path": {"name": name, "params": params}, "target": {"mean": mean, "cov": cov},
                           "x_0": x_0, "t": tt},
                "outputs": {"x_t": xs, "u_t_at_x_t": us},
                "tolerance": TOL_FLOW_MAP})
    return cases


def _fixed_step_cases():
    from ..divergence import MLPTrace
    from .cases import _seeded_mlp

    cases = []
    for name, dim, hidden, act, k, seed, all_steps in FIXED_STEP_SPECS:
        spec, mlp, params, rng = _seeded_mlp(dim, hidden, act, k, seed)
        x_0 = rng.normal(size=(4, dim))
        field = MLPTrace(mlp, params).value
        for method in TABLEAUS:
            for steps in all_steps:
                ts, xs = fixed_step_trajectory(field, x_0, steps, method)
                cases.append({
                    "id": f"fixed_step/{name}/{method}-{steps}", "kind": "fixed_step",
                    "description": f"{method} with {steps} fixed step(s) of dx/dt = v(x, t), {mlp!r} with the "
                                   "given weights, from x_0 at t = 0 to t = 1; grid t_k = k/N, h = t_{k+1} - t_k; "
                                   f"tableau (c, A, b) = {TABLEAUS[method]!r}; x_t[k] is the state at t[k]",
                    "inputs": {"mlp": spec, "params": [[W, b] for W, b in params], "x_0": x_0, "method": method,
                               "steps": steps, "t": ts},
                    "outputs": {"x_t": xs},
                    "tolerance": TOL_FIXED_STEP})
    return cases


# The 1-D mixture's flow map: a root of F_t(y) = F_0(x₀) found to ~1e-15 relative, moved by
# at most p_0(x₀)/p_t(y) ≲ 10 at these points (~1e-14), and u_t through the posterior
# weights (~100 ulps, as the marginal cases here); 1e-10 leaves a factor ≥ 100.
TOL_MIXTURE_FLOW_MAP = _tol(1e-11, 1e-10, "a root of F_t(y) = F_0(x_0) found to ~1e-15 relative and amplified "
                                          "by p_0/p_t <~ 10 here; u_t through the posterior weights; an ODE "
                                          "solve at 1e-13 (DOP853) agrees to ~1e-12 (EVAL.5)")


def _mixture_flow_map_cases():
    from ..distributions import GaussianMixture
    from ..marginal import marginal_velocity
    from .cases import PATH_SPECS, _path_id, _targets, make_path

    tname, means, covs, weights = [tg for tg in _targets() if tg[0] == "mix1d"][0]
    target = GaussianMixture(means, covs, weights)
    x_0 = np.random.default_rng(710).normal(size=(4, 1))
    cases = []
    for name, params in PATH_SPECS:
        path = make_path({"name": name, "params": params})
        tt = np.array([0.0, 0.25, 0.5, 0.75, 0.9] + ([] if name in ("vp", "linear_vp") else [1.0]))
        xs = np.stack([mixture_flow_map_1d(path, means[:, 0], covs[:, 0, 0], weights, x_0, t) for t in tt])
        us = np.stack([marginal_velocity(target, path, x, t) for x, t in zip(xs, tt)])
        cases.append({
            "id": f"flow_map/{tname}/{_path_id(name, params)}", "kind": "flow_map",
            "description": f"{path!r}, a 1-D Gaussian-mixture target (means, covs, weights), base N(0, 1) at "
                           "t = 0: x_t = phi_t(x_0) = F_t^-1(F_0(x_0)), the flow of the marginal velocity "
                           "(in 1-D the increasing map that pushes p_0 to p_t, F_t the CDF of p_t); "
                           "u_t_at_x_t = u_t(x_t)",
            "inputs": {"path": {"name": name, "params": params},
                       "target": {"means": means, "covs": covs, "weights": weights}, "x_0": x_0, "t": tt},
            "outputs": {"x_t": xs, "u_t_at_x_t": us},
            "tolerance": TOL_MIXTURE_FLOW_MAP})
    return cases


def _all_flow_map_cases():
    return _flow_map_cases() + _mixture_flow_map_cases()


BUILDERS = {"flow_map": _all_flow_map_cases, "fixed_step": _fixed_step_cases}
