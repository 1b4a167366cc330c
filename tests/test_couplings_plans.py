"""Couplings of two batches: exact OT by assignment and by linear programming, entropic
OT by log-domain Sinkhorn, ε = 2σ² for the bridge, drawing pairs from a plan.

Derivation: derivations/10-couplings.md (CPL.4) to (CPL.8)
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fm_ref.couplings import (EntropicCoupling, ExactOTCoupling, IndependentCoupling, bridge_epsilon, cost_matrix,
                              independent_plan, ot_permutation, ot_plan, sample_pairs, sinkhorn)
from fm_ref.couplings.plans import SINKHORN_TOL
from fm_ref.verify.couplings import (CLOSED_RTOL, DUAL_RTOL, LP_MARGINAL_TOL, enumeration_gap, entropic_dual_solve,
                                     example_sets, sinkhorn_epsilon_gap)
from strategies import fewer, point_sets, seeds

# ------------------------------------------------------------------ exact OT (CPL.4, CPL.5)


@given(st.integers(1, 7).flatmap(lambda n: point_sets(n=n, m=n)))
def test_ot_permutation_uses_every_point_once(sets):
    x_0, x_1, _, _ = sets
    perm, cost = ot_permutation(x_0, x_1)
    assert sorted(perm) == list(range(x_0.shape[0]))
    assert cost == pytest.approx(np.mean(np.sum((x_0 - x_1[perm]) ** 2, axis=1)), rel=CLOSED_RTOL)


@fewer(0.5)
@given(st.integers(2, 7), seeds)
def test_assignment_and_lp_reach_the_minimum_over_all_permutations(n, seed):
    x_0, x_1, _, _ = example_sets(seed=seed % 1000, n0=n, n1=n, d=2)
    gap_lsa, gap_lp = enumeration_gap(x_0, x_1)
    assert gap_lsa <= CLOSED_RTOL and gap_lp <= CLOSED_RTOL


def test_enumeration_check_rejects_a_wrong_permutation():
    x_0, x_1, _, _ = example_sets(seed=3, n0=6, n1=6)
    perm, _ = ot_permutation(x_0, x_1)
    wrong = perm.copy()
    wrong[[0, 1]] = wrong[[1, 0]]
    assert enumeration_gap(x_0, x_1, wrong)[0] > 1e-3


@given(point_sets(weights=True))
def test_lp_plan_has_exact_marginals_and_is_optimal_against_sinkhorn(sets):
    x_0, x_1, a, b = sets
    plan, cost = ot_plan(x_0, x_1, a, b)
    assert plan.min() >= 0.0
    assert np.max(np.abs(plan.sum(1) - a)) <= LP_MARGINAL_TOL
    assert np.max(np.abs(plan.sum(0) - b)) <= LP_MARGINAL_TOL
    # any coupling costs at least the optimum: the independent one and a Sinkhorn plan
    C = cost_matrix(x_0, x_1)
    assert np.sum(np.outer(a, b) * C) >= cost * (1 - CLOSED_RTOL)
    assert np.sum(sinkhorn(x_0, x_1, 1.0, a, b).plan * C) >= cost - SINKHORN_TOL * C.max()


def test_lp_with_equal_sizes_and_weights_is_the_permutation():
    x_0, x_1, _, _ = example_sets(seed=4, n0=5, n1=5)
    plan, _ = ot_plan(x_0, x_1)
    perm, _ = ot_permutation(x_0, x_1)
    np.testing.assert_array_equal(np.argmax(plan, axis=1), perm)
    assert np.allclose(plan.max(axis=1), 0.2, rtol=0, atol=1e-15)


def test_independent_plan_is_the_outer_product():
    a, b = np.array([0.25, 0.75]), np.array([0.5, 0.2, 0.3])
    np.testing.assert_array_equal(independent_plan(a, b), a[:, None] * b[None, :])


# ------------------------------------------------------------------ Sinkhorn (CPL.6, CPL.7)


@given(point_sets(weights=True), st.sampled_from([0.3, 1.0, 3.0]))
def test_sinkhorn_marginals_meet_the_stopping_tolerance(sets, eps):
    x_0, x_1, a, b = sets
    # a cap far above the default: near-sparse plans converge slowly (a 4 × 4 set in 3-D at
    # ε = 0.3, max C = 57, takes 26 220 iterations, 1.7 s); the default cap is tested apart
    res = sinkhorn(x_0, x_1, eps, a, b, max_iter=200_000)
    assert res.marginal_error <= SINKHORN_TOL
    assert np.sum(np.abs(res.plan.sum(1) - a)) <= SINKHORN_TOL  # recomputed, not the reported value
    # exact after the g-update up to the rounding of exp((f_i + g_j − C_ij)/ε), whose argument
    # reaches ~100 here (|f|/ε ~ 70 measured): ~100 ulps, so 1e-12
    assert np.sum(np.abs(res.plan.sum(0) - b)) <= 1e-12
    assert 1 <= res.iterations


def test_sinkhorn_updates_are_the_stated_rules():
    """One iteration (a huge tol stops after it), against the rules in the plain domain."""
    x_0, x_1, a, b = example_sets(seed=5, n0=3, n1=4, weights=True)
    eps = 0.7
    K = np.exp(-cost_matrix(x_0, x_1) / eps)
    res = sinkhorn(x_0, x_1, eps, a, b, tol=1e300)
    f = -eps * np.log(K @ b)                    # g = 0 to start
    g = -eps * np.log(K.T @ (a * np.exp(f / eps)))
    assert res.iterations == 1
    np.testing.assert_allclose(res.f, f, rtol=1e-13)
    np.testing.assert_allclose(res.g, g, rtol=1e-13)
    np.testing.assert_allclose(res.plan, a[:, None] * b[None, :] * np.exp((f[:, None] + g[None, :]) / eps) * K,
                               rtol=1e-12)


@fewer(0.5)
@given(point_sets(weights=True, max_n=5), st.sampled_from([0.5, 2.0]))
def test_sinkhorn_objective_matches_the_dual_solved_by_minimize(sets, eps):
    x_0, x_1, a, b = sets
    res = sinkhorn(x_0, x_1, eps, a, b, tol=1e-13)
    obj, plan = entropic_dual_solve(cost_matrix(x_0, x_1), a, b, eps)
    assert abs(res.objective - obj) <= DUAL_RTOL * max(abs(obj), 1.0)
    assert np.max(np.abs(res.plan - plan)) <= DUAL_RTOL


def test_dual_comparison_rejects_a_wrong_epsilon():
    x_0, x_1, a, b = example_sets(seed=6, n0=4, n1=5, weights=True)
    obj, _ = entropic_dual_solve(cost_matrix(x_0, x_1), a, b, 1.0)
    assert abs(sinkhorn(x_0, x_1, 1.1, a, b, tol=1e-13).objective - obj) > 1e-3


def test_sinkhorn_tends_to_the_exact_plan_as_epsilon_shrinks():
    x_0, x_1, a, b = example_sets(seed=14, n0=5, n1=6, weights=True)
    eps = (1.0, 0.3, 0.1, 0.03)
    ratio, dists = sinkhorn_epsilon_gap(x_0 + 1.0, x_1, eps, a, b)
    assert ratio <= 1.0  # 0 ≤ ⟨π_ε, C⟩ − OT ≤ ε log min(n, m)
    assert all(d1 < d0 for d0, d1 in zip(dists, dists[1:]))
    assert dists[-1] < 1e-3


def test_the_bound_rejects_a_plan_that_is_not_optimal():
    """The ε log n bound catches a Sinkhorn plan of ε = 1 reported as one of ε = 0.01."""
    x_0, x_1, a, b = example_sets(seed=14, n0=5, n1=6, weights=True)
    C = cost_matrix(x_0 + 1.0, x_1)
    _, ot = ot_plan(x_0 + 1.0, x_1, a, b)
    plan = sinkhorn(x_0 + 1.0, x_1, 1.0, a, b).plan
    assert (np.sum(plan * C) - ot) / (0.01 * np.log(5)) > 1.0


def test_sinkhorn_raises_at_its_iteration_cap():
    x_0, x_1, _, _ = example_sets(seed=7)
    with pytest.raises(RuntimeError, match=r"^sinkhorn: marginal error .* max_iter = 3"):
        sinkhorn(x_0, x_1, 0.01, max_iter=3)


# ------------------------------------------------------------------ the bridge's ε (CPL.8)


def test_bridge_epsilon_is_two_sigma_squared():
    assert bridge_epsilon(0.3) == 2 * 0.3**2
    assert EntropicCoupling(0.3).epsilon == 2 * 0.3**2


def test_entropic_plan_is_the_brownian_transition_kernel_reweighted():
    """σW over unit time moves x to y with density ∝ exp(−‖y − x‖²/(2σ²)); the static
    Schrödinger problem's plan is that kernel times f_i g_j: log π_ij + C_ij/(2σ²) must be
    additive in i and j (its double-centred matrix vanishes). A wrong ε (σ² or 4σ²) is not."""
    x_0, x_1, a, b = example_sets(seed=8, n0=4, n1=5, weights=True)
    sigma = 0.6
    C = cost_matrix(x_0, x_1)

    def interaction(scale):
        M = np.log(sinkhorn(x_0, x_1, bridge_epsilon(sigma), a, b, tol=1e-13).plan) + C / (scale * sigma**2)
        return np.max(np.abs(M - M.mean(0) - M.mean(1)[:, None] + M.mean()))

    assert interaction(2.0) <= 1e-10 * C.max() / sigma**2
    assert interaction(1.0) > 1e-2 and interaction(4.0) > 1e-2


# ------------------------------------------------------------------ drawing pairs


def test_sample_pairs_frequencies_match_the_plan():
    plan = np.array([[0.1, 0.2], [0.3, 0.4]])
    n = 20_000
    i, j = sample_pairs(plan, n, np.random.default_rng(9))
    counts = np.zeros((2, 2))
    np.add.at(counts, (i, j), 1)
    z = (counts / n - plan) / np.sqrt(plan * (1 - plan) / n)
    assert np.max(np.abs(z)) <= 5.0


def test_training_couplings_pair_a_batch():
    rng = np.random.default_rng(10)
    x_0, x_1 = rng.normal(size=(16, 2)), rng.normal(size=(16, 2)) + 2.0
    y_0, y_1 = IndependentCoupling()(x_0, x_1, rng)
    assert y_0 is x_0 and y_1 is x_1
    y_0, y_1 = ExactOTCoupling()(x_0, x_1, rng)
    perm, _ = ot_permutation(x_0, x_1)
    np.testing.assert_array_equal(y_1, x_1[perm])  # every x₁ once, in the OT order
    a = EntropicCoupling(0.5)(x_0, x_1, np.random.default_rng(11))
    b = EntropicCoupling(0.5)(x_0, x_1, np.random.default_rng(11))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------ bad input (e)


@pytest.mark.parametrize("call, match", [
    (lambda: ot_permutation(np.zeros((3, 2)), np.zeros((4, 2))), r"^x_1: a permutation needs batches of equal size"),
    (lambda: ot_plan(np.zeros((2, 1)), np.ones((2, 1)), a=np.array([1.2, -0.2])), r"^a: expected non-negative"),
    (lambda: ot_plan(np.zeros((2, 1)), np.ones((2, 1)), b=np.array([0.5, 0.6])), r"^b: expected weights that sum to 1"),
    (lambda: sinkhorn(np.zeros((2, 1)), np.ones((2, 1)), 0.0), r"^epsilon: expected a value > 0"),
    (lambda: sinkhorn(np.zeros((2, 1)), np.ones((2, 1)), -1.0), r"^epsilon: expected a value > 0"),
    (lambda: sinkhorn(np.zeros((2, 1)), np.ones((2, 1)), 1.0, a=np.array([1.0, 0.0])), r"^a: expected positive"),
    (lambda: sinkhorn(np.zeros((2, 1)), np.ones((3, 1)), 1.0, b=np.array([0.5, 0.5])), r"^b: expected shape \(3,\)"),
    (lambda: bridge_epsilon(-0.1), r"^sigma: expected a value > 0"),
    (lambda: EntropicCoupling(0.0), r"^sigma: expected a value > 0"),
    (lambda: sample_pairs(np.array([[0.5, 0.6]]), 3, np.random.default_rng(0)), r"^plan: expected weights that sum"),
])
def test_bad_input_raises_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_sinkhorn_and_lp_results_are_float64_and_deterministic():
    x_0, x_1, a, b = example_sets(seed=12, n0=3, n1=4, weights=True)
    r1, r2 = sinkhorn(x_0, x_1, 0.5, a, b), sinkhorn(x_0, x_1, 0.5, a, b)
    assert r1.plan.dtype == np.float64 and np.array_equal(r1.plan, r2.plan)
    assert ot_plan(x_0, x_1, a, b)[0].dtype == np.float64
    # the log-domain iterations survive ε far below the costs (the plain domain underflows)
    x_far = x_1 + 30.0
    res = sinkhorn(x_0, x_far, 0.5, a, b)
    assert np.all(np.isfinite(res.plan)) and res.marginal_error <= SINKHORN_TOL
    assert np.exp(-cost_matrix(x_0, x_far) / 0.5).max() == 0.0


def test_sinkhorn_plain_and_log_domain_iterations_agree(monkeypatch):
    """The two ways of evaluating the log-sum-exps of (CPL.7) make the same iterations:
    forced into the log domain (threshold −1) and into the plain one (threshold 1e300),
    the same number of iterations and plans equal to ~10 ulps of the plan's scale."""
    import fm_ref.couplings.plans as plans

    x_0, x_1, a, b = example_sets(seed=21, n0=7, n1=9, weights=True)
    eps = float(cost_matrix(x_0, x_1).max()) / 20.0  # max C/ε = 20: either domain is safe
    runs = {}
    for name, limit in (("log", -1.0), ("plain", 1e300)):
        monkeypatch.setattr(plans, "PLAIN_DOMAIN_MAX", limit)
        runs[name] = sinkhorn(x_0, x_1, eps, a, b, tol=1e-12)
    assert runs["log"].iterations == runs["plain"].iterations
    np.testing.assert_allclose(runs["plain"].plan, runs["log"].plan, rtol=0, atol=1e-14 * runs["log"].plan.max())
    np.testing.assert_allclose(runs["plain"].f, runs["log"].f, rtol=0, atol=1e-12 * eps)
    assert plans.PLAIN_DOMAIN_MAX == 1e300 and runs["plain"].marginal_error <= 1e-12


# ------------------------------------------------------------------ edge cases (mutation run)


def test_entropic_coupling_returns_source_rows_then_target_rows():
    """(CPL.8) The pair is (x₀ᵢ, x₁ⱼ): every returned first row is a row of the source
    batch and every second row one of the target batch (the batches are disjoint).

    Derivation: derivations/10-couplings.md (CPL.8)"""
    rng = np.random.default_rng(20)
    x_0, x_1 = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) + 5.0
    y_0, y_1 = EntropicCoupling(1.0)(x_0, x_1, np.random.default_rng(21))
    # membership is exact: the rows are copied, not computed
    assert all(any(np.array_equal(y, x) for x in x_0) for y in y_0)
    assert all(any(np.array_equal(y, x) for x in x_1) for y in y_1)


def test_zero_weights_are_accepted_where_non_negative_weights_are_allowed():
    """(CPL.5) A point of weight 0 carries no mass: the LP plan with it equals the plan without
    it (its row is zero), and the independent plan is still the outer product.

    Derivation: derivations/10-couplings.md (CPL.4) (CPL.5)"""
    x_0, x_1, _, _ = example_sets(seed=22, n0=4, n1=3)
    a = np.array([0.5, 0.25, 0.25, 0.0])
    plan, cost = ot_plan(x_0, x_1, a=a)
    plan_3, cost_3 = ot_plan(x_0[:3], x_1, a=a[:3])
    np.testing.assert_array_equal(plan[3], 0.0)
    # LP optima of the same problem: equal to the LP's feasibility tolerance
    assert np.max(np.abs(plan[:3] - plan_3)) <= LP_MARGINAL_TOL and cost == pytest.approx(cost_3, rel=1e-9)
    b = np.array([0.0, 1.0])
    np.testing.assert_array_equal(independent_plan(a, b), a[:, None] * b[None, :])


def test_sinkhorn_max_iter_counts_exactly_the_iterations_made():
    """(CPL.7) max_iter = the iterations a run needs suffices; one fewer raises.

    Derivation: derivations/10-couplings.md (CPL.7)"""
    x_0, x_1, _, _ = example_sets(seed=7)
    k = sinkhorn(x_0, x_1, 0.1).iterations
    assert k >= 3
    res = sinkhorn(x_0, x_1, 0.1, max_iter=k)
    assert res.iterations == k and res.marginal_error <= SINKHORN_TOL
    with pytest.raises(RuntimeError, match=f"max_iter = {k - 1} "):
        sinkhorn(x_0, x_1, 0.1, max_iter=k - 1)


# ---- mutation sample seed 3: the weight-sum allowance, plan_cost, the couplings' names ----

def test_weight_sum_allowance_is_1e_12_times_max_n_10():
    """|Σw − 1| ≤ 1e-12 · max(n, 10) is accepted: at n = 3, 0.95e-11 passes and 1.05e-11
    raises; at n = 20 (allowance 2e-11), 1.9e-11 passes and 2.1e-11 raises. At n = 1175967
    the allowance fl(1e-12 n) is a multiple of 2⁻⁵³, so weights summing to exactly
    1 − allowance exist, and they are accepted (the bound is inclusive)."""
    for n, ok, bad in ((3, 0.95e-11, 1.05e-11), (20, 1.9e-11, 2.1e-11)):
        for shift, passes in ((ok, True), (-ok, True), (bad, False), (-bad, False)):
            a = np.full(n, 1.0 / n)
            a[0] += shift
            if passes:
                independent_plan(a, [1.0])
            else:
                with pytest.raises(ValueError, match=r"^a: expected weights that sum to 1"):
                    independent_plan(a, [1.0])
    n = 1175967
    allowance = 1e-12 * n
    assert allowance * 2.0**53 == np.round(allowance * 2.0**53)
    a = np.zeros(n)
    a[0] = 1.0 - allowance  # exact: a multiple of 2⁻⁵³ below 1
    assert abs(float(np.sum(a)) - 1.0) == allowance
    assert independent_plan(a, [1.0]).shape == (n, 1)


def test_plan_cost_is_the_sum_over_pairs_written_out():
    """⟨π, C⟩ = Σ_ij π_ij ‖x₀ᵢ − x₁ⱼ‖², summed by hand over the pairs."""
    from fm_ref.couplings.plans import plan_cost
    rng = np.random.default_rng(8)
    x_0, x_1 = rng.normal(size=(3, 2)), rng.normal(size=(4, 2))
    plan = rng.uniform(size=(3, 4))
    plan /= plan.sum()
    want = sum(plan[i, j] * sum((x_0[i, k] - x_1[j, k]) ** 2 for k in range(2)) for i in range(3) for j in range(4))
    got = plan_cost(plan, cost_matrix(x_0, x_1))
    assert isinstance(got, float)
    # twelve O(1) terms: rounding ~1e-15 relative
    assert got == pytest.approx(want, rel=1e-13)


def test_training_couplings_name_themselves():
    assert repr(IndependentCoupling()) == "IndependentCoupling()"
    assert repr(ExactOTCoupling()) == "ExactOTCoupling()"
    assert repr(EntropicCoupling(0.5)) == "EntropicCoupling(sigma=0.5)"


def test_sinkhorn_defaults_are_the_documented_values():
    """tol = SINKHORN_TOL = 1e-9 and max_iter = SINKHORN_MAX_ITER (CPL.7): the default call equals
    the explicit one, and its marginal error is at most 1e-9; EntropicCoupling keeps them."""
    from fm_ref.couplings.plans import SINKHORN_MAX_ITER
    x_0, x_1 = example_sets(seed=2, n0=5, n1=6)[:2]
    r_def = sinkhorn(x_0, x_1, 0.5)
    r_exp = sinkhorn(x_0, x_1, 0.5, a=None, b=None, tol=1e-9, max_iter=SINKHORN_MAX_ITER)
    np.testing.assert_array_equal(r_def.plan, r_exp.plan)
    assert r_def.iterations == r_exp.iterations and r_def.marginal_error <= 1e-9
    c = EntropicCoupling(0.5)
    assert (c.tol, c.max_iter, c.epsilon) == (SINKHORN_TOL, SINKHORN_MAX_ITER, 0.5)


def test_positive_arguments_refuse_zero_and_accept_the_smallest_positive():
    """σ of the bridge's ε, ε of Sinkhorn and of the entropic cross-covariance, and Sinkhorn's
    tol are open at 0: 0.0 raises naming the argument; σ = 0 is allowed for ConstantSigma."""
    from fm_ref.couplings import ConstantSigma, entropic_cross_covariance
    x_0, x_1 = example_sets(seed=1)[:2]
    for call, name in ((lambda: bridge_epsilon(0.0), "sigma"), (lambda: EntropicCoupling(0.0), "sigma"),
                       (lambda: sinkhorn(x_0, x_1, 0.0), "epsilon"), (lambda: sinkhorn(x_0, x_1, 1.0, tol=0.0), "tol"),
                       (lambda: entropic_cross_covariance(np.eye(2), np.eye(2), 0.0), "epsilon")):
        with pytest.raises(ValueError, match=f"^{name}"):
            call()
    assert bridge_epsilon(1e-3) == 2e-6 and EntropicCoupling(1e-3).epsilon == 2e-6
    assert ConstantSigma(0.0).sigma == 0.0
    assert sinkhorn(x_0, x_1, 1.0, tol=1e-6).marginal_error <= 1e-6
    # S0 = S1 = I: C = (½√(4 + σ⁴) − σ²/2) I with σ² = ε/2, for small and moderate ε
    for eps in (1e-3, 0.5):
        s2 = eps / 2
        want = (0.5 * np.sqrt(4.0 + s2**2) - 0.5 * s2) * np.eye(2)
        # a 2×2 eigendecomposition of multiples of I: rounding only
        np.testing.assert_allclose(entropic_cross_covariance(np.eye(2), np.eye(2), eps), want, rtol=1e-14, atol=1e-15)


def test_sinkhorn_stops_at_an_error_equal_to_tol():
    """(CPL.7) The stopping rule is ‖π1 − a‖₁ ≤ tol, inclusive: with tol set to the error a run
    stopped at (a float reached exactly), the same run stops at the same iteration.

    Derivation: derivations/10-couplings.md (CPL.7)"""
    x_0, x_1, a, b = example_sets(seed=5, n0=4, n1=5, weights=True)
    first = sinkhorn(x_0, x_1, 0.3, a, b, tol=1e-6)
    again = sinkhorn(x_0, x_1, 0.3, a, b, tol=first.marginal_error)
    assert 0.0 < first.marginal_error <= 1e-6
    assert again.iterations == first.iterations and again.marginal_error == first.marginal_error


def test_sinkhorn_plain_domain_up_to_and_including_max_c_over_eps_50(monkeypatch):
    """The log-sum-exps run in the plain domain while max C/ε ≤ PLAIN_DOMAIN_MAX = 50 and in the
    max-shifted log domain (``_logsumexp``) beyond: max C = 50 exactly (a point at (5, 5)
    from the origin) with ε = 1 calls no ``_logsumexp``, ε = 50/50.5 does."""
    import fm_ref.couplings.plans as plans

    calls = []
    real = plans._logsumexp
    monkeypatch.setattr(plans, "_logsumexp", lambda M, axis: calls.append(axis) or real(M, axis))
    x_0, x_1 = np.array([[0.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 0.0], [5.0, 5.0]])
    assert float(cost_matrix(x_0, x_1).max()) == 50.0 and plans.PLAIN_DOMAIN_MAX == 50.0
    plain = sinkhorn(x_0, x_1, 1.0)
    assert calls == []
    log = sinkhorn(x_0, x_1, 50.0 / 50.5)
    assert len(calls) >= 2
    assert plain.marginal_error <= SINKHORN_TOL and log.marginal_error <= SINKHORN_TOL


def test_sample_pairs_unravels_row_major_on_non_square_plans():
    """(CPL.5) A flat index k of an (n0, n1) plan is the pair (k // n1, k % n1): a plan with its
    mass on one cell returns that cell every time, for a wide and a tall plan.

    Derivation: derivations/10-couplings.md (CPL.5)"""
    for shape, cell in (((2, 3), (1, 2)), ((3, 2), (2, 1)), ((2, 5), (0, 3))):
        plan = np.zeros(shape)
        plan[cell] = 1.0
        i, j = sample_pairs(plan, 7, np.random.default_rng(0))
        assert i.shape == j.shape == (7,)
        assert np.all(i == cell[0]) and np.all(j == cell[1])


def test_entropic_coupling_draws_one_pair_per_source_point_and_results_are_frozen():
    """EntropicCoupling returns n pairs for a batch of n points in d ≠ n dimensions; a
    SinkhornResult cannot be altered after the fact."""
    import dataclasses
    rng = np.random.default_rng(4)
    x_0, x_1 = rng.normal(size=(6, 2)), rng.normal(size=(6, 2)) + 1.0
    y_0, y_1 = EntropicCoupling(0.7)(x_0, x_1, np.random.default_rng(1))
    assert y_0.shape == y_1.shape == (6, 2)
    res = sinkhorn(x_0, x_1, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.iterations = 0


def test_sinkhorn_default_cap_is_ten_thousand_iterations():
    """(CPL.7) SINKHORN_MAX_ITER = 10 000: a run that cannot meet tol = 1e-15 (max C/ε = 50, slow
    to converge) raises after exactly 10 000 iterations by default.

    Derivation: derivations/10-couplings.md (CPL.7)"""
    x_0 = np.array([[0.0, 0.0], [1.0, 0.3], [0.2, 1.1]])
    x_1 = np.array([[0.5, 0.5], [2.0, 0.1], [1.0, 1.5]])
    eps = float(cost_matrix(x_0, x_1).max()) / 50.0
    with pytest.raises(RuntimeError, match=r"after max_iter = 10000 iterations"):
        sinkhorn(x_0, x_1, eps, tol=1e-15)


def test_pairs_are_drawn_by_the_inverse_cdf_of_the_flattened_plan_at_any_total():
    """(CPL.5) k = the first flat index whose cumulative probability exceeds u ~ U[0, 1) (u from
    ``rng.random(n)``), computed by hand; the private draw of a plan scaled to total 4 (as a
    Sinkhorn plan may be, not renormalised) gives the same pairs.

    Derivation: derivations/10-couplings.md (CPL.5)"""
    from fm_ref.couplings.plans import _draw_pairs
    plan = np.array([[0.1, 0.0, 0.2], [0.3, 0.15, 0.25]])
    u = np.random.default_rng(0).random(40)
    cum = np.array([0.1, 0.1, 0.3, 0.6, 0.75, 1.0])
    k = np.array([next(i for i in range(6) if cum[i] > v) for v in u])
    i, j = sample_pairs(plan, 40, np.random.default_rng(0))
    np.testing.assert_array_equal(i, k // 3)
    np.testing.assert_array_equal(j, k % 3)
    i4, j4 = _draw_pairs(4.0 * plan, 40, np.random.default_rng(0))
    np.testing.assert_array_equal(i4, i)
    np.testing.assert_array_equal(j4, j)
