"""``fm-ref check`` distrusts its reference file: every way a corrupted or hostile vectors
file could make a wrong result pass is an error (exit 2, one line naming the place),
and a NaN in a comparison fails the case. The files are also read defensively: regular
files only, a size cap, strict JSON (no NaN, no number beyond float64, no duplicated
key, bounded nesting). Derivation: derivations/08-evaluation.md (EVAL.6)
"""
import copy
import json
import math
import os
import pathlib
import re

import pytest

from fm_ref import cli, vectors
from fm_ref.vectors import schema

COMMITTED = pathlib.Path(__file__).resolve().parent / "data" / "vectors.json"


@pytest.fixture(scope="module")
def small():
    """The committed vectors, cut to their path_schedule cases (6 cases, a few KiB)."""
    payload = json.loads(COMMITTED.read_text())
    payload["cases"] = [c for c in payload["cases"] if c["kind"] == "path_schedule"]
    return payload


def _write(tmp_path, name, payload):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def _wrong_by_100(payload):
    """Results that are wrong by 100 in every output element."""
    bad = copy.deepcopy(payload)
    for case in bad["cases"]:
        for name, value in case["outputs"].items():
            case["outputs"][name] = json.loads(json.dumps(value), parse_float=lambda s: float(s) + 100.0,
                                               parse_int=lambda s: int(s) + 100)
    return bad


def _check(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _one_line_error(capsys, *argv):
    code, out, err = _check(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.startswith("fm-ref: error: ") and err.count("\n") == 1, err
    return err


# ----------------------------------------------------------------------------- the reference

REFERENCE_MUTATIONS = {
    # what a hostile or careless vectors file may hold -> the words the error must contain
    "nan reference value": (lambda c: c["outputs"]["alpha_t"].__setitem__(2, math.nan), "NaN is not a finite"),
    "inf reference value": (lambda c: c["outputs"]["alpha_t"].__setitem__(2, math.inf), "Infinity is not a finite"),
    "nan abs tolerance": (lambda c: c["tolerance"].__setitem__("abs", math.nan), "NaN"),
    "nan rel tolerance": (lambda c: c["tolerance"].__setitem__("rel", math.nan), "NaN"),
    "inf tolerance": (lambda c: c["tolerance"].__setitem__("abs", math.inf), "Infinity"),
    "negative tolerance": (lambda c: c["tolerance"].__setitem__("abs", -1.0), r"cases\[0\]\.tolerance\.abs"),
    "rel tolerance of 1": (lambda c: c["tolerance"].__setitem__("rel", 1.0), r"cases\[0\]\.tolerance\.rel"),
    "boolean tolerance": (lambda c: c["tolerance"].__setitem__("abs", True), r"tolerance\.abs: expected a number"),
    "string tolerance": (lambda c: c["tolerance"].__setitem__("rel", "1e-12"), r"tolerance\.rel: expected a number"),
    "no tolerance": (lambda c: c.pop("tolerance"), r"cases\[0\]\.tolerance"),
    "boolean value": (lambda c: c["outputs"]["alpha_t"].__setitem__(1, True), r"outputs\.alpha_t: expected numbers"),
    "string value": (lambda c: c["outputs"]["alpha_t"].__setitem__(1, "0.05"), r"outputs\.alpha_t: expected numbers"),
    "null value": (lambda c: c["outputs"]["alpha_t"].__setitem__(1, None), r"outputs\.alpha_t: expected numbers"),
    "object value": (lambda c: c["outputs"].__setitem__("alpha_t", {"a": 1}), r"outputs\.alpha_t: expected numbers"),
    "ragged value": (lambda c: c["outputs"].__setitem__("alpha_t", [[1.0], [1.0, 2.0]]), "rectangular"),
    "empty value": (lambda c: c["outputs"].__setitem__("alpha_t", []), "at least one number"),
    "no outputs": (lambda c: c["outputs"].clear(), "at least one output"),
    "no kind": (lambda c: c.pop("kind"), r"cases\[0\]\.kind"),
}


@pytest.mark.parametrize("how", sorted(REFERENCE_MUTATIONS))
def test_a_corrupted_reference_is_an_error_not_a_pass(capsys, tmp_path, small, how):
    """Before: a NaN tolerance or reference value let results wrong by 100 pass (exit 0)."""
    mutate, words = REFERENCE_MUTATIONS[how]
    ref = copy.deepcopy(small)
    mutate(ref["cases"][0])
    err = _one_line_error(capsys, "check", _write(tmp_path, "v.json", ref), _write(tmp_path, "r.json", _wrong_by_100(small)))
    assert err.startswith("fm-ref: error: VECTORS") and re.search(words, err), err


@pytest.mark.parametrize("version", [True, 1.0, "1", None, 2])
def test_the_schema_version_is_the_integer_one(capsys, tmp_path, small, version):
    ref = dict(small, schema_version=version)
    err = _one_line_error(capsys, "check", _write(tmp_path, "v.json", ref), _write(tmp_path, "r.json", small))
    assert "schema_version 1 (an integer)" in err


def test_a_reference_without_cases_is_an_error(capsys, tmp_path, small):
    err = _one_line_error(capsys, "check", _write(tmp_path, "v.json", dict(small, cases=[])),
                          _write(tmp_path, "r.json", small))
    assert "VECTORS: the reference has no cases" in err


def test_compare_validates_the_reference_given_as_a_dict(small):
    """The Python entry point checks the same things (a NaN reference never passes)."""
    ref = copy.deepcopy(small)
    ref["cases"][2]["outputs"]["sigma_t"][0] = math.nan
    with pytest.raises(ValueError, match=r"^VECTORS: cases\[2\]\.outputs\.sigma_t: expected finite numbers, got NaN"):
        vectors.compare(ref, small)
    ref = copy.deepcopy(small)
    ref["cases"][1]["tolerance"]["rel"] = -0.0 - 1e-300
    with pytest.raises(ValueError, match=r"^VECTORS: cases\[1\]\.tolerance\.rel: expected a finite number >= 0"):
        vectors.compare(ref, small)


def test_a_nan_in_a_comparison_fails_the_case_and_is_never_dropped_by_a_max(small):
    """A zero tolerance with a zero error is a pass, a non-zero error a failure (inf), and an
    error of inf/inf (NaN) fails the case instead of vanishing in max(0.0, nan) = 0.0."""
    ref = copy.deepcopy(small)
    ref["cases"][0]["tolerance"].update(abs=0.0, rel=0.0)
    assert all(r["passed"] for r in vectors.compare(ref, ref))
    got = copy.deepcopy(small)
    got["cases"][0]["outputs"]["alpha_t"][5] += 1e-12
    rep = vectors.compare(ref, got)
    assert not rep[0]["passed"] and rep[0]["ratio"] == math.inf and all(r["passed"] for r in rep[1:])
    assert math.isnan(schema.worse(0.0, math.nan)) and math.isnan(schema.worse(math.nan, 0.0))
    # |got − ref| beyond float64 is an infinite error, a failure, and no overflow warning
    ref["cases"][0]["outputs"]["alpha_t"][5] = -1.7e308
    ref["cases"][0]["tolerance"].update(abs=1.0, rel=0.5)
    got["cases"][0]["outputs"]["alpha_t"][5] = 1.7e308
    rep = vectors.compare(ref, got)
    assert not rep[0]["passed"] and rep[0]["max_abs"] == math.inf


# ----------------------------------------------------------------------------- the results

@pytest.mark.parametrize("value, words", [(True, "expected numbers, got bool"), ("1.0", "expected numbers, got str"),
                                          (None, "expected numbers, got NoneType")])
def test_results_hold_numbers_not_booleans_or_strings(capsys, tmp_path, small, value, words):
    got = copy.deepcopy(small)
    got["cases"][4]["outputs"]["d_alpha_t"][0] = value
    err = _one_line_error(capsys, "check", _write(tmp_path, "v.json", small), _write(tmp_path, "r.json", got))
    assert r"RESULTS: cases[4].outputs.d_alpha_t" in err and words in err


# ----------------------------------------------------------------------------- the files

@pytest.mark.parametrize("text, words", [
    ('{"schema_version": 1, "cases": [], "x": NaN}', "NaN is not a finite number"),
    ('{"schema_version": 1, "cases": [], "x": -Infinity}', "-Infinity is not a finite number"),
    ('{"schema_version": 1, "cases": [], "x": 1e400}', "beyond float64"),
    ('{"schema_version": 1, "cases": [], "x": 1' + "0" * 400 + "}", "too large for float64"),
    ('{"schema_version": 1, "cases": [], "x": 1' + "0" * 5000 + "}", "too large for float64"),
    ('{"schema_version": 1, "schema_version": 1, "cases": []}', "'schema_version' appears twice"),
    ('{"schema_version": 1, "cases": [], "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"schema_version": 1, "cases": [], "x": ' + "[" * 40 + "]" * 40 + "}", "nested too deeply"),
    ("\ufeff{}", "not valid JSON"),
])
def test_strict_json_both_files(capsys, tmp_path, small, text, words):
    bad = _write(tmp_path, "bad.json", text)
    good = _write(tmp_path, "good.json", small)
    for argv, role in (((bad, good), "VECTORS"), ((good, bad), "RESULTS")):
        err = _one_line_error(capsys, "check", *argv)
        assert err.startswith(f"fm-ref: error: {role}: ") and words in err, err


def test_non_regular_files_and_huge_files_are_refused(capsys, tmp_path, small, monkeypatch):
    """A device or a pipe could be endless (check read /dev/zero until memory ran out)."""
    good = _write(tmp_path, "good.json", small)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block for ever: it must not be opened
    for other in ("/dev/zero", str(fifo), str(tmp_path)):
        err = _one_line_error(capsys, "check", other, good)
        assert "is not a regular file" in err
        err = _one_line_error(capsys, "check", good, other)
        assert "RESULTS" in err and "is not a regular file" in err
    monkeypatch.setattr(schema, "MAX_FILE_BYTES", 1000)
    err = _one_line_error(capsys, "check", good, good)
    assert "more than the 1000 accepted" in err


def test_the_report_cannot_replace_an_input(capsys, tmp_path, small):
    ref, got = _write(tmp_path, "v.json", small), _write(tmp_path, "r.json", small)
    before = pathlib.Path(ref).read_bytes()
    os.symlink(ref, tmp_path / "link.json")
    for target, role in ((ref, "VECTORS"), (got, "RESULTS"), (str(tmp_path / "link.json"), "VECTORS")):
        err = _one_line_error(capsys, "check", ref, got, "--json", target)
        assert f"--json: {target!r} is the {role} file" in err
    assert pathlib.Path(ref).read_bytes() == before
    code, out, _ = _check(capsys, "check", ref, got, "--json", str(tmp_path / "report.json"))
    assert code == 0 and "wrote" in out and "replaced" not in out
    code, out, _ = _check(capsys, "check", ref, got, "--json", str(tmp_path / "report.json"))
    assert code == 0 and "(replaced the existing file)" in out


def test_the_committed_reference_is_valid_and_passes_against_itself():
    ref = vectors.load_json(COMMITTED, "VECTORS")
    arrays = schema.check_reference(ref)
    assert len(arrays) == len(ref["cases"]) and all(r["passed"] for r in vectors.compare(ref, ref))
