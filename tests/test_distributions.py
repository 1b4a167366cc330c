"""Distributions and toy data sets, each checked by an independent route.

- GaussianMixture.log_prob against scipy (a logsumexp of weighted multivariate normal pdfs);
- sample moments against .mean() / .covariance() / .second_moment() within 5 standard errors,
  and those against the law of total covariance written out here;
- the three ways of giving covariances agree; Empirical has no density; StandardNormal;
- the toy data sets: shape, dtype, determinism, and the structure each definition implies;
- bad input raises naming the argument.

Derivation: derivations/03-mixture-marginals.md (MIX.1)
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, norm

from fm_ref.distributions import TOY_DATASETS, Empirical, GaussianMixture, StandardNormal, make_toy
from strategies import dims, fewer, mixtures, points, seeds

# log q two ways (eigendecomposition vs scipy's): a few ulps of the terms, i.e. of max(1, |log q|).
LOGPDF_RTOL = 1e-12
# Moments two ways (Σ w (Σ + μμᵀ) − mmᵀ vs the law of total covariance): a few roundings.
CLOSED_FORM_RTOL = 1e-12
# Monte Carlo: a z-bound of 5 standard errors (P ≈ 6e-7 per comparison for a Gaussian mean).
Z_MAX = 5.0
N_MC = 20000
# Rounding of a mean of N_MC floats (pairwise summation: ~log2(N)·ε relative), with room.
SUM_RTOL = 1e-13




def assert_within_z(estimate, expected, standard_error):
    """|estimate − expected| ≤ Z_MAX standard errors, the error floored at the rounding of a mean
    (a point mass has standard error 0 but its sample mean still rounds)."""
    floor = SUM_RTOL * np.maximum(1.0, np.abs(expected))
    z = np.abs(np.asarray(estimate) - expected) / (np.asarray(standard_error) + floor)
    assert np.all(z <= Z_MAX), f"z-scores {z}"


# ------------------------------------------------------------ GaussianMixture


@given(mixtures(allow_empirical=False), st.data())
def test_log_prob_matches_scipy(q, data):
    x = data.draw(points(q.dim))
    comps = [np.log(w) + multivariate_normal(m, c).logpdf(x).reshape(-1)
             for w, m, c in zip(q.weights, q.means, q.covs)]
    want = logsumexp(np.stack(comps, axis=1), axis=1)
    got = q.log_prob(x)
    assert got.shape == (x.shape[0],) and got.dtype == np.float64
    assert np.all(np.abs(got - want) <= LOGPDF_RTOL * np.maximum(1.0, np.abs(want)))


def test_log_prob_check_rejects_a_wrong_density():
    """A mixture read with its weights swapped is not the scipy density."""
    q = GaussianMixture([[0.0], [3.0]], [1.0, 0.5], [0.2, 0.8])
    swapped = GaussianMixture([[0.0], [3.0]], [1.0, 0.5], [0.8, 0.2])
    x = np.array([[0.5]])
    want = logsumexp([np.log(0.2) + norm.logpdf(0.5, 0, 1), np.log(0.8) + norm.logpdf(0.5, 3, np.sqrt(0.5))])
    assert abs(q.log_prob(x)[0] - want) <= LOGPDF_RTOL * abs(want)
    assert abs(swapped.log_prob(x)[0] - want) > 1e-3


def total_covariance(q):
    """E[x] and Cov[x] = Σ_k w_k Σ_k + Σ_k w_k (μ_k − m)(μ_k − m)ᵀ (law of total covariance)."""
    m = sum(w * mu for w, mu in zip(q.weights, q.means))
    within = sum(w * c for w, c in zip(q.weights, q.covs))
    between = sum(w * np.outer(mu - m, mu - m) for w, mu in zip(q.weights, q.means))
    return m, within + between


@given(mixtures())
def test_moments_match_the_law_of_total_covariance(q):
    m, cov = total_covariance(q)
    scale = max(1.0, float(np.max(np.abs(cov))), float(np.max(np.abs(m))) ** 2)
    assert np.max(np.abs(q.mean() - m)) <= CLOSED_FORM_RTOL * scale
    assert np.max(np.abs(q.covariance() - cov)) <= CLOSED_FORM_RTOL * scale
    assert abs(q.second_moment() - (np.trace(cov) + m @ m)) <= CLOSED_FORM_RTOL * scale * q.dim


@fewer(0.5)
@given(mixtures(), seeds)
def test_sample_moments_match_within_five_standard_errors(q, seed):
    x = q.sample(N_MC, np.random.default_rng(seed))
    assert x.shape == (N_MC, q.dim) and x.dtype == np.float64 and np.all(np.isfinite(x))
    m, cov = q.mean(), q.covariance()
    assert_within_z(x.mean(axis=0), m, np.sqrt(np.diag(cov) / N_MC))
    centred = x - m
    prods = centred[:, :, None] * centred[:, None, :]  # unbiased for Cov with the true mean
    assert_within_z(prods.mean(axis=0), cov, prods.std(axis=0) / np.sqrt(N_MC))
    sq = np.sum(x**2, axis=1)
    assert_within_z(sq.mean(), q.second_moment(), sq.std() / np.sqrt(N_MC))


def test_moment_check_rejects_a_wrong_covariance():
    q = GaussianMixture([[0.0, 0.0], [2.0, 0.0]], [[1.0, 0.1], [0.5, 0.5]])
    x = q.sample(N_MC, np.random.default_rng(1))
    centred = x - q.mean()
    prods = centred[:, :, None] * centred[:, None, :]
    wrong = sum(w * c for w, c in zip(q.weights, q.covs))  # the between-component term dropped
    z = np.abs(prods.mean(axis=0) - wrong) / (prods.std(axis=0) / np.sqrt(N_MC))
    assert np.max(z) > 10 * Z_MAX


@given(dims, st.integers(1, 3), seeds)
def test_isotropic_diagonal_and_full_covariances_agree(d, k, seed):
    rng = np.random.default_rng(seed)
    means, var, x = rng.normal(0, 1.5, (k, d)), rng.uniform(0.05, 2.0, k), rng.normal(0, 2, (4, d))
    forms = [var, np.repeat(var[:, None], d, axis=1), var[:, None, None] * np.eye(d)]
    mixes = [GaussianMixture(means, c) for c in forms]
    for q in mixes[1:]:
        assert np.array_equal(q.covs, mixes[0].covs)
        assert np.all(np.abs(q.log_prob(x) - mixes[0].log_prob(x)) <= LOGPDF_RTOL * np.abs(mixes[0].log_prob(x)))
    diag = rng.uniform(0.05, 2.0, (k, d))
    a, b = GaussianMixture(means, diag), GaussianMixture(means, diag[:, :, None] * np.eye(d))
    assert np.all(np.abs(a.log_prob(x) - b.log_prob(x)) <= LOGPDF_RTOL * np.abs(b.log_prob(x)))


def test_a_singular_component_has_no_density():
    q = GaussianMixture([[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"^covs:.*singular"):
        q.log_prob(np.zeros((1, 2)))


def test_small_variances_are_kept_exactly_and_each_covariance_has_its_own_scale():
    """Diagonal input (and a full matrix that is exactly diagonal) keeps its variances as
    they are: 1e-13 next to 1e4 is a density, not a point mass. A full, non-diagonal Σ_k is
    cut off on its own scale, so a component of size 1e-13 next to one of size 1e4 keeps
    its eigenvalues. Both against scipy (an independent route)."""
    q = GaussianMixture([[0.0], [1.0]], [1e4, 1e-13], [0.5, 0.5])
    assert q.eigvals[1, 0] == 1e-13
    want = logsumexp([norm(0.0, 1e2).logpdf(1.0), norm(1.0, np.sqrt(1e-13)).logpdf(1.0)]) + np.log(0.5)
    assert abs(q.log_prob(np.array([[1.0]]))[0] - want) <= LOGPDF_RTOL * abs(want)
    a = GaussianMixture([[0.0, 0.0]], [[1.0, 1e-15]])
    b = GaussianMixture([[0.0, 0.0]], np.diag([1.0, 1e-15])[None])
    x = np.array([[0.3, 2e-8]])
    assert a.log_prob(x)[0] == b.log_prob(x)[0]
    want = norm(0.0, 1.0).logpdf(0.3) + norm(0.0, np.sqrt(1e-15)).logpdf(2e-8)  # independent coordinates
    assert abs(a.log_prob(x)[0] - want) <= LOGPDF_RTOL * abs(want)
    small = 1e-13 * np.array([[1.0, 0.5], [0.5, 1.0]])
    big = 1e4 * np.array([[1.0, 0.3], [0.3, 2.0]])
    q = GaussianMixture([[0.0, 0.0], [5.0, 5.0]], np.stack([small, big]))
    assert np.all(q.eigvals[0] > 0)
    y = np.array([[1e-7, -2e-7]])
    want = logsumexp([multivariate_normal([0, 0], small).logpdf(y), multivariate_normal([5, 5], big).logpdf(y)]) \
        + np.log(0.5)
    # scipy factors each Σ_k by its own eigh: both routes carry ~ε·cond(Σ_k) = 3ε relative
    # per component, amplified by the Mahalanobis term (~1e0 here); 1e-9 is far above that
    # and far below the error of a zeroed eigenvalue (the density would not exist)
    assert abs(q.log_prob(y)[0] - want) <= 1e-9 * abs(want)


def test_covariance_checks_are_relative_to_each_component():
    """A negative variance, a tiny asymmetric matrix and a tiny indefinite one are refused
    whatever their absolute size (an absolute tolerance let all three through)."""
    for covs in ([[1e-12, -5e-11]], [[[1e-12, 5e-11], [0.0, 1e-12]]], [[[1e-12, 5e-12], [5e-12, 1e-12]]]):
        with pytest.raises(ValueError, match=r"^covs:"):
            GaussianMixture([[0.0, 0.0]], covs)


def test_a_point_too_far_to_score_raises_by_name():
    """Past |x| ~ 1e154 σ the squared distance overflows; the answer would be −inf and NaN
    scores, so it raises, naming x."""
    from fm_ref.marginal import marginal_score
    from fm_ref.paths import CondOT

    q = GaussianMixture([[0.0, 0.0]], [1.0])
    with pytest.raises(ValueError, match=r"^x:.*overflows"):
        marginal_score(q, CondOT(), np.array([[1e160, 0.0]]), 0.5)


def test_float32_input_is_converted_to_float64():
    q = GaussianMixture(np.zeros((1, 2), np.float32), np.ones(1, np.float32), np.ones(1, np.float32))
    assert q.means.dtype == q.covs.dtype == q.weights.dtype == np.float64
    assert q.log_prob(np.zeros((1, 2), np.float32)).dtype == np.float64


# ------------------------------------------------------------ Empirical, StandardNormal


@fewer(0.5)
@given(st.integers(1, 4), dims, seeds)
def test_empirical_samples_its_points_with_their_weights(k, d, seed):
    rng = np.random.default_rng(seed)
    pts = rng.normal(0, 1, (k, d))
    w = rng.uniform(0.2, 1.0, k)
    w = w / w.sum()
    data = Empirical(pts, w)
    x = data.sample(N_MC, rng)
    match = np.all(x[:, None, :] == pts[None, :, :], axis=2)  # exactly the points, nothing else
    assert np.all(match.sum(axis=1) >= 1)
    freq = np.bincount(np.argmax(match, axis=1), minlength=k) / N_MC
    assert_within_z(freq, w, np.sqrt(w * (1 - w) / N_MC))
    # moments: the weighted mean and the biased weighted covariance of the points (numpy's route)
    assert np.max(np.abs(data.mean() - np.average(pts, axis=0, weights=w))) <= CLOSED_FORM_RTOL * 10
    want_cov = np.atleast_2d(np.cov(pts.T, aweights=w, bias=True))
    assert np.max(np.abs(data.covariance() - want_cov)) <= CLOSED_FORM_RTOL * 10


def test_empirical_has_no_density():
    with pytest.raises(ValueError, match="density"):
        Empirical([[0.0, 1.0]]).log_prob(np.zeros((1, 2)))


@given(dims, st.data())
def test_standard_normal_log_prob_matches_scipy(d, data):
    x = data.draw(points(d))
    p = StandardNormal(d)
    want = norm.logpdf(x).sum(axis=1)
    assert np.all(np.abs(p.log_prob(x) - want) <= LOGPDF_RTOL * np.maximum(1.0, np.abs(want)))
    assert np.all(np.abs(GaussianMixture(np.zeros((1, d)), [1.0]).log_prob(x) - want)
                  <= LOGPDF_RTOL * np.maximum(1.0, np.abs(want)))
    assert np.array_equal(p.mean(), np.zeros(d)) and np.array_equal(p.covariance(), np.eye(d))
    assert p.second_moment() == d


@fewer(0.25)
@given(dims, seeds)
def test_standard_normal_samples_have_zero_mean_unit_covariance(d, seed):
    x = StandardNormal(d).sample(N_MC, np.random.default_rng(seed))
    assert x.shape == (N_MC, d) and x.dtype == np.float64
    assert_within_z(x.mean(axis=0), 0.0, np.sqrt(1.0 / N_MC))
    prods = x[:, :, None] * x[:, None, :]
    assert_within_z(prods.mean(axis=0), np.eye(d), prods.std(axis=0) / np.sqrt(N_MC))


def test_sampling_is_reproducible_from_the_generator():
    q = GaussianMixture([[0.0, 0.0], [2.0, 1.0]], [[1.0, 0.3], [0.2, 0.2]], [0.4, 0.6])
    a, b = q.sample(50, np.random.default_rng(5)), q.sample(50, np.random.default_rng(5))
    assert np.array_equal(a, b) and not np.array_equal(a, q.sample(50, np.random.default_rng(6)))


# ------------------------------------------------------------------ toy data sets

N_TOY = 4000


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_sets_have_the_contracted_shape_and_are_reproducible(name):
    x = make_toy(name, N_TOY, np.random.default_rng(0))
    assert x.shape == (N_TOY, 2) and x.dtype == np.float64 and np.all(np.isfinite(x))
    assert np.array_equal(x, make_toy(name, N_TOY, np.random.default_rng(0)))
    assert not np.any(np.all(x == make_toy(name, N_TOY, np.random.default_rng(1)), axis=1))
    assert np.all(np.abs(x) <= 5.0)  # "roughly in [-4, 4]²": every point within [-5, 5]²
    assert np.max(np.abs(x)) >= 1.0  # and not collapsed
    assert make_toy(name, 1, np.random.default_rng(0)).shape == (1, 2)


def test_eight_gaussians_are_at_radius_two_with_std_point_two():
    x = make_toy("8gaussians", N_TOY, np.random.default_rng(2))
    angles = np.arange(8) * np.pi / 4
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    d2 = np.min(np.sum((x[:, None, :] - centres[None]) ** 2, axis=2), axis=1) / 0.2**2
    assert_within_z(d2.mean(), 2.0, 2.0 / np.sqrt(N_TOY))  # χ²₂: mean 2, std 2
    nearest = np.argmin(np.sum((x[:, None, :] - centres[None]) ** 2, axis=2), axis=1)
    assert_within_z(np.bincount(nearest, minlength=8) / N_TOY, 1 / 8, np.sqrt(7 / 64 / N_TOY))


def test_checkerboard_fills_the_eight_dark_squares_uniformly():
    x = make_toy("checkerboard", N_TOY, np.random.default_rng(3))
    assert np.all(np.abs(x) <= 2.0)
    col, row = np.floor(x[:, 0] + 2).astype(int), np.floor(x[:, 1] + 2).astype(int)
    assert np.all((col + row) % 2 == 0)  # one colour of the 4×4 board only
    counts = np.bincount(4 * row + col, minlength=16)[((np.arange(16) // 4 + np.arange(16) % 4) % 2) == 0]
    assert_within_z(counts / N_TOY, 1 / 8, np.sqrt(7 / 64 / N_TOY))


def test_circles_have_radii_one_and_two():
    r = np.linalg.norm(make_toy("circles", N_TOY, np.random.default_rng(4)), axis=1)
    outer = r > 1.5
    assert_within_z(outer.mean(), 0.5, 0.5 / np.sqrt(N_TOY))
    assert np.max(np.abs(r - np.where(outer, 2.0, 1.0))) < 0.08 * 5.5


@pytest.mark.parametrize("name", ["moons", "spirals"])
def test_moons_and_spirals_are_centred(name):
    x = make_toy(name, N_TOY, np.random.default_rng(5))
    assert_within_z(x.mean(axis=0), 0.0, x.std(axis=0) / np.sqrt(N_TOY))


def test_toy_check_rejects_an_off_centre_set():
    x = make_toy("moons", N_TOY, np.random.default_rng(5)) + 0.1
    z = np.abs(x.mean(axis=0)) / (x.std(axis=0) / np.sqrt(N_TOY))
    assert np.max(z) > Z_MAX


def test_toy_bad_input_raises_naming_the_argument():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="^name: "):
        make_toy("swiss_roll", 10, rng)
    with pytest.raises(ValueError, match="^n: "):
        make_toy("moons", 0, rng)
    with pytest.raises(TypeError, match="^n: "):
        make_toy("moons", 10.0, rng)
    with pytest.raises(TypeError, match="^n: "):
        make_toy("moons", True, rng)
    for bad in (0, None, np.random.RandomState(0)):
        with pytest.raises(TypeError, match="^rng: "):
            make_toy("moons", 10, bad)


# ------------------------------------------------------------------------ errors

MEANS = np.array([[0.0, 0.0], [1.0, 1.0]])


@pytest.mark.parametrize("covs", [
    np.array([[[1.0, 0.5], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]),  # not symmetric
    np.array([[[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]]),  # eigenvalue −1
    np.array([1.0, -0.1]), np.array([[1.0, 1.0], [1.0, -1e-3]]),  # negative variances
    np.ones((2, 3)), np.ones((3,)), np.ones((2, 2, 3)), np.ones((1, 2, 2)), np.ones((2, 2, 2, 1)),  # shapes
    np.array([1.0, np.nan]), np.array([1.0, np.inf]),
], ids=["asymmetric", "not_psd", "neg_iso", "neg_diag", "shape_k_3", "shape_3", "shape_k_2_3",
        "shape_1_2_2", "shape_4d", "nan", "inf"])
def test_bad_covariances_raise_naming_covs(covs):
    with pytest.raises(ValueError, match="^covs: "):
        GaussianMixture(MEANS, covs)


@pytest.mark.parametrize("weights", [[-0.1, 1.1], [0.5, 0.6], [0.3, 0.3], [1.0], [0.5, 0.25, 0.25],
                                     [[0.5, 0.5]], [0.5, np.nan], [np.inf, 0.5]])
def test_bad_weights_raise_naming_weights(weights):
    with pytest.raises(ValueError, match="^weights: "):
        GaussianMixture(MEANS, [1.0, 1.0], np.array(weights, dtype=float))


@pytest.mark.parametrize("means", [np.zeros(2), np.zeros((2, 2, 1)), np.zeros((0, 2)),
                                   np.array([[0.0, np.nan], [0.0, 0.0]])])
def test_bad_means_raise_naming_means(means):
    with pytest.raises(ValueError, match="^means: "):
        GaussianMixture(means, np.ones(max(len(means), 1)))


def test_integer_arrays_raise_type_errors_naming_the_argument():
    with pytest.raises(TypeError, match="^means: "):
        GaussianMixture(np.zeros((2, 2), dtype=int), [1.0, 1.0])
    with pytest.raises(TypeError, match="^covs: "):
        GaussianMixture(MEANS, np.ones(2, dtype=int))
    with pytest.raises(TypeError, match="^weights: "):
        GaussianMixture(MEANS, [1.0, 1.0], np.array([1, 0]))
    with pytest.raises(TypeError, match="^points: "):
        Empirical(np.zeros((2, 2), dtype=int))
    with pytest.raises(TypeError, match="^x: "):
        GaussianMixture(MEANS, [1.0, 1.0]).log_prob(np.zeros((1, 2), dtype=int))


def test_other_bad_input_raises_naming_the_argument():
    q = GaussianMixture(MEANS, [1.0, 1.0])
    with pytest.raises(ValueError, match="^x: "):
        q.log_prob(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="^x: "):
        q.log_prob(np.zeros(2))
    with pytest.raises(ValueError, match="^x: "):
        StandardNormal(2).log_prob(np.array([[np.nan, 0.0]]))
    for dist in (q, Empirical(MEANS), StandardNormal(2)):
        for bad in (0, None, np.random.RandomState(0)):
            with pytest.raises(TypeError, match="^rng: "):
                dist.sample(3, bad)
        with pytest.raises(ValueError, match="^n: "):
            dist.sample(0, np.random.default_rng(0))
        with pytest.raises(TypeError, match="^n: "):
            dist.sample(2.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="^dim: "):
        StandardNormal(0)
    with pytest.raises(TypeError, match="^dim: "):
        StandardNormal(2.0)
    with pytest.raises(ValueError, match="^weights: "):
        Empirical(MEANS, [0.7, 0.7])


def test_component_terms_batched_over_alpha_and_sigma_match_scipy():
    """component_terms with α, σ as (n,) arrays (the documented batched form): row i has
    log w_k + log N(x_i; α_i μ_k, α_i² Σ_k + σ_i² I) (scipy), C_k⁻¹(x_i − α_i μ_k) and
    Σ_k C_k⁻¹(x_i − α_i μ_k) by dense solves: a route that shares no eigendecomposition."""
    from scipy.stats import multivariate_normal

    q = GaussianMixture(np.array([[1.0, -1.0], [0.0, 2.0], [-2.0, 0.5]]),
                        np.array([[[1.0, 0.3], [0.3, 0.5]], np.zeros((2, 2)), [[0.2, 0.0], [0.0, 2.0]]]),
                        np.array([0.5, 0.2, 0.3]))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2))
    alpha, sigma = np.array([0.1, 0.5, 0.9, 0.3]), np.array([0.95, 0.6, 0.2, 1.0])
    log_joint, prec_diff, cov_prec_diff = q.component_terms(x, alpha, sigma)
    assert log_joint.shape == (4, 3) and prec_diff.shape == cov_prec_diff.shape == (4, 3, 2)
    for i in range(4):
        for k in range(3):
            C = alpha[i] ** 2 * q.covs[k] + sigma[i] ** 2 * np.eye(2)
            mean = alpha[i] * q.means[k]
            want = np.log(q.weights[k]) + multivariate_normal(mean, C).logpdf(x[i])
            assert np.isclose(log_joint[i, k], want, rtol=1e-12)
            np.testing.assert_allclose(prec_diff[i, k], np.linalg.solve(C, x[i] - mean), rtol=1e-12)
            np.testing.assert_allclose(cov_prec_diff[i, k], q.covs[k] @ np.linalg.solve(C, x[i] - mean),
                                       rtol=1e-12, atol=1e-15)
