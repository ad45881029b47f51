"""Quantized operators as their dequantized equivalents, so that one set of float rules (gradients,
LRP, guided gating, CAM layers) serves int8 models too.

ONNX Runtime's quantizer writes a model in one of two formats. QDQ: float ops between
QuantizeLinear/DequantizeLinear pairs; the weights' DequantizeLinear fold into float constants
(normalize.fold_constants), the pairs on activations stay, and their rules are the
straight-through estimator (autodiff/rules/quantized.py). QOperator: fused integer ops
(QLinearConv, QLinearMatMul, com.microsoft QGemm, QLinearAdd, QLinearGlobalAveragePool...).
`dequantize_operators` rewrites each of those as DequantizeLinear of its inputs -> the float op ->
QuantizeLinear of its output, which is the QDQ form of the same model: ONNX Runtime computes the
same codes, except where the float sum lands within rounding of a half step (measured in
docs/models.md).

Both formats also fuse the rectifiers away: a Relu (or ReLU6's lower bound) before a quantization
whose range starts at 0.0 is implied by the clipping. `recover_rectifiers` writes it back as a
Relu (exact: quantizing relu(v) or v gives the same codes when 0.0 is the lowest code), so guided
backpropagation gates there and LRP and DeepLIFT meet the unit the float model had."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .errors import UnsupportedModelError
from .graph import GraphBuilder

MS_DOMAIN = "com.microsoft"
# producers whose output can be negative: a quantization of theirs starting at 0.0 rectifies
LINEAR_PRODUCERS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Sum"}
CODE_MINIMUM = {onnx.TensorProto.UINT8: 0, onnx.TensorProto.INT8: -128, onnx.TensorProto.UINT16: 0,
                onnx.TensorProto.INT16: -32768, onnx.TensorProto.UINT4: 0, onnx.TensorProto.INT4: -8}


class _Rewriter:
    def __init__(self, model: onnx.ModelProto):
        self.g = GraphBuilder(model)
        self.known = self.g.constants
        self.nodes: list[onnx.NodeProto] = []
        self.seen: dict[tuple, str] = {}
        self.base = "dequantized"  # the name float values get: the quantized op's output's, see float_name

    def emit(self, op_type, inputs, output=None, base=None, **attrs) -> str:
        """Append a node; its output is named `base`'s float name (a dequantized input), else
        the quantized op's float name + "_float" (the value before requantization)."""
        out = output or self.g.fresh(float_name(base) if base else f"{float_name(self.base)}_float")
        self.nodes.append(helper.make_node(op_type, [i or "" for i in inputs], [out],
                                           name=self.g.fresh(f"{out}_node"),
                                           **{k: v for k, v in attrs.items() if v is not None}))
        return out

    def dequantized(self, codes, scale, zero, axis=None) -> str:
        """codes as float: a constant where codes and parameters are constants, else a
        DequantizeLinear (per axis along `axis` when the scale is 1-D)."""
        key = (codes, scale, zero, axis)
        if key not in self.seen:  # one DequantizeLinear per quantized value, whatever reads it
            self.seen[key] = self._dequantized(codes, scale, zero, axis)
        return self.seen[key]

    def _dequantized(self, codes, scale, zero, axis) -> str:
        values = [self.known.get(n) if n else np.zeros((), np.int64) for n in (codes, scale, zero)]
        per_axis = values[1] is not None and np.ndim(values[1]) == 1 and np.size(values[1]) > 1
        if all(v is not None for v in values):
            q, s, z = (np.asarray(v) for v in values)
            if per_axis:
                dims = [1] * q.ndim
                dims[axis % q.ndim] = -1
                s, z = s.reshape(dims), z.reshape(dims)
            value = (q.astype(np.float64) - z.astype(np.float64)) * s.astype(np.float64)
            return self.g.const(value.astype(np.asarray(values[1]).dtype), name=float_name(codes))
        if per_axis and axis is not None and axis < 0:
            rank = self.g.rank(codes)
            if rank is None:
                raise UnsupportedModelError({"per-axis quantized operand of unknown rank": [codes]})
            axis += rank
        return self.emit("DequantizeLinear", [codes, scale, zero], base=codes, axis=axis if per_axis else None)

    def requantized(self, value, scale, zero, output):
        self.emit("QuantizeLinear", [value, scale, zero], output)


def float_name(codes: str) -> str:
    """The name of a float value standing for integer codes: the quantizer's, less its suffix (so
    the CAM layers of a QOperator model carry the float model's names)."""
    return codes[:-len("_quantized")] if codes.endswith("_quantized") and len(codes) > 10 else f"{codes}_float"


def _inputs(node):
    return list(node.input) + [""] * 9


def _conv(r, node, a):
    x, xs, xz, w, ws, wz, ys, yz, bias = _inputs(node)[:9]
    x_f, w_f = r.dequantized(x, xs, xz), r.dequantized(w, ws, wz, axis=0)
    b_f = ""
    if bias:  # int32, scale x_scale * w_scale, zero point 0
        scales = r.known.get(xs), r.known.get(ws)
        if any(s is None for s in scales):
            product = r.emit("Mul", [xs, ws])
            b_f = r.emit("DequantizeLinear", [bias, product], axis=0 if np.ndim(scales[1]) else None)
        else:
            b_f = r.dequantized(bias, r.g.const(np.asarray(scales[0] * scales[1], np.float32)), "", axis=0)
    attrs = {k: helper.get_attribute_value(v) for k, v in a.items()}
    return r.emit("Conv", [x_f, w_f, b_f], **attrs), ys, yz


def _matmul(r, node, a):
    x, xs, xz, w, ws, wz, ys, yz = _inputs(node)[:8]
    return r.emit("MatMul", [r.dequantized(x, xs, xz, axis=-2), r.dequantized(w, ws, wz, axis=-1)]), ys, yz


def _gemm(r, node, a):
    x, xs, xz, w, ws, wz, bias, ys, yz = _inputs(node)[:9]
    trans_b = helper.get_attribute_value(a["transB"]) if "transB" in a else 0
    x_f, w_f = r.dequantized(x, xs, xz), r.dequantized(w, ws, wz, axis=0 if trans_b else 1)
    b_f = ""
    if bias:  # int32 with scale a_scale * b_scale (ONNX Runtime's quantizer folds beta into it)
        s = np.asarray(r.known[xs]) * np.asarray(r.known[ws]) if xs in r.known and ws in r.known else None
        if s is None:
            raise UnsupportedModelError({f"{MS_DOMAIN}.QGemm with computed scales": [node.name]})
        b_f = r.dequantized(bias, r.g.const(s.astype(np.float32)), "", axis=0)
    attrs = {k: helper.get_attribute_value(v) for k, v in a.items() if k in ("alpha", "transA", "transB")}
    return r.emit("Gemm", [x_f, w_f, b_f], **attrs), ys, yz


def _binary(op_type):
    def rewrite(r, node, a):
        x, xs, xz, y, ysc, yzp, zs, zz = _inputs(node)[:8]
        return r.emit(op_type, [r.dequantized(x, xs, xz), r.dequantized(y, ysc, yzp)]), zs, zz
    return rewrite


def _unary(op_type, keep=()):
    """Ops of inputs (X, X_scale, X_zero_point, Y_scale, Y_zero_point) and the float op's attributes."""
    def rewrite(r, node, a):
        x, xs, xz, ys, yz = _inputs(node)[:5]
        channels_last = helper.get_attribute_value(a["channels_last"]) if "channels_last" in a else 0
        attrs = {k: helper.get_attribute_value(v) for k, v in a.items() if k in keep}
        x_f = r.dequantized(x, xs, xz)
        if op_type == "GlobalAveragePool" and channels_last:
            rank = r.g.rank(x)
            if rank is None:
                raise UnsupportedModelError({f"{node.op_type} (channels last, unknown rank)": [node.name]})
            return r.emit("ReduceMean", [x_f, r.g.ints(list(range(1, rank - 1)))], keepdims=1), ys, yz
        if channels_last:
            raise UnsupportedModelError({f"{node.op_type} (channels last)": [node.name]})
        if op_type == "ReduceMean":
            axes = attrs.pop("axes", None)
            return r.emit("ReduceMean", [x_f, r.g.ints(axes) if axes else ""], **attrs), ys, yz
        if op_type == "Softmax" and attrs.pop("opset", 13) < 13:
            raise UnsupportedModelError({f"{node.op_type} (opset below 13)": [node.name]})
        return r.emit(op_type, [x_f], **attrs), ys, yz
    return rewrite


def _concat(r, node, a):
    ys, yz, *rest = node.input
    parts = [r.dequantized(*rest[i:i + 3]) for i in range(0, len(rest), 3)]
    return r.emit("Concat", parts, axis=helper.get_attribute_value(a["axis"])), ys, yz


POOL = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides", "dilations")
# (domain, op type) -> rewrite(rewriter, node, attributes) -> (float value, y_scale, y_zero_point)
EQUIVALENTS = {
    ("", "QLinearConv"): _conv,
    ("", "QLinearMatMul"): _matmul,
    (MS_DOMAIN, "QGemm"): _gemm,
    (MS_DOMAIN, "QLinearAdd"): _binary("Add"),
    (MS_DOMAIN, "QLinearMul"): _binary("Mul"),
    (MS_DOMAIN, "QLinearGlobalAveragePool"): _unary("GlobalAveragePool"),
    (MS_DOMAIN, "QLinearAveragePool"): _unary("AveragePool", POOL),
    (MS_DOMAIN, "QLinearSigmoid"): _unary("Sigmoid"),
    (MS_DOMAIN, "QLinearLeakyRelu"): _unary("LeakyRelu", ("alpha",)),
    (MS_DOMAIN, "QLinearSoftmax"): _unary("Softmax", ("axis", "opset")),
    (MS_DOMAIN, "QLinearReduceMean"): _unary("ReduceMean", ("axes", "keepdims")),
    (MS_DOMAIN, "QLinearConcat"): _concat,
}


def dequantize_operators(model: onnx.ModelProto) -> bool:
    """Rewrite the quantized operators of EQUIVALENTS in place; returns whether there were any."""
    graph = model.graph
    if not any((n.domain if n.domain != "ai.onnx" else "", n.op_type) in EQUIVALENTS for n in graph.node):
        return False
    r = _Rewriter(model)
    for node in graph.node:
        rewrite = EQUIVALENTS.get((node.domain if node.domain != "ai.onnx" else "", node.op_type))
        if rewrite is None:
            r.nodes.append(node)
            continue
        r.base = node.output[0]
        value, y_scale, y_zero = rewrite(r, node, {a.name: a for a in node.attribute})
        if y_scale:
            r.requantized(value, y_scale, y_zero, node.output[0])
        else:  # QGemm without an output scale computes float
            r.emit("Identity", [value], node.output[0])
    del graph.node[:]
    graph.node.extend(r.nodes)
    return True


def _lowest_code_is_zero(node, known) -> bool:
    """Whether a QuantizeLinear's lowest code dequantizes to 0.0 (zero point = the type's minimum)."""
    zero = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if zero is None:
        to = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        return CODE_MINIMUM.get(to or onnx.TensorProto.UINT8) == 0
    value = known.get(zero)
    if value is None:
        return False
    value = np.asarray(value)
    minimum = np.iinfo(value.dtype).min if value.dtype.kind in "iu" else None
    return minimum is not None and value.size > 0 and bool(np.all(value == minimum))


def recover_rectifiers(model: onnx.ModelProto) -> int:
    """Put a Relu before each QuantizeLinear of a linear op's output whose lowest code is 0.0;
    returns how many."""
    graph = model.graph
    g = GraphBuilder(model)
    producers = {o: n for n in graph.node for o in n.output}
    nodes, count = [], 0
    for node in graph.node:
        source = producers.get(node.input[0]) if node.op_type == "QuantizeLinear" else None
        if source is not None and source.op_type in LINEAR_PRODUCERS and _lowest_code_is_zero(node, g.constants):
            rectified = g.fresh(f"{node.input[0]}_rectified")
            nodes.append(helper.make_node("Relu", [node.input[0]], [rectified], name=g.fresh(f"{node.name}_relu")))
            node.input[0] = rectified
            count += 1
        nodes.append(node)
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count
