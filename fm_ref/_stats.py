"""Sample moments that do not overflow before their result does.

``numpy.std`` squares deviations, so values of 1e160 overflow although their standard
deviation is a representable 1e160; ``numpy.mean`` sums, so two values of 1.7e308
overflow although their mean is 1.7e308. Scaling by the largest magnitude first keeps
every intermediate within float64 whenever the result is (the relative rounding is the
same order as NumPy's). Values of ordinary size go through NumPy itself, bit for bit.
"""
import numpy as onp

__all__ = ["mean_std"]

#: Magnitudes between these go through NumPy directly: squares stay within 2^±800 and a
#: sum of up to 10⁶⁷ of them within float64; outside, the scaled route below.
_SAFE_HI, _SAFE_LO = 2.0**400, 2.0**-400


def mean_std(values, axis=0, ddof=0):
    """Mean and standard deviation along ``axis``, computed on ``values / max|values|``.

    Parameters
    ----------
    values : ndarray of float64, finite
    axis : int
    ddof : int, the degrees of freedom removed (0: the MLE, 1: the unbiased variance)

    Returns
    -------
    (mean, std) : ndarrays with ``axis`` removed
    """
    scale = onp.max(onp.abs(values), axis=axis, keepdims=True)
    if onp.all((scale < _SAFE_HI) & (scale > _SAFE_LO)):  # NumPy's own (bits unchanged in normal use)
        return onp.mean(values, axis=axis), onp.std(values, axis=axis, ddof=ddof)
    scale = onp.where(scale > 0.0, scale, 1.0)
    unit = values / scale
    m = onp.mean(unit, axis=axis, keepdims=True)
    dev = unit - m
    dev_scale = onp.max(onp.abs(dev), axis=axis, keepdims=True)
    dev_scale = onp.where(dev_scale > 0.0, dev_scale, 1.0)
    std = dev_scale * onp.sqrt(onp.sum((dev / dev_scale) ** 2, axis=axis, keepdims=True) / (values.shape[axis] - ddof))
    return onp.squeeze(m * scale, axis=axis), onp.squeeze(std * scale, axis=axis)
