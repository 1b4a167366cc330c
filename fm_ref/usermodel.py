"""``fm-ref log-prob`` and ``fm-ref sample``: the exact log-likelihood and the samples of a
user's own saved velocity MLP (read by ``fm_ref.weights``).

``log_prob_report`` solves the augmented ODE of ``CNF.from_mlp`` (DOP853, exact closed-form
divergence) from t = 1 back to t = 0 at rtol = atol = tol and again at tol/100; the
distance between the two estimates the first solve's error (derivations/08-evaluation.md
(EVAL.6): the looser solve's error dominates the difference). With ``probes = K`` it adds
the Hutchinson estimate with K Rademacher probes drawn once from ``seed`` and held fixed
for the solve (``CNF.log_prob(..., divergence='hutchinson', eps=...)``), and its standard
error from the K single-probe solves (the K-probe value is their mean, since the
trajectory does not depend on the probes). ``sample_report`` pushes N base samples
forward (``CNF.sample``), with the same two-solve error estimate.
"""
import numpy as np

from .cnf import CNF, MIN_RTOL
from .divergence import draw_probes

__all__ = ["log_prob_report", "sample_report", "add_parsers", "DEFAULT_TOL", "CHECK_FACTOR"]

#: The solver tolerance by default: DOP853 at 1e-10 is within ~1e-10 of the exact flow for
#: smooth small MLPs (see the error estimate it reports).
DEFAULT_TOL = 1e-10
#: The second solve runs at tol / CHECK_FACTOR; its distance from the first estimates the
#: first one's error (an order-8 method at a 100x tighter tolerance is ~50x more accurate).
CHECK_FACTOR = 100.0
METHOD = "DOP853"


def _check_tol(tol):
    tol = float(tol)
    if not (np.isfinite(tol) and tol / CHECK_FACTOR >= MIN_RTOL and tol <= 1e-2):
        raise ValueError(f"--tol: expected a tolerance in [{CHECK_FACTOR * MIN_RTOL:.2g}, 1e-2] (the check solve "
                         f"runs at tol/{CHECK_FACTOR:g}), got {tol!r}")
    return tol


def _flow(mlp, params, tol):
    return CNF.from_mlp(mlp, params, method=METHOD, rtol=tol, atol=tol)


def log_prob_report(mlp, params, x, tol=DEFAULT_TOL, probes=None, seed=None):
    """log p₁(x) of the CNF dx/dt = mlp(params, x, t), base N(0, I) at t = 0, with an error estimate.

    Parameters
    ----------
    mlp, params : the network and its list of (W, b)
    x : array, shape (n, d)
    tol : float, rtol = atol of the solve (the check solve uses tol / 100)
    probes : int, optional, K ≥ 2 Rademacher probes for the Hutchinson estimate
    seed : int, the probes' seed (``numpy.random.default_rng(seed)``)

    Returns
    -------
    dict with log_prob (n,), error_estimate (n,), x_0 (n, d), x_0_error_estimate (n,),
    nfe, check_nfe, and, with probes, hutchinson {probes, seed, log_prob (n,), se (n,), nfe}.

    Derivation: derivations/06-cnf.md (CNF.4) (CNF.10); derivations/08-evaluation.md (EVAL.6)
    """
    tol = _check_tol(tol)
    if probes is not None:
        if isinstance(probes, bool) or not isinstance(probes, (int, np.integer)) or probes < 2:
            raise ValueError(f"--hutchinson: expected K >= 2 probes (one gives no standard error), got {probes!r}")
        if seed is None:
            raise ValueError("--seed: required with --hutchinson (the probes are drawn from it)")
    res = _flow(mlp, params, tol).log_prob(x)
    chk = _flow(mlp, params, tol / CHECK_FACTOR).log_prob(x)
    out = {"method": METHOD, "tol": tol, "check_tol": tol / CHECK_FACTOR, "n": int(x.shape[0]),
           "log_prob": res.log_prob, "error_estimate": np.abs(res.log_prob - chk.log_prob),
           "x_0": res.x, "x_0_error_estimate": np.max(np.abs(res.x - chk.x), axis=1),
           "nfe": res.nfev, "check_nfe": chk.nfev}
    if probes is not None:
        eps = draw_probes(np.random.default_rng(seed), (int(probes),) + x.shape, "rademacher")
        flow = _flow(mlp, params, tol)
        est = flow.log_prob(x, divergence="hutchinson", eps=eps)
        single = np.stack([flow.log_prob(x, divergence="hutchinson", eps=e).log_prob for e in eps])
        out["hutchinson"] = {"probes": int(probes), "seed": int(seed), "probe": "rademacher",
                             "log_prob": est.log_prob, "se": np.std(single, axis=0, ddof=1) / np.sqrt(probes),
                             "nfe": est.nfev}
    return out


def sample_report(mlp, params, n, seed, tol=DEFAULT_TOL):
    """n samples x₁ of the CNF: x₀ ~ N(0, I) from ``default_rng(seed)`` pushed from t = 0 to 1.

    Returns a dict with x_0 (n, d), x_1 (n, d), error_estimate (n,) (max over coordinates of
    the distance to the solve at tol/100), nfe, check_nfe.

    Derivation: derivations/06-cnf.md (CNF.1)
    """
    tol = _check_tol(tol)
    res = _flow(mlp, params, tol).sample(n, np.random.default_rng(seed))
    x_0 = _flow(mlp, params, tol).base.sample(n, np.random.default_rng(seed))
    chk = _flow(mlp, params, tol / CHECK_FACTOR).push_forward(x_0)
    return {"method": METHOD, "tol": tol, "check_tol": tol / CHECK_FACTOR, "n": int(n), "seed": int(seed),
            "x_0": x_0, "x_1": res.x, "error_estimate": np.max(np.abs(res.x - chk.x), axis=1),
            "nfe": res.nfev, "check_nfe": chk.nfev}


# ----------------------------------------------------------------------------- the commands

#: Bounds of the integer options (a seed as the CLI's others; K probes and N samples are held in memory).
MAX_PROBES, MAX_SAMPLES, MAX_TIME_FEATURES, MAX_SEED = 1000, 10**6, 1000, 2**128


def _model_args(p):
    from .cli import _int_in, _name

    p.add_argument("weights", type=_name, metavar="WEIGHTS",
                   help="an .npz of the MLP's weights (fm_ref's or PyTorch's layout)")
    p.add_argument("--layout", choices=("auto", "fm_ref", "torch"), default="auto",
                   help="the .npz layout (default: from the keys: W0, b0, ... or 0.weight, 0.bias, ...)")
    p.add_argument("--activation", metavar="NAME", help="tanh, softplus or silu (swish); required for PyTorch's layout")
    p.add_argument("--time-input", choices=("last", "first"), default=None,
                   help="t's features after x ([x, t], default) or before it ([t, x])")
    p.add_argument("--time-features", type=_int_in(0, MAX_TIME_FEATURES, "an integer K >= 0"), default=None,
                   metavar="K",
                   help="K sinusoidal features: the input holds t, sin(2 pi k t) k=1..K, cos(2 pi k t) k=1..K")
    p.add_argument("--tol", type=float, default=DEFAULT_TOL,
                   help=f"rtol = atol of the DOP853 solve (default {DEFAULT_TOL:g}); the check solve uses tol/100")
    p.add_argument("--out", type=_name, metavar="FILE", help="write the report as JSON to FILE")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def add_parsers(sub):
    """Add the 'log-prob' and 'sample' subcommands to the CLI's subparsers."""
    p = sub.add_parser("log-prob", help="exact log p_1 of your points under your saved velocity MLP, with an "
                                        "error estimate (and Hutchinson's, with --hutchinson)")
    _model_args(p)
    from .cli import _int_in, _name

    p.add_argument("points", type=_name, metavar="POINTS", help="an .npy or .csv of shape (n, d)")
    p.add_argument("--hutchinson", type=_int_in(2, MAX_PROBES, "an integer K >= 2"), metavar="K",
                   help="also the Hutchinson estimate with K fixed probes")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED, "a non-negative integer"), metavar="S",
                   help="the seed of the Hutchinson probes")
    p.set_defaults(func=cmd_log_prob)
    p = sub.add_parser("sample", help="push N base samples through your saved velocity MLP (t = 0 to 1)")
    _model_args(p)
    p.add_argument("n", metavar="N", type=_int_in(1, MAX_SAMPLES), help="the number of samples")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED, "a non-negative integer"), default=0, metavar="S",
                   help="the seed of the base samples (default 0)")
    p.set_defaults(func=cmd_sample)


def _load(args):
    from .cli import _check_not_an_input, check_writable
    from .weights import load_mlp

    check_writable(args.out, "--out")
    inputs = {"WEIGHTS": args.weights} | ({"POINTS": args.points} if getattr(args, "points", None) else {})
    _check_not_an_input(args.out, "--out", **inputs)
    return load_mlp(args.weights, args.layout, args.activation, args.time_input, args.time_features)


def _header(args, mlp):
    tf = "t, sin, cos" if mlp.time_features else "t"
    order = f"[{tf}, x] in the file, read as [x, {tf}]" if args.time_input == "first" else f"[x, {tf}]"
    return f"model: {args.weights} -> {mlp!r}, input {order}; base N(0, I) at t = 0"


def _emit(args, report, lines):
    from .cli import _say, _write_json
    from .vectors import _tolist

    payload = {"weights": args.weights, "command": args.command, **_tolist(report)}
    if args.json:
        import json

        _say(json.dumps(payload, indent=1))
    else:
        _say("\n".join(lines))
    if args.out:
        line = _write_json(args.out, payload)
        if not args.json:
            _say(line)


def _vec(row):
    return "[" + ", ".join(f"{v:.6f}" for v in row) + "]"


def cmd_log_prob(args):
    from .cli import fmt, format_table
    from .weights import load_points

    mlp, params = _load(args)
    x = load_points(args.points, mlp.dim)
    rep = log_prob_report(mlp, params, x, args.tol, args.hutchinson, args.seed)
    mlp_spec = {"dim": mlp.dim, "hidden": list(mlp.hidden), "activation": mlp.activation,
                "time_features": mlp.time_features}
    rep = {"points": args.points, "mlp": mlp_spec, **rep}
    h = rep.get("hutchinson")
    headers = ["i", "log p1(x)", "error est."] + (["hutchinson", "± se"] if h else []) + ["x_0 (x pulled back to t = 0)"]
    show = range(min(x.shape[0], 20))
    rows = [[str(i), f"{rep['log_prob'][i]:.12f}", fmt(rep["error_estimate"][i], ".1e")]
            + ([f"{h['log_prob'][i]:.6f}", fmt(h["se"][i], ".2g")] if h else []) + [_vec(rep["x_0"][i])]
            for i in show]
    lines = [_header(args, mlp), "", format_table(headers, rows, align="rrr" + ("rr" if h else "") + "l")]
    if x.shape[0] > len(show):
        lines.append(f"... {x.shape[0] - len(show)} more rows (all in --out FILE or --json)")
    lines.append(f"\n{x.shape[0]} points; {METHOD} at rtol = atol = {rep['tol']:g}: {rep['nfe']} NFE; error "
                 f"estimate = |difference| from a second solve at {rep['check_tol']:g} ({rep['check_nfe']} NFE), "
                 f"max {np.max(rep['error_estimate']):.1e}")
    if h:
        z = np.abs(h["log_prob"] - rep["log_prob"]) / np.maximum(h["se"], 1e-300)
        lines.append(f"hutchinson: {h['probes']} Rademacher probes per point (seed {h['seed']}), fixed along the "
                     f"solve ({h['nfe']} NFE); max |hutchinson - exact| / se = {np.max(z):.2f}")
    _emit(args, rep, lines)
    return 0


def cmd_sample(args):
    from .cli import fmt, format_table

    mlp, params = _load(args)
    rep = sample_report(mlp, params, args.n, args.seed, args.tol)
    show = range(min(args.n, 20))
    rows = [[str(i), _vec(rep["x_0"][i]), _vec(rep["x_1"][i]), fmt(rep["error_estimate"][i], ".1e")] for i in show]
    lines = [_header(args, mlp), "", format_table(["i", "x_0 ~ N(0, I)", "x_1 (t = 1)", "error est."], rows,
                                                  align="rllr")]
    if args.n > len(show):
        lines.append(f"... {args.n - len(show)} more rows (all in --out FILE or --json)")
    lines.append(f"\n{args.n} samples (seed {args.seed}); {METHOD} at rtol = atol = {rep['tol']:g}: {rep['nfe']} NFE; "
                 f"error estimate from a second solve at {rep['check_tol']:g} ({rep['check_nfe']} NFE), max "
                 f"{np.max(rep['error_estimate']):.1e}")
    _emit(args, rep, lines)
    return 0
