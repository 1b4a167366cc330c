"""Hypothesis strategies shared by every test module (the one place they live).

Anchor values are mixed in with ``sampled_from`` so that failures shrink to readable
cases. Each section is owned by one module's tests; add new sections at the end.
"""
import numpy as np
from hypothesis import strategies as st

from fm_ref.distributions import Empirical, GaussianMixture
from fm_ref.paths import VP, CondOT, Cosine, LinearVP, Polynomial

# --------------------------------------------------------------------------- basics

dims = st.integers(min_value=1, max_value=3)
seeds = st.integers(min_value=0, max_value=2**32 - 1)

#: Interior times, away from the endpoints where σ_t or α_t vanish.
interior_times = st.one_of(
    st.sampled_from([0.05, 0.25, 0.5, 0.75, 0.95]),
    st.floats(min_value=0.02, max_value=0.98, allow_nan=False),
)


@st.composite
def paths(draw, sigma_min_positive=False):
    """Any of the five paths, with drawn hyper-parameters."""
    lo = 1e-3 if sigma_min_positive else 0.0
    choice = draw(st.sampled_from(["condot", "vp", "linear_vp", "cosine", "polynomial"]))
    if choice == "condot":
        return CondOT(draw(st.one_of(st.sampled_from([max(lo, 0.0), 0.01, 0.1]), st.floats(lo, 0.5))))
    if choice == "vp":
        beta_min = draw(st.sampled_from([0.1, 0.5]))
        return VP(beta_min, draw(st.sampled_from([5.0, 20.0])))
    if choice == "linear_vp":
        return LinearVP()
    if choice == "cosine":
        return Cosine()
    return Polynomial(draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])))


@st.composite
def mixtures(draw, dim=None, k_max=3, allow_empirical=True, min_var=0.0):
    """A Gaussian mixture with random means, full/diagonal/isotropic covariances and
    weights, or an empirical set (point masses), from an explicit seed."""
    d = draw(dims) if dim is None else dim
    k = draw(st.integers(1, k_max))
    rng = np.random.default_rng(draw(seeds))
    means = rng.normal(0.0, 1.5, (k, d))
    raw_w = rng.uniform(0.2, 1.0, k)
    weights = raw_w / raw_w.sum()
    form = draw(st.sampled_from(["full", "diag", "iso", "empirical"] if allow_empirical and min_var == 0.0
                                else ["full", "diag", "iso"]))
    if form == "empirical":
        return Empirical(means, weights)
    if form == "full":
        A = rng.normal(0.0, 1.0, (k, d, d))
        covs = 0.3 * A @ np.swapaxes(A, 1, 2) / d + (min_var + 0.05) * np.eye(d)
    elif form == "diag":
        covs = rng.uniform(min_var + 0.05, 1.0, (k, d))
    else:
        covs = rng.uniform(min_var + 0.05, 1.0, k)
    return GaussianMixture(means, covs, weights)


@st.composite
def points(draw, dim, n=None, scale=2.0):
    """A batch of n points in R^dim, shape (n, dim), from an explicit seed."""
    n = draw(st.integers(1, 6)) if n is None else n
    rng = np.random.default_rng(draw(seeds))
    return rng.normal(0.0, scale, (n, dim))
