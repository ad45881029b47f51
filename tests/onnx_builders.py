"""Helpers for tests that hand-build tiny ONNX graphs (no torch): building models, running them on a
float64-capable backend, and finite differences.

Runtime choice: onnxruntime CPU first; when it has no kernel for a node at this dtype (it has no
float64 Conv, ConvTranspose, MaxPool, ...) fall back to onnx.reference.ReferenceEvaluator, which runs
every standard op in numpy at the dtype it is given. Only a missing kernel triggers the fallback: any
other onnxruntime error (an invalid graph, a shape error) propagates, so an engine bug is not hidden
by the fallback.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _RefConvTranspose
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

NP_TO_ONNX = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
              np.dtype(np.int64): TensorProto.INT64}

# IR version per opset as onnx.helper.VERSION_TABLE says (the oldest IR that knows the opset), so
# old-opset models look like what old exporters wrote.
_IR_FOR_OPSET = {7: 3, 8: 3, 9: 4, 10: 5, 11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8}


def value_info(name: str, dtype, shape):
    """shape: a list of ints / dim_param strings, or None for an unknown shape."""
    elem = NP_TO_ONNX[np.dtype(dtype)] if not isinstance(dtype, int) else dtype
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(nodes: Sequence[onnx.NodeProto],
               inputs: Sequence[tuple[str, object, object]],
               outputs: Sequence[tuple[str, object, object]],
               initializers: dict[str, np.ndarray] | None = None,
               opset: int = 18,
               ir_version: int | None = None,
               initializers_as_inputs: bool = False,
               extra_opsets: dict[str, int] | None = None,
               check: bool = True) -> onnx.ModelProto:
    """inputs/outputs: (name, numpy dtype or TensorProto elem type, shape). Initializers keep their
    numpy dtype. initializers_as_inputs lists them as graph inputs too (IR < 4 exports do that)."""
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()]
    graph_inputs = [value_info(*i) for i in inputs]
    if initializers_as_inputs:
        graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(list(nodes), "g", graph_inputs, [value_info(*o) for o in outputs], inits)
    opsets = [helper.make_opsetid("", opset)]
    opsets += [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets,
                              ir_version=ir_version or _IR_FOR_OPSET.get(opset, 8),
                              producer_name="gnl-onnx-tests")
    if check:
        onnx.checker.check_model(model)
    return model


def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: unused-initializer warnings would flood the log
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class LRN(OpRun):
    """Spec-following LRN for the reference evaluator: onnx 1.23's op_lrn.py loops over the batch
    dimension instead of the channels (`for c in range(x.shape[0])`), so its output is wrong
    whenever N != C. Window per the spec: [c - floor((size-1)/2), c + ceil((size-1)/2)]."""

    op_domain = ""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        alpha = 1e-4 if alpha is None else alpha
        beta = 0.75 if beta is None else beta
        bias = 1.0 if bias is None else bias
        channels = x.shape[1]
        lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
        square_sum = np.zeros_like(x)
        for c in range(channels):
            square_sum[:, c] = np.sum(x[:, max(0, c - lo):min(channels, c + hi + 1)] ** 2, axis=1)
        return ((x / (bias + (alpha / size) * square_sum) ** beta).astype(x.dtype),)


class ConvTranspose(_RefConvTranspose):
    """The reference evaluator's ConvTranspose mishandles group > 1 (onnx 1.23: it slices W's first
    axis by out_channels/group instead of in_channels/group and writes one channel per group), which
    the input gradient of any grouped or depthwise Conv needs. Run each group with group=1 instead."""

    op_domain = ""

    def _run(self, X, W, B=None, group=None, **kw):
        if not group or group == 1:
            return super()._run(X, W, B, group=1, **kw)
        cin = X.shape[1] // group
        parts = [np.asarray(super(ConvTranspose, self)._run(
                     X[:, g * cin:(g + 1) * cin], W[g * cin:(g + 1) * cin], None, group=1, **kw)[0])
                 for g in range(group)]
        out = np.concatenate(parts, axis=1)
        if B is not None:
            out = out + B.reshape((1, -1) + (1,) * (out.ndim - 2))
        return (out.astype(X.dtype),)


class Erf(OpRun):
    """onnx 1.23's reference Erf vectorizes math.erf with otypes=["f"], i.e. computes in float32
    even for float64 input, which ruins float64 finite differences. Keep the input's precision."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[np.float64])(x).astype(x.dtype),)


REFERENCE_FIXES = [LRN, ConvTranspose, Erf]


class Runner:
    """One session per model; `backend` says which runtime ran it ('ort' or 'reference')."""

    def __init__(self, model: onnx.ModelProto, allow_reference: bool = True):
        self.model = model
        try:
            self._sess = ort_session(model)
            self.backend = "ort"
        except OrtNotImplemented:
            if not allow_reference:
                raise
            self._sess = ReferenceEvaluator(model, new_ops=REFERENCE_FIXES)
            self.backend = "reference"
        self.output_names = [o.name for o in model.graph.output]

    def __call__(self, feeds: dict[str, np.ndarray], outputs: Sequence[str] | None = None):
        names = list(outputs) if outputs is not None else self.output_names
        return [np.asarray(r) for r in self._sess.run(names, feeds)]


def loss(y: np.ndarray, seed: np.ndarray) -> float:
    """L = sum(seed * y), accumulated in float64 whatever y's dtype."""
    return float(np.sum(seed.astype(np.float64) * y.astype(np.float64)))


def fd_gradient(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, seed: np.ndarray,
                eps: float) -> np.ndarray:
    """Central finite differences of L(x) = sum(seed * f(x)), one element of x at a time."""
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = grad.reshape(-1)
    for i in range(x.size):
        xp = x.copy().reshape(-1)
        xm = x.copy().reshape(-1)
        xp[i] += eps
        xm[i] -= eps
        flat[i] = (loss(f(xp.reshape(x.shape)), seed) - loss(f(xm.reshape(x.shape)), seed)) / (2 * eps)
    return grad


def fd_directional(f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, seed: np.ndarray,
                   v: np.ndarray, eps: float) -> float:
    """(L(x + eps v) - L(x - eps v)) / (2 eps) with the perturbed points cast to x's dtype."""
    xp = (x.astype(np.float64) + eps * v).astype(x.dtype)
    xm = (x.astype(np.float64) - eps * v).astype(x.dtype)
    # Use the step actually taken after rounding to x's dtype, not the nominal one.
    step = (xp.astype(np.float64) - xm.astype(np.float64))
    denom = float(np.sum(step * v) / np.sum(v * v))
    return (loss(f(xp), seed) - loss(f(xm), seed)) / denom


def max_rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (inf-norm relative error; 0/0 counts as 0)."""
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    err = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    if scale == 0.0:
        return err
    return err / scale


def distinct_values(rng: np.random.Generator, shape, spacing: float = 0.1, center: bool = True):
    """A random permutation of evenly spaced values (no ties, gaps >> any FD step): safe input for
    MaxPool (argmax never flips) and for Relu-like kinks when none lands on the kink."""
    n = int(np.prod(shape))
    vals = (np.arange(n) - (n - 1) / 2 if center else np.arange(n)) * spacing
    vals = vals + rng.uniform(-0.2, 0.2, n) * spacing  # break the lattice, keep gaps >= 0.6 spacing
    return rng.permutation(vals).reshape(shape)


def away_from(rng: np.random.Generator, shape, points: Sequence[float], margin: float,
              low: float = -2.0, high: float = 2.0) -> np.ndarray:
    """Uniform values in [low, high] at least `margin` away from every kink in `points`."""
    out = rng.uniform(low, high, size=int(np.prod(shape)))
    for _ in range(1000):
        bad = np.zeros(out.shape, bool)
        for p in points:
            bad |= np.abs(out - p) < margin
        if not bad.any():
            return out.reshape(shape)
        out[bad] = rng.uniform(low, high, size=int(bad.sum()))
    raise AssertionError("could not draw values away from the kinks")


def with_output_shapes(model: onnx.ModelProto, shapes: dict[str, Sequence]) -> onnx.ModelProto:
    """Copy of model with the given graph outputs' shapes set (dims: ints or dim_param strings)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for o in m.graph.output:
        if o.name in shapes:
            shape = o.type.tensor_type.shape
            shape.ClearField("dim")
            for d in shapes[o.name]:
                dim = shape.dim.add()
                if isinstance(d, str):
                    dim.dim_param = d
                else:
                    dim.dim_value = int(d)
    return m


def add_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """Copy of model that also exposes the given intermediate values (shape left unknown)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    elem = m.graph.input[0].type.tensor_type.elem_type
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, elem, None))
    return m


def kink_probe(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """Copy of model that also outputs every Relu's input and every MaxPool's Indices, to tell
    whether a finite-difference step crossed a kink (a Relu input changed sign or a MaxPool picked
    another element). Returns (model, relu input names, indices names)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    relu_inputs, indices = [], []
    for i, node in enumerate(m.graph.node):
        if node.op_type == "Relu":
            relu_inputs.append(node.input[0])
        elif node.op_type == "MaxPool":
            if len(node.output) < 2 or not node.output[1]:
                name = f"__probe_idx{i}"
                del node.output[1:]
                node.output.append(name)
            indices.append(node.output[1])
    elem = m.graph.input[0].type.tensor_type.elem_type
    for n in relu_inputs:
        m.graph.output.append(helper.make_tensor_value_info(n, elem, None))
    for n in indices:
        m.graph.output.append(helper.make_tensor_value_info(n, TensorProto.INT64, None))
    return m, relu_inputs, indices


def const(name: str, value, dtype=None) -> onnx.NodeProto:
    """A Constant node (many exports carry constants as nodes rather than initializers)."""
    arr = np.asarray(value, dtype=dtype)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name))


# ---------------------------------------------------------------- whole hand-built "exports"
def keras_style_cnn(rng: np.random.Generator, hw: int = 8, classes: int = 5) -> tuple[onnx.ModelProto, dict]:
    """What tf2onnx writes for a small Keras CNN (opset 13): NHWC input with a dynamic batch dim,
    Transposes around every NCHW Conv (SAME_UPPER), Relu, MaxPool, a Reshape whose target shape is
    computed at run time by Shape -> Gather -> Unsqueeze -> Concat, Dense as MatMul + Add, Softmax.
    Returns (model, weights by name)."""
    h2 = hw // 2
    h3 = -(-h2 // 2)  # stride-2 SAME_UPPER conv: ceil(h2 / 2)
    flat = h3 * h3 * 6
    p = {"conv1/W": rng.normal(size=(4, 3, 3, 3)) * 0.5, "conv1/b": rng.normal(size=4) * 0.1,
         "conv2/W": rng.normal(size=(6, 4, 3, 3)) * 0.3, "conv2/b": rng.normal(size=6) * 0.1,
         "dense/W": rng.normal(size=(flat, classes)) * 0.3, "dense/b": rng.normal(size=classes) * 0.1}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    consts = {"gather_idx": np.array(0, np.int64), "unsq_axes": np.array([0], np.int64),
              "flat_dim": np.array([flat], np.int64)}
    n = helper.make_node
    nodes = [
        n("Transpose", ["input_1"], ["conv1_nchw"], perm=[0, 3, 1, 2], name="model/conv1/transpose"),
        n("Conv", ["conv1_nchw", "conv1/W", "conv1/b"], ["conv1_out"], auto_pad="SAME_UPPER",
          kernel_shape=[3, 3], strides=[1, 1], dilations=[1, 1], name="model/conv1/Conv2D"),
        n("Relu", ["conv1_out"], ["relu1"], name="model/conv1/Relu"),
        n("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2], name="model/pool1/MaxPool"),
        n("Transpose", ["pool1"], ["pool1_nhwc"], perm=[0, 2, 3, 1], name="model/pool1/transpose"),
        n("Transpose", ["pool1_nhwc"], ["conv2_nchw"], perm=[0, 3, 1, 2], name="model/conv2/transpose"),
        n("Conv", ["conv2_nchw", "conv2/W", "conv2/b"], ["conv2_out"], auto_pad="SAME_UPPER",
          kernel_shape=[3, 3], strides=[2, 2], name="model/conv2/Conv2D"),
        n("Relu", ["conv2_out"], ["relu2"], name="model/conv2/Relu"),
        n("Transpose", ["relu2"], ["relu2_nhwc"], perm=[0, 2, 3, 1], name="model/conv2/transpose_back"),
        n("Shape", ["relu2_nhwc"], ["shape"], name="model/flatten/Shape"),
        n("Gather", ["shape", "gather_idx"], ["batch"], axis=0, name="model/flatten/strided_slice"),
        n("Unsqueeze", ["batch", "unsq_axes"], ["batch_1d"], name="model/flatten/Unsqueeze"),
        n("Concat", ["batch_1d", "flat_dim"], ["new_shape"], axis=0, name="model/flatten/Reshape/shape"),
        n("Reshape", ["relu2_nhwc", "new_shape"], ["flat"], name="model/flatten/Reshape"),
        n("MatMul", ["flat", "dense/W"], ["dense_mm"], name="model/dense/MatMul"),
        n("Add", ["dense_mm", "dense/b"], ["logits"], name="model/dense/BiasAdd"),
        n("Softmax", ["logits"], ["dense"], axis=-1, name="model/dense/Softmax"),
    ]
    model = make_model(nodes, [("input_1", np.float32, ["unk__6", hw, hw, 3])],
                       [("dense", np.float32, ["unk__7", classes])], {**p, **consts}, opset=13)
    return model, p


def caffe_style_cnn(rng: np.random.Generator, hw: int = 8, classes: int = 5) -> tuple[onnx.ModelProto, dict]:
    """An old Caffe-era export: opset 8, IR version 3, every initializer also listed as a graph
    input. Conv -> unfused BatchNormalization -> Relu -> LRN -> AveragePool (count_include_pad=1,
    pads) -> two branches (1x1 and 3x3 Conv + Relu) -> Sum -> Concat with the pool output ->
    Flatten -> Dropout -> Gemm (transB) -> Softmax."""
    hp = (hw + 2 - 3) // 2 + 1
    p = {"conv1_w": rng.normal(size=(4, 3, 3, 3)) * 0.5, "conv1_b": rng.normal(size=4) * 0.1,
         "bn1_scale": rng.uniform(0.5, 1.5, 4), "bn1_bias": rng.normal(size=4) * 0.1,
         "bn1_mean": rng.normal(size=4) * 0.1, "bn1_var": rng.uniform(0.5, 1.5, 4),
         "conv2a_w": rng.normal(size=(4, 4, 1, 1)) * 0.5, "conv2a_b": rng.normal(size=4) * 0.1,
         "conv2b_w": rng.normal(size=(4, 4, 3, 3)) * 0.3, "conv2b_b": rng.normal(size=4) * 0.1,
         "fc_w": rng.normal(size=(classes, 8 * hp * hp)) * 0.2, "fc_b": rng.normal(size=classes) * 0.1}
    p = {k: v.astype(np.float32) for k, v in p.items()}
    n = helper.make_node
    nodes = [
        n("Conv", ["data", "conv1_w", "conv1_b"], ["conv1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        n("BatchNormalization", ["conv1", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["bn1"],
          epsilon=1e-5, momentum=0.9, spatial=1, name="bn1"),
        n("Relu", ["bn1"], ["relu1"], name="relu1"),
        n("LRN", ["relu1"], ["norm1"], size=3, alpha=0.3, beta=0.75, bias=1.0, name="norm1"),
        n("AveragePool", ["norm1"], ["pool1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
          count_include_pad=1, name="pool1"),
        n("Conv", ["pool1", "conv2a_w", "conv2a_b"], ["conv2a"], kernel_shape=[1, 1], name="conv2a"),
        n("Relu", ["conv2a"], ["relu2a"], name="relu2a"),
        n("Conv", ["pool1", "conv2b_w", "conv2b_b"], ["conv2b"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
          name="conv2b"),
        n("Relu", ["conv2b"], ["relu2b"], name="relu2b"),
        n("Sum", ["relu2a", "relu2b"], ["sum2"], name="sum2"),
        n("Concat", ["sum2", "pool1"], ["cat"], axis=1, name="cat"),
        n("Flatten", ["cat"], ["flat"], axis=1, name="flat"),
        n("Dropout", ["flat"], ["drop"], ratio=0.5, name="drop"),
        n("Gemm", ["drop", "fc_w", "fc_b"], ["fc"], transB=1, name="fc"),
        n("Softmax", ["fc"], ["prob"], axis=1, name="prob"),
    ]
    model = make_model(nodes, [("data", np.float32, ["N", 3, hw, hw])], [("prob", np.float32, ["N", classes])],
                       p, opset=8, ir_version=3, initializers_as_inputs=True)
    return model, p


def relu_cnn(seed=0, hw=16, classes=5):
    """Conv-Relu-MaxPool-Conv-Relu-GlobalAveragePool-Gemm, NCHW 3 x hw x hw input "image",
    output "logits", dynamic batch: a small real CNN for the CLI and metrics tests."""
    node = helper.make_node
    f32 = np.float32
    rng = np.random.default_rng(seed)
    p = {"w1": rng.normal(size=(6, 3, 3, 3)) * 0.5, "b1": rng.normal(size=6) * 0.1,
         "w2": rng.normal(size=(8, 6, 3, 3)) * 0.4, "b2": rng.normal(size=8) * 0.3 + 0.5,
         "w3": rng.normal(size=(classes, 8)) * 0.5, "b3": rng.normal(size=classes) * 0.1}
    p = {k: np.asarray(v, f32) for k, v in p.items()}
    nodes = [node("Conv", ["image", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
             node("Relu", ["c1"], ["r1"], name="relu1"),
             node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
             node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv2"),
             node("Relu", ["c2"], ["r2"], name="relu2"),
             node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             node("Flatten", ["g"], ["f"], name="flatten"),
             node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1, name="fc")]
    return make_model(nodes, [("image", f32, ["N", 3, hw, hw])], [("logits", f32, ["N", classes])], p)


def run_cli(capfd, *argv):
    """Run `gnl-onnx argv...` in-process: (exit code, stdout, stderr)."""
    from gnl_onnx.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capfd.readouterr()
    return code, out, err
