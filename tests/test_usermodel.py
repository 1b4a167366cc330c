"""Your own saved MLP: ``fm_ref.weights`` reads fm_ref's and PyTorch's .npz layouts into
exactly the MLP a hand transposition gives; a save/load round trip is bit-exact;
``fm-ref log-prob`` and ``fm-ref sample`` print the numbers of the ``CNF.from_mlp`` API;
the reported error estimate bounds the true error of a field with a closed-form flow; bad
files exit 2 with one line naming the key or argument and write nothing.

Derivation: derivations/06-cnf.md (CNF.4); derivations/08-evaluation.md (EVAL.6)
"""
import json

import numpy as np
import pytest
from scipy.linalg import expm
from scipy.stats import multivariate_normal

from fm_ref import cli
from fm_ref.cnf import CNF
from fm_ref.divergence import draw_probes
from fm_ref.nn import MLP
from fm_ref.usermodel import CHECK_FACTOR, log_prob_report
from fm_ref.weights import load_mlp, load_points, save_mlp

K = 2  # time features of the test network


@pytest.fixture(scope="module")
def model():
    mlp = MLP(2, (8, 8), "swish", K)
    return mlp, mlp.init(np.random.default_rng(7))


def _torch_state(params, prefix="", first=False):
    """What numpy.savez of an nn.Sequential(Linear, SiLU, Linear, SiLU, Linear).state_dict()
    holds: keys 0, 2, 4, weights (out, in); with first=True the input is [t-features, x]."""
    out = {}
    for i, (W, b) in enumerate(params):
        if i == 0 and first:
            W = np.concatenate([W[2:], W[:2]])  # fm_ref's rows [x (2), tf (1 + 2K)] -> [tf, x]
        out[f"{prefix}{2 * i}.weight"], out[f"{prefix}{2 * i}.bias"] = W.T.copy(), b
    return out


@pytest.mark.parametrize("first, prefix", [(False, ""), (True, ""), (False, "net.")])
def test_torch_layout_reads_into_the_hand_transposed_mlp(tmp_path, model, first, prefix):
    mlp, params = model
    path = tmp_path / "torch.npz"
    np.savez(path, **_torch_state(params, prefix, first))
    got_mlp, got = load_mlp(path, activation="silu", time_input="first" if first else "last", time_features=K)
    assert repr(got_mlp) == repr(mlp)
    for (W, b), (gW, gb) in zip(params, got):
        assert gW.tobytes() == W.tobytes() and gb.tobytes() == b.tobytes()
    x, t = np.random.default_rng(0).normal(size=(5, 2)), np.linspace(0.0, 1.0, 5)
    assert got_mlp(got, x, t).tobytes() == mlp(params, x, t).tobytes()


def test_a_wrong_time_position_gives_another_field(tmp_path, model):
    """Reading a t-first file as t-last must not give the same network (the option matters)."""
    mlp, params = model
    path = tmp_path / "torch.npz"
    np.savez(path, **_torch_state(params, first=True))
    wrong_mlp, wrong = load_mlp(path, activation="silu", time_input="last", time_features=K)
    x, t = np.ones((3, 2)), np.array([0.1, 0.5, 0.9])
    assert np.max(np.abs(wrong_mlp(wrong, x, t) - mlp(params, x, t))) > 1e-3


def test_save_and_load_round_trip_is_bit_exact(tmp_path, model):
    mlp, params = model
    path = tmp_path / "mine.npz"
    save_mlp(path, mlp, params)
    got_mlp, got = load_mlp(path)
    assert repr(got_mlp) == repr(mlp)
    assert all(gW.tobytes() == W.tobytes() and gb.tobytes() == b.tobytes() for (W, b), (gW, gb) in zip(params, got))


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
    mlp, params = model
    d = tmp_path_factory.mktemp("model")
    save_mlp(d / "mine.npz", mlp, params)
    np.savez(d / "torch.npz", **_torch_state(params, first=True))
    x = np.random.default_rng(3).normal(size=(4, 2))
    np.save(d / "x.npy", x)
    np.savetxt(d / "x.csv", x, delimiter=",", fmt="%.17g")
    return d, x


def test_log_prob_command_equals_the_api(capsys, files, model):
    mlp, params = model
    d, x = files
    out = d / "report.json"
    code, text, _ = _run(capsys, "log-prob", d / "torch.npz", d / "x.csv", "--activation", "silu", "--time-input",
                         "first", "--time-features", K, "--tol", 1e-6, "--hutchinson", 2, "--seed", 5, "--out", out)
    assert code == 0 and "error est." in text and "hutchinson" in text
    rep = json.loads(out.read_text())
    api = CNF.from_mlp(mlp, params, method="DOP853", rtol=1e-6, atol=1e-6)
    ref = api.log_prob(x)
    assert np.array(rep["log_prob"]).tobytes() == ref.log_prob.tobytes()
    assert np.array(rep["x_0"]).tobytes() == ref.x.tobytes() and rep["nfe"] == ref.nfev
    tight = CNF.from_mlp(mlp, params, method="DOP853", rtol=1e-6 / CHECK_FACTOR, atol=1e-6 / CHECK_FACTOR)
    assert np.array(rep["error_estimate"]).tobytes() == np.abs(ref.log_prob - tight.log_prob(x).log_prob).tobytes()
    eps = draw_probes(np.random.default_rng(5), (2, 4, 2))
    hut = api.log_prob(x, divergence="hutchinson", eps=eps)
    assert np.array(rep["hutchinson"]["log_prob"]).tobytes() == hut.log_prob.tobytes()
    single = [api.log_prob(x, divergence="hutchinson", eps=e).log_prob for e in eps]
    np.testing.assert_array_equal(rep["hutchinson"]["se"], np.std(single, axis=0, ddof=1) / np.sqrt(2))
    code, text, _ = _run(capsys, "log-prob", d / "mine.npz", d / "x.npy", "--tol", 1e-6, "--json")
    assert code == 0 and json.loads(text)["log_prob"] == rep["log_prob"]


def test_sample_command_equals_the_api(capsys, files, model):
    mlp, params = model
    d, _ = files
    code, text, _ = _run(capsys, "sample", d / "mine.npz", 6, "--seed", 4, "--json")
    assert code == 0
    rep = json.loads(text)
    ref = CNF.from_mlp(mlp, params, method="DOP853", rtol=1e-10, atol=1e-10).sample(6, np.random.default_rng(4))
    assert np.array(rep["x_1"]).tobytes() == ref.x.tobytes() and rep["nfe"] == ref.nfev
    assert np.array(rep["x_0"]).tobytes() == np.random.default_rng(4).standard_normal((6, 2)).tobytes()


def test_error_estimate_bounds_the_error_of_a_closed_form_flow():
    """An affine field v = x A + t w + b (no hidden layer): [x, t, 1] moves by a matrix
    exponential, and log p₁(x) = log N(x(0); 0, I) − tr A. The reported estimate must be
    within a factor 2 of the true error (DOP853's error shrinks ~100^(8/9) ≈ 60x for the check)."""
    rng = np.random.default_rng(0)
    W, b = rng.normal(size=(3, 2)), rng.normal(size=2)
    x = rng.normal(size=(6, 2))
    rep = log_prob_report(MLP(2, (), "tanh", 0), [(W, b)], x, tol=1e-7)
    M = np.zeros((4, 4))
    M[:2, :2], M[2, :2], M[3, :2], M[3, 2] = W[:2], W[2], b, 1.0
    x_0 = (np.c_[x, np.ones((6, 2))] @ expm(-M))[:, :2]
    exact = multivariate_normal(np.zeros(2)).logpdf(x_0) - np.trace(W[:2])
    err = np.abs(rep["log_prob"] - exact)
    assert np.all(err <= 2.0 * rep["error_estimate"] + 1e-13)  # 1e-13: rounding of the closed form
    assert np.all(err >= 0.5 * rep["error_estimate"] - 1e-13)  # and not a wild overestimate
    flipped = rep["log_prob"] + 2.0 * np.trace(W[:2])  # the log-det's sign flipped fails the same check
    assert not np.any(np.abs(flipped - exact) <= 2.0 * rep["error_estimate"] + 1e-13)


# ----------------------------------------------------------------------------- bad files

def _bad_weights(d, model, how):
    mlp, params = model
    state = _torch_state(params)
    if how == "missing key":
        del state["2.bias"]
    elif how == "no chain":
        state["2.weight"] = state["2.weight"][:, :5]
    elif how == "nan":
        state["4.weight"] = state["4.weight"].copy()
        state["4.weight"][0, 0] = np.nan
    elif how == "time features":
        pass  # read with K = 0: 7 inputs where 3 are expected
    elif how == "not npz":
        (d / "bad.npz").write_text("hello")
        return d / "bad.npz"
    np.savez(d / "bad.npz", **state)
    return d / "bad.npz"


@pytest.mark.parametrize("how, extra, match", [
    ("missing key", ["--time-features", K], "missing key '2.bias'"),
    ("no chain", ["--time-features", K], "key '2.weight'"),
    ("nan", ["--time-features", K], "key '4.weight' has NaN"),
    ("time features", [], "key '0.weight' has 7 inputs, expected d + 1 + 2K = 3"),
    ("not npz", [], "WEIGHTS: "),
    (None, ["--activation", "relu", "--time-features", K], "--activation: 'relu' is not smooth"),
    (None, ["--activation", "gelu2", "--time-features", K], "--activation: expected one of"),
    (None, ["--time-features", K, "--activation", ""], "--activation: expected one of"),
])
def test_bad_weights_exit_2_naming_the_key_and_write_nothing(capsys, tmp_path, files, model, how, extra, match):
    d, _ = files
    path = _bad_weights(tmp_path, model, how) if how else d / "torch.npz"
    act = [] if "--activation" in extra else ["--activation", "silu"]
    out = tmp_path / "out.json"
    for cmd in (["log-prob", path, d / "x.npy"], ["sample", path, 3]):
        code, text, err = _run(capsys, *cmd, *act, *extra, "--out", out)
        assert code == 2 and err.count("\n") == 1 and match in err, err
        assert not out.exists() and text == ""


def test_bad_points_exit_2_naming_points(capsys, tmp_path, files):
    d, _ = files
    out = tmp_path / "out.json"
    np.save(tmp_path / "wide.npy", np.zeros((3, 3)))
    np.save(tmp_path / "flat.npy", np.zeros(3))
    (tmp_path / "text.csv").write_text("a,b\n1,2\n")
    (tmp_path / "p.txt").write_text("1,2\n")
    nan = np.zeros((2, 2))
    nan[1, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    for name, match in [("wide.npy", "POINTS: expected 2 columns"), ("flat.npy", "POINTS: expected an array of shape"),
                        ("text.csv", "POINTS: "), ("p.txt", "POINTS: expected a .npy or .csv"),
                        ("nan.npy", "POINTS: has NaN")]:
        code, _, err = _run(capsys, "log-prob", d / "mine.npz", tmp_path / name, "--out", out)
        assert code == 2 and match in err and err.count("\n") == 1, err
        assert not out.exists()


def test_other_bad_arguments(capsys, files):
    d, _ = files
    for argv, match in [(["log-prob", d / "mine.npz", d / "x.npy", "--hutchinson", 1, "--seed", 0], "--hutchinson"),
                        (["log-prob", d / "mine.npz", d / "x.npy", "--hutchinson", 4], "--seed"),
                        (["log-prob", d / "mine.npz", d / "x.npy", "--tol", 1e-15], "--tol"),
                        (["log-prob", d / "mine.npz", d / "x.npy", "--activation", "tanh"], "contradicts"),
                        (["log-prob", d / "mine.npz", d / "x.npy", "--time-features", 1], "2K"),
                        (["sample", d / "mine.npz", 0], "N:"),
                        (["sample", d / "torch.npz", 2, "--time-features", K], "--activation: required")]:
        code, _, err = _run(capsys, *argv)
        assert code == 2 and match in err, err


def test_load_points_reads_npy_and_csv_alike(files):
    d, x = files
    assert load_points(d / "x.npy", 2).tobytes() == x.tobytes() == load_points(d / "x.csv", 2).tobytes()


def test_readme_walkthrough_runs(capsys, tmp_path, monkeypatch, model):
    """The README's 'Check your own model': a Sequential's state_dict saved with NumPy, then
    the log-prob command exactly as written there."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### Check your own model.*?```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert block[0].startswith("fm-ref log-prob model.npz points.npy") and "--present" in block[1]
    mlp = MLP(2, (8, 8), "swish", 0)
    params = mlp.init(np.random.default_rng(2))
    monkeypatch.chdir(tmp_path)
    np.savez("model.npz", **_torch_state(params))
    np.save("points.npy", np.random.default_rng(3).normal(size=(3, 2)))
    code, out, _ = _run(capsys, *block[0].split()[1:], "--tol", "1e-6")
    assert code == 0 and "hutchinson" in out
