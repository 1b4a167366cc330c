"""The demo's coupling rows: I-CFM, OT-CFM and SB-CFM on the same data, MLP and step-size
schedule as the CFM rows, with two more measurements per row (derivations/10-couplings.md (CPL.17)):

- the straightness gap E∫₀¹‖v‖² dt − E‖x(1) − x(0)‖² of the learned flow over 500
  trajectories from N(0, I) (fewer if there are fewer held-out points) (0 iff every trajectory is straight at constant speed);
- W₂ between held-out points and samples drawn with 2, 4 and 8 explicit Euler steps
  (where straight flows pay off).

Rows: I-CFM is ConstantSigma(0) with the independent coupling (the CondOT(0) path, another
seed); OT-CFM the same path with the exact minibatch OT permutation; SB-CFM the Brownian
bridge σ = 1 with the entropic plan at ε = 2σ² (Sinkhorn stopped at ‖π1 − a‖₁ ≤ 1e-3, far
below the noise of the 256 pairs then drawn from the plan: their empirical row marginal
misses a by ~0.73 in L1, the mean over 2000 such draws; 6 iterations
instead of 17 at 1e-6), trained on t ∈ [1e-3, 1 − 1e-3] (CPL.3).

Budgets (the convergence study of derivations/08-evaluation.md, section 8), each within
0.05 nats of the row's plateau: I-CFM trains the CFM rows' steps (8000 at the default);
OT-CFM 3/8 of them (its straight pairs make a low-variance target; each of its steps pays
an exact assignment of the batch); SB-CFM 1.5 times as many (its bridge's noise slows it:
at the CFM budget it is still 0.07 nats above its 32 000-step value).
"""

__all__ = ["register_rows", "SB_SIGMA", "EULER_STEPS", "N_STRAIGHT"]

#: The bridge's σ of the SB-CFM row (ε = 2σ² = 2 against squared distances up to ~30).
SB_SIGMA = 1.0
#: Euler step counts whose samples' W₂ the rows report.
EULER_STEPS = (2, 4, 8)
#: Trajectories of the straightness gap; ODE tolerance of its solve.
N_STRAIGHT, STRAIGHT_TOL = 500, 1e-6
#: Sinkhorn's stopping tolerance during SB-CFM training (see the module's docstring).
TRAIN_SINKHORN_TOL = 1e-3
HIDDEN = (64, 64)


class _WithCouplingMetrics:
    """A demo model (``cnf_model``) plus the straightness and Euler-sampling W₂ of its field."""

    def __init__(self, model, velocity):
        self.model, self.velocity = model, velocity

    def log_prob(self, x):
        return self.model.log_prob(x)

    def sample(self, n, rng):
        return self.model.sample(n, rng)

    def density(self, pts):
        return self.model.density(pts)

    def paths(self, n_traj, rng):
        return self.model.paths(n_traj, rng)

    def metrics(self, test, rng):
        """{'straightness', 'path_energy', 'w2_euler_k' for k in EULER_STEPS}, floats."""
        from ..metrics import wasserstein2
        from .evaluate import euler_sample, straightness

        n = min(N_STRAIGHT, test.shape[0])
        gap, energy, _ = straightness(self.velocity, rng.standard_normal((n, test.shape[1])),
                                      STRAIGHT_TOL, STRAIGHT_TOL)
        out = {"straightness": gap, "path_energy": energy}
        for k in EULER_STEPS:
            x = euler_sample(self.velocity, rng.standard_normal(test.shape), k)
            out[f"w2_euler_{k}"] = wasserstein2(x, test)
        return out


def _train(path, coupling, t_min=0.0, t_max=1.0):
    """Row.train: ``train_cfm`` with the coupling, in the CFM rows' phases of decreasing
    step size (``fm_ref.demo.SCHEDULES['cfm']``)."""
    def train(data, steps, rng, callback):
        from ..demo import SCHEDULES, _phased
        from ..nn import MLP
        from ..train import train_cfm

        mlp = MLP(2, HIDDEN)
        return _phased(lambda n, lr, p, cb: train_cfm(mlp, path, data, n, rng, batch=256, lr=lr, params=p,
                                                      callback=cb, t_min=t_min, t_max=t_max, coupling=coupling),
                       steps, SCHEDULES["cfm"], callback)
    return train


def _evaluate(params):
    from ..cnf import CNF
    from ..demo import DEFAULTS, cnf_model
    from ..nn import MLP

    mlp = MLP(2, HIDDEN)
    flow = CNF.from_mlp(mlp, params, rtol=DEFAULTS["eval_tol"], atol=DEFAULTS["eval_tol"])
    return _WithCouplingMetrics(cnf_model(flow), lambda x, t: mlp.apply(params, x, t))


def register_rows():
    """Register the I-CFM, OT-CFM and SB-CFM rows in ``fm_ref.demo.ROWS`` (after the CFM rows)."""
    from ..demo import Row, register, scaled
    from .paths import BrownianBridge, ConstantSigma
    from .plans import EntropicCoupling, ExactOTCoupling

    about = "CFM with a coupling, MLP 2->64->64->2, batch 256, "
    register(Row("i-cfm", "I-CFM", "CFM", _train(ConstantSigma(0.0), None), _evaluate, scaled(1.0),
                 about + "sigma = 0, independent pairs"))
    register(Row("ot-cfm", "OT-CFM", "CFM", _train(ConstantSigma(0.0), ExactOTCoupling()), _evaluate, scaled(0.375),
                 about + "sigma = 0, exact OT permutation per batch", step_ms=9.5))
    register(Row("sb-cfm", "SB-CFM", "CFM",
                 _train(BrownianBridge(SB_SIGMA), EntropicCoupling(SB_SIGMA, tol=TRAIN_SINKHORN_TOL), 1e-3, 1 - 1e-3),
                 _evaluate, scaled(1.5), about + f"Brownian bridge sigma = {SB_SIGMA}, Sinkhorn eps = 2 sigma^2", step_ms=4.5))
