"""The command line ``fm-ref`` (also ``python -m fm_ref``).

Subcommands
-----------
demo     train a normalizing flow, a CNF and flow-matching models on 2-D toy data and
         compare them (exact NLL, W₂ to held-out data, time, NFE); the main job
verify   run the theorem checks of ``fm_ref.verify`` and print a table
vectors  write the golden reference vectors (float64, bit-exact JSON)
check    compare another implementation's results with the reference vectors
bench    time the operations that matter (medians over repeats)
log-prob the exact log p₁ of your points under your own saved velocity MLP (fm_ref.usermodel)
sample   samples of your own saved velocity MLP

Exit codes: 0 success; 1 a check or a comparison failed; 2 bad arguments, a bad file
or a failed computation (one line ``fm-ref: error: ...`` on stderr naming the option or
the file, never a traceback; argparse's own usage errors look the same, e.g.
``fm-ref: error: argument --seed: invalid int value: 'x'``); 130 interrupted; 141 the
reader of the output went away (``fm-ref check ... | head -1``: a quiet end, as for a
process ended by SIGPIPE).

Every file written is written atomically (``fm_ref._io``): an interrupted or failed write
leaves the old file intact, and replacing an existing file is said in the output line.
"""
import argparse
import json
import math
import os
import sys

from . import __version__
from ._io import atomic_write_text, finite_json

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
VERIFY_GROUPS = ("foundation", "cnf", "flows", "diffusion", "couplings")


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



def _write_json(path, payload):
    """Write ``payload`` as JSON atomically; return the line that says so."""
    existed = atomic_write_text(path, json.dumps(finite_json(payload), indent=1, allow_nan=False) + "\n")
    return f"wrote {path}" + (" (replaced the existing file)" if existed else "")


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
        _say(_write_json(args.json, {"fm_ref_version": __version__, "passed": not failed,
                                     "n_checks": len(records), "checks": records}))
    return 1 if failed else 0


# ----------------------------------------------------------------------------- vectors, check

def cmd_vectors(args):
    from . import vectors

    check_writable(args.out, "--out")
    _say(f"fm-ref vectors: generating {', '.join(args.kind) if args.kind else 'all kinds'}")
    existed = os.path.exists(args.out)
    payload = vectors.write_vectors(args.out, kinds=args.kind, log=_say)
    size = os.path.getsize(args.out)
    _say(f"wrote {len(payload['cases'])} cases to {args.out} ({size / 1024:.0f} KiB)"
         + (" (replaced the existing file)" if existed else ""))
    return 0


def _worst(values):
    """The largest value, NaN if any is NaN (the builtin max can drop a NaN)."""
    values = list(values)
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _check_not_an_input(path, what, **inputs):
    """Refuse an output file that is one of the input files (it would replace them)."""
    if path is None or not os.path.exists(path):
        return
    for role, other in inputs.items():
        if os.path.exists(other) and os.path.samefile(path, other):
            raise UsageError(f"{what}: {path!r} is the {role} file; writing the report would replace it")


def cmd_check(args):
    from . import vectors

    check_writable(args.json)
    _check_not_an_input(args.json, "--json", VECTORS=args.vectors, RESULTS=args.results)
    ref = vectors.load_json(args.vectors, "VECTORS")
    got = vectors.load_json(args.results, "RESULTS")
    report = vectors.compare(ref, got, kinds=args.kind, ids=args.id, outputs=args.output, present=args.present,
                             tier=args.tier)  # validates the reference first
    unknown = sorted({c["id"] for c in got["cases"]} - {c["id"] for c in ref["cases"]})
    if unknown:
        _say(f"note: {len(unknown)} case(s) in {args.results} are not in {args.vectors} and were ignored: "
             f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}")
    selected = vectors.select_cases(ref, args.kind, args.id, args.output)
    rows, skipped = _check_rows(selected, report)
    _say(f"fm-ref check: {args.results} against {args.vectors} ({len(report)} cases checked"
         + (f", {len(skipped)} skipped" if args.present else "") + f"; tier {args.tier})\n")
    _say(format_table(["kind", "cases", "checked", "skipped", "failed", "max abs err", "max rel err",
                       "worst err/tol"], rows))
    failed = [r for r in report if not r["passed"]]
    shown = report if args.all else failed
    if shown:
        _say("\n" + ("all cases:" if args.all else "failed cases:"))
        _say(format_table(["case", "max abs err", "max rel err", "abs tol", "rel tol", "err/tol", "status"],
                          [[r["id"], fmt(r["max_abs"], ".2e"), fmt(r["max_rel"], ".2e"), fmt(r["abs"], ".0e"),
                            fmt(r["rel"], ".0e"), fmt(r["ratio"], ".2g"), "pass" if r["passed"] else "FAIL"]
                           for r in shown]))
    if args.present and skipped:
        outs = sum(len(r["skipped"]) for r in report)
        _say(f"\nskipped (not in {args.results}): {len(skipped)} case(s)" + (f" and {outs} output(s) of checked "
             "cases" if outs else "") + (": " + ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else "")))
    _say(f"\n{len(report) - len(failed)}/{len(report)} cases within tolerance"
         + ("" if not failed else f"; {len(failed)} FAILED") + "  (err/tol = max |got - ref| / (abs + rel |ref|))")
    if args.json:
        _say(_write_json(args.json, {"passed": not failed, "n_cases": len(report), "tier": args.tier,
                                     "skipped": skipped, "cases": report}))
    return 1 if failed else 0


def _check_rows(selected, report):
    """Per kind: selected cases, checked, skipped (absent from the results), failed, worst errors;
    and the ids of the skipped cases."""
    by_id = {r["id"]: r for r in report}
    kinds = {}
    for case in selected:
        kinds.setdefault(case.get("kind", ""), []).append(case["id"])
    rows, skipped = [], []
    for kind, ids in kinds.items():
        rs = [by_id[i] for i in ids if i in by_id]
        skipped += [i for i in ids if i not in by_id]
        worst = [fmt(_worst(r[k] for r in rs), spec) if rs else "-"
                 for k, spec in (("max_abs", ".2e"), ("max_rel", ".2e"), ("ratio", ".2g"))]
        partial = sum(bool(r["skipped"]) for r in rs)
        rows.append([kind, str(len(ids)), str(len(rs)) + (f" ({partial} partly)" if partial else ""),
                     str(len(ids) - len(rs)), str(sum(not r["passed"] for r in rs))] + worst)
    return rows, skipped


# ----------------------------------------------------------------------------- demo

def cmd_demo(args):
    from .demo import _print, _silent, run_demo
    from .demo.run import report as demo_report

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
        _say(_write_json(args.json, out))
    return 0


def _int_in(lo, hi, what="a positive integer"):
    """An argparse type: an integer in [lo, hi] (argparse names the option in its message)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text[:40]!r}") from None
        if not lo <= value <= hi:
            top = f"2**{hi.bit_length() - 1}" if hi > 2**32 and hi & (hi - 1) == 0 else str(hi)
            raise argparse.ArgumentTypeError(f"expected {what} in [{lo}, {top}], got {text[:40]}")
        return value

    return parse


_positive_int = _int_in(1, 10**9)
#: Bounds for the numeric options: far above any useful value, low enough that a typo
#: cannot ask for hours of work or more memory than the machine has.
MAX_STEPS = 10**6  # CFM steps (the demo's default is 2000; 10⁶ is many hours)
MAX_JOBS = 64  # worker processes: more than the models to train only costs memory
MAX_REPEATS = 1000
MAX_SEED = 2**128  # numpy's SeedSequence takes any non-negative integer; 128 bits is plenty


def _name(text):
    """An argparse type: a non-empty file or folder name."""
    if not text or not text.strip():
        raise argparse.ArgumentTypeError(f"expected a file or folder name, got {text!r}")
    if "\0" in text:
        raise argparse.ArgumentTypeError("expected a file or folder name, got one with a NUL character")
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line ``fm-ref: error: ...`` (exit code 2)."""

    def error(self, message):
        raise UsageError(message)


# ----------------------------------------------------------------------------- parser

def build_parser():
    parser = _Parser(
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
    from .demo import MAX_EVAL

    p.add_argument("--steps", type=_int_in(1, MAX_STEPS), default=None, metavar="N",
                   help="CFM training steps (default 8000, 1500 with --quick); the other budgets scale with it")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED, "a non-negative integer"), default=0, metavar="S",
                   help="random seed (default 0)")
    p.add_argument("--out", type=_name, default="out", metavar="DIR",
                   help="output directory, created if needed (default ./out)")
    p.add_argument("--n-eval", type=_int_in(2, MAX_EVAL, "an integer"), default=None, metavar="N",
                   help="held-out points for NLL and W2 (default 2000)")
    p.add_argument("--no-plot", action="store_true", help="do not write demo.png and cost.png")
    p.add_argument("--quick", action="store_true", help="smaller budgets and sizes: a first look in about 30 s")
    p.add_argument("--quiet", action="store_true", help="no progress lines; only the tables and the files written")
    p.add_argument("--jobs", type=_int_in(1, MAX_JOBS), default=None, metavar="N",
                   help="worker processes for training and evaluation (default: 2, or 1 on one core)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("verify", help="run the theorem checks and print a table (exit 1 if any fails)")
    p.add_argument("--json", type=_name, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--group", action="append", choices=VERIFY_GROUPS,
                   help="run only this group of checks (repeatable)")
    p.add_argument("--check", action="append", metavar="NAME", help="run only the check NAME (repeatable)")
    p.set_defaults(func=cmd_verify)

    from .vectors import KINDS, TIERS

    p = sub.add_parser("vectors", help="write the golden reference vectors (float64 JSON)")
    p.add_argument("--out", type=_name, metavar="FILE", required=True, help="the JSON file to write")
    p.add_argument("--kind", action="append", choices=KINDS, help="only this kind of case (repeatable)")
    p.set_defaults(func=cmd_vectors)

    p = sub.add_parser("check", help="compare your results with the reference vectors (exit 1 on a mismatch)")
    p.add_argument("vectors", type=_name, metavar="VECTORS", help="reference vectors from 'fm-ref vectors'")
    p.add_argument("results", type=_name, metavar="RESULTS",
                   help="your outputs: the same schema, each case with id and outputs")
    p.add_argument("--kind", action="append", choices=KINDS,
                   help="check only cases of this kind (repeatable); RESULTS need hold only those")
    p.add_argument("--id", action="append", metavar="PATTERN",
                   help="check only cases whose id matches PATTERN (shell-style, e.g. 'marginal/mix1d/*'; repeatable)")
    p.add_argument("--output", action="append", metavar="NAME",
                   help="check only the output NAME (e.g. log_prob; repeatable)")
    p.add_argument("--present", action="store_true",
                   help="partial mode: check exactly the selected cases and outputs that RESULTS holds, "
                        "skip the rest (default: every selected case and output must be there)")
    p.add_argument("--tier", choices=tuple(TIERS), default="float64",
                   help="tolerance tier: float64 (default) or float32 (for single-precision code)")
    p.add_argument("--all", action="store_true", help="list every case, not only the failed ones")
    p.add_argument("--json", type=_name, metavar="FILE", help="also write the report as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="time divergence, CNF log-likelihood, CFM and NF training, and flow log_prob")
    p.add_argument("--repeats", type=_int_in(1, MAX_REPEATS), default=3, metavar="N",
                   help="repeats per timing (median; default 3)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--json", type=_name, metavar="FILE", help="also write the results as JSON")
    p.set_defaults(func=cmd_bench)

    from .usermodel import add_parsers  # log-prob and sample: your own saved MLP

    add_parsers(sub)
    return parser


def _error(message, code=2):
    """Print ``fm-ref: error: message`` as one line on stderr; return the exit code."""
    print("fm-ref: error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
    return code


def _quiet_broken_pipe():
    """The reader of stdout went away: send further output (and the interpreter's final
    flush) to /dev/null, so that nothing is printed about it."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass
    return 141


def main(argv=None):
    """Run ``fm-ref`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help or --version (0)
            return exc.code if isinstance(exc.code, int) else 2
        return args.func(args)
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _error(f"{exc.strerror or exc}{where}")
    except (UsageError, ValueError, TypeError, ArithmeticError, RuntimeError) as exc:
        # ArithmeticError (FloatingPointError, overflow) and RuntimeError: a solver failure
        return _error(exc)
    except MemoryError:
        return _error("out of memory (lower the sizes asked for)")
    except KeyboardInterrupt:
        print("fm-ref: interrupted", file=sys.stderr)
        return 130
