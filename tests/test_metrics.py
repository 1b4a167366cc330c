"""W₂ by exact assignment against independent routes: brute force over all
permutations, the closed form for translates, and the sorted (monotone) matching in 1-D.

Derivation: derivations/08-evaluation.md (EVAL.1) (EVAL.2) (EVAL.3) (EVAL.4)
"""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fm_ref.distributions import make_toy
from fm_ref.metrics import mean_and_stderr, optimal_assignment, wasserstein2
from strategies import dims, seeds

# Sums of n squared distances of size O(1) lose a few ulps each; 1e-12 relative is
# the closed-form tier of DESIGN.md with ample room for n ≤ 500 terms.
CLOSED_FORM_RTOL = 1e-12


def brute_force_w2(x, y):
    """min over all n! permutations: the definition itself (EVAL.1), for n ≤ 7."""
    n = x.shape[0]
    best = min(sum(np.sum((x[i] - y[p[i]]) ** 2) for i in range(n)) for p in itertools.permutations(range(n)))
    return float(np.sqrt(best / n))


@st.composite
def point_pairs(draw, n_max=6):
    d = draw(dims)
    n = draw(st.integers(1, n_max))
    rng = np.random.default_rng(draw(seeds))
    return rng.normal(0.0, 2.0, (n, d)), rng.normal(0.5, 1.0, (n, d))


@given(point_pairs())
def test_assignment_equals_brute_force_minimum(pair):
    x, y = pair
    assert wasserstein2(x, y) == pytest.approx(brute_force_w2(x, y), rel=CLOSED_FORM_RTOL, abs=1e-15)


def test_brute_force_rejects_the_identity_pairing():
    """The check can fail: pairing x_i with y_i (no optimisation) is not the minimum."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    identity = float(np.sqrt(np.mean(np.sum((x - y) ** 2, axis=1))))
    assert identity > brute_force_w2(x, y) * (1 + 1e-3)
    assert wasserstein2(x, y) < identity


@given(seeds, dims, st.integers(2, 300))
def test_translate_has_w2_equal_to_the_shift(seed, d, n):
    """y = shuffled (x + s): W₂ = ‖s‖ exactly (EVAL.3), whatever the order of y."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    s = rng.normal(size=d)
    y = rng.permutation(x + s)
    assert wasserstein2(x, y) == pytest.approx(np.linalg.norm(s), rel=CLOSED_FORM_RTOL)


@given(seeds, st.integers(1, 400))
def test_one_dimensional_w2_is_the_sorted_matching(seed, n):
    """In 1-D the monotone rearrangement is optimal: match the order statistics."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 1)), rng.standard_t(3, size=(n, 1))
    sorted_w2 = np.sqrt(np.mean((np.sort(x[:, 0]) - np.sort(y[:, 0])) ** 2))
    assert wasserstein2(x, y) == pytest.approx(sorted_w2, rel=CLOSED_FORM_RTOL)


@given(point_pairs(n_max=40))
def test_w2_is_symmetric_and_bounded_below_by_the_mean_gap(pair):
    """W₂(x, y) = W₂(y, x) ≥ ‖x̄ − ȳ‖ (Jensen on the optimal coupling)."""
    x, y = pair
    w = wasserstein2(x, y)
    assert wasserstein2(y, x) == pytest.approx(w, rel=CLOSED_FORM_RTOL, abs=1e-15)
    assert w >= np.linalg.norm(x.mean(0) - y.mean(0)) * (1 - 1e-12)


def test_assignment_is_a_permutation_with_its_costs():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2)), rng.normal(size=(50, 2))
    perm, cost = optimal_assignment(x, y)
    assert sorted(perm) == list(range(50))
    np.testing.assert_array_equal(cost, np.sum((x - y[perm]) ** 2, axis=1))
    assert cost.dtype == np.float64


def test_w2_of_a_set_with_itself_is_zero_and_two_samples_give_a_floor():
    rng = np.random.default_rng(0)
    x = make_toy("8gaussians", 500, rng)
    assert wasserstein2(x, rng.permutation(x)) == 0.0
    floor = wasserstein2(x, make_toy("8gaussians", 500, rng))
    assert 0.05 < floor < 0.6  # sampling noise of two independent draws, O(n^(-1/2)) in 2-D


@given(seeds, st.integers(2, 200))
def test_mean_and_stderr_match_their_definitions(seed, n):
    v = np.random.default_rng(seed).normal(3.0, 2.0, n)
    mean, se = mean_and_stderr(v)
    assert mean == pytest.approx(np.sum(v) / n, rel=CLOSED_FORM_RTOL)
    var = np.sum((v - np.sum(v) / n) ** 2) / (n - 1)
    assert se == pytest.approx(np.sqrt(var / n), rel=1e-10)


@pytest.mark.parametrize("x, y, arg", [
    (np.zeros((3, 2)), np.zeros((4, 2)), "y"),
    (np.zeros((3, 2)), np.zeros((3, 3)), "y"),
    (np.zeros(3), np.zeros(3), "x"),
    (np.array([[np.nan, 0.0]]), np.zeros((1, 2)), "x"),
    (np.zeros((2, 2)), np.array([[0.0, np.inf], [0.0, 0.0]]), "y"),
    (np.zeros((2, 2), dtype=int), np.zeros((2, 2)), "x"),
])
def test_bad_point_sets_raise_naming_the_argument(x, y, arg):
    with pytest.raises((ValueError, TypeError), match=rf"^{arg}:"):
        wasserstein2(x, y)


@pytest.mark.parametrize("values", [np.zeros(1), np.zeros((3, 2)), np.array([1.0, np.nan])])
def test_bad_values_raise(values):
    with pytest.raises(ValueError, match="values"):
        mean_and_stderr(values)


@settings(max_examples=5)
@given(seeds)
def test_w2_triangle_inequality(seed):
    rng = np.random.default_rng(seed)
    a, b, c = (rng.normal(size=(30, 2)) + k for k in range(3))
    assert wasserstein2(a, c) <= wasserstein2(a, b) + wasserstein2(b, c) + 1e-12
