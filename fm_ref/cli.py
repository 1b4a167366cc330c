"""The command line ``fm-ref`` (also ``python -m fm_ref``).

Subcommands
-----------
demo     train a normalizing flow, a CNF and flow-matching models on 2-D toy data and
         compare them (exact NLL, W₂ to held-out data, time, NFE); the main job
verify   run the theorem checks of ``fm_ref.verify`` and print a table
vectors  write the golden reference vectors (float64, bit-exact JSON)
check    compare another implementation's results with the reference vectors
bench    time the operations that matter (medians over repeats)

Exit codes: 0 success; 1 a check or a comparison failed; 2 bad arguments or a bad
file (a one-line ``fm-ref: error: ...`` message, never a traceback).
"""
import argparse
import json
import math
import os
import sys

from . import __version__

__all__ = ["main", "format_table"]

#: Environment variables that set the BLAS thread count.
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _default_single_threaded_blas():
    """Use one BLAS thread unless the user chose a count (must run before numpy loads).

    fm_ref's matrices are small (batch 256 × width 64): a multi-threaded BLAS spends
    more time waking threads than multiplying, and on a loaded machine it is 5-15×
    slower than one thread (measured: 256×64 by 64×64 products, 165 µs with one thread,
    2.5 ms with two under load). Set OPENBLAS_NUM_THREADS yourself to override.
    """
    if "numpy" in sys.modules or any(v in os.environ for v in BLAS_THREAD_VARS):
        return
    for var in BLAS_THREAD_VARS:
        os.environ[var] = "1"


_default_single_threaded_blas()

#: The groups of theorem checks in ``fm_ref.verify``.
VERIFY_GROUPS = ("foundation", "cnf", "flows")


class UsageError(Exception):
    """A user error found by the CLI itself (reported with exit code 2)."""


# ----------------------------------------------------------------------------- output

def format_table(headers, rows, align=None):
    """Plain-text table: a header line, a rule, one line per row (cells already strings).

    ``align`` is a string of 'l'/'r' per column (default: left for the first column,
    right for the others).
    """
    rows = [[str(c) for c in row] for row in rows]
    ncol = len(headers)
    align = align or "l" + "r" * (ncol - 1)
    widths = [max([len(headers[j])] + [len(r[j]) for r in rows]) for j in range(ncol)]

    def line(cells):
        out = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


def fmt(value, spec=".3g"):
    """A number for a table cell ('-' for None, 'nan' never expected)."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def _finite_json(obj):
    """Replace non-finite floats by strings ('nan', 'inf'): strict JSON has no NaN."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def _write_json(path, payload):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(_finite_json(payload), fh, indent=1, allow_nan=False)
        fh.write("\n")


def check_writable(path, what="--json"):
    """Fail early (before minutes of work) if an output file cannot be created."""
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{what}: {path!r} is a directory, expected a file name")
    if not os.path.isdir(parent):
        raise UsageError(f"{what}: the directory {parent!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{what}: the directory {parent!r} is not writable")


def _say(*args):
    print(*args, flush=True)


# ----------------------------------------------------------------------------- verify

def cmd_verify(args):
    from .verify import CHECKS, run_checks

    check_writable(args.json)
    groups = tuple(args.group) if args.group else None
    run_checks(names=())  # import every check module (runs nothing)
    unknown = sorted(set(args.check or ()) - set(CHECKS))
    if unknown:
        raise UsageError(f"--check: no check named {', '.join(map(repr, unknown))}; "
                         f"the checks are: {', '.join(CHECKS)}")
    names = [n for n, (g, _, _) in CHECKS.items()
             if (groups is None or g in groups) and (not args.check or n in args.check)]
    if not names:
        raise UsageError(f"no checks registered for the group(s) {', '.join(groups or VERIFY_GROUPS)}")
    _say(f"fm-ref verify: {len(names)} checks" + (f" (groups: {', '.join(groups)})" if groups else ""))
    records = []
    for name in names:
        group, route, _ = CHECKS[name]
        try:
            res = run_checks(names=(name,))[0]
            rec = dict(res.as_dict(), group=group, status="pass" if res.passed else "FAIL", error=None)
        except Exception as exc:  # a crashing check is reported as a failed check
            rec = dict(name=name, route=route, group=group, measured=None, tolerance=None, reason="",
                       seconds=None, passed=False, status="ERROR", error=f"{type(exc).__name__}: {exc}")
        records.append(rec)
        _say(f"  {rec['status']:5s} {name}" + (f"  ({rec['error']})" if rec["error"] else ""))
    headers = ["check", "route", "measured", "tolerance", "status", "seconds"]
    rows = [[r["name"], r["route"], fmt(r["measured"], ".2e"), fmt(r["tolerance"], ".1e"), r["status"],
             fmt(r["seconds"], ".2f")] for r in records]
    _say()
    _say(format_table(headers, rows, align="llrrlr"))
    failed = [r["name"] for r in records if not r["passed"]]
    total = sum(r["seconds"] or 0.0 for r in records)
    _say(f"\n{len(records) - len(failed)}/{len(records)} checks passed in {total:.1f} s"
         + (f"; failed: {', '.join(failed)}" if failed else ""))
    if args.json:
        _write_json(args.json, {"fm_ref_version": __version__, "passed": not failed,
                                "n_checks": len(records), "checks": records})
        _say(f"wrote {args.json}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- vectors, check

def cmd_vectors(args):
    from . import vectors

    check_writable(args.out, "--out")
    _say(f"fm-ref vectors: generating {', '.join(args.kind) if args.kind else 'all kinds'}")
    payload = vectors.write_vectors(args.out, kinds=args.kind, log=_say)
    size = os.path.getsize(args.out)
    _say(f"wrote {len(payload['cases'])} cases to {args.out} ({size / 1024:.0f} KiB)")
    return 0


def cmd_check(args):
    from . import vectors

    check_writable(args.json)
    ref = vectors.load_json(args.vectors, "VECTORS")
    got = vectors.load_json(args.results, "RESULTS")
    for case in ref["cases"]:
        tol = case.get("tolerance")
        if not (isinstance(tol, dict) and all(isinstance(tol.get(k), (int, float)) for k in ("abs", "rel"))):
            raise ValueError(f"VECTORS: case {case['id']!r} has no tolerance {{'abs': ..., 'rel': ...}}")
    report = vectors.compare(ref, got, kinds=args.kind)
    unknown = sorted({c["id"] for c in got["cases"]} - {c["id"] for c in ref["cases"]})
    if unknown:
        _say(f"note: {len(unknown)} case(s) in {args.results} are not in {args.vectors} and were ignored: "
             f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}")
    by_kind = {}
    for r in report:
        by_kind.setdefault(r["kind"], []).append(r)
    rows = [[kind, str(len(rs)), str(sum(r["passed"] for r in rs)), fmt(max(r["max_abs"] for r in rs), ".2e"),
             fmt(max(r["max_rel"] for r in rs), ".2e"), fmt(max(r["ratio"] for r in rs), ".2g")]
            for kind, rs in by_kind.items()]
    _say(f"fm-ref check: {args.results} against {args.vectors} ({len(report)} cases)\n")
    _say(format_table(["kind", "cases", "passed", "max abs err", "max rel err", "worst err/tol"], rows))
    failed = [r for r in report if not r["passed"]]
    shown = report if args.all else failed
    if shown:
        _say("\n" + ("all cases:" if args.all else "failed cases:"))
        _say(format_table(["case", "max abs err", "max rel err", "abs tol", "rel tol", "err/tol", "status"],
                          [[r["id"], fmt(r["max_abs"], ".2e"), fmt(r["max_rel"], ".2e"), fmt(r["abs"], ".0e"),
                            fmt(r["rel"], ".0e"), fmt(r["ratio"], ".2g"), "pass" if r["passed"] else "FAIL"]
                           for r in shown]))
    _say(f"\n{len(report) - len(failed)}/{len(report)} cases within tolerance"
         + ("" if not failed else f"; {len(failed)} FAILED") + "  (err/tol = max |got - ref| / (abs + rel |ref|))")
    if args.json:
        _write_json(args.json, {"passed": not failed, "n_cases": len(report), "cases": report})
        _say(f"wrote {args.json}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- demo

def cmd_demo(args):
    from .demo import _print, _silent, run_demo
    from .demo_run import report as demo_report

    created = top = None
    if not os.path.isdir(args.out):
        created = top = os.path.abspath(args.out)
        while not os.path.exists(os.path.dirname(top)):
            top = os.path.dirname(top)  # the outermost folder this run creates
        try:
            os.makedirs(args.out)
        except OSError as exc:
            raise UsageError(f"--out: cannot create the directory {args.out!r} ({exc.strerror})") from None
    try:
        res = run_demo(data=args.data, steps=args.steps, seed=args.seed, out=args.out, n_eval=args.n_eval,
                       plot=not args.no_plot, jobs=args.jobs, log=_silent if args.quiet else _print,
                       quick=args.quick)
    except BaseException:
        while created and os.path.isdir(created) and not os.listdir(created):
            os.rmdir(created)  # leave no empty folder behind an argument error or an interrupt
            created = os.path.dirname(created) if created != top else None
        raise
    _say(demo_report(res))
    for path in [*res["figures"].values(), res["results_json"]]:
        _say(f"wrote {path}" + (" (replaced the existing file)" if path in res["replaced"] else ""))
    _say(f"total {res['total_seconds']:.1f} s")
    return 0


# ----------------------------------------------------------------------------- bench

def cmd_bench(args):
    from .bench import run_bench

    check_writable(args.json)
    out = run_bench(repeats=args.repeats, quick=args.quick, log=_say)
    m = out["machine"]
    _say(f"\nmachine: {m['nproc']} usable cores ({m['cores']} total), {m['cpu']}; python {m['python']}, "
         f"numpy {m['numpy']}, scipy {m['scipy']}; BLAS threads {m['blas_threads']}; "
         f"load average {m['loadavg_1min']}")
    _say(f"medians over {args.repeats} repeat(s){' (--quick sizes)' if args.quick else ''}\n")
    rows = [[r["name"], r["size"], f"{r['median_s'] * 1e3:.2f}",
             f"{r['rate']:.4g} {r['rate_unit']}" if r["rate"] is not None else "-", r["notes"]]
            for r in out["results"]]
    _say(format_table(["operation", "size", "median ms", "rate", "notes"], rows, align="llrrl"))
    if args.json:
        _write_json(args.json, out)
        _say(f"wrote {args.json}")
    return 0


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ----------------------------------------------------------------------------- parser

def build_parser():
    parser = argparse.ArgumentParser(
        prog="fm-ref",
        description="fm_ref: a float64 reference implementation of normalizing flows, CNFs and "
                    "(conditional) flow matching.",
    )
    parser.add_argument("--version", action="version", version=f"fm_ref {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from .distributions import TOY_DATASETS

    p = sub.add_parser("demo", help="train NF, CNF and CFM models on 2-D data and compare them (the main job)")
    p.add_argument("--data", choices=sorted(TOY_DATASETS), default="8gaussians", help="toy data set (default 8gaussians)")
    p.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                   help="CFM training steps (default 8000, 1500 with --quick); the other budgets scale with it")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--out", default="out", metavar="DIR", help="output directory, created if needed (default ./out)")
    p.add_argument("--n-eval", type=_positive_int, default=None, metavar="N",
                   help="held-out points for NLL and W2 (default 2000)")
    p.add_argument("--no-plot", action="store_true", help="do not write demo.png and cost.png")
    p.add_argument("--quick", action="store_true", help="smaller budgets and sizes: a first look in about 30 s")
    p.add_argument("--quiet", action="store_true", help="no progress lines; only the tables and the files written")
    p.add_argument("--jobs", type=_positive_int, default=None, metavar="N",
                   help="worker processes for training and evaluation (default: 2, or 1 on one core)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("verify", help="run the theorem checks and print a table (exit 1 if any fails)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--group", action="append", choices=VERIFY_GROUPS,
                   help="run only this group of checks (repeatable)")
    p.add_argument("--check", action="append", metavar="NAME", help="run only the check NAME (repeatable)")
    p.set_defaults(func=cmd_verify)

    from .vectors import KINDS

    p = sub.add_parser("vectors", help="write the golden reference vectors (float64 JSON)")
    p.add_argument("--out", metavar="FILE", required=True, help="the JSON file to write")
    p.add_argument("--kind", action="append", choices=KINDS, help="only this kind of case (repeatable)")
    p.set_defaults(func=cmd_vectors)

    p = sub.add_parser("check", help="compare your results with the reference vectors (exit 1 on a mismatch)")
    p.add_argument("vectors", metavar="VECTORS", help="reference vectors from 'fm-ref vectors'")
    p.add_argument("results", metavar="RESULTS", help="your outputs: the same schema, each case with id and outputs")
    p.add_argument("--kind", action="append", choices=KINDS,
                   help="check only cases of this kind (repeatable); RESULTS need hold only those")
    p.add_argument("--all", action="store_true", help="list every case, not only the failed ones")
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="time divergence, CNF log-likelihood, CFM training and flow log_prob")
    p.add_argument("--repeats", type=_positive_int, default=3, metavar="N", help="repeats per timing (median; default 3)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None):
    """Run ``fm-ref`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help/--version (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.func(args)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"fm-ref: error: {exc.strerror or exc}{where}", file=sys.stderr, flush=True)
        return 2
    except (UsageError, ValueError, TypeError) as exc:
        print(f"fm-ref: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("fm-ref: interrupted", file=sys.stderr)
        return 130
