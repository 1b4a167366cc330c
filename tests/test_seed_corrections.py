"""The seed notes' claim that u_t(x | x₁ = z) "is a vector field all pointing to z", as
corrected in derivations/01-gaussian-paths.md (after PATH.3):

    u_t(x | x₁) = (|σ'_t|/σ_t)(x₁ − x) − σ_t (d/dt)[(1 − α_t)/σ_t] x₁,

whose second term (a drift along x₁) vanishes for every x₁ iff α_t + σ_t = 1. The
decomposition is checked against the code's conditional velocity (PATH.3), with the
derivative of (1 − α_t)/σ_t taken by autograd (a route that does not use α'_t, σ'_t).
"""
import numpy as np
import pytest
from autograd import grad

from fm_ref.paths import VP, CondOT, Cosine, LinearVP, Polynomial

# Autograd against the closed-form velocity: the DESIGN.md tier for autograd vs closed form.
AUTOGRAD_RTOL = 1e-10
TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def drift_coefficient(path, t):
    """−σ_t (d/dt)[(1 − α_t)/σ_t], by autograd."""
    return -path.sigma_t(t) * grad(lambda s: (1.0 - path.alpha_t(s)) / path.sigma_t(s))(t)


@pytest.mark.parametrize("path", [CondOT(0.0), CondOT(0.1), VP(), LinearVP(), Cosine(), Polynomial(2.0)], ids=repr)
def test_conditional_velocity_is_a_pull_to_x1_plus_a_drift(path):
    rng = np.random.default_rng(0)
    x, x_1 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    for t in TIMES:
        pull = abs(path.d_sigma_t(t)) / path.sigma_t(t) * (x_1 - x)
        u = path.conditional_velocity(x, x_1, t)
        assert np.max(np.abs(pull + drift_coefficient(path, t) * x_1 - u)) <= AUTOGRAD_RTOL * np.max(np.abs(u))
        # the same check rejects the seed's reading, a field that only pulls toward x₁,
        # wherever α_t + σ_t ≠ 1
        if abs(path.alpha_t(t) + path.sigma_t(t) - 1.0) > 1e-3:
            assert np.max(np.abs(pull - u)) > 1e-3 * np.max(np.abs(u))


@pytest.mark.parametrize("path, points_at_x1", [(CondOT(0.0), True), (Polynomial(2.0), True), (Polynomial(3.5), True),
                                                (CondOT(0.1), False), (VP(), False), (LinearVP(), False), (Cosine(), False)],
                         ids=repr)
def test_the_drift_vanishes_exactly_where_alpha_plus_sigma_is_one(path, points_at_x1):
    drifts = np.array([drift_coefficient(path, t) for t in TIMES])
    if points_at_x1:
        assert np.max(np.abs(drifts)) <= AUTOGRAD_RTOL
    else:
        assert np.min(np.abs(drifts)) > 1e-3


def test_cosine_at_one_half_moves_a_point_sitting_on_x1():
    """At x = x₁ the pull is zero and u is the drift alone: (π/2)(√2 − 1) x₁ for Cosine at t = ½."""
    x_1 = np.array([[1.0, -2.0]])
    u = Cosine().conditional_velocity(x_1, x_1, 0.5)
    assert np.allclose(u, 0.5 * np.pi * (np.sqrt(2.0) - 1.0) * x_1, rtol=1e-14, atol=0.0)
