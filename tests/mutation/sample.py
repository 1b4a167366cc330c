"""A small AST mutation sampler for fm_ref's math modules (not collected by pytest).

Each mutant is one small deliberate bug (a swapped operator, a changed constant, a dropped
term, ...) written into a copy of the worktree's ``fm_ref/`` (one temporary copy per
mutant) and run against the test files mapped to its module with
``python -m pytest -x -q -p no:cacheprovider``. A mutant is *killed* when the run fails,
*killed-by-timeout* when it runs longer than ``--timeout-factor`` times the clean run, and
*survives* when the run passes. Mutants listed in ``equivalent.txt`` (read and found not
to change behaviour) are excluded from the sample.

A mutant's id is stable under edits elsewhere in the file: a hash of the module, the
enclosing function, the original and mutated source of the node and its occurrence
index within the function.

Usage (from the worktree root)::

    python tests/mutation/sample.py --list --module paths          # enumerate sites
    nohup python tests/mutation/sample.py --per-module 40 --seed 0 \\
        --out /tmp/mut.jsonl > /tmp/mut.log 2>&1 &                 # sample and run
    python tests/mutation/sample.py --report /tmp/mut.jsonl        # table + survivors
    python tests/mutation/sample.py --rerun /tmp/mut.jsonl --out /tmp/mut2.jsonl
                                                                   # re-run survivors only
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The tree mutated and tested; FM_REF_MUTATION_ROOT points at a snapshot of the worktree so
# that editing the tests during a long run does not change what the run measures.
ROOT = Path(os.environ.get("FM_REF_MUTATION_ROOT", Path(__file__).resolve().parents[2]))
HERE = Path(__file__).resolve().parent
EQUIVALENT = HERE / "equivalent.txt"

# module name -> (source file, mapped test files)
MODULES = {
    "paths": ("fm_ref/paths.py", ["tests/test_paths.py"]),
    "marginal": ("fm_ref/marginal.py", ["tests/test_marginal.py"]),
    "losses": ("fm_ref/losses.py", ["tests/test_losses.py"]),
    "divergence": ("fm_ref/divergence.py", ["tests/test_divergence.py"]),
    "cnf": ("fm_ref/cnf.py", ["tests/test_cnf.py"]),
    "adjoint": ("fm_ref/adjoint.py", ["tests/test_adjoint.py"]),
    # the MLP's hand-written backward pass is tested beside the losses and the flows it serves
    "nn": ("fm_ref/nn.py", ["tests/test_nn.py", "tests/test_losses.py::test_hand_written_backward_matches_autograd",
                            "tests/test_losses.py::test_backward_in_reused_work_arrays_keeps_every_result",
                            "tests/test_flows_grad.py"]),
    "distributions": ("fm_ref/distributions.py", ["tests/test_distributions.py"]),
    "flows": ("fm_ref/flows/__init__.py", ["tests/test_flows.py", "tests/test_flows_density.py", "tests/test_flows_grad.py"]),
    "flows.layers": ("fm_ref/flows/layers.py", ["tests/test_flows.py", "tests/test_flows_density.py", "tests/test_flows_grad.py"]),
    "flows.coupling": ("fm_ref/flows/coupling.py", ["tests/test_flows.py", "tests/test_flows_density.py", "tests/test_flows_grad.py"]),
    "flows.residual": ("fm_ref/flows/residual.py", ["tests/test_flows.py", "tests/test_flows_density.py", "tests/test_flows_grad.py"]),
    # Adam's eps = 0 rule and its non-finite cases are pinned in test_hardening.py too
    "train": ("fm_ref/train.py", ["tests/test_train.py",
                                  "tests/test_hardening.py::test_adam_with_eps_zero_keeps_a_zero_gradient_coordinate_in_place",
                                  "tests/test_hardening.py::test_adam_refuses_non_finite_parameters_and_gradients_and_names_the_cause",
                                  "tests/test_hardening.py::test_adam_overflowing_update_raises"]),
    "diffusion.losses": ("fm_ref/diffusion/losses.py", ["tests/test_diffusion.py", "tests/test_diffusion_samplers.py", "tests/test_verify.py"]),
    "diffusion.predictors": ("fm_ref/diffusion/predictors.py", ["tests/test_diffusion.py", "tests/test_diffusion_samplers.py", "tests/test_verify.py"]),
    "diffusion.samplers": ("fm_ref/diffusion/samplers.py", ["tests/test_diffusion.py", "tests/test_diffusion_samplers.py", "tests/test_verify.py"]),
    "diffusion.sde": ("fm_ref/diffusion/sde.py", ["tests/test_diffusion.py", "tests/test_diffusion_samplers.py", "tests/test_verify.py"]),
    "diffusion.train": ("fm_ref/diffusion/train.py", ["tests/test_diffusion.py", "tests/test_diffusion_samplers.py", "tests/test_verify.py"]),
    "couplings.closed_form": ("fm_ref/couplings/closed_form.py", ["tests/test_couplings_plans.py", "tests/test_couplings_fields.py", "tests/test_verify.py"]),
    "couplings.evaluate": ("fm_ref/couplings/evaluate.py", ["tests/test_couplings_plans.py", "tests/test_couplings_fields.py", "tests/test_verify.py"]),
    "couplings.gaussian": ("fm_ref/couplings/gaussian.py", ["tests/test_couplings_plans.py", "tests/test_couplings_fields.py", "tests/test_verify.py"]),
    "couplings.paths": ("fm_ref/couplings/paths.py", ["tests/test_couplings_plans.py", "tests/test_couplings_fields.py", "tests/test_verify.py"]),
    "couplings.plans": ("fm_ref/couplings/plans.py", ["tests/test_couplings_plans.py", "tests/test_couplings_fields.py", "tests/test_verify.py"]),
    "couplings.schedule": ("fm_ref/couplings/schedule.py", ["tests/test_couplings_plans.py", "tests/test_couplings_fields.py", "tests/test_verify.py"]),
}

PYTHON = sys.executable

_BINOP_SWAPS = {
    ast.Add: [ast.Sub],
    ast.Sub: [ast.Add],
    ast.Mult: [ast.Div, ast.Pow],
    ast.Div: [ast.Mult],
    ast.Pow: [ast.Mult],
    ast.FloorDiv: [ast.Div],
    ast.Mod: [ast.FloorDiv],
}
_CMP_SWAPS = {
    ast.Lt: [ast.LtE, ast.Gt],
    ast.LtE: [ast.Lt, ast.GtE],
    ast.Gt: [ast.GtE, ast.Lt],
    ast.GtE: [ast.Gt, ast.LtE],
    ast.Eq: [ast.NotEq],
    ast.NotEq: [ast.Eq],
    ast.Is: [ast.IsNot],
    ast.IsNot: [ast.Is],
    ast.In: [ast.NotIn],
    ast.NotIn: [ast.In],
}


def _const_variants(value):
    """Changed constants: 0 <-> 1, c -> c + 1, c -> -c, 0.5 -> 2."""
    if isinstance(value, bool):
        return [not value]
    if not isinstance(value, (int, float)):
        return []
    out = []
    if value == 0:
        out.append(type(value)(1))
    elif value == 1:
        out += [type(value)(0), type(value)(2)]
    elif value == 0.5:
        out += [2.0, 1.5]
    else:
        out += [value + 1, -value]
    return [v for v in out if v != value]


def _skip_subtree(node):
    """Nodes whose subtree holds no behaviour worth mutating (messages, annotations)."""
    return isinstance(node, (ast.JoinedStr, ast.Raise, ast.Assert, ast.Import, ast.ImportFrom))


def _is_docstring(node, parent):
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str))


def _mutations(node):
    """Yield (operator name, mutated node) pairs for one AST node."""
    if isinstance(node, ast.BinOp):
        for new in _BINOP_SWAPS.get(type(node.op), []):
            yield "binop", ast.BinOp(left=node.left, op=new(), right=node.right)
        if isinstance(node.op, (ast.Add, ast.Sub)):
            yield "drop-term", node.left
            if isinstance(node.op, ast.Add):
                yield "drop-term", node.right
        if isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)) and not isinstance(
                node.left, ast.Constant):
            yield "unary-add", ast.BinOp(left=ast.UnaryOp(op=ast.USub(), operand=node.left),
                                         op=node.op, right=node.right)
    elif isinstance(node, ast.Compare) and len(node.ops) == 1:
        for new in _CMP_SWAPS.get(type(node.ops[0]), []):
            yield "compare", ast.Compare(left=node.left, ops=[new()], comparators=node.comparators)
    elif isinstance(node, ast.Constant):
        for v in _const_variants(node.value):
            yield "constant", ast.Constant(value=v)
    elif isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            yield "unary-drop", node.operand
        elif isinstance(node.op, ast.Not):
            yield "bool", node.operand
    elif isinstance(node, ast.BoolOp):
        new = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield "bool", ast.BoolOp(op=new, values=node.values)


def _return_mutations(node):
    """Return-value changes: swap the first two items of a returned tuple, else return None."""
    value = node.value
    if value is None:
        return
    if isinstance(value, ast.Tuple) and len(value.elts) >= 2:
        elts = list(value.elts)
        elts[0], elts[1] = elts[1], elts[0]
        yield "return", value, ast.Tuple(elts=elts, ctx=ast.Load())
    elif not (isinstance(value, ast.Constant) and value.value is None):
        yield "return", value, ast.Constant(value=None)


class _Sites(ast.NodeVisitor):
    def __init__(self):
        self.sites = []  # (func, node, operator, mutated node)
        self.func = "<module>"
        self.in_def = False  # inside a function body (else module or class body)
        self.in_def_of = {}  # site index -> in_def

    def generic_visit(self, node):
        self._children(node, list(ast.iter_child_nodes(node)))

    def _children(self, node, children):
        for child in children:
            if _skip_subtree(child) or _is_docstring(child, node):
                continue
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                outer, self.func = self.func, f"{self.func}.{child.name}"
                outer_def, self.in_def = self.in_def, isinstance(child, ast.FunctionDef)
                for d in child.decorator_list:
                    self.visit(d)
                if isinstance(child, ast.FunctionDef):
                    for d in child.args.defaults + [k for k in child.args.kw_defaults if k]:
                        self._add_node(d, default=True)
                        self.visit(d)
                self._children(child, child.body)
                self.func, self.in_def = outer, outer_def
                continue
            if isinstance(child, ast.AnnAssign):
                if child.value is not None:
                    self._children(child, [child.value])
                continue
            if isinstance(child, ast.AugAssign):
                for new in _BINOP_SWAPS.get(type(child.op), [])[:1]:
                    self.sites.append((self.func, child, "binop",
                                       ast.AugAssign(target=child.target, op=new(),
                                                     value=child.value)))
                    self.in_def_of[len(self.sites) - 1] = self.in_def
            if isinstance(child, ast.Return):
                for op, old, new in _return_mutations(child):
                    self.sites.append((self.func, old, op, new))
                    self.in_def_of[len(self.sites) - 1] = self.in_def
            self._add_node(child)
            self.visit(child)

    def _add_node(self, node, default=False):
        if not hasattr(node, "end_col_offset"):
            return
        for op, new in _mutations(node):
            self.sites.append((self.func, node, "default" if default else op, new))
            self.in_def_of[len(self.sites) - 1] = self.in_def or default


def _segment_replace(source_lines, node, text):
    """Replace the source span of ``node`` with ``text`` (lines are 1-based, cols in bytes)."""
    lines = source_lines
    l0, c0, l1, c1 = node.lineno - 1, node.col_offset, node.end_lineno - 1, node.end_col_offset
    first = lines[l0].encode()
    last = lines[l1].encode()
    new = first[:c0].decode() + text + last[c1:].decode()
    return lines[:l0] + [new] + lines[l1 + 1:]


def enumerate_mutants(module):
    """All mutants of one module: a list of dicts with id, line, diff and new source."""
    rel, _ = MODULES[module]
    source = (ROOT / rel).read_text()
    tree = ast.parse(source)
    visitor = _Sites()
    visitor.visit(tree)
    lines = source.splitlines()
    seen = {}
    mutants = []
    for index, (func, node, op, new) in enumerate(visitor.sites):
        old_text = ast.get_source_segment(source, node)
        if old_text is None:
            continue
        if isinstance(new, (ast.Constant, ast.stmt)):
            new_text = ast.unparse(new)
        else:
            new_text = "(" + ast.unparse(new) + ")"
        if isinstance(new, ast.Constant) and isinstance(new.value, (int, float)) and new.value < 0:
            new_text = "(" + new_text + ")"
        key = (func, old_text, new_text)
        seen[key] = seen.get(key, -1) + 1
        digest = hashlib.sha1(repr((module, key, seen[key])).encode()).hexdigest()[:10]
        new_lines = _segment_replace(lines, node, new_text)
        new_source = "\n".join(new_lines) + "\n"
        try:
            ast.parse(new_source)
        except SyntaxError:
            continue
        if new_source == source or new_source.strip() == source.strip():
            continue
        mutants.append({
            "id": f"{module}:{digest}",
            "module": module,
            "file": rel,
            "line": node.lineno,
            "func": func,
            "in_def": visitor.in_def_of.get(index, False),
            "op": op,
            "old": lines[node.lineno - 1].strip(),
            "new": new_lines[node.lineno - 1].strip(),
            "source": new_source,
        })
    return mutants


def load_equivalent():
    """Ids (first field of each non-comment line) of mutants read and found equivalent."""
    ids = {}
    if EQUIVALENT.exists():
        for line in EQUIVALENT.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                mid, _, reason = line.partition(" ")
                ids[mid] = reason.strip()
    return ids


def _make_tree(tmp):
    shutil.copytree(ROOT / "fm_ref", tmp / "fm_ref", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", tmp / "tests",
                    ignore=shutil.ignore_patterns("__pycache__", "mutation", ".hypothesis"))
    shutil.copy(ROOT / "pyproject.toml", tmp / "pyproject.toml")


def run_tests(tmp, tests, timeout):
    """Run the mapped tests (or, for ``verify:NAME`` entries, ``python -m fm_ref verify``)."""
    env = dict(os.environ, PYTHONPATH=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    checks = [t.split(":", 1)[1] for t in tests if t.startswith("verify:")]
    if checks:
        cmd = [PYTHON, "-m", "fm_ref", "verify"] + [a for c in checks for a in ("--check", c)]
    elif FORK:
        status, elapsed, tail = _run_forked(tmp, ["-x", "-q", "-p", "no:cacheprovider", "-W",
                                                   "ignore::pytest.PytestAssertRewriteWarning", *tests], timeout)
        if status != "timeout":
            return status, elapsed, tail
        # a forked child that hangs may be a lock inherited from another thread: re-run it
        # in a fresh interpreter before counting a timeout
        cmd = [PYTHON, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    else:
        cmd = [PYTHON, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start, ""
    elapsed = time.monotonic() - start
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return ("survived" if proc.returncode == 0 else "killed"), elapsed, tail


#: Fork a pre-imported interpreter per mutant (numpy, scipy, autograd, hypothesis and pytest
#: loaded once; fm_ref never is) instead of starting one: under load the imports were
#: half of each run. ``--no-fork`` starts a fresh interpreter per mutant instead.
FORK = True


def _preload():
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import numpy  # noqa: F401
    import scipy.integrate, scipy.linalg, scipy.optimize, scipy.special, scipy.stats  # noqa: F401,E401
    import autograd, autograd.numpy, autograd.scipy.special  # noqa: F401,E401
    import hypothesis, hypothesis.extra.numpy  # noqa: F401,E401
    import pytest  # noqa: F401


def _run_forked(tmp, args, timeout):
    out_path = tmp / "pytest_out.txt"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: run pytest on the mutated tree, report by exit code
        code = 3
        try:
            fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(tmp)
            sys.path.insert(0, str(tmp))
            sys.dont_write_bytecode = True
            import pytest
            code = int(pytest.main(args))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    while True:
        done, wait_status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return "timeout", time.monotonic() - start, ""
        time.sleep(0.05)
    elapsed = time.monotonic() - start
    code = os.waitstatus_to_exitcode(wait_status)
    text = out_path.read_text() if out_path.exists() else ""
    tail = (text.strip().splitlines() or [""])[-1]
    if code not in (0, 1):  # 2 interrupted, 3 internal error, 4 usage, 5 no tests: not a kill
        return f"error{code}", elapsed, tail
    return ("survived" if code == 0 else "killed"), elapsed, tail


def clean_time(module, tests=None):
    tests = tests or MODULES[module][1]
    with tempfile.TemporaryDirectory(prefix="mut_clean_") as d:
        tmp = Path(d)
        _make_tree(tmp)
        status, elapsed, tail = run_tests(tmp, tests, timeout=1800)
    if status != "survived":
        raise SystemExit(f"clean run of {module} fails: {tail}")
    return elapsed


def trace(tests, trace_dir):
    """Per test: the fm_ref functions it calls and its seconds (cached in trace_dir);
    returns (records, wall seconds of the traced clean run)."""
    key = hashlib.sha1(" ".join(tests).encode()).hexdigest()[:10]
    path = Path(trace_dir) / f"trace_{key}.json"
    if path.exists():
        data = json.loads(path.read_text())
        return data["records"], data["wall"]
    with tempfile.TemporaryDirectory(prefix="mut_trace_") as d:
        tmp = Path(d)
        _make_tree(tmp)
        out = tmp / "trace.json"
        env = dict(os.environ, PYTHONPATH=f"{tmp}{os.pathsep}{HERE}", PYTHONDONTWRITEBYTECODE="1",
                   FM_REF_TRACE_OUT=str(out))
        start = time.monotonic()
        proc = subprocess.run([PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "trace_plugin",
                               *tests], cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"traced clean run of {tests} fails:\n{proc.stdout[-2000:]}")
        records = json.loads(out.read_text())
    Path(trace_dir).mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"records": records, "wall": wall}))
    return records, wall


def select_tests(m, records):
    """Node ids of the tests that call the mutant's function, fastest first; None means
    all the mapped tests (module or class body); [] means no test calls it."""
    if not m["in_def"]:
        return None
    hits = [(r["seconds"], nodeid) for nodeid, r in records.items() if m["func"] in r["funcs"].get(m["file"], [])]
    return [nodeid for _, nodeid in sorted(hits)]


def run_mutant(m, timeout, tests=None):
    tests = tests or MODULES[m["module"]][1]
    with tempfile.TemporaryDirectory(prefix="mut_") as d:
        tmp = Path(d)
        _make_tree(tmp)
        (tmp / m["file"]).write_text(m["source"])
        return run_tests(tmp, tests, timeout)


def sample(modules, per_module, seed):
    equivalent = load_equivalent()
    chosen = []
    for module in modules:
        mutants = [m for m in enumerate_mutants(module) if m["id"] not in equivalent]
        rng = random.Random(f"{seed}:{module}")
        k = min(per_module, len(mutants))
        chosen += sorted(rng.sample(mutants, k), key=lambda m: m["line"])
    return chosen


def report(path):
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    equivalent = load_equivalent()
    latest = {}
    for r in rows:
        latest[r["id"]] = r
    print(f"{'module':16s} {'sampled':>7s} {'equiv':>5s} {'killed':>6s} {'t/o':>4s} "
          f"{'surv':>4s} {'score':>6s}")
    tk = tn = 0
    for module in MODULES:
        rs = [r for r in latest.values() if r["module"] == module]
        if not rs:
            continue
        eq = [r for r in rs if r["id"] in equivalent]
        live = [r for r in rs if r["id"] not in equivalent]
        killed = sum(r["status"] in ("killed", "timeout") for r in live)
        to = sum(r["status"] == "timeout" for r in live)
        surv = [r for r in live if r["status"] == "survived"]
        score = killed / len(live) if live else 1.0
        tk += killed
        tn += len(live)
        print(f"{module:16s} {len(rs):7d} {len(eq):5d} {killed:6d} {to:4d} {len(surv):4d} "
              f"{100 * score:5.1f}%")
    if tn:
        print(f"{'overall':16s} {'':7s} {'':5s} {tk:6d} {'':4s} {tn - tk:4d} {100 * tk / tn:5.1f}%")
    print("\nsurvivors:")
    for r in latest.values():
        if r["status"] == "survived" and r["id"] not in equivalent:
            print(f"  {r['id']}  {r['file']}:{r['line']} [{r['op']}] in {r['func']}")
            print(f"      - {r['old']}")
            print(f"      + {r['new']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--module", action="append", choices=list(MODULES),
                   help="module(s) to mutate (default: all)")
    p.add_argument("--per-module", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-factor", type=float, default=5.0)
    p.add_argument("--clean-times", default="/tmp/fm_ref_mutation_clean_times.json",
                   help="cache of clean-run seconds per test set (delete to re-measure)")
    p.add_argument("--trace-dir", default="/tmp/fm_ref_mutation_traces",
                   help="cache of which tests call which functions (delete to re-trace)")
    p.add_argument("--no-select", action="store_true",
                   help="run every mapped test for every mutant (no coverage-based selection)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once")
    p.add_argument("--out", default="/tmp/fm_ref_mutants.jsonl")
    p.add_argument("--list", action="store_true", help="list the sampled mutants, run nothing")
    p.add_argument("--report", metavar="JSONL", help="print the table and survivors of a run")
    p.add_argument("--rerun", metavar="JSONL", help="re-run the survivors of an earlier run")
    p.add_argument("--show", metavar="ID", help="print one mutant's diff line")
    p.add_argument("--verify-check", action="append", metavar="NAME",
                   help="run `python -m fm_ref verify --check NAME` instead of the tests")
    p.add_argument("--funcs", action="append", metavar="SUBSTRING",
                   help="only mutants inside functions whose qualified name contains this")
    p.add_argument("--skip-fork-check", action="store_true",
                   help="skip the forked clean runs (when a previous run made them on the same tree)")
    p.add_argument("--no-fork", action="store_true", help="a fresh interpreter per mutant")
    args = p.parse_args(argv)
    global FORK
    FORK = not args.no_fork
    if FORK and not (args.list or args.report or args.show):
        _preload()
    if args.report:
        report(args.report)
        return
    modules = args.module or list(MODULES)
    if args.rerun:
        rows = [json.loads(x) for x in Path(args.rerun).read_text().splitlines() if x.strip()]
        latest = {r["id"]: r for r in rows}
        equivalent = load_equivalent()
        def key(r):
            return (r["file"], r["op"], r["old"], r["new"])

        want = {key(r) for i, r in latest.items()
                if r["status"] == "survived" and i not in equivalent and r["module"] in modules}
        chosen = [m for mod in modules for m in enumerate_mutants(mod)
                  if key(m) in want and m["id"] not in equivalent]
        missing = want - {key(m) for m in chosen}
        for k in sorted(missing):
            print(f"{k}: no longer a mutant of the current source (site edited)", flush=True)
    elif args.funcs:
        equivalent = load_equivalent()
        chosen = []
        for mod in modules:
            pool = [m for m in enumerate_mutants(mod) if m["id"] not in equivalent
                    and any(f in m["func"] for f in args.funcs)]
            rng = random.Random(f"{args.seed}:{mod}:{args.funcs}")
            chosen += sorted(rng.sample(pool, min(args.per_module, len(pool))), key=lambda m: m["line"])
    else:
        chosen = sample(modules, args.per_module, args.seed)
    tests = [f"verify:{c}" for c in args.verify_check] if args.verify_check else None
    if args.show:
        for mod in modules:
            for m in enumerate_mutants(mod):
                if m["id"] == args.show:
                    print(f"{m['file']}:{m['line']} [{m['op']}] {m['func']}\n- {m['old']}\n+ {m['new']}")
        return
    if args.list:
        for m in chosen:
            print(f"{m['id']}  {m['file']}:{m['line']} [{m['op']}]  {m['old']}  ->  {m['new']}")
        print(f"{len(chosen)} mutants")
        return
    # clean-run times, cached by test set (several modules share test files)
    cache_path = Path(args.clean_times)
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    clean = {}
    for mod in dict.fromkeys(m["module"] for m in chosen):
        key = " ".join(tests or MODULES[mod][1])
        if key not in cache:
            cache[key] = clean_time(mod, tests)
            cache_path.write_text(json.dumps(cache, indent=1))
        clean[mod] = cache[key]
        print(f"# clean run of {mod} ({key}): {clean[mod]:.1f} s", flush=True)
    lock = threading.Lock()
    counter = iter(range(1, len(chosen) + 1))

    traces, trace_locks = {}, {mod: threading.Lock() for mod in MODULES}

    def traced(mod):  # traced on first use (cached on disk), so mutants start at once
        with trace_locks[mod]:
            if mod not in traces:
                traces[mod] = trace(MODULES[mod][1], args.trace_dir)
                print(f"# traced {mod}: {len(traces[mod][0])} tests, {traces[mod][1]:.0f} s", flush=True)
        return traces[mod]

    if FORK and not tests and not args.skip_fork_check:  # the unmutated tree must pass forked too
        sets = list(dict.fromkeys(tuple(MODULES[m["module"]][1]) for m in chosen))

        def clean_fork(ts):
            with tempfile.TemporaryDirectory(prefix="mut_cleanfork_") as d:
                _make_tree(Path(d))
                return run_tests(Path(d), list(ts), timeout=3600)

        with ThreadPoolExecutor(args.jobs) as pool:
            for ts, (status, elapsed, tail) in zip(sets, pool.map(clean_fork, sets)):
                print(f"# forked clean run of {' '.join(ts)}: {status} in {elapsed:.0f} s ({tail})", flush=True)
                if status != "survived":
                    raise SystemExit("the unmutated tree fails in a forked child; use --no-fork")

    def one(m):
        timeout = args.timeout_factor * clean[m["module"]]
        run_with = tests
        if not tests and not args.no_select:
            records, wall = traced(m["module"])
            selected = select_tests(m, records)
            if selected == []:
                status, elapsed, tail = "survived", 0.0, "no mapped test calls this function"
                run_with = "none"
            elif selected is not None:
                run_with = selected
                startup = max(wall - sum(r["seconds"] for r in records.values()), 5.0)
                timeout = args.timeout_factor * (startup + sum(records[t]["seconds"] for t in selected))
        if run_with != "none":
            status, elapsed, tail = run_mutant(m, timeout, run_with)
        row = {k: m[k] for k in ("id", "module", "file", "line", "func", "op", "old", "new")}
        row.update(status=status, seconds=round(elapsed, 1), tail=tail,
                   against=tests or ("selected" if isinstance(run_with, list) else "all mapped tests"),
                   n_tests=len(run_with) if isinstance(run_with, list) else None)
        with lock:
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(f"[{next(counter)}/{len(chosen)}] {status:8s} {elapsed:6.1f}s {m['id']} "
                  f"{m['file']}:{m['line']} {m['old']} -> {m['new']}", flush=True)

    with open(args.out, "a") as out, ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, chosen))


if __name__ == "__main__":
    main()
