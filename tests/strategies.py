"""Hypothesis strategies shared by every test module (the one place they live).

Anchor values are mixed in with ``sampled_from`` so that failures shrink to readable
cases. Each section is owned by one module's tests; add new sections at the end.
"""
import numpy as np
from hypothesis import strategies as st
from hypothesis import target

from fm_ref.distributions import Empirical, GaussianMixture
from fm_ref.paths import VP, CondOT, Cosine, LinearVP, Polynomial

# --------------------------------------------------------------------------- basics

dims = st.integers(min_value=1, max_value=3)
seeds = st.integers(min_value=0, max_value=2**32 - 1)

#: Interior times, away from the endpoints where σ_t or α_t vanish.
interior_times = st.one_of(
    st.sampled_from([0.05, 0.25, 0.5, 0.75, 0.95]),
    st.floats(min_value=0.02, max_value=0.98, allow_nan=False),
)


@st.composite
def paths(draw, sigma_min_positive=False):
    """Any of the five paths, with drawn hyper-parameters."""
    lo = 1e-3 if sigma_min_positive else 0.0
    choice = draw(st.sampled_from(["condot", "vp", "linear_vp", "cosine", "polynomial"]))
    if choice == "condot":
        return CondOT(draw(st.one_of(st.sampled_from([max(lo, 0.0), 0.01, 0.1]), st.floats(lo, 0.5))))
    if choice == "vp":
        beta_min = draw(st.sampled_from([0.1, 0.5]))
        return VP(beta_min, draw(st.sampled_from([5.0, 20.0])))
    if choice == "linear_vp":
        return LinearVP()
    if choice == "cosine":
        return Cosine()
    return Polynomial(draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])))


@st.composite
def mixtures(draw, dim=None, k_max=3, allow_empirical=True, min_var=0.0):
    """A Gaussian mixture with random means, full/diagonal/isotropic covariances and
    weights, or an empirical set (point masses), from an explicit seed. Where singular
    covariances are allowed (allow_empirical, min_var = 0) also a "mixed" target: a
    rank-deficient full covariance, a point mass and a component of another scale
    (variances 1e-6 or 1e2) side by side, one weight possibly zero."""
    d = draw(dims) if dim is None else dim
    k = draw(st.integers(1, k_max))
    rng = np.random.default_rng(draw(seeds))
    means = rng.normal(0.0, 1.5, (k, d))
    raw_w = rng.uniform(0.2, 1.0, k)
    weights = raw_w / raw_w.sum()
    singular_ok = allow_empirical and min_var == 0.0
    form = draw(st.sampled_from(["full", "diag", "iso", "empirical", "mixed"] if singular_ok
                                else ["full", "diag", "iso"]))
    if form == "empirical":
        return Empirical(means, weights)
    if form == "mixed":
        v = rng.normal(0.0, 1.0, (d, 1))
        kinds = [0.5 * v @ v.T, np.zeros((d, d)), draw(st.sampled_from([1e-6, 1e2])) * np.eye(d)]
        covs = np.stack([kinds[j % 3] for j in range(k)])
        if k >= 2 and draw(st.booleans()):
            raw_w[-1] = 0.0
        return GaussianMixture(means, covs, raw_w / raw_w.sum())
    if form == "full":
        A = rng.normal(0.0, 1.0, (k, d, d))
        covs = 0.3 * A @ np.swapaxes(A, 1, 2) / d + (min_var + 0.05) * np.eye(d)
    elif form == "diag":
        covs = rng.uniform(min_var + 0.05, 1.0, (k, d))
    else:
        covs = rng.uniform(min_var + 0.05, 1.0, k)
    return GaussianMixture(means, covs, weights)


@st.composite
def points(draw, dim, n=None, scale=2.0):
    """A batch of n points in R^dim, shape (n, dim), from an explicit seed."""
    n = draw(st.integers(1, 6)) if n is None else n
    rng = np.random.default_rng(draw(seeds))
    return rng.normal(0.0, scale, (n, dim))


# ---- cnf (divergence, CNF, adjoint)

@st.composite
def mlp_fields(draw, dim=None, hidden=None):
    """(mlp, params): a randomly initialised smooth MLP v_θ(x, t) in R^dim, from a seed.

    Mixes the three activations, sinusoidal time features and weight scales, so that
    the closed-form divergence meets tanh, softplus and swish second derivatives; depths
    0–3 and unequal widths, so that each branch of ``MLPTrace`` (CNF.16 for one and two
    hidden layers, CNF.8 beyond) is drawn."""
    from fm_ref.nn import MLP

    d = draw(dims) if dim is None else dim
    widths = draw(st.sampled_from([(), (8,), (16,), (8, 8), (16, 16), (8, 16), (6, 8, 4)])) if hidden is None else hidden
    mlp = MLP(d, widths, activation=draw(st.sampled_from(["tanh", "softplus", "swish"])),
              time_features=draw(st.sampled_from([0, 0, 2])))
    params = mlp.init(np.random.default_rng(draw(seeds)), scale=draw(st.sampled_from([0.5, 1.0, 2.0])))
    return mlp, params


@st.composite
def square_matrices(draw, dim=None, scale=1.0):
    """A (non-symmetric) d × d matrix, from a seed; the anchor is a rotation-plus-shear."""
    d = draw(st.integers(1, 4)) if dim is None else dim
    if draw(st.booleans()) and d >= 2:
        A = np.eye(d)
        A[0, 1], A[1, 0] = 2.0, -1.0
        return scale * A
    return scale * np.random.default_rng(draw(seeds)).normal(0.0, 1.0, (d, d))


# ---- flows (normalizing-flow layers)

#: The layer kinds `flow_layers` draws; 'made_z' / 'made_x' are MaskedAutoregressive with
#: conditioner 'z' (inverse by recursion) / 'x' (forward by recursion).
FLOW_LAYER_KINDS = ("elementwise", "permutation", "reverse", "coupling", "made_z", "made_x", "planar", "radial")


def make_flow_layer(kind, dim, rng, hidden=(8,)):
    """A layer of ``kind`` in R^dim; orders, permutations and masks drawn from ``rng``."""
    from fm_ref import flows

    if kind == "elementwise":
        return flows.ElementwiseAffine(dim)
    if kind == "permutation":
        return flows.Permutation(dim, rng.permutation(dim))
    if kind == "reverse":
        return flows.Reverse(dim)
    if kind == "coupling":
        mask = rng.permutation(np.arange(dim) < rng.integers(1, dim)).astype(float)  # both 0s and 1s
        return flows.AffineCoupling(dim, mask=mask, hidden=hidden, activation=str(rng.choice(["tanh", "swish"])))
    if kind in ("made_z", "made_x"):
        return flows.MaskedAutoregressive(dim, hidden=hidden, order=rng.permutation(dim), conditioner=kind[-1])
    if kind == "planar":
        return flows.Planar(dim)
    if kind == "radial":
        return flows.Radial(dim)
    raise ValueError(kind)


def _random_like(template, rng, scale):
    from fm_ref.train import tree_map

    return tree_map(lambda leaf: scale * rng.standard_normal(np.shape(leaf)), template)


@st.composite
def flow_layers(draw, dim=None, kinds=FLOW_LAYER_KINDS, scale=None):
    """(layer, params): a layer of a drawn kind (coupling only for d ≥ 2) whose raw
    parameters are all drawn N(0, scale²) from an explicit seed."""
    d = draw(dims) if dim is None else dim
    kind = draw(st.sampled_from([k for k in kinds if k != "coupling" or d >= 2]))
    rng = np.random.default_rng(draw(seeds))
    hidden = draw(st.sampled_from([(8,), (4, 4), (16,)]))
    layer = make_flow_layer(kind, d, rng, hidden)
    s = draw(st.sampled_from([0.1, 0.5, 1.0, 2.0])) if scale is None else scale
    return layer, _random_like(layer.identity_params(), rng, s)


@st.composite
def flow_stacks(draw, dim=None, max_layers=4, scale=None, kinds=FLOW_LAYER_KINDS):
    """(flow, params): a Flow of 1..max_layers drawn layers with N(0, scale²) raw parameters."""
    from fm_ref.flows import Flow

    d = draw(dims) if dim is None else dim
    rng = np.random.default_rng(draw(seeds))
    k = draw(st.integers(1, max_layers))
    choices = [c for c in kinds if c != "coupling" or d >= 2]
    layers = [make_flow_layer(choices[i], d, rng) for i in rng.integers(0, len(choices), k)]
    flow = Flow(layers)
    s = draw(st.sampled_from([0.1, 0.3, 0.7])) if scale is None else scale
    return flow, _random_like(flow.identity_params(), rng, s)


@st.composite
def adversarial_planar_radial(draw, dim=None):
    """(layer, params), Planar or Radial, with raw parameters from tiny to large, including
    the edges of the invertibility domain: wᵀu ≪ 0 (planar m → −1) and b_raw ≪ 0 (radial
    β → −α), tiny ‖w‖ (large û) and tiny α."""
    from fm_ref.flows import Planar, Radial

    d = draw(dims) if dim is None else dim
    rng = np.random.default_rng(draw(seeds))
    mag = st.sampled_from([1e-2, 0.3, 1.0, 5.0, 20.0])
    if draw(st.booleans()):
        direction = rng.standard_normal(d)
        w = draw(mag) * direction / np.linalg.norm(direction)
        if draw(st.booleans()):
            u = -draw(st.sampled_from([1.0, 5.0, 30.0, 100.0])) * w / np.linalg.norm(w)  # wᵀu ≪ 0
        else:
            u = draw(st.sampled_from([0.0, 0.1, 1.0, 10.0, 30.0])) * rng.standard_normal(d)
        b = draw(st.sampled_from([0.0, -3.0, 3.0, 20.0]))
        return Planar(d), (w, u, np.array(b))
    z0 = draw(st.sampled_from([0.0, 1.0, 5.0])) * rng.standard_normal(d)
    a_raw = draw(st.sampled_from([-20.0, -3.0, 0.0, 3.0, 20.0]))
    b_raw = draw(st.sampled_from([-30.0, -10.0, 0.0, 10.0, 30.0]))
    return Radial(d), (z0, np.array(a_raw), np.array(b_raw))


# ---- example budgets


def fewer(fraction):
    """``@settings`` with max_examples a fraction of the loaded profile's (ci: 20, thorough:
    400), at least 3: slow properties run fewer examples in CI and more under 'thorough'
    (a fixed max_examples would override the profile)."""
    from hypothesis import settings

    return settings(max_examples=max(3, int(settings.default.max_examples * fraction)))


# ---- hostile inputs (tests/test_fuzz.py)

#: Values a careless or hostile caller passes: non-finite, extreme, subnormal, signed zero.
HOSTILE_FLOATS = [float("nan"), float("inf"), -float("inf"), 1.7976931348623157e308, -1e308, 1e200, 1e154,
                  -1e154, 5e-324, 1e-300, 0.0, -0.0, 1.0, -1.0, 0.5]
hostile_floats = st.one_of(st.sampled_from(HOSTILE_FLOATS), st.floats(allow_nan=True, allow_infinity=True),
                           st.floats(-3.0, 3.0))
HOSTILE_DTYPES = ["float64", "float32", "float16", "int64", "bool", "complex128", "object"]


@st.composite
def hostile_arrays(draw, shape=None):
    """An array of a drawn shape (rank 0 to 3, sizes 0 to 3, unless ``shape`` is given) and
    dtype, holding hostile values; or, now and then, not an array at all."""
    if shape is None:
        if draw(st.integers(0, 9)) == 0:
            return draw(st.sampled_from([None, "x", [[1.0], [1.0, 2.0]], {"a": 1}, 3, True, 1j]))
        shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    values = draw(st.lists(hostile_floats, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    arr = np.array(values, dtype=np.float64).reshape(shape)
    dtype = draw(st.sampled_from(HOSTILE_DTYPES))
    with np.errstate(all="ignore"):
        if dtype in ("int64", "bool"):
            return np.nan_to_num(arr).clip(-1e9, 1e9).astype(dtype)
        if dtype == "complex128":
            return arr + 1j * draw(hostile_floats)
        return arr.astype(dtype)


@st.composite
def nearly_good_points(draw, n=3, d=2):
    """Points of shape (n, d), float64, with a few entries replaced by hostile values."""
    arr = np.asarray(draw(st.lists(st.floats(-3.0, 3.0), min_size=n * d, max_size=n * d))).reshape(n, d)
    for _ in range(draw(st.integers(0, 2))):
        arr[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = draw(st.sampled_from(HOSTILE_FLOATS))
    return arr


#: JSON fragments that may replace any node of a vectors or results file (text, not objects:
#: NaN tokens, numbers beyond float64, deep nesting are only writable as text).
HOSTILE_JSON = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, "true", "false", "null",
                '"1.0"', '""', "[]", "{}", "[[1.0], [1.0, 2.0]]", "[" * 50 + "]" * 50, "-1.0", "0", "1e-320",
                "1e300", '{"abs": 1e-12}', "[1.0, NaN]", "1.5", "2"]


@st.composite
def json_mutations(draw, payload):
    """The text of ``payload`` with one to three of its nodes replaced by hostile fragments
    (or a key deleted, or a key duplicated), as a careless or hostile edit would."""
    import json

    def nodes(obj, path=()):
        yield path
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from nodes(v, path + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj[:4]):
                yield from nodes(v, path + (i,))

    marker_payload = json.loads(json.dumps(payload))
    all_paths = [p for p in nodes(marker_payload) if p]
    replaced = {}
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(all_paths))
        parent = marker_payload
        for key in path[:-1]:
            if not isinstance(parent, (dict, list)) or (isinstance(parent, list) and key >= len(parent)) \
                    or (isinstance(parent, dict) and key not in parent):
                break
            parent = parent[key]
        else:
            if isinstance(parent, dict) and path[-1] in parent and draw(st.integers(0, 5)) == 0:
                del parent[path[-1]]
                continue
            if (isinstance(parent, dict) and path[-1] in parent) or (isinstance(parent, list) and path[-1] < len(parent)):
                token = f"@@{len(replaced)}@@"
                replaced[token] = draw(st.sampled_from(HOSTILE_JSON))
                parent[path[-1]] = token
    text = json.dumps(marker_payload)
    for token, fragment in replaced.items():
        text = text.replace(json.dumps(token), fragment)
    if draw(st.integers(0, 9)) == 0:
        text = text.replace('"schema_version": 1', '"schema_version": 1, "schema_version": 1', 1)
    return text


# ---- diffusion (the parameterisations a model may predict)

#: The five kinds of AffinePath.convert and fm_ref.diffusion.
diffusion_kinds = st.sampled_from(("velocity", "x1", "eps", "score", "v"))


# ---- couplings (pair-conditioned paths, plans, Gaussian fields, schedule change)


@st.composite
def point_sets(draw, n=None, m=None, d=None, weights=False, max_n=6):
    """(x_0, x_1, a, b): two small point sets (x_1 shifted), from an explicit seed; a, b are
    random positive weights summing to 1 if ``weights``, else None (uniform)."""
    rng = np.random.default_rng(draw(seeds))
    n = draw(st.integers(1, max_n)) if n is None else n
    m = draw(st.integers(1, max_n)) if m is None else m
    d = draw(dims) if d is None else d
    x_0 = rng.normal(0.0, 1.0, (n, d))
    x_1 = rng.normal(0.0, draw(st.sampled_from([0.5, 1.0, 2.0])), (m, d)) + draw(st.sampled_from([0.0, 1.0, 3.0]))
    if not weights:
        return x_0, x_1, None, None
    a, b = rng.uniform(0.1, 1.0, n), rng.uniform(0.1, 1.0, m)
    return x_0, x_1, a / a.sum(), b / b.sum()


@st.composite
def pair_paths(draw, positive=True):
    """ConstantSigma or BrownianBridge, σ > 0 (or σ ≥ 0 when not ``positive``)."""
    from fm_ref.couplings import BrownianBridge, ConstantSigma

    anchors = [0.1, 0.5, 1.0] if positive else [0.0, 0.1, 0.5, 1.0]
    sigma = draw(st.one_of(st.sampled_from(anchors), st.floats(0.05, 1.5)))
    return draw(st.sampled_from([ConstantSigma, BrownianBridge]))(sigma)


@st.composite
def gaussian_pairs(draw, d=None):
    """(m0, S0, m1, S1): two Gaussians with well-conditioned covariances (eigenvalues ≥ 0.1)."""
    d = draw(dims) if d is None else d
    rng = np.random.default_rng(draw(seeds))
    A, B = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    return (rng.normal(size=d), A @ A.T / d + 0.1 * np.eye(d), rng.normal(0.0, 2.0, d),
            B @ B.T / d + 0.1 * np.eye(d))


#: The six affine paths of the schedule-change checks.
def six_paths():
    return [CondOT(0.0), CondOT(0.01), VP(), LinearVP(), Cosine(), Polynomial(2.0)]


path_pairs = st.tuples(st.sampled_from(six_paths()), st.sampled_from(six_paths()))


# ---- flows: the hand-written backward pass of the NLL (test_flows_grad.py)

#: Layers with a hand-written backward (NF.27): what ``default_flow(d, 'coupling')`` uses.
HAND_BACKWARD_KINDS = ("coupling", "elementwise", "permutation", "reverse")


def _coupling(draw, rng, d):
    """An AffineCoupling with a drawn mask ('even', 'odd' or random 0/1 with both values),
    widths (none to two hidden layers), activation and scale bound."""
    from fm_ref.flows import AffineCoupling

    mask = draw(st.sampled_from(["even", "odd", "random"]))
    if mask == "random":
        mask = rng.permutation(np.arange(d) < rng.integers(1, d)).astype(float)
    return AffineCoupling(d, mask=mask, hidden=draw(st.sampled_from([(), (4,), (8,), (5, 7), (8, 8), (6, 4, 5)])),
                          activation=draw(st.sampled_from(["tanh", "softplus", "swish"])),
                          scale_bound=draw(st.one_of(st.sampled_from([0.5, 1.0, 3.0]), st.floats(0.2, 5.0))))


@st.composite
def hand_backward_layers(draw, dim=None):
    """(layer, params, x): one layer with a hand-written backward, in R^d for d in 2..4,
    all raw parameters N(0, scale²) (non-zero output layers, so s and t are not trivial),
    and n points N(0, 1.5²), from an explicit seed."""
    from fm_ref.flows import ElementwiseAffine, Permutation, Reverse

    d = draw(st.integers(2, 4)) if dim is None else dim
    rng = np.random.default_rng(draw(seeds))
    kind = draw(st.sampled_from(HAND_BACKWARD_KINDS))
    layer = {"coupling": lambda: _coupling(draw, rng, d), "elementwise": lambda: ElementwiseAffine(d),
             "permutation": lambda: Permutation(d, rng.permutation(d)), "reverse": lambda: Reverse(d)}[kind]()
    params = _random_like(layer.identity_params(), rng, draw(st.sampled_from([0.3, 1.0, 2.0])))
    return layer, params, rng.normal(0.0, 1.5, (draw(st.integers(1, 12)), d))


@st.composite
def hand_backward_flows(draw, dim=None, max_couplings=4):
    """(flow, params, x): 1..max_couplings couplings (each drawn as in ``hand_backward_layers``),
    permutations or reversals between some of them, possibly a nested Flow, and an
    ElementwiseAffine on the data side; raw parameters N(0, scale²); n points."""
    from fm_ref.flows import ElementwiseAffine, Flow, Permutation, Reverse

    d = draw(st.integers(2, 4)) if dim is None else dim
    rng = np.random.default_rng(draw(seeds))
    layers = []
    for _ in range(draw(st.integers(1, max_couplings))):
        between = draw(st.sampled_from([None, None, "permutation", "reverse"]))
        if between == "permutation":
            layers.append(Permutation(d, rng.permutation(d)))
        elif between == "reverse":
            layers.append(Reverse(d))
        layers.append(_coupling(draw, rng, d))
    if len(layers) >= 2 and draw(st.booleans()):
        layers = [layers[0], Flow(layers[1:])]  # a nested flow stands as one layer
    if draw(st.booleans()):
        layers.append(ElementwiseAffine(d))
    flow = Flow(layers)
    params = _random_like(flow.identity_params(), rng, draw(st.sampled_from([0.3, 1.0, 2.0])))
    return flow, params, rng.normal(0.0, 1.5, (draw(st.integers(1, 40)), d))


# ---- a helper for properties that measure an error


def worst(err):
    """Report ``err`` to hypothesis's ``target`` (the search then looks for larger errors)
    and return it: ``assert worst(error) <= TOL``."""
    target(float(err))
    return err
