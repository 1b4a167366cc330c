"""``fm-ref bench``: time the operations that matter, medians over repeats.

Each benchmark returns a record ``{"name", "size", "median_s", "times_s", "repeats",
"rate", "rate_unit", "notes"}``; ``run_bench`` collects them with a description of
the machine. All work is float64 on the CPU, with fixed seeds.
"""
import os
import platform
import statistics
import time

import numpy as np

from .. import __version__

__all__ = ["machine_info", "median_time", "bench_divergence", "bench_cfm_training",
           "bench_flow_training", "bench_flow_log_prob", "bench_cnf_log_prob", "run_bench"]


def machine_info():
    """Usable cores, the CPU model, library versions, BLAS threads and the load average
    (``fm_ref.bench.cnf.machine_info`` plus the cores this process may use)."""
    from .cnf import machine_info as cnf_machine_info

    info = cnf_machine_info()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info.update({"nproc": usable, "fm_ref": __version__, "platform": platform.platform()})
    return info


def median_time(fn, repeats, warmup=True):
    """Median wall time of ``fn()`` over ``repeats`` calls (after one warm-up call).

    Returns (median seconds, list of the times, the last return value).
    """
    out = fn() if warmup else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def _record(name, size, med, times, rate=None, rate_unit="", notes=""):
    return {"name": name, "size": size, "median_s": med, "times_s": times, "repeats": len(times),
            "rate": rate, "rate_unit": rate_unit, "notes": notes}


def _mlp_and_points(n, seed=0):
    from ..nn import MLP

    rng = np.random.default_rng(seed)
    mlp = MLP(2, (64, 64))
    return mlp, mlp.init(rng), rng.normal(size=(n, 2))


def bench_divergence(repeats, n=1000):
    """Exact divergence of MLP(2, (64, 64)) at n points: autograd (d reverse passes) vs
    the closed-form forward-mode trace of ``MLP.divergence``."""
    from ..divergence import divergence, mlp_value_and_divergence

    mlp, params, x = _mlp_and_points(n)
    field = lambda z, t: mlp.apply(params, z, t)  # noqa: E731
    med_ag, times_ag, div_ag = median_time(lambda: divergence(field, x, 0.5), repeats)
    med_an, times_an, div_an = median_time(lambda: mlp.divergence(params, x, 0.5), repeats)
    med_np, times_np, (_, div_np) = median_time(lambda: mlp_value_and_divergence(mlp, params, x, 0.5), repeats)
    gap = float(max(np.max(np.abs(div_ag - div_an)), np.max(np.abs(div_ag - div_np))))
    size = f"n={n}, d=2, MLP 2->64->64->2"
    return [_record("divergence, autograd", size, med_ag, times_ag, n / med_ag, "points/s",
                    f"d reverse passes; max |autograd - analytic| = {gap:.1e}"),
            _record("divergence, analytic", size, med_an, times_an, n / med_an, "points/s",
                    f"MLP.divergence; time autograd/analytic = {med_ag / med_an:.2f}"),
            _record("value+divergence, NumPy", size, med_np, times_np, n / med_np, "points/s",
                    f"the CNF's route (v and trace); autograd/this = {med_ag / med_np:.2f}")]


def bench_cfm_training(repeats, steps=2000, chunks=20):
    """CFM training steps per second: ``train_cfm`` with batch 256, MLP(2, (64, 64)),
    CondOT, 8gaussians data, float64 (batch sampling and Adam included), on one thread and
    with the batch split over two (``workers=2``), and a PyTorch loop of the same model
    when torch is importable (``fm_ref.bench.torch_reference``, on 1 and on 2 threads).

    Each of the ``repeats`` rounds runs ``steps`` steps of every variant, in ``chunks``
    interleaved pieces (fm_ref, fm_ref with two workers, PyTorch on 1 thread, on 2, then
    again), and a variant's round time is the sum of its pieces: a shared machine whose
    speed moves from one second to the next then slows every variant of a round alike.
    Each round's fm_ref time is compared with the faster of PyTorch's two thread counts
    in that round. The defaults, 2000 steps in pieces of 100, keep one round's ratio within
    about ±10% of the median on a 2-core virtual machine whose speed, and PyTorch's own,
    moves by ±25% from one second to the next (rounds of 200 steps in one piece: ±40%)."""
    from ..distributions import make_toy
    from ..nn import MLP
    from ..paths import CondOT
    from ..train import train_cfm
    from . import torch_reference

    rng = np.random.default_rng(0)
    data = make_toy("8gaussians", 10_000, rng)
    mlp = MLP(2, (64, 64))
    params = mlp.init(rng)
    cuts = [(steps * k) // chunks for k in range(chunks + 1)]
    pieces = [b - a for a, b in zip(cuts[:-1], cuts[1:]) if b > a]

    def fm_ref_piece(workers):
        def run(n):
            start = time.perf_counter()
            train_cfm(mlp, CondOT(), data, n, rng, batch=256, params=params, workers=workers)
            return time.perf_counter() - start
        return run

    def torch_piece(step):
        return lambda n: n / torch_reference.torch_cfm_rate(step, n)

    variants = {1: fm_ref_piece(1), 2: fm_ref_piece(2)}
    if torch_reference.available():
        variants.update({f"torch{k}": torch_piece(torch_reference.make_step(data, threads=k)) for k in (1, 2)})
    for run in variants.values():
        run(pieces[0])  # warm-up
    times = {key: [] for key in variants}
    times["torch"] = []
    for _ in range(repeats):
        spent = dict.fromkeys(variants, 0.0)
        for n in pieces:
            for key, run in variants.items():
                spent[key] += run(n)
        for key in variants:
            times[key].append(spent[key])
        if "torch1" in variants:  # PyTorch at its best on these 2 cores, this round
            times["torch"].append(min(spent["torch1"], spent["torch2"]))
    size = f"{steps} steps, batch 256, MLP 2->64->64->2"
    out = []
    for w in (1, 2):
        med = statistics.median(times[w])
        note = "train_cfm: batch draw, forward, backward, Adam" + ("" if w == 1 else "; the batch split over 2 threads")
        if times["torch"]:
            ratios = [t / o for o, t in zip(times[w], times["torch"])]
            note += (f"; rate / PyTorch (the faster of 1 and 2 threads) per round: median "
                     f"{statistics.median(ratios):.2f}, "
                     f"range {min(ratios):.2f}-{max(ratios):.2f} ({len(ratios)} rounds of {len(pieces)} "
                     f"interleaved pieces)")
        out.append(_record("CFM training" + ("" if w == 1 else ", workers=2"), size, med, times[w], steps / med,
                           "steps/s", note))
    for k in (1, 2):
        if f"torch{k}" in times:
            med = statistics.median(times[f"torch{k}"])
            out.append(_record(f"CFM training, PyTorch reference, {k} thread{'s' if k > 1 else ''}", size, med,
                               times[f"torch{k}"], steps / med, "steps/s",
                               f"torch {torch_reference.version()}, {k} thread{'s' if k > 1 else ''}, float64, the same "
                               "MLP, batch, path and Adam (optional: torch found)"))
    return out


def bench_flow_training(repeats, steps=200):
    """NF training steps per second: ``train_flow_mle`` on ``default_flow(2)`` (8 affine
    couplings with MLPs 2->32->32->2 and an elementwise affine layer), batch 256, 8gaussians
    data, float64, one thread (batch draw and Adam included), with the hand-written gradient
    (NF.27) and with autograd's (the fallback, forced), in alternating rounds; autograd runs
    a quarter of the steps (it is the slow one)."""
    from ..distributions import make_toy
    from ..flows import Flow, default_flow, train_flow_mle

    class AutogradOnly(Flow):
        def _hand_gradient_available(self):
            return False

    rng = np.random.default_rng(0)
    data = make_toy("8gaussians", 10_000, rng)
    flow = default_flow(2)
    params = flow.data_init(flow.init(rng), data)
    slow = AutogradOnly(flow.layers)
    ag_steps = max(1, steps // 4)
    variants = {"hand": (flow, steps), "autograd": (slow, ag_steps)}
    per_step = {name: [] for name in variants}
    for f, k in variants.values():
        train_flow_mle(f, data, max(1, k // 10), rng, params=params)  # warm-up
    for _ in range(repeats):
        for name, (f, k) in variants.items():
            start = time.perf_counter()
            train_flow_mle(f, data, k, rng, params=params)
            per_step[name].append((time.perf_counter() - start) / k)
    ratios = [a / h for h, a in zip(per_step["hand"], per_step["autograd"])]
    size = "batch 256, default_flow(2): 8 couplings (MLP 2->32->32->2) + elementwise affine"
    out = []
    for name, note in (("hand", "train_flow_mle: batch draw, inverse, hand-written backward (NF.27), Adam; "
                                f"autograd time / this per round: median {statistics.median(ratios):.2f}, "
                                f"range {min(ratios):.2f}-{max(ratios):.2f}"),
                       ("autograd", "the same steps with autograd's gradient (the fallback of other flows)")):
        med = statistics.median(per_step[name])
        k = variants[name][1]
        out.append(_record("NF training" + ("" if name == "hand" else ", autograd"), f"{k} steps, {size}", med * k,
                           [t * k for t in per_step[name]], 1.0 / med, "steps/s", note))
    return out


def bench_flow_log_prob(repeats, n=1000):
    """Exact log p of n 2-D points under ``default_flow(2)`` (8 affine couplings)."""
    from ..flows import default_flow

    rng = np.random.default_rng(0)
    flow = default_flow(2)
    params = flow.init(rng)
    x = rng.normal(size=(n, 2))
    med, times, _ = median_time(lambda: flow.log_prob(params, x), repeats)
    return [_record("flow log_prob", f"n={n}, d=2, {len(flow.layers)} layers (default_flow)", med, times,
                    n / med, "points/s", "exact log-det, inverse pass")]


def bench_cnf_log_prob(repeats, n=1000, tols=(1e-5, 1e-8)):
    """Exact CNF log-likelihood of n 2-D points (MLP 2->64->64->2): DOP853 at ``tols``, and
    RK45 at 7e-8 (the fewest NFE within max error 1e-7) with one thread and
    with the batch split over two (timed alternately): time, NFE and the error against a
    rtol = atol = 1e-12 solve (``fm_ref.bench.cnf``)."""
    from .cnf import bench_log_likelihood, bench_threads

    res = bench_log_likelihood(n=n, dim=2, hidden=(64, 64), tols=tols, methods=("DOP853",), repeats=repeats)
    ref = res["reference"]
    size = f"n={n}, d=2, MLP 2->64->64->2"
    out = [_record(f"CNF log p, rtol=atol={r['tol']:g}", f"{size}, {r['method']}",
                   r["median_ms"] / 1e3, [r["median_ms"] / 1e3], n / (r["median_ms"] / 1e3), "points/s",
                   f"NFE {r['nfev']}, max err {r['max_err']:.1e} (vs a {ref['tol']:g} solve, "
                   f"{ref['nfev']} NFE)") | {"repeats": repeats, "nfev": r["nfev"], "max_err": r["max_err"]}
           for r in res["rows"]]
    th = bench_threads(n=n, method="RK45", tol=7e-8, repeats=2 * repeats + 1)
    for r in (th["single"], th["threaded"]):
        out.append(_record(f"CNF log p, rtol=atol={th['tol']:g}, workers={r['workers']}", f"{size}, {th['method']}",
                           r["median_ms"] / 1e3, [r["median_ms"] / 1e3], n / (r["median_ms"] / 1e3), "points/s",
                           f"NFE {r['nfev']}, max err {r['max_err']:.1e}; one and two threads timed alternately")
                   | {"repeats": th["repeats"], "nfev": r["nfev"], "max_err": r["max_err"]})
    return out


def run_bench(repeats=3, quick=False, log=None):
    """Run every benchmark; returns {"machine": ..., "results": [records]}.

    ``quick`` shrinks the work (fewer CFM steps, fewer points) for smoke tests.
    """
    say = log or (lambda msg: None)
    n = 200 if quick else 1000
    results = []
    for label, fn in (("exact divergence", lambda: bench_divergence(repeats, n)),
                      ("CNF log-likelihood", lambda: bench_cnf_log_prob(repeats, n)),
                      ("CFM training", lambda: bench_cfm_training(repeats, *((20, 2) if quick else ()))),
                      ("NF training", lambda: bench_flow_training(repeats, 8 if quick else 200)),
                      ("flow log_prob", lambda: bench_flow_log_prob(repeats, n))):
        start = time.perf_counter()
        say(f"  {label} ...")
        new = fn()
        results.extend(new)
        say(f"  {label}: {len(new)} result(s) in {time.perf_counter() - start:.1f} s")
    return {"machine": machine_info(), "repeats": repeats, "quick": quick, "results": results}
