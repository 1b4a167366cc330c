"""Every registered theorem check passes (the same functions `fm-ref verify` runs)."""
import pytest

from fm_ref.verify import CHECKS, _load_all, run_checks

_load_all()


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_check_passes(name):
    (result,) = run_checks(names=[name])
    assert result.passed, f"{name}: measured {result.measured:.3e} > tolerance {result.tolerance:.1e}"
    assert result.reason and result.route


def test_checks_are_registered_for_the_foundation():
    groups = {group for group, _, _ in CHECKS.values()}
    assert "foundation" in groups
    assert sum(1 for g, _, _ in CHECKS.values() if g == "foundation") >= 8
