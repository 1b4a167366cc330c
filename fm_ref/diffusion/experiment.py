"""An ε-prediction (DDPM) model against a CFM model on a 2-D toy set, same path and budget.

Public pieces the demo can call:

- ``train_eps_vp(data, steps, rng, weight=None)``: an MLP trained to predict ε = x₀ on
  the VP path (DDPM's simple loss with ``weight=None``; the CFM-equalising weight (DIF.9)
  with ``weight='cfm'``);
- ``evaluate_diffusion_model(mlp, params, path, kind, test, rng)``: the model converted to
  a velocity (DIF.6) for the probability-flow CNF (exact held-out NLL of p_{t_max}, W₂ of
  ODE samples, NFE) and sampled by the reverse SDE (DIF.4) with a final denoising step (W₂);
- ``compare(...)`` / ``python -m fm_ref.diffusion.experiment``: the table of
  derivations/09-diffusion.md §8 (CFM vs ε uniform vs ε with the CFM weight).

Endpoint: VP's σ'_t = −∞ at t = 1, so training and sampling stop at ``T_MAX`` = 0.999
(σ_{T_MAX} ≈ 0.01) and the NLL is that of p_{T_MAX}; the same for every model compared.
"""
import argparse
import time

import numpy as onp

from ..metrics import mean_and_stderr, wasserstein2
from ..nn import MLP
from ..paths import VP
from ..toy import make_toy
from ..train import train_cfm
from .predictors import Predictor, probability_flow_cnf
from .sde import REVERSE, sample_sde
from .train import train_diffusion

__all__ = ["T_MAX", "train_eps_vp", "evaluate_diffusion_model", "compare", "eight_gaussians_mixture",
           "errors_by_time", "EpsVPModel"]

#: Where VP training and sampling stop (σ'_t = −∞ at t = 1); σ_{T_MAX} ≈ 0.01 for the default β's.
T_MAX = 0.999
_TIMES = (0.0, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99)
#: Euler–Maruyama steps of the reverse SDE (β(1 − t)h ≤ 0.04 on a uniform grid).
SDE_STEPS = 500


def train_eps_vp(data, steps, rng, weight=None, hidden=(64, 64), batch=256, lr=1e-3, callback=None, params=None):
    """(mlp, params, losses): an ε-prediction MLP on VP(), trained on t ∈ [0, T_MAX)
    (from ``params`` when given, else a fresh initialisation).

    Derivation: derivations/09-diffusion.md (DIF.10)
    """
    mlp = MLP(data.dim if hasattr(data, "dim") else onp.shape(data)[1], hidden)
    params, losses = train_diffusion(mlp, VP(), data, steps, rng, kind="eps", weight=weight, batch=batch, lr=lr,
                                     callback=callback, t_max=T_MAX, params=params)
    return mlp, params, losses


class EpsVPModel:
    """The demo's view of an ε-prediction MLP on VP (``fm_ref.demo``'s ``Row.evaluate`` contract).

    ``log_prob``, ``density`` and ``paths`` use the probability-flow ODE (DIF.6) from t = 0
    to ``T_MAX`` (the NLL is that of p_{T_MAX}); ``sample`` uses the reverse SDE (DIF.4, Song
    et al.'s reverse VP SDE) by Euler–Maruyama on ``sde_steps`` uniform steps, with the final
    denoising step; its NFE is the number of network evaluations, sde_steps + 1.
    """

    def __init__(self, params, hidden=(64, 64), tol=1e-5, sde_steps=SDE_STEPS):
        self.mlp, self.params, self.sde_steps = MLP(2, hidden), params, sde_steps
        self.flow = probability_flow_cnf(self.mlp, params, VP(), "eps", rtol=tol, atol=tol)

    def log_prob(self, x):
        res = self.flow.log_prob(x, t1=T_MAX)
        return res.log_prob, res.nfev

    def sample(self, n, rng):
        pred = Predictor.from_model(self.mlp, self.params, VP(), "eps")
        x = sample_sde(pred, rng.standard_normal((n, 2)), onp.linspace(0.0, T_MAX, self.sde_steps + 1), rng,
                       g=REVERSE, denoise=True)
        return x, self.sde_steps + 1

    def density(self, pts):
        return onp.exp(self.log_prob(pts)[0])

    def paths(self, n_traj, rng):
        """Probability-flow ODE trajectories from n_traj base points, shape (41, n_traj, 2)."""
        return self.flow.trajectory(rng.standard_normal((n_traj, 2)), onp.linspace(0.0, T_MAX, 41)).xs


def evaluate_diffusion_model(mlp, params, path, kind, test, rng, tol=1e-5, sde_steps=SDE_STEPS, t_max=T_MAX):
    """Held-out NLL (mean, stderr) of p_{t_max}, W₂ of PF-ODE and of reverse-SDE samples, NFE.

    Returns a dict: nll, nll_se, w2_ode, w2_sde, nfe_ode (the sampling solve's), nfe_sde.

    Derivation: derivations/09-diffusion.md (DIF.6) (DIF.4)
    """
    n = test.shape[0]
    flow = probability_flow_cnf(mlp, params, path, kind, rtol=tol, atol=tol)
    nll, nll_se = mean_and_stderr(-flow.log_prob(test, t1=t_max).log_prob, "log_prob")
    ode = flow.sample(n, rng, t1=t_max)
    x0 = rng.standard_normal((n, test.shape[1]))
    sde = sample_sde(Predictor.from_model(mlp, params, path, kind), x0, onp.linspace(0.0, t_max, sde_steps + 1),
                     rng, g=REVERSE, denoise=True)
    return {"nll": nll, "nll_se": nll_se, "w2_ode": wasserstein2(ode.x, test), "w2_sde": wasserstein2(sde, test),
            "nfe_ode": ode.nfev, "nfe_sde": sde_steps,
            "far_ode": float(onp.mean(onp.linalg.norm(ode.x, axis=1) > 4.0)),
            "far_sde": float(onp.mean(onp.linalg.norm(sde, axis=1) > 4.0))}


def eight_gaussians_mixture():
    """The '8gaussians' toy set as the mixture it is: 8 equal components N(2(cos kπ/4, sin kπ/4), 0.04 I)."""
    from ..distributions import GaussianMixture

    angle = onp.arange(8) * onp.pi / 4.0
    return GaussianMixture(2.0 * onp.stack([onp.cos(angle), onp.sin(angle)], 1), onp.full(8, 0.04))


def errors_by_time(mlp, params, path, kind, target, times, n=2000, seed=0):
    """Per time: (E‖f_θ − E[y_k|x]‖², E‖v_θ − u_t‖²) over x ~ p_t, the model's own error and
    its velocity's (after conversion); their ratio is the CFM weight w_k(t) (DIF.9 with the
    marginal targets: the conversion is affine with the same offset for f_θ and f*).

    Derivation: derivations/09-diffusion.md (DIF.9)
    """
    from ..marginal import marginal_velocity
    from .losses import marginal_regression_target

    rng, rows = onp.random.default_rng(seed), []
    for t in times:
        x = path.sample(rng.standard_normal((n, 2)), target.sample(n, rng), t)
        f = mlp.apply(params, x, t)
        own = onp.mean(onp.sum((f - marginal_regression_target(target, path, kind, x, t)) ** 2, 1))
        v = path.convert(f, x, t, kind, "velocity")
        vel = onp.mean(onp.sum((v - marginal_velocity(target, path, x, t)) ** 2, 1))
        rows.append((float(t), float(own), float(vel)))
    return rows


def compare(data="8gaussians", steps=2000, n_train=20_000, n_test=2000, seed=0, log=print):
    """CFM (velocity, uniform) vs ε uniform vs ε with the CFM weight, VP path, same MLP and budget.

    Returns a list of dict rows (model, seconds, final loss, and ``evaluate_diffusion_model``'s).
    """
    rng = onp.random.default_rng(seed)
    train, test = make_toy(data, n_train, rng), make_toy(data, n_test, rng)
    floor = wasserstein2(make_toy(data, n_test, rng), test)
    rows = []
    for name, kind, weight in (("CFM (velocity)", "velocity", None), ("eps, uniform", "eps", None),
                               ("eps, CFM weight", "eps", "cfm")):
        start = time.perf_counter()
        mlp, r = MLP(2, (64, 64)), onp.random.default_rng(seed + 1)
        if kind == "velocity":
            params, losses = train_cfm(mlp, VP(), train, steps, r, batch=256, lr=1e-3, t_max=T_MAX)
        else:
            mlp, params, losses = train_eps_vp(train, steps, r, weight=weight)
        secs = time.perf_counter() - start
        row = {"model": name, "train_seconds": secs, "final_loss": float(onp.mean(losses[-100:]))}
        row.update(evaluate_diffusion_model(mlp, params, VP(), kind, test, onp.random.default_rng(seed + 2)))
        if data == "8gaussians":
            row["errors_by_time"] = errors_by_time(mlp, params, VP(), kind, eight_gaussians_mixture(), _TIMES)
            log("   t, E|f - f*|^2, E|v - u|^2: " + "  ".join(f"{t:g}: {a:.2e}, {b:.2e}"
                                                            for t, a, b in row["errors_by_time"]))
        rows.append(row)
        log(f"{name:16s} NLL {row['nll']:.3f} ± {row['nll_se']:.3f}  W2 ode {row['w2_ode']:.4f}  "
            f"W2 sde {row['w2_sde']:.4f}  NFE {row['nfe_ode']}  |x|>4: ode {row['far_ode']:.3f} "
            f"sde {row['far_sde']:.3f}  train {secs:.0f} s")
    log(f"W2 floor (two held-out samples): {floor:.4f}")
    if data == "8gaussians":
        log(f"exact NLL of the data distribution: {-onp.mean(eight_gaussians_mixture().log_prob(test)):.3f}")
    return rows, floor


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--data", default="8gaussians")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    compare(a.data, a.steps, seed=a.seed)


if __name__ == "__main__":
    main()
