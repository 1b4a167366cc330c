"""The demo's machinery on tiny budgets: the registry, the cost curves (numbers from the run
itself), the progress lines, the output checks and atomic writes, --quick and --quiet.
The full demo's figures are tested in test_cli.py."""
import json
import os

import numpy as np
import pytest

from fm_ref import cli, demo
from fm_ref.demo import cost as demo_cost
from fm_ref.demo.output import check_outputs, write_atomic
from fm_ref.distributions import make_toy

COST_ROWS = ("nf", "cnf", "cfm-condot")


@pytest.fixture
def small(monkeypatch):
    """Coarse sizes: a demo run costs a few steps and small evaluations."""
    monkeypatch.setitem(demo.DEFAULTS, "checkpoints", 3)
    monkeypatch.setitem(demo.DEFAULTS, "progress_seconds", 1e9)
    return monkeypatch


def only_rows(monkeypatch, keys):
    monkeypatch.setattr(demo, "ROWS", {k: demo.ROWS[k] for k in keys})


@pytest.fixture(scope="module")
def cost_run(tmp_path_factory):
    """One run of the three cost rows (jobs=1, no figure), and the held-out points it used."""
    mp = pytest.MonkeyPatch()
    try:
        mp.setitem(demo.DEFAULTS, "checkpoints", 3)
        only_rows(mp, COST_ROWS)
        out = tmp_path_factory.mktemp("cost")
        lines = []
        res = demo.run_demo(data="8gaussians", steps=24, seed=3, out=str(out), n_eval=60, plot=False, jobs=1,
                            log=lines.append)
    finally:
        mp.undo()
    rng = np.random.default_rng(np.random.SeedSequence(3).spawn(1)[0])
    make_toy("8gaussians", demo.DEFAULTS["n_train"], rng)
    return res, make_toy("8gaussians", 60, rng), out, lines


def test_cost_curves_are_the_runs_own_numbers(cost_run):
    res, test, _, _ = cost_run
    models = {m["key"]: m for m in res["models"]}
    for key in COST_ROWS:
        curve = res["cost"]["rows"][key]["curve"]
        steps, secs, nfe = ([p[k] for p in curve] for k in ("step", "seconds", "nfe"))
        assert steps == demo.checkpoint_steps(models[key]["train_steps"], 3)
        assert np.all(np.diff(secs) > 0) and 0 < secs[-1] <= models[key]["train_seconds"]
        assert np.all(np.diff(nfe) > 0) and nfe[-1] == models[key]["train_nfe"]
        assert curve[-1]["nll"] == models[key]["nll"] and curve[-1]["nll_se"] == models[key]["nll_se"]
        first = curve[0]  # re-evaluated here from the snapshot's parameters: the same number
        log_p, _ = demo.ROWS[key].evaluate(first["params"]).log_prob(test)
        assert first["nll"] == float(np.mean(-log_p))
    # a CFM step is one network evaluation; a maximum-likelihood CNF step is two ODE solves
    assert models["cfm-condot"]["train_nfe"] == models["cfm-condot"]["train_steps"]
    assert models["cnf"]["train_nfe"] >= 2 * 6 * models["cnf"]["train_steps"]  # ≥ 6 stages per DOP853 solve


def test_results_json_holds_the_returned_numbers(cost_run):
    res, _, out, _ = cost_run
    disk = json.loads((out / "results.json").read_text())
    for key, row in disk["cost"]["rows"].items():
        mem = res["cost"]["rows"][key]["curve"]
        assert [{k: v for k, v in p.items() if k != "params"} for p in mem] == row["curve"]
    assert disk["cost"]["comparison"] == res["cost"]["comparison"]
    assert disk["true_nll"]["value"] == pytest.approx(1.698061203121826, abs=1e-12)
    gaps = [m["gap"] for m in disk["models"]]
    assert all(g is not None for g in gaps) and [m["key"] for m in disk["models"]] == list(COST_ROWS)
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary file left


def test_gap_is_the_paired_difference_of_nlls(cost_run):
    res, test, _, _ = cost_run
    from fm_ref.toy.truth import toy_log_prob

    true_nll_here = float(np.mean(-toy_log_prob("8gaussians", test)))
    for m in res["models"]:
        assert m["gap"] == pytest.approx(m["nll"] - true_nll_here, abs=1e-12)


def test_cost_summary_follows_the_first_checkpoint_rule():
    def pts(rows):
        return [{"step": s, "seconds": t, "nfe": n, "nll": v} for s, t, n, v in rows]
    curves = {"cnf": {"name": "MLE", "curve": pts([(1, 10.0, 100, 3.0), (2, 20.0, 200, 2.5), (3, 30.0, 300, 2.6)])},
              "cfm-condot": {"name": "FM", "curve": pts([(10, 0.5, 10, 2.8), (20, 1.0, 20, 2.4), (40, 2.0, 40, 2.0)])}}
    comp = demo_cost.cost_summary(curves)
    assert comp["target"] == 2.5  # the MLE model's best, reached at its second checkpoint
    assert comp["mle"]["step"] == 2 and comp["fm"]["step"] == 20
    assert comp["time_ratio"] == 20.0 and comp["nfe_ratio"] == 10.0
    assert not comp["mle_reaches_fm_final"] and "never reaches the 2.000" in comp["summary"]
    curves["cfm-condot"]["curve"] = pts([(10, 0.5, 10, 2.9)])
    comp = demo_cost.cost_summary(curves)
    assert comp["time_ratio"] is None and "does not reach" in comp["summary"]
    assert demo_cost.time_to_reach(pts([(1, 1.0, 1, 2.0), (2, 2.0, 2, 1.0)]), 1.5)["step"] == 2
    assert demo_cost.time_to_reach(pts([(1, 1.0, 1, 2.0)]), 1.5) is None


def test_checkpoint_steps_are_geometric_and_end_at_the_budget():
    assert demo.checkpoint_steps(3200, 6) == [100, 200, 400, 800, 1600, 3200]
    assert demo.checkpoint_steps(1, 10) == [1] and demo.checkpoint_steps(5, 1) == [5]
    few = demo.checkpoint_steps(4, 10)
    assert few == sorted(set(few)) and few[-1] == 4 and few[0] >= 1


def test_tracker_prints_progress_with_eta_and_keeps_snapshots():
    lines = []
    tr = demo._Tracker("M", 4, lines.append, checkpoints=(2, 4), nfe_per_step=1, every=0.0)
    for i in range(4):
        if i == 1:
            tr.add_nfe(7)  # a step that reports its own NFE
        tr(i, float(i), [i])
    assert len(lines) == 4 and "ETA" in lines[0] and lines[-1].endswith("done")
    assert "step      1/4" in lines[0] and "loss   0.0000" in lines[0]
    assert [(s["step"], s["nfe"], s["params"]) for s in tr.snapshots] == [(2, 8, [1]), (4, 10, [3])]
    quiet = demo._Tracker("M", 100, lines.append, every=1e9)
    for i in range(99):
        quiet(i, 0.0, None)
    assert len(lines) == 4  # nothing before the last step when the interval has not passed


def test_registry_refuses_a_duplicate_or_a_non_row():
    with pytest.raises(ValueError, match=r"^row:"):
        demo.register(demo.ROWS["cfm-condot"])
    with pytest.raises(TypeError, match=r"^row:"):
        demo.register(("cfm-x",))
    assert demo._row_seeds(0, "a")[0].entropy != demo._row_seeds(0, "b")[0].entropy


# ----------------------------------------------------------------------------- outputs

def test_outputs_are_checked_before_training(small, tmp_path):
    def boom(*a, **k):
        raise AssertionError("trained before checking the outputs")
    only_rows(small, ["cfm-condot"])
    small.setattr(demo, "train_model", boom)
    (tmp_path / "results.json").mkdir()
    with pytest.raises(ValueError, match=r"^out: .*results\.json.* not a regular file"):
        demo.run_demo(steps=2, n_eval=10, out=str(tmp_path), plot=False, jobs=1)
    with pytest.raises(ValueError, match=r"^out: expected an existing directory"):
        demo.run_demo(steps=2, n_eval=10, out=str(tmp_path / "none"), plot=False, jobs=1)
    assert check_outputs(str(tmp_path), ["a.json"]) == {"a.json": False}


def test_write_atomic_replaces_or_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    assert write_atomic(str(path), b"one") is False
    os.chmod(path, 0o640)
    assert write_atomic(str(path), b"two") is True
    assert path.read_text() == "two" and (os.stat(path).st_mode & 0o777) == 0o640

    def interrupted(fd):
        raise KeyboardInterrupt  # a Ctrl-C after the bytes are written, before the rename
    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(str(path), b"three")
    assert path.read_text() == "two" and os.listdir(tmp_path) == ["r.json"]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_quiet_run_says_what_it_replaced(small, capsys, tmp_path):
    only_rows(small, ["cfm-condot"])
    (tmp_path / "results.json").write_text("{}")
    code, out, _ = run_cli(capsys, "demo", "--steps", "5", "--n-eval", "20", "--no-plot", "--jobs", "1", "--quiet",
                           "--out", str(tmp_path))
    assert code == 0
    assert "results on '8gaussians'" in out and "ms/step" not in out and "exists and will be replaced" not in out
    assert f"wrote {tmp_path / 'results.json'} (replaced the existing file)" in out
    code, out, _ = run_cli(capsys, "demo", "--steps", "5", "--n-eval", "20", "--no-plot", "--jobs", "1",
                           "--out", str(tmp_path))
    assert "exists and will be replaced" in out and "ms/step" in out and "done" in out


def test_no_empty_folder_is_left_after_an_error_or_an_interrupt(small, capsys, tmp_path):
    from fm_ref.demo import output as demo_output

    target = tmp_path / "new" / "deeper"
    code, _, err = run_cli(capsys, "demo", "--n-eval", "1", "--out", str(target))
    assert code == 2 and "n-eval" in err and not (tmp_path / "new").exists()

    def refused(out, names):
        raise ValueError("out: refused")  # an error of the library after the folder was made
    small.setattr(demo_output, "check_outputs", refused)
    code, _, err = run_cli(capsys, "demo", "--steps", "2", "--no-plot", "--jobs", "1", "--out", str(target))
    assert code == 2 and "out: refused" in err and not (tmp_path / "new").exists()
    small.undo()

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    only_rows(small, ["cfm-condot"])
    small.setattr(demo, "train_model", interrupted)
    small.setattr(demo_run_module(), "train_model", interrupted)
    code, _, err = run_cli(capsys, "demo", "--steps", "2", "--no-plot", "--jobs", "1", "--out", str(target))
    assert code == 130 and not (tmp_path / "new").exists()


def demo_run_module():
    from fm_ref.demo import run as demo_run

    return demo_run


def test_quick_uses_the_quick_sizes(small, tmp_path):
    only_rows(small, ["cfm-condot"])
    small.setattr(demo, "QUICK", {"steps": 7, "n_eval": 30, "checkpoints": 2})
    res = demo.run_demo(out=str(tmp_path), plot=False, jobs=1, quick=True, log=lambda m: None)
    assert res["quick"] and res["steps"] == 7 and res["n_eval"] == 30 and res["models"][0]["train_steps"] == 7
    assert len(res["cost"]["rows"]["cfm-condot"]["curve"]) == 2


def test_convergence_study_records_are_the_demo_rows_own_numbers():
    """``fm_ref.demo.study``: the same data and row seeds as the demo; each record's NLL is
    the row's held-out NLL after training the given steps (re-trained here), and its gap is
    the paired gap to the closed-form density of 8gaussians on the same points (EVAL.7)."""
    from fm_ref.demo.study import study
    from fm_ref.toy.truth import toy_log_prob

    lines = []
    recs = study(["cfm-condot", "i-cfm"], [3, 5], n_train=400, n_eval=40, log=lines.append)
    assert [(r["key"], r["steps"]) for r in recs] == [("cfm-condot", 3), ("cfm-condot", 5), ("i-cfm", 3),
                                                     ("i-cfm", 5)]
    assert len(lines) == 4 and lines[0].startswith("CFM CondOT") and "3 steps" in lines[0]
    rng = np.random.default_rng(np.random.SeedSequence(0).spawn(1)[0])
    train, test = make_toy("8gaussians", 400, rng), make_toy("8gaussians", 40, rng)
    row = demo.ROWS["i-cfm"]
    params, _ = row.train(train, 5, np.random.default_rng(demo._row_seeds(0, "i-cfm")[0]), None)
    log_p, _ = row.evaluate(params).log_prob(test)
    assert recs[3]["nll"] == float(np.mean(-log_p))
    np.testing.assert_allclose(recs[3]["gap"], np.mean(toy_log_prob("8gaussians", test) - log_p), rtol=1e-12)
    assert recs[2]["nll"] != recs[3]["nll"]  # a separate run per budget
    with pytest.raises(ValueError, match=r"^keys: expected keys of fm_ref.demo.ROWS"):
        study(["no-such-row"], [1])


def test_report_says_which_rows_stop_early_only_at_the_default_budget(cost_run):
    """A row's ``early`` note is printed under the table at the default --steps (the budget
    the convergence study judged); other budgets and --quick print no such note."""
    import copy

    from fm_ref.demo.run import report

    res = copy.deepcopy({k: v for k, v in cost_run[0].items() if k != "cost"} | {"cost": {"rows": {}}})
    res["models"][1]["early"] = "the CNF stops early: a reason"
    assert "note: the CNF stops early" not in report(res)  # steps = 24 here
    res["steps"] = demo.DEFAULTS["steps"]
    assert "\nnote: the CNF stops early: a reason" in report(res)
    res["quick"] = True
    text = report(res)
    assert "note: the CNF stops early" not in text and "note: --quick trains on 1/10 of the default budgets" in text
    assert [r.early for r in demo.ROWS.values() if r.early] == [demo.ROWS["ddpm-vp"].early]


def test_rows_start_longest_first_by_their_estimated_cost(monkeypatch):
    """The pool starts the rows in decreasing ``step_ms`` × steps (ties in table order), so
    that the longest trainings do not start last and leave one worker idle."""
    from dataclasses import replace

    from fm_ref.demo.run import _schedule

    rows = {k: demo.ROWS[k] for k in ("nf", "cnf", "cfm-condot", "cfm-cosine")}
    rows["nf"] = replace(rows["nf"], step_ms=1.0, budget=demo.scaled(3.0))      # 3 ms per --steps unit
    rows["cnf"] = replace(rows["cnf"], step_ms=10.0, budget=demo.scaled(0.5))   # 5
    rows["cfm-condot"] = replace(rows["cfm-condot"], step_ms=2.0, budget=demo.scaled(1.0))  # 2
    rows["cfm-cosine"] = replace(rows["cfm-cosine"], step_ms=2.0, budget=demo.scaled(1.0))  # 2, a tie
    monkeypatch.setattr(demo, "ROWS", rows)
    assert _schedule(list(rows), 100) == ["cnf", "nf", "cfm-condot", "cfm-cosine"]
    assert _schedule(["cfm-cosine", "cfm-condot"], 100) == ["cfm-cosine", "cfm-condot"]  # ties keep the given order
