"""Hypothesis profiles: 'ci' (default; derandomized, bounded) and 'thorough'.

Choose with HYPOTHESIS_PROFILE=thorough. NumPy warnings are errors (pyproject's
filterwarnings = error, and numpy's own error state below).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    max_examples=20,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    deadline=None,
    print_blob=True,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _numpy_errors_raise():
    """Overflow, division by zero and invalid operations raise inside every test."""
    with np.errstate(divide="raise", over="raise", invalid="raise", under="ignore"):
        yield
