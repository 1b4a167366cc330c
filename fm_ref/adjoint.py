"""Maximum-likelihood training of an MLP CNF: the adjoint method (Chen et al. 2018).

The loss is the mean negative log-likelihood of data under the CNF,
L(θ) = −(1/n) Σ_i [log p₀(z_i(0)) + ℓ_i(0)], where [z, ℓ] solves the augmented ODE
d[z, ℓ]/dt = [v_θ(z, t), ∇·v_θ(z, t)] from [x_i, 0] at t = 1 down to t = 0
(derivations/06-cnf.md (CNF.4)). autograd cannot differentiate through ``solve_ivp``,
so the gradient comes from the adjoint ODE, solved with ``solve_ivp`` from t = 0 back up
to t = 1 together with the state z and the running θ-gradient; autograd gives the
vector–Jacobian products of v_θ and of its closed-form divergence ∇·v_θ (second order).

A second, independent route, ``nll_rk4``, discretises the same ODE with K fixed RK4
steps in ``autograd.numpy``; its autograd gradient converges to the adjoint gradient
as K grows (tests/test_adjoint.py).
"""
import time

import autograd.numpy as np
import numpy as onp
from autograd import grad
from autograd.misc import flatten
from scipy.integrate import solve_ivp

from ._validate import as_finite_float, as_generator, as_points, as_positive_int
from .cnf import CNF, MAX_NFE, METHODS, as_rtol, capped_rhs
from .distributions import StandardNormal
from .train import adam

__all__ = ["adjoint_nll_grad", "nll_rk4", "train_cnf_mle"]



def _field(mlp, params, z, t):
    """(v_θ(z, t), ∇·v_θ(z, t)) in autograd.numpy: the closed form (CNF.8), differentiable
    in θ and z for the vector–Jacobian products of the adjoint (one place, so a test can
    replace it with a deliberately wrong field)."""
    return mlp._value_and_divergence(params, z, t)

def _check(mlp, params, x, base, params_checked=True, name="x"):
    """(x, base) validated for a CNF over the MLP; ``name`` is x's argument name."""
    from .nn import MLP

    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp: expected an fm_ref.nn.MLP, got {type(mlp).__name__}")
    if mlp.out_dim != mlp.in_dim:
        raise ValueError(f"mlp: a CNF needs out_dim == in_dim, got {mlp.out_dim} and {mlp.in_dim}")
    if params_checked:
        mlp.check_params(params)
    x = as_points(x, name, dim=mlp.in_dim)
    base = StandardNormal(mlp.in_dim) if base is None else base
    if not (callable(getattr(base, "log_prob", None)) and callable(getattr(base, "sample", None))):
        raise TypeError(f"base: expected a distribution with log_prob and sample, got {type(base).__name__}")
    if getattr(base, "dim", mlp.in_dim) != mlp.in_dim:
        raise ValueError(f"base: expected dimension {mlp.in_dim}, got {base.dim}")
    return x, base


def adjoint_nll_grad(mlp, params, x, rtol=1e-8, atol=1e-8, method="DOP853", base=None, info=False,
                     max_nfe=MAX_NFE):
    """Mean negative log-likelihood of x under the MLP CNF, and its θ-gradient by the adjoint.

    Pass 1 (t: 1 → 0) solves [z, ℓ] with the closed-form divergence (CNF.4).
    Pass 2 (t: 0 → 1) solves, with a_ℓ = −1/n constant (CNF.12),
        dz/dt = v,  da/dt = −∂_z[aᵀv + a_ℓ ∇·v],  dg/dt = −∂_θ[aᵀv + a_ℓ ∇·v],
    from z(0), a(0) = −(1/n) ∇ log p₀(z(0)), g(0) = 0; the gradient is g(1) (CNF.13).

    Parameters
    ----------
    mlp : fm_ref.nn.MLP (out_dim = dim)
    params : list of (W, b)
    x : array, shape (n, d), the data points at t = 1
    rtol, atol : float, the tolerances of both solves
    method : a solve_ivp method (``fm_ref.cnf.METHODS``)
    base : distribution with an autograd-differentiable ``log_prob`` (N(0, I) by default)
    info : bool
        Also return a dict with the NFE of both passes and the re-solved z(1) error.
    max_nfe : int
        Cap on right-hand-side evaluations of each pass (``fm_ref.cnf.MAX_NFE`` by
        default); beyond it ``fm_ref.cnf.NFELimitError`` names the stiffness.

    Returns
    -------
    loss : float, −(1/n) Σ log p₁(x_i)
    grads : list of (dW, db), shaped like params
    info : dict (only if ``info``): 'nfev_forward', 'nfev_adjoint', 'z1_error'

    Derivation: derivations/06-cnf.md (CNF.13)
    """
    x, base = _check(mlp, params, x, base)
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    rtol = as_rtol(rtol)
    atol = as_finite_float(atol, "atol", lo=0.0, lo_open=True)
    max_nfe = as_positive_int(max_nfe, "max_nfe")
    n, d = x.shape
    nd = n * d
    flow = CNF.from_mlp(mlp, params, base=base, method=method, rtol=rtol, atol=atol, max_nfe=max_nfe)
    fwd = flow.log_prob(x)
    loss = -float(onp.mean(fwd.log_prob))
    z0 = fwd.x

    flat, unflatten = flatten(params)
    a_ell = -1.0 / n  # ∂L/∂ℓ(0), constant in t because v does not depend on ℓ

    def h(z, theta, a, t):
        value, div = _field(mlp, unflatten(theta), z, t)
        return np.sum(a * value) + a_ell * np.sum(div)

    grad_h = grad(lambda zt, a, t: h(zt[0], zt[1], a, t))

    def rhs(t, y):
        z = y[:nd].reshape(n, d)
        a = y[nd:2 * nd].reshape(n, d)
        v = mlp.apply(params, z, t)
        gz, gth = grad_h((z, flat), a, t)
        out = onp.concatenate([onp.ravel(v), -onp.ravel(gz), -gth])
        if not onp.all(onp.isfinite(out)):  # a NaN slope would send solve_ivp round until max_nfe
            raise FloatingPointError(f"params: the adjoint ODE's slope is non-finite at t = {t!r} (overflow)")
        return out

    a0 = -onp.asarray(grad(lambda z: np.sum(base.log_prob(z)))(z0)) / n
    y0 = onp.concatenate([z0.ravel(), a0.ravel(), onp.zeros(flat.size)])
    rhs = capped_rhs(rhs, max_nfe, method, 0.0, 1.0, "the adjoint pass")
    with onp.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):  # as in CNF._solve
        sol = solve_ivp(rhs, (0.0, 1.0), y0, method=method, rtol=rtol, atol=atol)
    if sol.status != 0:
        raise RuntimeError(f"params: solve_ivp ({method}) failed on the adjoint pass: {sol.message}")
    y1 = sol.y[:, -1]
    if not onp.all(onp.isfinite(y1)):
        raise FloatingPointError("the adjoint pass produced non-finite values")
    grads = unflatten(y1[2 * nd:])
    if not info:
        return loss, grads
    z1_err = float(onp.max(onp.abs(y1[:nd].reshape(n, d) - x)))
    return loss, grads, {"nfev_forward": fwd.nfev, "nfev_adjoint": int(sol.nfev), "z1_error": z1_err}


#: Most fixed RK4 steps of ``nll_rk4``: its error falls like K⁻⁴ and autograd's tape grows
#: like K, so 10⁵ steps (error ~1e-20 of the one-step error) is beyond any use.
MAX_RK4_STEPS = 100_000


def nll_rk4(mlp, params, x, steps, base=None):
    """−(1/n) Σ log p₁(x_i) with K fixed RK4 steps from t = 1 to 0, differentiable by autograd.

    The same augmented ODE as ``adjoint_nll_grad`` (CNF.4), discretised with h = 1/K;
    its value and gradient converge at O(h⁴). A check route, not a fast one.

    Parameters
    ----------
    mlp, params : the MLP CNF; x : array, shape (n, d); steps : int, K
    base : distribution (N(0, I) by default)

    Returns
    -------
    float (or an autograd box when traced)

    Derivation: derivations/06-cnf.md (CNF.4)
    """
    x, base = _check(mlp, params, x, base)
    steps = as_positive_int(steps, "steps")
    if steps > MAX_RK4_STEPS:
        raise ValueError(f"steps: expected at most {MAX_RK4_STEPS} RK4 steps (autograd keeps every step on its "
                         f"tape), got {steps}")
    h = -1.0 / steps

    def f(z, t):
        return _field(mlp, params, z, t)

    z, ell = x, 0.0
    for k in range(steps):
        t = 1.0 + k * h
        v1, g1 = f(z, t)
        v2, g2 = f(z + 0.5 * h * v1, t + 0.5 * h)
        v3, g3 = f(z + 0.5 * h * v2, t + 0.5 * h)
        v4, g4 = f(z + h * v3, t + h)
        z = z + (h / 6.0) * (v1 + 2.0 * v2 + 2.0 * v3 + v4)
        ell = ell + (h / 6.0) * (g1 + 2.0 * g2 + 2.0 * g3 + g4)
    return -np.mean(base.log_prob(z) + ell)


def train_cnf_mle(mlp, params_or_rng, data, steps, rng, lr=1e-2, batch=128, callback=None,
                  rtol=1e-4, atol=1e-5, method="DOP853", base=None, max_nfe=MAX_NFE):
    """Fit an MLP CNF to data by maximum likelihood: Adam on adjoint gradients.

    Parameters
    ----------
    mlp : fm_ref.nn.MLP (out_dim = dim)
    params_or_rng : list of (W, b), or a numpy.random.Generator to initialise them
    data : array, shape (N, d)
    steps : int, Adam steps
    rng : numpy.random.Generator, draws the mini-batches (without replacement, each step)
    lr : float; batch : int ≤ N
    callback : callable, optional, ``callback(step, loss, params)`` after each step
    rtol, atol, method : the solver settings of both passes (loose by default: training
        needs gradients to a few digits only)
    base : distribution (N(0, I) by default)
    max_nfe : int, the cap on evaluations of each solve (see ``adjoint_nll_grad``)

    Returns
    -------
    params : list of (W, b)
    losses : ndarray, shape (steps,), the mini-batch NLL at each step (before its update)

    The wall time of the run is in ``train_cnf_mle.last_seconds`` after it returns.

    Derivation: derivations/06-cnf.md (CNF.13)
    """
    _check(mlp, None, onp.zeros((1, getattr(mlp, "in_dim", 1))), base, params_checked=False)
    if isinstance(params_or_rng, onp.random.Generator):
        params = mlp.init(params_or_rng)
    else:
        params = params_or_rng
    data, base = _check(mlp, params, data, base, name="data")
    steps = as_positive_int(steps, "steps")
    rng = as_generator(rng)
    batch = as_positive_int(batch, "batch")
    as_positive_int(max_nfe, "max_nfe")
    if batch > data.shape[0]:
        raise ValueError(f"batch: expected at most the {data.shape[0]} data points, got {batch}")
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a callable or None, got {type(callback).__name__}")

    def loss_and_grad(p, step):
        idx = rng.choice(data.shape[0], size=batch, replace=False)
        return adjoint_nll_grad(mlp, p, data[idx], rtol=rtol, atol=atol, method=method, base=base,
                                max_nfe=max_nfe)

    start = time.perf_counter()
    params, losses = adam(loss_and_grad, params, steps, lr=lr, callback=callback)
    train_cnf_mle.last_seconds = time.perf_counter() - start
    return params, losses


train_cnf_mle.last_seconds = None
