"""Sample-based evaluation: the 2-Wasserstein distance between two point sets by exact
assignment, and the mean of per-point values with its standard error.

For two uniform empirical measures with the same number n of points, the optimal
coupling may be taken to be a permutation (Birkhoff–von Neumann), so W₂ is an
assignment problem, solved exactly by ``scipy.optimize.linear_sum_assignment``:

    W₂(x, y)² = min_π (1/n) Σ_i ‖x_i − y_π(i)‖².

Derivation: derivations/08-evaluation.md (EVAL.1) and (EVAL.2)
"""
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from ._stats import mean_std
from ._validate import as_float_array, as_points, check_same_shape, finite_result

__all__ = ["optimal_assignment", "wasserstein2", "mean_and_stderr"]


def _validate_pair(x, y):
    x = as_points(x, "x")
    y = as_points(y, "y", dim=x.shape[1])
    check_same_shape(x, y, "x", "y")
    return x, y


def optimal_assignment(x, y):
    """The permutation π minimising Σ_i ‖x_i − y_π(i)‖².

    Parameters
    ----------
    x, y : array_like, shape (n, d)
        Two point sets of the same size (uniform weights 1/n).

    Returns
    -------
    perm : ndarray of int, shape (n,)
        x_i is matched with y_perm[i].
    cost : ndarray, shape (n,)
        ‖x_i − y_perm[i]‖², the squared distance of each matched pair.

    The squared distances are computed as differences (``cdist``, 'sqeuclidean'),
    not as ‖x‖² + ‖y‖² − 2x·y, which can cancel to a negative number.

    Derivation: derivations/08-evaluation.md (EVAL.2)
    """
    x, y = _validate_pair(x, y)
    cost = finite_result("x", "a squared distance between x and y", cdist, x, y, "sqeuclidean")
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(x.shape[0], dtype=np.intp)
    perm[rows] = cols
    return perm, cost[np.arange(x.shape[0]), perm]


def wasserstein2(x, y):
    """W₂ between the uniform empirical measures of x and y, by exact assignment.

    Parameters
    ----------
    x, y : array_like, shape (n, d)

    Returns
    -------
    float
        W₂ = ( min_π (1/n) Σ_i ‖x_i − y_π(i)‖² )^{1/2}, in the units of x.

    Cost: O(n²) memory and roughly O(n³) time in the worst case; n = 2000 in 2-D
    takes about a second.

    Derivation: derivations/08-evaluation.md (EVAL.1)
    """
    _, cost = optimal_assignment(x, y)
    return float(np.sqrt(np.mean(cost)))


def mean_and_stderr(values, name="values"):
    """Mean of per-point values and its standard error s/√n (s with n − 1 dof).

    Parameters
    ----------
    values : array_like, shape (n,), finite, n ≥ 2

    Returns
    -------
    (mean, stderr) : two floats

    Derivation: derivations/08-evaluation.md (EVAL.4)
    """
    values = as_float_array(values, name)
    if values.ndim != 1 or values.shape[0] < 2:
        raise ValueError(f"{name}: expected a 1-D array of at least 2 values, got shape {values.shape}")
    n = values.shape[0]
    mean, std = mean_std(values, axis=0, ddof=1)  # no overflow before the result's own
    return finite_result(name, "the mean or its standard error", lambda: (float(mean), float(std / np.sqrt(n))))
