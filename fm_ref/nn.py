"""A small smooth multilayer perceptron v_θ(x, t): R^d × [0, 1] → R^d.

Parameters are a list of ``(W, b)`` tuples, W of shape (fan_in, fan_out), an
autograd-differentiable pytree; the network is the pure function
``mlp(params, x, t)``. The input is the concatenation [x, t] (plus, optionally,
sinusoidal time features sin(2πkt), cos(2πkt), k = 1..K); hidden layers apply a smooth
activation (tanh, softplus or swish), so divergences and second derivatives exist; the
output layer is affine.

Besides the forward pass, the network gives its Jacobian ∂v/∂x and its trace (the
divergence) in closed form by forward-mode propagation of the d input tangents
(derivations/06-cnf.md (CNF.8)): the cost is O(n d h²) for width h, against d
reverse passes for a generic autograd divergence.
"""
import threading

import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from ._validate import as_generator, as_points, as_positive_int, as_time, finite_result

__all__ = ["MLP", "ACTIVATIONS"]

#: per-thread work arrays of ``MLP._sq_error_and_grad`` (``MLP._work_arrays``)
_WORK = threading.local()


@primitive
def _tanh(a):
    """tanh, with the derivative 1 − tanh² (autograd's own, 1/cosh², overflows for |a| > 355)."""
    return onp.tanh(a)


defvjp(_tanh, lambda ans, a: lambda g: g * (1.0 - ans * ans))


def _sigmoid(a):
    # 1/(1 + e^{-a}) written with tanh: no overflow for large |a|, in value or derivative.
    return 0.5 * (1.0 + _tanh(0.5 * a))


def _swish(a):
    return a * _sigmoid(a)


def _d_swish(a):
    s = _sigmoid(a)
    return s + a * s * (1.0 - s)


def _softplus(a):
    return np.logaddexp(0.0, a)


def _d_softplus(a):
    return _sigmoid(a)


def _d_tanh(a):
    t = _tanh(a)
    return 1.0 - t * t


#: name -> (activation, its derivative)
ACTIVATIONS = {
    "tanh": (_tanh, _d_tanh),
    "softplus": (_softplus, _d_softplus),
    "swish": (_swish, _d_swish),
}


class MLP:
    """v_θ(x, t) with layer sizes (d + 1 + 2K) → hidden... → d.

    Parameters
    ----------
    dim : int
        d, the dimension of x and of the output.
    hidden : tuple of int
        Widths of the hidden layers, e.g. (64, 64).
    activation : {'tanh', 'softplus', 'swish'}
    time_features : int
        K ≥ 0 extra sinusoidal features of t (0: t enters by concatenation only).
    out_dim : int, optional
        Output dimension, d by default (coupling layers use other sizes).
    in_dim : int, optional
        Dimension of the x input, d by default.
    """

    def __init__(self, dim, hidden=(64, 64), activation="tanh", time_features=0, out_dim=None, in_dim=None):
        self.dim = as_positive_int(dim, "dim")
        self.in_dim = self.dim if in_dim is None else as_positive_int(in_dim, "in_dim")
        self.out_dim = self.dim if out_dim is None else as_positive_int(out_dim, "out_dim")
        hidden = tuple(hidden)
        for h in hidden:
            as_positive_int(h, "hidden")
        self.hidden = hidden
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.act, self.d_act = ACTIVATIONS[activation]
        self.time_features = as_positive_int(time_features, "time_features", minimum=0)
        self.sizes = (self.in_dim + 1 + 2 * self.time_features,) + hidden + (self.out_dim,)

    def __repr__(self):
        return (f"MLP(dim={self.dim}, hidden={self.hidden}, activation={self.activation!r}, "
                f"time_features={self.time_features})")

    def init(self, rng, scale=1.0):
        """Random parameters: W ~ N(0, scale²/fan_in), b ~ N(0, 0.1² scale²).

        Returns a list of (W, b), W of shape (fan_in, fan_out), b of shape (fan_out,).
        """
        rng = as_generator(rng)
        params = []
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            W = scale * rng.standard_normal((fan_in, fan_out)) / onp.sqrt(fan_in)
            b = 0.1 * scale * rng.standard_normal(fan_out)
            params.append((W, b))
        return params

    def check_params(self, params):
        """Raise unless ``params`` is a list of (W, b) of this network's sizes, with real
        floating-point, finite entries (a NaN weight would make every output NaN; a complex
        one a complex output): ``ValueError``/``TypeError`` naming ``params`` and the layer."""
        params = getval(params)
        if not isinstance(params, (list, tuple)) or len(params) != len(self.sizes) - 1:
            raise TypeError(f"params: expected a list of {len(self.sizes) - 1} (W, b) tuples")
        for i, (layer, fan_in, fan_out) in enumerate(zip(params, self.sizes[:-1], self.sizes[1:])):
            layer = getval(layer)
            if not isinstance(layer, (list, tuple)) or len(layer) != 2 \
                    or onp.shape(getval(layer[0])) != (fan_in, fan_out) or onp.shape(getval(layer[1])) != (fan_out,):
                raise ValueError(f"params: layer {i} expected W ({fan_in}, {fan_out}) and b ({fan_out},)")
            for name, value in zip("Wb", layer):
                raw = onp.asarray(getval(value))
                if raw.dtype.kind != "f":
                    raise TypeError(f"params: layer {i} {name} expected floating-point values, got dtype {raw.dtype}")
                if not onp.all(onp.isfinite(raw)):
                    raise ValueError(f"params: layer {i} {name} expected finite values, got NaN or inf")

    def features(self, x, t):
        """The network input [x, t, sin 2πkt, cos 2πkt], shape (n, d + 1 + 2K)."""
        n = x.shape[0]
        tcol = np.reshape(t, (-1, 1)) * np.ones((n, 1))
        cols = [x, tcol]
        if self.time_features:
            k = 2.0 * onp.pi * onp.arange(1, self.time_features + 1)
            cols += [np.sin(tcol * k), np.cos(tcol * k)]
        return np.concatenate(cols, axis=1)

    def _plain_features(self, x, t):
        """``features`` in plain NumPy for the hand-written passes (no autograd wrappers): the
        same products and the same sin/cos calls, so the same bits."""
        n, d = x.shape
        out = onp.empty((n, self.sizes[0]))
        out[:, :d] = x
        out[:, d] = t
        if self.time_features:
            k = 2.0 * onp.pi * onp.arange(1, self.time_features + 1)
            tk = out[:, d:d + 1] * k
            out[:, d + 1:d + 1 + self.time_features] = onp.sin(tk)
            out[:, d + 1 + self.time_features:] = onp.cos(tk)
        return out

    def _validate(self, params, x, t):
        self.check_params(params)
        x = as_points(x, "x", dim=self.in_dim)
        return x, as_time(t, n=x.shape[0])

    def apply(self, params, x, t):
        """The forward pass without validation (for inner loops); see ``__call__``."""
        h = self.features(x, t)
        for W, b in params[:-1]:
            h = self.act(h @ W + b)
        W, b = params[-1]
        return h @ W + b

    def __call__(self, params, x, t):
        """v_θ(x, t), shape (n, out_dim), for x of shape (n, d) and t a float or (n,)."""
        x, t = self._validate(params, x, t)
        return finite_result("params", "the network's output", self.apply, params, x, t)

    def value_and_jacobian(self, params, x, t):
        """(v_θ(x, t), ∂v/∂x) of shapes (n, out) and (n, out, d), in closed form.

        Forward mode: the tangent T_ℓ = ∂h_ℓ/∂x of shape (n, d, h_ℓ) obeys
        T_0 = [I_d, 0] (the time features do not depend on x) and T_ℓ = (T_{ℓ−1} W_ℓ) ⊙ φ'(a_ℓ); the Jacobian is
        (T_{L−1} W_L)ᵀ. Derivation: derivations/06-cnf.md (CNF.8)
        """
        x, t = self._validate(params, x, t)
        return finite_result("params", "the network's output or Jacobian", self._value_and_jacobian, params, x, t)

    def _value_and_tangent(self, params, x, t):
        """(h_{L−1}, T_{L−1}): the last hidden layer, shape (n, h), and its tangent ∂h/∂x, (n, d, h)."""
        h = self.features(x, t)
        # ∂(features)/∂x: the identity on the first d features, zero on the time features.
        tangent = np.ones((x.shape[0], 1, 1)) * onp.eye(self.in_dim, h.shape[1])[None]
        for W, b in params[:-1]:
            a = h @ W + b
            tangent = (tangent @ W) * self.d_act(a)[:, None, :]
            h = self.act(a)
        return h, tangent

    def _value_and_jacobian(self, params, x, t):
        h, tangent = self._value_and_tangent(params, x, t)
        W, b = params[-1]
        return h @ W + b, np.swapaxes(tangent @ W, 1, 2)

    def jacobian(self, params, x, t):
        """∂v_θ/∂x, shape (n, out, d).  Derivation: derivations/06-cnf.md (CNF.8)"""
        return self.value_and_jacobian(params, x, t)[1]

    def divergence(self, params, x, t):
        """∇·v_θ(x, t) = tr ∂v/∂x, shape (n,), in closed form (needs out_dim = dim).

        Derivation: derivations/06-cnf.md (CNF.8)
        """
        x, t = self._validate(params, x, t)
        return finite_result("params", "the network's divergence", self._value_and_divergence, params, x, t)[1]

    def _value_and_divergence(self, params, x, t):
        if self.out_dim != self.in_dim:
            raise ValueError("params: the divergence needs out_dim == dim")
        h, tangent = self._value_and_tangent(params, x, t)
        W, b = params[-1]
        # tr J = Σ_i Σ_k T[n, i, k] W[k, i]: the Jacobian is never formed, and the sum is
        # differentiable by autograd (which cannot differentiate einsum('nii->n')).
        return h @ W + b, np.sum(tangent * np.transpose(W)[None], axis=(1, 2))

    def value_and_divergence(self, params, x, t):
        """(v_θ(x, t), ∇·v_θ(x, t)), shapes (n, d) and (n,), one pass.

        Written in autograd.numpy and differentiable in ``params`` and ``x`` (the adjoint
        method needs the VJPs of ∇·v_θ). Forward-mode tangents at every depth (CNF.8). For
        ODE inner loops, ``fm_ref.divergence.MLPTrace`` evaluates the trace in plain NumPy
        with reused work arrays, by cyclicity (CNF.16) for one or two hidden layers: a
        different formula, so the two check each other.

        Derivation: derivations/06-cnf.md (CNF.8)
        """
        x, t = self._validate(params, x, t)
        return finite_result("params", "the network's output or divergence", self._value_and_divergence,
                             params, x, t)

    def sq_error_and_grad(self, params, x, t, target):
        """Mean squared error and its gradient in θ, by a hand-written backward pass.

        L(θ) = (1/n) Σ_i ‖v_θ(x_i, t_i) − target_i‖², the CFM regression loss on a
        batch. The backward pass is the chain rule through each layer: with
        g_L = (2/n)(v − target), ∂L/∂W_ℓ = h_{ℓ−1}ᵀ g_ℓ, ∂L/∂b_ℓ = Σ_i g_ℓ, and
        g_{ℓ−1} = (g_ℓ W_ℓᵀ) ⊙ φ'(a_{ℓ−1}). It is the fast path for training (no
        autograd tape); tests check it against ``autograd.grad``.

        Parameters
        ----------
        params : list of (W, b)
        x : array, shape (n, d)
        t : float or array, shape (n,)
        target : array, shape (n, out_dim)

        Returns
        -------
        loss : float
        grads : list of (dW, db), shaped like params

        Derivation: derivations/04-flow-matching.md (FM.2)
        """
        x, t = self._validate(params, x, t)
        target = as_points(target, "target", dim=self.out_dim, n=x.shape[0])
        return finite_result("params", "the squared error or its gradient", self._sq_error_and_grad,
                             params, x, t, target)

    def _d_act_given(self, a, h):
        """φ'(a), reusing h = φ(a) where that is exact and cheaper (tanh' = 1 − tanh²)."""
        if self.activation == "tanh":
            return 1.0 - h * h
        return self.d_act(a)

    def _forward_cached(self, params, x, t, work=None):
        """(output, cache): ``apply``'s forward pass keeping what ``_vjp`` needs, the input of
        every layer (features, then each hidden activation) and the hidden pre-activations.
        With ``work`` (from ``_work_arrays``) the hidden arrays are written into its buffers
        instead of fresh ones: the same operations in the same order, so the same bits.

        Derivation: derivations/07-normalizing-flows.md (NF.27)
        """
        # NumPy's tanh itself for tanh (the value of _tanh, without autograd's wrapper)
        tanh = self.activation == "tanh"
        act = onp.tanh if tanh else self.act
        h = self._plain_features(x, t)
        inputs, pre = [h], []
        for layer, (W, b) in enumerate(params[:-1]):
            if work is None:
                a = h @ W + b
                h = act(a)
            else:  # a = h W, then a += b: the rounding of h @ W + b
                a = onp.matmul(h, W, out=work["pre"][layer])
                a += b
                h = work["hidden"][layer]
                if tanh:
                    onp.tanh(a, out=h)
                else:
                    h[...] = act(a)
            pre.append(a)
            inputs.append(h)
        W, b = params[-1]
        return h @ W + b, (inputs, pre)

    def _vjp(self, params, cache, g, x_grad=True, work=None):
        """The vector–Jacobian product of ``apply``: for the upstream gradient g = ∂L/∂v of
        shape (n, out_dim), the parameter gradients [(∂L/∂W_ℓ, ∂L/∂b_ℓ)] and ∂L/∂x, shape
        (n, in_dim) (None when ``x_grad`` is false), by the chain rule
        ∂L/∂W_ℓ = h_{ℓ−1}ᵀ g_ℓ, ∂L/∂b_ℓ = Σ_i g_ℓ, g_{ℓ−1} = (g_ℓ W_ℓᵀ) ⊙ φ'(a_{ℓ−1}),
        ∂L/∂features = g_1 W_1ᵀ, whose first in_dim columns are ∂L/∂x (the time features
        do not depend on x). ``cache`` is from ``_forward_cached``; with ``work`` the
        hidden-layer gradients g_ℓ are written into its buffers (the same bits).

        Derivation: derivations/07-normalizing-flows.md (NF.27)
        """
        inputs, pre = cache
        grads = []
        for layer in range(len(params) - 1, -1, -1):
            W = params[layer][0]
            grads.append((inputs[layer].T @ g, g.sum(axis=0)))
            if layer > 0 and work is None:
                g = (g @ W.T) * self._d_act_given(pre[layer - 1], inputs[layer])
            elif layer > 0:  # (g Wᵀ) ⊙ φ'(a), each product rounded as above
                g = onp.matmul(g, W.T, out=work["grad"][layer - 1])
                if self.activation == "tanh":
                    h, d = inputs[layer], work["d_act"][layer - 1]
                    onp.multiply(h, h, out=d)
                    onp.subtract(1.0, d, out=d)
                else:
                    d = self.d_act(pre[layer - 1])
                g *= d
        gx = (g @ params[0][0][:self.in_dim].T) if x_grad else None
        return grads[::-1], gx

    def _work_arrays(self, n):
        """Buffers for one forward and backward pass on n points (pre-activations, hidden
        activations, hidden gradients, activation derivatives), kept per thread and reused
        while n and the widths stay the same. A training step would otherwise allocate a
        dozen (n, width) arrays and hand them back to the C allocator, which on a batch of
        256 × 64 (128 KiB, glibc's mmap threshold) costs as much as the arithmetic."""
        key = (n, self.hidden)
        held = getattr(_WORK, "arrays", None)
        if held is None or held[0] != key:
            held = key, {name: [onp.empty((n, width)) for width in self.hidden]
                         for name in ("pre", "hidden", "grad", "d_act")}
            _WORK.arrays = held
        return held[1]

    def _sq_error_and_grad(self, params, x, t, target):
        work = self._work_arrays(x.shape[0])  # nothing returned refers to it
        out, cache = self._forward_cached(params, x, t, work)
        resid = out - target
        n = x.shape[0]
        loss = float((resid * resid).sum() / n)
        grads, _ = self._vjp(params, cache, (2.0 / n) * resid, x_grad=False, work=work)
        return loss, grads
