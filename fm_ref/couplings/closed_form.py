"""Closed-form marginals of a pair-conditioned path between two finite point sets.

Source points x₀ᵢ (i < n₀), target points x₁ⱼ (j < n₁), a coupling π (n₀, n₁) and a pair
path with σ_t > 0. The marginal of x_t = μ_t(z) + σ_t ε, z ~ π, is a finite Gaussian
mixture over the pairs k = (i, j) with π_ij > 0 (derivations/10-couplings.md (CPL.9)):

    p_t(x) = Σ_k π_k N(x; m_k(t), σ_t² I),      m_k(t) = (1 − t) x₀ᵢ + t x₁ⱼ,
    ∇ log p_t(x) = −Σ_k r_k(x) (x − m_k(t))/σ_t²,
    u_t(x) = Σ_k r_k(x) [(x₁ⱼ − x₀ᵢ) + (σ'_t/σ_t)(x − m_k(t))]
           = Σ_k r_k(x)(x₁ⱼ − x₀ᵢ) − σ_tσ'_t ∇ log p_t(x),

with posterior weights r_k = π_k N_k / p_t. The mixture machinery is ``marginal``'s: for
each source point i the components over j are those of the data set {x₁ⱼ} with weights
π_ij/a_i under the affine path (α, σ) = (t, σ_t), evaluated at x − (1 − t)x₀ᵢ by
``GaussianMixture.component_terms``; the softmax over all pairs is ``marginal``'s too.

Everything is written in ``autograd.numpy`` and is differentiable in x and t.
"""
import autograd.numpy as np
import numpy as onp
from autograd.tracer import getval

from .._validate import as_float_array, as_points, as_time
from ..distributions import Empirical, GaussianMixture
from ..marginal import _responsibilities
from .paths import PairPath, _col

__all__ = ["PairMixture"]


def _point_set(value, name):
    """(points, weights or None) from an array (n, d) or an ``Empirical`` data set."""
    if isinstance(value, GaussianMixture):
        if not isinstance(value, Empirical):
            raise TypeError(f"{name}: expected points (n, d) or an Empirical data set, got {type(value).__name__}")
        return value.means, value.weights
    return as_points(value, name), None


class PairMixture:
    """The marginal path of a pair-conditioned path and a coupling of two finite sets.

    Parameters
    ----------
    x_0 : array, shape (n0, d), or Empirical;  x_1 : array, shape (n1, d), or Empirical
    plan : array, shape (n0, n1), non-negative, summing to 1; None for the independent
        coupling of the two sets' weights (uniform for arrays)
    path : PairPath with σ > 0 (σ_t must be positive where the density is evaluated)

    Derivation: derivations/10-couplings.md (CPL.9)
    """

    def __init__(self, x_0, x_1, plan, path):
        x_0, w_0 = _point_set(x_0, "x_0")
        x_1, w_1 = _point_set(x_1, "x_1")
        if x_1.shape[1] != x_0.shape[1]:
            raise ValueError(f"x_1: expected dimension d = {x_0.shape[1]}, got shape {x_1.shape}")
        if not isinstance(path, PairPath):
            raise TypeError(f"path: expected a PairPath such as ConstantSigma(0.1), got {type(path).__name__}")
        if path.sigma <= 0.0:
            raise ValueError(f"path: the marginal has a density only for sigma > 0, got {path!r}")
        n0, n1 = x_0.shape[0], x_1.shape[0]
        if plan is None:
            w_0 = onp.full(n0, 1.0 / n0) if w_0 is None else w_0
            w_1 = onp.full(n1, 1.0 / n1) if w_1 is None else w_1
            plan = onp.outer(w_0, w_1)
        plan = self._check_plan(plan, n0, n1)
        self.x_0, self.x_1, self.plan, self.path, self.dim = x_0, x_1, plan, path, x_0.shape[1]
        self.source_weights = plan.sum(axis=1)
        # per source point i with a_i > 0: the data set {x₁ⱼ : π_ij > 0} weighted π_ij / a_i
        self._rows = []
        for i in onp.flatnonzero(self.source_weights > 0.0):
            cols = onp.flatnonzero(plan[i] > 0.0)
            a_i = self.source_weights[i]
            self._rows.append((x_0[i], onp.log(a_i), Empirical(x_1[cols], plan[i, cols] / plan[i, cols].sum()),
                               x_1[cols] - x_0[i]))
        self.displacements = onp.concatenate([row[3] for row in self._rows])  # (K, d), x₁ⱼ − x₀ᵢ per pair

    @staticmethod
    def _check_plan(plan, n0, n1):
        plan = as_float_array(plan, "plan")
        if plan.shape != (n0, n1):
            raise ValueError(f"plan: expected shape ({n0}, {n1}) for {n0} source and {n1} target points, "
                             f"got {plan.shape}")
        if onp.any(plan < 0.0):
            raise ValueError(f"plan: expected non-negative entries, got {float(plan.min())!r}")
        if abs(float(plan.sum()) - 1.0) > 1e-12 * max(plan.size, 10):
            raise ValueError(f"plan: expected entries that sum to 1, got sum {float(plan.sum())!r}")
        return plan

    def _validate(self, x, t):
        x = as_points(x, "x", dim=self.dim)
        t = as_time(t, n=x.shape[0])
        if onp.any(onp.asarray(getval(self.path._sigma(t))) <= 0.0):
            raise ValueError(f"t: σ_t = 0 here for {self.path!r}, so p_t has no density; use 0 < t < 1")
        self.path._check_interior(t)
        return x, t

    def _terms(self, x, t):
        """log p_t (n,), responsibilities (n, K) and (x − m_k)/σ_t² (n, K, d)."""
        sigma = self.path._sigma(t)
        log_joint, prec_diff = [], []
        for x0_i, log_a_i, row, _ in self._rows:
            lj, pd, _ = row.component_terms(x - _col(1.0 - t) * x0_i, t, sigma)
            log_joint.append(lj + log_a_i)
            prec_diff.append(pd)
        log_p, resp = _responsibilities(np.concatenate(log_joint, axis=1))
        return log_p, resp, np.concatenate(prec_diff, axis=1)

    def log_prob(self, x, t):
        """log p_t(x), shape (n,).  Derivation: derivations/10-couplings.md (CPL.9)"""
        x, t = self._validate(x, t)
        return self._terms(x, t)[0]

    def score(self, x, t):
        """∇ₓ log p_t(x), shape (n, d).  Derivation: derivations/10-couplings.md (CPL.10)"""
        x, t = self._validate(x, t)
        _, resp, prec_diff = self._terms(x, t)
        return -np.einsum("nk,nkd->nd", resp, prec_diff)

    def velocity(self, x, t):
        """u_t(x) = E[u_t(x | z) | x_t = x] = Σ_k r_k (x₁ⱼ − x₀ᵢ) + σ_tσ'_t Σ_k r_k (x − m_k)/σ_t², (n, d).

        Derivation: derivations/10-couplings.md (CPL.10)
        """
        x, t = self._validate(x, t)
        _, resp, prec_diff = self._terms(x, t)
        drift = np.dot(resp, self.displacements)
        return drift + _col(self.path._sigma_d_sigma(t)) * np.einsum("nk,nkd->nd", resp, prec_diff)

    def components(self):
        """(i, j) index arrays of the K pairs with π_ij > 0, in the order of the mixture."""
        pairs = [(i, j) for i in onp.flatnonzero(self.source_weights > 0.0) for j in onp.flatnonzero(self.plan[i] > 0.0)]
        return onp.array([p[0] for p in pairs]), onp.array([p[1] for p in pairs])

    def __repr__(self):
        return f"PairMixture({self.plan.shape[0]} x {self.plan.shape[1]} points, d = {self.dim}, {self.path!r})"
