"""The demo's run, after ``fm_ref.demo.run_demo`` has checked its arguments and outputs:
draw the data, train every row in worker processes, evaluate the models and the cost
snapshots, assemble ``results.json`` and write the figures and the JSON atomically."""
import io
import json
import os
import time

import numpy as np

from .. import __version__
from .. import demo
from . import _executor, _row_seeds, _stop, checkpoint_nll, evaluate_model, train_model
from .cost import cost_summary
from .._io import finite_json
from .output import write_atomic

__all__ = ["run", "report"]


def _truth(data, test):
    """(true NLL record, log q at the test points) for a data set with a closed-form density."""
    from ..toy.truth import CLOSED_FORM, toy_entropy, toy_log_prob

    if data not in CLOSED_FORM:
        return {"value": None, "error": None, "method": f"'{data}' has no closed-form density"}, None
    value, err = toy_entropy(data)
    method = ("log 8 (uniform on 8 unit squares)" if data == "checkerboard" else
              "-integral of q log q, composite Gauss-Legendre (32 panels x 16 nodes per axis on [-4, 4]^2)")
    return {"value": value, "error": err, "method": method}, toy_log_prob(data, test)



def _picklable(log):
    """``log`` if a worker process can receive it, else ``demo._print``."""
    import pickle

    try:
        pickle.dumps(log)
    except Exception:  # a lambda or a bound method of an unpicklable object
        return demo._print
    return log


def _schedule(keys, steps):
    """The rows in the order their training starts: the longest first (by ``Row.step_ms``
    times the row's steps), so that two workers finish together; ties keep table order."""
    cost = {k: demo.ROWS[k].step_ms * demo.ROWS[k].budget(steps) for k in keys}
    return sorted(keys, key=lambda k: -cost[k])


def _train_and_evaluate(pool, keys, train, test, seed, steps, sizes, figure, true_lp, log):
    """Train every row, the longest first; each row's evaluation (and its cost snapshots)
    is queued as soon as its training ends, behind the trainings still waiting, so that
    no worker idles while another trains."""
    from concurrent.futures import as_completed

    if not isinstance(pool, demo._Inline):
        log = _picklable(log)
    training = {pool.submit(train_model, key, train, steps, _row_seeds(seed, key)[0], log,
                            sizes["checkpoints"] if demo.ROWS[key].cost else 0): key
                for key in _schedule(keys, steps)}
    trained, evals, snaps = {}, {}, {}
    for fut in as_completed(training):
        job = fut.result()
        key = job["key"]
        trained[key] = job
        evals[key] = pool.submit(evaluate_model, job, test, _row_seeds(seed, key)[1], figure, true_lp)
        if job["snapshots"]:
            snaps[key] = [(s, pool.submit(checkpoint_nll, key, s["params"], test)) for s in job["snapshots"][:-1]]
    log("training done")
    evals = [evals[key].result() for key in keys]
    curves = {}
    for key, rec in zip(keys, evals):
        if key not in snaps:
            continue
        points = [dict({k: v for k, v in s.items() if k != "params"}, nll=f.result()[0], nll_se=f.result()[1],
                       params=s["params"]) for s, f in snaps[key]]
        last = trained[key]["snapshots"][-1]
        points.append(dict({k: v for k, v in last.items() if k != "params"}, nll=rec["nll"], nll_se=rec["nll_se"],
                           params=last["params"]))
        curves[key] = {"name": rec["name"], "family": rec["family"], "curve": points}
    return evals, curves


def run(data, steps, seed, out, n_eval, figure_ok, jobs, log, sizes, outputs, quick):
    """The demo proper (see ``fm_ref.demo.run_demo``)."""
    from ..bench import machine_info
    from ..distributions import make_toy
    from ..flows import gaussian_baseline_nll
    from ..metrics import wasserstein2

    t_start = time.perf_counter()
    rng_data = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    train = make_toy(data, sizes["n_train"], rng_data)
    test, test_b = make_toy(data, n_eval, rng_data), make_toy(data, n_eval, rng_data)
    truth, true_lp = _truth(data, test)
    keys = list(demo.ROWS)
    log(f"fm-ref demo{' --quick' if quick else ''}: '{data}', {train.shape[0]} training points, {n_eval} held-out "
        f"points, seed {seed}, {len(keys)} models, {jobs} worker process{'es' if jobs > 1 else ''}")
    for name, exists in outputs.items():
        if exists:
            log(f"  {os.path.join(out, name)} exists and will be replaced")
    log(f"each model is evaluated as soon as it is trained, on {n_eval} held-out points "
        f"(ODE rtol = atol = {sizes['eval_tol']:g}, DOP853, exact divergence)")
    figure = None
    if figure_ok:
        lim = float(np.ceil(np.quantile(np.abs(test), 0.995) * 1.15 * 2) / 2)
        figure = (lim, sizes["grid"], sizes["n_traj"])
    pool = _executor(jobs)
    try:
        evals, curves = _train_and_evaluate(pool, keys, train, test, seed, steps, sizes, figure, true_lp, log)
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()
    floor = wasserstein2(test, test_b)
    for r in evals:
        gap = f"   gap {r['gap']:+.3f} ± {r['gap_se']:.3f}" if r["gap"] is not None else ""
        log(f"  {r['name']:<20s} NLL {r['nll']:6.3f} ± {r['nll_se']:.3f}{gap}   W2 {r['w2']:.3f}   "
            f"NFE {r['sample_nfe'] or '-'}   ({r['eval_seconds']:.1f} s)")
        if "straightness" in r:
            log(f"  {'':<20s} straightness {r['straightness']:.4f} (of {r['path_energy']:.3f})   W2 after Euler "
                + ", ".join(f"{k[9:]} steps {v:.3f}" for k, v in r.items() if k.startswith("w2_euler_")))
    records = [{k: v for k, v in r.items() if k not in ("samples", "density", "paths")} for r in evals]
    cost = {"rows": {k: {"name": c["name"], "family": c["family"],
                         "curve": [{k2: v for k2, v in p.items() if k2 != "params"} for p in c["curve"]]}
                     for k, c in curves.items()}}
    cost["comparison"] = cost_summary(cost["rows"])
    results = {"fm_ref_version": __version__, "data": data, "seed": seed, "steps": steps, "quick": quick,
               "jobs": jobs, "budget": {key: demo.ROWS[key].budget(steps) for key in keys},
               "n_train": train.shape[0], "n_eval": n_eval, "eval_tol": sizes["eval_tol"],
               "true_nll": truth, "w2_floor": floor, "gaussian_nll": gaussian_baseline_nll(train, test),
               "models": records, "cost": cost, "machine": machine_info(), "figures": {}, "replaced": []}
    if figure is not None:
        from .figures import plot_cost, plot_demo

        start = time.perf_counter()
        for name, draw in (("demo.png", lambda f: plot_demo(evals, train, test, results, figure[0], f)),
                           ("cost.png", lambda f: plot_cost(results, f))):
            buf = io.BytesIO()
            draw(buf)
            path = os.path.join(out, name)
            if write_atomic(path, buf.getvalue()):
                results["replaced"].append(path)
            results["figures"][name] = path
        log(f"figures: {', '.join(results['figures'].values())} ({time.perf_counter() - start:.1f} s)")
    results["total_seconds"] = time.perf_counter() - t_start
    path = os.path.join(out, "results.json")

    text = json.dumps(finite_json(results), indent=1, allow_nan=False) + "\n"
    if write_atomic(path, text.encode("utf-8")):
        results["replaced"].append(path)
    results["results_json"] = path
    for key, c in curves.items():  # in memory only: the snapshots' parameters (tests re-evaluate them)
        for point, full in zip(results["cost"]["rows"][key]["curve"], c["curve"]):
            point["params"] = full["params"]
    return results


def report(res):
    """The demo's results table, its cost table and the summary line (for the command line)."""
    from ..cli import fmt, format_table

    true = res["true_nll"]["value"]
    headers = ["model", "steps", "train s", "NLL (nats)", "± se", "gap to true", "± se", "W2", "NFE sample",
               "NFE log p"]
    rows = [[r["name"], str(r["train_steps"]), f"{r['train_seconds']:.1f}", f"{r['nll']:.3f}", f"{r['nll_se']:.3f}",
             fmt(r["gap"], "+.3f"), fmt(r["gap_se"], ".3f"), f"{r['w2']:.3f}", str(r["sample_nfe"] or "-"),
             str(r["nll_nfe"] or "-")] for r in res["models"]]
    rows.append(["true density", "-", "-", fmt(true, ".3f") if true is not None else "no closed form", "", "", "",
                 "", "", ""])
    rows.append(["Gaussian fit (baseline)", "-", "-", f"{res['gaussian_nll']:.3f}", "", "", "", "", "", ""])
    rows.append(["held-out vs held-out (floor)", "-", "-", "", "", "", "", f"{res['w2_floor']:.3f}", "", ""])
    text = [f"\nresults on '{res['data']}' ({res['n_eval']} held-out points; gap = mean of log q - log p over "
            f"the same points, an estimate of KL(q || p); W2 by exact assignment):\n", format_table(headers, rows)]
    cost = res["cost"]
    if cost["rows"]:
        comp = cost["comparison"] or {}
        target = comp.get("target")
        crows = []
        for key, c in cost["rows"].items():
            last = c["curve"][-1]
            hit = next((p for p in c["curve"] if target is not None and p["nll"] <= target), None)
            crows.append([c["name"], str(last["step"]), f"{last['seconds']:.1f}", str(last["nfe"]),
                          f"{last['nll']:.3f}", f"{min(p['nll'] for p in c['curve']):.3f}",
                          f"{hit['seconds']:.1f}" if hit else "never", str(hit["nfe"]) if hit else "never"])
        level = f"{target:.3f}" if target is not None else "-"
        text += [f"\nthe cost of likelihood (held-out NLL at {len(c['curve'])} checkpoints per model; "
                 f"time and NFE of training only):\n",
                 format_table(["model", "steps", "train s", "train NFE", "final NLL", "best NLL",
                               f"s to NLL {level}", f"NFE to NLL {level}"], crows)]
        if comp:
            text.append(f"\n{comp['summary']}")
    notes = [r["early"] for r in res["models"] if r.get("early")]
    if res["quick"]:
        text.append(f"\nnote: --quick trains on 1/{round(demo.DEFAULTS['steps'] / demo.QUICK['steps'])} of the default "
                    "budgets: every model stops before its plateau")
    elif notes and res["steps"] == demo.DEFAULTS["steps"]:
        text.append("\n" + "\n".join(f"note: {n}" for n in notes))
    return "\n".join(text)
