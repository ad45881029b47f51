"""Elementwise arithmetic with numpy broadcasting: every operand's gradient is summed back to the
operand's own shape."""
from __future__ import annotations

import math

from ...graph import FLOAT_TYPES
from .registry import rule


@rule("Add", "Sum")
def add(g, node, dy):
    return [g.unbroadcast(dy, x, node.outputs[0]) for x in node.inputs]


@rule("Mean")
def mean(g, node, dy):
    share = g.op("Mul", dy, g.const(1.0 / len(node.inputs)))
    return [g.unbroadcast(share, x, node.outputs[0]) for x in node.inputs]


@rule("Sub")
def sub(g, node, dy):
    a, b = node.inputs
    return [g.unbroadcast(dy, a, node.outputs[0]), g.unbroadcast(g.op("Neg", dy), b, node.outputs[0])]


@rule("Mul")
def mul(g, node, dy):
    a, b = node.inputs
    return [g.unbroadcast(g.op("Mul", dy, b), a, node.outputs[0]),
            g.unbroadcast(g.op("Mul", dy, a), b, node.outputs[0])]


@rule("Div")
def div(g, node, dy):
    a, b = node.inputs
    da = g.op("Div", dy, b)
    # d(a/b)/db = -(a/b)/b
    db = g.op("Neg", g.op("Div", g.op("Mul", dy, node.outputs[0]), b))
    return [g.unbroadcast(da, a, node.outputs[0]), g.unbroadcast(db, b, node.outputs[0])]


@rule("Pow")
def power(g, node, dy):
    base, exponent = node.inputs
    y = node.outputs[0]
    # d/dbase = p * base^(p-1); d/dp = y * log(base) (only meaningful for positive bases)
    dbase = g.op("Mul", dy, g.op("Mul", exponent, g.op("Pow", base, g.op("Sub", exponent, g.const(1.0)))))
    dexp = g.op("Mul", dy, g.op("Mul", y, g.op("Log", base)))
    return [g.unbroadcast(dbase, base, y), g.unbroadcast(dexp, exponent, y)]


@rule("Neg")
def neg(g, node, dy):
    return [g.op("Neg", dy)]


@rule("Exp")
def exp(g, node, dy):
    return [g.op("Mul", dy, node.outputs[0])]


@rule("Log")
def log(g, node, dy):
    return [g.op("Div", dy, node.inputs[0])]


@rule("Sqrt")
def sqrt(g, node, dy):
    return [g.op("Div", g.op("Mul", dy, g.const(0.5)), node.outputs[0])]


@rule("Reciprocal")
def reciprocal(g, node, dy):
    y = node.outputs[0]
    return [g.op("Neg", g.op("Mul", dy, g.op("Mul", y, y)))]


@rule("Abs")
def absolute(g, node, dy):
    return [g.op("Mul", dy, g.op("Sign", node.inputs[0]))]


@rule("Erf")
def erf(g, node, dy):
    x = node.inputs[0]
    density = g.op("Exp", g.op("Neg", g.op("Mul", x, x)))
    return [g.op("Mul", dy, g.op("Mul", density, g.const(2 / math.sqrt(math.pi))))]


def _gradient_type(g, value):
    """A gradient has its value's float type; that of integer codes (quantized.py) is the model's."""
    elem = g.elem_type(value)
    return elem if elem in FLOAT_TYPES else g.float_type


@rule("Cast")
def cast(g, node, dy):
    return [g.op("Cast", dy, to=_gradient_type(g, node.inputs[0]))]


@rule("Max", "Min")
def extremum(g, node, dy):
    # The gradient goes to the operand that was selected (ties: to each of them, as in ONNX Runtime
    # training); operands are broadcast, so compare each one with the result.
    y = node.outputs[0]
    return [g.unbroadcast(g.op("Where", g.op("Equal", x, y), dy, g.const(0.0)), x, y) for x in node.inputs]


@rule("Where")
def where(g, node, dy):
    condition, a, b = node.inputs
    zero = g.const(0.0)
    y = node.outputs[0]
    return [None, g.unbroadcast(g.op("Where", condition, dy, zero), a, y),
            g.unbroadcast(g.op("Where", condition, zero, dy), b, y)]


@rule("CastLike")
def cast_like(g, node, dy):
    # the second input only lends its type
    return [g.op("Cast", dy, to=_gradient_type(g, node.inputs[0])), None]
