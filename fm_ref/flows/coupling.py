"""Affine layers with triangular Jacobians: AffineCoupling (RealNVP) and MaskedAutoregressive (MADE).

Both are x = z ⊙ exp(s) + t with a log-scale s and a shift t that a network computes
from coordinates the map leaves alone (coupling) or from earlier coordinates in an
ordering (autoregressive). The Jacobian is triangular with diagonal exp(s), so
log|det ∂x/∂z| = Σ_i s_i; the log-scale is bounded, s = c·tanh(s_raw / c), so that
exp(s) ∈ [e^{−c}, e^{c}] whatever the network outputs.

Derivation: derivations/07-normalizing-flows.md (NF.8)
"""
import autograd.numpy as np
import numpy as onp

from .._validate import as_finite_float, as_generator, as_positive_int
from .layers import Layer, sech2, tanh
from ..nn import ACTIVATIONS, MLP

__all__ = ["AffineCoupling", "MaskedAutoregressive", "made_masks"]


def _bounded(raw, bound):
    """s = c·tanh(raw/c): |s| < c, and s ≈ raw for |raw| ≪ c.

    Derivation: derivations/07-normalizing-flows.md (NF.11)
    """
    return bound * tanh(raw / bound)


def _as_mask(mask, dim):
    if isinstance(mask, str):
        if mask not in ("even", "odd"):
            raise ValueError(f"mask: expected 'even', 'odd' or a 0/1 array of length {dim}, got {mask!r}")
        return (onp.arange(dim) % 2 == (0 if mask == "even" else 1)).astype(onp.float64)
    raw = onp.asarray(mask)
    if raw.shape != (dim,):
        raise ValueError(f"mask: expected a 0/1 array of shape ({dim},), got shape {raw.shape}")
    if raw.dtype.kind not in "biuf" or not onp.all((raw == 0) | (raw == 1)):
        raise ValueError(f"mask: expected entries 0 or 1, got {raw.tolist()}")
    raw = raw.astype(onp.float64)
    if raw.sum() == 0 or raw.sum() == dim:
        raise ValueError(f"mask: expected both kept (1) and transformed (0) coordinates, got {raw.tolist()}")
    return raw


class AffineCoupling(Layer):
    """RealNVP affine coupling (Dinh, Sohl-Dickstein & Bengio 2017).

    With the kept set A = {i: mask_i = 1} and the transformed set B = {i: mask_i = 0}:
    x_A = z_A,  x_B = z_B ⊙ exp(s(z_A)) + t(z_A),  log|det ∂x/∂z| = Σ_{i∈B} s_i(z_A)
    (derivations/07-normalizing-flows.md (NF.9)).
    The inverse is closed-form: z_A = x_A, z_B = (x_B − t(x_A)) ⊙ exp(−s(x_A))
    (derivations/07-normalizing-flows.md (NF.10)).

    (s_raw, t) = MLP(z_A, t=0.0) with the project's ``fm_ref.nn.MLP`` (in_dim = |A|,
    out_dim = 2|B|; the MLP's time input is held at the constant 0.0, which it sees
    as one more input coordinate); s = c·tanh(s_raw / c), c = ``scale_bound``.

    Parameters
    ----------
    dim : int, d ≥ 2
    mask : {'even', 'odd'} or array of 0/1, shape (d,)
        'even' keeps the even coordinates 0, 2, ...; 'odd' the odd ones. Alternate
        them in a stack so that every coordinate is transformed.
    hidden : tuple of int
    activation : {'tanh', 'softplus', 'swish'}
    scale_bound : float > 0

    Parameters (pytree): the MLP's list of (W, b). ``identity_params()`` is all zeros;
    ``init(rng)`` draws the hidden layers and sets the output layer to zero, so the
    layer starts as the identity (the zero initialisation of Kingma & Dhariwal 2018).

    Derivation: derivations/07-normalizing-flows.md (NF.8)
    """

    def __init__(self, dim, mask="even", hidden=(64, 64), activation="tanh", scale_bound=3.0):
        self.dim = as_positive_int(dim, "dim", minimum=2)
        self.mask = _as_mask(mask, self.dim)
        self.kept = onp.flatnonzero(self.mask == 1)
        self.changed = onp.flatnonzero(self.mask == 0)
        self.scale_bound = as_finite_float(scale_bound, "scale_bound", lo=0.0, lo_open=True)
        k = len(self.kept)
        self.net = MLP(k, hidden=hidden, activation=activation, in_dim=k, out_dim=2 * len(self.changed))
        # (|B|, d) selection matrix: scatters the |B| outputs into their coordinates, zeros on A.
        self._scatter = onp.eye(self.dim)[self.changed]

    def __repr__(self):
        return (f"AffineCoupling(dim={self.dim}, mask={self.mask.astype(int).tolist()}, "
                f"hidden={self.net.hidden}, scale_bound={self.scale_bound})")

    def identity_params(self):
        return [(onp.zeros((a, b)), onp.zeros(b)) for a, b in zip(self.net.sizes[:-1], self.net.sizes[1:])]

    def init(self, rng):
        params = self.net.init(as_generator(rng))
        W, b = params[-1]
        return params[:-1] + [(onp.zeros_like(W), onp.zeros_like(b))]

    def log_scale_and_shift(self, params, y):
        """(s, t), each shape (n, d), zero on the kept coordinates; y shape (n, d).

        Derivation: derivations/07-normalizing-flows.md (NF.8)
        """
        out = self.net.apply(params, y[:, self.kept], 0.0)
        k = len(self.changed)
        s = _bounded(out[:, :k], self.scale_bound)
        return s @ self._scatter, out[:, k:] @ self._scatter

    def _forward(self, params, z):
        s, t = self.log_scale_and_shift(params, z)
        return z * np.exp(s) + t, np.sum(s, axis=1)

    def _inverse(self, params, x):
        s, t = self.log_scale_and_shift(params, x)
        return (x - t) * np.exp(-s), -np.sum(s, axis=1)

    _BACKWARD_COVERS = ("_inverse", "log_scale_and_shift")

    def _inverse_cached(self, params, x):
        """``_inverse`` (NF.10) in plain NumPy on the transformed columns, keeping the network's
        cache, u = s_raw/c, e^{−s} and z_B for ``_backward``.

        Derivation: derivations/07-normalizing-flows.md (NF.27)
        """
        out, net_cache = self.net._forward_cached(params, x[:, self.kept], 0.0)
        k = len(self.changed)
        u = out[:, :k] / self.scale_bound
        s = self.scale_bound * onp.tanh(u)
        e = onp.exp(-s)
        z_b = (x[:, self.changed] - out[:, k:]) * e
        z = x.copy()
        z[:, self.changed] = z_b
        return z, -onp.sum(s, axis=1), (net_cache, u, e, z_b)

    def _backward(self, params, cache, gz, gl):
        """Backward of z_A = x_A, z_B = (x_B − t) ⊙ e^{−s}, log_det = −Σ_B s, s = c·tanh(u),
        u = s_raw/c, (s_raw, t) = MLP(x_A, 0):

        ∂L/∂x_B = gz_B ⊙ e^{−s};  ∂L/∂t = −∂L/∂x_B;  ∂L/∂s = −gz_B ⊙ z_B − gl;
        ∂L/∂s_raw = ∂L/∂s ⊙ sech²(u) (= 1 − tanh²(u), NF.11);  then the network's
        vector–Jacobian product gives its parameter gradients and g_A, and
        ∂L/∂x_A = gz_A + g_A.

        Derivation: derivations/07-normalizing-flows.md (NF.27)
        """
        net_cache, u, e, z_b = cache
        gz_b = gz[:, self.changed]
        gx_b = gz_b * e
        gs = -gz_b * z_b - gl[:, None]
        grads, gx_a = self.net._vjp(params, net_cache, onp.concatenate([gs * sech2(u), -gx_b], axis=1))
        gx = onp.empty_like(gz)
        gx[:, self.kept] = gz[:, self.kept] + gx_a
        gx[:, self.changed] = gx_b
        return grads, gx


def made_masks(degrees, hidden):
    """MADE connectivity masks (Germain et al. 2015) for inputs of the given degrees.

    Input i has degree deg_i ∈ {1..d}; hidden unit k of every layer has degree
    m_k = (k mod max(d − 1, 1)) + 1. A connection into a hidden unit is allowed when the
    source degree is ≤ m_k; into output i (of s_i and of t_i) when it is < deg_i. So
    output i depends only on inputs of smaller degree.

    Parameters
    ----------
    degrees : array of int, shape (d,)
    hidden : tuple of int

    Returns
    -------
    list of float arrays, shapes (d, h_1), ..., (h_L, 2d)

    Derivation: derivations/07-normalizing-flows.md (NF.12)
    """
    d = len(degrees)
    layer_degrees = [onp.asarray(degrees)]
    for h in hidden:
        layer_degrees.append(onp.arange(h) % max(d - 1, 1) + 1)
    masks = [(a[:, None] <= b[None, :]).astype(onp.float64) for a, b in zip(layer_degrees[:-1], layer_degrees[1:])]
    out_degrees = onp.concatenate([degrees, degrees])
    masks.append((layer_degrees[-1][:, None] < out_degrees[None, :]).astype(onp.float64))
    return masks


class MaskedAutoregressive(Layer):
    """Affine autoregressive layer with a MADE conditioner.

    With the ordering ``order`` (order[k] is the k-th coordinate), coordinate i has
    degree deg_i = (its position in ``order``) + 1, and s_i, t_i depend only on
    coordinates of smaller degree, "earlier" ones.

    - ``conditioner='z'`` (the default; inverse autoregressive, Kingma et al. 2016):
      x_i = z_i exp(s_i(z_<)) + t_i(z_<). Forward: one network pass. Inverse: the
      d-step recursion.
    - ``conditioner='x'`` (masked autoregressive flow, Papamakarios et al. 2017):
      x_i = z_i exp(s_i(x_<)) + t_i(x_<). Inverse (density evaluation): one pass.
      Forward (sampling): the d-step recursion.

    Either way ∂x/∂z is triangular in the ordering with diagonal exp(s_i), and
    log|det ∂x/∂z| = Σ_i s_i. The recursion starts from 0 and re-evaluates the network
    d times; after pass k every coordinate of degree ≤ k is exact.

    Parameters
    ----------
    dim : int
    hidden : tuple of int (widths ≥ d − 1 let every degree appear)
    order : sequence of int, a permutation of 0..d−1 (default 0, 1, ..., d−1)
    conditioner : {'z', 'x'}
    activation : {'tanh', 'softplus', 'swish'}
    scale_bound : float > 0, s = c·tanh(s_raw / c)

    Parameters (pytree): a list of (W, b), W of shape (fan_in, fan_out), sizes
    d → hidden → 2d (the first d outputs are s_raw, the last d are t); the masks
    ``self.masks`` multiply W. ``identity_params()`` is all zeros; ``init(rng)``
    draws the hidden layers and zeroes the output layer (the layer starts as the
    identity). For d = 1 there are no earlier coordinates: s and t are the output
    biases, an elementwise affine map.

    Derivation: derivations/07-normalizing-flows.md (NF.13)
    """

    def __init__(self, dim, hidden=(64, 64), order=None, conditioner="z", activation="tanh", scale_bound=3.0):
        self.dim = as_positive_int(dim, "dim")
        self.hidden = tuple(as_positive_int(h, "hidden") for h in hidden)
        order = onp.arange(self.dim) if order is None else onp.asarray(order)
        if order.ndim != 1 or order.dtype.kind not in "iu" or sorted(order.tolist()) != list(range(self.dim)):
            raise ValueError(f"order: expected a permutation of 0..{self.dim - 1}, got {order.tolist()}")
        self.order = order.astype(onp.intp)
        self.degrees = onp.argsort(self.order) + 1
        if conditioner not in ("z", "x"):
            raise ValueError(f"conditioner: expected 'z' or 'x', got {conditioner!r}")
        self.conditioner = conditioner
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        # tanh with an overflow-free derivative (autograd's 1/cosh² overflows for |a| > 355).
        self.act = tanh if activation == "tanh" else ACTIVATIONS[activation][0]
        self.scale_bound = as_finite_float(scale_bound, "scale_bound", lo=0.0, lo_open=True)
        self.sizes = (self.dim,) + self.hidden + (2 * self.dim,)
        self.masks = made_masks(self.degrees, self.hidden)

    def __repr__(self):
        return (f"MaskedAutoregressive(dim={self.dim}, hidden={self.hidden}, order={self.order.tolist()}, "
                f"conditioner={self.conditioner!r})")

    def identity_params(self):
        return [(onp.zeros((a, b)), onp.zeros(b)) for a, b in zip(self.sizes[:-1], self.sizes[1:])]

    def init(self, rng):
        rng = as_generator(rng)
        params = [(rng.standard_normal((a, b)) / onp.sqrt(a), 0.1 * rng.standard_normal(b))
                  for a, b in zip(self.sizes[:-2], self.sizes[1:-1])]
        return params + [(onp.zeros((self.sizes[-2], self.sizes[-1])), onp.zeros(self.sizes[-1]))]

    def log_scale_and_shift(self, params, y):
        """(s, t), each shape (n, d): s_i, t_i depend on the y_j of smaller degree only.

        Derivation: derivations/07-normalizing-flows.md (NF.12)
        """
        h = y
        for (W, b), M in zip(params[:-1], self.masks[:-1]):
            h = self.act(h @ (W * M) + b)
        W, b = params[-1]
        out = h @ (W * self.masks[-1]) + b
        return _bounded(out[:, :self.dim], self.scale_bound), out[:, self.dim:]

    def _recursion(self, params, known, step):
        """Solve u = step(known, s(u), t(u)) by d passes from u = 0; returns (u, s).

        Derivation: derivations/07-normalizing-flows.md (NF.14)
        """
        u = np.zeros(known.shape)
        for k in range(1, self.dim + 1):
            s, t = self.log_scale_and_shift(params, u)
            # Keep only the coordinates already exact (degree ≤ k); the others would be
            # garbage that no exact output reads, and could only make the network's inputs large.
            u = step(known, s, t) * (self.degrees <= k)
        return u, s

    def _forward(self, params, z):
        if self.conditioner == "z":
            s, t = self.log_scale_and_shift(params, z)
            return z * np.exp(s) + t, np.sum(s, axis=1)
        x, s = self._recursion(params, z, lambda z_, s_, t_: z_ * np.exp(s_) + t_)
        return x, np.sum(s, axis=1)

    def _inverse(self, params, x):
        if self.conditioner == "x":
            s, t = self.log_scale_and_shift(params, x)
            return (x - t) * np.exp(-s), -np.sum(s, axis=1)
        z, s = self._recursion(params, x, lambda x_, s_, t_: (x_ - t_) * np.exp(-s_))
        return z, -np.sum(s, axis=1)
