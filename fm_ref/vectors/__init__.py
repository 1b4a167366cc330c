"""Golden reference vectors: generate them (``fm-ref vectors``) and compare another
implementation's results with them (``fm-ref check``).

Schema (version 1), one JSON object::

    {"schema_version": 1,
     "generator": "fm_ref <version>",
     "conventions": {...},                     # time direction, x₀/x₁, shapes
     "cases": [{"id": str, "kind": str, "description": str,
                "inputs": {name: number | nested list | str | dict},
                "outputs": {name: number | nested list},
                "tolerance": {"abs": float, "rel": float, "reason": str},
                "tolerance_float32": {...}}, ...]}        # the float32 tier (tiers.py)

Arrays are nested lists, batch first, float64 written with Python's shortest
round-trip ``repr`` so that they read back bit for bit. A results file has the same
top level with, per case, at least ``id`` and ``outputs``. An output element passes
when |got − ref| ≤ abs + rel·|ref| (the error in units of the tolerance, as scipy's
ODE tests measure it).

The cases themselves (inputs, reference outputs, tolerances) are built in
``fm_ref.vectors.cases``.

Derivation: derivations/08-evaluation.md (EVAL.5) (EVAL.6)
"""
import fnmatch
import json
import math

import numpy as np

from .. import __version__
from .._io import atomic_write_text
from .schema import check_reference, check_structure, number_array, read_json, worse
from .cases import (BUILDERS, KINDS, layer_params_from_json, make_layer, make_mlp, make_path,
                           params_from_json)
from .tiers import FLOAT32_TOLERANCES

__all__ = ["SCHEMA_VERSION", "KINDS", "generate", "write_vectors", "load_json", "compare",
           "case_arrays", "dumps", "select_cases", "TIERS", "make_path", "make_mlp", "params_from_json", "make_layer",
           "layer_params_from_json"]

SCHEMA_VERSION = 1

CONVENTIONS = {
    "time": "t in [0, 1]; t = 0 is the noise x_0 ~ N(0, I), t = 1 is the data x_1 ~ q",
    "path": "x_t = sigma_t x_0 + alpha_t x_1",
    "arrays": "batch first: points (n, d); t either a number or (n,), one time per point",
    "mlp": "input h_0 = [x, t, sin(2 pi k t) for k = 1..K, cos(2 pi k t) for k = 1..K] (all sines, then "
           "all cosines; [x, t] when K = 0); h = act(h W + b) for each hidden layer; the last layer affine; "
           "W of shape (fan_in, fan_out)",
    "activations": "tanh; softplus(a) = log(1 + exp(a)); swish(a) = a / (1 + exp(-a))",
    "log_det": "forward_log_det = log|det dx/dz| at the pair (z, x = f(z)); inverse_log_det = "
               "log|det dz/dx| = -log|det dx/dz| at the pair (f^-1(x), x)",
    "pass": "|got - ref| <= abs + rel * |ref| for every element",
}


# ----------------------------------------------------------------------------- writing

def _tolist(value):
    """numpy arrays and scalars -> nested lists of Python floats (exact repr round trip)."""
    if isinstance(value, dict):
        return {k: _tolist(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tolist(v) for v in value]
    if isinstance(value, (str, bool, int)) and not isinstance(value, np.generic):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind in "iu":
        return arr.tolist()
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError("outputs: a reference value is not finite")
    return arr.tolist()


def dumps(payload):
    """The file's text: the header indented, one line per case (so that a diff names cases)."""
    head = {k: v for k, v in payload.items() if k != "cases"}
    lines = json.dumps(head, indent=1, ensure_ascii=False, allow_nan=False)[:-2]
    cases = ",\n".join("  " + json.dumps(c, ensure_ascii=False, allow_nan=False) for c in payload["cases"])
    return lines + ',\n "cases": [\n' + cases + "\n ]\n}\n"


def generate(kinds=None, log=None):
    """Build the reference payload (a dict following the schema).

    Parameters
    ----------
    kinds : iterable of str, optional
        Only these kinds of case (default: all of ``KINDS``).
    log : callable, optional
        Called with a progress message per kind.
    """
    kinds = tuple(KINDS if kinds is None else kinds)
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"kinds: expected a subset of {KINDS}, got {k!r}")
    cases = []
    for kind in kinds:
        new = BUILDERS[kind]()
        if log is not None:
            log(f"  {kind}: {len(new)} cases")
        cases.extend(new)
    for case in cases:
        case.setdefault("tolerance_float32", FLOAT32_TOLERANCES[case["kind"]])  # --tier float32
        case["inputs"] = _tolist(case["inputs"])
        case["outputs"] = _tolist(case["outputs"])
    return {"schema_version": SCHEMA_VERSION, "generator": f"fm_ref {__version__}",
            "conventions": CONVENTIONS, "cases": cases}


def write_vectors(path, kinds=None, log=None):
    """Generate the vectors and write them to ``path`` atomically (``fm_ref._io``: an
    interrupted write leaves any old file intact); returns the payload."""
    payload = generate(kinds, log)
    atomic_write_text(path, dumps(payload))
    return payload


# ----------------------------------------------------------------------------- reading

def load_json(path, what):
    """Read a vectors or results file; malformed content raises ValueError naming ``what``.

    The file must be a regular file of strict JSON (``fm_ref.vectors.schema.read_json``:
    size cap, no NaN/Infinity, no number beyond float64, no duplicated key, bounded
    nesting) with the top level of the schema (an integer ``schema_version``, cases with
    unique string ids and an ``outputs`` object).
    """
    return check_structure(read_json(path, what), what, SCHEMA_VERSION)


def case_arrays(values, what):
    """A case's outputs (or inputs) as float64 arrays; ragged or non-numeric lists raise."""
    out = {}
    for name, value in values.items():
        if isinstance(value, (str, dict)):
            out[name] = value
            continue
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (ValueError, TypeError):
            raise ValueError(f"{what}: '{name}' is not a rectangular array of numbers") from None
        out[name] = arr
    return out


def _case_errors(ref, got, tol):
    """Max |got − ref|, max relative error (over ref ≠ 0), and max error/(abs + rel|ref|).

    An error beyond float64 is +inf (a failure, without an overflow warning); a zero error
    against a zero tolerance is 0, a non-zero one is +inf; a NaN (inf/inf) fails the case.
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        diff = np.abs(got - ref)
        scale = tol["abs"] + tol["rel"] * np.abs(ref)
        ratio = np.where(diff == 0.0, 0.0, diff / scale)
        nz = ref != 0
        rel = float(np.max(diff[nz] / np.abs(ref[nz]))) if np.any(nz) else 0.0
    return float(np.max(diff)), rel, float(np.max(ratio))


#: Tolerance tiers: the key of a case's tolerance for each (see derivations/08-evaluation.md).
TIERS = {"float64": "tolerance", "float32": "tolerance_float32"}


def select_cases(vectors, kinds=None, ids=None, outputs=None):
    """The reference cases chosen by kind, id pattern and output name (each None: all).

    ``ids`` are shell-style patterns (``fnmatch``: ``marginal/mix1d/*``) matched against
    case ids; with ``outputs``, a case is chosen when its reference has one of those
    outputs. A selector that matches no reference case raises ``ValueError`` naming it.
    """
    cases = list(vectors["cases"])
    if kinds is not None:
        cases = [c for c in cases if c.get("kind") in kinds]
        if not cases:
            raise ValueError(f"kinds: no reference case has a kind in {sorted(kinds)}")
    for flag, wanted, hit in (("--id", ids, lambda c, w: fnmatch.fnmatchcase(c["id"], w)),
                              ("--output", outputs, lambda c, w: w in c["outputs"])):
        if wanted is None:
            continue
        for w in wanted:
            if not any(hit(c, w) for c in cases):
                raise ValueError(f"{flag}: no selected reference case matches {w!r}")
        cases = [c for c in cases if any(hit(c, w) for w in wanted)]
    return cases


def compare(vectors, results, kinds=None, ids=None, outputs=None, present=False, tier="float64"):
    """Compare results with reference vectors, case by case.

    Parameters
    ----------
    vectors, results : dict
        Payloads as returned by ``load_json``. The reference is validated completely
        first (``fm_ref.vectors.schema.check_reference``: finite numbers, tolerances
        finite and ≥ 0), so a corrupted reference cannot make a wrong result pass.
    kinds : iterable of str, optional
        Check only cases of these kinds (the results need hold only those).
    ids : iterable of str, optional
        Check only cases whose id matches one of these ``fnmatch`` patterns.
    outputs : iterable of str, optional
        Check only these outputs (and only cases that have one of them).
    present : bool
        False (strict, the default): every selected case and output must be in the
        results. True (partial): check exactly what the results hold among the selected
        cases and outputs; the rest is skipped. Either way nothing checkable is an error.
    tier : {'float64', 'float32'}
        Which tolerance to apply: each case's ``tolerance`` or ``tolerance_float32``.

    Returns
    -------
    list of dict, one per checked case: id, kind, max_abs, max_rel, ratio (worst error in
    units of the tolerance), abs, rel, passed, checked (output names compared) and
    skipped (selected outputs absent from the results, in partial mode). A case passes
    only if its ratio is ≤ 1 (a NaN is never dropped: it fails).

    Raises ``ValueError`` for a malformed reference, an incomplete (in strict mode) or
    malformed results file (a missing case or output, a wrong shape, non-finite values,
    non-numbers), naming the place, e.g. ``RESULTS: cases[4].outputs.x_t``, or nothing to
    check.
    """
    if tier not in TIERS:
        raise ValueError(f"tier: expected one of {sorted(TIERS)}, got {tier!r}")
    ref_arrays = check_reference(vectors, "VECTORS", SCHEMA_VERSION)
    check_structure(results, "RESULTS", SCHEMA_VERSION)
    got_by_id = {c["id"]: (j, c) for j, c in enumerate(results["cases"])}
    ref_cases = select_cases(vectors, kinds, ids, outputs)
    missing = [c["id"] for c in ref_cases if c["id"] not in got_by_id]
    if missing and not present:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"RESULTS: incomplete, {len(missing)} case(s) missing: "
                         f"{', '.join(missing[:5])}{more} (use --kind or --id to select cases, "
                         "or --present to check only what RESULTS holds)")
    report = []
    for case in ref_cases:
        cid = case["id"]
        if cid not in got_by_id:
            continue
        tol = _tier_tolerance(case, tier)
        j, got_case = got_by_id[cid]
        names = [k for k in ref_arrays[cid] if outputs is None or k in outputs]
        absent = [k for k in names if k not in got_case["outputs"]]
        if absent and not present:
            raise ValueError(f"RESULTS: case {cid!r} lacks the output '{absent[0]}'")
        checked = [k for k in names if k in got_case["outputs"]]
        if not checked:
            continue
        worst = (0.0, 0.0, 0.0)
        for name in checked:
            r = ref_arrays[cid][name]
            g = number_array(got_case["outputs"][name], f"RESULTS: cases[{j}].outputs.{name} (id {cid!r})")
            if g.shape != r.shape:
                raise ValueError(f"RESULTS: case {cid!r} output '{name}' expected shape {r.shape}, got {g.shape}")
            worst = tuple(worse(a, b) for a, b in zip(worst, _case_errors(r, g, tol)))
        report.append({"id": cid, "kind": case["kind"], "max_abs": worst[0], "max_rel": worst[1],
                       "ratio": worst[2], "abs": tol["abs"], "rel": tol["rel"], "passed": bool(worst[2] <= 1.0),
                       "checked": checked, "skipped": absent})
    if not report:
        raise ValueError("RESULTS: nothing to check: no selected reference case has an output in RESULTS")
    return report


def _tier_tolerance(case, tier):
    """The case's tolerance of this tier as {'abs', 'rel'} floats, validated like the float64 one."""
    key = TIERS[tier]
    tol = case.get(key)
    if not isinstance(tol, dict):
        raise ValueError(f"VECTORS: case {case['id']!r} has no '{key}' (needed by --tier {tier})")
    out = {}
    for k in ("abs", "rel"):
        v = tol.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                or (k == "rel" and v >= 1.0):
            raise ValueError(f"VECTORS: case {case['id']!r} {key}.{k}: expected a finite number >= 0"
                             f"{' and < 1' if k == 'rel' else ''}, got {v!r}")
        out[k] = float(v)
    return out
