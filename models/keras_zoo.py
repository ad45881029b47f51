"""Random-weight Keras applications, their tf2onnx exports, and TensorFlow's own input gradients.

`build(arch)` gives a deterministic `keras.applications.<arch>(weights=None,
classifier_activation=None)` at a small input size; every kernel, bias and BatchNormalization
statistic is redrawn from a seeded numpy generator, so the weights do not depend on Keras' own
random state. `export(arch)` writes (or reuses) the ONNX file of that same model the way users
export one: tf2onnx.convert.from_keras with an input signature that leaves the batch dynamic.
`input_gradient(model, x, seed, guided=...)` is TensorFlow's own d sum(seed * logits) / dx:
GradientTape for the plain gradient, and for the guided one tf.gradients under a gradient override
map that lets only positive gradients through the rectifiers and max-pooling (the "paper" gating,
see tests/torch_reference.py):

    Relu:       relu(g) * 1[x > 0]
    Relu6:      relu(g) * 1[0 < x < 6]       (ReLU(6.), hard_sigmoid, hard_swish; ONNX Clip)
    LeakyRelu:  relu(g) * (1 if x > 0 else alpha)
    MaxPool:    TensorFlow's own max-pool gradient applied to relu(g)

with a unit applied twice to the same tensor traced once, as tf2onnx merges it (_shared_units).

`build(arch, dtype="float64")` is the same network under Keras' float64 dtype policy with the
float32 weights copied in, for TensorFlow's own float32-vs-float64 error. Nothing is downloaded.
Needs tensorflow(-cpu) and tf2onnx (`pip install -e ".[tf]"`), imported on first use.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import re
from typing import TYPE_CHECKING

import numpy as np

try:
    from .cache import exclusive, exports_root as cache_root, lower_priority as _lower_priority, save_whole
except ImportError:  # run as a script (export(subprocess=True)): its folder is on sys.path
    from cache import exclusive, exports_root as cache_root, lower_priority as _lower_priority, save_whole

if TYPE_CHECKING:
    import keras

# Per-arch input size: as small as each architecture accepts (Keras' own minimum is 32, 71 for
# Xception and 75 for InceptionV3), to keep CI fast on 2 cores. ONNX opset per arch: users export
# with anything from 13 (tf2onnx's default for years) to 18; a few of each.
SIZES: dict[str, int] = {
    "ResNet50V2": 64,
    "MobileNetV3Small": 64,
    "EfficientNetV2B0": 64,
    "DenseNet121": 64,
    "InceptionV3": 75,
    "VGG16": 32,
    "ResNet50": 64,
    "MobileNetV2": 64,
    "MobileNet": 64,
    "Xception": 71,
    "NASNetMobile": 64,
    "EfficientNetB0": 64,
}
# Keras applications that tf2onnx cannot export today: the ONNX file it writes is not valid ONNX.
NOT_EXPORTABLE: dict[str, str] = {
    "ConvNeXtTiny": "tf2onnx 1.17 leaves TensorFlow ops in the ONNX file: Keras 3 runs grouped "
                    "(depthwise) Conv2D as an XLA-compiled function (StatefulPartitionedCall), and "
                    "exact GELU as Erfc, which has no ONNX op",
}
OPSETS: dict[str, int] = {"VGG16": 13, "ResNet50": 13, "MobileNet": 15, "DenseNet121": 15,
                          "NASNetMobile": 18, "EfficientNetB0": 18}
DEFAULT_OPSET = 17
ARCHS: tuple[str, ...] = tuple(SIZES)
# Architectures whose own first layers rescale 0..255 pixels (include_preprocessing / Rescaling):
# they get pixel-range inputs, the others inputs already in their [-1, 1]-ish range.
PIXEL_INPUT = {"MobileNetV3Small", "EfficientNetV2B0", "EfficientNetB0"}

SEED = 0
# Bump when build() changes the weights it produces, so stale cached exports are not reused.
RECIPE = 1

# TensorFlow op -> the ONNX op tf2onnx turns it into, for the units the "paper" gating gates.
GATED_TF_OPS = {"Relu": "Relu", "Relu6": "Clip", "LeakyRelu": "LeakyRelu", "MaxPool": "MaxPool"}


def default_size(arch: str) -> int:
    _check_arch(arch)
    return SIZES[arch]


def opset(arch: str) -> int:
    if arch not in NOT_EXPORTABLE:
        _check_arch(arch)
    return OPSETS.get(arch, DEFAULT_OPSET)


def _check_arch(arch: str) -> None:
    if arch not in SIZES:
        raise ValueError(f"unknown Keras application {arch!r}; known: {', '.join(ARCHS)}")


def sample_input(arch: str, batch: int, rng: np.random.Generator) -> np.ndarray:
    """A float32 NHWC batch in the range the architecture's first layer expects."""
    shape = (batch, SIZES[arch], SIZES[arch], 3)
    if arch in PIXEL_INPUT:
        return rng.uniform(0.0, 255.0, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _redraw(model: keras.Model, seed: int) -> None:
    """Overwrite the weights with seeded draws: He-normal kernels (activations stay O(1) through
    the depth), small biases, and BatchNormalization with non-trivial statistics and affine
    parameters (a fresh BN is nearly the identity, hiding BN mistakes; see torchvision_zoo).
    Preprocessing constants (Normalization's mean/variance) are left as Keras sets them."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kind = type(layer).__name__
        if kind in ("Normalization", "Rescaling"):
            continue
        for w in layer.weights:
            shape, name = tuple(w.shape), w.name.split("/")[-1]
            if kind == "BatchNormalization":
                draws = {"gamma": lambda: 0.5 + rng.random(shape),  # noqa: B023 - called at once, below
                         "beta": lambda: 0.2 * rng.standard_normal(shape),  # noqa: B023
                         "moving_mean": lambda: 0.2 * rng.standard_normal(shape),  # noqa: B023
                         "moving_variance": lambda: 0.5 + rng.random(shape)}  # noqa: B023
                value = draws[name]()
            elif name.endswith("kernel") and len(shape) >= 2:
                # depthwise (H, W, C, M): fan-in H*W; conv (..., I, O) and dense (I, O): all but O
                fan_in = np.prod(shape[:2]) if name == "depthwise_kernel" else np.prod(shape[:-1])
                value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
            elif name == "bias" or kind == "LayerNormalization" and name == "beta":
                value = 0.05 * rng.standard_normal(shape)
            elif kind in ("LayerNormalization", "LayerScale") and name == "gamma":
                value = 0.5 + rng.random(shape)
            else:
                continue
            w.assign(value.astype(w.dtype))


def build(arch: str, seed: int = SEED, dtype: str = "float32",
          weights_from: keras.Model | None = None) -> keras.Model:
    """keras.applications.<arch>(weights=None, classifier_activation=None) at SIZES[arch], with
    weights redrawn from `seed`. dtype="float64" builds under Keras' float64 policy; its weights
    come from `weights_from` (a float32 build) or are redrawn the same way."""
    _check_arch(arch)
    tf, keras = _tf()
    size = SIZES[arch]
    old_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        keras.utils.set_random_seed(seed)
        model = getattr(keras.applications, arch)(
            weights=None, input_shape=(size, size, 3), classifier_activation=None)
    finally:
        keras.config.set_dtype_policy(old_policy)
    if weights_from is not None:
        model.set_weights([np.asarray(w).astype(dtype) for w in weights_from.get_weights()])
    else:
        _redraw(model, seed)
    return model




def _versions() -> str:
    import tf2onnx

    tf, keras = _tf()
    text = f"tf{tf.__version__}-keras{keras.__version__}-tf2onnx{tf2onnx.__version__}"
    return re.sub(r"[^A-Za-z0-9.-]", "_", text)


def export_path(arch: str, cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> pathlib.Path:
    _check_arch(arch)
    name = f"keras-{arch}-{SIZES[arch]}px-opset{opset(arch)}-seed{seed}-r{RECIPE}-{_versions()}.onnx"
    return cache_root(cache_dir) / name


def export(arch: str, cache_dir: str | os.PathLike | None = None, seed: int = SEED,
           model: keras.Model | None = None, subprocess: bool = False) -> pathlib.Path:
    """Export build(arch, seed) (or `model`, which must be that build) with tf2onnx and return
    the file path, as users export a Keras model: tf2onnx.convert.from_keras with an input
    signature that leaves the batch dynamic, opset(arch). (from_function on a tf.function of the
    model would also work, but leaves the constants Keras keeps as captured tensors, such as
    Normalization's mean and variance, as extra graph inputs.) Input "input" (NHWC float32),
    output as tf2onnx names it. The file is reused when present and written atomically.

    subprocess=True exports in a child Python (see export_all)."""
    if subprocess:
        return export_all([arch], cache_dir, seed)[arch]
    path = export_path(arch, cache_dir, seed)
    if path.is_file():
        return path
    with exclusive(path):  # written once across processes (cache.exclusive)
        if path.is_file():
            return path
        import tf2onnx

        model = build(arch, seed) if model is None else model
        tf, _ = _tf()
        size = SIZES[arch]
        spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)

        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset(arch))
        return save_whole(proto.SerializeToString(), path)


# Exports started by start_export_all and not yet joined: {(cache folder, seed): (child, its log)}.
_BACKGROUND: dict[tuple[str, int], tuple] = {}


def _export_command(archs, folder: pathlib.Path, seed: int) -> list[str]:
    import sys

    return [sys.executable, str(pathlib.Path(__file__).resolve()), str(folder), str(seed), *archs]


def start_export_all(archs, cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> bool:
    """Start the child of export_all for the missing archs and return at once (True if one
    started). The test session calls it at collection: tf2onnx converts on one core for about six
    minutes, which then overlaps the other tests on a 2-core machine; export_all joins the child."""
    import atexit
    import subprocess as sp
    import tempfile

    paths = {arch: export_path(arch, cache_dir, seed) for arch in archs}
    missing = [arch for arch, path in paths.items() if not path.is_file()]
    key = (str(cache_root(cache_dir)), seed)
    if not missing or key in _BACKGROUND:
        return False
    log = tempfile.TemporaryFile()
    child = sp.Popen(_export_command(missing, cache_root(cache_dir), seed), stdout=log, stderr=sp.STDOUT,
                     preexec_fn=_lower_priority)
    _BACKGROUND[key] = (child, log)
    atexit.register(child.kill)  # a session that ends early leaves no exporter behind (no-op once done)
    return True


def export_all(archs, cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> dict[str, pathlib.Path]:
    """{arch: export path}, the missing exports written by one child Python (this file run as a
    script) that builds each model there: tf2onnx's conversion peaks at several GB, which the
    child hands back to the system when it exits, and TensorFlow is imported once for all of them
    instead of once per model. A child started by start_export_all is waited for first; what it
    did not write (it failed, or was asked for other archs) is exported here, failing loudly."""
    import subprocess as sp

    paths = {arch: export_path(arch, cache_dir, seed) for arch in archs}
    started = _BACKGROUND.pop((str(cache_root(cache_dir)), seed), None)
    if started is not None:
        child, log = started
        child.wait()
        log.close()
    missing = [arch for arch, path in paths.items() if not path.is_file()]
    if missing:
        sp.run(_export_command(missing, paths[missing[0]].parent, seed), check=True)
        absent = [str(paths[a]) for a in missing if not paths[a].is_file()]
        if absent:
            raise RuntimeError(f"the export subprocess wrote no {', '.join(absent)}")
    return paths


# --- TensorFlow's own gradients ------------------------------------------------------------

_GUIDED_OVERRIDES = {op: f"GnlGuided{op}" for op in GATED_TF_OPS}
_GATED_OVERRIDES = {op: f"GnlGated{op}" for op in GATED_TF_OPS}  # plain gradient, imposed gates
_LOADED: list = []
# {TensorFlow op name: tensor} while gradient_function(gates=...) traces: the value that decides
# that unit's gate instead of its own input.
_IMPOSED: dict = {}


class GateMismatch(AssertionError):
    """Imposed gates that do not line up with the TensorFlow model's own gated units."""


def _tf():
    """(tensorflow, keras), imported on first use (listing SIZES or ARCHS needs neither): one
    thread each (CI has 2 cores, shared with onnxruntime), and the guided gradients registered."""
    if _LOADED:
        return _LOADED[0]
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import keras

    try:  # fails once TensorFlow has started; then it keeps what it has
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass

    def register(prefix, incoming):
        """The four unit gradients under `prefix`: `incoming` maps the gradient arriving at the unit
        (relu for guided, identity for plain); the gate is decided by the unit's own input, or by
        the value imposed for it (_IMPOSED, see gradient_function's `gates`)."""

        def gate_input(op):
            return _IMPOSED.get(op.name, op.inputs[0])

        def pool_attrs(op):
            return {k: op.get_attr(k) for k in ("ksize", "strides", "padding", "explicit_paddings",
                                                 "data_format")}

        @tf.RegisterGradient(f"{prefix}Relu")
        def _relu(op, g):
            return tf.raw_ops.ReluGrad(gradients=incoming(g), features=gate_input(op))

        @tf.RegisterGradient(f"{prefix}Relu6")
        def _relu6(op, g):
            return tf.raw_ops.Relu6Grad(gradients=incoming(g), features=gate_input(op))

        @tf.RegisterGradient(f"{prefix}LeakyRelu")
        def _leaky_relu(op, g):
            return tf.raw_ops.LeakyReluGrad(gradients=incoming(g), features=gate_input(op),
                                            alpha=op.get_attr("alpha"))

        @tf.RegisterGradient(f"{prefix}MaxPool")
        def _max_pool(op, g):
            x = gate_input(op)
            pooled = op.outputs[0] if x is op.inputs[0] else tf.raw_ops.MaxPool(input=x, **pool_attrs(op))
            return tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=pooled, grad=incoming(g),
                                          **pool_attrs(op))

    register("GnlGuided", tf.nn.relu)
    register("GnlGated", tf.identity)

    _LOADED.append((tf, keras))
    return _LOADED[0]


@contextlib.contextmanager
def _shared_units(tf):
    """While active (inside one trace), a rectifier or max-pool applied again to the same tensor
    with the same arguments returns the first call's output instead of a second op.

    tf2onnx merges such duplicates (its merge_duplicated_nodes optimizer): NASNet, for one,
    applies Activation("relu") and MaxPooling2D to the same tensor in two branches of a cell, and
    its ONNX file has one unit where TensorFlow has two. Guided backprop is not invariant under that
    merge (relu(g1) + relu(g2) != relu(g1 + g2)); the engine can only gate the graph it is given, so
    the reference shares the unit too. Plain gradients are the same either way."""
    memo: dict = {}
    saved = {name: getattr(tf.nn, name) for name in ("relu", "relu6", "leaky_relu", "max_pool")}

    def shared(name, fn):
        def call(x, *args, **kwargs):
            key = (name, x.ref(), repr(args), repr(sorted(kwargs.items())))
            if key not in memo:
                memo[key] = fn(x, *args, **kwargs)
            return memo[key]
        return call

    try:
        for name, fn in saved.items():
            setattr(tf.nn, name, shared(name, fn))
        yield
    finally:
        for name, fn in saved.items():
            setattr(tf.nn, name, fn)


def _gated_ops(graph) -> list:
    return [op for op in graph.get_operations() if op.type in GATED_TF_OPS]


def gradient_function(model: keras.Model, guided: bool = False, gates: list | None = None):
    """A tf.function (x, seed) -> d sum(seed * model(x)) / dx in the model's dtype.

    Plain: tf.GradientTape. Guided: tf.gradients of the same sum inside the graph, whose
    rectifier and max-pool ops were created under a gradient override map (the tape itself looks
    gradients up by op type and ignores overrides), a unit applied twice to one tensor shared as
    tf2onnx shares it (see _shared_units). `.gated` on the returned function: a Counter
    of the ONNX op types the guided trace gated (filled on the first call).

    gates: one array per gated unit in the order the forward pass creates them (see line_up):
    each decides its unit's gate (a rectifier's sign test, a max-pool's selection) in place of the
    unit's own input; the gradient arithmetic stays in the model's dtype. Plain gradients then go
    through the same override map with the incoming gradient passed unchanged."""
    tf, _ = _tf()
    gated: collections.Counter = collections.Counter()
    dtype = model.dtype_policy.compute_dtype

    @tf.function(reduce_retracing=True)
    def plain(x, seed):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(model(x, training=False) * seed)
        return tape.gradient(loss, x)

    @tf.function(reduce_retracing=True)
    def overridden(x, seed):
        graph = tf.compat.v1.get_default_graph()
        with graph.gradient_override_map(_GUIDED_OVERRIDES if guided else _GATED_OVERRIDES), _shared_units(tf):
            y = model(x, training=False)
        ops = _gated_ops(graph)
        gated.clear()
        gated.update(GATED_TF_OPS[op.type] for op in ops)
        _IMPOSED.clear()
        if gates is not None:
            if len(gates) != len(ops):
                raise GateMismatch(f"{len(gates)} gates imposed, the model has {len(ops)} gated units")
            _IMPOSED.update({op.name: tf.constant(g, dtype) for op, g in zip(ops, gates)})
        try:
            return tf.gradients(tf.reduce_sum(y * seed), x)[0]
        finally:
            _IMPOSED.clear()

    fn = overridden if guided or gates is not None else plain
    fn.gated = gated
    return fn


def gate_inputs(model: keras.Model, x: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(ONNX op type, input value) of each unit the guided rule gates, in the order the forward
    pass creates them (a unit applied twice to one tensor counted once, as tf2onnx merges it)."""
    tf, _ = _tf()
    kinds: list[str] = []

    @tf.function
    def forward(x):
        graph = tf.compat.v1.get_default_graph()
        with _shared_units(tf):
            model(x, training=False)
        ops = _gated_ops(graph)
        kinds[:] = [GATED_TF_OPS[op.type] for op in ops]
        return [op.inputs[0] for op in ops]

    values = forward(tf.constant(np.asarray(x), model.dtype_policy.compute_dtype))
    return [(k, v.numpy()) for k, v in zip(kinds, values)]


def line_up(own: list[tuple[str, np.ndarray]], imposed: list[dict]) -> list[np.ndarray]:
    """The imposed gate inputs (dicts {"op", "input"} from an onnxruntime run, in ONNX graph order,
    NCHW or NHWC) rearranged to TensorFlow's units (gate_inputs: their order and layout). Each unit
    takes the first unused ONNX gate of the same op whose values agree with its own to 1e-3 of the
    tensor's scale (the float32 run against the float64 model); GateMismatch where none does."""
    unused = list(range(len(imposed)))
    out = []
    for i, (op, value) in enumerate(own):
        scale = float(np.max(np.abs(value))) or 1.0
        for j in unused:
            if imposed[j]["op"] != op:
                continue
            given = np.asarray(imposed[j]["input"])
            # NHWC as given, or NCHW (both can have one shape: C = H = W)
            layouts = (given, given.transpose(0, 2, 3, 1)) if given.ndim == 4 else (given,)
            cand = next((c for c in layouts if c.shape == value.shape
                         and np.max(np.abs(c - value)) <= 1e-3 * scale), None)
            if cand is not None:
                out.append(np.ascontiguousarray(cand))
                unused.remove(j)
                break
        else:
            raise GateMismatch(f"TensorFlow's gated unit {i} ({op}, shape {value.shape}) matches no "
                               "onnxruntime gate input")
    if unused:
        raise GateMismatch(f"{len(unused)} onnxruntime gates matched no TensorFlow unit")
    return out


def input_gradient(model: keras.Model, x: np.ndarray, seed: np.ndarray, guided: bool = False,
                   calls: collections.Counter | None = None, gates: list | None = None) -> np.ndarray:
    """d(sum(seed * model(x))) / dx as a numpy array in the model's dtype (TensorFlow's own
    gradient; guided: the override-map reference). `calls`, if given, gets the gated units.
    `gates`: gate inputs from an onnxruntime run ({"op", "input"} dicts, see tests/gates.py),
    lined up with this model's units (line_up) and imposed (gradient_function)."""
    tf, _ = _tf()
    dtype = model.dtype_policy.compute_dtype
    if gates is not None:
        gates = line_up(gate_inputs(model, x), gates)
    fn = gradient_function(model, guided, gates)
    grad = fn(tf.constant(np.asarray(x), dtype), tf.constant(np.asarray(seed), dtype)).numpy()
    if calls is not None:
        calls.update(fn.gated)
    return grad


def logits(model: keras.Model, x: np.ndarray) -> np.ndarray:
    tf, _ = _tf()
    dtype = model.dtype_policy.compute_dtype
    return model(tf.constant(np.asarray(x), dtype), training=False).numpy()


if __name__ == "__main__":  # export_all: CACHE_DIR SEED ARCH [ARCH ...], in this process
    import gc
    import sys

    for name in sys.argv[3:]:
        print(export(name, sys.argv[1], int(sys.argv[2])), flush=True)
        _tf()[1].backend.clear_session()  # each model's traced graphs: ~1 GB apiece otherwise
        gc.collect()


__all__ = ["ARCHS", "NOT_EXPORTABLE", "SEED", "SIZES", "build", "cache_root", "default_size", "export", "export_all", "export_path", "start_export_all",
           "input_gradient", "gate_inputs", "GateMismatch", "gradient_function", "line_up", "logits", "opset",
           "sample_input"]
