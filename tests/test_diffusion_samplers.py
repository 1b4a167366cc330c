"""Samplers of diffusion as flow matching, against the closed-form marginals.

The passing side of each statistical check runs in tests/test_verify.py (the registered
'diffusion' checks); here each check is shown to reject a wrong input, and the exact
rules (EM's update, the forward kernel and its posterior, DDIM's step, the endpoint
choices, the probability-flow CNF) are pinned against independent routes.
Derivation: derivations/09-diffusion.md (DIF.3)
"""
import autograd.numpy as anp
import numpy as np
import pytest
from autograd import jacobian
from hypothesis import given
from hypothesis import strategies as st

from fm_ref.diffusion import (KINDS, REVERSE, Predictor, as_velocity_model, cfm_weight, ddim_step,
                              ddpm_step_mean_and_var, diffusion_coefficient, euler_maruyama, forward_kernel, posterior_coefficients,
                              probability_flow_cnf, reverse_diffusion_g2, same_marginal_drift, sample_ddim,
                              sample_sde, velocity_coefficients)
from fm_ref.distributions import Empirical, GaussianMixture
from fm_ref.marginal import marginal_score, marginal_velocity
from fm_ref.nn import MLP
from fm_ref.paths import VP, AffinePath, CondOT, Cosine, LinearVP, Polynomial
from fm_ref.verify.diffusion import (KS_ALPHA, Z_BOUND, _ks_grid, ddim_errors, ddim_single_point_residual,
                                     ddpm_moment_z, gaussian_em_errors, mixture_1d, observed_orders, sde_ks,
                                     sde_moment_z, song_vp_residuals)
from fm_ref.verify.foundation import example_target, rel_err
from strategies import diffusion_kinds, fewer, interior_times, paths, seeds

# Identities between closed forms (DESIGN.md tier).
CLOSED_RTOL = 1e-12
# Autograd against closed form (DESIGN.md tier).
AUTOGRAD_RTOL = 1e-10
# A wrong rule must be off by far more than any tolerance above.
REJECT_MIN = 1e-3


# ------------------------------------------------------------------ the SDE family (DIF.3)


@pytest.mark.parametrize("how", ["half_g2_term_dropped", "wrong_sign"])
def test_ks_rejects_a_wrong_drift(how):
    """The KS test of the verify check (same n, grid, seed) rejects u_t alone and u_t − ½g²s."""
    target, path, g = mixture_1d(), VP(), 1.0
    sign = 0.0 if how == "half_g2_term_dropped" else -1.0

    def drift(x, t):
        return marginal_velocity(target, path, x, t) + sign * 0.5 * g**2 * marginal_score(target, path, x, t)

    results = sde_ks(target, path, g, _ks_grid(), (0.9,), n=2000, seed=11, drift=drift)
    assert max(p for _, _, p in results) < KS_ALPHA * 1e-3


@fewer(0.1)
@given(paths(), st.sampled_from([0.0, 0.5, 1.5, REVERSE]), seeds)
def test_sde_samples_follow_p_t_on_every_path(path, g, seed):
    """The KS test of DIF.3 on drawn paths, g and seeds (3 cases in ci, 40 under 'thorough'),
    from t = 0.05 (α > 0 for 'reverse') to 0.85, at α = 1e-6 per test (many drawn tests)."""
    ts = np.linspace(0.05, 0.85, 161)
    for _, D, p in sde_ks(mixture_1d(), path, g, ts, (0.45, 0.85), n=1000, seed=seed % 2**31):
        assert p > 1e-6, (path, g, D, p)


def test_moment_check_rejects_a_dropped_term_in_d2():
    target, path = example_target(), Cosine()
    pred = Predictor.exact(target, path)
    ts = _ks_grid(30)
    z = sde_moment_z(target, path, 1.0, ts[ts >= 0.02], (0.9,), n=2000, seed=12,
                     drift=lambda x, t: pred(x, t, "velocity"))
    assert z > 2 * Z_BOUND  # measured 15.7


def test_euler_maruyama_update_is_pinned():
    """X_{k+1} = X_k + h b + g √h ξ, with ξ drawn (n, d) per step from the Generator, in order."""
    ts = np.array([0.0, 0.1, 0.25, 0.7])
    x0 = np.array([[1.0, -2.0], [0.5, 0.0]])
    drift = lambda x, t: -x * (1.0 + t)  # noqa: E731
    got = euler_maruyama(drift, lambda t: 0.3 + t, x0, ts, np.random.default_rng(7), keep=True)
    rng, x, want = np.random.default_rng(7), x0, [x0]
    for k in range(3):
        h = ts[k + 1] - ts[k]
        x = x - h * x * (1.0 + ts[k]) + (0.3 + ts[k]) * np.sqrt(h) * rng.standard_normal(x.shape)
        want.append(x)
    assert np.array_equal(got, np.stack(want))
    assert np.array_equal(euler_maruyama(drift, lambda t: 0.0, x0, ts, np.random.default_rng(0)),
                          euler_maruyama(drift, lambda t: 0.0, x0, ts, np.random.default_rng(1)))


def test_weak_order_table_is_first_order_and_a_wrong_drift_does_not_converge():
    errors = gaussian_em_errors(Cosine(), 1.0, (16, 32, 64), t0=0.05)
    assert np.all(np.abs(observed_orders(errors) - 1.0) <= 0.2)  # first order (measured 1.06, 1.03 on VP)
    pred_path = Cosine()
    target = GaussianMixture(np.array([[1.5]]), np.array([[[0.3]]]))
    pred = Predictor.exact(target, pred_path)
    wrong = gaussian_em_errors(pred_path, 1.0, (16, 32, 64), t0=0.05, drift=lambda x, t: pred(x, t, "velocity"))
    assert wrong[-1] > 10 * errors[-1] and abs(observed_orders(wrong)[-1]) < 0.2


@given(paths(sigma_min_positive=True), interior_times, st.sampled_from([0.0, 0.7, REVERSE]), seeds)
def test_drift_is_velocity_plus_half_g2_score(path, t, g, seed):
    if g == REVERSE and path.alpha_t(0.0) == 0.0 and t < 0.05:
        t = 0.05
    target = example_target()
    x = np.random.default_rng(seed).normal(0.0, 1.5, (4, 2))
    g_t = diffusion_coefficient(path, g, t)
    want = marginal_velocity(target, path, x, t) + 0.5 * g_t**2 * marginal_score(target, path, x, t)
    assert rel_err(same_marginal_drift(Predictor.exact(target, path), g, x, t), want) <= 1e-10  # softmax rounding


def test_reverse_diffusion_g2_is_known_for_two_paths():
    """VP: g² = β(1 − t) (Song et al.); CondOT(0): g² = 2σD/α = 2(1 − t)/t."""
    t = np.array([0.1, 0.5, 0.9])
    assert rel_err(reverse_diffusion_g2(VP(), t), 0.1 + (1 - t) * 19.9) <= CLOSED_RTOL
    assert rel_err(reverse_diffusion_g2(CondOT(), t), 2 * (1 - t) / t) <= CLOSED_RTOL


def test_song_check_rejects_another_velocity():
    target = example_target()
    x = np.random.default_rng(0).normal(size=(5, 2))
    bad = song_vp_residuals(target, VP(), x, [0.25, 0.75], velocity=lambda y, t: marginal_velocity(
        target, VP(beta_max=19.0), y, t))
    assert bad[0] > REJECT_MIN


# ------------------------------------------------------------------ endpoints


def test_sde_grid_ending_where_the_score_is_infinite_raises_and_the_three_ways_out_work():
    point = np.array([[0.7, -1.2]])
    target = Empirical(point)
    x = np.random.default_rng(0).standard_normal((5, 2))
    with pytest.raises(ValueError, match=r"^ts:"):
        sample_sde(Predictor.exact(target, CondOT()), x, np.linspace(0.0, 1.0, 11), np.random.default_rng(0), g=1.0)
    # 1. σ_min > 0: the grid may end at 1
    out = sample_sde(Predictor.exact(target, CondOT(0.01)), x, np.linspace(0.0, 1.0, 51), np.random.default_rng(0),
                     g=1.0)
    assert np.all(np.isfinite(out))
    # 2. t_max < 1 and 3. the final denoising step: E[x₁ | x] is the data point itself
    den = sample_sde(Predictor.exact(target, CondOT()), x, np.linspace(0.0, 0.99, 51), np.random.default_rng(0),
                     g=1.0, denoise=True)
    assert rel_err(den, np.repeat(point, 5, 0)) <= CLOSED_RTOL
    # DDIM/DDPM may end at t = 1: the last step returns x̂₁
    for eta in (0.0, 1.0):
        last = sample_ddim(Predictor.exact(target, Cosine()), x, np.linspace(0.0, 1.0, 5), eta=eta,
                           rng=np.random.default_rng(1))
        assert rel_err(last, np.repeat(point, 5, 0)) <= CLOSED_RTOL


# ------------------------------------------------------------------ DDPM / DDIM (DIF.12–DIF.14)


@given(paths(), st.floats(0.02, 0.9), st.floats(0.05, 0.95))
def test_posterior_is_gaussian_conditioning_of_the_joint(path, s, frac):
    """(x_s, x_t) | x₁ is jointly Gaussian with Cov(x_s, x_t) = a σ_t² (a = α_s/α_t); conditioning
    gives the posterior by the Schur complement, a route that does not form the kernel's product."""
    t = s + frac * (1.0 - s) * 0.98
    a, var = forward_kernel(path, s, t)
    a_s, s_s, a_t, s_t = path.alpha_t(s), path.sigma_t(s), path.alpha_t(t), path.sigma_t(t)
    cov = np.array([[s_s**2, a * s_t**2], [a * s_t**2, s_t**2]])
    gain = cov[1, 0] / cov[0, 0]
    c_x, c_1, tau2 = posterior_coefficients(path, s, t)
    # mean of x_t given x_s: α_t x₁ + gain (x_s − α_s x₁)
    assert c_x == pytest.approx(gain, rel=1e-10, abs=1e-14)
    assert c_1 == pytest.approx(a_t - gain * a_s, rel=1e-9, abs=1e-12)  # cancellation when gain·α_s ≈ α_t
    assert tau2 == pytest.approx(cov[1, 1] - gain * cov[0, 1], rel=1e-9, abs=1e-12)
    assert var == pytest.approx(s_s**2 - a**2 * s_t**2, rel=1e-12, abs=1e-15) and a == pytest.approx(a_s / a_t)


def test_forward_kernel_carries_p_t_to_p_s_by_monte_carlo():
    target, path, s, t = example_target(), Cosine(), 0.3, 0.7
    rng = np.random.default_rng(3)
    n = 20_000
    x_t = path.sample(rng.standard_normal((n, 2)), target.sample(n, rng), t)
    a, var = forward_kernel(path, s, t)
    x_s = a * x_t + np.sqrt(var) * rng.standard_normal((n, 2))
    want_mean = path.alpha_t(s) * target.mean()
    want_var = path.alpha_t(s) ** 2 * np.diag(target.covariance()) + path.sigma_t(s) ** 2
    z_mean = np.abs(x_s.mean(0) - want_mean) / (x_s.std(0) / np.sqrt(n))
    z_var = np.abs(x_s.var(0) - want_var) / (np.std((x_s - x_s.mean(0)) ** 2, 0) / np.sqrt(n))
    assert np.all(z_mean <= Z_BOUND) and np.all(z_var <= Z_BOUND)


def test_ddim_eta_one_is_the_ddpm_posterior_sample_and_eta_zero_is_deterministic():
    path, s, t = VP(), 0.2, 0.6
    rng = np.random.default_rng(0)
    x_s, x1_hat = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    x0_hat = (x_s - path.alpha_t(s) * x1_hat) / path.sigma_t(s)
    mean, var = ddpm_step_mean_and_var(path, x_s, s, t, x1_hat)
    got = ddim_step(path, x_s, s, t, x0_hat, x1_hat, eta=1.0, rng=np.random.default_rng(5))
    want = mean + np.sqrt(var) * np.random.default_rng(5).standard_normal((4, 2))
    assert rel_err(got, want) <= CLOSED_RTOL
    det = ddim_step(path, x_s, s, t, x0_hat, x1_hat, eta=0.0)
    assert rel_err(det, path.alpha_t(t) * x1_hat + path.sigma_t(t) * x0_hat) <= CLOSED_RTOL
    half = ddim_step(path, x_s, s, t, x0_hat, x1_hat, eta=0.5, rng=np.random.default_rng(5))
    c2 = 0.25 * var
    want_half = (path.alpha_t(t) * x1_hat + np.sqrt(path.sigma_t(t) ** 2 - c2) * x0_hat
                 + np.sqrt(c2) * np.random.default_rng(5).standard_normal((4, 2)))
    assert rel_err(half, want_half) <= CLOSED_RTOL


def test_ddim_one_step_check_rejects_a_wrong_predictor():
    """Predictions of another data point make the one-step DDIM miss the ODE by O(1)."""
    other = Predictor.exact(Empirical(np.array([[3.0, 3.0]])), Cosine())
    assert ddim_single_point_residual(Cosine(), 0.1, 0.5, predictor=other) > REJECT_MIN


def test_ddim_convergence_table_is_first_order():
    errors = ddim_errors(mixture_1d(), VP(), (8, 16, 32), t1=0.99, n=40)
    orders = observed_orders(errors)
    assert np.all(np.abs(orders - 1.0) <= 0.1)  # measured 0.94, 0.97 (VP), 0.96, 0.98 (Cosine)


def test_ddpm_improves_as_the_grid_is_refined():
    """4 steps: the marginals are visibly off (|z| ≫ 5); 50 steps pass in the verify check."""
    assert ddpm_moment_z(example_target(), Cosine(), 4, n=2000, seed=14) > 4 * Z_BOUND


class _FallingSNR(AffinePath):
    """α_t = 0.5 + 0.4t − 0.3t², σ_t = 0.5 + 0.4t: the SNR α/σ falls from 0.98 at t = 0.2 to 0.77 at 0.8."""

    def _alpha(self, t):
        return 0.5 + 0.4 * t - 0.3 * t**2

    def _sigma(self, t):
        return 0.5 + 0.4 * t

    def _d_alpha(self, t):
        return 0.4 - 0.6 * t

    def _d_sigma(self, t):
        return 0.4 + 0.0 * t


class _AlmostConstantSNR(AffinePath):
    """σ_t = 0.3, α_t = 0.3(1 − δt): ς²/σ_s² ≈ −δ(t − s)·2, a rounding-sized SNR decrease for tiny δ."""

    def __init__(self, delta):
        self.delta = delta

    def _alpha(self, t):
        return 0.3 * (1.0 - self.delta * t)

    def _sigma(self, t):
        return 0.3 + 0.0 * t


def test_the_kernel_clips_rounding_but_not_a_real_snr_decrease():
    """ς² ≥ −1e-12 σ_s² is rounding (clipped to 0); below, the SNR decreases (DIF.12)."""
    a, var = forward_kernel(_AlmostConstantSNR(6e-13), 0.25, 0.75)  # ς²/σ_s² ≈ −6e-13
    assert var == 0.0 and a == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"^path:"):
        forward_kernel(_AlmostConstantSNR(2e-12), 0.25, 0.75)  # ≈ −2e-12


def test_a_decreasing_snr_and_bad_steps_raise():
    with pytest.raises(ValueError, match=r"^path:"):
        forward_kernel(_FallingSNR(), 0.2, 0.8)
    with pytest.raises(ValueError, match=r"^t:"):
        forward_kernel(Cosine(), 0.5, 0.5)
    x = np.zeros((2, 1))
    with pytest.raises(ValueError, match=r"^eta:"):
        ddim_step(Cosine(), x, 0.1, 0.2, x, x, eta=1.5)
    with pytest.raises(ValueError, match=r"^eta:"):
        sample_ddim(Predictor.exact(mixture_1d(), Cosine()), x, [0.1, 0.2], eta=-0.1)
    with pytest.raises(TypeError, match=r"^rng:"):
        ddim_step(Cosine(), x, 0.1, 0.2, x, x, eta=0.5)
    with pytest.raises(ValueError, match=r"^s:"):
        forward_kernel(CondOT(), -0.1, 0.5)


@pytest.mark.parametrize("ts, match", [([0.0, 0.5, 0.4], r"^ts:"), ([0.5], r"^ts:"), ([0.0, 1.5], r"^ts:"),
                                       ([[0.0, 0.5]], r"^ts:"), ([0.0, float("nan")], r"^ts:")])
def test_bad_grids_raise(ts, match):
    with pytest.raises(ValueError, match=match):
        sample_sde(Predictor.exact(mixture_1d(), VP()), np.zeros((2, 1)), ts, np.random.default_rng(0))


@pytest.mark.parametrize("g, error", [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                      ("song", ValueError), (lambda t: -t, ValueError), ([1.0], TypeError)])
def test_bad_g_raises(g, error):
    with pytest.raises(error, match=r"^g:"):
        sample_sde(Predictor.exact(mixture_1d(), VP()), np.zeros((2, 1)), [0.1, 0.5, 0.9], np.random.default_rng(0),
                   g=g)


def test_unknown_kind_and_predictor_raise():
    with pytest.raises(ValueError, match=r"^kind:"):
        Predictor.from_model(lambda p, x, t: x, None, VP(), "noise")
    with pytest.raises(TypeError, match=r"^predictor:"):
        sample_ddim(lambda x, t, to: x, np.zeros((2, 1)), [0.1, 0.5])
    with pytest.raises(ValueError, match=r"^t:"):
        velocity_coefficients(Cosine(), "eps", 0.0)


# ------------------------------------------------------------------ the probability-flow CNF (DIF.6)


@given(paths(sigma_min_positive=True), diffusion_kinds, interior_times, seeds)
def test_velocity_coefficients_agree_with_convert(path, kind, t, seed):
    rng = np.random.default_rng(seed)
    f, x = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    a, b = velocity_coefficients(path, kind, t)
    assert rel_err(a * x + b * f, path.convert(f, x, t, kind, "velocity")) <= CLOSED_RTOL


@pytest.mark.parametrize("kind", KINDS)
def test_probability_flow_cnf_divergence_matches_autograd(kind):
    """v and ∇·v of the converted MLP (closed-form trace) vs autograd's Jacobian of as_velocity_model."""
    mlp = MLP(2, (8, 8), "tanh")
    params = mlp.init(np.random.default_rng(1))
    path = LinearVP() if kind != "x1" else Polynomial(2.0)
    flow = probability_flow_cnf(mlp, params, path, kind)
    x, t = np.random.default_rng(2).normal(size=(4, 2)), 0.4
    v, div = flow._vdiv(x, t)
    field = as_velocity_model(mlp.apply, path, kind)
    assert rel_err(v, field(params, x, t)) <= CLOSED_RTOL
    jac = [jacobian(lambda z: field(params, anp.reshape(z, (1, 2)), t)[0])(x[i]) for i in range(4)]
    assert rel_err(div, np.array([np.trace(j) for j in jac])) <= AUTOGRAD_RTOL


@pytest.mark.parametrize("kind", KINDS)
def test_model_predictor_converts_and_its_cache_follows_x(kind):
    mlp = MLP(2, (8,))
    params = mlp.init(np.random.default_rng(4))
    path, t = Cosine(), 0.3
    pred = Predictor.from_model(mlp, params, path, kind)
    x = np.random.default_rng(5).normal(size=(3, 2))
    for to in KINDS:
        assert rel_err(pred(x, t, to), path.convert(mlp.apply(params, x, t), x, t, kind, to)) <= CLOSED_RTOL
    first = pred(x, t, "x1")
    x += 1.0  # changed in place: the cached model output must not be reused
    assert rel_err(pred(x, t, "x1"), path.convert(mlp.apply(params, x, t), x, t, kind, "x1")) <= CLOSED_RTOL
    assert rel_err(first, pred(x, t, "x1")) > REJECT_MIN


def test_the_demo_model_and_the_experiment_run_end_to_end():
    """A few training steps, then the demo's view (ODE NLL, SDE samples) and the error table."""
    from fm_ref.diffusion.experiment import (EpsVPModel, eight_gaussians_mixture, errors_by_time,
                                             evaluate_diffusion_model, train_eps_vp)

    rng = np.random.default_rng(0)
    data = eight_gaussians_mixture().sample(200, rng)
    mlp, params, losses = train_eps_vp(data, 3, rng, hidden=(8,), batch=32)
    assert losses.shape == (3,)
    model = EpsVPModel(params, hidden=(8,), sde_steps=20)
    log_p, nfe = model.log_prob(data[:5])
    x, n_net = model.sample(7, rng)
    assert log_p.shape == (5,) and np.all(np.isfinite(log_p)) and nfe > 0
    assert x.shape == (7, 2) and np.all(np.isfinite(x)) and n_net == 21
    rec = evaluate_diffusion_model(mlp, params, VP(), "eps", data[:20], rng, sde_steps=20)
    assert rec["nll"] == pytest.approx(-np.mean(model.flow.log_prob(data[:20], t1=0.999).log_prob), rel=1e-12)
    rows = errors_by_time(mlp, params, VP(), "eps", eight_gaussians_mixture(), (0.0, 0.5), n=50)
    # the velocity error is the ε error times w_eps(t) = D²/α² exactly (DIF.9): 100 at t = 0 on VP
    for t, own, vel in rows:
        assert vel == pytest.approx(cfm_weight(VP(), "eps", t) * own, rel=1e-10)


# ------------------------------------------------------------------ mutation-run additions


@pytest.mark.parametrize("kind", ["eps", "v", "x1"])
def test_probability_flow_cnf_push_forward_solves_the_converted_ode(kind):
    """flow.push_forward = scipy's solution of dx/dt = as_velocity_model(...) from 0.2 to 0.8 (DIF.6).

    Derivation: derivations/09-diffusion.md (DIF.6)
    """
    from scipy.integrate import solve_ivp

    mlp = MLP(2, (8,), "tanh")
    params = mlp.init(np.random.default_rng(3))
    path, t0, t1 = Cosine(), 0.2, 0.8
    flow = probability_flow_cnf(mlp, params, path, kind, rtol=1e-11, atol=1e-11)
    x = np.random.default_rng(4).normal(size=(3, 2))
    got = flow.push_forward(x, t0, t1).x
    field = as_velocity_model(mlp.apply, path, kind)
    sol = solve_ivp(lambda t, y: np.ravel(field(params, y.reshape(3, 2), t)), (t0, t1), x.ravel(),
                    method="RK45", rtol=1e-11, atol=1e-11)
    assert sol.status == 0
    # two different solvers at rtol = atol = 1e-11 over an O(1) flow: agreement to ~1e-9
    assert rel_err(got, sol.y[:, -1].reshape(3, 2)) <= 1e-8


def test_sample_sde_denoises_at_the_last_grid_time():
    """denoise=True returns E[x₁ | X] at ts[-1] of the undenoised run (Tweedie, DIF.3).

    Derivation: derivations/09-diffusion.md (DIF.3)
    """
    from fm_ref.marginal import posterior_mean

    target, path = mixture_1d(), VP()
    pred, ts = Predictor.exact(target, path), np.linspace(0.1, 0.9, 9)
    x = np.random.default_rng(1).normal(size=(5, 1))
    plain = sample_sde(pred, x, ts, np.random.default_rng(2))
    denoised = sample_sde(pred, x, ts, np.random.default_rng(2), denoise=True)
    kept = sample_sde(pred, x, ts, np.random.default_rng(2), denoise=True, keep=True)
    want = posterior_mean(target, path, plain, 0.9)
    # the same closed form evaluated at the same state and time: a few ulps
    assert rel_err(denoised, want) <= CLOSED_RTOL
    plain_kept = sample_sde(pred, x, ts, np.random.default_rng(2), keep=True)
    assert np.array_equal(kept[:-1], plain_kept[:-1]) and rel_err(kept[-1], want) <= CLOSED_RTOL
    # the denoiser at ts[0] differs by O(1): the check can tell the two times apart
    assert rel_err(posterior_mean(target, path, plain, 0.1), want) > REJECT_MIN


def test_sample_ddim_noise_needs_a_generator_and_comes_from_it():
    """η > 0 draws from rng (two seeds differ) and needs a Generator up front; η = 0 ignores it (DIF.14).

    Derivation: derivations/09-diffusion.md (DIF.14)
    """
    pred, ts = Predictor.exact(mixture_1d(), Cosine()), np.linspace(0.1, 0.9, 5)
    x = np.random.default_rng(0).normal(size=(4, 1))
    for eta in (0.5, 1.0):
        a = sample_ddim(pred, x, ts, eta=eta, rng=np.random.default_rng(1))
        b = sample_ddim(pred, x, ts, eta=eta, rng=np.random.default_rng(2))
        assert rel_err(a, b) > REJECT_MIN
        # a single step ending at t = 1 (τ = 0 there) still needs the Generator that η > 0 asks for
        with pytest.raises(TypeError, match=r"^rng:"):
            sample_ddim(pred, x, [0.5, 1.0], eta=eta)
    det = [sample_ddim(pred, x, ts, eta=0.0, rng=np.random.default_rng(s)) for s in (1, 2)]
    assert np.array_equal(det[0], det[1])


def test_forward_kernel_allows_an_exactly_zero_variance():
    """Constant SNR (α = σ = 0.3): ς² = 0 exactly, a deterministic kernel x_s = x_t, not an error (DIF.12).

    Derivation: derivations/09-diffusion.md (DIF.12)
    """
    assert forward_kernel(_AlmostConstantSNR(0.0), 0.25, 0.75) == (1.0, 0.0)


# ---- mutation sample: the Predictor cache and repr, the time and grid checks ----

def test_from_model_cache_evaluates_once_per_point_and_tracks_shape():
    """Two kinds at one (x, t) cost one model call; a new x of another shape at the same t is re-evaluated."""
    mlp = MLP(2, (8,), "tanh")
    params = mlp.init(np.random.default_rng(11))
    calls = []

    def model(p, x, t):
        calls.append(np.shape(x))
        return mlp(p, x, t)

    path, rng = VP(), np.random.default_rng(12)
    pred = Predictor.from_model(model, params, path, "eps")
    fresh = Predictor.from_model(mlp, params, path, "eps")  # no shared cache
    x3, x5, t = rng.standard_normal((3, 2)), rng.standard_normal((5, 2)), 0.4
    pred(x3, t, "velocity")
    pred(x3, t, "x1")
    assert len(calls) == 1  # the cache served the second kind at the same (x, t)
    for x in (x3, x5, x3):
        for to in ("velocity", "x1"):
            # same arithmetic on the same inputs, cached or not: equal to rounding
            np.testing.assert_allclose(pred(x, t, to), fresh(x, t, to), rtol=1e-13, atol=1e-13)


def test_predictor_repr_names_description_and_path():
    path = CondOT()
    r = repr(Predictor.from_model(MLP(2, (4,)), MLP(2, (4,)).init(np.random.default_rng(0)), path, "eps"))
    assert isinstance(r, str) and "model predicting 'eps'" in r and repr(path) in r


def test_times_reject_s_above_one():
    with pytest.raises(ValueError, match="^s"):
        forward_kernel(VP(), 1.5, 1.0)


def test_check_grid_rejects_repeated_time():
    from fm_ref.diffusion.sde import check_grid
    with pytest.raises(ValueError, match="^grid"):
        check_grid(np.array([0.0, 0.5, 0.5, 1.0]), "grid")
    with pytest.raises(ValueError, match="^ts"):
        check_grid([0.0, 0.5, 0.5, 1.0])


# ---- mutation sample: Predictor.from_model with an array t, euler_maruyama's default ----

@pytest.mark.parametrize("to", ["velocity", "x1", "score"])
def test_predictor_from_model_array_time_is_convert(to):
    """With a per-point time array, from_model(kind='eps') asked for ``to`` is path.convert of the output."""
    path = CondOT()
    mlp = MLP(2, (6,))
    params = mlp.init(np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((4, 2))
    t = np.array([0.2, 0.4, 0.6, 0.8])
    got = Predictor.from_model(mlp, params, path, "eps")(x, t, to)
    expected = path.convert(mlp(params, x, t), x, t, "eps", to)
    # the same operations on the same inputs: equal to an ulp
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-14)


def test_euler_maruyama_default_returns_final_state():
    """keep defaults to False: the result is the state at ts[-1], shape (n, d), equal to keep=True's last."""
    x = np.random.default_rng(2).standard_normal((3, 2))
    ts = np.linspace(0.0, 1.0, 5)
    out = euler_maruyama(lambda y, t: -y, lambda t: 0.5, x, ts, np.random.default_rng(4))
    traj = euler_maruyama(lambda y, t: -y, lambda t: 0.5, x, ts, np.random.default_rng(4), keep=True)
    assert out.shape == (3, 2) and traj.shape == (5, 3, 2)
    # the same seed and operations: identical floats
    np.testing.assert_array_equal(out, traj[-1])


# ---- mutation sample seed 3: the velocity kind's coefficients at t = 0, t above 1 ----

def test_velocity_kind_coefficients_are_exactly_zero_and_one_at_every_time():
    """(DIF.6) A velocity prediction is its own velocity: (a_t, b_t) = (0, 1) exactly, with t's
    shape, at float and array times including both ends (t = 0 and t = 1).

    Derivation: derivations/09-diffusion.md (DIF.6)"""
    for path in (CondOT(), Cosine(), Polynomial(2.0)):
        a, b = velocity_coefficients(path, "velocity", 0.0)
        assert (a, b) == (0.0, 1.0)
        t = np.array([0.0, 0.25, 0.5, 1.0])
        a, b = velocity_coefficients(path, "velocity", t)
        assert a.shape == b.shape == (4,)
        np.testing.assert_array_equal(a, np.zeros(4))
        np.testing.assert_array_equal(b, np.ones(4))


def test_times_reject_t_above_one():
    """s < t ≤ 1: a target time above 1 raises naming t (s in range)."""
    with pytest.raises(ValueError, match="^t"):
        forward_kernel(CondOT(), 0.5, 1.5)
    with pytest.raises(ValueError, match="^t"):
        posterior_coefficients(CondOT(), 0.5, 1.0 + 1e-12)


def test_sampler_defaults_are_the_documented_values():
    """Calling with the defaults equals passing the documented values: ddim_step and
    sample_ddim η = 0 (DDIM, no Generator needed), keep = False; sample_sde g = 'reverse',
    denoise = False, keep = False. The same operations on the same draws: identical floats.

    Derivation: derivations/09-diffusion.md (DIF.14)"""
    path = Cosine()
    rng = np.random.default_rng(7)
    x_s, x0_hat, x1_hat = rng.normal(size=(3, 4, 2))
    np.testing.assert_array_equal(ddim_step(path, x_s, 0.3, 0.6, x0_hat, x1_hat),
                                  ddim_step(path, x_s, 0.3, 0.6, x0_hat, x1_hat, eta=0.0, rng=None))
    pred, ts = Predictor.exact(mixture_1d(), path), np.linspace(0.1, 0.9, 4)
    x = np.random.default_rng(0).normal(size=(3, 1))
    np.testing.assert_array_equal(sample_ddim(pred, x, ts), sample_ddim(pred, x, ts, eta=0.0, rng=None, keep=False))
    np.testing.assert_array_equal(sample_sde(pred, x, ts, np.random.default_rng(3)),
                                  sample_sde(pred, x, ts, np.random.default_rng(3), g=REVERSE, denoise=False,
                                             keep=False))
    assert REVERSE == "reverse"


@pytest.mark.parametrize("kind", KINDS)
def test_velocity_coefficients_each_read_off_convert(kind):
    """(DIF.6) velocity = a_t x + b_t f: a_t is ``convert`` of f = 0 at x = 1, b_t is ``convert``
    of f = 1 at x = 0, each coefficient on its own (a swap of the two shows), for every kind on
    three paths at float and array times.

    Derivation: derivations/09-diffusion.md (DIF.6)"""
    one, zero = np.ones((1, 1)), np.zeros((1, 1))
    for path in (CondOT(0.05), Cosine(), VP()):
        for t in (0.3, 0.7):
            a, b = velocity_coefficients(path, kind, t)
            # convert is written per kind from (CONV.1); the same few flops, rounding only
            assert a == pytest.approx(path.convert(zero, one, t, kind, "velocity")[0, 0], rel=CLOSED_RTOL, abs=1e-15)
            assert b == pytest.approx(path.convert(one, zero, t, kind, "velocity")[0, 0], rel=CLOSED_RTOL, abs=1e-15)
        ts = np.array([0.3, 0.7])
        a, b = velocity_coefficients(path, kind, ts)
        assert np.allclose(a, [velocity_coefficients(path, kind, t)[0] for t in ts], rtol=1e-15, atol=0)
        assert np.allclose(b, [velocity_coefficients(path, kind, t)[1] for t in ts], rtol=1e-15, atol=0)


def test_forward_kernel_clips_a_deficit_of_exactly_the_rounding_allowance():
    """(DIF.12) ς² = σ_s² − (α_s σ_t/α_t)² below 0 is clipped to 0 while −ς² ≤ 1e-12 σ_s² (the
    bound is inclusive) and raises beyond. A hand-built path with α_s = α_t (a = 1 exactly),
    σ_s = 0.7152557373046875 and σ_t = 0.7152557373050451, whose squares differ by exactly
    fl(1e-12 σ_s²) = 5.115907697472721e-13 (found by search; asserted below), puts ς² on the
    bound; the next float of σ_t puts it past.

    Derivation: derivations/09-diffusion.md (DIF.12)"""
    s_s, s_t = 0.7152557373046875, 0.7152557373050451
    assert s_s**2 - s_t**2 == -(1e-12 * s_s**2) == -5.115907697472721e-13

    def step_path(sigma_late):
        class Step(AffinePath):
            def _alpha(self, t):
                return 0.5 + 0.0 * t

            def _sigma(self, t):
                return anp.where(anp.asarray(t) < 0.5, s_s, sigma_late) + 0.0 * t

            def _d_alpha(self, t):
                return 0.0 * t

            def _d_sigma(self, t):
                return 0.0 * t
        return Step()

    assert forward_kernel(step_path(s_t), 0.25, 0.75) == (1.0, 0.0)
    with pytest.raises(ValueError, match="signal-to-noise ratio"):
        forward_kernel(step_path(np.nextafter(s_t, 1.0)), 0.25, 0.75)


def test_diffusion_coefficient_reads_a_0d_numeric_array_as_its_float():
    """(DIF.3) g(t) may return a 0-d float or int array (what NumPy expressions give), read as
    its float; a 1-d array or a 0-d boolean array is not a number and raises naming g.

    Derivation: derivations/09-diffusion.md (DIF.3)"""
    for value, want in ((np.array(0.5), 0.5), (np.array(2), 2.0), (np.float64(0.25), 0.25)):
        got = diffusion_coefficient(CondOT(), lambda t, v=value: v, 0.3)
        assert type(got) is float and got == want
    for value in (np.array([0.5]), np.array(True)):
        with pytest.raises(ValueError, match=r"^g:"):
            diffusion_coefficient(CondOT(), lambda t, v=value: v, 0.3)
