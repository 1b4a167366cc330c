"""Continuous normalizing flows: push-forward, sampling and exact log-likelihood.

A CNF is the flow of an ODE dx/dt = v(x, t) started from the base p₀ at t = 0; its
density obeys the instantaneous change of variables d log p_t(x_t)/dt = −∇·v(x_t, t)
along trajectories (derivations/06-cnf.md (CNF.2)). Everything here is one call of
``scipy.integrate.solve_ivp`` on a batched, flattened state: ``x.ravel()`` for the
push-forward, ``[x.ravel(), ℓ]`` for the log-density (the augmented ODE (CNF.4)).

Results. Every solve returns a frozen dataclass carrying ``nfev``, the number of
right-hand-side evaluations that ``solve_ivp`` made; each evaluation computes v (and,
for the augmented ODE, ∇·v) for the whole batch once:

- ``FlowResult(x, log_prob, nfev, t0, t1)``: ``x`` shape (n, d), the points at the end
  of the solve; ``log_prob`` shape (n,) or ``None`` (see ``FlowResult``);
- ``Trajectory(ts, xs, nfev)``: ``xs`` shape (m, n, d) at the m times ``ts``.

A solver failure (``status != 0``) raises ``RuntimeError`` with the solver's message;
a non-finite velocity, divergence or state raises ``FloatingPointError``; a complex or
non-numeric velocity raises ``TypeError``; nothing returns NaN. No solve runs for ever:
after ``max_nfe`` right-hand-side evaluations (``MAX_NFE`` by default) it raises
``NFELimitError``, naming the stiffness and what to do (an implicit method, looser
tolerances, or a larger ``max_nfe``).
"""
import dataclasses

import numpy as onp
from scipy.integrate import solve_ivp

from ._threads import SplitBatch
from ._validate import as_finite_float, as_float_array, as_generator, as_points, as_positive_int, as_time
from .distributions import StandardNormal
from .divergence import PROBES, MLPTrace, _divergence_hutchinson, _probes, _value_and_divergence

__all__ = ["CNF", "FlowResult", "Trajectory", "METHODS", "MIN_RTOL", "MAX_NFE", "NFELimitError", "as_rtol",
           "capped_rhs"]

#: The explicit and implicit solve_ivp methods a CNF accepts.
METHODS = ("RK23", "RK45", "DOP853", "Radau", "BDF", "LSODA")


@dataclasses.dataclass(frozen=True)
class FlowResult:
    """Points moved by the flow, with their log-density where computed.

    x : ndarray, shape (n, d)
        ``push_forward``, ``sample``, ``sample_with_log_prob``: the points at time t1.
        ``log_prob``: the caller's points pulled back to time t0.
    log_prob : ndarray, shape (n,), or None
        ``sample_with_log_prob``: log p_{t1} of ``x``. ``log_prob``: log p_{t1} of the
        caller's points (not of ``x``, which lies at t0). ``push_forward``, ``sample``: None.
    nfev : int, right-hand-side evaluations of the solve (one batched v (and ∇·v) each)
    t0, t1 : float, the integration interval (from t0 to t1)
    """

    x: onp.ndarray
    log_prob: object
    nfev: int
    t0: float
    t1: float


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """ts : shape (m,); xs : shape (m, n, d), x(ts[k]) = xs[k]; nfev : int."""

    ts: onp.ndarray
    xs: onp.ndarray
    nfev: int


#: Default cap on right-hand-side evaluations per solve. A smooth field needs tens to a few
#: hundred (DOP853 at rtol = 1e-8: 50 for a random 2-D MLP field, 50-74 for the demo's
#: trained models, README); an explicit method on a stiff field of rate λ needs about
#: 4λ (measured: λ = 10⁶ reaches the cap at t = 0.053), so 10⁵ stops λ ≳ 2.5·10⁴ in seconds
#: to minutes instead of hours.
MAX_NFE = 100_000


class NFELimitError(RuntimeError):
    """An ODE solve needed more right-hand-side evaluations than its ``max_nfe``."""


def capped_rhs(rhs, max_nfe, method, t0, t1, what="the ODE solve"):
    """``rhs`` counting its calls; call ``max_nfe + 1`` raises ``NFELimitError``.

    solve_ivp has no cap of its own: on a stiff field an explicit method takes steps of
    the size its stability allows (≈ 3/λ for DOP853) and runs for as long as one waits.
    The count is solve_ivp's ``nfev`` (it includes the finite-difference Jacobian columns
    of the implicit methods).
    """
    count = [0]

    def wrapped(t, y):
        count[0] += 1
        if count[0] > max_nfe:
            raise NFELimitError(
                f"max_nfe: {what} from t = {t0!r} to {t1!r} ({method}) reached {max_nfe} right-hand-side "
                f"evaluations at t = {float(t)!r}: the field is stiff (or varies very fast) there, so the "
                f"solver takes tiny steps; use an implicit method (method='Radau' or 'BDF'), loosen rtol/atol, "
                f"or raise max_nfe")
        return rhs(t, y)

    return wrapped


def real_values(value, name):
    """``value`` as a float64 array; complex, boolean or object values raise ``TypeError``
    (assigning a complex array into a float one would drop the imaginary part)."""
    arr = onp.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name}: expected real floating-point values, got dtype {arr.dtype}")
    return arr.astype(onp.float64, copy=False)


#: The smallest rtol solve_ivp honours; below it, it warns and uses this value instead.
MIN_RTOL = 100 * onp.finfo(float).eps


def as_rtol(rtol, name="rtol"):
    """A relative tolerance that ``solve_ivp`` will use as given: finite, ≥ ``MIN_RTOL``."""
    rtol = as_finite_float(rtol, name, lo=0.0, lo_open=True)
    if rtol < MIN_RTOL:
        raise ValueError(f"{name}: expected at least {MIN_RTOL:.3g} (100 machine epsilons; solve_ivp raises "
                         f"a smaller rtol to that value), got {rtol!r}")
    return rtol


def _frozen_copy(a):
    """A read-only float64 copy of a."""
    a = onp.array(a, dtype=onp.float64)
    a.setflags(write=False)
    return a


def _check_time(t, name):
    t = as_time(t, name=name)
    if onp.ndim(t) != 0:
        raise ValueError(f"{name}: expected a float in [0, 1], got shape {onp.shape(t)}")
    return t


class CNF:
    """A continuous normalizing flow dx/dt = v(x, t) from the base p₀ at t = 0.

    Parameters
    ----------
    velocity : callable
        v(x, t) -> array of shape (n, d) for x of shape (n, d) and a float t, acting
        pointwise in the batch (autograd.numpy code for the exact/Hutchinson divergence).
    dim : int
        d.
    base : distribution, optional
        Any object with ``log_prob(x) -> (n,)`` and ``sample(n, rng) -> (n, d)``, the
        density at t0 (``StandardNormal(dim)`` by default).
    method : str
        A ``solve_ivp`` method, one of ``METHODS`` (DOP853 by default: order 8).
    rtol, atol : float
        The solver's relative and absolute tolerances, over the flattened batch state;
        rtol ≥ ``MIN_RTOL`` = 100 machine epsilons (solve_ivp would silently use that).
    divergence_fn : callable, optional
        div(x, t) -> (n,), replacing the exact autograd trace for ``divergence='exact'``.
    value_and_divergence : callable, optional
        (x, t) -> (v, div) in one pass, for fast right-hand sides (``from_mlp`` sets it);
        it may return views of its work arrays: the solver copies them at once.
    max_nfe : int
        Cap on right-hand-side evaluations per solve (``MAX_NFE`` = 10⁵ by default); a
        solve that needs more raises ``NFELimitError`` (a stiff field: use 'Radau' or 'BDF').

    Derivation: derivations/06-cnf.md (CNF.1)
    """

    def __init__(self, velocity, dim, base=None, method="DOP853", rtol=1e-8, atol=1e-8,
                 divergence_fn=None, value_and_divergence=None, max_nfe=MAX_NFE):
        if not callable(velocity):
            raise TypeError(f"velocity: expected a callable v(x, t) -> (n, d), got {type(velocity).__name__}")
        self.velocity = velocity
        self.dim = as_positive_int(dim, "dim")
        self.base = StandardNormal(self.dim) if base is None else base
        if not (callable(getattr(self.base, "log_prob", None)) and callable(getattr(self.base, "sample", None))):
            raise TypeError(f"base: expected a distribution with log_prob and sample, got {type(base).__name__}")
        if getattr(self.base, "dim", self.dim) != self.dim:
            raise ValueError(f"base: expected dimension {self.dim}, got {self.base.dim}")
        if method not in METHODS:
            raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
        self.method = method
        self.rtol = as_rtol(rtol)
        self.atol = as_finite_float(atol, "atol", lo=0.0, lo_open=True)
        self.max_nfe = as_positive_int(max_nfe, "max_nfe")
        for name, fn in (("divergence_fn", divergence_fn), ("value_and_divergence", value_and_divergence)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name}: expected a callable or None, got {type(fn).__name__}")
        self.divergence_fn = divergence_fn
        self._vdiv = value_and_divergence
        self._value_only = None  # a faster v(x, t) for the push-forward (from_mlp sets it)

    @classmethod
    def from_mlp(cls, mlp, params, workers=1, **kw):
        """A CNF over v_θ = ``mlp(params, ·, ·)`` with its closed-form divergence.

        The right-hand sides skip validation and use ``fm_ref.divergence.MLPTrace``: for
        ``log_prob``, one forward pass and the trace by cyclicity (CNF.16, one matrix
        product whatever d) for one or two hidden layers, forward-mode tangents (CNF.8)
        for more; for ``push_forward``, ``sample`` and ``trajectory``, its forward pass
        alone (``MLPTrace.value``). θ is copied here, into read-only arrays: a later
        change to the caller's ``params`` does not reach the flow, and ``flow.params``
        cannot be changed in place (build a new flow for new parameters).
        Keyword arguments go to ``CNF``; passing ``divergence_fn`` replaces the closed form.
        The flow keeps ``flow.mlp`` and ``flow.params``.

        ``workers > 1`` evaluates the right-hand side of ``log_prob`` and
        ``sample_with_log_prob`` (the augmented ODE) on that many slices of the batch in
        parallel threads (``fm_ref._threads.SplitBatch``; NumPy releases the GIL inside
        ufuncs and BLAS); the result is the same to rounding, and bit-identical from run
        to run for a fixed ``workers``. Use it with a single-threaded BLAS
        (``OPENBLAS_NUM_THREADS=1``): both kinds of threads at once oversubscribe the cores.
        The push-forward runs on the calling thread whatever ``workers``. A flow is not
        re-entrant: its work arrays serve one call at a time (one flow per thread).
        """
        from .nn import MLP

        if not isinstance(mlp, MLP):
            raise TypeError(f"mlp: expected an fm_ref.nn.MLP, got {type(mlp).__name__}")
        if mlp.out_dim != mlp.in_dim:
            raise ValueError(f"mlp: a CNF needs out_dim == in_dim, got {mlp.out_dim} and {mlp.in_dim}")
        mlp.check_params(params)
        params = [(_frozen_copy(W), _frozen_copy(b)) for W, b in params]
        workers = as_positive_int(workers, "workers")
        if "divergence_fn" not in kw:  # an explicit divergence_fn replaces the closed form
            make = lambda: MLPTrace(mlp, params)  # noqa: E731
            kw.setdefault("value_and_divergence", make() if workers == 1 else SplitBatch(make, workers))
        flow = cls(lambda x, t: mlp.apply(params, x, t), mlp.in_dim, **kw)
        flow.mlp, flow.params = mlp, params
        flow._value_only = MLPTrace(mlp, params).value  # plain NumPy: push-forward and sampling
        return flow

    def __repr__(self):
        return f"CNF(dim={self.dim}, method={self.method!r}, rtol={self.rtol!r}, atol={self.atol!r})"

    # ------------------------------------------------------------------ solving
    def _solve(self, rhs, y0, t0, t1, t_eval=None):
        rhs = capped_rhs(rhs, self.max_nfe, self.method, t0, t1)
        # The solver's own arithmetic on a state near float64's limit may overflow: silenced
        # here, because the right-hand side refuses a non-finite state or slope by name.
        with onp.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            sol = solve_ivp(rhs, (t0, t1), y0, method=self.method, rtol=self.rtol, atol=self.atol, t_eval=t_eval)
        if sol.status != 0:
            raise RuntimeError(f"velocity: solve_ivp ({self.method}) failed integrating from t0={t0} to t1={t1}: "
                               f"{sol.message}")
        if sol.t[-1] != t1:  # solve_ivp clips the last step to t_bound; guard the contract
            raise RuntimeError(f"solve_ivp stopped at t = {sol.t[-1]!r}, not at t1 = {t1!r}")
        if not onp.all(onp.isfinite(sol.y[:, -1])):
            raise FloatingPointError(f"the flow from t0={t0} to t1={t1} produced non-finite values")
        return sol

    def _velocity_rhs(self, n):
        d = self.dim

        velocity = self._value_only or self.velocity

        def rhs(t, y):
            if not onp.all(onp.isfinite(y)):
                raise FloatingPointError(f"x: the state left float64 (overflow) at t = {t!r}")
            v = real_values(velocity(y.reshape(n, d), t), "velocity")
            if v.shape != (n, d):
                raise ValueError(f"velocity: expected v(x, t) of shape {(n, d)}, got {v.shape}")
            if not onp.all(onp.isfinite(v)):  # a NaN slope would send solve_ivp round for ever
                raise FloatingPointError(f"velocity: non-finite value at t = {t!r}")
            return v.ravel()

        return rhs

    def _divergence_route(self, divergence, n, rng, n_probes, probe, eps):
        """(x, t) -> (v, ∇·v or its Hutchinson estimate) for the augmented ODE."""
        if divergence == "exact":
            if self._vdiv is not None:
                return self._vdiv
            if self.divergence_fn is not None:
                return lambda x, t: (self.velocity(x, t), self.divergence_fn(x, t))
            return lambda x, t: _value_and_divergence(self.velocity, x, t, "velocity")
        if divergence == "hutchinson":
            if probe not in PROBES:
                raise ValueError(f"probe: expected one of {sorted(PROBES)}, got {probe!r}")
            if eps is None:
                as_generator(rng)
            fixed = _probes(onp.zeros((n, self.dim)), rng, n_probes, probe, eps)  # drawn ONCE per solve
            return lambda x, t: _divergence_hutchinson(self.velocity, x, t, fixed, "velocity")
        raise ValueError(f"divergence: expected 'exact' or 'hutchinson', got {divergence!r}")

    def _augmented_solve(self, x, t0, t1, ell0, sign, vdiv):
        """Solve d[x, ℓ]/dt = [v, sign · ∇·v] from t0 to t1; returns (x(t1), ℓ(t1), nfev)."""
        n, d = x.shape
        nd = n * d

        def rhs(t, y):
            if not onp.all(onp.isfinite(y)):
                raise FloatingPointError(f"x: the state left float64 (overflow) at t = {t!r}")
            v, div = vdiv(y[:nd].reshape(n, d), t)
            v, div = real_values(v, "velocity"), real_values(div, "divergence")
            if onp.shape(v) != (n, d) or onp.shape(div) != (n,):
                raise ValueError(f"velocity/divergence_fn: expected shapes {(n, d)} and {(n,)}, "
                                 f"got {onp.shape(v)} and {onp.shape(div)}")
            out = onp.empty(nd + n)
            out[:nd] = onp.reshape(v, -1)
            out[nd:] = div
            if not onp.all(onp.isfinite(out)):  # a NaN slope would send solve_ivp round for ever
                what = "velocity" if not onp.all(onp.isfinite(out[:nd])) else "divergence"
                raise FloatingPointError(f"{what}: non-finite value at t = {t!r}")
            if sign < 0:
                out[nd:] *= -1.0
            return out

        y0 = onp.concatenate([x.ravel(), ell0])
        sol = self._solve(rhs, y0, t0, t1)
        y1 = sol.y[:, -1]
        return y1[:nd].reshape(n, d), y1[nd:], int(sol.nfev)

    def _base_sample(self, n, rng):
        """n points from the base, checked: shape (n, d), finite."""
        return as_points(self.base.sample(n, rng), "base.sample", dim=self.dim, n=n)

    def _base_log_prob(self, x):
        """The base's log-density at x, checked: shape (n,), float64, no NaN or +inf
        (−inf, a point outside the base's support, is a value)."""
        out = onp.asarray(self.base.log_prob(x), dtype=onp.float64)
        if out.shape != (x.shape[0],):
            raise ValueError(f"base.log_prob: expected shape {(x.shape[0],)}, got {out.shape}")
        if onp.any(onp.isnan(out) | (out == onp.inf)):
            raise FloatingPointError("base.log_prob: returned NaN or +inf")
        return out

    # ------------------------------------------------------------------ public API
    def push_forward(self, x, t0=0.0, t1=1.0):
        """Move points from t0 to t1 along dx/dt = v(x, t) (either direction).

        Parameters
        ----------
        x : array, shape (n, d), points at t0
        t0, t1 : float in [0, 1]

        Returns
        -------
        FlowResult with ``x`` of shape (n, d) at t1, ``log_prob=None`` and ``nfev``.

        Derivation: derivations/06-cnf.md (CNF.1)
        """
        x = as_points(x, "x", dim=self.dim)
        t0, t1 = _check_time(t0, "t0"), _check_time(t1, "t1")
        if t0 == t1:
            return FlowResult(x.copy(), None, 0, t0, t1)
        sol = self._solve(self._velocity_rhs(x.shape[0]), x.ravel(), t0, t1)
        return FlowResult(sol.y[:, -1].reshape(x.shape), None, int(sol.nfev), t0, t1)

    def sample(self, n, rng, t0=0.0, t1=1.0):
        """Draw n points from the base at t0 and push them to t1: a FlowResult, x shape (n, d).

        Derivation: derivations/06-cnf.md (CNF.1)
        """
        n = as_positive_int(n, "n")
        rng = as_generator(rng)
        _check_time(t0, "t0"), _check_time(t1, "t1")
        return self.push_forward(self._base_sample(n, rng), t0, t1)

    def trajectory(self, x, ts):
        """The path x(t) at the strictly monotone times ``ts``, starting from x at ts[0].

        Parameters
        ----------
        x : array, shape (n, d), the points at ts[0]
        ts : array, shape (m,), m >= 2, strictly increasing or decreasing, in [0, 1]

        Returns
        -------
        Trajectory with ``xs`` of shape (m, n, d) and ``nfev``.

        Derivation: derivations/06-cnf.md (CNF.1)
        """
        x = as_points(x, "x", dim=self.dim)
        ts = as_float_array(ts, "ts")
        if ts.ndim != 1 or ts.shape[0] < 2:
            raise ValueError(f"ts: expected a 1-D array of at least 2 times, got shape {ts.shape}")
        as_time(ts, name="ts")
        steps = onp.diff(ts)
        if not (onp.all(steps > 0) or onp.all(steps < 0)):
            raise ValueError("ts: expected strictly increasing or strictly decreasing times")
        n = x.shape[0]
        sol = self._solve(self._velocity_rhs(n), x.ravel(), float(ts[0]), float(ts[-1]), t_eval=ts)
        xs = sol.y.T.reshape(len(ts), n, self.dim)
        return Trajectory(ts.copy(), xs, int(sol.nfev))

    def log_prob(self, x, divergence="exact", rng=None, t0=0.0, t1=1.0, n_probes=None, probe="rademacher",
                 eps=None):
        """log p_{t1}(x) by the augmented ODE solved from t1 back to t0.

        [x, ℓ](t1) = [x, 0]; d[x, ℓ]/dt = [v, ∇·v]; then log p_{t1}(x) = log p_{t0}(x(t0)) + ℓ(t0),
        with p_{t0} the base.

        Parameters
        ----------
        x : array, shape (n, d), points at t1
        divergence : {'exact', 'hutchinson'}
            'hutchinson' holds ``n_probes`` probes per point FIXED for the whole solve;
            the result is then an unbiased estimate of log p_{t1}(x).
        rng : numpy.random.Generator, needed for 'hutchinson' unless ``eps`` is given
        t0, t1 : float in [0, 1]
        n_probes : int, optional; 1 by default, or eps's K (as in
            ``fm_ref.divergence.divergence_hutchinson``)
        probe : {'rademacher', 'gaussian'}
        eps : array, shape (K, n, d) or (n, d), optional; explicit fixed probes

        Returns
        -------
        FlowResult with ``x`` the points pulled back to t0, shape (n, d), ``log_prob``
        log p_{t1}(x) of shape (n,) and ``nfev``.

        Derivation: derivations/06-cnf.md (CNF.4)
        """
        x = as_points(x, "x", dim=self.dim)
        t0, t1 = _check_time(t0, "t0"), _check_time(t1, "t1")
        vdiv = self._divergence_route(divergence, x.shape[0], rng, n_probes, probe, eps)
        n = x.shape[0]
        if t0 == t1:
            return FlowResult(x.copy(), self._base_log_prob(x), 0, t0, t1)
        x0, ell0, nfev = self._augmented_solve(x, t1, t0, onp.zeros(n), +1, vdiv)
        log_p = self._base_log_prob(x0) + ell0
        return FlowResult(x0, log_p, nfev, t0, t1)

    def sample_with_log_prob(self, n, rng, t0=0.0, t1=1.0, divergence="exact", n_probes=None, probe="rademacher"):
        """Sample and carry log p forward: ℓ(t0) = log p₀(x₀), dℓ/dt = −∇·v, to t1.

        Parameters
        ----------
        n : int; rng : numpy.random.Generator (draws x₀, then any Hutchinson probes)
        t0, t1 : float in [0, 1]
        divergence, n_probes, probe : as in ``log_prob``

        Returns
        -------
        FlowResult with ``x`` shape (n, d) at t1, ``log_prob`` = log p_{t1}(x), shape (n,),
        and ``nfev``. It agrees with ``log_prob(x)`` of the same points up to the solver
        tolerance (forward/backward consistency).

        Derivation: derivations/06-cnf.md (CNF.5)
        """
        n = as_positive_int(n, "n")
        rng = as_generator(rng)
        t0, t1 = _check_time(t0, "t0"), _check_time(t1, "t1")
        x0 = self._base_sample(n, rng)
        vdiv = self._divergence_route(divergence, n, rng, n_probes, probe, None)
        ell0 = self._base_log_prob(x0)
        if t0 == t1:
            return FlowResult(x0, ell0, 0, t0, t1)
        x1, ell1, nfev = self._augmented_solve(x0, t0, t1, ell0, -1, vdiv)
        return FlowResult(x1, ell1, nfev, t0, t1)
