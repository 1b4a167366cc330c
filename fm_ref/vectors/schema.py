"""Strict reading and validation of vectors and results files (``fm-ref check``).

A checker is only as good as its reference file: a NaN reference value, a NaN or
negative tolerance, a boolean where a number belongs or a duplicated key would let a
wrong result pass. So both files are read strictly and the reference is validated as
closely as the results:

- the file is a regular file (not a device or a pipe, which could be endless) of at most
  ``MAX_FILE_BYTES``; UTF-8 JSON in the strict sense: no ``NaN``/``Infinity``, no number
  beyond float64, no key twice in one object, nesting at most ``MAX_DEPTH`` deep;
- ``schema_version`` is the integer ``SCHEMA_VERSION`` (``true`` and ``1.0`` are not);
- every output is a finite number or a non-empty rectangular nested list of finite
  numbers (booleans and strings are not numbers);
- every reference tolerance has ``abs`` finite and ≥ 0 and ``rel`` finite in [0, 1)
  (a relative tolerance of 1 passes a result of 0 whatever the reference).

Errors are ``ValueError`` naming the file's role and the place, e.g.
``VECTORS: cases[3].outputs.x: expected finite numbers, got NaN at index (2,)``.
"""
import json
import math
import os
import stat
import sys

import numpy as np

__all__ = ["MAX_FILE_BYTES", "MAX_DEPTH", "read_json", "check_structure", "check_reference",
           "number_array", "worse"]

#: Largest file read (the committed vectors are 128 KiB; every kind at its default sizes
#: stays under 1 MiB): a bound far above any real file that stops an endless one.
MAX_FILE_BYTES = 64 * 2**20
#: Deepest JSON nesting accepted: the schema nests at most 6 levels (top, cases, case,
#: outputs, and arrays of up to 3 dimensions); 32 leaves room and stops pathological files.
MAX_DEPTH = 32


class _BadJSON(ValueError):
    """A strict-JSON violation found while parsing (re-raised naming the file)."""


def _reject_constant(name):
    raise _BadJSON(f"{name} is not a finite number (strict JSON has no NaN or Infinity)")


def _parse_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise _BadJSON(f"the number {text[:40]} is beyond float64")
    return value


def _parse_int(text):
    # Python refuses to parse more than 4300 digits; anything over 309 digits overflows float64.
    if len(text.lstrip("-")) > 309 or abs(int(text)) > sys.float_info.max:
        raise _BadJSON(f"the integer {text[:20]}... is too large for float64")
    return int(text)


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise _BadJSON(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out


def _depth(obj):
    """Nesting depth of lists and dicts, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def read_json(path, what):
    """Parse a regular file of strict JSON; every problem raises ``ValueError`` naming ``what``.

    Parameters
    ----------
    path : str or os.PathLike
    what : str, the file's role in messages ('VECTORS', 'RESULTS')

    Returns
    -------
    The parsed object (dicts, lists, str, int, float, bool, None).
    """
    info = os.stat(path)  # a missing file raises FileNotFoundError (the CLI reports it)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{what}: {path} is not a regular file (a directory, device or pipe is refused)")
    if info.st_size > MAX_FILE_BYTES:
        raise ValueError(f"{what}: {path} is {info.st_size} bytes, more than the {MAX_FILE_BYTES} accepted")
    with open(path, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"{what}: {path} grew beyond the {MAX_FILE_BYTES} bytes accepted while being read")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what}: {path} is not a UTF-8 text file") from None
    try:
        payload = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float,
                             parse_int=_parse_int, object_pairs_hook=_no_duplicate_keys)
    except _BadJSON as exc:
        raise ValueError(f"{what}: {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{what}: {path} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    if _depth(payload) > MAX_DEPTH:
        raise ValueError(f"{what}: {path} is nested too deeply (at most {MAX_DEPTH} levels)")
    return payload


def check_structure(payload, what, version):
    """The top level of a vectors or results payload: an object, the schema version, a
    list of cases each with a unique string id and an outputs object."""
    if not isinstance(payload, dict):
        raise ValueError(f"{what}: expected a JSON object at the top level, got {type(payload).__name__}")
    got = payload.get("schema_version")
    if type(got) is not int or got != version:  # True == 1 and 1.0 == 1 in Python: not versions
        raise ValueError(f"{what}: expected schema_version {version} (an integer), got {got!r}")
    cases = payload.get("cases")
    if not isinstance(cases, list):
        raise ValueError(f"{what}: expected a list 'cases', got {type(cases).__name__}")
    seen = set()
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not isinstance(case.get("id"), str) or not case["id"]:
            raise ValueError(f"{what}: case {i} has no string 'id'")
        if case["id"] in seen:
            raise ValueError(f"{what}: case id {case['id']!r} appears twice")
        seen.add(case["id"])
        if not isinstance(case.get("outputs"), dict):
            raise ValueError(f"{what}: case {case['id']!r} has no 'outputs' object")
    return payload


def _tolerance_value(tol, key, where):
    value = tol.get(key) if isinstance(tol, dict) else None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}.tolerance.{key}: expected a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}.tolerance.{key}: expected a finite number >= 0, got {value!r}")
    return value


def check_reference(payload, what="VECTORS", version=1):
    """Validate a reference payload completely: structure, kinds, tolerances, and every
    output a non-empty array of finite numbers. Returns ``{id: {name: float64 array}}``."""
    check_structure(payload, what, version)
    if not payload["cases"]:
        raise ValueError(f"{what}: the reference has no cases")
    arrays = {}
    for i, case in enumerate(payload["cases"]):
        where = f"{what}: cases[{i}]"
        if not isinstance(case.get("kind"), str):
            raise ValueError(f"{where}.kind: expected a string, got {type(case.get('kind')).__name__}")
        if not isinstance(case.get("tolerance"), dict):
            raise ValueError(f"{where}.tolerance: expected an object {{'abs': ..., 'rel': ...}}")
        _tolerance_value(case["tolerance"], "abs", where)
        if _tolerance_value(case["tolerance"], "rel", where) >= 1.0:
            raise ValueError(f"{where}.tolerance.rel: expected a value < 1 (a relative tolerance of 1 "
                             f"passes 0 for any reference), got {case['tolerance']['rel']!r}")
        if not case["outputs"]:
            raise ValueError(f"{where}.outputs: expected at least one output, got none")
        arrays[case["id"]] = {name: number_array(value, f"{where}.outputs.{name}")
                              for name, value in case["outputs"].items()}
    return arrays


def _shape(value, where, depth=0):
    """The shape of a number or a rectangular nested list of numbers; raises otherwise."""
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise ValueError(f"{where}: nested more than {MAX_DEPTH} deep")
        if not value:
            return (0,)
        shapes = {_shape(v, where, depth + 1) for v in value}
        if len(shapes) != 1:
            raise ValueError(f"{where}: expected a rectangular array of numbers, got rows of shapes "
                             f"{sorted(shapes, key=len)[:2]}")
        return (len(value),) + shapes.pop()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: expected numbers, got {type(value).__name__}"
                         f"{' ' + repr(value)[:20] if isinstance(value, (bool, str)) else ''}")
    return ()


def number_array(value, where):
    """``value`` (a number, a nested list, or a real numeric array) as a float64 array,
    non-empty and finite; anything else raises ``ValueError`` naming ``where``."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu":
            raise ValueError(f"{where}: expected real numbers, got an array of dtype {value.dtype}")
    else:
        _shape(value, where)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except OverflowError:
        raise ValueError(f"{where}: a number is too large for float64") from None
    if arr.size == 0:
        raise ValueError(f"{where}: expected at least one number, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if np.any(bad):
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        value = float(arr[at])
        raise ValueError(f"{where}: expected finite numbers, got {'NaN' if value != value else value} at index {at}")
    return arr


def worse(a, b):
    """The larger of two errors, NaN if either is NaN (Python's max drops a NaN in front)."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return max(a, b)
