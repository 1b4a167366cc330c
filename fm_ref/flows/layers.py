"""The flow-layer contract, and the volume-simple layers: ElementwiseAffine, Permutation, Reverse.

A layer is an invertible map x = f(z) of R^d, built from its static configuration
(dimension, masks, widths) and applied to parameters passed in:

- ``init(rng) -> params``: a pytree (lists/tuples of float64 arrays) that autograd can
  differentiate and ``fm_ref.train.adam`` can update;
- ``identity_params() -> params``: parameters for which f is the identity with
  log_det = 0 (zeros for most layers; see each class);
- ``forward_and_log_det(params, z) -> (x, log_det)``: x = f(z), shape (n, d), and
  log_det = log|det ∂x/∂z|, shape (n,);
- ``inverse_and_log_det(params, x) -> (z, log_det)``: z = f⁻¹(x), and
  log_det = log|det ∂z/∂x| = −log|det ∂x/∂z| at z = f⁻¹(x).

Everything else (densities, sampling, composition) is derived from those two methods
by ``fm_ref.flows.Flow``. The public methods validate their arguments; the underscored
``_forward`` / ``_inverse`` do the arithmetic in ``autograd.numpy`` and are what
``Flow`` chains.

Derivation: derivations/07-normalizing-flows.md (NF.1)
"""
import autograd.numpy as np
import numpy as onp
from autograd.extend import defvjp, primitive
from autograd.tracer import getval

from .._stats import mean_std
from .._validate import as_generator, as_points, as_positive_int

__all__ = ["Layer", "ElementwiseAffine", "Permutation", "Reverse", "check_tree", "tanh", "sech2"]


def sech2(a):
    """sech²(a) = 4e^{−2|a|}/(1 + e^{−2|a|})², accurate for all a (no overflow of cosh,
    and no cancellation in 1 − tanh² for large |a|)."""
    e = np.exp(-2.0 * np.abs(a))
    return 4.0 * e / (1.0 + e) ** 2


@primitive
def tanh(a):
    """tanh with the derivative sech²(a) in the stable form above (autograd's own
    derivative 1/cosh² overflows for |a| > 355)."""
    return onp.tanh(a)


defvjp(tanh, lambda ans, a: lambda g: g * sech2(a))


def check_tree(params, template, name="params", where=""):
    """Raise unless ``params`` has the nesting and leaf shapes of ``template``, with
    finite floating-point leaves (autograd boxes are looked through)."""
    if isinstance(template, (list, tuple)):
        plain = getval(params)  # an autograd SequenceBox when differentiating the whole list
        if not isinstance(plain, (list, tuple)) or len(plain) != len(template):
            got = f"{type(plain).__name__} of length {len(plain)}" if isinstance(plain, (list, tuple)) \
                else type(plain).__name__
            raise TypeError(f"{name}: expected a list/tuple of {len(template)} entries{where}, got {got}")
        for i, t in enumerate(template):
            check_tree(params[i], t, name, f"{where}[{i}]")
        return
    raw = onp.asarray(getval(params))
    if raw.dtype.kind != "f":
        raise TypeError(f"{name}{where}: expected floating-point values, got dtype {raw.dtype}")
    if raw.shape != onp.shape(template):
        raise ValueError(f"{name}{where}: expected shape {onp.shape(template)}, got {raw.shape}")
    if not onp.all(onp.isfinite(raw)):
        raise ValueError(f"{name}{where}: expected finite values, got NaN or inf")


def _check_output(layer, what, value, log_det):
    """Solver/overflow failures raise instead of returning inf or NaN."""
    if not (onp.all(onp.isfinite(getval(value))) and onp.all(onp.isfinite(getval(log_det)))):
        raise FloatingPointError(
            f"{type(layer).__name__}.{what}: the result is not finite (overflow); "
            "the parameters or inputs are too large for float64"
        )


def _defining_class(cls, name):
    """The class in ``cls``'s MRO whose body defines the attribute ``name``."""
    return next(c for c in cls.__mro__ if name in vars(c))


class Layer:
    """Base class of the flow layers; subclasses define ``_forward``, ``_inverse``,
    ``identity_params`` and ``init``, and set ``self.dim``.

    Derivation: derivations/07-normalizing-flows.md (NF.2)
    """

    dim = None

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim})"

    def init(self, rng):
        """Parameters for training (see the subclass); the default is the identity."""
        as_generator(rng)
        return self.identity_params()

    def identity_params(self):  # pragma: no cover - every subclass overrides
        raise NotImplementedError

    def check_params(self, params):
        """Raise unless ``params`` has this layer's structure, shapes and finite values."""
        check_tree(params, self.identity_params())

    # ---- the hand-written backward pass of the inverse (derivations/07-normalizing-flows.md (NF.27))
    #: The methods whose arithmetic ``_inverse_cached`` and ``_backward`` reproduce: a subclass
    #: that overrides one of them (and not ``_backward``) has no hand-written backward.
    _BACKWARD_COVERS = ("_inverse",)

    def _has_hand_backward(self):
        """Whether ``_inverse_cached``/``_backward`` are this layer's own: the class that
        defines ``_backward`` (not this base class) also defines, or inherits, every method
        in ``_BACKWARD_COVERS``, none of them overridden below it nor on the instance."""
        cls = type(self)
        owner = _defining_class(cls, "_backward")
        covers = self._BACKWARD_COVERS
        return (owner is not Layer and not any(name in vars(self) for name in covers)
                and all(_defining_class(cls, name) in owner.__mro__ for name in covers))

    def _inverse_cached(self, params, x):  # pragma: no cover - only called where _has_hand_backward
        """(z, log_det, cache): ``_inverse`` in plain NumPy, keeping what ``_backward`` needs."""
        raise NotImplementedError

    def _backward(self, params, cache, gz, gl):  # pragma: no cover - only called where _has_hand_backward
        """(parameter gradients shaped like params, ∂L/∂x of shape (n, d)) for the upstream
        gradients gz = ∂L/∂z, shape (n, d), and gl = ∂L/∂log_det, shape (n,), of the inverse
        pass (z, log_det) = f⁻¹(x) cached by ``_inverse_cached``.

        Derivation: derivations/07-normalizing-flows.md (NF.27)
        """
        raise NotImplementedError

    def forward_and_log_det(self, params, z):
        """x = f(z) and log|det ∂x/∂z|.

        Parameters
        ----------
        params : pytree, as returned by ``init``
        z : array, shape (n, d)

        Returns
        -------
        x : array, shape (n, d)
        log_det : array, shape (n,)

        Derivation: derivations/07-normalizing-flows.md (NF.2)
        """
        self.check_params(params)
        z = as_points(z, "z", dim=self.dim)
        with onp.errstate(over="ignore", invalid="ignore", divide="ignore"):  # reported by name below
            x, log_det = self._forward(params, z)
        _check_output(self, "forward_and_log_det", x, log_det)
        return x, log_det

    def inverse_and_log_det(self, params, x):
        """z = f⁻¹(x) and log|det ∂z/∂x| = −log|det ∂x/∂z|.

        Parameters
        ----------
        params : pytree, as returned by ``init``
        x : array, shape (n, d)

        Returns
        -------
        z : array, shape (n, d)
        log_det : array, shape (n,)

        Derivation: derivations/07-normalizing-flows.md (NF.2)
        """
        self.check_params(params)
        x = as_points(x, "x", dim=self.dim)
        with onp.errstate(over="ignore", invalid="ignore", divide="ignore"):  # reported by name below
            z, log_det = self._inverse(params, x)
        _check_output(self, "inverse_and_log_det", z, log_det)
        return z, log_det


class ElementwiseAffine(Layer):
    """x = z ⊙ exp(s) + b, an ActNorm-like layer (Kingma & Dhariwal 2018).

    Parameters (pytree): ``(s, b)``, both shape (d,); zeros are the identity.
    log|det ∂x/∂z| = Σ_i s_i for every point; the inverse is z = (x − b) ⊙ exp(−s).
    ``data_init(x)`` gives the data-dependent initialisation: the parameters for which
    the inverse maps the batch x to zero mean and unit variance per coordinate.

    Derivation: derivations/07-normalizing-flows.md (NF.6)
    """

    def __init__(self, dim):
        self.dim = as_positive_int(dim, "dim")

    def identity_params(self):
        return (onp.zeros(self.dim), onp.zeros(self.dim))

    def init(self, rng):
        """The identity (s = b = 0); use ``data_init`` for the data-dependent start."""
        as_generator(rng)
        return self.identity_params()

    def data_init(self, x):
        """(s, b) = (log std(x), mean(x)) per coordinate, so that f⁻¹ standardises x.

        Parameters
        ----------
        x : array, shape (n, d), n ≥ 2 with no constant coordinate

        Derivation: derivations/07-normalizing-flows.md (NF.6)
        """
        x = as_points(x, "x", dim=self.dim)
        if x.shape[0] < 2:
            raise ValueError(f"x: data_init needs at least 2 points, got shape {x.shape}")
        mean, std = mean_std(x, axis=0)  # no overflow for |x| up to float64's limit
        if onp.any(std <= 0.0):
            raise ValueError("x: data_init needs every coordinate to vary, got a constant coordinate")
        return (onp.log(std), mean)

    def _forward(self, params, z):
        s, b = params
        return z * np.exp(s) + b, np.sum(s) * np.ones(z.shape[0])

    def _inverse(self, params, x):
        s, b = params
        return (x - b) * np.exp(-s), -np.sum(s) * np.ones(x.shape[0])

    def _inverse_cached(self, params, x):
        s, b = params
        e = onp.exp(-s)
        z = (x - b) * e
        return z, onp.full(x.shape[0], -onp.sum(s)), (z, e)

    def _backward(self, params, cache, gz, gl):
        """z = (x − b) ⊙ e^{−s}, log_det = −Σ_i s_i: ∂L/∂x = gz ⊙ e^{−s},
        ∂L/∂b = −Σ_n gz ⊙ e^{−s}, ∂L/∂s = −Σ_n gz ⊙ z − Σ_n gl.

        Derivation: derivations/07-normalizing-flows.md (NF.27)
        """
        z, e = cache
        gx = gz * e
        return (-onp.sum(gz * z, axis=0) - onp.sum(gl), -onp.sum(gx, axis=0)), gx


class Permutation(Layer):
    """x_i = z_{perm[i]}: a fixed reordering of the coordinates; no parameters.

    Parameters (pytree): the empty tuple ``()``. |det| = 1, so log_det = 0; the inverse
    applies the inverse permutation.

    Parameters
    ----------
    dim : int
    perm : sequence of int, a permutation of 0..d−1

    Derivation: derivations/07-normalizing-flows.md (NF.7)
    """

    def __init__(self, dim, perm):
        self.dim = as_positive_int(dim, "dim")
        raw = onp.asarray(perm)
        if raw.ndim != 1 or raw.dtype.kind not in "iu":
            raise TypeError(f"perm: expected a 1-D sequence of integers, got {raw.dtype} of shape {raw.shape}")
        if raw.shape[0] != self.dim or sorted(raw.tolist()) != list(range(self.dim)):
            raise ValueError(f"perm: expected a permutation of 0..{self.dim - 1}, got {raw.tolist()}")
        self.perm = raw.astype(onp.intp)
        self.inverse_perm = onp.argsort(self.perm)

    @classmethod
    def random(cls, dim, rng):
        """A uniformly random permutation drawn from ``rng``."""
        dim = as_positive_int(dim, "dim")
        return cls(dim, as_generator(rng).permutation(dim))

    def __repr__(self):
        return f"{type(self).__name__}(dim={self.dim}, perm={self.perm.tolist()})"

    def identity_params(self):
        return ()

    def _forward(self, params, z):
        return z[:, self.perm], np.zeros(z.shape[0])

    def _inverse(self, params, x):
        return x[:, self.inverse_perm], np.zeros(x.shape[0])

    def _inverse_cached(self, params, x):
        return x[:, self.inverse_perm], onp.zeros(x.shape[0]), None

    def _backward(self, params, cache, gz, gl):
        """z_j = x_{π⁻¹(j)}: ∂L/∂x_i = gz_{π(i)}; no parameters, and log_det = 0 ignores gl.

        Derivation: derivations/07-normalizing-flows.md (NF.27)
        """
        return (), gz[:, self.perm]


class Reverse(Permutation):
    """x_i = z_{d−1−i}: the coordinates in reverse order (a Permutation).

    Derivation: derivations/07-normalizing-flows.md (NF.7)
    """

    def __init__(self, dim):
        dim = as_positive_int(dim, "dim")
        super().__init__(dim, onp.arange(dim)[::-1])

    def __repr__(self):
        return f"Reverse(dim={self.dim})"
