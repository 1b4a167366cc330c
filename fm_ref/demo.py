"""``fm-ref demo``: a normalizing flow, a CNF and flow-matching models on the same 2-D data.

Four models are trained on one toy data set (``fm_ref.distributions.make_toy``):

- NF: a discrete flow of affine couplings (``fm_ref.flows.default_flow``), maximum likelihood;
- CNF: an MLP velocity field trained by maximum likelihood with adjoint gradients
  (``fm_ref.adjoint.train_cnf_mle``), a small budget: each step solves two ODEs;
- CFM CondOT and CFM Cosine: the same 2→64→64→2 MLP trained by conditional flow
  matching (``fm_ref.train.train_cfm``) on two probability paths;

and evaluated on held-out points: the exact negative log-likelihood (the flow's exact
log-determinant; ``CNF.log_prob`` with the exact divergence for the three continuous
models), W₂ between model samples and held-out points by exact assignment, the floor
W₂ between two held-out samples, training time, and the number of velocity
evaluations (NFE) of sampling. Derivation: derivations/08-evaluation.md (EVAL.1)
"""
import json
import os
import time

import numpy as np

from . import __version__

__all__ = ["DEFAULTS", "budget", "run_demo"]

#: Default budget: CFM steps (the --steps value); NF and CNF steps scale with it.
DEFAULTS = {"steps": 2000, "nf_per_cfm": 0.2, "cnf_per_cfm": 0.025, "n_train": 20_000, "n_eval": 2000,
            "eval_tol": 1e-5, "grid": 48, "n_traj": 300}
# ODE tolerance of evaluation and sampling: the NLL's solver error (~1e-5) is far below
# its standard error over 2000 points (~0.02 nats), so the NLL is exact for the table.


def budget(steps):
    """(NF steps, CNF steps, CFM steps) for ``--steps`` CFM steps."""
    return (max(1, round(steps * DEFAULTS["nf_per_cfm"])), max(1, round(steps * DEFAULTS["cnf_per_cfm"])),
            steps)


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


class _Model:
    """A trained model with one interface for evaluation and plotting."""

    def __init__(self, name, family, steps, seconds, losses):
        self.name, self.family, self.steps, self.seconds = name, family, steps, seconds
        self.final_loss = float(np.mean(losses[-max(1, len(losses) // 10):]))


class _FlowModel(_Model):
    def __init__(self, flow, params, **kw):
        super().__init__(**kw)
        self.flow, self.params = flow, params

    def sample(self, n, rng):
        return self.flow.sample(self.params, n, rng), None

    def log_prob(self, x):
        return self.flow.log_prob(self.params, x), None

    def grid_image(self, lim, lines=13, points=120):
        """The image x = G(z) of the lines of a square grid in z-space, shape (2·lines, points, 2)."""
        ticks, along = np.linspace(-lim, lim, lines), np.linspace(-lim, lim, points)
        grid = [np.stack([np.full(points, c), along], 1) for c in ticks]
        grid += [np.stack([along, np.full(points, c)], 1) for c in ticks]
        x, _ = self.flow.forward_and_log_det(self.params, np.concatenate(grid))
        return x.reshape(2 * lines, points, 2)


class _ODEModel(_Model):
    def __init__(self, mlp, params, tol, **kw):
        from .cnf import CNF

        super().__init__(**kw)
        self.cnf = CNF.from_mlp(mlp, params, rtol=tol, atol=tol)

    def sample(self, n, rng):
        res = self.cnf.sample(n, rng)
        return res.x, res.nfev

    def log_prob(self, x):
        res = self.cnf.log_prob(x, divergence="exact")
        return res.log_prob, res.nfev

    def trajectory(self, z):
        return self.cnf.trajectory(z, np.linspace(0.0, 1.0, 41)).xs


def _train_all(train, steps, seeds, log):
    from .adjoint import train_cnf_mle
    from .flows import default_flow, train_flow_mle
    from .nn import MLP
    from .paths import CondOT, Cosine
    from .train import train_cfm

    nf_steps, cnf_steps, cfm_steps = budget(steps)
    tol = DEFAULTS["eval_tol"]
    models = []

    log(f"NF: {nf_steps} steps of maximum likelihood (8 affine couplings, batch 256)")
    flow = default_flow(2)
    start = time.perf_counter()
    params, losses = train_flow_mle(flow, train, nf_steps, np.random.default_rng(seeds[0]), lr=2e-3, batch=256,
                                    callback=_Progress("NF", nf_steps, log))
    models.append(_FlowModel(flow, params, name="NF (coupling, MLE)", family="NF", steps=nf_steps,
                             seconds=time.perf_counter() - start, losses=losses))

    log(f"CNF: {cnf_steps} steps of maximum likelihood with adjoint gradients (MLP 2->32->32->2, batch 128)")
    mlp = MLP(2, (32, 32))
    start = time.perf_counter()
    rng = np.random.default_rng(seeds[1])
    params, losses = train_cnf_mle(mlp, rng, train, cnf_steps, rng, lr=1e-2, batch=128,
                                   callback=_Progress("CNF", cnf_steps, log))
    models.append(_ODEModel(mlp, params, tol, name="CNF (MLE, adjoint)", family="CNF", steps=cnf_steps,
                            seconds=time.perf_counter() - start, losses=losses))

    for k, (label, path) in enumerate((("CondOT", CondOT()), ("Cosine", Cosine()))):
        log(f"CFM {label}: {cfm_steps} steps (MLP 2->64->64->2, batch 256)")
        mlp = MLP(2, (64, 64))
        start = time.perf_counter()
        params, losses = train_cfm(mlp, path, train, cfm_steps, np.random.default_rng(seeds[2 + k]), batch=256,
                                   lr=1e-3, callback=_Progress(f"CFM {label}", cfm_steps, log))
        models.append(_ODEModel(mlp, params, tol, name=f"CFM {label}", family="CFM", steps=cfm_steps,
                                seconds=time.perf_counter() - start, losses=losses))
    return models


def _evaluate(model, test, rng, log):
    from .metrics import mean_and_stderr, wasserstein2

    start = time.perf_counter()
    log_p, nll_nfe = model.log_prob(test)
    nll, se = mean_and_stderr(-log_p, "nll")
    samples, sample_nfe = model.sample(test.shape[0], rng)
    w2 = wasserstein2(samples, test)
    rec = {"name": model.name, "family": model.family, "train_steps": model.steps,
           "train_seconds": model.seconds, "final_train_loss": model.final_loss, "nll": nll, "nll_se": se,
           "nll_nfe": nll_nfe, "w2": w2, "sample_nfe": sample_nfe, "eval_seconds": time.perf_counter() - start}
    log(f"  {model.name:<20s} NLL {nll:6.3f} ± {se:.3f}   W2 {w2:.3f}   NFE {sample_nfe or '-'}   "
        f"({rec['eval_seconds']:.1f} s)")
    return rec, samples


def run_demo(data="8gaussians", steps=None, seed=0, out=".", n_eval=None, plot=True, log=print):
    """Train, evaluate, write ``results.json`` (and ``demo.png``) in ``out``; return the results.

    Parameters
    ----------
    data : one of fm_ref.distributions.TOY_DATASETS
    steps : int, CFM training steps (default 2000); NF and CNF budgets scale with it
    seed : int, seeds every random stream
    out : str, an existing directory
    n_eval : int, held-out points for NLL and W₂ (default 2000; W₂ costs O(n²) memory)
    plot : bool, write the figure when matplotlib is importable
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
    if not os.path.isdir(out):
        raise ValueError(f"out: expected an existing directory, got {out!r}")
    t_start = time.perf_counter()
    seeds = np.random.SeedSequence(seed).spawn(8)
    rng_data = np.random.default_rng(seeds[0])
    train = make_toy(data, DEFAULTS["n_train"], rng_data)
    test, test_b = make_toy(data, n_eval, rng_data), make_toy(data, n_eval, rng_data)
    log(f"fm-ref demo: '{data}', {train.shape[0]} training points, {n_eval} held-out points, seed {seed}")

    models = _train_all(train, steps, seeds[1:5], log)
    log(f"evaluating on {n_eval} held-out points (ODE rtol = atol = {DEFAULTS['eval_tol']:g}, DOP853)")
    floor = wasserstein2(test, test_b)
    rng_eval = np.random.default_rng(seeds[5])
    records, samples = [], {}
    for m in models:
        rec, samples[m.name] = _evaluate(m, test, rng_eval, log)
        records.append(rec)
    results = {"fm_ref_version": __version__, "data": data, "seed": seed, "steps": steps,
               "budget": dict(zip(("nf_steps", "cnf_steps", "cfm_steps"), budget(steps))),
               "n_train": train.shape[0], "n_eval": n_eval, "eval_tol": DEFAULTS["eval_tol"],
               "w2_floor": floor, "gaussian_nll": gaussian_baseline_nll(train, test), "models": records,
               "machine": machine_info(), "figure": None}
    if plot:
        results["figure"] = _maybe_plot(models, train, test, samples, results, out, seeds[6], log)
    results["total_seconds"] = time.perf_counter() - t_start
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=1)
        fh.write("\n")
    return results


def _maybe_plot(models, train, test, samples, results, out, seed, log):
    try:
        import matplotlib
    except ImportError:
        log("matplotlib is not installed: figure skipped (pip install 'fm_ref[plot]' or matplotlib)")
        return None
    matplotlib.use("Agg")
    start = time.perf_counter()
    path = os.path.join(out, "demo.png")
    plot_demo(models, train, test, samples, results, path, np.random.default_rng(seed))
    log(f"figure: {path} ({time.perf_counter() - start:.1f} s)")
    return path


def plot_demo(models, train, test, samples, results, path, rng):
    """3 × 5 panels: samples (row 1), densities (row 2), paths (row 3); column 1 is the data."""
    import matplotlib.pyplot as plt

    lim = float(np.ceil(np.quantile(np.abs(test), 0.995) * 1.15 * 2) / 2)
    g = DEFAULTS["grid"]
    axis = np.linspace(-lim, lim, g)
    grid = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    fig, axes = plt.subplots(3, 5, figsize=(17, 10.4))
    names = ["data (held-out)"] + [m.name for m in models]
    for j, name in enumerate(names):
        axes[0, j].set_title(name, fontsize=11)
    pts = dict(s=1.5, alpha=0.4, linewidths=0)
    axes[0, 0].scatter(test[:, 0], test[:, 1], color="k", **pts)
    axes[1, 0].hist2d(train[:, 0], train[:, 1], bins=g, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
    axes[1, 0].set_ylabel("density", fontsize=11)
    axes[0, 0].set_ylabel("samples", fontsize=11)
    axes[2, 1].set_ylabel("maps and paths", fontsize=11)
    z = rng.standard_normal((DEFAULTS["n_traj"], 2))
    for j, (m, rec) in enumerate(zip(models, results["models"]), start=1):
        x = samples[m.name]
        axes[0, j].scatter(x[:, 0], x[:, 1], color="C0", **pts)
        axes[0, j].text(0.03, 0.03, f"W2 {rec['w2']:.3f} (floor {results['w2_floor']:.3f})",
                        transform=axes[0, j].transAxes, fontsize=8)
        dens = np.exp(m.log_prob(grid)[0]).reshape(g, g)
        axes[1, j].imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis", aspect="equal")
        axes[1, j].text(0.03, 0.03, f"NLL {rec['nll']:.3f} ± {rec['nll_se']:.3f}", color="w",
                        transform=axes[1, j].transAxes, fontsize=8)
        if m.family == "NF":
            for line in m.grid_image(3.0):
                axes[2, j].plot(line[:, 0], line[:, 1], color="C0", lw=0.6)
            axes[2, j].set_title("image of the grid z ∈ [-3, 3]² under the flow", fontsize=9)
            continue
        xs = m.trajectory(z)
        axes[2, j].plot(xs[:, :, 0], xs[:, :, 1], color="0.6", lw=0.4, alpha=0.5)
        axes[2, j].scatter(xs[0, :, 0], xs[0, :, 1], color="C1", s=3, label="t = 0 (noise)")
        axes[2, j].scatter(xs[-1, :, 0], xs[-1, :, 1], color="C0", s=3, label="t = 1 (data)")
        axes[2, j].set_title("ODE trajectories, t from 0 to 1", fontsize=9)
    axes[2, 2].legend(loc="upper right", fontsize=7, markerscale=3)
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
