"""``fm-ref demo``: a normalizing flow, a CNF and flow-matching models on the same 2-D data.

Every model of the table is a row of the registry ``ROWS`` (a ``Row``: key, label,
family, a train function, an evaluate function and a budget rule). The rows today, in
table order:

- NF: a discrete flow of affine couplings (``fm_ref.flows.default_flow``), maximum likelihood;
- CNF: an MLP velocity field trained by maximum likelihood with adjoint gradients
  (``fm_ref.adjoint.train_cnf_mle``), a small budget: each step solves two ODEs;
- CFM CondOT and CFM Cosine: the same 2→64→64→2 MLP trained by conditional flow
  matching (``fm_ref.train.train_cfm``) on two probability paths.

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
models), W₂ between model samples and held-out points by exact assignment, the floor
W₂ between two held-out samples, training time, and the number of velocity
evaluations (NFE) of sampling. Derivation: derivations/08-evaluation.md (EVAL.1)
"""
import json
import os
import time
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import __version__

__all__ = ["DEFAULTS", "Row", "ROWS", "register", "cnf_model", "flow_model", "scaled", "train_model",
           "evaluate_model", "run_demo", "plot_demo"]

#: Default sizes; ``steps`` is the --steps value (the CFM rows' steps; other rows scale with it).
DEFAULTS = {"steps": 2000, "n_train": 20_000, "n_eval": 2000, "eval_tol": 1e-5, "grid": 48, "n_traj": 300}
#: W₂ by exact assignment stores an n × n cost matrix: 10⁴ points are 800 MB and minutes.
MAX_EVAL = 10_000
# ODE tolerance of evaluation and sampling: the NLL's solver error (~1e-5) is far below
# its standard error over 2000 points (~0.02 nats), so the NLL is exact for the table.


# ----------------------------------------------------------------------------- the registry

@dataclass(frozen=True)
class Row:
    """One model of the demo.

    Attributes
    ----------
    key : str, a short identifier ('cfm-condot'); the seed of the row is derived from it
    name : str, the label in the table and the figure
    family : str, e.g. 'NF', 'CNF', 'CFM' (the figure draws an NF's grid image, the
        others' ODE trajectories)
    train : callable (data (N, 2), steps, rng, callback) -> (params, losses (steps,));
        ``callback(step, loss, params)`` after each step
    evaluate : callable params -> Model (``cnf_model`` or ``flow_model``): an object with
        ``log_prob(x) -> (log p (n,), NFE or None)``, ``sample(n, rng) -> (x (n, 2), NFE or
        None)``, ``density(pts) -> (m,)`` and ``paths(n_traj, rng) -> array``
    budget : callable steps -> int, this row's training steps for ``--steps`` = steps
    about : str, the one line printed before training (architecture, batch)
    """

    key: str
    name: str
    family: str
    train: Callable
    evaluate: Callable
    budget: Callable
    about: str = ""


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
        zs = [np.stack([np.full(120, c), along], 1) for c in lines] + [np.stack([along, np.full(120, c)], 1) for c in lines]
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
        from .cnf import CNF
        from .nn import MLP

        return cnf_model(CNF.from_mlp(MLP(2, hidden), params, rtol=DEFAULTS["eval_tol"], atol=DEFAULTS["eval_tol"]))
    return evaluate


def _train_nf(data, steps, rng, callback):
    from .flows import default_flow, train_flow_mle

    return train_flow_mle(default_flow(2), data, steps, rng, lr=2e-3, batch=256, callback=callback)


def _evaluate_nf(params):
    from .flows import default_flow

    return flow_model(default_flow(2), params)


def _train_cnf_mle(data, steps, rng, callback):
    from .adjoint import train_cnf_mle
    from .nn import MLP

    return train_cnf_mle(MLP(2, (32, 32)), rng, data, steps, rng, lr=1e-2, batch=128, callback=callback)


def _train_cfm(path_name):
    def train(data, steps, rng, callback):
        from . import paths
        from .nn import MLP
        from .train import train_cfm

        return train_cfm(MLP(2, (64, 64)), getattr(paths, path_name)(), data, steps, rng, batch=256, lr=1e-3,
                         callback=callback)
    return train


register(Row("nf", "NF (coupling, MLE)", "NF", _train_nf, _evaluate_nf, scaled(0.2),
             "maximum likelihood, 8 affine couplings + affine, batch 256"))
register(Row("cnf", "CNF (MLE, adjoint)", "CNF", _train_cnf_mle, _mlp_cnf((32, 32)), scaled(0.025),
             "maximum likelihood, adjoint gradients, MLP 2->32->32->2, batch 128"))
register(Row("cfm-condot", "CFM CondOT", "CFM", _train_cfm("CondOT"), _mlp_cnf((64, 64)), scaled(1.0),
             "conditional flow matching, MLP 2->64->64->2, batch 256"))
register(Row("cfm-cosine", "CFM Cosine", "CFM", _train_cfm("Cosine"), _mlp_cnf((64, 64)), scaled(1.0),
             "conditional flow matching, MLP 2->64->64->2, batch 256"))

from .couplings.demo_rows import register_rows  # noqa: E402  (I-CFM, OT-CFM, SB-CFM; derivations/10-couplings.md)

register_rows()


def _train_ddpm(data, steps, rng, callback):
    from .diffusion.experiment import train_eps_vp

    return train_eps_vp(data, steps, rng, callback=callback)[1:]


def _evaluate_ddpm(params):
    from .diffusion.experiment import EpsVPModel

    return EpsVPModel(params, tol=DEFAULTS["eval_tol"])


register(Row("ddpm-vp", "DDPM eps (VP)", "Diffusion", _train_ddpm, _evaluate_ddpm, scaled(1.0),
             "eps-prediction (DDPM's loss) on VP to t = 0.999, MLP 2->64->64->2, batch 256; NLL by the "
             "probability-flow ODE, samples by the reverse SDE (500 Euler-Maruyama steps)"))


# ----------------------------------------------------------------------------- train and evaluate

def _print(msg):
    print(msg, flush=True)


class _Progress:
    """A callback printing about five lines per stage: step, mean loss since the last line, time."""

    def __init__(self, name, steps, log, lines=5):
        self.name, self.steps, self.log = name, steps, log
        self.every = max(1, steps // lines)
        self.start, self.acc = time.perf_counter(), []

    def __call__(self, step, loss, params):
        self.acc.append(loss)
        if (step + 1) % self.every == 0 or step + 1 == self.steps:
            self.log(f"  [{self.name}] step {step + 1:>5}/{self.steps}  loss {np.mean(self.acc):8.4f}  "
                     f"elapsed {time.perf_counter() - self.start:6.1f} s")
            self.acc = []


def train_model(key, train, steps, seed, log=_print):
    """Train the row ``key`` (a picklable job for a worker process).

    Parameters
    ----------
    key : a key of ``ROWS``
    train : array, shape (N, 2)
    steps : int, the --steps value (the row's budget rule gives its own step count)
    seed : numpy.random.SeedSequence or int

    Returns
    -------
    dict with 'key', 'params', 'losses' (shape (n,)), 'steps' (n), 'seconds'.
    """
    row = ROWS[key]
    n = row.budget(steps)
    rng = np.random.default_rng(seed)
    log(f"{row.name}: {n} steps, {row.about}")
    start = time.perf_counter()
    params, losses = row.train(train, n, rng, _Progress(row.name, n, log))
    return {"key": key, "params": params, "losses": losses, "steps": n, "seconds": time.perf_counter() - start}


def evaluate_model(job, test, seed, figure=None):
    """Evaluate one trained model (a picklable job): exact NLL, samples, W₂, NFE.

    Parameters
    ----------
    job : dict returned by ``train_model``
    test : array, shape (n, 2), held-out points
    seed : SeedSequence or int (sampling)
    figure : (lim, grid, n_traj) or None; when given, also the density on the grid and
        the paths (ODE trajectories, or the image of a z-grid for the NF)

    Returns
    -------
    dict: the table's record, plus 'samples' (n, 2) and, with ``figure``, 'density' and 'paths'.
    """
    from .metrics import mean_and_stderr, wasserstein2

    row = ROWS[job["key"]]
    model = row.evaluate(job["params"])
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    log_p, nll_nfe = model.log_prob(test)
    samples, sample_nfe = model.sample(test.shape[0], rng)
    nll, se = mean_and_stderr(-log_p, "nll")
    losses = job["losses"]
    rec = {"key": row.key, "name": row.name, "family": row.family, "train_steps": job["steps"],
           "train_seconds": job["seconds"], "final_train_loss": float(np.mean(losses[-max(1, len(losses) // 10):])),
           "nll": nll, "nll_se": se, "nll_nfe": nll_nfe, "w2": wasserstein2(samples, test),
           "sample_nfe": sample_nfe, "samples": samples}
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

    def shutdown(self):
        pass


def _executor(jobs):
    if jobs == 1:
        return _Inline()
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context(method))


def _figure_settings(test, plot, log):
    if not plot:
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("matplotlib is not installed: the figure will be skipped (pip install matplotlib, or the 'plot' extra)")
        return None
    lim = float(np.ceil(np.quantile(np.abs(test), 0.995) * 1.15 * 2) / 2)
    return (lim, DEFAULTS["grid"], DEFAULTS["n_traj"])


def run_demo(data="8gaussians", steps=None, seed=0, out=".", n_eval=None, plot=True, jobs=None, log=_print):
    """Train, evaluate, write ``results.json`` (and ``demo.png``) in ``out``; return the results.

    Parameters
    ----------
    data : one of fm_ref.distributions.TOY_DATASETS
    steps : int, CFM training steps (default 2000); the other rows' budgets scale with it
    seed : int, seeds every random stream (the results do not depend on ``jobs``)
    out : str, an existing directory
    n_eval : int, held-out points for NLL and W₂ (default 2000; W₂ costs O(n²) memory)
    plot : bool, write the figure when matplotlib is importable
    jobs : int, worker processes (default: min(2, usable cores)); 1 runs everything here
    log : callable(str), progress output
    """
    from ._validate import as_positive_int
    from .bench import machine_info
    from .distributions import TOY_DATASETS, make_toy
    from .flows import gaussian_baseline_nll
    from .metrics import wasserstein2

    if data not in TOY_DATASETS:
        raise ValueError(f"data: expected one of {sorted(TOY_DATASETS)}, got {data!r}")
    steps = as_positive_int(DEFAULTS["steps"] if steps is None else steps, "steps")
    n_eval = as_positive_int(DEFAULTS["n_eval"] if n_eval is None else n_eval, "n_eval", minimum=2)
    if n_eval > MAX_EVAL:
        raise ValueError(f"n_eval: expected at most {MAX_EVAL} held-out points (W2 by assignment needs an "
                         f"n x n cost matrix), got {n_eval}")
    jobs = as_positive_int(min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else (os.cpu_count() or 1)) if jobs is None else jobs, "jobs")
    if not os.path.isdir(out):
        raise ValueError(f"out: expected an existing directory, got {out!r}")
    t_start = time.perf_counter()
    rng_data = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    train = make_toy(data, DEFAULTS["n_train"], rng_data)
    test, test_b = make_toy(data, n_eval, rng_data), make_toy(data, n_eval, rng_data)
    log(f"fm-ref demo: '{data}', {train.shape[0]} training points, {n_eval} held-out points, seed {seed}, "
        f"{jobs} worker process{'es' if jobs > 1 else ''}")
    figure = _figure_settings(test, plot, log)
    keys = list(ROWS)
    pool = _executor(jobs)
    try:
        trained = [pool.submit(train_model, key, train, steps, _row_seeds(seed, key)[0]) for key in keys]
        trained = [f.result() for f in trained]
        log(f"training done at {time.perf_counter() - t_start:.1f} s; evaluating on {n_eval} held-out points "
            f"(ODE rtol = atol = {DEFAULTS['eval_tol']:g}, DOP853, exact divergence)")
        evals = [pool.submit(evaluate_model, job, test, _row_seeds(seed, job["key"])[1], figure) for job in trained]
        floor = wasserstein2(test, test_b)
        evals = [f.result() for f in evals]
    finally:
        pool.shutdown()
    for r in evals:
        log(f"  {r['name']:<20s} NLL {r['nll']:6.3f} ± {r['nll_se']:.3f}   W2 {r['w2']:.3f}   "
            f"NFE {r['sample_nfe'] or '-'}   ({r['eval_seconds']:.1f} s)")
        if "straightness" in r:
            log(f"  {'':<20s} straightness {r['straightness']:.4f} (of {r['path_energy']:.3f})   W2 after Euler "
                + ", ".join(f"{k[9:]} steps {v:.3f}" for k, v in r.items() if k.startswith("w2_euler_")))
    records = [{k: v for k, v in r.items() if k not in ("samples", "density", "paths")} for r in evals]
    results = {"fm_ref_version": __version__, "data": data, "seed": seed, "steps": steps, "jobs": jobs,
               "budget": {key: ROWS[key].budget(steps) for key in keys},
               "n_train": train.shape[0], "n_eval": n_eval, "eval_tol": DEFAULTS["eval_tol"],
               "w2_floor": floor, "gaussian_nll": gaussian_baseline_nll(train, test), "models": records,
               "machine": machine_info(), "figure": None}
    if figure is not None:
        start = time.perf_counter()
        results["figure"] = os.path.join(out, "demo.png")
        plot_demo(evals, train, test, results, figure[0], results["figure"])
        log(f"figure: {results['figure']} ({time.perf_counter() - start:.1f} s)")
    results["total_seconds"] = time.perf_counter() - t_start
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)
        fh.write("\n")
    return results


def plot_demo(evals, train, test, results, lim, path):
    """3 × (1 + rows) panels: samples (row 1), densities (row 2), maps and paths (row 3);
    column 1 is the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = DEFAULTS["grid"]
    ncol = 1 + len(evals)
    fig, axes = plt.subplots(3, ncol, figsize=(3.4 * ncol, 10.4), squeeze=False)
    for j, name in enumerate(["data (held-out)"] + [r["name"] for r in evals]):
        axes[0, j].set_title(name, fontsize=11)
    pts = dict(s=1.5, alpha=0.4, linewidths=0)
    axes[0, 0].scatter(test[:, 0], test[:, 1], color="k", **pts)
    axes[1, 0].hist2d(train[:, 0], train[:, 1], bins=g, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
    axes[0, 0].set_ylabel("samples", fontsize=11)
    axes[1, 0].set_ylabel("density", fontsize=11)
    axes[2, 1].set_ylabel("maps and paths", fontsize=11)
    legend = None
    for j, r in enumerate(evals, start=1):
        x = r["samples"]
        axes[0, j].scatter(x[:, 0], x[:, 1], color="C0", **pts)
        axes[0, j].text(0.03, 0.03, f"W2 {r['w2']:.3f} (floor {results['w2_floor']:.3f})",
                        transform=axes[0, j].transAxes, fontsize=8)
        axes[1, j].imshow(r["density"], origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
        axes[1, j].text(0.03, 0.03, f"NLL {r['nll']:.3f} ± {r['nll_se']:.3f}", color="w",
                        transform=axes[1, j].transAxes, fontsize=8)
        if r["family"] == "NF":
            for line in r["paths"]:
                axes[2, j].plot(line[:, 0], line[:, 1], color="C0", lw=0.6)
            axes[2, j].set_title("image of the grid z ∈ [-3, 3]² under the flow", fontsize=9)
            continue
        xs = r["paths"]
        axes[2, j].plot(xs[:, :, 0], xs[:, :, 1], color="0.6", lw=0.4, alpha=0.5)
        axes[2, j].scatter(xs[0, :, 0], xs[0, :, 1], color="C1", s=3, label="t = 0 (noise)")
        axes[2, j].scatter(xs[-1, :, 0], xs[-1, :, 1], color="C0", s=3, label="t = 1 (data)")
        axes[2, j].set_title("ODE trajectories, t from 0 to 1", fontsize=9)
        legend = legend or axes[2, j]
    if legend is not None:
        legend.legend(loc="upper right", fontsize=7, markerscale=3)
    for ax in axes.ravel():
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    lines = [f"{results['data']}, seed {results['seed']}", f"W2 floor {results['w2_floor']:.3f}",
             f"Gaussian NLL {results['gaussian_nll']:.3f}", ""]
    lines += [f"{r['name']}: {r['train_steps']} steps, {r['train_seconds']:.0f} s" for r in results["models"]]
    axes[2, 0].axis("off")
    axes[2, 0].text(0.0, 1.0, "\n".join(lines), va="top", fontsize=9, family="monospace",
                    transform=axes[2, 0].transAxes)
    fig.suptitle("fm_ref demo: normalizing flow, CNF (maximum likelihood) and CFM on the same data", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
