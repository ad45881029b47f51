"""LRP rules of linear layers (Conv, ConvTranspose, Gemm, MatMul with one operand on the path), as
Zennit defines them (zennit.rules, version 0.5). With x the layer's input, W, b its weights and bias, R the
relevance at its output, stab(z) = z + eps * (1 if z >= 0 else -1) and back(s, V) the chain
rule's input gradient of the layer with weights V applied to s (for a Conv a transposed
convolution), x+ = max(x, 0), x- = min(x, 0), and likewise W+, W-, b+, b-:

    Epsilon    R_in = x * back(R / stab(conv(x, W) + b), W)                  eps = 1e-6 here
    ZPlus      z = conv(x+, W+) + b+ + conv(x-, W-)
               R_in = x+ * back(R / stab(z), W+) + x- * back(R / stab(z), W-)
    AlphaBeta  z+ = conv(x+, W+) + b+ + conv(x-, W-),  z- = conv(x+, W-) + b- + conv(x-, W+)
               R_in = a (x+ back(R/stab(z+), W+) + x- back(R/stab(z+), W-))
                    - b (x+ back(R/stab(z-), W-) + x- back(R/stab(z-), W+))
    Gamma      W1 = W + g W+, W2 = W + g W- (biases alike); y = conv(x, W) + b
               z+ = conv(x+, W1) + b1 + conv(x-, W2),  z- = conv(x+, W2) + b2 + conv(x-, W1)
               s+ = [y > 0] R / stab(z+),  s- = [y < 0] R / stab(z-)
               R_in = x+ (back(s+, W1) + back(s-, W2)) + x- (back(s+, W2) + back(s-, W1))
    Flat       R_in = back(R / stab(conv(1, 1)), 1)            (all-ones input and weights, no bias)
    WSquare    R_in = back(R / stab(conv(1, W^2) + b^2), W^2)
    ZBox       z = conv(x, W) + b - conv(L, W+) - b+ - conv(H, W-) - b-
               R_in = x back(R/stab(z), W) - L back(R/stab(z), W+) - H back(R/stab(z), W-)

for stabilizers eps = 1e-6 (Zennit's default everywhere). Weights that are constants are modified
in numpy; weights computed at run time, with ops."""
from __future__ import annotations

import numpy as np
from onnx import helper

from ...graph import Node
from ..rules import RULES

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CONVOLUTIONS = ("Conv", "ConvTranspose")  # Zennit's Convolution: its transposed ones too
EPSILON = 1e-6


def stabilize(g, z, eps=EPSILON):
    """z + eps * sign(z), with sign(0) = +1 (Zennit's stabilizer)."""
    return g.op("Add", z, g.op("Where", g.op("GreaterOrEqual", z, g.const(0.0)), g.const(eps), g.const(-eps)))


def divide(g, r, z, eps=EPSILON):
    return g.op("Div", r, stabilize(g, z, eps))


def positive(g, v):
    return g.op("Relu", v)


def negative(g, v):
    return g.op("Sub", v, g.op("Relu", v))


class Layer:
    """A linear node seen as data (the path operand), weight and bias, with forward passes and
    chain-rule backward passes under modified operands."""

    def __init__(self, g, node: Node):
        self.g, self.node = g, node
        if node.op in CONVOLUTIONS:
            self.data, self.weight, self.bias = 0, 1, (2 if node.input(2) else None)
        else:  # Gemm, MatMul: the operand on the path is the data, the other the weight
            self.data = 0 if g.wants(node.inputs[0]) else 1
            self.weight = 1 - self.data
            self.bias = 2 if node.op == "Gemm" and node.input(2) else None
        self.x = node.inputs[self.data]
        self.y = node.outputs[0]
        self._modified = {}

    # ---- operands
    def param(self, index, how: str):
        """The weight or bias (input `index`) modified by `how`: "same", "pos", "neg", "ones",
        "square", or ("gamma", g, "pos" | "neg") for W + g W+/-. None where there is no bias."""
        if index is None:
            return None
        key = (index, how)
        if key in self._modified:
            return self._modified[key]
        g, name = self.g, self.node.inputs[index]
        if how == "same":
            return name
        value = g.constants.get(name)
        if value is not None:
            value = np.asarray(value)
            if how == "pos":
                out = np.maximum(value, 0)
            elif how == "neg":
                out = np.minimum(value, 0)
            elif how == "ones":
                out = np.ones_like(value)
            elif how == "square":
                out = value * value
            else:
                _, gamma, part = how
                out = value + gamma * (np.maximum(value, 0) if part == "pos" else np.minimum(value, 0))
            result = g.const(out.astype(value.dtype), dtype=value.dtype, name=f"{name}_{self._label(how)}")
            g.value_types[result] = helper.make_tensor_type_proto(
                helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
        else:
            if how == "pos":
                result = positive(g, name)
            elif how == "neg":
                result = negative(g, name)
            elif how == "ones":
                result = g.op("Add", g.op("Mul", name, g.const(0.0)), g.const(1.0))
            elif how == "square":
                result = g.op("Mul", name, name)
            else:
                _, gamma, part = how
                part_value = positive(g, name) if part == "pos" else negative(g, name)
                result = g.op("Add", name, g.op("Mul", part_value, g.const(gamma)))
            if g.value_types.get(name) is not None:
                g.value_types[result] = g.value_types[name]
        self._modified[key] = result
        return result

    @staticmethod
    def _label(how):
        return how if isinstance(how, str) else f"gamma_{how[2]}"

    def _node_with(self, data, weight, bias, outputs=None, name=None):
        inputs = list(self.node.inputs)
        inputs[self.data], inputs[self.weight] = data, weight
        if self.bias is not None:
            inputs[self.bias] = bias or ""
        while inputs and not inputs[-1]:
            inputs.pop()
        proto = helper.make_node(self.node.op, inputs, outputs or list(self.node.outputs), name=name or self.node.name)
        proto.attribute.extend(self.node.proto.attribute)
        return Node(proto)

    def forward(self, data, weight_how="same", bias_how=None):
        """The layer's output with modified data, weight and bias (bias_how None: no bias)."""
        weight = self.param(self.weight, weight_how)
        bias = self.param(self.bias, bias_how) if bias_how else None
        out = self.g.fresh(f"{self.y}_lrp_z")
        fake = self._node_with(data, weight, bias, [out], name=self.g.fresh(f"{self.node.name}_lrp"))
        self.g.graph.node.append(fake.proto)
        self.g.value_types[out] = self.g.value_types.get(self.y)
        return out

    def back(self, s, weight_how="same"):
        """The chain rule's input gradient of the layer with modified weights, applied to s."""
        fake = self._node_with(self.x, self.param(self.weight, weight_how), None)
        return RULES[self.node.op](self.g, fake, s)[self.data]

    def result(self, r_in):
        grads = [None] * len(self.node.inputs)
        grads[self.data] = r_in
        return grads


def _ones_like(g, v):
    return g.op("Add", g.op("Mul", v, g.const(0.0)), g.const(1.0))


def epsilon(eps=EPSILON):
    def rule(g, node, r):
        layer = Layer(g, node)
        s = divide(g, r, layer.y, eps)
        return layer.result(g.op("Mul", layer.x, layer.back(s)))
    return rule


def alpha_beta(alpha=1.0, beta=0.0, eps=EPSILON):
    """ZPlus is alpha=1, beta=0 (one denominator, the negative term dropped)."""
    def rule(g, node, r):
        layer = Layer(g, node)
        xp, xn = positive(g, layer.x), negative(g, layer.x)
        z_pos = g.op("Add", layer.forward(xp, "pos", "pos"), layer.forward(xn, "neg"))
        s_pos = divide(g, r, z_pos, eps)
        out = g.op("Add", g.op("Mul", xp, layer.back(s_pos, "pos")), g.op("Mul", xn, layer.back(s_pos, "neg")))
        if beta:
            z_neg = g.op("Add", layer.forward(xp, "neg", "neg"), layer.forward(xn, "pos"))
            s_neg = divide(g, r, z_neg, eps)
            neg = g.op("Add", g.op("Mul", xp, layer.back(s_neg, "neg")), g.op("Mul", xn, layer.back(s_neg, "pos")))
            out = g.op("Sub", g.op("Mul", out, g.const(alpha)), g.op("Mul", neg, g.const(beta)))
        elif alpha != 1.0:
            out = g.op("Mul", out, g.const(alpha))
        return layer.result(out)
    return rule


def gamma(value=0.25, eps=EPSILON):
    def rule(g, node, r):
        layer = Layer(g, node)
        w1, w2 = ("gamma", value, "pos"), ("gamma", value, "neg")
        xp, xn = positive(g, layer.x), negative(g, layer.x)
        z_pos = g.op("Add", layer.forward(xp, w1, w1), layer.forward(xn, w2))
        z_neg = g.op("Add", layer.forward(xp, w2, w2), layer.forward(xn, w1))
        y = layer.y
        s_pos = g.op("Mul", divide(g, r, z_pos, eps), g.op("Cast", g.op("Greater", y, g.const(0.0)), to=g.float_type))
        s_neg = g.op("Mul", divide(g, r, z_neg, eps), g.op("Cast", g.op("Less", y, g.const(0.0)), to=g.float_type))
        on_pos = g.op("Add", layer.back(s_pos, w1), layer.back(s_neg, w2))
        on_neg = g.op("Add", layer.back(s_pos, w2), layer.back(s_neg, w1))
        return layer.result(g.op("Add", g.op("Mul", xp, on_pos), g.op("Mul", xn, on_neg)))
    return rule


def flat(eps=EPSILON):
    def rule(g, node, r):
        layer = Layer(g, node)
        z = layer.forward(_ones_like(g, layer.x), "ones")
        return layer.result(layer.back(divide(g, r, z, eps), "ones"))
    return rule


def w_square(eps=EPSILON):
    def rule(g, node, r):
        layer = Layer(g, node)
        z = layer.forward(_ones_like(g, layer.x), "square", "square")
        return layer.result(layer.back(divide(g, r, z, eps), "square"))
    return rule


def z_box(low: str, high: str, eps=EPSILON):
    """`low` and `high`: value names broadcastable to the layer's input (graph inputs)."""
    def rule(g, node, r):
        layer = Layer(g, node)
        shape = g.runtime_shape(layer.x)
        lo = g.op("Expand", low, shape)
        hi = g.op("Expand", high, shape)
        z = g.op("Sub", g.op("Sub", layer.y, layer.forward(lo, "pos", "pos")), layer.forward(hi, "neg", "neg"))
        s = divide(g, r, z, eps)
        out = g.op("Sub", g.op("Sub", g.op("Mul", layer.x, layer.back(s)), g.op("Mul", lo, layer.back(s, "pos"))),
                   g.op("Mul", hi, layer.back(s, "neg")))
        return layer.result(out)
    return rule
