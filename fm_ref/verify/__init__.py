"""Theorem checks as functions: each returns a measured residual, its tolerance and a
pass flag. The tests and ``fm-ref verify`` call the same functions.

A check is registered with ``@register(name, route, group)``; it takes no arguments,
is deterministic (fixed seeds), and returns a ``CheckResult``. Every registered check
is run by ``run_checks()``; the groups are 'foundation', 'cnf', 'flows', 'diffusion' and
'couplings'.
"""
import dataclasses
import time

__all__ = ["CheckResult", "register", "CHECKS", "run_checks"]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """The outcome of one theorem check.

    name : short identifier, e.g. 'thm2-quadrature-d1'
    route : what was compared with what, in words
    measured : the residual (a non-negative float)
    tolerance : the bound the residual must not exceed
    reason : why the tolerance has its size (one line)
    seconds : wall time of the check
    """

    name: str
    route: str
    measured: float
    tolerance: float
    reason: str
    seconds: float = 0.0

    @property
    def passed(self):
        return bool(self.measured <= self.tolerance)

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        return d


#: name -> (group, route, function); filled by ``register`` as the modules import.
CHECKS = {}


def register(name, route, group):
    """Decorator: add a check ``fn() -> (measured, tolerance, reason)`` to ``CHECKS``."""

    def wrap(fn):
        def run():
            start = time.perf_counter()
            measured, tolerance, reason = fn()
            return CheckResult(name, route, float(measured), float(tolerance), reason,
                               time.perf_counter() - start)

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        CHECKS[name] = (group, route, run)
        return run

    return wrap


def _load_all():
    """Import the modules that register checks (kept lazy to avoid import cycles)."""
    import importlib

    for mod in ("foundation", "cnf", "flows", "diffusion", "couplings"):
        try:
            importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{mod}":
                raise


def run_checks(groups=None, names=None):
    """Run the registered checks (optionally only some groups or names), in order."""
    _load_all()
    results = []
    for name, (group, _, run) in CHECKS.items():
        if groups is not None and group not in groups:
            continue
        if names is not None and name not in names:
            continue
        results.append(run())
    return results
