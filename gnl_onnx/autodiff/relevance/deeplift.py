"""DeepLIFT (Rescale rule) as Captum 0.9 defines it, as a rule set. The batch holds images and
their references (baselines); input `<x>_reference_rows` (int64 [rows]) names each row's
reference row, and v0 = Gather(v, reference_rows) is any value at the reference. Then:

    elementwise non-linear units y = f(x) (Relu, Sigmoid, Tanh, Elu, Softplus, Clip, Gelu, ..., the
    steps Floor, Ceil, Round, Sign, and elementwise ops with one operand on the path and a
    non-linear f):
        multiplier = g * (y - y0) / (x - x0), the plain gradient where |x - x0| < 1e-10
    MaxPool (Captum's maxpool rule): with M = max(y, y0),
        multiplier = (route_x(g (M - y0)) + route_x0(g (y - M))) / (x - x0)
        (route_v: to the elements the window selected at v), the plain gradient where |x - x0| < 1e-10
    Softmax (Captum's softmax rule): the rescaled multiplier minus its mean (per row here; Captum
        takes the mean over the whole batch, which couples the images of one call)
    products of two path values a * b (SE blocks, SiLU written as x * sigmoid(x)): the exact split
        d/da = g (b + b0) / 2, d/db = g (a + a0) / 2 (Captum: the plain gradient, which is not
        complete; with this split the attributions sum to F(x) - F(x0) through such products too)
    everything else (linear ops): the chain rule.

attribution = (x - x0) * multiplier sums to F(x) - F(x0) up to rounding. Captum computes the
MaxPool rule above only where the MaxPool's input is not another hooked module's output; after a
ReLU it loses it (tests/captum_deeplift.py reproduces that, to compare with Captum)."""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from ...graph import FLOAT_TYPES
from ..rules import RULES
from ..rulesets import Backward, ExtraInput, RuleSet
from ..rulesets import register_rule_set as rule_set
from .split import on_path

EPS = 1e-10
UNARY = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "Tanh", "Softplus", "Softsign",
         "HardSigmoid", "HardSwish", "Gelu", "Mish", "ThresholdedRelu", "Clip", "Exp", "Log", "Sqrt",
         "Reciprocal", "Abs", "Erf", "Pow", "Max", "Min",
         "Floor", "Ceil", "Round", "Sign"}  # steps: a zero gradient, but a difference to carry


@rule_set("deeplift")
class DeepLift(RuleSet):
    name = "deeplift"
    rescale_maxpool = True

    def __init__(self, bounds=None):
        self.g = None
        self.rows = None
        self._ref = {}

    def start(self, builder, path, active, x):
        self.g = builder
        self.rows = builder.fresh(f"{x}_reference_rows")
        self._ref = {}

    @property
    def extra_inputs(self):
        return (ExtraInput(self.rows, TensorProto.INT64, ("rows",), None),)

    def ref(self, value):
        """The value at each row's reference."""
        if value not in self._ref:
            self._ref[value] = self.g.op("Gather", value, self.rows, axis=0, name=f"{value}_reference")
        return self._ref[value]

    def backward(self, node):
        g, op = self.g, node.op
        if g.elem_type(node.outputs[0]) not in FLOAT_TYPES | {None}:
            return None  # units on integer codes (a quantized model's MaxPool): the chain rule
        paths = on_path(g, node)
        if op in UNARY and len(paths) == 1:
            i = paths[0]
            if g.shape(node.inputs[i]) is not None and g.shape(node.inputs[i]) == g.shape(node.outputs[0]):
                return Backward("rescale", lambda g, node, dy: self.rescale(g, node, dy, i))
            return None
        if op == "MaxPool" and self.rescale_maxpool:
            return Backward("rescale_maxpool", self.max_pool)
        if op == "GlobalMaxPool" and self.rescale_maxpool:
            return Backward("rescale_maxpool", self.global_max_pool)
        if op == "Softmax":
            return Backward("rescale_softmax", self.softmax)
        if op == "Mul" and len(paths) == 2:
            return Backward("product", self.product)
        return None

    # ---- rules
    def _secant(self, g, x, y, chain, dy, numerator=None):
        """Where(|x - x0| < eps, chain, numerator / (x - x0)), numerator = dy (y - y0) by default."""
        dx = g.op("Sub", x, self.ref(x))
        small = g.op("Less", g.op("Abs", dx), g.const(EPS))
        if numerator is None:
            numerator = g.op("Mul", dy, g.op("Sub", y, self.ref(y)))
        safe = g.op("Where", small, g.const(1.0), dx)
        return g.op("Where", small, chain, g.op("Div", numerator, safe))

    def rescale(self, g, node, dy, i):
        chain = RULES[node.op](g, node, dy)[i]
        if chain is None:  # a step function: where x = x0 its (zero) derivative
            chain = g.op("Mul", dy, g.const(0.0))
        grads = [None] * len(node.inputs)
        grads[i] = self._secant(g, node.inputs[i], node.outputs[0], chain, dy)
        return grads

    def softmax(self, g, node, dy):
        unnorm = self._secant(g, node.inputs[0], node.outputs[0], RULES["Softmax"](g, node, dy)[0], dy)
        rank = g.rank(node.inputs[0])
        mean = g.op("ReduceMean", unnorm, g.ints(list(range(1, rank))), keepdims=1)
        return [g.op("Sub", unnorm, mean)]

    def _deltas(self, g, node, dy):
        y = node.outputs[0]
        y0 = self.ref(y)
        top = g.op("Max", y, y0)
        return g.op("Mul", dy, g.op("Sub", top, y0)), g.op("Mul", dy, g.op("Sub", y, top))

    def max_pool(self, g, node, dy):
        dy = dy[0] if isinstance(dy, list) else dy
        x = node.inputs[0]
        own, other = self._deltas(g, node, dy)
        chain = RULES["MaxPool"](g, node, dy)[0]
        routed_own = RULES["MaxPool"](g, node, own)[0]
        # route through the reference's selection: its indices moved from its row to this row
        indices = g.forward_output(node, 1, f"{node.outputs[0]}_indices")
        shape = g.runtime_shape(x)
        per_row = g.op("ReduceProd", g.op("Slice", shape, g.ints([1]), g.ints([2 ** 62])), keepdims=1)
        rows = g.op("Range", g.ints(0), g.op("Squeeze", g.op("Slice", shape, g.ints([0]), g.ints([1])), g.ints([0])),
                    g.ints(1))
        rank = g.rank(x)
        shift = g.op("Mul", g.op("Sub", rows, self.rows), per_row)
        shift = g.op("Reshape", shift, g.ints([-1] + [1] * (rank - 1)))
        moved = g.op("Add", self.ref(indices), shift)
        total = g.op("Reshape", g.op("Size", x), g.ints([1]))
        zeros = g.op("ConstantOfShape", total, value=_zero(g))
        flat = g.ints([-1])
        routed_other = g.op("ScatterElements", zeros, g.op("Reshape", moved, flat), g.op("Reshape", other, flat),
                            axis=0, reduction="add")
        numerator = g.op("Add", routed_own, g.reshape_like(routed_other, x))
        return [self._secant(g, x, None, chain, dy, numerator)]

    def global_max_pool(self, g, node, dy):
        x, y = node.inputs[0], node.outputs[0]
        own, other = self._deltas(g, node, dy)
        chain = RULES["GlobalMaxPool"](g, node, dy)[0]
        spatial = g.ints(list(range(2, g.rank(x))))

        def shared_among_maxima(values, pooled, part):
            # every position equal to the max gets an equal share: a flat map (a zero baseline)
            # ties everywhere, and each tied position taking all of it broke completeness
            hit = g.op("Cast", g.op("Equal", values, pooled), to=g.float_type)
            return g.op("Div", g.op("Mul", hit, part), g.op("ReduceSum", hit, spatial, keepdims=1))

        at_x = shared_among_maxima(x, y, own)
        at_x0 = shared_among_maxima(self.ref(x), self.ref(y), other)
        return [self._secant(g, x, None, chain, dy, g.op("Add", at_x, at_x0))]

    def product(self, g, node, dy):
        a, b = node.inputs
        y = node.outputs[0]
        half = g.const(0.5)
        mean_a = g.op("Mul", g.op("Add", a, self.ref(a)), half)
        mean_b = g.op("Mul", g.op("Add", b, self.ref(b)), half)
        return [g.unbroadcast(g.op("Mul", dy, mean_b), a, y), g.unbroadcast(g.op("Mul", dy, mean_a), b, y)]


def _zero(g):
    return numpy_helper.from_array(np.zeros(1, g.np_float))
