"""Theorem checks of diffusion as flow matching (group 'diffusion').

Each measuring function takes its inputs and, where a check must be able to fail, a
replacement for the quantity under test (a wrong regression target, a wrong drift, a
wrong closed form); the registered checks run them on fixed cases. The closed-form
marginals of a mixture target are the ground truth throughout.
Derivation: derivations/09-diffusion.md (DIF.3)
"""
import numpy as onp
from autograd import grad
from scipy.integrate import solve_ivp
from scipy.stats import kstest, kstwo, norm

from ..diffusion import (KINDS, REVERSE, Predictor, conditional_loss_quadrature, conditional_regression_target,
                         diffusion_coefficient, euler_maruyama, marginal_loss_quadrature,
                         marginal_regression_target, same_marginal_drift, sample_ddim, vp_sde_coefficients)
from ..distributions import Empirical, GaussianMixture
from ..losses import cfm_quadrature_nodes
from ..marginal import marginal_velocity
from ..nn import MLP
from ..paths import VP, CondOT, Cosine, LinearVP, Polynomial
from ..train import tree_flatten
from . import register
from .foundation import QUAD_GAP_D1, example_target, rel_err

__all__ = ["gradient_gap", "stationarity_residual", "conversion_residual", "sample_path_marginal",
           "sde_ks", "sde_moment_z", "gaussian_em_errors", "observed_orders", "song_vp_residuals",
           "ddim_single_point_residual", "ddim_errors", "ddpm_moment_z", "mixture_cdf", "KS_ALPHA", "Z_BOUND",
           "CLOSED_RTOL", "STATIONARY_RTOL", "ORDER_TOL", "mixture_1d"]

# Identities between closed forms (DESIGN.md tier): a few ulps per operation.
CLOSED_RTOL = 1e-12
# Stationarity by quadrature: the trapezoid rule converges exponentially (64 nodes per
# axis in d = 1 give ~1e-13 here); the Theorem 2 bound of the foundation group.
STATIONARY_RTOL = QUAD_GAP_D1
# KS: the fixed-seed test's false-alarm rate, Bonferroni over the times tested.
KS_ALPHA = 1e-3
# Monte Carlo moments: within 5 standard errors (DESIGN.md).
Z_BOUND = 5.0
# Observed order log₂(e_h/e_{h/2}) at the finest pair within 0.15 of 1: the next term of
# the error expansion, O(h²), is ~10% of the first at the finest step (measured tables).
ORDER_TOL = 0.15
# DDIM in one step vs solve_ivp (DOP853, rtol = atol = 1e-12) of the closed-form velocity.
ODE_TOL = 1e-9


def all_paths():
    """One instance of each path (CondOT with σ_min > 0 so t = 1 stays regular)."""
    return [CondOT(0.01), VP(), LinearVP(), Cosine(), Polynomial(2.0)]


def mixture_1d():
    """A two-component 1-D mixture, the KS tests' target."""
    return GaussianMixture(onp.array([[-2.0], [1.0]]), onp.array([[[0.25]], [[1.0]]]), onp.array([0.4, 0.6]))


# ------------------------------------------------------------------ (a) Theorem 2 analogue


def gradient_gap(model, params, path, target, kind, weight=None, n_t=8, n_x=64, t_max=0.99,
                 regression_target=None):
    """‖∇θ L_cond − ∇θ L_marg‖ / ‖∇θ L_cond‖, both by quadrature, for a model of ``kind``.

    Derivation: derivations/09-diffusion.md (DIF.10)
    """
    kw = dict(weight=weight, n_t=n_t, n_x=n_x, t_max=t_max)
    g_c = tree_flatten(grad(lambda p: conditional_loss_quadrature(model, p, path, target, kind, **kw))(params))
    g_m = tree_flatten(grad(lambda p: marginal_loss_quadrature(model, p, path, target, kind,
                                                               regression_target=regression_target, **kw))(params))
    return float(onp.linalg.norm(g_c - g_m) / onp.linalg.norm(g_c))


# ------------------------------------------------------------------ (b) the minimisers


def stationarity_residual(target, path, kind, closed_form=None, n_t=8, n_x=64, t_min=0.0, t_max=0.99):
    """max_j |E[(f* − y_k)·φ_j]| / E[|f* − y_k| |φ_j|] by quadrature of the conditional loss.

    ∂/∂θ_j E‖f* + Σθφ − y_k‖² at θ = 0 is 2E[(f* − y_k)·φ_j]: zero for every φ_j when
    f* = E[y_k | x_t] is the minimiser. φ: 1, x, t x, sin x, x² (coordinatewise).

    Derivation: derivations/09-diffusion.md (DIF.8)
    """
    f_star = closed_form or (lambda x, t: marginal_regression_target(target, path, kind, x, t))
    t, x_0, x_1, w = cfm_quadrature_nodes(path, target, n_t, n_x, t_min, t_max)
    x_t, y = conditional_regression_target(path, kind, t, x_0, x_1)
    r = f_star(x_t, t) - y
    basis = [onp.ones_like(x_t), x_t, t[:, None] * x_t, onp.sin(x_t), x_t**2]
    return max(abs(onp.sum(w * onp.sum(r * phi, 1))) / onp.sum(w * onp.sum(onp.abs(r * phi), 1)) for phi in basis)


def conversion_residual(target, path, x, t):
    """max over kinds a ≠ b of rel_err(convert(T_a, a → b), T_b), T the closed-form minimisers.

    Derivation: derivations/09-diffusion.md (DIF.8)
    """
    exact = {k: marginal_regression_target(target, path, k, x, t) for k in KINDS}
    return max(rel_err(path.convert(exact[a], x, t, a, b), exact[b]) for a in KINDS for b in KINDS if a != b)


# ------------------------------------------------------------------ (c) the SDE family


def sample_path_marginal(target, path, t, n, rng):
    """n exact samples of p_t: σ_t x₀ + α_t x₁, shape (n, d)."""
    x_0 = rng.standard_normal((n, target.dim))
    return path.sample(x_0, target.sample(n, rng), t)


def mixture_cdf(target, path, t):
    """The closed-form CDF of p_t for a 1-D mixture target: Σ_k w_k Φ((y − α_t μ_k)/√(α_t²s_k² + σ_t²))."""
    a, s = path.alpha_t(t), path.sigma_t(t)
    sd = onp.sqrt(a**2 * target.covs[:, 0, 0] + s**2)
    mu = a * target.means[:, 0]
    return lambda y: onp.sum(target.weights * norm.cdf((onp.asarray(y)[..., None] - mu) / sd), axis=-1)


def _carry(target, path, g, ts, n, seed, drift):
    rng = onp.random.default_rng(seed)
    x = sample_path_marginal(target, path, ts[0], n, rng)
    pred = Predictor.exact(target, path)
    b = drift or (lambda y, t: same_marginal_drift(pred, g, y, t))
    return euler_maruyama(b, lambda t: diffusion_coefficient(path, g, t), x, ts, rng, keep=True)


def sde_ks(target, path, g, ts, check_times, n=4000, seed=0, drift=None):
    """[(t, KS statistic, p-value)] of EM samples at ``check_times`` (grid times) against p_t's CDF.

    ``drift(x, t)`` replaces u_t + ½g²∇log p_t (to show that a wrong drift is rejected).

    Derivation: derivations/09-diffusion.md (DIF.3)
    """
    states = _carry(target, path, g, ts, n, seed, drift)
    out = []
    for t in check_times:
        k = int(onp.argmin(onp.abs(ts - t)))
        res = kstest(states[k][:, 0], mixture_cdf(target, path, ts[k]))
        out.append((float(ts[k]), float(res.statistic), float(res.pvalue)))
    return out


def _moment_z(samples, target, path, t):
    """z-scores of the sample mean and second moments against p_t's closed form."""
    a, s = path.alpha_t(t), path.sigma_t(t)
    d = samples.shape[1]
    mean = a * target.mean()
    second = a**2 * (target.covariance() + onp.outer(target.mean(), target.mean())) + s**2 * onp.eye(d)
    iu = onp.triu_indices(d)
    feats = onp.concatenate([samples, (samples[:, :, None] * samples[:, None, :])[:, iu[0], iu[1]]], axis=1)
    want = onp.concatenate([mean, second[iu]])
    se = feats.std(axis=0, ddof=1) / onp.sqrt(len(samples))
    return onp.abs(feats.mean(axis=0) - want) / se


def sde_moment_z(target, path, g, ts, check_times, n=4000, seed=0, drift=None):
    """max |z| of means and second moments of EM samples at ``check_times`` against p_t.

    Derivation: derivations/09-diffusion.md (DIF.3)
    """
    states = _carry(target, path, g, ts, n, seed, drift)
    ks = [int(onp.argmin(onp.abs(ts - t))) for t in check_times]
    return float(max(onp.max(_moment_z(states[k], target, path, ts[k])) for k in ks))


def gaussian_em_errors(path, g, steps, mean=1.5, var=0.3, t0=0.0, t1=0.9, drift=None):
    """Weak errors of Euler–Maruyama for a Gaussian target, exactly (no sampling), per step count.

    For q = N(μ, v) the drift b = u + ½g²∇log p is affine, b(x) = A x + c, so the EM
    iterates stay Gaussian with m ← m + h(Am + c), V ← (1 + hA)²V + g²h: the error
    |m_N − m(t1)| + |V_N − V(t1)| of E[X] and E[X²]'s building blocks is the scheme's
    weak error, free of Monte Carlo noise. A, c are read off ``drift`` (exact for affine drifts).

    Derivation: derivations/09-diffusion.md (DIF.11)
    """
    target = GaussianMixture(onp.array([[mean]]), onp.array([[[var]]]))
    pred = Predictor.exact(target, path)
    b = drift or (lambda y, t: same_marginal_drift(pred, g, y, t))
    errors = []
    for n_steps in steps:
        ts = onp.linspace(t0, t1, n_steps + 1)
        a0, s0 = path.alpha_t(t0), path.sigma_t(t0)
        m, v = a0 * mean, a0**2 * var + s0**2
        for k in range(n_steps):
            t, h = float(ts[k]), float(ts[k + 1] - ts[k])
            c, c_plus_A = b(onp.array([[0.0], [1.0]]), t)[:, 0]
            A = c_plus_A - c
            g_t = diffusion_coefficient(path, g, t)
            m, v = m + h * (A * m + c), (1.0 + h * A) ** 2 * v + g_t**2 * h
        a1, s1 = path.alpha_t(t1), path.sigma_t(t1)
        errors.append(abs(m - a1 * mean) + abs(v - (a1**2 * var + s1**2)))
    return onp.array(errors)


def observed_orders(errors):
    """log₂(e_k / e_{k+1}) for errors at step counts doubling each time."""
    errors = onp.asarray(errors)
    return onp.log2(errors[:-1] / errors[1:])


# ------------------------------------------------------------------ (d) Song et al.'s VP SDE


def _song_score(target, log_m, x):
    """∇log p_τ(x) of p_τ = Σ w_k N(m μ_k, m²Σ_k + (1 − m²) I), written in Song's variables."""
    m = onp.exp(log_m)
    d = target.dim
    logs, grads = [], []
    for w, mu, cov in zip(target.weights, target.means, target.covs):
        C = m**2 * cov + (1.0 - m**2) * onp.eye(d)
        diff = x - m * mu
        sol = onp.linalg.solve(C, diff.T).T
        logs.append(onp.log(w) - 0.5 * onp.sum(diff * sol, 1) - 0.5 * onp.linalg.slogdet(C)[1])
        grads.append(-sol)
    logs = onp.stack(logs, 1)
    r = onp.exp(logs - logs.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return onp.einsum("nk,knd->nd", r, onp.stack(grads))


def song_vp_residuals(target, path, x, taus, velocity=None):
    """(PF-ODE residual, reverse-SDE drift residual, g² residual), relative, over τ ∈ ``taus``.

    Song et al.'s VP SDE in τ = 1 − t: PF-ODE dx/dτ = −½β x − ½β ∇log p_τ, reverse SDE
    drift (in forward t) ½β x + β ∇log p_τ with g² = β. Compared with fm_ref's
    u_t(x) (``velocity`` replaces it), its same-marginal drift with g = 'reverse', and g².

    Derivation: derivations/09-diffusion.md (DIF.5)
    """
    pred = Predictor.exact(target, path)
    u = velocity or (lambda y, t: marginal_velocity(target, path, y, t))
    worst = onp.zeros(3)
    for tau in taus:
        beta, log_m = vp_sde_coefficients(path, tau)
        s = _song_score(target, log_m, x)
        t = 1.0 - tau
        pf = -(-0.5 * beta * x - 0.5 * beta * s)  # dx/dt = −dx/dτ
        rev = 0.5 * beta * x + beta * s
        worst = onp.maximum(worst, [rel_err(u(x, t), pf), rel_err(same_marginal_drift(pred, REVERSE, x, t), rev),
                                    abs(diffusion_coefficient(path, REVERSE, t) ** 2 - beta) / beta])
    return worst


# ------------------------------------------------------------------ (e) DDIM and DDPM


def _ode_solution(target, path, x, t0, t1, rtol=1e-12):
    """The probability-flow ODE of the closed-form u_t by solve_ivp (DOP853)."""
    n, d = x.shape
    sol = solve_ivp(lambda t, y: marginal_velocity(target, path, y.reshape(n, d), t).ravel(), (t0, t1), x.ravel(),
                    method="DOP853", rtol=rtol, atol=rtol)
    return sol.y[:, -1].reshape(n, d)


def ddim_single_point_residual(path, s, t, seed=0, predictor=None):
    """DDIM η = 0 in ONE step s → t vs the ODE solution for a one-point target, relative.

    Derivation: derivations/09-diffusion.md (DIF.14)
    """
    rng = onp.random.default_rng(seed)
    target = Empirical(rng.normal(0.0, 1.5, (1, 2)))
    x = sample_path_marginal(target, path, s, 6, rng)
    pred = predictor or Predictor.exact(target, path)
    return rel_err(sample_ddim(pred, x, onp.array([s, t])), _ode_solution(target, path, x, s, t))


def ddim_errors(target, path, steps, t0=0.0, t1=1.0, n=200, seed=0):
    """max |DDIM_N(x) − ODE(x)| over n points of p_{t0}, for each N in ``steps`` (uniform grids).

    Derivation: derivations/09-diffusion.md (DIF.14)
    """
    x = sample_path_marginal(target, path, t0, n, onp.random.default_rng(seed))
    ref = _ode_solution(target, path, x, t0, t1)
    pred = Predictor.exact(target, path)
    return onp.array([onp.max(onp.abs(sample_ddim(pred, x, onp.linspace(t0, t1, N + 1)) - ref)) for N in steps])


def ddpm_moment_z(target, path, n_steps, t0=0.0, t1=0.9, n=4000, seed=0, eta=1.0):
    """max |z| of DDPM samples' moments at every grid time against p_t, exact predictions.

    Derivation: derivations/09-diffusion.md (DIF.13)
    """
    rng = onp.random.default_rng(seed)
    x = sample_path_marginal(target, path, t0, n, rng)
    ts = onp.linspace(t0, t1, n_steps + 1)
    states = sample_ddim(Predictor.exact(target, path), x, ts, eta=eta, rng=rng, keep=True)
    return float(max(onp.max(_moment_z(states[k], target, path, ts[k])) for k in range(1, len(ts))))


# ------------------------------------------------------------------ registered checks


def _ks_grid(m=60):
    """A grid on [0, 0.9] with m steps on [0, 0.3] (where VP's drift is largest) and m on [0.3, 0.9]."""
    return onp.concatenate([onp.linspace(0.0, 0.3, m + 1)[:-1], onp.linspace(0.3, 0.9, m + 1)])


_KS_TIMES = (0.3, 0.6, 0.9)


def _ks_bound(n, m):
    return float(kstwo.ppf(1.0 - KS_ALPHA / m, n))


@register("dif-thm2-kinds", "‖∇L_cond − ∇L_marg‖/‖∇L_cond‖ by quadrature, 5 kinds, uniform and CFM weights, d = 1",
          "diffusion")
def check_theorem_2_kinds():
    target, model = example_target(dim=1, k=2), MLP(1, (8,))
    params = model.init(onp.random.default_rng(5))
    worst = 0.0
    for kind, path in zip(KINDS, (VP(), Cosine(), CondOT(0.01), LinearVP(), VP())):
        for weight in (None, "cfm"):
            if weight == "cfm" and kind in ("eps", "score") and path._alpha(0.0) == 0.0:
                continue  # w = D²/α² is not integrable at t = 0 where α₀ = 0
            worst = max(worst, gradient_gap(model, params, path, target, kind, weight=weight))
    return worst, QUAD_GAP_D1, "64 trapezoid nodes per axis; the gap falls exponentially with nodes"


@register("dif-minimisers", "E[y_k|x] of each kind stationary for the conditional loss (quadrature), 5 paths",
          "diffusion")
def check_minimisers():
    target = example_target(dim=1, k=2)
    return (max(stationarity_residual(target, path, kind, t_min=0.01) for path in all_paths()
                for kind in KINDS), STATIONARY_RTOL,
            "64 trapezoid nodes per axis: measured 1e-12 (4.7e-10 at 48 nodes)")


@register("dif-minimisers-convert", "closed-form u, E[x₁|x], E[x₀|x], score, v convert into each other (25 pairs)",
          "diffusion")
def check_minimisers_convert():
    target, worst = example_target(), 0.0
    for path in all_paths():
        for t in (0.2, 0.5, 0.9):
            x = sample_path_marginal(target, path, t, 20, onp.random.default_rng(8))
            worst = max(worst, conversion_residual(target, path, x, t))
    return worst, CLOSED_RTOL, "closed forms in float64 (DESIGN.md tier)"


@register("dif-sde-ks", "EM of the same-marginal SDE, g = 0, 'reverse', 1, 2: max KS D / its α = 1e-3 bound, d = 1",
          "diffusion")
def check_sde_ks():
    worst, ts, n = 0.0, _ks_grid(), 2000
    for g in (0.0, REVERSE, 1.0, 2.0):
        for _, D, _ in sde_ks(mixture_1d(), VP(), g, ts, _KS_TIMES, n=n, seed=11):
            worst = max(worst, D / _ks_bound(n, 3 * 4))
    return worst, 1.0, "KS statistic over its critical value at α = 1e-3 (Bonferroni over 12 tests)"


@register("dif-sde-moments-d2", "EM of the same-marginal SDE in d = 2: max |z| of means and second moments",
          "diffusion")
def check_sde_moments():
    ts = _ks_grid(30)
    worst = max(sde_moment_z(example_target(), Cosine(), g, ts[ts >= 0.02], _KS_TIMES, n=2000, seed=12)
                for g in (REVERSE, 1.0))
    return worst, Z_BOUND, "5 standard errors (DESIGN.md)"


@register("dif-em-weak-order", "EM weak error for a Gaussian target (exact moments), observed order at 64 → 128 steps",
          "diffusion")
def check_weak_order():
    orders = [observed_orders(gaussian_em_errors(VP(), g, (32, 64, 128)))[-1] for g in (0.0, REVERSE, 1.0)]
    return (max(abs(o - 1.0) for o in orders), ORDER_TOL,
            "first order; the next term of the error is ~3% of the first at 128 steps (measured orders 1.03)")


@register("dif-song-vp", "Song et al.'s VP PF-ODE and reverse SDE (their τ, β, score) vs fm_ref's VP, 8 times",
          "diffusion")
def check_song_vp():
    target = example_target()
    x = sample_path_marginal(target, VP(), 0.5, 20, onp.random.default_rng(13))
    return float(onp.max(song_vp_residuals(target, VP(), x, onp.arange(1, 9) / 8.0 - 1.0 / 16.0))), CLOSED_RTOL, \
        "closed forms in float64 (DESIGN.md tier)"


@register("dif-ddim-one-step", "DDIM (η = 0) in one step vs solve_ivp, one-point target, 5 paths × 2 steps",
          "diffusion")
def check_ddim_one_step():
    worst = max(ddim_single_point_residual(path, s, t) for path in all_paths()
                for s, t in ((0.1, 0.5), (0.3, 0.95)))
    return worst, ODE_TOL, "DOP853 at rtol = atol = 1e-12 (DESIGN.md: a small multiple of the solver tolerance)"


@register("dif-ddim-order", "DDIM → probability-flow ODE, observed order at N = 64 → 128, mixture in d = 1",
          "diffusion")
def check_ddim_order():
    orders = observed_orders(ddim_errors(mixture_1d(), Cosine(), (32, 64, 128), n=50))
    return abs(orders[-1] - 1.0), ORDER_TOL, "first order; the next term of the error is ~2% of the first at 128 steps"


@register("dif-ddpm-marginals",
          "DDPM ancestral (η = 1), exact predictions, 50 steps: max |z| of moments at every grid time, d = 2",
          "diffusion")
def check_ddpm():
    return ddpm_moment_z(example_target(), Cosine(), 50, n=2000, seed=14), Z_BOUND, "5 standard errors (DESIGN.md)"
