"""The true density and entropy of the toy sets with a closed form (fm_ref.toy.truth):
the quadrature entropy against Monte Carlo over ``make_toy``'s own samples (which also
checks that the closed form is the data set's definition), the written-out mixture
density against ``GaussianMixture``, the checkerboard's support and mass.
Derivation: derivations/08-evaluation.md (EVAL.7)"""
import numpy as np
import pytest

from fm_ref.distributions import GaussianMixture, make_toy
from fm_ref.metrics import mean_and_stderr
from fm_ref.toy.truth import CLOSED_FORM, eight_gaussians_mixture, toy_entropy, toy_log_prob

# Monte Carlo against quadrature: 5 standard errors (the project's z-bound).
Z_MAX = 5.0
# The written-out log-sum-exp and GaussianMixture's eigendecomposition route round differently:
# |log q| ≤ ~170 on the points below, so 1e-12 relative is ~100 ulps of the largest value.
REL_ROUTES = 1e-12


def _mc_cross_entropy(log_q, n=100_000, seed=0):
    x = make_toy("8gaussians", n, np.random.default_rng(seed))
    return mean_and_stderr(-log_q(x), "nll")


def test_entropy_by_quadrature_matches_monte_carlo_of_the_data_sets_samples():
    value, err = toy_entropy("8gaussians")
    mean, se = _mc_cross_entropy(lambda x: toy_log_prob("8gaussians", x))
    assert err < 1e-10  # 8 against 16 nodes per panel
    assert abs(mean - value) <= Z_MAX * se, (mean, value, se)


def test_monte_carlo_check_rejects_a_mixture_on_the_wrong_circle():
    """A mixture on radius 2.1 instead of 2 has cross-entropy H + KL, KL ≈ 0.1²/(2·0.04) = 0.125."""
    value, _ = toy_entropy("8gaussians")
    angle = np.arange(8) * np.pi / 4
    wrong = GaussianMixture(2.1 * np.stack([np.cos(angle), np.sin(angle)], 1), np.full(8, 0.04))
    mean, se = _mc_cross_entropy(wrong.log_prob, n=10_000)  # se ≈ 0.01: z ≈ 12
    assert abs(mean - value) > Z_MAX * se


def test_entropy_lies_between_the_component_entropy_and_the_no_overlap_value():
    """H(q) ≤ H(component) + log 8 (equality without overlap) and H(q) ≥ H(component)."""
    value, _ = toy_entropy("8gaussians")
    component = 1.0 + np.log(2 * np.pi * 0.04)
    assert component <= value <= component + np.log(8.0)
    assert component + np.log(8.0) - value < 1e-3  # neighbours are 7.65 σ apart: the overlap is tiny


def test_written_out_mixture_density_matches_gaussian_mixture():
    x = np.random.default_rng(1).normal(scale=2.0, size=(500, 2))
    got, ref = toy_log_prob("8gaussians", x), eight_gaussians_mixture().log_prob(x)
    assert np.max(np.abs(got - ref) / np.abs(ref)) <= REL_ROUTES


def test_checkerboard_density_holds_its_samples_and_has_mass_one():
    rng = np.random.default_rng(2)
    x = make_toy("checkerboard", 20_000, rng)
    assert np.all(toy_log_prob("checkerboard", x) == -np.log(8.0))
    u = rng.uniform(-2.0, 2.0, size=(200_000, 2))  # area 16: mass = 16 · (1/8) · P(u on the support)
    on, se = mean_and_stderr(np.isfinite(toy_log_prob("checkerboard", u)).astype(float), "on")
    assert abs(16 * on / 8 - 1.0) <= Z_MAX * 2 * se
    assert toy_entropy("checkerboard") == (np.log(8.0), 0.0)


def test_sets_without_a_closed_form_are_refused():
    assert CLOSED_FORM == ("8gaussians", "checkerboard")
    with pytest.raises(ValueError, match=r"^name:"):
        toy_log_prob("moons", np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"^name:"):
        toy_entropy("spirals")
