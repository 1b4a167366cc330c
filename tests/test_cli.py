"""The command line: every subcommand on small settings, exit codes, and clear errors
(one ``fm-ref: error:`` line and exit code 2, never a traceback) for bad arguments and
bad files. ``main(argv)`` runs in-process; one test goes through ``python -m fm_ref``."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fm_ref import __version__, cli, verify

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def assert_usage_error(capsys, *argv, match=None):
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert "error:" in err
    if match is not None:
        assert match in err, err


# ----------------------------------------------------------------------------- verify

def test_verify_one_real_check_writes_json(capsys, tmp_path):
    path = tmp_path / "v.json"
    code, out, _ = run(capsys, "verify", "--check", "tweedie", "--check", "path-derivatives", "--json", str(path))
    assert code == 0
    assert "2/2 checks passed" in out and "tweedie" in out
    payload = json.loads(path.read_text())
    assert payload["passed"] and payload["n_checks"] == 2
    assert {c["name"] for c in payload["checks"]} == {"tweedie", "path-derivatives"}
    assert all(c["measured"] <= c["tolerance"] for c in payload["checks"])


@pytest.fixture
def fake_checks(monkeypatch):
    """Replace the registry by three checks: one passes, one fails, one crashes."""
    monkeypatch.setattr(verify, "CHECKS", {})
    monkeypatch.setattr(verify, "_load_all", lambda: None)
    verify.register("ok", "closed form vs autograd", "foundation")(lambda: (1e-14, 1e-12, "why"))
    verify.register("bad", "ODE vs closed form", "cnf")(lambda: (1e-3, 1e-6, "why"))

    def crash():
        raise RuntimeError("solver failed")

    verify.register("boom", "crashes", "flows")(crash)


def test_verify_exits_1_on_a_failed_or_crashing_check(capsys, tmp_path, fake_checks):
    path = tmp_path / "v.json"
    code, out, _ = run(capsys, "verify", "--json", str(path))
    assert code == 1
    assert "1/3 checks passed" in out and "FAIL" in out and "ERROR" in out and "solver failed" in out
    payload = json.loads(path.read_text())
    assert [c["status"] for c in payload["checks"]] == ["pass", "FAIL", "ERROR"]
    assert run(capsys, "verify", "--group", "foundation")[0] == 0


def test_verify_bad_arguments(capsys, fake_checks):
    assert_usage_error(capsys, "verify", "--group", "nope", match="invalid choice")
    assert_usage_error(capsys, "verify", "--check", "nope", match="no check named")
    assert_usage_error(capsys, "verify", "--json", "/nonexistent-dir/v.json", match="does not exist")


# ----------------------------------------------------------------------------- vectors and check

@pytest.fixture
def small_vectors(capsys, tmp_path):
    path = tmp_path / "vectors.json"
    code, out, _ = run(capsys, "vectors", "--out", str(path), "--kind", "path_schedule", "--kind", "conditional_path")
    assert code == 0 and "wrote 12 cases" in out
    return path


def test_check_against_itself_passes(capsys, small_vectors, tmp_path):
    report = tmp_path / "report.json"
    code, out, _ = run(capsys, "check", str(small_vectors), str(small_vectors), "--all", "--json", str(report))
    assert code == 0 and "12/12 cases within tolerance" in out
    assert json.loads(report.read_text())["passed"] is True
    extra = json.loads(small_vectors.read_text())
    extra["cases"].append({"id": "mine/extra", "outputs": {"y": [1.0]}})
    code, out, _ = run(capsys, "check", str(small_vectors), _write(tmp_path, "extra.json", extra))
    assert code == 0 and "were ignored: mine/extra" in out


def test_check_against_a_corrupted_copy_fails(capsys, small_vectors, tmp_path):
    payload = json.loads(small_vectors.read_text())
    case = payload["cases"][8]
    case["outputs"]["u_t_at_x"][3][1] *= 1 + 1e-9  # 1000 times the relative tolerance
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(payload))
    code, out, _ = run(capsys, "check", str(small_vectors), str(bad))
    assert code == 1
    assert "11/12 cases within tolerance; 1 FAILED" in out and case["id"] in out


def _write(tmp_path, name, payload):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def test_check_malformed_files_give_clear_errors(capsys, small_vectors, tmp_path):
    good = json.loads(small_vectors.read_text())
    missing = dict(good, cases=good["cases"][1:])
    shape = json.loads(small_vectors.read_text())
    shape["cases"][0]["outputs"]["alpha_t"] = shape["cases"][0]["outputs"]["alpha_t"][:3]
    for payload, match in [(missing, "incomplete"), (shape, "expected shape"), (dict(good, schema_version=7), "schema_version"),
                           ("{oops", "not valid JSON"), ([], "JSON object")]:
        assert_usage_error(capsys, "check", str(small_vectors), _write(tmp_path, "r.json", payload), match=match)
    assert_usage_error(capsys, "check", str(small_vectors), str(tmp_path / "absent.json"), match="No such file")
    assert_usage_error(capsys, "check", str(small_vectors), match="required")
    # checking one kind needs only that kind's cases
    only = dict(good, cases=[c for c in good["cases"] if c["kind"] == "path_schedule"])
    assert run(capsys, "check", str(small_vectors), _write(tmp_path, "p.json", only), "--kind", "path_schedule")[0] == 0


def test_check_present_checks_exactly_what_results_hold(capsys, small_vectors, tmp_path):
    """--present: absent cases and outputs are skipped and counted per kind; what is there is
    checked (a corrupted value still fails); the default stays strict."""
    good = json.loads(small_vectors.read_text())
    part = dict(good, cases=[c for c in good["cases"] if "polynomial" not in c["id"]])
    del part["cases"][0]["outputs"]["d_sigma_t"]
    path = _write(tmp_path, "part.json", part)
    assert_usage_error(capsys, "check", str(small_vectors), path, match="--present")
    code, out, _ = run(capsys, "check", str(small_vectors), path, "--present", "--json", str(tmp_path / "r.json"))
    assert code == 0 and "10/10 cases within tolerance" in out and "10 cases checked, 2 skipped" in out
    assert "path_schedule         6  5 (1 partly)        1       0" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["skipped"] == ["path_schedule/polynomial-n=2.0", "conditional_path/polynomial-n=2.0"]
    assert report["cases"][0]["skipped"] == ["d_sigma_t"] and "d_sigma_t" not in report["cases"][0]["checked"]
    part["cases"][-1]["outputs"]["x_t"][0][0] += 1.0
    code, out, _ = run(capsys, "check", str(small_vectors), _write(tmp_path, "bad.json", part), "--present")
    assert code == 1 and "9/10 cases within tolerance; 1 FAILED" in out


def test_check_selectors_and_nothing_to_check(capsys, small_vectors, tmp_path):
    good = json.loads(small_vectors.read_text())
    only = dict(good, cases=[{"id": c["id"], "outputs": {"alpha_t": c["outputs"]["alpha_t"]}}
                             for c in good["cases"] if c["id"].startswith("path_schedule/condot")])
    path = _write(tmp_path, "only.json", only)
    code, out, _ = run(capsys, "check", str(small_vectors), path, "--id", "path_schedule/condot*", "--output", "alpha_t")
    assert code == 0 and "2/2 cases within tolerance" in out
    assert_usage_error(capsys, "check", str(small_vectors), path, "--id", "path_schedule/condot*", match="lacks the output 'sigma_t'")
    assert_usage_error(capsys, "check", str(small_vectors), path, "--id", "nope*", match="--id: no selected")
    assert_usage_error(capsys, "check", str(small_vectors), path, "--output", "nope", match="--output: no selected")
    none = dict(good, cases=[{"id": "mine/other", "outputs": {"y": [1.0]}}])
    assert_usage_error(capsys, "check", str(small_vectors), _write(tmp_path, "none.json", none), "--present",
                       match="nothing to check")


def test_check_float32_tier(capsys, small_vectors, tmp_path):
    """Values rounded to float32 fail the float64 tier and pass the float32 one."""
    got = json.loads(small_vectors.read_text())
    for case in got["cases"]:
        case["outputs"] = {k: np.asarray(v, dtype=np.float32).astype(float).tolist() for k, v in case["outputs"].items()}
    path = _write(tmp_path, "f32.json", got)
    assert run(capsys, "check", str(small_vectors), path)[0] == 1
    code, out, _ = run(capsys, "check", str(small_vectors), path, "--tier", "float32")
    assert code == 0 and "tier float32" in out


def test_vectors_bad_arguments(capsys, tmp_path):
    assert_usage_error(capsys, "vectors", match="--out")
    assert_usage_error(capsys, "vectors", "--out", str(tmp_path), match="directory")
    assert_usage_error(capsys, "vectors", "--out", str(tmp_path / "x.json"), "--kind", "nope", match="invalid choice")


# ----------------------------------------------------------------------------- bench and demo

def test_bench_quick_writes_json(capsys, tmp_path):
    path = tmp_path / "bench.json"
    code, out, _ = run(capsys, "bench", "--quick", "--repeats", "1", "--json", str(path))
    assert code == 0 and "steps/s" in out and "machine:" in out
    payload = json.loads(path.read_text())
    names = [r["name"] for r in payload["results"]]
    assert {"divergence, autograd", "divergence, analytic", "CFM training", "flow log_prob"} <= set(names)
    assert all(r["median_s"] > 0 for r in payload["results"])
    assert payload["machine"]["nproc"] >= 1


def test_bench_compares_each_round_with_pytorchs_faster_thread_count(monkeypatch):
    """With torch present, each round runs every variant in interleaved pieces; a round's
    time is the sum of its pieces, and its ratio is PyTorch's faster round time (of the 1-
    and 2-thread loops) over fm_ref's (a stand-in for torch gives known rates)."""
    from fm_ref import bench
    from fm_ref.bench import torch_reference

    # per thread count: the warm-up's rate, then round 1's two pieces, then round 2's
    rates = {1: iter([1.0, 100.0, 300.0, 50.0, 50.0]), 2: iter([1.0, 400.0, 400.0, 100.0, 25.0])}
    calls = []
    monkeypatch.setattr(torch_reference, "available", lambda: True)
    monkeypatch.setattr(torch_reference, "make_step", lambda data, threads: threads)
    monkeypatch.setattr(torch_reference, "version", lambda: "0.0-stand-in")

    def rate(step, steps):
        calls.append((step, steps))
        return next(rates[step])

    monkeypatch.setattr(torch_reference, "torch_cfm_rate", rate)
    out = {r["name"]: r for r in bench.bench_cfm_training(2, steps=5, chunks=2)}
    assert calls == [(1, 2), (2, 2)] + [(1, 2), (2, 2), (1, 3), (2, 3)] * 2  # warm-up, then interleaved
    torch1 = [2 / 100.0 + 3 / 300.0, 2 / 50.0 + 3 / 50.0]
    torch2 = [2 / 400.0 + 3 / 400.0, 2 / 100.0 + 3 / 25.0]
    assert out["CFM training, PyTorch reference, 1 thread"]["times_s"] == pytest.approx(torch1, rel=1e-15)
    assert out["CFM training, PyTorch reference, 2 threads"]["times_s"] == pytest.approx(torch2, rel=1e-15)
    own = out["CFM training"]["times_s"]
    ratios = [torch2[0] / own[0], torch1[1] / own[1]]  # the faster PyTorch time over fm_ref's, per round
    note = (f"rate / PyTorch (the faster of 1 and 2 threads) per round: median {np.median(ratios):.2f}, "
            f"range {min(ratios):.2f}-{max(ratios):.2f} (2 rounds of 2 interleaved pieces)")
    assert note in out["CFM training"]["notes"]
    assert "torch 0.0-stand-in, 2 threads" in out["CFM training, PyTorch reference, 2 threads"]["notes"]


DEMO_SMALL = ("demo", "--steps", "10", "--n-eval", "150", "--data", "moons")


@pytest.fixture
def few_checkpoints(monkeypatch):
    from fm_ref import demo

    monkeypatch.setitem(demo.DEFAULTS, "checkpoints", 2)  # the cost curves' evaluations: tests/test_demo.py


def test_demo_small_run_without_matplotlib(capsys, tmp_path, monkeypatch, few_checkpoints):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, out, _ = run(capsys, *DEMO_SMALL, "--jobs", "1", "--out", str(tmp_path))
    assert code == 0
    assert "figures will be skipped" in out and "held-out vs held-out (floor)" in out
    res = json.loads((tmp_path / "results.json").read_text())
    assert [m["family"] for m in res["models"]] == ["NF", "CNF", "CFM", "CFM", "CFM", "CFM", "CFM", "Diffusion"]
    assert res["budget"] == {"nf": 6, "cnf": 1, "cfm-condot": 10, "cfm-cosine": 10, "i-cfm": 10, "ot-cfm": 4,
                             "sb-cfm": 15, "ddpm-vp": 10}
    for m in res["models"]:
        assert np.isfinite(m["nll"]) and m["w2"] > 0 and m["train_seconds"] > 0
    for m in (m for m in res["models"] if m["key"] in ("i-cfm", "ot-cfm", "sb-cfm")):  # CPL.17's measurements
        assert m["straightness"] >= -1e-4 * m["path_energy"] and all(m[f"w2_euler_{k}"] > 0 for k in (2, 4, 8))
    assert res["figures"] == {} and not (tmp_path / "demo.png").exists()


def test_demo_in_two_processes_gives_the_same_numbers(capsys, tmp_path, few_checkpoints):
    """Each model has its own seed, so worker processes change nothing but the wall time."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(capsys, *DEMO_SMALL, "--jobs", "1", "--no-plot", "--out", str(one))[0] == 0
    assert run(capsys, *DEMO_SMALL, "--jobs", "2", "--no-plot", "--out", str(two))[0] == 0
    a, b = (json.loads((d / "results.json").read_text())["models"] for d in (one, two))
    assert [(m["nll"], m["w2"], m["sample_nfe"]) for m in a] == [(m["nll"], m["w2"], m["sample_nfe"]) for m in b]


def test_demo_writes_the_figure(capsys, tmp_path, monkeypatch, few_checkpoints):
    """The README's test command installs the 'plot' extra, so matplotlib is here."""
    import matplotlib  # noqa: F401  (a missing extra fails the test rather than skipping it)

    from fm_ref import demo

    monkeypatch.setitem(demo.DEFAULTS, "grid", 12)  # coarse heat maps: the ODE solves dominate
    monkeypatch.setitem(demo.DEFAULTS, "n_traj", 20)
    code, out, _ = run(capsys, "demo", "--steps", "4", "--n-eval", "100", "--jobs", "1", "--out", str(tmp_path))
    assert code == 0
    assert (tmp_path / "demo.png").stat().st_size > 10_000 and (tmp_path / "cost.png").stat().st_size > 10_000


def test_demo_bad_arguments(capsys, tmp_path):
    assert_usage_error(capsys, "demo", "--data", "nope", match="invalid choice")
    assert_usage_error(capsys, "demo", "--steps", "0", match="positive integer")
    assert_usage_error(capsys, "demo", "--steps", "many", match="positive integer")
    assert_usage_error(capsys, "demo", "--seed", "x", match="argument --seed")
    assert_usage_error(capsys, "demo", "--n-eval", "1", "--out", str(tmp_path), match="argument --n-eval")
    assert_usage_error(capsys, "demo", "--n-eval", "20001", "--out", str(tmp_path), match="argument --n-eval")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_usage_error(capsys, "demo", "--out", str(blocker / "sub"), match="--out")


# ----------------------------------------------------------------------------- the program

def test_help_version_and_missing_command(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and __version__ in out
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(c in out for c in ("demo", "verify", "vectors", "check", "bench"))
    assert_usage_error(capsys, match="required")
    assert_usage_error(capsys, "frobnicate", match="invalid choice")


def test_library_errors_become_one_line_messages(capsys, monkeypatch):
    from fm_ref import demo

    def bad(**kw):
        raise ValueError("data: something the library rejected")

    monkeypatch.setattr(demo, "run_demo", bad)
    code, out, err = run(capsys, "demo", "--out", str(ROOT / "tests"))
    assert code == 2 and err.strip() == "fm-ref: error: data: something the library rejected"


def test_python_dash_m_runs_the_cli(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "fm_ref", "check", str(bad), str(bad)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("fm-ref: error:") and "Traceback" not in proc.stderr
