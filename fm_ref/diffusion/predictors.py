"""What a sampler asks of a model: its prediction at (x, t) in any parameterisation.

A ``Predictor`` answers ``predictor(x, t, to)`` with the prediction of kind ``to``
(velocity, x1, eps, score or v) at points x, shape (n, d), and a float time t:

- ``Predictor.from_model(model, params, path, kind)``: the model's output read as
  ``kind`` and converted by ``AffinePath.convert`` (derivations/05-conversions.md (CONV.1));
- ``Predictor.exact(target, path)``: the closed-form optimum of each kind for a mixture
  target, each from its own formula in ``fm_ref.marginal`` (derivations/09-diffusion.md (DIF.8)).

Also the model converted to a velocity for the probability-flow ODE, with the
coefficients (a_t, b_t) of v = a_t x + b_t f (derivations/09-diffusion.md (DIF.6)), and
the CNF of an MLP of any parameterisation with its closed-form divergence.
"""
import numpy as onp

from .._validate import as_time
from ..distributions import GaussianMixture
from ..losses import _check_model, _check_path
from .losses import _marginal_target, check_kind

__all__ = ["Predictor", "as_velocity_model", "velocity_coefficients", "probability_flow_cnf"]


class Predictor:
    """predictor(x, t, to) -> the prediction of kind ``to`` at (x, t), shape (n, d).

    Build it with ``Predictor.from_model`` or ``Predictor.exact``. ``path`` is the
    path the predictions refer to.
    """

    def __init__(self, fn, path, description):
        self._fn, self.path, self.description = fn, path, description

    @classmethod
    def from_model(cls, model, params, path, kind):
        """A model f_θ = model(params, x, t) that predicts ``kind``, converted on demand.

        Derivation: derivations/05-conversions.md (CONV.1)
        """
        _check_model(model)
        _check_path(path)
        check_kind(kind)

        last = {}  # the model's output at the last (x, t) with a float t: a sampler asks for two kinds there

        def fn(x, t, to):
            if not isinstance(t, float):
                return path.convert(model(params, x, t), x, t, kind, to)
            x = onp.asarray(x)
            if last.get("t") != t or last["x"].shape != x.shape or not onp.array_equal(last["x"], x):
                last.update(x=x.copy(), t=t, f=model(params, x, t))
            return path.convert(last["f"], x, t, kind, to)

        return cls(fn, path, f"model predicting {kind!r}")

    @classmethod
    def exact(cls, target, path):
        """The closed-form optimum of each kind for a mixture target.

        Derivation: derivations/09-diffusion.md (DIF.8)
        """
        if not isinstance(target, GaussianMixture):
            raise TypeError(f"target: expected a GaussianMixture (or Empirical), got {type(target).__name__}")
        _check_path(path)
        return cls(lambda x, t, to: _marginal_target(target, path, to, x, t), path, "closed form")

    def __call__(self, x, t, to):
        check_kind(to, "to")
        return self._fn(x, t, to)

    def __repr__(self):
        return f"Predictor({self.description}, path={self.path!r})"


def as_velocity_model(model, path, kind):
    """model'(params, x, t) = ``path.convert(model(params, x, t), x, t, kind, 'velocity')``.

    The probability-flow ODE's field of a model of any parameterisation, for ``fm_ref.cnf.CNF``.

    Derivation: derivations/09-diffusion.md (DIF.6)
    """
    _check_model(model)
    _check_path(path)
    check_kind(kind)
    return lambda params, x, t: path.convert(model(params, x, t), x, t, kind, "velocity")


def velocity_coefficients(path, kind, t):
    """(a_t, b_t) with velocity = a_t x + b_t f for a prediction f of ``kind``; floats or (n,).

    velocity (0, 1); x1 (σ'/σ, D/σ); eps (α'/α, −D/α); score (α'/α, σD/α);
    v ((αα' + σσ')/(α² + σ²), −D/(α² + σ²)), D_t = α'_t σ_t − α_t σ'_t.

    Derivation: derivations/09-diffusion.md (DIF.6)
    """
    _check_path(path)
    check_kind(kind)
    t = as_time(t)
    path._check_d_sigma(t)
    a, s, da, ds, gap = path._alpha(t), path._sigma(t), path._d_alpha(t), path._d_sigma(t), path._gap(t)
    if kind == "velocity":
        return 0.0 * t, 1.0 + 0.0 * t
    if kind == "v":
        norm = a**2 + s**2
        return (a * da + s * ds) / norm, -gap / norm
    divisor, what = (s, "σ_t") if kind == "x1" else (a, "α_t")
    if onp.any(onp.asarray(divisor) == 0.0):
        raise ValueError(f"t: {what} vanishes, so a {kind} prediction does not determine the velocity there")
    if kind == "x1":
        return ds / s, gap / s
    if kind == "eps":
        return da / a, -gap / a
    return da / a, s * gap / a


class _AffineVelocityTrace:
    """(x, t) -> (a_t x + b_t f, d a_t + b_t ∇·f) from an MLP's closed-form (f, ∇·f)."""

    def __init__(self, path, kind, trace, dim):
        self.path, self.kind, self.trace, self.dim = path, kind, trace, dim

    def __call__(self, x, t):
        f, div = self.trace(x, t)
        a, b = velocity_coefficients(self.path, self.kind, t)
        return a * x + b * f, self.dim * a + b * div

    def value(self, x, t):
        a, b = velocity_coefficients(self.path, self.kind, t)
        return a * x + b * self.trace.value(x, t)


def probability_flow_cnf(mlp, params, path, kind, **cnf_kw):
    """The CNF dx/dt = v(x, t) of an MLP predicting ``kind``, v = a_t x + b_t f_θ (DIF.6).

    Its divergence is d a_t + b_t ∇·f_θ with the MLP's closed-form trace
    (``fm_ref.divergence.MLPTrace``), so ``sample`` and ``log_prob`` are exact up to the
    solver tolerance. Keyword arguments go to ``CNF``. The velocity is undefined where
    ``velocity_coefficients`` raises: pass ``t0 > 0`` for eps/score models on paths with
    α_0 = 0, and ``t1 < 1`` for x1 models where σ_1 = 0 and for VP and LinearVP
    (σ'_1 = −∞). Derivation: derivations/09-diffusion.md (DIF.6)
    """
    from ..cnf import CNF
    from ..divergence import MLPTrace
    from ..nn import MLP

    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp: expected an fm_ref.nn.MLP, got {type(mlp).__name__}")
    _check_path(path)
    check_kind(kind)
    mlp.check_params(params)
    params = [(onp.array(W, dtype=float), onp.array(b, dtype=float)) for W, b in params]
    vdiv = _AffineVelocityTrace(path, kind, MLPTrace(mlp, params), mlp.in_dim)
    velocity = lambda x, t: path.convert(mlp.apply(params, x, t), x, t, kind, "velocity")  # noqa: E731
    flow = CNF(velocity, mlp.in_dim, value_and_divergence=vdiv, **cnf_kw)
    flow._value_only = vdiv.value
    flow.mlp, flow.params = mlp, params
    return flow
