"""Input validation shared by the public entry points.

Every public function of fm_ref checks its arguments here, at entry, and raises a
``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong shape, value or
range) whose message names the argument, says what was expected and what came.

The checks accept autograd's traced arrays (``ArrayBox``): tests differentiate the
public functions with autograd, so validation looks at the underlying value and
passes the traced object through unchanged.
"""
import numbers

import numpy as onp
from autograd.tracer import getval, isbox

__all__ = [
    "as_float_array",
    "as_points",
    "as_time",
    "as_positive_int",
    "as_generator",
    "as_finite_float",
    "check_same_shape",
    "finite_result",
]


def as_float_array(value, name):
    """Return ``value`` as float64 (traced arrays pass through), rejecting bad dtypes.

    Floating-point input of any width is converted to float64. Integer, boolean,
    complex and object arrays raise ``TypeError`` (DESIGN.md): an integer array in a
    float64 oracle is almost always a mistake. A plain Python ``int`` scalar is
    accepted as a number (``t=0`` means ``t=0.0``).
    """
    if value is None:
        raise TypeError(f"{name}: expected an array of floats, got None")
    plain = getval(value)
    if isinstance(plain, bool) or isinstance(plain, onp.bool_):
        raise TypeError(f"{name}: expected floating-point values, got a bool")
    try:
        raw = onp.asarray(plain)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name}: expected an array of floats, got {type(plain).__name__} ({exc})") from None
    scalar_int = isinstance(plain, numbers.Integral)
    if not (raw.dtype.kind == "f" or (scalar_int and raw.dtype.kind in "iu")):
        raise TypeError(f"{name}: expected floating-point values, got dtype {raw.dtype}")
    if not onp.all(onp.isfinite(raw)):
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    if isbox(value):
        return value
    return onp.asarray(raw, dtype=onp.float64)


def as_points(x, name="x", dim=None, n=None):
    """Validate a batch of points, shape ``(n, d)``, float64 and finite.

    Parameters
    ----------
    x : array_like, shape (n, d)
    name : str
        The argument's name, used in error messages.
    dim : int, optional
        Required dimension d.
    n : int, optional
        Required batch size n.
    """
    x = as_float_array(x, name)
    shape = onp.shape(getval(x))
    if len(shape) != 2:
        raise ValueError(
            f"{name}: expected a 2-D array of shape (n, d) (a single point is (1, d)), "
            f"got shape {shape}"
        )
    if shape[0] < 1:
        raise ValueError(f"{name}: expected at least one point, got shape {shape}")
    if dim is not None and shape[1] != dim:
        raise ValueError(f"{name}: expected dimension d = {dim}, got shape {shape}")
    if n is not None and shape[0] != n:
        raise ValueError(f"{name}: expected {n} points (shape ({n}, {shape[1]})), got shape {shape}")
    return x


def as_time(t, n=None, name="t", lo=0.0, hi=1.0):
    """Validate a time: a float, or an array of shape ``(n,)``, in ``[lo, hi]``.

    Returns the float (or traced scalar) unchanged, or a float64 array of shape (n,).
    A time array of the wrong length raises; it is never broadcast silently.
    """
    t = as_float_array(t, name)
    raw = onp.asarray(getval(t))
    if raw.ndim == 0:
        pass
    elif raw.ndim == 1:
        if n is not None and raw.shape[0] != n:
            raise ValueError(
                f"{name}: expected a float or an array of shape ({n},) to match the {n} points, "
                f"got shape {raw.shape}"
            )
    else:
        raise ValueError(f"{name}: expected a float or an array of shape (n,), got shape {raw.shape}")
    if onp.any(raw < lo) or onp.any(raw > hi):
        bad = raw[(raw < lo) | (raw > hi)] if raw.ndim else raw
        raise ValueError(f"{name}: expected values in [{lo}, {hi}], got {float(onp.ravel(bad)[0])!r}")
    if raw.ndim == 0 and not isbox(t):
        return float(raw)
    return t


def as_positive_int(value, name, minimum=1):
    """Validate an integer count (``bool`` is rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return int(value)


def as_finite_float(value, name, lo=None, hi=None, lo_open=False, hi_open=False):
    """Validate a real scalar, optionally in a range; returns a Python float."""
    plain = getval(value)
    if isinstance(plain, (bool, onp.bool_)) or not isinstance(plain, (numbers.Real, onp.ndarray)) \
            or onp.ndim(plain) != 0 or onp.asarray(plain).dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected a real number, got {type(plain).__name__}")
    v = float(plain)
    if not onp.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name}: expected a value {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name}: expected a value {'<' if hi_open else '<='} {hi}, got {v}")
    return v if not isbox(value) else value


def as_generator(rng, name="rng"):
    """Require an explicit ``numpy.random.Generator`` (no global RNG, no bare seeds)."""
    if not isinstance(rng, onp.random.Generator):
        raise TypeError(
            f"{name}: expected a numpy.random.Generator (e.g. numpy.random.default_rng(0)), "
            f"got {type(rng).__name__}"
        )
    return rng


def check_same_shape(a, b, name_a, name_b):
    """Raise unless two arrays have the same shape (no silent broadcasting)."""
    sa, sb = onp.shape(getval(a)), onp.shape(getval(b))
    if sa != sb:
        raise ValueError(f"{name_b}: expected the shape of {name_a}, {sa}, got {sb}")


def finite_result(name, what, fn, *args):
    """``fn(*args)`` with NumPy's overflow and invalid-operation warnings silenced, and its
    result checked: a non-finite value raises ``ValueError`` naming ``name``.

    The one mechanism for closed forms whose value can leave float64 for extreme inputs
    (a squared distance of 1e200, a second moment of 1e160²): never a NaN or a bare
    ``RuntimeWarning``, but ``"{name}: {what} overflows float64 ..."``. The result may be
    nested tuples and lists of arrays or autograd's traced arrays; each leaf is checked.
    """
    with onp.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out = fn(*args)
    stack = [out]
    while stack:
        part = getval(stack.pop())
        if isinstance(part, (list, tuple)):
            stack.extend(part)
            continue
        raw = onp.asarray(part)
        if raw.dtype.kind == "c":
            raise TypeError(f"{name}: {what} is complex; expected real values")
        if raw.dtype.kind in "fiu" and not onp.all(onp.isfinite(raw)):
            raise ValueError(f"{name}: {what} overflows float64 for these inputs (values too large "
                             f"or too far apart; rescale them)")
    return out
