"""Bad-input fuzzing over the public API and the command line (hypothesis).

Every generated input must end in one of two ways:
- a ``TypeError``, ``ValueError`` or ``FloatingPointError`` whose message starts with the
  name of an argument of the call (``"x: ..."``), or for the CLI exit code 2 and one line
  ``fm-ref: error: ...``;
- or a finite float64 result of the right shape (for ``check``: exit 0 or 1, and a
  pass only where the reference file's own tolerance allows it).
No NumPy warning escapes (warnings are errors in the suite, and NumPy's error state is
'raise', so an unnamed ``FloatingPointError`` from NumPy fails the property), and no
example runs longer than ``EXAMPLE_SECONDS``. The 'ci' profile runs 20 examples per
property; ``HYPOTHESIS_PROFILE=thorough`` runs 400.
"""
import contextlib
import io
import json
import os
import pathlib
import re
import signal
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fm_ref import cli, divergence, losses, marginal, metrics
from fm_ref.cnf import CNF
from fm_ref.distributions import GaussianMixture, StandardNormal
from fm_ref.flows import ElementwiseAffine, gaussian_baseline_nll
from fm_ref.nn import MLP
from fm_ref.paths import PATHS, CondOT
from fm_ref.train import adam
from strategies import hostile_arrays, hostile_floats, json_mutations, nearly_good_points

#: Per-example wall-clock limit: the slowest legitimate example (a CNF solve on 3 points,
#: a check of 6 cases) takes well under a second on an idle machine; 60 s allows for a
#: heavily loaded shared machine and still stops a hang (a stiff solve ran for hours).
EXAMPLE_SECONDS = 60
#: The error types a bad input may end in, and the documented solver failures (RuntimeError,
#: NFELimitError among them: "max_nfe: ...", "velocity: solve_ivp ... failed ..."), named too.
NAMED_ERRORS = (TypeError, ValueError, FloatingPointError, RuntimeError)
COMMITTED = pathlib.Path(__file__).resolve().parent / "data" / "vectors.json"


class Hang(Exception):
    """An example ran longer than EXAMPLE_SECONDS."""


@contextlib.contextmanager
def deadline(seconds=EXAMPLE_SECONDS):
    """Raise ``Hang`` in the main thread after ``seconds`` (SIGALRM; pytest-timeout is not a
    dependency of the suite)."""
    def on_alarm(signum, frame):
        raise Hang(f"the example ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def ends_well(call, names):
    """Run ``call()``: a named error (its message starts with one of ``names`` and a colon)
    or a finite float64 result; returns 'error' or 'value' (for the statistics)."""
    with deadline():
        try:
            out = call()
        except NAMED_ERRORS as exc:
            msg = str(exc)
            assert re.match(rf"^({'|'.join(map(re.escape, names))})(\[\d+\])*:", msg), \
                f"{type(exc).__name__} that names none of {names}: {msg!r}"
            return "error"
    for part in out if isinstance(out, tuple) else (out,):
        arr = np.asarray(part)
        assert arr.dtype == np.float64 and np.all(np.isfinite(arr)), f"a non-finite or non-float64 result: {out!r}"
    return "value"


# ----------------------------------------------------------------------------- the API

MLP2 = MLP(2, (4,))
PARAMS = MLP2.init(np.random.default_rng(0))
TARGET = GaussianMixture(np.array([[1.0, -1.0], [0.0, 2.0]]), np.array([0.5, 0.2]))


def _linear_field(rate):
    """v(x, t) = rate · x as a user writes it: NumPy's default error state (inf, no raise)."""
    def v(x, t):
        with np.errstate(all="ignore"):
            return rate * x

    return v


def _entry_points():
    """(label, arguments' strategy, call(args), accepted argument names)."""
    pts, t = hostile_arrays(), st.one_of(hostile_floats, hostile_arrays())
    good = nearly_good_points()
    yield "schedules", st.tuples(st.sampled_from(sorted(PATHS)), t), \
        lambda a: PATHS[a[0]]().alpha_t(a[1]) + PATHS[a[0]]().d_sigma_t(a[1]), ("t",)
    yield "conditional_log_prob", st.tuples(st.one_of(pts, good), good, t), \
        lambda a: CondOT().conditional_log_prob(a[0], a[1], a[2]), ("x", "x_1", "t")
    yield "conditional_velocity", st.tuples(good, st.one_of(pts, good), t), \
        lambda a: CondOT(0.01).conditional_velocity(a[0], a[1], a[2]), ("x", "x_1", "t")
    yield "marginal_velocity", st.tuples(st.one_of(pts, good), t), \
        lambda a: marginal.marginal_velocity(TARGET, CondOT(), a[0], a[1]), ("x", "t")
    yield "marginal_log_prob", st.tuples(good, t), \
        lambda a: marginal.marginal_log_prob(TARGET, CondOT(), a[0], a[1]), ("x", "t")
    yield "standard_normal", st.one_of(pts, good), lambda a: StandardNormal(2).log_prob(a), ("x",)
    yield "mixture", st.tuples(st.one_of(pts, good), hostile_arrays(), st.one_of(st.none(), hostile_arrays()), good), \
        lambda a: GaussianMixture(a[0], a[1], a[2]).log_prob(a[3]), ("means", "covs", "weights", "x")
    yield "mixture_moments", st.tuples(st.one_of(pts, good), st.sampled_from([1.0, 1e300, 0.0])), \
        lambda a: (GaussianMixture(a[0], np.full(len(np.atleast_1d(a[0])), a[1])).covariance(),
                   GaussianMixture(a[0], np.full(len(np.atleast_1d(a[0])), a[1])).second_moment()), \
        ("means", "covs")
    yield "mlp", st.tuples(st.one_of(pts, good), t, hostile_arrays((4,))), \
        lambda a: MLP2([(PARAMS[0][0], a[2]), PARAMS[1]], a[0], a[1]), ("params", "x", "t")
    yield "mlp_divergence", st.tuples(good, t), lambda a: MLP2.divergence(PARAMS, a[0], a[1]), ("params", "x", "t")
    yield "cfm_loss", st.tuples(t, st.one_of(pts, good), good), \
        lambda a: losses.cfm_loss(MLP2, PARAMS, CondOT(), a[0], a[1], a[2]), ("t", "x_0", "x_1", "model", "params")
    yield "wasserstein2", st.tuples(st.one_of(pts, good), good), \
        lambda a: metrics.wasserstein2(a[0], a[1]), ("x", "y")
    yield "mean_and_stderr", hostile_arrays(), lambda a: metrics.mean_and_stderr(a), ("values",)
    yield "baseline_nll", st.tuples(st.one_of(pts, nearly_good_points(n=5)), good), \
        lambda a: gaussian_baseline_nll(a[0], a[1]), ("train", "test")
    yield "data_init", st.one_of(pts, good), lambda a: ElementwiseAffine(2).data_init(a), ("x",)
    yield "flow_layer", st.tuples(hostile_arrays((2,)), good), \
        lambda a: ElementwiseAffine(2).forward_and_log_det((a[0], np.zeros(2)), a[1]), \
        ("params", "z", "ElementwiseAffine.forward_and_log_det")
    yield "cnf", st.tuples(good, hostile_floats, hostile_floats), \
        lambda a: CNF(_linear_field(a[1]), 2, max_nfe=5000).push_forward(a[0], 0.0, a[2]).x, \
        ("x", "t0", "t1", "velocity", "max_nfe")
    yield "divergence", st.tuples(st.one_of(pts, good), t, hostile_floats), \
        lambda a: divergence.divergence(_linear_field(a[2]), a[0], a[1]), ("f", "x", "t")
    yield "adam", st.tuples(hostile_arrays((2,)), hostile_floats, hostile_floats), \
        lambda a: adam(lambda p, s: (float(np.sum(p[0] ** 2)) if s == 0 else a[1], [a[0]]), [np.ones(2)], 2,
                       lr=0.1, eps=abs(a[2]) if a[2] == a[2] else a[2])[0][0], \
        ("loss_and_grad", "params", "adam", "eps")


ENTRY_POINTS = list(_entry_points())


@pytest.mark.parametrize("label, args, call, names", ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
def test_public_api_on_hostile_input(label, args, call, names):
    @settings(max_examples=max(3, settings.default.max_examples // 2))  # 18 entry points: keep the suite short
    @given(args)
    def run(a):
        ends_well(lambda: call(a), names)

    run()


# ----------------------------------------------------------------------------- the CLI

def _main(argv):
    """(exit code, stdout, stderr) of ``fm-ref argv`` run in-process."""
    out, err = io.StringIO(), io.StringIO()
    with deadline(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _assert_one_line_error(code, err):
    assert code == 2 and err.startswith("fm-ref: error: ") and err.count("\n") == 1, (code, err)


SMALL = json.loads(COMMITTED.read_text())
SMALL["cases"] = SMALL["cases"][:4]


def _off_by(payload, delta):
    out = json.loads(json.dumps(payload))
    for case in out["cases"]:
        case["outputs"] = {k: (np.asarray(v) + delta).tolist() for k, v in case["outputs"].items()}
    return out


@given(st.data())
def test_check_with_a_mutated_reference_cannot_be_fooled(data):
    """A mutated vectors file is an error (exit 2, one line) or, if it is still a valid
    reference, results wrong by 100 fail against it unless its own tolerance says 100 is
    within tolerance."""
    text = data.draw(json_mutations(SMALL))
    with tempfile.TemporaryDirectory() as tmp:
        ref, got = os.path.join(tmp, "v.json"), os.path.join(tmp, "r.json")
        pathlib.Path(ref).write_text(text)
        pathlib.Path(got).write_text(json.dumps(_off_by(SMALL, 100.0)))
        code, out, err = _main(["check", ref, got])
    if code == 2:
        _assert_one_line_error(code, err)
        return
    assert code in (0, 1) and err == "", (code, err)
    if code == 0:  # a pass of results wrong by 100 needs tolerances that allow it
        tols = [c["tolerance"] for c in json.loads(text)["cases"]]
        assert any(t["abs"] + t["rel"] * 1e300 >= 100.0 for t in tols), text[:500]


@given(st.data())
def test_check_with_mutated_results_is_an_error_or_an_honest_verdict(data):
    text = data.draw(json_mutations(SMALL))
    with tempfile.TemporaryDirectory() as tmp:
        ref, got = os.path.join(tmp, "v.json"), os.path.join(tmp, "r.json")
        pathlib.Path(ref).write_text(json.dumps(SMALL))
        pathlib.Path(got).write_text(text)
        code, out, err = _main(["check", ref, got])
    if code == 2:
        _assert_one_line_error(code, err)
        return
    assert code in (0, 1) and err == "", (code, err)
    if code == 0:  # a pass: every output really is within the reference's tolerance
        by_id = {c["id"]: c for c in json.loads(text)["cases"]}
        for case in SMALL["cases"]:
            tol = case["tolerance"]
            for name, ref in case["outputs"].items():
                got = np.asarray(by_id[case["id"]]["outputs"][name], dtype=np.float64)
                assert np.all(np.abs(got - ref) <= tol["abs"] + tol["rel"] * np.abs(ref)), (case["id"], name)


OPTION_VALUES = ["", " ", "-1", "0", "1", "2", "3", "1e3", "nan", "inf", "x", str(10**30), "1" * 5000, "--", "-",
                 "moons", "nope", "foundation", "path_schedule"]


@given(st.sampled_from(["demo", "verify", "vectors", "check", "bench", "nope"]),
       st.lists(st.tuples(st.sampled_from(["--steps", "--seed", "--n-eval", "--jobs", "--out", "--json", "--data",
                                           "--repeats", "--kind", "--group", "--check", "--all", "--quick", "--bogus",
                                           None]),
                          st.sampled_from(OPTION_VALUES)), max_size=4))
def test_cli_arguments_are_accepted_within_bounds_or_refused_in_one_line(command, pairs):
    """Any argv: either parsed into values within their documented bounds (the command
    itself is replaced by a stub that checks them), or exit 2 with one line."""
    argv = [command] + [x for opt, val in pairs for x in ((opt, val) if opt else (val,))]
    seen = []

    def stub(args):
        for name, hi in (("steps", cli.MAX_STEPS), ("jobs", cli.MAX_JOBS), ("repeats", cli.MAX_REPEATS)):
            value = getattr(args, name, None)
            assert value is None or 1 <= value <= hi, (name, value)
        assert getattr(args, "seed", 0) >= 0
        for name in ("out", "json", "vectors", "results"):
            value = getattr(args, name, None)
            assert value is None or value.strip(), (name, value)
        seen.append(args)
        return 0

    with pytest.MonkeyPatch.context() as mp:
        for name in ("cmd_demo", "cmd_verify", "cmd_vectors", "cmd_check", "cmd_bench"):
            mp.setattr(cli, name, stub)
        code, out, err = _main(argv)
    if code == 0:
        assert len(seen) == 1 and err == ""
    else:
        _assert_one_line_error(code, err)
