"""Divergence ∇·f = tr ∂f/∂x of a batched vector field f(x, t): exact and stochastic.

Three routes to the same trace, used against one another in the tests:

- ``jacobian`` / ``divergence``: exact, by reverse-mode autograd. One forward pass of
  the batch-summed field, then d vector–Jacobian products with the basis vectors e_i;
  row i of the per-sample Jacobian is the gradient of Σ_n f_i(x_n, t), because sample
  n's output depends on sample n's input only (the field acts pointwise).
- ``mlp_value_and_divergence`` / ``MLPTrace``: the closed-form trace of an ``MLP``, in
  plain NumPy for ODE inner loops: by cyclicity of the trace for one or two hidden
  layers (derivations/06-cnf.md (CNF.16)), by forward-mode tangents beyond (CNF.8).
- ``divergence_hutchinson``: the unbiased estimator εᵀ(∂f/∂x)ε with Rademacher or
  Gaussian probes ε, one VJP per probe.

A field is any callable ``f(x, t) -> array (n, d)`` with x of shape (n, d) and t a
float, written in ``autograd.numpy`` for the autograd routes. It must act pointwise
(row n of the output depends on row n of x only); a field that mixes samples has a
Jacobian of shape (n d, n d) and these functions would return the wrong thing.
"""
import warnings

import autograd.numpy as np
import numpy as onp
from autograd import make_vjp
from autograd.tracer import getval

from ._validate import as_float_array, as_generator, as_points, as_positive_int, as_time, finite_result

__all__ = [
    "jacobian",
    "divergence",
    "value_and_divergence",
    "divergence_hutchinson",
    "hutchinson_variance",
    "draw_probes",
    "mlp_value_and_divergence",
    "MLPTrace",
    "PROBES",
]

#: Probe distributions for Hutchinson's estimator, with their fourth moment E[ε⁴].
PROBES = {"rademacher": 1.0, "gaussian": 3.0}


def _check_field(f, x, t):
    """Validate (f, x, t) at a public entry point; t must be a float here."""
    if not callable(f):
        raise TypeError(f"f: expected a callable f(x, t) -> array (n, d), got {type(f).__name__}")
    x = as_points(x, "x")
    t = as_time(t)
    if onp.ndim(t) != 0:
        raise ValueError(f"t: expected a float (one time for the whole batch), got shape {onp.shape(t)}")
    return x, t


def _vjp_and_value(f, x, t, name="f"):
    # A field that does not depend on x (a constant, a pure function of t) is legitimate:
    # its VJPs are zero, which autograd returns, with a warning that would repeat at every
    # ODE evaluation; it is not passed on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Output seems independent of input", category=UserWarning)
        vjp, value = make_vjp(lambda z: f(z, t))(x)
    if onp.shape(value) != onp.shape(x):
        raise ValueError(f"{name}: expected {name}(x, t) of shape {onp.shape(x)} (the shape of x), "
                         f"got {onp.shape(value)}")
    raw = onp.asarray(getval(value))
    if raw.dtype.kind not in "fiu":  # a complex field's VJPs would silently keep the real part
        raise TypeError(f"{name}: expected real floating-point values, got dtype {raw.dtype}")
    if not onp.all(onp.isfinite(raw)):
        raise FloatingPointError(f"{name}: non-finite value at t = {t!r}")
    return vjp, value


def _rows(vjp, n, d):
    """The d VJPs with e_i: J[:, i, :] = ∂(Σ_n f_i)/∂x, shape (d, n, d)."""
    rows = []
    for i in range(d):
        e_i = onp.zeros((n, d))
        e_i[:, i] = 1.0
        rows.append(vjp(e_i))
    return rows


def jacobian(f, x, t):
    """The per-sample Jacobian J[n, i, j] = ∂f_i(x_n, t)/∂x_j, shape (n, d, d).

    Parameters
    ----------
    f : callable, f(x, t) -> array of shape (n, d), pointwise in the batch
    x : array, shape (n, d)
    t : float in [0, 1]

    Returns
    -------
    ndarray, shape (n, d, d)

    Derivation: derivations/06-cnf.md (CNF.7)
    """
    x, t = _check_field(f, x, t)
    n, d = x.shape
    vjp, _ = _vjp_and_value(f, x, t)
    return finite_result("f", "the Jacobian", lambda: onp.stack([onp.asarray(r) for r in _rows(vjp, n, d)], axis=1))


def value_and_divergence(f, x, t):
    """(f(x, t), ∇·f(x, t)) of shapes (n, d) and (n,): one forward pass, d VJPs.

    ∇·f(x_n) = Σ_i e_iᵀ J(x_n) e_i, where e_iᵀ J is a reverse pass of Σ_n f_i.

    Derivation: derivations/06-cnf.md (CNF.7)
    """
    x, t = _check_field(f, x, t)
    return finite_result("f", "the divergence", _value_and_divergence, f, x, t)


def _value_and_divergence(f, x, t, name="f"):
    """``value_and_divergence`` without validation (ODE inner loops); t a float; ``name``
    is the field's name in error messages."""
    n, d = x.shape
    vjp, value = _vjp_and_value(f, x, t, name)
    div = 0.0
    for i, row in enumerate(_rows(vjp, n, d)):
        div = div + row[:, i]
    return value, div


def divergence(f, x, t):
    """∇·f(x, t) = tr ∂f/∂x, shape (n,), exact (autograd, d reverse passes).

    Derivation: derivations/06-cnf.md (CNF.7)
    """
    return value_and_divergence(f, x, t)[1]


def draw_probes(rng, shape, probe="rademacher"):
    """Probe vectors ε for Hutchinson's estimator: i.i.d. entries, E ε = 0, E ε² = 1.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple, e.g. (n_probes, n, d)
    probe : {'rademacher', 'gaussian'}
        Rademacher: ±1 with probability ½ each (E ε⁴ = 1); Gaussian: N(0, 1) (E ε⁴ = 3).

    Returns
    -------
    ndarray of the given shape
    """
    rng = as_generator(rng)
    if probe not in PROBES:
        raise ValueError(f"probe: expected one of {sorted(PROBES)}, got {probe!r}")
    if probe == "gaussian":
        return rng.standard_normal(shape)
    return rng.choice(onp.array([-1.0, 1.0]), size=shape)


def divergence_hutchinson(f, x, t, rng=None, n_probes=None, probe="rademacher", eps=None):
    """Hutchinson's unbiased estimate of ∇·f: the mean over probes of εᵀ (∂f/∂x) ε, shape (n,).

    Parameters
    ----------
    f : callable, f(x, t) -> array of shape (n, d)
    x : array, shape (n, d)
    t : float in [0, 1]
    rng : numpy.random.Generator, optional
        Draws ``n_probes`` probes per point; needed unless ``eps`` is given.
    n_probes : int, optional
        Probes per point, 1 by default; with ``eps`` it is eps's K, and if given must
        equal it.
    probe : {'rademacher', 'gaussian'}
    eps : array, shape (K, n, d) with K ≥ 1, or (n, d), optional
        FIXED probes. Inside one ODE solve the probe must be held fixed, otherwise
        the right-hand side is a different function at every evaluation
        (derivations/06-cnf.md (CNF.9)); ``fm_ref.cnf.CNF.log_prob`` passes it here.

    Returns
    -------
    ndarray, shape (n,); its variance per probe is given by ``hutchinson_variance``.

    Derivation: derivations/06-cnf.md (CNF.9)
    """
    x, t = _check_field(f, x, t)
    eps = _probes(x, rng, n_probes, probe, eps)
    return finite_result("f", "the divergence estimate", _divergence_hutchinson, f, x, t, eps)[1]


def _probes(x, rng, n_probes, probe, eps):
    """Validate or draw the probes; returns shape (n_probes, n, d)."""
    if n_probes is not None:
        n_probes = as_positive_int(n_probes, "n_probes")
    if eps is None:
        if rng is None:
            raise TypeError("rng: expected a numpy.random.Generator to draw probes (or pass eps), got None")
        return draw_probes(rng, (n_probes or 1,) + x.shape, probe)
    eps = as_float_array(eps, "eps")
    if eps.shape == x.shape:
        eps = eps[None]
    if eps.ndim != 3 or eps.shape[1:] != x.shape or eps.shape[0] < 1:
        raise ValueError(f"eps: expected shape (K, {x.shape[0]}, {x.shape[1]}) with K >= 1, or {x.shape}, "
                         f"got {eps.shape}")
    if n_probes is not None and n_probes != eps.shape[0]:
        raise ValueError(f"n_probes: expected {eps.shape[0]}, the number of probes in eps, or None; got {n_probes}")
    return eps


def _divergence_hutchinson(f, x, t, eps, name="f"):
    """(f(x, t), mean_k ε_kᵀ J ε_k) without validation; eps of shape (K, n, d)."""
    vjp, value = _vjp_and_value(f, x, t, name)
    est = 0.0
    for e in eps:
        est = est + np.sum(vjp(e) * e, axis=1)
    return value, est / eps.shape[0]


def hutchinson_variance(A, probe="rademacher"):
    """Var[εᵀ A ε] for one probe, per matrix: ‖A‖_F² + tr(A²) + (E ε⁴ − 3) Σ_i A_ii².

    Gaussian probes: ‖A‖_F² + tr(A²) = 2‖S‖_F², S = (A + Aᵀ)/2.
    Rademacher probes: ‖A‖_F² + tr(A²) − 2 Σ_i A_ii² = 2 Σ_{i≠j} S_ij².

    Parameters
    ----------
    A : array, shape (n, d, d) or (d, d)
    probe : {'rademacher', 'gaussian'}

    Returns
    -------
    ndarray, shape (n,) (or a float for one matrix)

    Derivation: derivations/06-cnf.md (CNF.10)
    """
    if probe not in PROBES:
        raise ValueError(f"probe: expected one of {sorted(PROBES)}, got {probe!r}")
    A = as_float_array(A, "A")
    if A.ndim not in (2, 3) or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A: expected square matrices of shape (n, d, d) or (d, d), got {A.shape}")
    frob = onp.sum(A * A, axis=(-2, -1))
    tr_sq = onp.einsum("...ij,...ji->...", A, A)
    diag_sq = onp.sum(onp.diagonal(A, axis1=-2, axis2=-1) ** 2, axis=-1)
    return frob + tr_sq + (PROBES[probe] - 3.0) * diag_sq


def mlp_value_and_divergence(mlp, params, x, t):
    """(v_θ(x, t), ∇·v_θ(x, t)) of an ``MLP``, shapes (n, d) and (n,), closed form.

    Validates, then evaluates ``MLPTrace`` (the trace without the Jacobian: by cyclicity
    for one or two hidden layers, forward-mode tangents beyond). Plain NumPy (not for
    autograd); the autograd-differentiable version is ``MLP.value_and_divergence``
    (forward-mode tangents at every depth).

    Parameters
    ----------
    mlp : fm_ref.nn.MLP with out_dim = in_dim = dim
    params : list of (W, b)
    x : array, shape (n, d)
    t : float in [0, 1]

    Derivation: derivations/06-cnf.md (CNF.8), (CNF.16)
    """
    from .nn import MLP

    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp: expected an fm_ref.nn.MLP, got {type(mlp).__name__}")
    if mlp.out_dim != mlp.in_dim:
        raise ValueError(f"mlp: the divergence needs out_dim == in_dim, got {mlp.out_dim} and {mlp.in_dim}")
    mlp.check_params(params)
    x = as_points(x, "x", dim=mlp.in_dim)
    t = as_time(t)
    if onp.ndim(t) != 0:
        raise ValueError(f"t: expected a float, got shape {onp.shape(t)}")
    return _mlp_value_and_divergence(mlp, params, x, t)


def _time_features(mlp, t):
    """[t, sin 2πkt, cos 2πkt] for k = 1..K, shape (1 + 2K,), for a float t."""
    if not mlp.time_features:
        return onp.array([t])
    k = 2.0 * onp.pi * onp.arange(1, mlp.time_features + 1)
    return onp.concatenate([[t], onp.sin(k * t), onp.cos(k * t)])


def _tanh_and_derivative(b, dphi=None):
    """b ← tanh(a) and dphi ← 1 − tanh²(a) in place (dphi skipped if None), given b = −2a.

    tanh(a) = 2/(1 + e^{−2a}) − 1: one exp instead of libm's tanh (about twice as fast
    on NumPy's float64 loops), absolute error ≤ 2 ulp(1) ≈ 4.4e-16 (tests/test_divergence.py);
    the relative error near a = 0 is larger, which a hidden unit (used as h W) never
    sees. The caller passes −2a, not a: ``MLPTrace`` folds the factor −2 into its copy of
    the weights (exact: a power of two). Far in the tails the intermediate values leave
    the normal range on purpose: for a < −354, e^{−2a} overflows to inf and 2/(1 + inf)
    − 1 = −1 exactly; for a > 354, e^{−2a} underflows towards 0 and the result is 1
    exactly; just above a = −355, 2/(1 + e^{−2a}) is subnormal. These are the intended
    limits, so overflow and underflow are not reported here, whatever the caller's
    ``numpy.errstate`` (invalid operations still are: a NaN input stays NaN).
    """
    with onp.errstate(over="ignore", under="ignore"):
        onp.exp(b, out=b)
        b += 1.0
        onp.divide(2.0, b, out=b)
        b -= 1.0
    if dphi is not None:
        onp.multiply(b, b, out=dphi)
        onp.subtract(1.0, dphi, out=dphi)
    return b, dphi


class MLPTrace:
    """(x, t) -> (v_θ(x, t), ∇·v_θ(x, t)) of an ``MLP`` in closed form, with reused work arrays.

    The trace by the cyclic identity tr(AB) = tr(BA) (derivations/06-cnf.md (CNF.16)),
    whose cost does not grow with d:

    - one hidden layer: ∇·v = φ'(a₁) · c with c_k = Σ_i W₁[i, k] W₂[k, i] (i ≤ d), fixed per θ;
    - two hidden layers: ∇·v = Σ_kl φ'(a₁)_k M_kl φ'(a₂)_l with M = W₂ ⊙ (W₁[:d]ᵀ W₃ᵀ),
      one (n, h₁) @ (h₁, h₂) product per evaluation;
    - three or more: the forward-mode tangents T_ℓ = ∂h_ℓ/∂x of CNF.8, stored as
      (d, n, h_ℓ) arrays so that each layer is one (d n, h) @ (h, h') product, and
      ∇·v = Σ_i T_{L−1}[i] W_L[:, i].

    ``value(x, t)`` is the forward pass alone (v, a fresh array), for the push-forward.
    Work arrays are allocated once per batch size and reused (no fresh pages for every
    temporary in an ODE right-hand side); those of the trace only when the trace is
    asked for. tanh uses ``_tanh_and_derivative`` on −2a_ℓ, computed with a copy of the
    hidden layers' weights scaled by −2.

    The arrays ``__call__`` returns are views of the work arrays, overwritten by the next
    call: copy them to keep them. One instance per thread. No validation (ODE inner
    loops); the validated entry point is ``mlp_value_and_divergence``. θ is copied here,
    once: later changes to the caller's arrays do not reach the instance.

    Parameters
    ----------
    mlp : fm_ref.nn.MLP with out_dim = in_dim = dim
    params : list of (W, b), float64 arrays

    Derivation: derivations/06-cnf.md (CNF.8), (CNF.16)
    """

    def __init__(self, mlp, params):
        self.mlp = mlp
        self.params = [(onp.array(W, dtype=onp.float64), onp.array(b, dtype=onp.float64)) for W, b in params]
        params = self.params
        self.tanh = mlp.activation == "tanh"
        # the weights that make the pre-activations: −2 W for tanh (see _tanh_and_derivative)
        scale = -2.0 if self.tanh else 1.0
        self.pre = [(scale * W, scale * b) for W, b in params[:-1]]
        self.n_forward = self.n_trace = None
        d = mlp.in_dim
        W_in, W_out = params[0][0][:d], params[-1][0]
        if len(params) == 2:  # c_k = Σ_i W₁[i, k] W₂[k, i]
            self.coupling = onp.sum(W_in.T * W_out, axis=1)
        elif len(params) == 3:  # M = W₂ ⊙ (W₁[:d]ᵀ W₃ᵀ)
            self.coupling = params[1][0] * (W_in.T @ W_out.T)
        else:
            self.coupling = None

    def _widths(self):
        return [W.shape[1] for W, _ in self.params[:-1]]

    def _allocate_forward(self, n):
        if n != self.n_forward:
            self.n_forward = n
            self.h = [onp.empty((n, w)) for w in self._widths()]

    def _allocate_trace(self, n, d):
        self._allocate_forward(n)
        if n != self.n_trace:
            self.n_trace = n
            widths = self._widths()
            self.dphi = [onp.empty((n, w)) for w in widths]
            if len(self.params) > 3:
                self.tangent = [onp.empty((d, n, w)) for w in widths]
            elif len(self.params) == 3:
                self.pair = onp.empty((n, widths[1]))  # φ'(a₁) M
            self.v_out, self.div, self.tmp = onp.empty((n, d)), onp.empty(n), onp.empty(n)

    def _activate(self, l, derivative=True):
        """h[l] holds the pre-activation from ``self.pre`` on entry; on exit h[l] = φ(a_l)
        and, if ``derivative``, dphi[l] = φ'(a_l)."""
        h = self.h[l]
        if self.tanh:
            _tanh_and_derivative(h, self.dphi[l] if derivative else None)
        else:
            if derivative:
                self.dphi[l][...] = self.mlp.d_act(h)
            h[...] = self.mlp.act(h)

    def _forward(self, x, t, derivative):
        """h[0..L−2] for the batch x; with ``derivative`` also dphi and, beyond two hidden
        layers, the tangents T_ℓ of CNF.8. Work arrays allocated by the caller."""
        n, d = x.shape
        tangents = derivative and len(self.params) > 3
        W, b = self.pre[0]
        onp.matmul(x, W[:d], out=self.h[0])
        self.h[0] += _time_features(self.mlp, t) @ W[d:] + b
        self._activate(0, derivative)
        if tangents:  # T_1 = W_1[:d] ⊙ φ'(a_1)
            onp.multiply(self.params[0][0][:d][:, None, :], self.dphi[0][None], out=self.tangent[0])
        for l in range(1, len(self.params) - 1):
            W, b = self.pre[l]
            onp.matmul(self.h[l - 1], W, out=self.h[l])
            self.h[l] += b
            self._activate(l, derivative)
            if tangents:  # T_ℓ = (T_{ℓ−1} W_ℓ) ⊙ φ'(a_ℓ)
                T = self.tangent[l]
                onp.matmul(self.tangent[l - 1].reshape(d * n, -1), self.params[l][0], out=T.reshape(d * n, -1))
                T *= self.dphi[l][None]

    def value(self, x, t):
        """v_θ(x, t) alone, shape (n, d): the forward pass without φ' or the trace (the
        push-forward's right-hand side). A fresh array, not a work array."""
        n, d = x.shape
        W, b = self.params[-1]
        if len(self.params) == 1:
            return x @ W[:d] + (_time_features(self.mlp, t) @ W[d:] + b)
        self._allocate_forward(n)
        self._forward(x, t, derivative=False)
        return self.h[-1] @ W + b

    def __call__(self, x, t):
        n, d = x.shape
        params = self.params
        if len(params) == 1:  # affine: v = [x, t] W + b, ∇·v = tr W[:d]
            return self.value(x, t), onp.full(n, onp.trace(params[0][0][:d]))
        self._allocate_trace(n, d)
        self._forward(x, t, derivative=True)
        W, b = params[-1]
        if len(params) == 2:  # CNF.16, one hidden layer
            onp.matmul(self.dphi[0], self.coupling, out=self.div)
        elif len(params) == 3:  # CNF.16, two hidden layers
            onp.matmul(self.dphi[0], self.coupling, out=self.pair)
            onp.einsum("nk,nk->n", self.pair, self.dphi[1], out=self.div)
        else:  # CNF.8: Σ_i T_{L−1}[i] W_L[:, i]
            T = self.tangent[-1]
            onp.matmul(T[0], W[:, 0], out=self.div)
            for i in range(1, d):
                onp.matmul(T[i], W[:, i], out=self.tmp)
                self.div += self.tmp
        onp.matmul(self.h[-1], W, out=self.v_out)
        self.v_out += b
        return self.v_out, self.div


def _mlp_value_and_divergence(mlp, params, x, t):
    """``mlp_value_and_divergence`` without validation: fresh arrays (a new MLPTrace)."""
    return MLPTrace(mlp, params)(x, t)
