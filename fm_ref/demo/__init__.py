"""``fm-ref demo``: a normalizing flow, a CNF and flow-matching models on the same 2-D data.

Every model of the table is a row of the registry ``ROWS`` (a ``Row``: key, label,
family, a train function, an evaluate function and a budget rule). The rows today, in
table order:

- NF: a discrete flow of affine couplings (``fm_ref.flows.default_flow``), maximum likelihood;
- CNF: the MLP velocity field 2→64→64→2 trained by maximum likelihood with adjoint
  gradients (``fm_ref.adjoint.adjoint_nll_grad``): each step solves two ODEs;
- CFM CondOT and CFM Cosine: the same MLP trained by conditional flow matching
  (``fm_ref.train.train_cfm``) on two probability paths: each step is one network call.

A new family adds a row with ``register(Row(...))`` below the existing ones: a train
function ``train(data, steps, rng, callback) -> (params, losses)``, an evaluate function
``evaluate(params) -> Model`` (``cnf_model`` wraps any ``fm_ref.cnf.CNF``), and a budget
rule ``budget(steps) -> int`` from the ``--steps`` value; for example ::

    register(Row("cfm-poly", "CFM Polynomial", "CFM", _train_cfm("Polynomial"), _mlp_cnf((64, 64)),
                 scaled(1.0), "conditional flow matching, MLP 2->64->64->2, batch 256"))

(a row whose model is not an MLP velocity passes ``lambda params: cnf_model(CNF(...))``).
Each row's seeds come from the demo's seed and the row's key, so adding a row leaves the
other rows' numbers unchanged.

Each model is evaluated on held-out points: the exact negative log-likelihood (the flow's
exact log-determinant; ``CNF.log_prob`` with the exact divergence for the continuous
models) and, where the data's density is known in closed form, its gap to the true
density on the same points (``fm_ref.toy.truth``); W₂ between model samples and held-out
points by exact assignment, the floor W₂ between two held-out samples, training time,
and the NFE of sampling. The rows marked ``cost`` are also evaluated at checkpoints
during training: held-out NLL against training wall-clock and training NFE (the cost
of likelihood training, ``fm_ref.demo.cost``). Derivation: derivations/08-evaluation.md (EVAL.1)
"""
import os
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np


__all__ = ["DEFAULTS", "QUICK", "SCHEDULES", "Row", "ROWS", "register", "cnf_model", "flow_model", "scaled",
           "train_model", "evaluate_model", "run_demo"]

#: Default sizes. ``steps`` is the --steps value: the CFM rows' steps (the other rows scale with it).
DEFAULTS = {"steps": 8000, "n_train": 20_000, "n_eval": 2000, "eval_tol": 1e-5, "grid": 48, "n_traj": 300,
            "checkpoints": 10, "progress_seconds": 5.0}
#: ``--quick``: a first look in about 30 s (budgets and sizes divided).
QUICK = {"steps": 800, "n_eval": 1000, "grid": 32, "n_traj": 150, "checkpoints": 5}
#: W₂ by exact assignment stores an n × n cost matrix: 10⁴ points are 800 MB and minutes.
MAX_EVAL = 10_000
# ODE tolerance of evaluation and sampling: the NLL's solver error (~1e-5) is far below
# its standard error over 2000 points (~0.02 nats), so the NLL is exact for the table.
#: Step-size schedules, ((fraction of the steps, Adam lr), ...), from the convergence
#: study in derivations/08-evaluation.md, section 8.
SCHEDULES = {"cfm": ((0.5, 2e-3), (0.25, 1e-3), (0.25, 2.5e-4)), "nf": ((0.6, 5e-3), (0.4, 1e-3)),
             "cnf": ((1.0, 1e-2),)}


# ----------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Row:
    """One model of the demo.

    Attributes
    ----------
    key : str, a short identifier ('cfm-condot'); the row's seeds are derived from it
    name : str, the label in the table and the figures
    family : str, e.g. 'NF', 'CNF', 'CFM' (the figure draws an NF's grid image, the
        others' ODE trajectories)
    train : callable (data (N, 2), steps, rng, callback) -> (params, losses (steps,));
        ``callback(step, loss, params)`` after each step; a train function whose steps
        cost a varying number of network evaluations reports them with
        ``callback.add_nfe(k)`` when the callback has that method
    evaluate : callable params -> Model (``cnf_model`` or ``flow_model``): an object with
        ``log_prob(x) -> (log p (n,), NFE or None)``, ``sample(n, rng) -> (x (n, 2), NFE or
        None)``, ``density(pts) -> (m,)`` and ``paths(n_traj, rng) -> array``
    budget : callable steps -> int, this row's training steps for ``--steps`` = steps
    about : str, the one line printed before training (architecture, batch)
    cost : bool, evaluate checkpoints for the cost figure (NLL against time and NFE)
    nfe_per_step : int, network evaluations per training step (forward and backward
        counted as one), unless the train function reports them
    early : str, why this row stops before its plateau at the default budget ('' if it
        does not), printed under the table
    step_ms : float, rough training milliseconds per step on one core, used only to
        start the longest rows first (it changes no result)
    """

    key: str
    name: str
    family: str
    train: Callable
    evaluate: Callable
    budget: Callable
    about: str = ""
    cost: bool = False
    nfe_per_step: int = 1
    early: str = ""
    step_ms: float = 2.0


#: The rows in table order, by key.
ROWS = {}


def register(row):
    """Add ``row`` to ``ROWS`` (a key may be registered once)."""
    if not isinstance(row, Row):
        raise TypeError(f"row: expected a demo.Row, got {type(row).__name__}")
    if row.key in ROWS:
        raise ValueError(f"row: the key {row.key!r} is already registered")
    ROWS[row.key] = row
    return row


def scaled(factor):
    """The budget rule ``steps -> max(1, round(factor · steps))``."""
    return lambda steps: max(1, round(steps * factor))


class _Continuous:
    """A trained CNF seen by the evaluation (see ``Row.evaluate``)."""

    def __init__(self, flow):
        self.flow = flow

    def log_prob(self, x):
        res = self.flow.log_prob(x, divergence="exact")
        return res.log_prob, res.nfev

    def sample(self, n, rng):
        res = self.flow.sample(n, rng)
        return res.x, res.nfev

    def density(self, pts):
        return np.exp(self.flow.log_prob(pts).log_prob)

    def paths(self, n_traj, rng):
        """ODE trajectories from n_traj base points, shape (41, n_traj, 2)."""
        return self.flow.trajectory(rng.standard_normal((n_traj, 2)), np.linspace(0.0, 1.0, 41)).xs


class _Discrete:
    """A trained discrete flow seen by the evaluation (see ``Row.evaluate``)."""

    def __init__(self, flow, params):
        self.flow, self.params = flow, params

    def log_prob(self, x):
        return self.flow.log_prob(self.params, x), None

    def sample(self, n, rng):
        return self.flow.sample(self.params, n, rng), None

    def density(self, pts):
        return np.exp(self.flow.log_prob(self.params, pts))

    def paths(self, n_traj, rng):
        """The image of the grid lines of z ∈ [-3, 3]², shape (26, 120, 2)."""
        lines, along = np.linspace(-3.0, 3.0, 13), np.linspace(-3.0, 3.0, 120)
        zs = [np.stack([np.full(120, c), along], 1) for c in lines] + [np.stack([along, np.full(120, c)], 1)
                                                                       for c in lines]
        image, _ = self.flow.forward_and_log_det(self.params, np.concatenate(zs))
        return image.reshape(26, 120, 2)


def cnf_model(flow):
    """The evaluation's view of an ``fm_ref.cnf.CNF`` (exact divergence, the flow's solver)."""
    return _Continuous(flow)


def flow_model(flow, params):
    """The evaluation's view of an ``fm_ref.flows.Flow`` with its parameters."""
    return _Discrete(flow, params)


def _mlp_cnf(hidden):
    """Row.evaluate for an MLP velocity field 2 → hidden → 2 (the evaluation's ODE tolerance)."""
    def evaluate(params):
        from ..cnf import CNF
        from ..nn import MLP

        return cnf_model(CNF.from_mlp(MLP(2, hidden), params, rtol=DEFAULTS["eval_tol"], atol=DEFAULTS["eval_tol"]))
    return evaluate


def _phased(run, steps, schedule, callback):
    """Adam in phases of decreasing step size (each phase restarts Adam's moments):
    ``schedule`` is ((fraction of steps, lr), ...); ``run(n, lr, params, callback)`` trains
    n steps from ``params`` (None: initialise) and returns (params, losses)."""
    sizes = [int(round(f * steps)) for f, _ in schedule[:-1]]
    sizes.append(steps - sum(sizes))
    params, losses, done = None, [], 0
    for n, (_, lr) in zip(sizes, schedule):
        if n <= 0:
            continue
        shifted = (lambda off: lambda i, loss, p: callback(off + i, loss, p))(done) if callback else None
        params, part = run(n, lr, params, shifted)
        losses.append(part)
        done += n
    return params, np.concatenate(losses)


def _train_nf(data, steps, rng, callback, schedule=None):
    from ..flows import default_flow, train_flow_mle

    flow = default_flow(2)
    return _phased(lambda n, lr, p, cb: train_flow_mle(flow, data, n, rng, lr=lr, batch=256, params=p, callback=cb),
                   steps, schedule or SCHEDULES["nf"], callback)


def _evaluate_nf(params):
    from ..flows import default_flow

    return flow_model(default_flow(2), params)


def _train_cnf_mle(data, steps, rng, callback, schedule=None):
    """``fm_ref.adjoint.train_cnf_mle``'s loop (mini-batches of 128 without replacement,
    DOP853 at rtol 1e-4, atol 1e-5 in both passes), reporting each step's NFE."""
    from ..adjoint import adjoint_nll_grad
    from ..nn import MLP
    from ..train import adam

    mlp = MLP(2, (64, 64))
    add_nfe = getattr(callback, "add_nfe", None)

    def run(n, lr, params, cb):
        def loss_and_grad(p, step):
            idx = rng.choice(data.shape[0], size=128, replace=False)
            loss, grads, info = adjoint_nll_grad(mlp, p, data[idx], rtol=1e-4, atol=1e-5, info=True)
            if add_nfe is not None:
                add_nfe(info["nfev_forward"] + info["nfev_adjoint"])
            return loss, grads
        return adam(loss_and_grad, mlp.init(rng) if params is None else params, n, lr=lr, callback=cb)

    return _phased(run, steps, schedule or SCHEDULES["cnf"], callback)


def _train_cfm(path_name, schedule=None):
    def train(data, steps, rng, callback):
        from .. import paths
        from ..nn import MLP
        from ..train import train_cfm

        mlp, path = MLP(2, (64, 64)), getattr(paths, path_name)()
        return _phased(lambda n, lr, p, cb: train_cfm(mlp, path, data, n, rng, batch=256, lr=lr, params=p,
                                                      callback=cb),
                       steps, schedule or SCHEDULES["cfm"], callback)
    return train


register(Row("nf", "NF (coupling, MLE)", "NF", _train_nf, _evaluate_nf, scaled(0.625),
             "maximum likelihood, 8 affine couplings + affine, batch 256", cost=True, step_ms=7.0))
register(Row("cnf", "CNF (MLE, adjoint)", "CNF", _train_cnf_mle, _mlp_cnf((64, 64)), scaled(0.0125),
             "maximum likelihood, adjoint gradients, MLP 2->64->64->2, batch 128", cost=True, step_ms=400.0))
register(Row("cfm-condot", "CFM CondOT", "CFM", _train_cfm("CondOT"), _mlp_cnf((64, 64)), scaled(1.0),
             "conditional flow matching, MLP 2->64->64->2, batch 256", cost=True))
register(Row("cfm-cosine", "CFM Cosine", "CFM", _train_cfm("Cosine"), _mlp_cnf((64, 64)), scaled(1.0),
             "conditional flow matching, MLP 2->64->64->2, batch 256"))

from ..couplings.demo_rows import register_rows  # noqa: E402  (I-CFM, OT-CFM, SB-CFM; derivations/10-couplings.md)

register_rows()


def _train_ddpm(data, steps, rng, callback, schedule=None):
    from ..diffusion.experiment import train_eps_vp

    return _phased(lambda n, lr, p, cb: train_eps_vp(data, n, rng, lr=lr, callback=cb, params=p)[1:],
                   steps, schedule or SCHEDULES["cfm"], callback)


def _evaluate_ddpm(params):
    from ..diffusion.experiment import EpsVPModel

    return EpsVPModel(params, tol=DEFAULTS["eval_tol"])


register(Row("ddpm-vp", "DDPM eps (VP)", "Diffusion", _train_ddpm, _evaluate_ddpm, scaled(1.0),
             "eps-prediction (DDPM's loss) on VP to t = 0.999, MLP 2->64->64->2, batch 256; NLL by the "
             "probability-flow ODE, samples by the reverse SDE (500 Euler-Maruyama steps)",
             early="DDPM eps stops early: it trains the CFM rows' steps, so that the two losses are compared at "
                   "equal cost, and there its probability-flow NLL is still falling (gap 0.38 at 8000 steps, 0.23 "
                   "at 16000, 0.13 at 32000; derivations/08-evaluation.md, section 8): converted to a velocity, "
                   "its eps error near t = 0 is multiplied by D/alpha ~ 10 (derivations/09-diffusion.md, section 8)"))


# ----------------------------------------------------------------------------- train and evaluate

def _print(msg):
    """One write per line: the lines of two worker processes do not interleave mid-line."""
    sys.stdout.write(f"{msg}\n")
    sys.stdout.flush()


def _silent(msg):
    pass


class _Tracker:
    """The training callback: a progress line every few seconds (steps, mean loss since the
    last line, time per step, ETA), and snapshots of the parameters at ``checkpoints``
    with the training wall-clock and NFE so far."""

    def __init__(self, name, steps, log, checkpoints=(), nfe_per_step=1, every=None):
        self.name, self.steps, self.log = name, steps, log
        self.every = DEFAULTS["progress_seconds"] if every is None else every
        self.checkpoints, self.nfe_per_step = set(checkpoints), nfe_per_step
        self.snapshots, self.acc, self.nfe, self.reported = [], [], 0, False
        self.start = self.last = time.perf_counter()

    def add_nfe(self, k):
        self.reported = True
        self.nfe += int(k)

    def __call__(self, step, loss, params):
        now = time.perf_counter()
        if not self.reported:
            self.nfe += self.nfe_per_step
        self.reported = False
        self.acc.append(loss)
        if step + 1 in self.checkpoints:
            self.snapshots.append({"step": step + 1, "seconds": now - self.start, "nfe": self.nfe, "params": params})
        if now - self.last >= self.every or step + 1 == self.steps:
            per = (now - self.start) / (step + 1)
            eta = f"ETA {per * (self.steps - step - 1):5.0f} s" if step + 1 < self.steps else "done"
            self.log(f"  [{self.name}] step {step + 1:>6}/{self.steps}  loss {np.mean(self.acc):8.4f}  "
                     f"{per * 1e3:7.1f} ms/step  {eta}")
            self.acc, self.last = [], now


def checkpoint_steps(n, k):
    """k steps from n/32 to n, evenly spaced in log (fewer when n is small), the last n."""
    if n <= 1 or k <= 1:
        return [n]
    return sorted({int(s) for s in np.unique(np.round(np.geomspace(max(1.0, n / 32), n, k))) if s >= 1} | {n})


def train_model(key, train, steps, seed, log=_print, checkpoints=0):
    """Train the row ``key`` (a picklable job for a worker process).

    Parameters
    ----------
    key : a key of ``ROWS``
    train : array, shape (N, 2)
    steps : int, the --steps value (the row's budget rule gives its own step count)
    seed : numpy.random.SeedSequence or int
    log : callable(str), progress lines
    checkpoints : int, how many snapshots to keep for the cost curve (0: none)

    Returns
    -------
    dict with 'key', 'params', 'losses' (shape (n,)), 'steps' (n), 'seconds' (wall),
    'cpu_seconds' (this process), 'nfe' (training NFE), 'snapshots' (list of dicts:
    step, seconds, nfe, params).
    """
    row = ROWS[key]
    n = row.budget(steps)
    rng = np.random.default_rng(seed)
    log(f"{row.name}: {n} steps, {row.about}")
    tracker = _Tracker(row.name, n, log, checkpoint_steps(n, checkpoints) if checkpoints else (), row.nfe_per_step)
    cpu, start = time.process_time(), time.perf_counter()
    tracker.start = tracker.last = start  # the snapshots' clock is the training's
    params, losses = row.train(train, n, rng, tracker)
    return {"key": key, "params": params, "losses": losses, "steps": n, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu, "nfe": tracker.nfe, "snapshots": tracker.snapshots}


def evaluate_model(job, test, seed, figure=None, true_log_p=None):
    """Evaluate one trained model (a picklable job): exact NLL, samples, W₂, NFE.

    Parameters
    ----------
    job : dict returned by ``train_model``
    test : array, shape (n, 2), held-out points
    seed : SeedSequence or int (sampling)
    figure : (lim, grid, n_traj) or None; when given, also the density on the grid and
        the paths (ODE trajectories, or the image of a z-grid for the NF)
    true_log_p : array, shape (n,), or None: the data's log-density at ``test``; when
        given, the record has the paired gap mean(log q − log p) and its standard error

    Returns
    -------
    dict: the table's record, plus 'samples' (n, 2) and, with ``figure``, 'density' and 'paths'.
    """
    from ..metrics import mean_and_stderr, wasserstein2

    row = ROWS[job["key"]]
    model = row.evaluate(job["params"])
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    log_p, nll_nfe = model.log_prob(test)
    samples, sample_nfe = model.sample(test.shape[0], rng)
    nll, se = mean_and_stderr(-log_p, "nll")
    gap = mean_and_stderr(true_log_p - log_p, "gap") if true_log_p is not None else (None, None)
    losses = job["losses"]
    rec = {"key": row.key, "name": row.name, "family": row.family, "early": row.early, "train_steps": job["steps"],
           "train_seconds": job["seconds"], "train_cpu_seconds": job["cpu_seconds"], "train_nfe": job["nfe"],
           "final_train_loss": float(np.mean(losses[-max(1, len(losses) // 10):])),
           "nll": nll, "nll_se": se, "gap": gap[0], "gap_se": gap[1], "nll_nfe": nll_nfe,
           "w2": wasserstein2(samples, test), "sample_nfe": sample_nfe, "samples": samples}
    if hasattr(model, "metrics"):  # rows with more measurements (the coupling rows: straightness, Euler W2)
        rec.update(model.metrics(test, rng))
    if figure is not None:
        lim, grid, n_traj = figure
        axis = np.linspace(-lim, lim, grid)
        pts = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
        rec["density"] = model.density(pts).reshape(grid, grid)
        rec["paths"] = model.paths(n_traj, rng)
    rec["eval_seconds"] = time.perf_counter() - start
    return rec


def checkpoint_nll(key, params, test):
    """Held-out mean NLL and its standard error of one snapshot (a picklable job)."""
    from ..metrics import mean_and_stderr

    log_p, _ = ROWS[key].evaluate(params).log_prob(test)
    return mean_and_stderr(-log_p, "nll")


def _row_seeds(seed, key):
    """(train, evaluate) seeds of a row: from the demo's seed and the row's key, so that
    adding a row changes no other row's numbers."""
    root = [int(seed) % 2**63, zlib.crc32(key.encode())]
    return np.random.SeedSequence(root + [0]), np.random.SeedSequence(root + [1])


class _Inline:
    """The executor interface, running each job at submission (for --jobs 1)."""

    def submit(self, fn, *args, **kw):
        from concurrent.futures import Future

        fut = Future()
        fut.set_result(fn(*args, **kw))
        return fut

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def _ignore_sigint():
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers


def _executor(jobs):
    if jobs == 1:
        return _Inline()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method), initializer=_ignore_sigint)


def _stop(pool):
    """Shut the pool down; on an interrupt, end its worker processes first."""
    procs = getattr(pool, "_processes", None) or {}
    for proc in list(procs.values()):
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def run_demo(data="8gaussians", steps=None, seed=0, out=".", n_eval=None, plot=True, jobs=None, log=_print,
             quick=False):
    """Train, evaluate, write ``results.json`` (and ``demo.png``, ``cost.png``) in ``out``.

    Parameters
    ----------
    data : one of fm_ref.distributions.TOY_DATASETS
    steps : int, CFM training steps (default 8000, or 1500 with ``quick``); the other
        rows' budgets scale with it
    seed : int, seeds every random stream (the results do not depend on ``jobs``)
    out : str, an existing directory; every output file is checked writable before
        training and written atomically (a temporary file, then a rename)
    n_eval : int, held-out points for NLL and W₂ (default 2000; W₂ costs O(n²) memory)
    plot : bool, write the figures when matplotlib is importable
    jobs : int, worker processes (default: min(2, usable cores)); 1 runs everything here
    log : callable(str), progress output (a module-level function, for the workers)
    quick : bool, the ``QUICK`` sizes: a first look in about 30 s

    Returns
    -------
    dict, the contents of ``results.json`` (plus, in memory, the cost snapshots' params).
    """
    from .._validate import as_positive_int
    from ..distributions import TOY_DATASETS

    if data not in TOY_DATASETS:
        raise ValueError(f"data: expected one of {sorted(TOY_DATASETS)}, got {data!r}")
    sizes = dict(DEFAULTS, **(QUICK if quick else {}))
    steps = as_positive_int(sizes["steps"] if steps is None else steps, "steps")
    n_eval = as_positive_int(sizes["n_eval"] if n_eval is None else n_eval, "n_eval", minimum=2)
    if n_eval > MAX_EVAL:
        raise ValueError(f"n_eval: expected at most {MAX_EVAL} held-out points (W2 by assignment needs an "
                         f"n x n cost matrix), got {n_eval}")
    jobs = as_positive_int(min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else (os.cpu_count() or 1)) if jobs is None else jobs, "jobs")
    from .output import check_outputs

    figure_ok = plot and _have_matplotlib(log)
    outputs = check_outputs(out, ["results.json"] + (["demo.png", "cost.png"] if figure_ok else []))
    from .run import run

    return run(data, steps, seed, out, n_eval, figure_ok, jobs, log, sizes, outputs, quick)


def _have_matplotlib(log):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("matplotlib is not installed: the figures will be skipped (pip install matplotlib, or the 'plot' extra)")
        return False
    return True
