"""Population fields between Gaussians: N(m₀, S₀) → N(m₁, S₁), in closed form.

A coupling of two Gaussians that is itself Gaussian is fixed by its cross-covariance
C = Cov(x₀, x₁) (d, d). For the pair path x_t = (1 − t)x₀ + t x₁ + σ_t ε the marginal is
N(m_t, Σ_t) and the marginal velocity is linear (derivations/10-couplings.md (CPL.11)):

    m_t = (1 − t)m₀ + t m₁,
    Σ_t = (1 − t)² S₀ + t² S₁ + t(1 − t)(C + Cᵀ) + σ_t² I,
    u_t(x) = (m₁ − m₀) + B_t Σ_t⁻¹ (x − m_t),
    B_t = Cov(x₁ − x₀ + σ'_t ε, x_t) = t S₁ − (1 − t) S₀ + (1 − t) Cᵀ − t C + σ_tσ'_t I.

Three couplings give the three population fields:

- independent (I-CFM): C = 0;
- exact OT (OT-CFM): the Monge map T(x) = m₁ + A(x − m₀),
  A = S₀^{-1/2}(S₀^{1/2} S₁ S₀^{1/2})^{1/2} S₀^{-1/2}, so C = S₀A (CPL.12); with σ = 0 the
  field is McCann's displacement interpolation, whose trajectories are straight (CPL.14);
- entropic OT with ε = 2σ² (SB-CFM with the bridge): C = ½ S₀^{1/2} D S₀^{-1/2} − (σ²/2) I,
  D = (4 S₀^{1/2} S₁ S₀^{1/2} + σ⁴ I)^{1/2} (Janati et al. 2020; Mallasto et al. 2021) (CPL.13).

Matrix square roots are by ``numpy.linalg.eigh`` (symmetric positive definite inputs).
The fields are written in ``autograd.numpy`` (differentiable in x and t).
"""
import autograd.numpy as np
import numpy as onp

from .._validate import as_finite_float, as_float_array, as_points, as_time
from .paths import PairPath

__all__ = ["sqrtm_spd", "monge_map", "ot_cross_covariance", "entropic_cross_covariance",
           "wasserstein2_gaussian", "GaussianCouplingField"]


def _spd(S, name, d=None):
    S = as_float_array(S, name)
    if S.ndim != 2 or S.shape[0] != S.shape[1] or (d is not None and S.shape[0] != d):
        raise ValueError(f"{name}: expected a square matrix{'' if d is None else f' ({d}, {d})'}, got shape {S.shape}")
    if not onp.allclose(S, S.T, rtol=0.0, atol=1e-14 * max(1.0, float(onp.max(onp.abs(S))))):
        raise ValueError(f"{name}: expected a symmetric matrix")
    if onp.min(onp.linalg.eigvalsh(S)) <= 0.0:
        raise ValueError(f"{name}: expected a positive definite matrix")
    return 0.5 * (S + S.T)


def sqrtm_spd(S, power=0.5):
    """S^power for symmetric positive (semi-)definite S, by eigendecomposition, shape (d, d)."""
    w, U = onp.linalg.eigh(S)
    return (U * onp.maximum(w, 0.0) ** power) @ U.T


def monge_map(S0, S1):
    """A = S₀^{-1/2}(S₀^{1/2} S₁ S₀^{1/2})^{1/2} S₀^{-1/2}, shape (d, d), symmetric positive
    definite: T(x) = m₁ + A(x − m₀) is the OT map N(m₀, S₀) → N(m₁, S₁).

    Derivation: derivations/10-couplings.md (CPL.12)
    """
    S0 = _spd(S0, "S0")
    S1 = _spd(S1, "S1", S0.shape[0])
    r, r_inv = sqrtm_spd(S0), sqrtm_spd(S0, -0.5)
    A = r_inv @ sqrtm_spd(r @ S1 @ r) @ r_inv
    return 0.5 * (A + A.T)


def ot_cross_covariance(S0, S1):
    """C = Cov(x₀, T(x₀)) = S₀ A for the OT coupling, shape (d, d).

    Derivation: derivations/10-couplings.md (CPL.12)
    """
    return _spd(S0, "S0") @ monge_map(S0, S1)


def entropic_cross_covariance(S0, S1, epsilon):
    """Cross-covariance of the entropic plan min ⟨π, ‖x − y‖²⟩ + ε KL(π ‖ N₀ ⊗ N₁), (d, d).

    With σ² = ε/2: C = ½ S₀^{1/2} D S₀^{-1/2} − (σ²/2) I, D = (4 S₀^{1/2} S₁ S₀^{1/2} + σ⁴ I)^{1/2}.
    Its joint precision has the off-diagonal block −(2/ε) I (the plan's density is
    exp(−‖x − y‖²/ε) times a product); as ε → 0, C → S₀A, the OT coupling's.

    Derivation: derivations/10-couplings.md (CPL.13)
    """
    S0 = _spd(S0, "S0")
    S1 = _spd(S1, "S1", S0.shape[0])
    epsilon = as_finite_float(epsilon, "epsilon", lo=0.0, lo_open=True)
    s2 = 0.5 * epsilon
    d = S0.shape[0]
    r, r_inv = sqrtm_spd(S0), sqrtm_spd(S0, -0.5)
    D = sqrtm_spd(4.0 * r @ S1 @ r + s2**2 * onp.eye(d))
    return 0.5 * r @ D @ r_inv - 0.5 * s2 * onp.eye(d)


def wasserstein2_gaussian(m0, S0, m1, S1):
    """W₂² = ‖m₁ − m₀‖² + tr(S₀ + S₁ − 2(S₀^{1/2} S₁ S₀^{1/2})^{1/2}) (Bures), a float.

    Derivation: derivations/10-couplings.md (CPL.14)
    """
    S0 = _spd(S0, "S0")
    S1 = _spd(S1, "S1", S0.shape[0])
    r = sqrtm_spd(S0)
    dm = onp.asarray(m1, dtype=float) - onp.asarray(m0, dtype=float)
    return float(dm @ dm + onp.trace(S0 + S1 - 2.0 * sqrtm_spd(r @ S1 @ r)))


def _cube(t):
    return np.reshape(t, (-1, 1, 1)) if np.ndim(t) else t


class GaussianCouplingField:
    """The marginal N(m_t, Σ_t) and velocity u_t of a pair path under a Gaussian coupling.

    Parameters
    ----------
    m0, m1 : array, shape (d,);  S0, S1 : array, shape (d, d), positive definite
    C : array, shape (d, d), the coupling's cross-covariance Cov(x₀, x₁); the joint
        covariance [[S0, C], [Cᵀ, S1]] must be positive semi-definite
    path : PairPath (σ_t enters Σ_t and B_t)

    ``independent``, ``optimal`` and ``entropic`` build the three couplings.

    Derivation: derivations/10-couplings.md (CPL.11)
    """

    def __init__(self, m0, S0, m1, S1, C, path):
        self.S0 = _spd(S0, "S0")
        d = self.S0.shape[0]
        self.S1 = _spd(S1, "S1", d)
        self.m0 = as_points(onp.reshape(as_float_array(m0, "m0"), (1, -1)), "m0", dim=d)[0]
        self.m1 = as_points(onp.reshape(as_float_array(m1, "m1"), (1, -1)), "m1", dim=d)[0]
        C = as_float_array(C, "C")
        if C.shape != (d, d):
            raise ValueError(f"C: expected shape ({d}, {d}), got {C.shape}")
        joint = onp.block([[self.S0, C], [C.T, self.S1]])
        if onp.min(onp.linalg.eigvalsh(joint)) < -1e-10 * onp.max(onp.abs(joint)):
            raise ValueError("C: the joint covariance [[S0, C], [C^T, S1]] is not positive semi-definite")
        if not isinstance(path, PairPath):
            raise TypeError(f"path: expected a PairPath, got {type(path).__name__}")
        self.C, self.path, self.dim = C, path, d

    @classmethod
    def independent(cls, m0, S0, m1, S1, path):
        """C = 0 (I-CFM's population field).  Derivation: derivations/10-couplings.md (CPL.11)"""
        return cls(m0, S0, m1, S1, onp.zeros_like(onp.asarray(S0, dtype=float)), path)

    @classmethod
    def optimal(cls, m0, S0, m1, S1, path):
        """C = S₀A (OT-CFM's population field).  Derivation: derivations/10-couplings.md (CPL.12)"""
        return cls(m0, S0, m1, S1, ot_cross_covariance(S0, S1), path)

    @classmethod
    def entropic(cls, m0, S0, m1, S1, path):
        """The entropic plan with ε = 2σ² of the path's σ (SB-CFM with the Brownian bridge).

        Derivation: derivations/10-couplings.md (CPL.13)
        """
        return cls(m0, S0, m1, S1, entropic_cross_covariance(S0, S1, 2.0 * path.sigma**2), path)

    # --- closed forms -----------------------------------------------------------
    def mean(self, t):
        """m_t, shape (d,) for a float t or (n, d) for t of shape (n,)."""
        t = np.reshape(t, (-1, 1)) if np.ndim(t) else t
        return (1.0 - t) * self.m0 + t * self.m1

    def cov(self, t):
        """Σ_t, shape (d, d) or (n, d, d).  Derivation: derivations/10-couplings.md (CPL.11)"""
        c = _cube(t)
        s2 = _cube(self.path._sigma(t) ** 2)
        return ((1.0 - c) ** 2 * self.S0 + c**2 * self.S1 + c * (1.0 - c) * (self.C + self.C.T)
                + s2 * onp.eye(self.dim))

    def _b(self, t):
        c = _cube(t)
        return (c * self.S1 - (1.0 - c) * self.S0 + (1.0 - c) * self.C.T - c * self.C
                + _cube(self.path._sigma_d_sigma(t)) * onp.eye(self.dim))

    def _check(self, x, t):
        x = as_points(x, "x", dim=self.dim)
        t = as_time(t, n=x.shape[0])
        if onp.ndim(t) == 0:
            t = t + onp.zeros(x.shape[0])
        return x, t

    def log_prob(self, x, t):
        """log N(x; m_t, Σ_t), shape (n,).  Derivation: derivations/10-couplings.md (CPL.11)"""
        x, t = self._check(x, t)
        S = self.cov(t)
        diff = x - self.mean(t)
        sol = np.linalg.solve(S, diff[:, :, None])[:, :, 0]
        _, logdet = np.linalg.slogdet(S)
        return -0.5 * np.sum(diff * sol, axis=1) - 0.5 * logdet - 0.5 * self.dim * onp.log(2.0 * onp.pi)

    def velocity(self, x, t):
        """u_t(x) = (m₁ − m₀) + B_t Σ_t⁻¹ (x − m_t), shape (n, d).

        Derivation: derivations/10-couplings.md (CPL.11)
        """
        x, t = self._check(x, t)
        sol = np.linalg.solve(self.cov(t), (x - self.mean(t))[:, :, None])
        return (self.m1 - self.m0) + np.matmul(self._b(t), sol)[:, :, 0]

    def kinetic_energy(self, t):
        """E_{x ~ p_t} ‖u_t(x)‖² = ‖m₁ − m₀‖² + tr(B_t Σ_t⁻¹ B_tᵀ), float or shape (n,).

        Derivation: derivations/10-couplings.md (CPL.14)
        """
        t_arr = onp.atleast_1d(as_time(t))
        S, B = self.cov(t_arr), self._b(t_arr)
        M = onp.linalg.solve(S, onp.swapaxes(B, 1, 2))  # Σ⁻¹Bᵀ
        dm = self.m1 - self.m0
        out = dm @ dm + onp.einsum("nij,nji->n", B, M)
        return out if onp.ndim(t) else float(out[0])

    def field_error(self, velocity, rng, n=4000):
        """E_{t ~ U[0,1], x ~ p_t} ‖v(x, t) − u_t(x)‖² by Monte Carlo on this field's marginal,
        and its standard error: how far a learned field is from this population field.

        Returns (mean, standard error), two floats.

        Derivation: derivations/10-couplings.md (CPL.11)
        """
        from ..metrics import mean_and_stderr

        t = rng.uniform(0.0, 1.0, n)
        L = onp.linalg.cholesky(self.cov(t))
        x = self.mean(t) + onp.einsum("nij,nj->ni", L, rng.standard_normal((n, self.dim)))
        v = onp.asarray(velocity(x, t), dtype=float)
        if v.shape != x.shape:
            raise ValueError(f"velocity: expected velocity(x, t) of shape {x.shape}, got {v.shape}")
        return mean_and_stderr(onp.sum((v - self.velocity(x, t)) ** 2, axis=1), "errors")

