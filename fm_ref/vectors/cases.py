"""The cases of the golden reference vectors: inputs, reference outputs and tolerances.

Each builder returns a list of cases (dicts with id, kind, description, inputs, outputs,
tolerance) computed by fm_ref itself from fixed seeds; ``fm_ref.vectors`` writes them,
reads them back and compares results with them. The tolerance of each kind, and its
reason, is derived in derivations/08-evaluation.md (EVAL.5) and, for the ODE cases, (EVAL.6).
"""
import numpy as np

__all__ = ["BUILDERS", "KINDS", "PATH_SPECS", "MLP_SPECS", "CNF_SPECS", "make_path", "make_mlp",
           "params_from_json", "make_layer", "layer_params_from_json"]


def _tol(abs_, rel, reason):
    return {"abs": abs_, "rel": rel, "reason": reason}


# Closed forms: another float64 implementation differs by a few ulps per operation
# (libm's exp/sin/sqrt are not correctly rounded, operation order differs), so
# 1e-12 relative sits ~4 orders above rounding and ~10 below any formula error.
TOL_CLOSED = _tol(1e-14, 1e-12, "closed form in float64: a few ulps per operation; 1e-12 relative is "
                               "4 orders above rounding and far below any formula error (EVAL.5)")
# Mixture marginals: a softmax over log-joints of size L ≈ ‖x − αμ‖²/2σ² carries an
# absolute rounding error ~ L·ε into the posterior weights (L ≤ 1.6e4 for these points,
# among components with responsibility above 1e-8).
TOL_MARGINAL = _tol(1e-12, 1e-10, "softmax over component log-densities of size up to ~1.6e4: "
                                  "posterior weights carry ~1.6e4 ulps (3.5e-12); 1e-10 leaves a factor ~30 (EVAL.5)")
# Network outputs: sums of ~100 products through tanh/swish; a different summation
# order or libm changes the result by ~100 ulps at most.
TOL_NETWORK = _tol(1e-12, 1e-11, "MLP forward and Jacobian: sums of ~100 products through tanh/swish; "
                                 "summation order and libm change ~100 ulps (EVAL.5)")

#: (name, hyper-parameters) of the paths in the vectors.
PATH_SPECS = (("condot", {"sigma_min": 0.0}), ("condot", {"sigma_min": 0.01}),
              ("vp", {"beta_min": 0.1, "beta_max": 20.0}), ("linear_vp", {}), ("cosine", {}),
              ("polynomial", {"n": 2.0}))


def make_path(spec):
    """A path from its spec {'name': ..., 'params': {...}} as written in the vectors."""
    from ..paths import PATHS

    if not isinstance(spec, dict) or spec.get("name") not in PATHS:
        raise ValueError(f"path: expected {{'name': one of {sorted(PATHS)}, 'params': {{...}}}}, got {spec!r}")
    return PATHS[spec["name"]](**spec.get("params", {}))


def _path_id(name, params):
    return name + "".join(f"-{k}={v!r}" for k, v in params.items() if not (name == "condot" and v == 0.0))


def _path_schedule_cases():
    cases = []
    for name, params in PATH_SPECS:
        path = make_path({"name": name, "params": params})
        t = np.arange(21) / 20.0
        note = ""
        if name in ("vp", "linear_vp"):
            t, note = t[:-1], " (t = 1 left out: sigma'_t = -inf there)"
        cases.append({
            "id": f"path_schedule/{_path_id(name, params)}", "kind": "path_schedule",
            "description": f"alpha_t, sigma_t and their t-derivatives of {path!r} on t = k/20{note}",
            "inputs": {"path": {"name": name, "params": params}, "t": t},
            "outputs": {"alpha_t": path.alpha_t(t), "sigma_t": path.sigma_t(t),
                        "d_alpha_t": path.d_alpha_t(t), "d_sigma_t": path.d_sigma_t(t)},
            "tolerance": TOL_CLOSED})
    return cases


def _conditional_path_cases():
    cases = []
    t = np.array([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99])
    for i, (name, params) in enumerate(PATH_SPECS):
        path = make_path({"name": name, "params": params})
        rng = np.random.default_rng(100 + i)
        x_0, x_1, x = rng.normal(size=(8, 2)), rng.normal(0.0, 1.5, (8, 2)), rng.normal(0.0, 2.0, (8, 2))
        x_t = path.sample(x_0, x_1, t)
        cases.append({
            "id": f"conditional_path/{_path_id(name, params)}", "kind": "conditional_path",
            "description": f"{path!r}: x_t = sigma_t x_0 + alpha_t x_1; the conditional velocity "
                           "u_t(x | x_1) at x_t and at free points x; log N(x; alpha_t x_1, sigma_t^2 I)",
            "inputs": {"path": {"name": name, "params": params}, "t": t, "x_0": x_0, "x_1": x_1, "x": x},
            "outputs": {"x_t": x_t, "u_t_at_x_t": path.conditional_velocity(x_t, x_1, t),
                        "u_t_at_x": path.conditional_velocity(x, x_1, t),
                        "log_p_at_x": path.conditional_log_prob(x, x_1, t)},
            "tolerance": TOL_CLOSED})
    return cases


def _targets():
    """Four fixed mixture targets (name, means, full covs, weights)."""
    rot = np.array([[np.cos(0.6), -np.sin(0.6)], [np.sin(0.6), np.cos(0.6)]])
    return [
        ("mix2d", np.array([[-1.0, 0.5], [1.5, 1.0], [0.0, -2.0]]),
         np.stack([np.diag([0.3, 0.1]), rot @ np.diag([1.0, 1e-4]) @ rot.T, 0.5 * np.eye(2)]),
         np.array([0.5, 0.3, 0.2])),
        ("mix1d", np.array([[-2.0], [1.0]]), np.array([[[0.25]], [[1.0]]]), np.array([0.4, 0.6])),
        ("empirical2d", np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, -1.0], [2.0, 2.0], [-0.5, 1.5]]),
         np.zeros((5, 2, 2)), np.full(5, 0.2)),
        ("mix3d", np.array([[1.0, 0.0, -1.0], [-1.0, 1.0, 0.5]]),
         np.stack([0.1 * np.eye(3), 0.5 * np.eye(3)]), np.array([0.75, 0.25])),
    ]


def _marginal_cases():
    from ..distributions import GaussianMixture
    from ..marginal import (marginal_log_prob, marginal_score, marginal_velocity, posterior_mean,
                           posterior_noise_mean)

    cases = []
    t = np.array([0.0, 0.25, 0.5, 0.75, 0.9, 0.99])
    for j, (tname, means, covs, weights) in enumerate(_targets()):
        target = GaussianMixture(means, covs, weights)
        d = means.shape[1]
        x = np.random.default_rng(200 + j).normal(0.0, 1.5, (6, d))
        x[2] = 10.0  # a far point, at t = 0.5
        for name, params in PATH_SPECS:
            path = make_path({"name": name, "params": params})
            args = (target, path, x, t)
            cases.append({
                "id": f"marginal/{tname}/{_path_id(name, params)}", "kind": "marginal",
                "description": f"closed-form marginals of {path!r} for the mixture '{tname}' "
                               "(x_0 ~ N(0, I) independent of x_1 ~ target): log p_t(x), "
                               "grad log p_t(x), E[x_1 | x_t = x], E[x_0 | x_t = x], u_t(x)",
                "inputs": {"path": {"name": name, "params": params},
                           "target": {"means": means, "covs": covs, "weights": weights}, "x": x, "t": t},
                "outputs": {"log_p_t": marginal_log_prob(*args), "score": marginal_score(*args),
                            "posterior_mean": posterior_mean(*args),
                            "posterior_noise_mean": posterior_noise_mean(*args),
                            "velocity": marginal_velocity(*args)},
                "tolerance": TOL_MARGINAL})
    return cases


#: (case name, dim, hidden, activation, time features, seed) of the networks in the vectors.
MLP_SPECS = (("tanh-2d", 2, (16, 16), "tanh", 0, 300), ("swish-3d", 3, (8, 8), "swish", 2, 301),
             ("softplus-1d", 1, (12,), "softplus", 1, 302))


def make_mlp(spec):
    """An MLP from its spec {'dim', 'hidden', 'activation', 'time_features'}."""
    from ..nn import MLP

    return MLP(spec["dim"], tuple(spec["hidden"]), spec["activation"], spec["time_features"])


def params_from_json(params):
    """[[W, b], ...] as written in the vectors -> a list of (W, b) float64 arrays."""
    return [(np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)) for W, b in params]


def _seeded_mlp(dim, hidden, act, k, seed):
    """(spec, MLP, params, rng): an MLP with weights drawn from its own seed."""
    spec = {"dim": dim, "hidden": list(hidden), "activation": act, "time_features": k}
    mlp = make_mlp(spec)
    rng = np.random.default_rng(seed)
    return spec, mlp, mlp.init(rng), rng


def _mlp_cases():
    cases = []
    for name, dim, hidden, act, k, seed in MLP_SPECS:
        spec, mlp, params, rng = _seeded_mlp(dim, hidden, act, k, seed)
        x, t = rng.normal(0.0, 1.5, (5, dim)), np.array([0.0, 0.2, 0.5, 0.8, 1.0])
        v, jac = mlp.value_and_jacobian(params, x, t)
        cases.append({
            "id": f"mlp_divergence/{name}", "kind": "mlp_divergence",
            "description": f"{mlp!r} with the given weights: v(x, t), its Jacobian dv_i/dx_j "
                           "(n, d, d) and divergence tr(dv/dx)",
            "inputs": {"mlp": spec, "params": [[W, b] for W, b in params], "x": x, "t": t},
            "outputs": {"v": v, "jacobian": jac, "divergence": np.einsum("nii->n", jac)},
            "tolerance": TOL_NETWORK})
    return cases

# The reference CNF solve (DOP853, order 8) and the looser solve whose distance from it
# estimates the reference's error (the error of the looser solve bounds the tighter's).
CNF_REF_TOL, CNF_CHECK_TOL = 1e-13, 1e-12
#: (case name, dim, hidden, activation, time features, seed) of the CNF cases.
CNF_SPECS = (("tanh-2d", 2, (16, 16), "tanh", 0, 400), ("swish-3d", 3, (8, 8), "swish", 2, 401))


def _cnf_cases():
    from ..cnf import CNF

    cases = []
    for name, dim, hidden, act, k, seed in CNF_SPECS:
        spec, mlp, params, rng = _seeded_mlp(dim, hidden, act, k, seed)
        x = rng.normal(0.0, 1.5, (6, dim))
        ref = CNF.from_mlp(mlp, params, method="DOP853", rtol=CNF_REF_TOL, atol=CNF_REF_TOL).log_prob(x)
        loose = CNF.from_mlp(mlp, params, method="DOP853", rtol=CNF_CHECK_TOL, atol=CNF_CHECK_TOL).log_prob(x)
        err = float(max(np.max(np.abs(ref.log_prob - loose.log_prob)), np.max(np.abs(ref.x - loose.x))))
        cases.append({
            "id": f"cnf_log_prob/{name}", "kind": "cnf_log_prob",
            "description": f"CNF dx/dt = v(x, t) with {mlp!r} and the given weights, base N(0, I) at "
                           "t = 0: log p_1(x) by the augmented ODE with the exact divergence, solved "
                           "from t = 1 back to t = 0, and x_0, the point x pulled back to t = 0. "
                           f"Reference: DOP853, rtol = atol = {CNF_REF_TOL:g}; suggested for your "
                           "solve: rtol = atol <= 1e-9",
            "inputs": {"mlp": spec, "params": [[W, b] for W, b in params], "x": x, "t0": 0.0, "t1": 1.0,
                       "base": "standard normal N(0, I_d) at t0"},
            "outputs": {"log_prob": ref.log_prob, "x_0": ref.x},
            "tolerance": _tol(1e-7, 1e-8, "what any reasonable adaptive solver reaches at rtol = atol = 1e-9: "
                                          "SciPy RK45 4e-10 and 6e-10, DOP853 1e-10 and 5e-10, RK23 1.6e-9, "
                                          "torchdiffeq dopri5 (its final value interpolated) 5.7e-9 and 2.3e-8 "
                                          "(RK45 interpolating so: 4.7e-9, 2.4e-8) on these two cases; 1e-7 + 1e-8|log p| >= 1.26e-7 leaves a factor >= 5 "
                                          "over the worst; default tolerances (1e-5) fail; a missing or wrong "
                                          "divergence term is O(1) (EVAL.6)")
            | {"reference_error": err}})
    return cases


# Flow layers: closed forms through exp/tanh/softplus (~100 ulps, as for networks), and
# the planar inverse, a scalar root solved to ~1e-13 relative (flows.residual.ROOT_TOL).
TOL_FLOW = _tol(1e-11, 1e-10, "flow layers: exp/tanh/softplus closed forms (~100 ulps) and the planar "
                              "inverse, a scalar root solved to ~1e-13; 1e-10 admits roots solved to "
                              "1e-11 (EVAL.5)")

#: What each layer computes, for the case descriptions (derivations/07-normalizing-flows.md).
FLOW_FORMULAS = {
    "planar": "x = z + u_hat tanh(w.z + b), u_hat = u + (softplus(w.u) - 1 - w.u) w/|w|^2; "
              "log|det dx/dz| = log(1 + sech^2(w.z + b) w.u_hat); the inverse solves "
              "a + (w.u_hat) tanh(a) = w.x + b for a = w.z + b",
    "radial": "x = z + beta (z - z0)/(alpha + r), r = |z - z0|, alpha = softplus(a_raw), "
              "beta = softplus(b_raw) - alpha; log|det| = (d-1) log(1 + beta/(alpha + r)) + "
              "log(1 + beta alpha/(alpha + r)^2)",
    "coupling": "x_A = z_A, x_B = z_B exp(s) + t, (s_raw, t) = MLP([z_A, 0]) (the MLP's time input "
                "held at 0), s = c tanh(s_raw/c); A = coordinates kept by the mask; log|det| = sum s",
    "affine": "x = z exp(s) + b elementwise; log|det| = sum s",
}


def make_layer(spec):
    """A flow layer from its spec {'type', 'dim', ...} as written in the vectors."""
    from ..flows import AffineCoupling, ElementwiseAffine, Planar, Radial

    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "coupling":
        return AffineCoupling(spec["dim"], spec["mask"], tuple(spec["hidden"]), spec["activation"],
                              spec["scale_bound"])
    classes = {"planar": Planar, "radial": Radial, "affine": ElementwiseAffine}
    if kind not in classes:
        raise ValueError(f"layer: expected a spec with 'type' in {sorted(classes) + ['coupling']}, got {spec!r}")
    return classes[kind](spec["dim"])


_PARAM_NAMES = {"planar": ("w", "u", "b"), "radial": ("z0", "a_raw", "b_raw"), "affine": ("s", "b")}


def layer_params_to_json(spec, params):
    if spec["type"] == "coupling":
        return [[W, b] for W, b in params]
    return dict(zip(_PARAM_NAMES[spec["type"]], params))


def layer_params_from_json(spec, params):
    """A layer's parameters as written in the vectors -> the layer's pytree."""
    if spec["type"] == "coupling":
        return params_from_json(params)
    return tuple(np.asarray(params[k], dtype=np.float64) for k in _PARAM_NAMES[spec["type"]])


def _flow_cases():
    from ..flows import Flow

    rng = np.random.default_rng(500)
    coupling = {"dim": 2, "hidden": [8], "activation": "tanh", "scale_bound": 3.0}
    specs = [{"type": "planar", "dim": 2}, {"type": "radial", "dim": 3},
             dict(coupling, type="coupling", mask="even"), {"type": "affine", "dim": 2}]
    layers = [make_layer(s) for s in specs]
    params = [(rng.normal(size=2), rng.normal(size=2), np.array(0.3)),
              (rng.normal(size=3), np.array(-0.5), np.array(0.8)),
              layers[2].net.init(rng), (rng.normal(0.0, 0.5, 2), rng.normal(size=2))]
    cases = []
    for spec, layer, p in zip(specs, layers, params):
        z, x = rng.normal(size=(6, spec["dim"])), rng.normal(0.0, 1.5, (6, spec["dim"]))
        fx, fld = layer.forward_and_log_det(p, z)
        iz, ild = layer.inverse_and_log_det(p, x)
        jp = layer_params_to_json(spec, p)
        if spec["type"] == "planar":  # the effective û too, for implementations without the reparameterisation
            jp["u_hat"] = layer.u_hat(p)[0]
        cases.append({
            "id": f"flow_log_det/{spec['type']}-{spec['dim']}d", "kind": "flow_log_det",
            "description": f"{layer!r}: {FLOW_FORMULAS[spec['type']]}. Forward at z and inverse at x.",
            "inputs": {"layer": spec, "params": jp, "z": z, "x": x},
            "outputs": {"forward_x": fx, "forward_log_det": fld, "inverse_z": iz, "inverse_log_det": ild},
            "tolerance": TOL_FLOW})
    specs = [dict(coupling, type="coupling", mask="even"), dict(coupling, type="coupling", mask="odd"),
             {"type": "affine", "dim": 2}]
    flow = Flow([make_layer(s) for s in specs])
    p = [layer.net.init(rng) for layer in flow.layers[:2]] + [(rng.normal(0.0, 0.3, 2), rng.normal(size=2))]
    x = rng.normal(0.0, 1.5, (6, 2))
    z, _ = flow.inverse_and_log_det(p, x)
    cases.append({
        "id": "flow_log_det/flow-coupling-2d", "kind": "flow_log_det",
        "description": "a discrete flow x = f_3(f_2(f_1(z))), z ~ N(0, I): coupling (mask even), coupling "
                       "(mask odd), elementwise affine (layers listed from the base side). "
                       f"{FLOW_FORMULAS['coupling']}; {FLOW_FORMULAS['affine']}. "
                       "log p(x) = log N(f^-1(x); 0, I) + log|det d f^-1/dx|",
        "inputs": {"layers": specs, "params": [layer_params_to_json(s, q) for s, q in zip(specs, p)], "x": x},
        "outputs": {"z": z, "log_prob": flow.log_prob(p, x)},
        "tolerance": TOL_FLOW})
    return cases


def _sampler_builders():
    from .samplers import BUILDERS as builders

    return builders


BUILDERS = {"path_schedule": _path_schedule_cases, "conditional_path": _conditional_path_cases,
            "marginal": _marginal_cases, "mlp_divergence": _mlp_cases, "cnf_log_prob": _cnf_cases,
            "flow_log_det": _flow_cases}
BUILDERS.update(_sampler_builders())  # flow_map, fixed_step (fm_ref/vectors/samplers.py)
from .diffusion import DIFFUSION_BUILDERS  # noqa: E402  (the kinds of derivations/09-diffusion.md)

BUILDERS.update(DIFFUSION_BUILDERS)

from .couplings import COUPLING_BUILDERS, COUPLING_FLOAT32  # noqa: E402  (derivations/10-couplings.md)
from .tiers import FLOAT32_TOLERANCES  # noqa: E402

BUILDERS.update(COUPLING_BUILDERS)
FLOAT32_TOLERANCES.update(COUPLING_FLOAT32)
#: The kinds of case, in the order they are generated.
KINDS = tuple(BUILDERS)
