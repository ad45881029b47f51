"""Quantization, differentiated with the straight-through estimator (STE) of quantization-aware
training. The rounding of q = saturate(round(x / s) + z) is taken as the identity, so

    QuantizeLinear      dx = dq / s  where round(x / s) + z lies in the integer type's range, else 0
    DequantizeLinear    dq = dx * s  (x = (q - z) * s)

and a QuantizeLinear -> DequantizeLinear pair passes the gradient unchanged inside its clip range
and stops it outside. Gradients of integer codes are carried in the model's float type. The
scales and zero points are constants of the quantization (as the observers' ranges are in QAT):
no gradient flows to them, not even where a DynamicQuantizeLinear computes them from its input.

QLinearConv, QLinearMatMul and ONNX Runtime's com.microsoft QLinear* / QGemm ops never reach the
reverse pass: normalization rewrites them as their dequantized equivalents (DequantizeLinear ->
float op -> QuantizeLinear, gnl_onnx/dequantize.py), so LRP, guided gating and the CAM layers see
the float op. ConvInteger and MatMulInteger (dynamic quantization) keep their integer forward:
their rules are the float op's chain rule with the weights minus their zero points."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ...errors import UnsupportedModelError
from ...graph import Node
from .registry import RULES, rule

# The clip range of each integer code type (what QuantizeLinear saturates to)
CODE_RANGES = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
               onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767),
               onnx.TensorProto.UINT4: (0, 15), onnx.TensorProto.INT4: (-8, 7),
               onnx.TensorProto.INT32: (-2 ** 31, 2 ** 31 - 1)}


def _as_float(g, value):
    """A scale or zero point in the model's float type."""
    return g.op("Cast", value, to=g.float_type)


def broadcast_parameter(g, node: Node, value: str, like: str) -> str:
    """A scale or zero point of Quantize/DequantizeLinear shaped to broadcast against `like`:
    per tensor (a scalar) as it is, per axis (1-D) along `axis`, per block (opset 21: the rank of
    `like`, `block_size` elements of `like` sharing one entry along `axis`) repeated."""
    shape = g.shape(value)
    rank = g.rank(like)
    block = node.attr("block_size", 0)
    if shape is None or rank is None:
        raise UnsupportedModelError({f"{node.op} with parameters of unknown shape": [node.name]},
                                    hint="export the model with a fixed image size")
    if len(shape) == 0 or (len(shape) == 1 and shape[0] == 1 and not block):
        return g.op("Reshape", value, g.ints([]))  # per tensor (a 1-element 1-D one too)
    axis = node.attr("axis", 1) % rank
    if not block:
        dims = [1] * rank
        dims[axis] = -1
        return g.op("Reshape", value, g.ints(dims))
    # blocked: repeat each entry block_size times along the axis, cut to the axis' length
    size = g.static_dims(like, [axis], node.op)[0]
    blocks = shape[axis]
    repeated = g.op("Unsqueeze", value, g.ints([axis + 1]))
    target = list(shape[:axis + 1]) + [block] + list(shape[axis + 1:])
    repeated = g.op("Expand", repeated, g.ints(target))
    merged = list(shape[:axis]) + [blocks * block] + list(shape[axis + 1:])
    repeated = g.op("Reshape", repeated, g.ints(merged))
    return g.op("Slice", repeated, g.ints([0]), g.ints([size]), g.ints([axis]))


def _code_type(g, node: Node) -> int:
    """The integer type QuantizeLinear writes: its output's, else its zero point's, else uint8."""
    for name in (node.outputs[0], node.input(2)):
        elem = g.elem_type(name) if name else None
        if elem:
            return elem
    to = node.attr("output_dtype", 0)
    return to or onnx.TensorProto.UINT8


def _clip_mask(g, node: Node, x: str, scale: str, zero: str | None) -> str:
    """1 where round(x / s) + z is inside the code type's range (the value was not saturated)."""
    elem = _code_type(g, node)
    if elem not in CODE_RANGES:
        raise UnsupportedModelError({f"QuantizeLinear to {onnx.TensorProto.DataType.Name(elem)}": [node.name]},
                                    hint="only integer quantization has a straight-through gradient here")
    low, high = CODE_RANGES[elem]
    codes = g.op("Round", g.op("Div", x, scale))
    if zero is not None:
        codes = g.op("Add", codes, zero)
    inside = g.op("And", g.op("GreaterOrEqual", codes, g.const(float(low))),
                  g.op("LessOrEqual", codes, g.const(float(high))))
    return g.op("Cast", inside, to=g.float_type)


@rule("QuantizeLinear", codes=True)
def quantize_linear(g, node, dq):
    x = node.inputs[0]
    scale = _as_float(g, broadcast_parameter(g, node, node.inputs[1], x))
    zero = _as_float(g, broadcast_parameter(g, node, node.input(2), x)) if node.input(2) else None
    mask = _clip_mask(g, node, x, scale, zero)
    return [g.op("Mul", g.op("Div", dq, scale), mask), None, None]


@rule("DequantizeLinear")
def dequantize_linear(g, node, dx):
    codes = node.inputs[0]
    scale = _as_float(g, broadcast_parameter(g, node, node.inputs[1], codes))
    return [g.op("Mul", dx, scale), None, None]


@rule("DynamicQuantizeLinear", all_outputs=True, codes=True)
def dynamic_quantize_linear(g, node, grads):
    # y = saturate(round(x / y_scale) + y_zero_point) to uint8, with y_scale and y_zero_point
    # computed from x's range: the STE of y only (the parameters are held constant)
    dq = grads[0]
    if dq is None:
        return [None]
    x = node.inputs[0]
    scale = node.outputs[1]
    zero = _as_float(g, node.outputs[2])
    codes = g.op("Add", g.op("Round", g.op("Div", x, scale)), zero)
    inside = g.op("And", g.op("GreaterOrEqual", codes, g.const(0.0)), g.op("LessOrEqual", codes, g.const(255.0)))
    return [g.op("Mul", g.op("Div", dq, scale), g.op("Cast", inside, to=g.float_type))]


def _minus_zero_point(g, node: Node, codes: str, zero: str | None, axis: int) -> str:
    """codes - zero_point in the float type: numpy for constants, ops otherwise. A 1-D zero point
    runs along `axis` (ConvInteger's output channels, MatMulInteger's columns)."""
    known = g.constants.get(codes)
    zero_known = g.constants.get(zero) if zero else np.zeros((), np.int64)
    if known is not None and zero_known is not None:
        z = np.asarray(zero_known, np.float64)
        if z.ndim == 1 and z.size > 1:
            dims = [1] * known.ndim
            dims[axis % known.ndim] = -1
            z = z.reshape(dims)
        value = (known.astype(np.float64) - z).astype(g.np_float)
        name = g.const(value, name=f"{codes}_minus_zero_point")
        g.value_types[name] = helper.make_tensor_type_proto(g.float_type, list(value.shape))
        return name
    if g.wants(codes) and zero is None:
        raise UnsupportedModelError({f"{node.op} whose both operands depend on the image": [node.name]})
    value = g.op("Cast", codes, to=g.float_type)
    if zero:
        z = g.op("Cast", zero, to=g.float_type)
        rank = g.rank(codes)
        if g.shape(zero) and len(g.shape(zero)) == 1 and rank:
            dims = [1] * rank
            dims[axis % rank] = -1
            z = g.op("Reshape", z, g.ints(dims))
        value = g.op("Sub", value, z)
    g.value_types[value] = helper.make_tensor_type_proto(g.float_type, g.shape(codes))
    return value


def _float_twin(node: Node, op_type: str, inputs: list[str]) -> Node:
    """The float op computing what an integer op computes, on the given (float) operands."""
    proto = helper.make_node(op_type, inputs, list(node.outputs), name=node.name)
    proto.attribute.extend(node.proto.attribute)
    return Node(proto)


@rule("ConvInteger", codes=True)
def conv_integer(g, node, dy):
    # y = Conv(x - x_zero_point, w - w_zero_point) in int32: the Conv's input gradient with the
    # weights minus their zero points (the data's zero point only shifts x)
    if g.wants(node.inputs[1]):
        raise UnsupportedModelError({"ConvInteger with weights computed from the image": [node.name]})
    weight = _minus_zero_point(g, node, node.inputs[1], node.input(3), axis=0)
    return [RULES["Conv"](g, _float_twin(node, "Conv", [node.inputs[0], weight]), dy)[0], None, None, None]


@rule("MatMulInteger", codes=True)
def matmul_integer(g, node, dy):
    # y = (a - a_zero_point) @ (b - b_zero_point) in int32; a's zero point runs along its rows,
    # b's along its columns
    a, b = node.inputs[:2]
    a_float = a if g.wants(a) else _minus_zero_point(g, node, a, node.input(2), axis=-2)
    b_float = b if g.wants(b) else _minus_zero_point(g, node, b, node.input(3), axis=-1)
    if g.wants(a) and g.wants(b):
        raise UnsupportedModelError({"MatMulInteger whose both operands depend on the image": [node.name]})
    da, db = RULES["MatMul"](g, _float_twin(node, "MatMul", [a_float, b_float]), dy)
    return [da, db, None, None]

