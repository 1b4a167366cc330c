"""Input validation: every helper raises naming the argument, converts float32 to float64,
and lets autograd's traced arrays through (it is called inside autograd.grad)."""
import autograd
import autograd.numpy as anp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fm_ref._validate import (as_finite_float, as_float_array, as_generator, as_points, as_positive_int,
                              as_time, check_same_shape)

# A derivative through the identity-like validators: exact up to one rounding.
AUTOGRAD_RTOL = 1e-15


# --------------------------------------------------------------- as_float_array


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.longdouble])
def test_floats_of_any_width_become_float64(dtype):
    value = np.array([[0.5, -1.25]], dtype=dtype)
    out = as_float_array(value, "v")
    assert out.dtype == np.float64 and np.array_equal(out, value.astype(np.float64))
    assert as_points(value, "v").dtype == np.float64


@pytest.mark.parametrize("bad", [np.array([1, 2]), np.array([1, 2], dtype=np.uint8), np.array([True]),
                                 True, np.bool_(False), np.array([1 + 2j]), np.array(["a"]),
                                 np.array([object()]), None, [[1.0, 2.0], [3.0]], "1.0"])
def test_non_float_input_raises_a_type_error_naming_it(bad):
    with pytest.raises(TypeError, match="^myarg: "):
        as_float_array(bad, "myarg")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, [0.0, np.nan], [[np.inf]]])
def test_non_finite_input_raises_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match="^myarg: .*finite"):
        as_float_array(bad, "myarg")


def test_a_python_int_scalar_is_a_number():
    assert as_float_array(0, "t") == 0.0 and as_float_array(0, "t").dtype == np.float64
    assert as_time(1, name="t") == 1.0 and isinstance(as_time(1), float)


# ---------------------------------------------------------------------- as_points


@given(st.integers(1, 5), st.integers(1, 4))
def test_points_of_the_right_shape_pass(n, d):
    x = np.arange(n * d, dtype=np.float32).reshape(n, d)
    out = as_points(x, "x", dim=d, n=n)
    assert out.shape == (n, d) and out.dtype == np.float64


@pytest.mark.parametrize("bad,kwargs", [(np.zeros(3), {}), (np.zeros((1, 2, 3)), {}), (np.float64(1.0), {}),
                                        (np.zeros((0, 2)), {}), (np.zeros((2, 3)), {"dim": 2}),
                                        (np.zeros((2, 3)), {"n": 3})])
def test_points_of_the_wrong_shape_raise_naming_them(bad, kwargs):
    with pytest.raises(ValueError, match="^pts: "):
        as_points(bad, "pts", **kwargs)


# ------------------------------------------------------------------------ as_time


@given(st.floats(0.0, 1.0))
def test_times_in_the_unit_interval_pass_as_floats(t):
    out = as_time(np.float32(t) if t > 0.5 else t)
    assert isinstance(out, float) and 0.0 <= out <= 1.0


def test_time_arrays_pass_as_float64_arrays():
    out = as_time(np.array([0.0, 0.5, 1.0], dtype=np.float32), n=3)
    assert out.dtype == np.float64 and out.shape == (3,)


@pytest.mark.parametrize("bad,kwargs", [(-1e-300, {}), (1.0 + 1e-15, {}), (np.array([0.5, 2.0]), {}),
                                        (np.array([0.5, 0.5]), {"n": 3}), (np.zeros((2, 1)), {}),
                                        (0.7, {"hi": 0.5}), (0.2, {"lo": 0.3}), (np.nan, {})])
def test_bad_times_raise_naming_them(bad, kwargs):
    with pytest.raises(ValueError, match="^when: "):
        as_time(bad, name="when", **kwargs)
    with pytest.raises(TypeError, match="^when: "):
        as_time(np.array([0, 1]), name="when")


# ----------------------------------------------------------------- scalars, rng


def test_positive_ints():
    assert as_positive_int(np.int64(3), "n") == 3 and type(as_positive_int(np.int64(3), "n")) is int
    assert as_positive_int(0, "n", minimum=0) == 0
    for bad in (True, 2.0, "2", None, np.array([2])):
        with pytest.raises(TypeError, match="^count: "):
            as_positive_int(bad, "count")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="^count: "):
            as_positive_int(bad, "count")


def test_finite_floats_and_their_ranges():
    assert as_finite_float(np.float32(0.25), "s") == 0.25 and type(as_finite_float(np.float32(0.25), "s")) is float
    assert as_finite_float(2, "s") == 2.0
    for bad in (True, "0.1", None, [0.1], np.array([0.1]), 1 + 1j):
        with pytest.raises(TypeError, match="^s: "):
            as_finite_float(bad, "s")
    for bad, kwargs in ((np.nan, {}), (np.inf, {}), (-0.1, {"lo": 0.0}), (0.0, {"lo": 0.0, "lo_open": True}),
                        (1.0, {"hi": 1.0, "hi_open": True}), (1.5, {"hi": 1.0})):
        with pytest.raises(ValueError, match="^s: "):
            as_finite_float(bad, "s", **kwargs)
    assert as_finite_float(0.0, "s", lo=0.0) == 0.0 and as_finite_float(1.0, "s", hi=1.0) == 1.0


def test_generators():
    rng = np.random.default_rng(0)
    assert as_generator(rng) is rng
    for bad in (0, None, np.random.RandomState(0), np.random):
        with pytest.raises(TypeError, match="^random_state: .*Generator"):
            as_generator(bad, "random_state")


def test_same_shape():
    check_same_shape(np.zeros((2, 3)), np.ones((2, 3)), "a", "b")
    with pytest.raises(ValueError, match="^b: .*a"):
        check_same_shape(np.zeros((2, 3)), np.zeros((3, 2)), "a", "b")


# ---------------------------------------------------------------- autograd boxes


def test_traced_values_pass_through_inside_autograd():
    """Each helper sees an ArrayBox inside autograd.grad, validates its value and returns the
    traced object, so the derivative flows: d/ds Σ (s·x)² = 2 s Σ x², d/ds s² = 2 s."""
    x = np.array([[0.5, -1.0], [2.0, 0.25]])

    def through_points(s):
        y = as_points(s * x, "y", dim=2, n=2)
        z = as_float_array(y, "z")
        check_same_shape(z, x, "x", "z")
        return anp.sum(z**2)

    s = 1.3
    assert abs(autograd.grad(through_points)(s) - 2 * s * np.sum(x**2)) <= AUTOGRAD_RTOL * 2 * s * np.sum(x**2)
    assert abs(autograd.grad(lambda t: as_time(t) ** 2)(0.4) - 0.8) <= AUTOGRAD_RTOL
    assert abs(autograd.grad(lambda t: as_finite_float(t, "t", lo=0.0) ** 2)(0.4) - 0.8) <= AUTOGRAD_RTOL
    g = autograd.elementwise_grad(lambda t: as_time(t, n=3) ** 2)(np.array([0.1, 0.2, 0.3]))
    assert np.max(np.abs(g - [0.2, 0.4, 0.6])) <= AUTOGRAD_RTOL


def test_traced_values_are_still_checked():
    with pytest.raises(ValueError, match="^t: "):
        autograd.grad(lambda t: as_time(t))(1.5)
    with pytest.raises(ValueError, match="^y: "):
        autograd.grad(lambda s: anp.sum(as_points(s * np.ones(3), "y")))(1.0)
    with pytest.raises(ValueError, match="^y: .*finite"):
        autograd.grad(lambda s: anp.sum(as_points(s * np.array([[np.inf]]), "y")))(1.0)
