"""Hypothesis profiles: 'ci' (default; derandomized, bounded) and 'thorough'.

Choose with HYPOTHESIS_PROFILE=thorough. NumPy warnings are errors (pyproject's
filterwarnings = error, and numpy's own error state below).
"""
import os
import sys

# One BLAS thread unless the caller chose: the suite's matrices are small, and on a shared
# 2-core machine OpenBLAS's spinning worker threads made small products ~10× slower.
_USER_SET_BLAS = "OPENBLAS_NUM_THREADS" in os.environ
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
_NUMPY_WAS_LOADED = "numpy" in sys.modules

import numpy as np  # noqa: E402
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

if _NUMPY_WAS_LOADED and not _USER_SET_BLAS:  # too late for the variable: set it at run time
    from fm_ref.bench.cnf import blas_threads

    blas_threads(1)


@pytest.fixture(autouse=True)
def _numpy_errors_raise():
    """Overflow, division by zero and invalid operations raise inside every test."""
    with np.errstate(divide="raise", over="raise", invalid="raise", under="ignore"):
        yield
