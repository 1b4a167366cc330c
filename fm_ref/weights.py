"""Read and write a velocity MLP's weights, and a user's points, for ``fm-ref log-prob``
and ``fm-ref sample``.

Two ``.npz`` layouts are read (``numpy.savez``):

- **fm_ref**: arrays ``W0, b0, W1, b1, …`` with W of shape (fan_in, fan_out), as
  ``MLP.init`` makes them, and optional metadata ``activation`` (a string),
  ``time_features`` (an int K) and ``time_input`` ('last' or 'first'). ``save_mlp``
  writes it; a round trip is bit-exact.
- **torch**: the ``state_dict`` of a PyTorch ``nn.Sequential`` of ``Linear`` layers with
  activations between them, saved with NumPy::

      numpy.savez("model.npz", **{k: v.detach().double().numpy() for k, v in net.state_dict().items()})

  keys ``0.weight, 0.bias, 2.weight, 2.bias, …`` (any common prefix, e.g. ``net.0.weight``,
  is accepted); each weight has PyTorch's shape (out, in) and is transposed to fm_ref's
  (fan_in, fan_out). The activation is not in a state_dict: name it.

The network input is the point x and the time features of t, in fm_ref's order
tf(t) = [t, sin(2πkt) for k = 1..K, cos(2πkt) for k = 1..K] (all sines, then all cosines;
just [t] when K = 0), either after x (``time_input='last'``: [x, tf(t)], fm_ref's own) or
before it (``'first'``: [tf(t), x]); a 'first' network is read into fm_ref's MLP by moving
the first-layer rows of tf(t) after those of x, which changes no output bit.
Activations must be smooth, since the CNF log-likelihood needs the divergence: tanh,
softplus (log(1 + eᵃ); PyTorch's ``Softplus`` returns a itself above its threshold 20,
within e⁻²⁰ ≈ 2.1e-9 of it) and SiLU/swish (a·sigmoid(a)); ReLU and its kin are refused.

Every error is a ``ValueError`` whose message starts with the file's role (WEIGHTS or
POINTS) and names the key or the argument.
"""
import re
import zipfile

import numpy as np

from .nn import MLP

__all__ = ["load_mlp", "save_mlp", "load_points", "ACTIVATION_NAMES", "NON_SMOOTH", "LAYOUTS"]

#: The activations accepted, by name (PyTorch's names included) -> fm_ref's name.
ACTIVATION_NAMES = {"tanh": "tanh", "softplus": "softplus", "swish": "swish", "silu": "swish"}
#: Activations refused because the divergence of the field would not exist everywhere.
NON_SMOOTH = ("relu", "leaky_relu", "leakyrelu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "prelu",
              "elu", "selu", "celu", "threshold")
#: The .npz layouts read by ``load_mlp``.
LAYOUTS = ("fm_ref", "torch")
TIME_INPUTS = ("last", "first")

_FM_KEY = re.compile(r"^([Wb])(\d+)$")
_TORCH_KEY = re.compile(r"^(.*?)(\d+)\.(weight|bias)$")
_META = ("activation", "time_features", "time_input")


def _activation(name, what):
    key = str(name).lower()
    if key in NON_SMOOTH:
        raise ValueError(f"{what}: {name!r} is not smooth (its derivative jumps, so the divergence the "
                         "log-likelihood needs does not exist everywhere); expected one of tanh, softplus, "
                         "silu/swish")
    if key not in ACTIVATION_NAMES:
        raise ValueError(f"{what}: expected one of tanh, softplus, silu/swish, got {name!r}")
    return ACTIVATION_NAMES[key]


def _read_npz(path):
    """The arrays of an .npz file as a dict (object arrays refused)."""
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"WEIGHTS: {path} is a single .npy array, expected an .npz of named arrays")
        with data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"WEIGHTS: {path} is not a readable .npz file ({exc})") from None
    except ValueError as exc:
        if str(exc).startswith("WEIGHTS:"):
            raise
        raise ValueError(f"WEIGHTS: {path} is not a readable .npz of numeric arrays ({exc})") from None


def _float_array(arrays, key):
    a = arrays[key]
    if a.dtype.kind != "f":
        raise ValueError(f"WEIGHTS: key '{key}' expected floating-point values, got dtype {a.dtype}")
    a = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"WEIGHTS: key '{key}' has NaN or inf")
    return a


def _fm_ref_layers(arrays):
    """[(W, b, W's key)] from W0, b0, …, W of shape (fan_in, fan_out)."""
    idx = {}
    for key in arrays:
        m = _FM_KEY.match(key)
        if m is None:
            if key not in _META:
                raise ValueError(f"WEIGHTS: unexpected key '{key}' in the fm_ref layout (W0, b0, W1, b1, …, "
                                 f"and optionally {', '.join(_META)})")
            continue
        idx.setdefault(int(m.group(2)), set()).add(m.group(1))
    if not idx:
        raise ValueError("WEIGHTS: no layer found (expected keys W0, b0, W1, b1, …)")
    layers = []
    for i in range(max(idx) + 1):
        for name in ("W", "b"):
            if name not in idx.get(i, ()):
                raise ValueError(f"WEIGHTS: missing key '{name}{i}'")
        layers.append((_float_array(arrays, f"W{i}"), _float_array(arrays, f"b{i}"), f"W{i}", f"b{i}"))
    return layers


def _torch_layers(arrays):
    """[(W, b, keys)] from a Sequential's state_dict: W transposed from (out, in)."""
    found, prefixes = {}, set()
    for key in arrays:
        m = _TORCH_KEY.match(key)
        if m is None:
            raise ValueError(f"WEIGHTS: unexpected key '{key}' in the torch layout (expected '<i>.weight' and "
                             "'<i>.bias' of an nn.Sequential's Linear layers)")
        prefixes.add(m.group(1))
        found.setdefault(int(m.group(2)), set()).add(m.group(3))
    if len(prefixes) > 1:
        raise ValueError(f"WEIGHTS: keys with different prefixes {sorted(prefixes)}: expected one nn.Sequential")
    prefix = prefixes.pop()
    layers = []
    for i in sorted(found):
        for name in ("weight", "bias"):
            if name not in found[i]:
                raise ValueError(f"WEIGHTS: missing key '{prefix}{i}.{name}'")
        wkey, bkey = f"{prefix}{i}.weight", f"{prefix}{i}.bias"
        W = _float_array(arrays, wkey)
        if W.ndim != 2:
            raise ValueError(f"WEIGHTS: key '{wkey}' expected a 2-D (out, in) matrix, got shape {W.shape}")
        layers.append((W.T.copy(), _float_array(arrays, bkey), wkey, bkey))
    return layers


def _meta(arrays, key, default):
    if key not in arrays:
        return default
    value = arrays[key]
    if value.ndim != 0:
        raise ValueError(f"WEIGHTS: key '{key}' expected a scalar, got shape {value.shape}")
    return value.item()


def _check_chain(layers, torch):
    """Each W 2-D, each b (fan_out,), each fan_out the next fan_in."""
    for k, (W, b, wkey, bkey) in enumerate(layers):
        if W.ndim != 2:
            raise ValueError(f"WEIGHTS: key '{wkey}' expected a 2-D matrix, got shape {W.shape}")
        if b.shape != (W.shape[1],):
            raise ValueError(f"WEIGHTS: key '{bkey}' expected shape ({W.shape[1]},) to match '{wkey}', "
                             f"got {b.shape}")
        if k and W.shape[0] != layers[k - 1][0].shape[1]:
            shape = W.shape[::-1] if torch else W.shape
            raise ValueError(f"WEIGHTS: key '{wkey}' of shape {shape} does not chain: the previous layer has "
                             f"{layers[k - 1][0].shape[1]} outputs")


def load_mlp(path, layout="auto", activation=None, time_input=None, time_features=None):
    """An ``(MLP, params)`` pair from an ``.npz`` file of weights.

    Parameters
    ----------
    path : str or path-like
    layout : {'auto', 'fm_ref', 'torch'}
        'auto' reads keys W0, b0, … as fm_ref's layout and keys ending in .weight/.bias
        as PyTorch's.
    activation : str, optional
        tanh, softplus, silu or swish; required for the torch layout with a hidden layer;
        for the fm_ref layout it must agree with the file's ``activation`` if both are given.
    time_input : {'last', 'first'}, optional
        Where t's features enter the first layer (default: the file's, else 'last').
    time_features : int, optional
        K, the sinusoidal features of t (default: the file's, else 0).

    Returns
    -------
    mlp : fm_ref.nn.MLP
    params : list of (W, b), W of shape (fan_in, fan_out), in fm_ref's input order [x, tf(t)]
    """
    if layout not in ("auto",) + LAYOUTS:
        raise ValueError(f"--layout: expected one of auto, {', '.join(LAYOUTS)}, got {layout!r}")
    arrays = _read_npz(path)
    if not arrays:
        raise ValueError(f"WEIGHTS: {path} holds no arrays")
    if layout == "auto":
        layout = "torch" if any(k.endswith((".weight", ".bias")) for k in arrays) else "fm_ref"
    torch = layout == "torch"
    layers = _torch_layers(arrays) if torch else _fm_ref_layers(arrays)
    _check_chain(layers, torch)
    file_act = None if torch else _meta(arrays, "activation", None)
    if file_act is not None and activation is not None and \
            _activation(file_act, "WEIGHTS: key 'activation'") != _activation(activation, "--activation"):
        raise ValueError(f"--activation: {activation!r} contradicts the file's activation {file_act!r}")
    chosen = activation if activation is not None else file_act
    if chosen is None:
        if len(layers) > 1:
            raise ValueError("--activation: required for this file (a PyTorch state_dict does not record it): "
                             "tanh, softplus or silu")
        chosen = "tanh"  # an affine field has no hidden layer: the activation is never applied
    act = _activation(chosen, "--activation" if activation is not None else "WEIGHTS: key 'activation'")
    K = time_features if time_features is not None else _meta(arrays, "time_features", 0)
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 0:
        raise ValueError(f"--time-features: expected an integer K >= 0, got {K!r}")
    where = time_input if time_input is not None else _meta(arrays, "time_input", "last")
    if where not in TIME_INPUTS:
        raise ValueError(f"--time-input: expected 'last' or 'first', got {where!r}")
    d = layers[-1][0].shape[1]
    n_in = layers[0][0].shape[0]
    if n_in != d + 1 + 2 * K:
        raise ValueError(f"WEIGHTS: key '{layers[0][2]}' has {n_in} inputs, expected d + 1 + 2K = "
                         f"{d + 1 + 2 * K} (d = {d} outputs of the last layer, K = {K} time features; "
                         "set --time-features)")
    params = [(W, b) for W, b, _, _ in layers]
    if where == "first":  # rows [tf(t), x] -> [x, tf(t)]
        W0 = params[0][0]
        params[0] = (np.concatenate([W0[1 + 2 * K:], W0[:1 + 2 * K]]), params[0][1])
    mlp = MLP(d, tuple(W.shape[1] for W, _ in params[:-1]), act, int(K))
    mlp.check_params(params)
    return mlp, params


def save_mlp(path, mlp, params):
    """Write ``params`` of ``mlp`` in fm_ref's .npz layout (W0, b0, …, activation, time_features)."""
    if not isinstance(mlp, MLP):
        raise TypeError(f"mlp: expected an fm_ref.nn.MLP, got {type(mlp).__name__}")
    mlp.check_params(params)
    arrays = {}
    for i, (W, b) in enumerate(params):
        arrays[f"W{i}"], arrays[f"b{i}"] = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
    np.savez(path, activation=np.array(mlp.activation), time_features=np.array(mlp.time_features),
             time_input=np.array("last"), **arrays)


def load_points(path, dim):
    """Points of shape (n, dim) from an ``.npy`` array or a ``.csv`` file (comma-separated,
    one point per line, '#' comments); anything else raises naming POINTS."""
    name = str(path)
    if name.endswith(".npy"):
        try:
            x = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"POINTS: {path} is not a readable .npy array ({exc})") from None
    elif name.endswith(".csv"):
        try:
            x = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"POINTS: {path} is not a CSV of numbers ({exc})") from None
    else:
        raise ValueError(f"POINTS: expected a .npy or .csv file, got {path!r}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"POINTS: expected numbers, got dtype {x.dtype}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"POINTS: expected an array of shape (n, {dim}), got shape {x.shape}")
    if x.shape[1] != dim:
        raise ValueError(f"POINTS: expected {dim} columns (the model's dimension d), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("POINTS: has NaN or inf")
    return x
