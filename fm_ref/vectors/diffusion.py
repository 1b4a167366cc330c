"""Reference-vector cases of diffusion as flow matching (kinds added to ``BUILDERS``).

- ``diffusion_loss``: per path, the conditional regression target of each kind at
  (t, x₀, x₁), the per-sample squared error of a given prediction, and the weight w_k(t)
  that turns it into the CFM loss of the converted prediction (DIF.7, DIF.9);
- ``sde_drift``: the same-marginal SDE drift u_t + ½g²∇log p_t of a mixture target for
  g = 0, g = 1 and the reverse diffusion's g² = 2σD/α (DIF.3, DIF.4);
- ``ddim_step``: one DDIM step (η = 0) from (s, x_s) with given predictions (DIF.14);
- ``ddpm_step``: the forward kernel (a, ς²) and DDPM's posterior mean and variance (DIF.12, DIF.13).

Tolerances: the closed-form tier, except the drift (the mixture tier: softmax weights).
Derivation: derivations/09-diffusion.md (DIF.14)
"""
import numpy as np

from .cases import TOL_CLOSED, TOL_MARGINAL, _path_id, _targets, make_path
from .tiers import FLOAT32_TOLERANCES

__all__ = ["DIFFUSION_BUILDERS", "DIFFUSION_PATHS", "FLOAT32_DIFFUSION"]


def _tol(abs_, rel, reason):
    return {"abs": abs_, "rel": rel, "reason": reason}


# The float32 tier (fm-ref check --tier float32) of these kinds, set by reasoning as
# fm_ref.vectors.tiers sets it for the closed forms and marginals, not measured in float32.
_F32_CLOSED = _tol(1e-5, 1e-4, "float32 closed forms: a few ulps (1.2e-7) per operation, x20 through the "
                               "divisions by alpha_t or sigma_t >= 0.05 here; set by reasoning, not measured (EVAL.5)")
_F32_MARGINAL = _tol(1e-4, 1e-3, "float32 softmax over component log-densities of size up to ~1.6e4 (as the "
                                 "marginal kind); set by reasoning, not measured (EVAL.5)")
#: kind -> the float32 tolerance of its cases.
FLOAT32_DIFFUSION = {"diffusion_loss": _F32_CLOSED, "sde_drift": _F32_MARGINAL, "ddim_step": _F32_CLOSED,
                     "ddpm_step": _F32_CLOSED}

#: Paths of the diffusion cases: every path whose α_t, σ_t are positive inside (0, 1).
DIFFUSION_PATHS = (("condot", {"sigma_min": 0.0}), ("vp", {"beta_min": 0.1, "beta_max": 20.0}),
                   ("linear_vp", {}), ("cosine", {}), ("polynomial", {"n": 2.0}))

_LOSS_NOTE = ("targets: velocity alpha'_t x_1 + sigma'_t x_0; x1 x_1; eps x_0; score -x_0/sigma_t; "
              "v alpha_t x_0 - sigma_t x_1 (Salimans & Ho). sq_error = |prediction - target|^2 per sample; "
              "cfm_weight w_k(t) with D_t = alpha'_t sigma_t - alpha_t sigma'_t: velocity 1, x1 D^2/sigma^2, "
              "eps D^2/alpha^2, score D^2 sigma^2/alpha^2, v D^2/(alpha^2 + sigma^2)^2; w_k sq_error is the CFM "
              "loss of the prediction converted to a velocity")


def _spec(name, params):
    return {"name": name, "params": params}


def _loss_cases():
    from ..diffusion import KINDS, cfm_weight, conditional_regression_target

    cases = []
    t = np.array([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    for i, (name, params) in enumerate(DIFFUSION_PATHS):
        path = make_path(_spec(name, params))
        rng = np.random.default_rng(600 + i)
        x_0, x_1 = rng.normal(size=(6, 2)), rng.normal(0.0, 1.5, (6, 2))
        preds = {k: rng.normal(0.0, 1.5, (6, 2)) for k in KINDS}
        outputs = {}
        for kind in KINDS:
            x_t, y = conditional_regression_target(path, kind, t, x_0, x_1)
            outputs[f"target_{kind}"] = y
            outputs[f"sq_error_{kind}"] = np.sum((preds[kind] - y) ** 2, axis=1)
            outputs[f"cfm_weight_{kind}"] = cfm_weight(path, kind, t)
        outputs["x_t"] = x_t
        cases.append({
            "id": f"diffusion_loss/{_path_id(name, params)}", "kind": "diffusion_loss",
            "description": f"{path!r}: x_t = sigma_t x_0 + alpha_t x_1 and, for each kind, the conditional "
                           f"regression target, the squared error of the given prediction and the CFM weight. "
                           f"{_LOSS_NOTE}",
            "inputs": {"path": _spec(name, params), "t": t, "x_0": x_0, "x_1": x_1,
                       "predictions": {k: v for k, v in preds.items()}},
            "outputs": outputs, "tolerance": TOL_CLOSED})
    return cases


def _drift_cases():
    from ..diffusion import REVERSE, Predictor, reverse_diffusion_g2, same_marginal_drift
    from ..distributions import GaussianMixture

    cases = []
    for tname, means, covs, weights in [tg for tg in _targets() if tg[0] in ("mix2d", "empirical2d")]:
        target = GaussianMixture(means, covs, weights)
        for j, (name, params) in enumerate((DIFFUSION_PATHS[1], DIFFUSION_PATHS[3])):
            path = make_path(_spec(name, params))
            pred = Predictor.exact(target, path)
            x = np.random.default_rng(700 + j).normal(0.0, 1.5, (4, 2))
            ts = np.array([0.1, 0.4, 0.7, 0.9])
            out = {k: np.stack([same_marginal_drift(pred, g, x[i:i + 1], float(ts[i]))[0] for i in range(4)])
                   for k, g in (("drift_g0", 0.0), ("drift_g1", 1.0), ("drift_reverse", REVERSE))}
            out["g2_reverse"] = reverse_diffusion_g2(path, ts)
            cases.append({
                "id": f"sde_drift/{tname}/{_path_id(name, params)}", "kind": "sde_drift",
                "description": f"{path!r}, mixture '{tname}': the same-marginal SDE drift u_t(x) + g_t^2/2 "
                               "grad log p_t(x) for g = 0, g = 1 and the reverse diffusion g_t^2 = "
                               "2 sigma_t D_t/alpha_t (= beta(1 - t) for VP: Song et al.'s reverse SDE), "
                               "row i at time t[i]",
                "inputs": {"path": _spec(name, params),
                           "target": {"means": means, "covs": covs, "weights": weights}, "x": x, "t": ts},
                "outputs": out, "tolerance": TOL_MARGINAL})
    return cases


_STEPS = ((0.0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 0.99))


def _ddim_cases():
    from ..diffusion import ddim_step

    cases = []
    for i, (name, params) in enumerate(DIFFUSION_PATHS):
        path = make_path(_spec(name, params))
        rng = np.random.default_rng(800 + i)
        for s, t in _STEPS:
            x_s, x0, x1 = (rng.normal(size=(3, 2)) for _ in range(3))
            cases.append({
                "id": f"ddim_step/{_path_id(name, params)}/{s:g}-{t:g}", "kind": "ddim_step",
                "description": f"{path!r}: one DDIM step (eta = 0) from s to t with the given predictions "
                               "x0_hat (noise) and x1_hat (data) at (x_s, s): x_t = alpha_t x1_hat + sigma_t x0_hat",
                "inputs": {"path": _spec(name, params), "s": s, "t": t, "x_s": x_s, "x0_hat": x0, "x1_hat": x1},
                "outputs": {"x_t": ddim_step(path, x_s, s, t, x0, x1)}, "tolerance": TOL_CLOSED})
    return cases


def _ddpm_cases():
    from ..diffusion import ddpm_step_mean_and_var, forward_kernel

    cases = []
    for i, (name, params) in enumerate(DIFFUSION_PATHS):
        path = make_path(_spec(name, params))
        rng = np.random.default_rng(900 + i)
        for s, t in _STEPS:
            x_s, x1 = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
            mean, var = ddpm_step_mean_and_var(path, x_s, s, t, x1)
            a, kvar = forward_kernel(path, s, t)
            cases.append({
                "id": f"ddpm_step/{_path_id(name, params)}/{s:g}-{t:g}", "kind": "ddpm_step",
                "description": f"{path!r}: the forward kernel x_s = a x_t + sqrt(kernel_var) xi from t back to s "
                               "(a = alpha_s/alpha_t, kernel_var = sigma_s^2 - a^2 sigma_t^2) and DDPM's step from s "
                               "to t: the posterior N(mean, var I) of x_t given x_s and x_1 = x1_hat",
                "inputs": {"path": _spec(name, params), "s": s, "t": t, "x_s": x_s, "x1_hat": x1},
                "outputs": {"mean": mean, "var": var, "kernel_a": a, "kernel_var": kvar}, "tolerance": TOL_CLOSED})
    return cases


#: The builders of the diffusion kinds, in the order they are generated.
DIFFUSION_BUILDERS = {"diffusion_loss": _loss_cases, "sde_drift": _drift_cases, "ddim_step": _ddim_cases,
                      "ddpm_step": _ddpm_cases}
FLOAT32_TOLERANCES.update(FLOAT32_DIFFUSION)  # the float32 tier of these kinds, read by ``generate``
