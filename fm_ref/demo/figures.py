"""The demo's two figures (matplotlib, the optional 'plot' extra).

- ``plot_demo``: one column per model after a column for the data: samples (row 1),
  densities on one colour scale with the true density first where it is known (row 2),
  the flow's map or the ODE trajectories (row 3);
- ``plot_cost``: held-out NLL against training wall-clock and against training NFE for
  the rows marked ``cost``, with the true NLL and the Gaussian baseline.

Both write to a path given by the caller (a temporary file: ``fm_ref.demo.output``).
"""
import textwrap

import numpy as np

__all__ = ["plot_demo", "plot_cost"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _true_density(data, lim, grid):
    from ..toy.truth import CLOSED_FORM, toy_log_prob

    if data not in CLOSED_FORM:
        return None
    axis = np.linspace(-lim, lim, grid)
    pts = np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2)
    return np.exp(np.maximum(toy_log_prob(data, pts), -700.0)).reshape(grid, grid)


def plot_demo(evals, train, test, results, lim, path):
    """Samples, densities and paths per model; column 1 is the data (see the module doc)."""
    from . import DEFAULTS

    plt = _pyplot()
    g = evals[0]["density"].shape[0] if evals else DEFAULTS["grid"]
    ncol = 1 + len(evals)
    fig, axes = plt.subplots(3, ncol, figsize=(2.9 * ncol + 0.8, 9.4), squeeze=False)
    for j, name in enumerate(["data"] + [r["name"] for r in evals]):
        axes[0, j].set_title(name, fontsize=10)
    pts = dict(s=1.5, alpha=0.4, linewidths=0)
    ext = (-lim, lim, -lim, lim)
    axes[0, 0].scatter(test[:, 0], test[:, 1], color="k", **pts)
    axes[0, 0].text(0.03, 0.03, "held-out points", transform=axes[0, 0].transAxes, fontsize=8)
    true = _true_density(results["data"], lim, g)
    vmax = float(true.max()) if true is not None else None
    if true is not None:
        image = axes[1, 0].imshow(true, origin="lower", extent=ext, cmap="viridis", vmin=0.0, vmax=vmax)
        axes[1, 0].text(0.03, 0.03, f"true density, NLL {results['true_nll']['value']:.3f}", color="w",
                        transform=axes[1, 0].transAxes, fontsize=8)
    else:
        axes[1, 0].hist2d(train[:, 0], train[:, 1], bins=g, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
        axes[1, 0].text(0.03, 0.03, "histogram of the training data\n(no closed-form density)", color="w",
                        transform=axes[1, 0].transAxes, fontsize=8)
        image = None
    axes[0, 0].set_ylabel("samples", fontsize=11)
    axes[1, 0].set_ylabel("density", fontsize=11)
    legend = None
    for j, r in enumerate(evals, start=1):
        x = r["samples"]
        axes[0, j].scatter(x[:, 0], x[:, 1], color="C0", **pts)
        axes[0, j].text(0.03, 0.03, f"W2 {r['w2']:.3f} (floor {results['w2_floor']:.3f})",
                        transform=axes[0, j].transAxes, fontsize=8)
        shown = axes[1, j].imshow(r["density"], origin="lower", extent=ext, cmap="viridis", vmin=0.0, vmax=vmax)
        image = image or shown
        gap = f"\ngap to true {r['gap']:+.3f} ± {r['gap_se']:.3f}" if r.get("gap") is not None else ""
        axes[1, j].text(0.03, 0.03, f"NLL {r['nll']:.3f} ± {r['nll_se']:.3f}{gap}", color="w",
                        transform=axes[1, j].transAxes, fontsize=8)
        if r["family"] == "NF":
            for line in r["paths"]:
                axes[2, j].plot(line[:, 0], line[:, 1], color="C0", lw=0.6)
            axes[2, j].set_title("image of the grid z ∈ [-3, 3]²", fontsize=9)
            continue
        xs = r["paths"]
        axes[2, j].plot(xs[:, :, 0], xs[:, :, 1], color="0.6", lw=0.4, alpha=0.5)
        axes[2, j].scatter(xs[0, :, 0], xs[0, :, 1], color="C1", s=3, label="t = 0 (noise)")
        axes[2, j].scatter(xs[-1, :, 0], xs[-1, :, 1], color="C0", s=3, label="t = 1 (data)")
        axes[2, j].set_title("ODE paths, t from 0 to 1", fontsize=9)
        legend = legend or axes[2, j]
    if legend is not None:
        legend.legend(loc="upper right", fontsize=7, markerscale=3)
    ticks = [-np.floor(lim), 0.0, np.floor(lim)]
    for (i, j), ax in np.ndenumerate(axes):
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks(ticks if i == 2 or (i == 1 and j == 0) else [])
        ax.set_yticks(ticks if j in (0, 1) else [])
        ax.tick_params(labelsize=7)
        if i == 2 or (i == 1 and j == 0):
            ax.set_xlabel("x₁", fontsize=9)
        if j == 1 or (j == 0 and i < 2):
            ax.set_ylabel((ax.get_ylabel() + "\n" if ax.get_ylabel() else "") + "x₂", fontsize=9)
    _legend_panel(axes[2, 0], results)
    fig.suptitle(f"fm_ref demo on '{results['data']}': normalizing flow, CNF (maximum likelihood) and flow "
                 f"matching; one colour scale for every density", fontsize=12)
    fig.tight_layout(rect=(0, 0, 0.97, 1))
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes[1]), fraction=0.012, pad=0.01)
        bar.set_label("density (per unit area)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)


def _legend_panel(ax, results):
    true = results["true_nll"]["value"]
    lines = [f"{results['data']}, seed {results['seed']}", f"W2 floor {results['w2_floor']:.3f}",
             f"Gaussian NLL {results['gaussian_nll']:.3f}",
             f"true NLL {true:.3f}" if true is not None else "true NLL: no closed form", "",
             "training (steps, wall s):"]
    lines += [f" {r['name'][:18]}: {r['train_steps']}, {r['train_seconds']:.0f} s" for r in results["models"]]
    ax.axis("off")
    ax.text(0.0, 1.0, "\n".join(lines), va="top", fontsize=8, family="monospace", transform=ax.transAxes)


def plot_cost(results, path):
    """Held-out NLL against training wall-clock (left) and training NFE (right)."""
    plt = _pyplot()
    rows = results["cost"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.2))
    true, gauss = results["true_nll"]["value"], results["gaussian_nll"]
    finals = [c["curve"][-1]["nll"] for c in rows.values()]
    top = max(gauss + 0.3, max(finals) + 0.3) if finals else gauss + 0.3
    bottom = min([true if true is not None else min(finals, default=gauss)] + finals) - 0.1
    for ax, axis, label in ((axes[0], "seconds", "training wall-clock (s, log scale)"),
                            (axes[1], "nfe", "training NFE: network evaluations, forward + backward "
                                             "(log scale)")):
        for k, (key, c) in enumerate(rows.items()):
            xs = [p[axis] for p in c["curve"]]
            ys = [p["nll"] for p in c["curve"]]
            ax.plot(xs, ys, "o-", color=f"C{k}", ms=4, lw=1.5, label=c["name"])
            ax.errorbar(xs, ys, yerr=[p["nll_se"] for p in c["curve"]], fmt="none", color=f"C{k}", lw=0.8)
        if true is not None:
            ax.axhline(true, color="k", ls="--", lw=1, label=f"true NLL (entropy of the data) {true:.3f}")
        ax.axhline(gauss, color="0.5", ls=":", lw=1, label=f"Gaussian fit {gauss:.3f}")
        comp = results["cost"].get("comparison")
        if comp is not None:
            ax.axhline(comp["target"], color="C3", lw=0.8, alpha=0.7,
                       label=f"the MLE CNF's best, {comp['target']:.3f} (the summary's level)")
        ax.set_xscale("log")
        ax.set_ylim(bottom, top)
        ax.set_xlabel(label, fontsize=10)
        ax.set_ylabel("held-out NLL (nats per point)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8, loc="upper right")
    comp = results["cost"].get("comparison")
    title = "the cost of likelihood training: held-out exact NLL during training (points: checkpoints)"
    if comp is not None:
        title += "\n" + "\n".join(textwrap.wrap(comp["summary"], 150))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
