"""Non-linear units. Masks are read from the unit's output where that is equivalent, so the
runtime can still fuse the unit into the Conv before it."""
from __future__ import annotations

import math

import numpy as np

from .registry import rule

# Masks of Relu/Clip outputs as 1x1 depthwise Convs (see conv_mask) instead of comparisons + Cast.
# Off: alone it measured 2-10 % more CPU time (ONNX Runtime still reorders the gradient around the
# masked Mul, whose batch dimension it cannot prove equal to the mask's); with static input shapes
# it paid 10 % on MobileNetV2 (docs/performance.md, issue 16).
CONV_MASKS = False
_SCALE = 2.0 ** 127  # the largest power of two below float32's maximum


def _select(g, condition, value, otherwise=0.0):
    if isinstance(otherwise, float) and otherwise == 0.0:
        return masked(g, condition, value)
    return g.op("Where", condition, value, g.const(otherwise) if isinstance(otherwise, float) else otherwise)


def masked(g, condition, value):
    """value where condition holds, else 0: as value * float(condition), which ONNX Runtime runs
    about twice as fast as Where (measured: 8 vs 19 ms on [8, 96, 56, 56], one thread). Unlike
    Where it lets a non-finite gradient through as NaN; gradients of finite models are finite."""
    return g.op("Mul", value, g.op("Cast", condition, to=g.float_type))


def conv_mask(g, y, high=None):
    """The float 0/1 mask of 0 < y (< high) for y = Relu(x) or Clip(x, 0, high), built only from ops
    that ONNX Runtime runs in its blocked NCHWc layout, so that neither y (read in the layout of the
    Conv that made it) nor the gradient (in the layout of the Conv that consumes it) is reordered:
    Clip(Conv1x1(y * (high - y), 2^127), 0, 1), every Conv depthwise. y >= 2^-126 (every normal
    float) gives 1, y = 0 (or y = high) gives 0; high - y is exact near high (Sterbenz). Only a
    subnormal y below 2^-127 (or a product of such size) gets a fraction instead of 1.
    None where y is not a 4-D tensor with a known channel count (the caller compares instead)."""
    shape = g.shape(y)
    if not CONV_MASKS or shape is None or len(shape) != 4 or not isinstance(shape[1], int) or shape[1] < 1:
        return None
    channels = shape[1]

    def pointwise(x, scale, shift=None):
        inputs = [x, g.const(np.full((channels, 1, 1, 1), scale))]
        if shift is not None:
            inputs.append(g.const(np.full(channels, shift)))
        return g.op("Conv", *inputs, group=channels, kernel_shape=[1, 1])

    if high is not None:
        y = g.op("Mul", y, pointwise(y, -1.0, high))
    return g.op("Clip", pointwise(y, _SCALE), g.const(0.0), g.const(1.0))


def _scalar(g, name):
    """The value of a constant scalar input, else None."""
    value = g.constants.get(name) if name else None
    if value is None or np.size(value) != 1:
        return None
    return float(np.asarray(value).reshape(()))


@rule("Relu")
def relu(g, node, dy):
    mask = conv_mask(g, node.outputs[0])
    if mask is not None:
        return [g.op("Mul", dy, mask)]
    return [_select(g, g.op("Greater", node.outputs[0], g.const(0.0)), dy)]


@rule("Clip")
def clip(g, node, dy):
    # y is strictly inside (lo, hi) exactly where x is; at the bounds the unit is flat.
    y, inside = node.outputs[0], None
    low, high = _scalar(g, node.input(1)), _scalar(g, node.input(2))
    if low == 0.0 and high is not None and 0 < high < 1e30:  # ReLU6 and kin
        mask = conv_mask(g, y, high)
        if mask is not None:
            return [g.op("Mul", dy, mask)]
    for bound, compare in ((node.input(1), "Greater"), (node.input(2), "Less")):
        if bound is not None:
            test = g.op(compare, y, bound)
            inside = test if inside is None else g.op("And", inside, test)
    return [dy if inside is None else _select(g, inside, dy)]


@rule("LeakyRelu")
def leaky_relu(g, node, dy):
    slope = g.const(node.attr("alpha", 0.01))
    return [_select(g, g.op("Greater", node.inputs[0], g.const(0.0)), dy, g.op("Mul", dy, slope))]


@rule("PRelu")
def prelu(g, node, dy):
    x, slope = node.inputs[0], node.inputs[1]
    positive = g.op("Greater", x, g.const(0.0))
    dx = _select(g, positive, dy, g.op("Mul", dy, slope))
    dslope = g.unbroadcast(_select(g, positive, g.const(0.0), g.op("Mul", dy, x)), slope, node.outputs[0])
    return [dx, dslope]


@rule("ThresholdedRelu")
def thresholded_relu(g, node, dy):
    return [_select(g, g.op("Greater", node.inputs[0], g.const(node.attr("alpha", 1.0))), dy)]


@rule("Sigmoid")
def sigmoid(g, node, dy):
    y = node.outputs[0]
    return [g.op("Mul", dy, g.op("Mul", y, g.op("Sub", g.const(1.0), y)))]


@rule("Tanh")
def tanh(g, node, dy):
    y = node.outputs[0]
    return [g.op("Mul", dy, g.op("Sub", g.const(1.0), g.op("Mul", y, y)))]


@rule("HardSigmoid")
def hard_sigmoid(g, node, dy):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    z = g.op("Add", g.op("Mul", node.inputs[0], g.const(alpha)), g.const(beta))
    inside = g.op("And", g.op("Greater", z, g.const(0.0)), g.op("Less", z, g.const(1.0)))
    return [_select(g, inside, g.op("Mul", dy, g.const(alpha)))]


@rule("HardSwish")
def hard_swish(g, node, dy):
    # y = x * clip(x/6 + 1/2, 0, 1): slope 0 below -3, (2x+3)/6 between, 1 above 3.
    x = node.inputs[0]
    middle = g.op("Add", g.op("Mul", x, g.const(1 / 3)), g.const(0.5))
    slope = _select(g, g.op("Less", x, g.const(-3.0)), g.const(0.0),
                   _select(g, g.op("Greater", x, g.const(3.0)), g.const(1.0), middle))
    return [g.op("Mul", dy, slope)]


@rule("Softplus")
def softplus(g, node, dy):
    return [g.op("Mul", dy, g.op("Sigmoid", node.inputs[0]))]


@rule("Softsign")
def softsign(g, node, dy):
    denominator = g.op("Add", g.const(1.0), g.op("Abs", node.inputs[0]))
    return [g.op("Div", dy, g.op("Mul", denominator, denominator))]


@rule("Elu", "Celu", "Selu")
def elu_family(g, node, dy):
    # Elu: y + alpha below 0; Celu: exp(x/alpha); Selu: gamma*alpha*exp(x) below, gamma above.
    x, y = node.inputs[0], node.outputs[0]
    alpha = node.attr("alpha", {"Elu": 1.0, "Celu": 1.0, "Selu": 1.67326319217681884765625}[node.op])
    if node.op == "Elu":
        below, above = g.op("Add", y, g.const(alpha)), g.const(1.0)
    elif node.op == "Celu":
        below, above = g.op("Exp", g.op("Div", x, g.const(alpha))), g.const(1.0)
    else:
        gamma = node.attr("gamma", 1.05070102214813232421875)
        below, above = g.op("Add", y, g.const(alpha * gamma)), g.const(gamma)
    slope = _select(g, g.op("Greater", x, g.const(0.0)), above, below)
    return [g.op("Mul", dy, slope)]


@rule("Gelu")
def gelu(g, node, dy):
    x = node.inputs[0]
    if node.attr("approximate", "none") == "tanh":
        # y = x/2 (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
        c = math.sqrt(2 / math.pi)
        x2 = g.op("Mul", x, x)
        u = g.op("Mul", g.op("Mul", x, g.op("Add", g.const(1.0), g.op("Mul", x2, g.const(0.044715)))), g.const(c))
        t = g.op("Tanh", u)
        du = g.op("Mul", g.op("Add", g.const(1.0), g.op("Mul", x2, g.const(3 * 0.044715))), g.const(c))
        sech2 = g.op("Sub", g.const(1.0), g.op("Mul", t, t))
        slope = g.op("Add", g.op("Mul", g.const(0.5), g.op("Add", g.const(1.0), t)),
                     g.op("Mul", g.op("Mul", g.const(0.5), x), g.op("Mul", sech2, du)))
    else:
        # Phi(x) + x phi(x)
        erf = g.op("Erf", g.op("Mul", x, g.const(1 / math.sqrt(2))))
        cdf = g.op("Mul", g.const(0.5), g.op("Add", g.const(1.0), erf))
        gauss = g.op("Exp", g.op("Mul", g.op("Mul", x, x), g.const(-0.5)))
        pdf = g.op("Mul", gauss, g.const(1 / math.sqrt(2 * math.pi)))
        slope = g.op("Add", cdf, g.op("Mul", x, pdf))
    return [g.op("Mul", dy, slope)]


@rule("Mish")
def mish(g, node, dy):
    # y = x tanh(softplus(x)); y' = tanh(sp) + x sigmoid(x) (1 - tanh(sp)^2)
    x = node.inputs[0]
    t = g.op("Tanh", g.op("Softplus", x))
    sech2 = g.op("Sub", g.const(1.0), g.op("Mul", t, t))
    slope = g.op("Add", t, g.op("Mul", g.op("Mul", x, g.op("Sigmoid", x)), sech2))
    return [g.op("Mul", dy, slope)]


@rule("Softmax")
def softmax(g, node, dy):
    y, axis = node.outputs[0], node.attr("axis", -1)
    inner = g.op("ReduceSum", g.op("Mul", dy, y), g.ints([axis]), keepdims=1)
    return [g.op("Mul", y, g.op("Sub", dy, inner))]


@rule("LogSoftmax")
def log_softmax(g, node, dy):
    y, axis = node.outputs[0], node.attr("axis", -1)
    total = g.op("ReduceSum", dy, g.ints([axis]), keepdims=1)
    return [g.op("Sub", dy, g.op("Mul", g.op("Exp", y), total))]
