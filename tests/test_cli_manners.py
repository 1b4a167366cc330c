"""The command line's manners: every error one line ``fm-ref: error: ...`` naming the
option, exit 2 (argparse's own usage errors included); a closed pipe ends quietly;
every file written atomically, and an overwrite said in the output line."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from fm_ref import _io, cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "tests" / "data" / "vectors.json"


def one_line_error(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert err.startswith("fm-ref: error: ") and err.count("\n") == 1 and "usage:" not in err, err
    return err


@pytest.mark.parametrize("argv, words", [
    (("demo", "--seed", "-1"), "argument --seed: expected a non-negative integer"),
    (("demo", "--seed", "x"), "argument --seed: expected a non-negative integer, got 'x'"),
    (("demo", "--seed", "1" * 5000), "argument --seed"),
    (("demo", "--steps", "0"), "argument --steps"),
    (("demo", "--steps", str(10**30)), "argument --steps: expected a positive integer in [1, 1000000]"),
    (("demo", "--steps", "1e3"), "argument --steps"),
    (("demo", "--n-eval", "1"), "argument --n-eval"),
    (("demo", "--n-eval", "10001"), "argument --n-eval"),
    (("demo", "--jobs", "100000"), "argument --jobs"),
    (("demo", "--out", ""), "argument --out: expected a file or folder name"),
    (("demo", "--data", "nope"), "argument --data: invalid choice"),
    (("demo", "--bogus"), "unrecognized arguments: --bogus"),
    (("vectors",), "the following arguments are required: --out"),
    (("vectors", "--out", ""), "argument --out: expected a file or folder name"),
    (("vectors", "--out", "   "), "argument --out"),
    (("verify", "--json", ""), "argument --json"),
    (("check", "", "x.json"), "argument VECTORS"),
    (("check", "x.json"), "the following arguments are required: RESULTS"),
    (("bench", "--repeats", "99999999"), "argument --repeats"),
    (("frobnicate",), "argument COMMAND: invalid choice"),
    ((), "the following arguments are required: COMMAND"),
])
def test_usage_errors_are_one_line_naming_the_option(capsys, argv, words):
    """Before: argparse printed its usage first (two or three lines), --seed -1 failed
    deep inside with 'expected non-negative integer', an empty --out named no option."""
    err = one_line_error(capsys, *argv)
    assert words in err, err


def test_library_failures_are_one_line_too(capsys, monkeypatch, tmp_path):
    from fm_ref import vectors

    def stiff(*a, **k):
        raise FloatingPointError("velocity: non-finite value at t = 0.5")

    monkeypatch.setattr(vectors, "write_vectors", stiff)
    err = one_line_error(capsys, "vectors", "--out", str(tmp_path / "v.json"))
    assert err == "fm-ref: error: velocity: non-finite value at t = 0.5\n"

    def multi_line(*a, **k):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(vectors, "write_vectors", multi_line)
    assert one_line_error(capsys, "vectors", "--out", str(tmp_path / "v.json")).endswith("first line second line\n")


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`fm-ref check ... --all | head -1`: no traceback, no 'Broken pipe' message."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "fm_ref", "check", str(COMMITTED), str(COMMITTED), "--all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after one line, as `head -1` does
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141
    assert err == "", err


def test_a_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    target = tmp_path / "report.json"
    target.write_text("old")
    os.chmod(target, 0o640)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _io.atomic_write_text(target, "new" * 1000)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["report.json"]  # no temporary left
    monkeypatch.undo()
    assert _io.atomic_write_text(target, "new") is True
    assert target.read_text() == "new" and (os.stat(target).st_mode & 0o777) == 0o640
    assert _io.atomic_write_bytes(tmp_path / "fresh.bin", b"\x00\x01") is False


def test_every_cli_write_is_atomic_and_says_when_it_replaces(capsys, tmp_path, monkeypatch):
    """vectors --out and every --json go through fm_ref._io (an interrupted run keeps the
    old file), and the output line says when an existing file was replaced."""
    out = tmp_path / "v.json"
    out.write_text("old vectors")
    calls = []
    real = _io.atomic_write_bytes
    monkeypatch.setattr(_io, "atomic_write_bytes", lambda p, d: calls.append(p) or real(p, d))
    assert cli.main(["vectors", "--out", str(out), "--kind", "path_schedule"]) == 0
    assert "(replaced the existing file)" in capsys.readouterr().out and calls == [str(out)]
    report = tmp_path / "r.json"
    assert cli.main(["check", str(out), str(out), "--json", str(report)]) == 0
    assert "replaced" not in capsys.readouterr().out and json.loads(report.read_text())["passed"]
    assert calls[-1] == str(report)

    def broken(*a, **k):
        raise OSError(28, "No space left on device", str(report))

    monkeypatch.setattr(_io.tempfile, "mkstemp", broken)
    err = one_line_error(capsys, "check", str(out), str(out), "--json", str(report))
    assert "No space left on device" in err and json.loads(report.read_text())["passed"]
