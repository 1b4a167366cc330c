"""L_FM and L_CFM, and Theorem 2: ∇θ L_FM = ∇θ L_CFM (derivations/04-flow-matching.md).

Routes: the losses by deterministic quadrature against the Monte Carlo estimators (5
standard errors); the gradient identity by quadrature (gap → 0 as nodes are added) and
by Monte Carlo on common random numbers (z-scores); the θ-free constant against its
closed form (FM.8). Each identity check is also shown to reject a wrong target.
"""
import numpy as np
import pytest
from autograd import grad
from hypothesis import given
from hypothesis import strategies as st

from fm_ref.distributions import Empirical, GaussianMixture, StandardNormal
from fm_ref.losses import (cfm_loss, cfm_loss_quadrature, cfm_quadrature_nodes, conditional_energy,
                           conditional_target, fm_loss, fm_loss_quadrature, fm_quadrature_nodes,
                           sample_training_batch)
from fm_ref.marginal import marginal_velocity
from fm_ref.nn import MLP
from fm_ref.paths import VP, CondOT, Cosine
from fm_ref.train import tree_flatten
from fm_ref.verify.foundation import (QUAD_GAP_D1, QUAD_GAP_D2, Z_BOUND, example_target,
                                      gradient_gap_quadrature, loss_gap_constant, mc_gradient_z)

from strategies import fewer, mixtures, paths, seeds

# Quadrature against Monte Carlo: the Monte Carlo error bound, 5 standard errors.
MC_Z = 5.0
# The hand-written backward pass against autograd: same operations, different order.
BACKPROP_RTOL = 1e-12


def _small_model(dim, seed, hidden=(16,)):
    model = MLP(dim, hidden)
    return model, model.init(np.random.default_rng(seed))


def _dropped_sigma_term(target, path):
    """A wrong marginal velocity: u_t without its σ'_t E[x₀|x] term."""
    from fm_ref.marginal import posterior_mean

    def velocity(x, t):
        return path.d_alpha_t(t)[:, None] * posterior_mean(target, path, x, t)

    return velocity


# ------------------------------------------------------------------ rules


@fewer(0.5)
@given(path=paths(), seed=seeds)
def test_conditional_target_is_the_time_derivative_of_the_path(path, seed):
    """u_t(x_t | x₁) = α'x₁ + σ'x₀ (PATH.4) against autograd's d/dt of sample (PATH.1)."""
    from autograd import elementwise_grad

    rng = np.random.default_rng(seed)
    t, x_0, x_1 = rng.uniform(0.02, 0.98, 4), rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    _, u = conditional_target(path, t, x_0, x_1)
    du = np.stack([elementwise_grad(lambda t_, i=i: path.sample(x_0, x_1, t_)[:, i])(t) for i in range(2)], axis=1)
    assert np.max(np.abs(u - du)) <= 1e-10 * np.max(np.abs(du))  # autograd tier (DESIGN.md)


@pytest.mark.parametrize("target", [example_target(dim=1, k=2), Empirical(np.array([[0.5], [-1.0]]))])
def test_quadrature_rules_integrate_moments(target):
    """The rules reproduce E[x₁] and E‖x_t‖² = σ² d + α² E‖x₁‖² (closed forms)."""
    path = CondOT(0.1)
    t, x_0, x_1, w = cfm_quadrature_nodes(path, target, n_t=4, n_x=64)
    # sums of ~10⁴ positive weights: pairwise-summation rounding ~1e-15, 1e-13 with room
    assert np.isclose(w.sum(), 1.0, rtol=1e-13, atol=0)
    assert np.allclose((w[:, None] * x_1).sum(0) / w.sum(), target.mean(), rtol=1e-12, atol=1e-13)
    tf, x, wf = fm_quadrature_nodes(path, target, n_t=4, n_x=64)
    second = (wf * np.sum(x**2, axis=1)).sum()
    ts, tw = np.polynomial.legendre.leggauss(4)
    ts, tw = 0.5 * (ts + 1), 0.5 * tw
    exact = np.sum(tw * (path.sigma_t(ts) ** 2 * target.dim + path.alpha_t(ts) ** 2 * target.second_moment()))
    assert abs(second - exact) <= 1e-12 * exact


@fewer(0.3)
@given(target=mixtures(dim=1, k_max=2, min_var=0.2), path=paths(sigma_min_positive=True), seed=seeds)
def test_quadrature_losses_match_monte_carlo(target, path, seed):
    """Both losses by quadrature lie within 5 standard errors of their Monte Carlo means."""
    model, params = _small_model(1, seed % 1000)
    rng = np.random.default_rng(seed)
    t, x_0, x_1 = sample_training_batch(target, 20000, rng, t_max=0.9)
    x_t, u_c = conditional_target(path, t, x_0, x_1)
    v = model(params, x_t, t)
    per_cfm = np.sum((v - u_c) ** 2, axis=1)
    per_fm = np.sum((v - marginal_velocity(target, path, x_t, t)) ** 2, axis=1)
    for per, quad in ((per_cfm, cfm_loss_quadrature(model, params, path, target, n_t=24, n_x=96, t_max=0.9)),
                      (per_fm, fm_loss_quadrature(model, params, path, target, n_t=24, n_x=96, t_max=0.9))):
        se = per.std(ddof=1) / np.sqrt(per.size)
        assert abs(per.mean() - quad) <= MC_Z * se
    # the estimators of the package agree with the per-sample means above: the same
    # numbers summed in another order (closed-form tier, 1e-12)
    assert np.isclose(cfm_loss(model, params, path, t, x_0, x_1), per_cfm.mean(), rtol=1e-12)
    assert np.isclose(fm_loss(model, params, path, target, t, x_0, x_1), per_fm.mean(), rtol=1e-12)


def test_conditional_energy_matches_monte_carlo():
    """E‖α'x₁ + σ'x₀‖² in closed form (FM.8) against the sample mean, 5 standard errors."""
    target, path = example_target(dim=2), Cosine()
    t, x_0, x_1 = sample_training_batch(target, 200000, np.random.default_rng(3))
    _, u = conditional_target(path, t, x_0, x_1)
    e = np.sum(u**2, axis=1)
    assert abs(e.mean() - conditional_energy(path, target, n_t=40)) <= MC_Z * e.std(ddof=1) / np.sqrt(e.size)


# ------------------------------------------------------------------ Theorem 2, quadrature


@fewer(0.4)
@given(target=mixtures(dim=1, k_max=2, min_var=0.2), path=paths(sigma_min_positive=True), seed=seeds)
def test_gradient_identity_by_quadrature_d1(target, path, seed):
    """‖∇L_CFM − ∇L_FM‖ / ‖∇L_CFM‖ ≤ 1e-9 in d = 1 (the issue's bound)."""
    model, params = _small_model(1, seed % 1000)
    gap = gradient_gap_quadrature(model, params, path, target, n_t=4, n_x=160, t_max=0.95)
    assert gap <= QUAD_GAP_D1


@fewer(0.3)
@given(seed=seeds, path=paths(), k=st.integers(1, 4))
def test_gradient_identity_by_quadrature_d2(seed, path, k):
    """≤ 1e-5 in d = 2 for a data set of k points (the exact sum over components)."""
    rng = np.random.default_rng(seed)
    target = Empirical(rng.normal(0.0, 1.5, (k, 2)))
    model, params = _small_model(2, seed % 1000)
    assert gradient_gap_quadrature(model, params, path, target, n_t=4, n_x=48, t_max=0.95) <= QUAD_GAP_D2


def test_gradient_gap_shrinks_as_nodes_are_added():
    """The gap falls with the node count (exponential convergence of the trapezoid rule)."""
    target, (model, params) = example_target(dim=1, k=2), _small_model(1, 0)
    gaps = [gradient_gap_quadrature(model, params, CondOT(0.01), target, n_t=4, n_x=n) for n in (16, 32, 64, 128)]
    assert all(b < a / 10 for a, b in zip(gaps, gaps[1:-1])), gaps
    assert gaps[-1] <= QUAD_GAP_D1


def test_quadrature_identity_rejects_a_wrong_marginal_velocity():
    """The same gap, with σ'E[x₀|x] dropped from u_t, is far above the tolerance."""
    target, (model, params) = example_target(dim=1, k=2), _small_model(1, 0)
    path = CondOT(0.01)
    gap = gradient_gap_quadrature(model, params, path, target, n_t=4, n_x=96,
                                  velocity=_dropped_sigma_term(target, path))
    assert gap > 1e3 * QUAD_GAP_D1


def test_loss_difference_is_a_constant_in_theta():
    """L_CFM(θ) − L_FM(θ) is the same at three θ and equals E‖u(x|x₁)‖² − E‖u(x)‖² (FM.3)."""
    target = example_target(dim=1, k=2)
    model = MLP(1, (16,))
    params = [model.init(np.random.default_rng(s), scale=2.0) for s in (1, 2, 3)]
    gaps, constant = loss_gap_constant(model, params, Cosine(), target, n_t=6, n_x=160, t_max=0.99)
    assert np.all(np.abs(gaps - constant) <= QUAD_GAP_D1 * abs(constant))
    assert constant > 0  # Jensen: E‖u(x|x₁)‖² ≥ E‖E[u(x|x₁)|x]‖²


def test_loss_difference_depends_on_theta_for_a_wrong_target():
    """With a wrong u_t the difference changes with θ: the constancy check can fail."""
    target, path = example_target(dim=1, k=2), Cosine()
    model = MLP(1, (16,))
    wrong = _dropped_sigma_term(target, path)
    diffs = []
    for s in (1, 2):
        p = model.init(np.random.default_rng(s), scale=2.0)
        diffs.append(cfm_loss_quadrature(model, p, path, target, n_t=6, n_x=96, t_max=0.99)
                     - fm_loss_quadrature(model, p, path, target, n_t=6, n_x=96, t_max=0.99, velocity=wrong))
    assert abs(diffs[0] - diffs[1]) > 1e3 * QUAD_GAP_D1 * abs(diffs[0])


# ------------------------------------------------------------------ Theorem 2, Monte Carlo


@fewer(0.25)
@given(target=mixtures(k_max=3), path=paths(sigma_min_positive=True), seed=seeds)
def test_gradient_identity_by_monte_carlo(target, path, seed):
    """Every coordinate of mean ∇θ(L_CFM − L_FM) is within 5 standard errors of zero.

    Common random numbers: both estimators see the same (t, x₀, x₁). t ≤ 0.95 because
    σ'_t² is not integrable at t = 1 for VP/LinearVP (infinite variance, (FM.7)).
    """
    model, params = _small_model(target.dim, seed % 1000, hidden=(6,))
    z = mc_gradient_z(model, params, path, target, np.random.default_rng(seed), n_batches=60, batch=50, t_max=0.95)
    assert np.max(z) <= Z_BOUND


def test_monte_carlo_identity_rejects_a_wrong_marginal_velocity():
    """The same z-test flags u_t with its σ' term dropped."""
    target, path = example_target(dim=2), CondOT(0.01)
    model, params = _small_model(2, 4, hidden=(6,))
    z = mc_gradient_z(model, params, path, target, np.random.default_rng(5), n_batches=60, batch=50,
                      velocity=_dropped_sigma_term(target, path))
    assert np.max(z) > 3 * Z_BOUND


# ------------------------------------------------------------------ fast backward pass


@pytest.mark.parametrize("activation", ["tanh", "softplus", "swish"])
def test_hand_written_backward_matches_autograd(activation):
    rng = np.random.default_rng(0)
    model = MLP(3, (7, 5), activation=activation, time_features=2)
    params = model.init(rng)
    x, t, y = rng.standard_normal((9, 3)), rng.uniform(size=9), rng.standard_normal((9, 3))
    loss, g = model.sq_error_and_grad(params, x, t, y)
    ref = grad(lambda p: np.sum((model(p, x, t) - y) ** 2) / 9)(params)
    assert abs(loss - np.sum((model(params, x, t) - y) ** 2) / 9) <= BACKPROP_RTOL * loss
    a, b = tree_flatten(g), tree_flatten(ref)
    assert np.max(np.abs(a - b)) <= BACKPROP_RTOL * np.max(np.abs(b))


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_backward_in_reused_work_arrays_keeps_every_result(activation):
    """``_sq_error_and_grad`` writes its hidden arrays into per-thread buffers reused from
    call to call: its results are the fresh-array pass's bit for bit (and autograd's to
    rounding), a later call leaves earlier gradients as they were, a change of batch size
    gets new buffers, and two threads at once each get their own."""
    import threading

    rng = np.random.default_rng(3)
    model = MLP(2, (6, 4), activation=activation, time_features=1)
    params = model.init(rng)
    batches = [(rng.standard_normal((n, 2)), rng.uniform(size=n), rng.standard_normal((n, 2))) for n in (9, 9, 4, 9)]

    def fresh(x, t, y):  # the same pass with fresh arrays
        out, cache = model._forward_cached(params, x, t)
        grads, _ = model._vjp(params, cache, (2.0 / len(x)) * (out - y), x_grad=False)
        return float(np.sum((out - y) ** 2) / len(x)), tree_flatten(grads)

    work = model._work_arrays(9)
    assert model._work_arrays(9) is work and model._work_arrays(4) is not work  # kept while n stays
    x, t, y = batches[0]
    model._sq_error_and_grad(params, x, t, y)
    last_hidden = model._forward_cached(params, x, t)[1][0][-1]
    assert np.array_equal(model._work_arrays(9)["hidden"][-1], last_hidden)  # the pass wrote there
    results = [model._sq_error_and_grad(params, x, t, y) for x, t, y in batches]
    kept = [tree_flatten(g) for _, g in results]
    for (loss, g), flat, (x, t, y) in zip(results, kept, batches):
        want_loss, want = fresh(x, t, y)
        assert loss == want_loss and np.array_equal(tree_flatten(g), want) and np.array_equal(flat, want)
        ref = tree_flatten(grad(lambda p: np.sum((model(p, x, t) - y) ** 2) / len(x))(params))
        assert np.max(np.abs(want - ref)) <= BACKPROP_RTOL * np.max(np.abs(ref))
    seen = {}

    def run(k):
        x, t, y = batches[k]
        seen[k] = [tree_flatten(model._sq_error_and_grad(params, x, t, y)[1]) for _ in range(200)]

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for k in (0, 1):
        assert all(np.array_equal(g, kept[k]) for g in seen[k])


# ------------------------------------------------------------------ bad input


def test_bad_input_names_the_argument():
    model, params = _small_model(2, 0)
    path, target = CondOT(), example_target(dim=2)
    t, x_0, x_1 = np.full(3, 0.5), np.zeros((3, 2)), np.ones((3, 2))
    with pytest.raises(ValueError, match="x_1"):
        cfm_loss(model, params, path, t, x_0, np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"^t:"):
        cfm_loss(model, params, path, np.full(4, 0.5), x_0, x_1)
    with pytest.raises(ValueError, match=r"^t:"):
        cfm_loss(model, params, path, np.full(3, 1.5), x_0, x_1)
    with pytest.raises(TypeError, match="path"):
        cfm_loss(model, params, "condot", t, x_0, x_1)
    with pytest.raises(TypeError, match="model"):
        cfm_loss(None, params, path, t, x_0, x_1)
    with pytest.raises(TypeError, match="target"):
        fm_loss(model, params, path, StandardNormal, t, x_0, x_1)
    with pytest.raises(ValueError, match="x_0"):
        fm_loss(model, params, path, target, t, np.full((3, 2), np.nan), x_1)
    with pytest.raises(ValueError, match="n_x"):
        cfm_loss_quadrature(model, params, path, target, n_x=1)
    with pytest.raises(ValueError, match="n_x"):
        cfm_loss_quadrature(model, params, path, GaussianMixture(np.zeros((1, 2)), np.ones(1)), n_x=400)
    with pytest.raises(ValueError, match="t_max"):
        fm_loss_quadrature(model, params, path, target, t_max=0.0)
    with pytest.raises(ValueError, match="t_max"):  # σ'² of VP is not integrable up to t = 1
        fm_loss_quadrature(model, params, VP(), target, n_t=2, n_x=12)
    with pytest.raises(ValueError, match="t_max"):
        conditional_energy(CondOT(), target, t_min=0.5, t_max=0.5)
    with pytest.raises(TypeError, match="rng"):
        sample_training_batch(target, 3, 0)
    with pytest.raises(TypeError, match="velocity"):
        fm_loss(model, params, path, target, t, x_0, x_1, velocity=3)
    # outputs of the wrong shape would broadcast into a wrong number: refused by name
    with pytest.raises(ValueError, match=r"^model:"):
        cfm_loss(lambda p, x, s: x[:, :1], params, path, t, x_0, x_1)
    with pytest.raises(ValueError, match=r"^velocity:"):
        fm_loss(model, params, path, target, t, x_0, x_1, velocity=lambda x, s: x[:, 0])
    with pytest.raises(ValueError, match=r"^n_x:"):  # below 12 the rule's weights are off by > 2e-4
        cfm_loss_quadrature(model, params, path, target, n_x=8)


def test_the_fm_rule_is_sized_by_its_own_node_count():
    """The FM rule has k·n_xᵈ nodes per t node, the CFM rule n_xᵈ·k·n_xᵈ: a 3-D FM
    quadrature that the CFM count would refuse runs, and its weights sum to the t-range
    (to the trapezoid rule's error, < 1e-15 at n_x = 24)."""
    from fm_ref.losses import fm_quadrature_nodes

    target = GaussianMixture(np.zeros((2, 3)), np.ones(2))
    t, x, w = fm_quadrature_nodes(CondOT(0.01), target, n_t=2, n_x=24, t_max=0.5)
    assert x.shape == (2 * 2 * 24**3, 3) and abs(w.sum() - 0.5) <= 1e-14
    with pytest.raises(ValueError, match=r"^n_x:"):  # the CFM rule at the same size: 1.6e9 nodes
        cfm_quadrature_nodes(CondOT(0.01), target, n_t=2, n_x=24, t_max=0.5)


# -------------------------------------------------- time ranges off [0, 1] and batched forms

#: Gauss–Legendre with n_t nodes integrates polynomials of degree < 2 n_t exactly; the
#: x-rules at n_x = 48 are exact to rounding (error < 1e-15 from 24 nodes): sums of ~10⁴
#: weights leave ~1e-15 relative, 1e-12 with room.
RULE_RTOL = 1e-12


@pytest.mark.parametrize("t_min, t_max", [(0.3, 0.8), (0.0, 0.55)])
def test_quadrature_rules_on_a_sub_interval_integrate_polynomials_in_t(t_min, t_max):
    """Nodes lie in [t_min, t_max]; the weights integrate t² (Gauss–Legendre exact for it)
    times E[1], E[x₀] = 0, E[x₀²] = 1 and E[x₁] = mean over the sub-interval."""
    target = GaussianMixture(np.array([[1.0, -0.5], [-2.0, 0.3]]), np.array([[[0.5, 0.1], [0.1, 0.3]], np.zeros((2, 2))]),
                             np.array([0.7, 0.3]))
    t, x_0, x_1, w = cfm_quadrature_nodes(CondOT(), target, n_t=3, n_x=24, t_min=t_min, t_max=t_max)
    assert np.all((t > t_min) & (t < t_max))
    length, t2 = t_max - t_min, (t_max**3 - t_min**3) / 3
    assert np.isclose(w.sum(), length, rtol=RULE_RTOL)
    assert np.isclose(np.sum(w * t**2), t2, rtol=RULE_RTOL)
    np.testing.assert_allclose(w @ x_0, 0.0, atol=1e-14)
    np.testing.assert_allclose(w @ x_0**2, length, rtol=RULE_RTOL)
    np.testing.assert_allclose(w @ x_1, length * target.mean(), rtol=RULE_RTOL)
    second = target.covariance() + np.outer(target.mean(), target.mean())
    np.testing.assert_allclose((w * x_1.T) @ x_1, length * second, rtol=RULE_RTOL)
    path = VP()
    tf, x, wf = fm_quadrature_nodes(path, target, n_t=3, n_x=24, t_min=t_min, t_max=min(t_max, 0.99))
    assert np.all((tf > t_min) & (tf < t_max))
    # E_{p_t}[x] = α_t E[x₁]: the per-t mean by grouping nodes
    for tk in np.unique(tf):
        sel = tf == tk
        np.testing.assert_allclose((wf[sel] @ x[sel]) / wf[sel].sum(), path.alpha_t(tk) * target.mean(),
                                   rtol=RULE_RTOL, atol=1e-14)


def test_losses_on_a_sub_interval_obey_the_decomposition():
    """On t ∈ [0.3, 0.8]: L_FM(0) = E‖u_t(x)‖², and with v = u_t (the marginal velocity)
    L_FM = 0 and L_CFM = E‖u_t(x|x₁)‖² − E‖u_t(x)‖² (FM.3); so L_CFM(0) =
    conditional_energy (FM.8, closed form in x) and L_CFM(u_t) + L_FM(0) = conditional_energy.
    Each loss is divided by the interval's length 0.5, so these are averages over t."""
    target, path = example_target(dim=1, k=2), Cosine()
    zero = lambda p, x, t: 0.0 * x  # noqa: E731
    oracle = lambda p, x, t: marginal_velocity(target, path, x, t)  # noqa: E731
    kw = dict(n_t=6, n_x=48, t_min=0.3, t_max=0.8)
    energy = conditional_energy(path, target, n_t=6, t_min=0.3, t_max=0.8)
    assert np.isclose(cfm_loss_quadrature(zero, None, path, target, **kw), energy, rtol=RULE_RTOL)
    assert fm_loss_quadrature(oracle, None, path, target, **kw) <= 1e-25
    fm0 = fm_loss_quadrature(zero, None, path, target, **kw)
    assert np.isclose(cfm_loss_quadrature(oracle, None, path, target, **kw) + fm0, energy, rtol=1e-10)
    # the velocity= argument replaces the closed-form target: with v = 0 as its target,
    # L_FM(u) = E‖u_t(x)‖² again
    assert np.isclose(fm_loss_quadrature(oracle, None, path, target, velocity=lambda x, t: 0.0 * x, **kw), fm0,
                      rtol=RULE_RTOL)


@pytest.mark.parametrize("t_min, t_max", [(0.3, 0.8), (0.6, 0.95)])
def test_conditional_energy_on_a_sub_interval_matches_scipy_quad(t_min, t_max):
    """(1/(t_max − t_min)) ∫ α'² E‖x₁‖² + σ'² d dt by adaptive quadrature, with α', σ' by
    central differences of α, σ (step 1e-6, error ~1e-10 relative): an independent route."""
    from scipy.integrate import quad

    target, path = example_target(dim=2), VP()
    h = 1e-6
    da = lambda t: (path.alpha_t(t + h) - path.alpha_t(t - h)) / (2 * h)  # noqa: E731
    ds = lambda t: (path.sigma_t(t + h) - path.sigma_t(t - h)) / (2 * h)  # noqa: E731
    integrand = lambda t: da(t) ** 2 * target.second_moment() + ds(t) ** 2 * 2  # noqa: E731
    want = quad(integrand, t_min, t_max, epsabs=0, epsrel=1e-12)[0] / (t_max - t_min)
    got = conditional_energy(path, target, n_t=40, t_min=t_min, t_max=t_max)
    assert np.isclose(got, want, rtol=1e-8)  # central differences (1e-10) and 40 GL nodes


def test_monte_carlo_losses_take_a_float_time_and_match_the_batched_form():
    """cfm_loss and fm_loss accept t as a float (documented), equal to the (n,) array of it;
    sample_training_batch draws t in [t_min, t_max) with the uniform mean and x₁ from the target."""
    target, path = example_target(dim=2), CondOT(0.1)
    model, params = _small_model(2, 3)
    rng = np.random.default_rng(0)
    x_0, x_1 = rng.standard_normal((5, 2)), target.sample(5, rng)
    for loss in (lambda t: cfm_loss(model, params, path, t, x_0, x_1),
                 lambda t: fm_loss(model, params, path, target, t, x_0, x_1)):
        assert np.isclose(loss(0.35), loss(np.full(5, 0.35)), rtol=1e-15)
    n = 20_000
    t, x0, x1 = sample_training_batch(target, n, np.random.default_rng(1), t_min=0.2, t_max=0.6)
    assert t.shape == (n,) and x0.shape == x1.shape == (n, 2)
    assert 0.2 <= t.min() and t.max() < 0.6
    assert abs(t.mean() - 0.4) <= 5 * 0.4 / np.sqrt(12 * n)
    assert np.all(np.abs(x0.mean(0)) <= 5 / np.sqrt(n))
    assert np.all(np.abs(x1.mean(0) - target.mean()) <= 5 * np.sqrt(np.diag(target.covariance()) / n))


def test_quadrature_defaults_are_the_documented_rule():
    """Defaults n_t = 16, n_x = 12 on [0, 1] (documented): 16 distinct Gauss–Legendre times
    (the roots of P₁₆ mapped to [0, 1]) and 12^d x-nodes per component; the default losses
    and conditional_energy equal the explicit (16, 12) calls."""
    target, path = example_target(dim=2, k=2), CondOT(0.1)
    roots = np.sort(0.5 * (np.polynomial.legendre.Legendre.basis(16).roots() + 1.0))
    t, x, w = fm_quadrature_nodes(path, target)
    assert len(t) == 16 * 2 * 12**2
    np.testing.assert_allclose(np.unique(t), roots, rtol=1e-13)
    target = example_target(dim=1, k=2)  # d = 1 keeps the CFM rule small (16·2·12·12 nodes)
    t, x_0, x_1, w = cfm_quadrature_nodes(path, target)
    assert len(t) == 16 * 2 * 12 * 12
    np.testing.assert_allclose(np.unique(t), roots, rtol=1e-13)
    model, params = _small_model(1, 1)
    explicit = dict(n_t=16, n_x=12, t_min=0.0, t_max=1.0)
    assert cfm_loss_quadrature(model, params, path, target) == cfm_loss_quadrature(model, params, path, target,
                                                                                    **explicit)
    assert fm_loss_quadrature(model, params, path, target) == fm_loss_quadrature(model, params, path, target,
                                                                                  **explicit)
    assert conditional_energy(path, target) == conditional_energy(path, target, 16, 0.0, 1.0)


def test_the_fm_rule_refuses_more_than_the_node_cap():
    """k·n_xᵈ·n_t above the 4·10⁶ cap (2·80³·4 = 4.1·10⁶ in d = 3) is refused by name
    before any node is built; just below it (n_t = 3, 3.1·10⁶) the count check passes."""
    from fm_ref.losses import _validate_quadrature

    target = GaussianMixture(np.zeros((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match=r"^n_x:"):
        fm_quadrature_nodes(CondOT(0.01), target, n_t=4, n_x=80, t_max=0.5)
    assert _validate_quadrature(CondOT(0.01), target, 3, 80, 0.0, 0.5, "fm") == (3, 80, 0.0, 0.5)
