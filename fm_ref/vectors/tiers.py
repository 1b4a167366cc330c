"""The float32 tolerance tier of the reference vectors (``fm-ref check --tier float32``).

GPU code often runs in single precision (ε₃₂ = 2^-23 ≈ 1.2e-7, 2^29 times float64's ε).
The float64 tiers of ``cases`` and ``samplers`` are set for float64 rounding and would
fail any float32 implementation; these are set for float32 rounding and were measured
against PyTorch 2.13 float32 implementations written from the vectors' conventions
(worst error in units of the tier, per kind, below; derivations/08-evaluation.md (EVAL.5)).
A float32 port that passes its float64 tier everywhere except the ODE kinds is expected;
a formula error (an O(1) change, a dropped term, a wrong stage time) still fails these.
"""

__all__ = ["FLOAT32_TOLERANCES"]


def _tol(abs_, rel, reason):
    return {"abs": abs_, "rel": rel, "reason": reason}


# Closed forms: a few float32 ulps per operation (~1e-6 relative); u_t(x | x_1) divides
# by sigma_t = 0.0199 at t = 0.99 (x 50). Measured worst: 0.088 of the tier (the 1-D mixture
# flow maps, a float32 root of a CDF equation, were not run in float32).
_CLOSED = _tol(1e-5, 1e-4, "float32 closed forms: a few ulps (1.2e-7) per operation, x50 through the division "
                           "by sigma_t near t = 1; measured worst 0.09 of this tier (EVAL.5)")
# Mixture marginals: the softmax exponents reach L ~ 1.6e4, whose float32 rounding is an
# absolute error ~1.6e4 x 6e-8 = 1e-3 in the log-weights. Measured worst: 0.18.
_MARGINAL = _tol(1e-4, 1e-3, "float32 softmax over component log-densities of size up to ~1.6e4: ~1e-3 "
                             "absolute in the log-weights; measured worst 0.18 of this tier (EVAL.5)")
# MLP forward, Jacobian and fixed-step trajectories: sums of ~100 float32 products per
# evaluation, carried through <= 64 evaluations. Measured worst: 0.006 (MLP), 0.003 (steps).
_NETWORK = _tol(1e-5, 1e-4, "float32 MLP evaluations (sums of ~100 products, ~1e-6 relative) carried through "
                            "<= 64 evaluations; measured worst 0.006 of this tier (EVAL.5)")
# A float32 ODE solve: tolerances below ~1e-6 are noise in float32; a solve at rtol = atol =
# 1e-6 to 1e-5 errs by ~1e-5. Measured: fixed-step RK4 in float32, 50 and 200 steps:
# worst 0.005 and 0.011 of this tier (rounding grows with the step count).
_ODE = _tol(1e-4, 1e-4, "float32 ODE solve: step control below ~1e-6 is rounding noise; a solve at "
                        "rtol = atol = 1e-6 to 1e-5 errs by ~1e-5; measured float32 RK4 (200 steps) "
                        "0.011 of this tier (EVAL.6)")
# Flow layers: exp/tanh/softplus closed forms and the planar inverse (a scalar root that
# float32 resolves to ~1e-6 relative); set by this reasoning, not measured in float32.
_FLOW = _tol(1e-4, 1e-3, "float32 flow layers: exp/tanh/softplus closed forms and a planar root resolved "
                         "to ~1e-6 relative; set by reasoning with a factor >= 100, not measured (EVAL.5)")

#: kind -> the float32 tolerance of its cases.
FLOAT32_TOLERANCES = {"path_schedule": _CLOSED, "conditional_path": _CLOSED, "flow_map": _CLOSED,
                      "marginal": _MARGINAL, "mlp_divergence": _NETWORK, "fixed_step": _NETWORK,
                      "cnf_log_prob": _ODE, "flow_log_det": _FLOW}
