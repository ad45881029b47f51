"""LRP composites as rule sets, after Zennit's (zennit.composites, with its canonizers: BatchNorm
merged into the layer before it, residual sums as Sum modules):

    composite                       first linear layer   Conv, ConvT      Gemm / MatMul
    lrp_epsilon_plus_flat           Flat                 ZPlus            Epsilon
    lrp_epsilon_gamma_box           ZBox(low, high)      Gamma(0.25)      Epsilon
    lrp_epsilon_alpha2_beta1_flat   Flat                 AlphaBeta(2, 1)  Epsilon

and for every composite (Zennit's layer_map_base, extended to ops a torch module list does not
name): activations, Softmax, LayerNorm, BatchNorm left unfolded, scales and shifts by constants
-> Pass; sums of path values (Add, Sum, Sub, Mean) and average pooling (AveragePool,
GlobalAveragePool, ReduceMean, ReduceSum; CumSum's running sums) -> the proportional (Norm)
split; products of two path values -> half each; everything else (MaxPool, Concat, Split, Slice,
reshapes, Pad, Gather, GatherElements/ND, TopK, Scatter*, ReduceMax/Min, Resize: rows of
weights summing to 1) -> the gradient, which for these ops moves relevance without creating or
losing any.

The first linear layers are the Conv/ConvTranspose/Gemm/MatMul nodes the image reaches without passing another
linear layer (Zennit: the first such module in registration order; here every such node, so a
model whose image feeds two branches gets the first-layer rule on both)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

import gnl_onnx.autodiff.relevance.linear as linear
import gnl_onnx.autodiff.relevance.split as split

from ..gating import OTHER_NONLINEAR_UNITS, PAPER_UNITS
from ..rulesets import Backward, ExtraInput, RuleSet
from ..rulesets import register_rule_set as rule_set

PASS_UNITS = ((PAPER_UNITS - {"MaxPool", "GlobalMaxPool"}) | OTHER_NONLINEAR_UNITS
              | {"Softmax", "LogSoftmax", "LayerNormalization", "BatchNormalization", "LRN",
                 "InstanceNormalization", "Exp", "Log", "Sqrt", "Reciprocal", "Abs", "Neg", "Erf",
                 "Pow", "Cast", "CastLike", "Identity", "Dropout"})
SUMS = {"Add", "Sum", "Sub", "Mean"}
AVERAGES = {"AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "CumSum"}
DEFAULT_BOUNDS = (0.0, 1.0)  # ZBox: the pixel range 0..1 with no mean/std, unless told


def first_layers(builder, path, x, prefix: list | None = None) -> set[str]:
    """Names of the linear nodes the input reaches without passing another linear node; the
    nodes between the input and them are appended to `prefix` when given (graph order)."""
    reached, first = {x}, set()
    for node in path:
        if not any(i in reached for i in node.input):
            continue
        if node.op_type in linear.LINEAR_OPS and _one_path_operand(builder, node):
            first.add(node.name)
        else:
            reached.update(node.output)
            if prefix is not None:
                prefix.append(node)
    return first


def _one_path_operand(builder, node) -> bool:
    operands = node.input[:2]
    return sum(1 for name in operands if builder.wants(name)) == 1


class Composite(RuleSet):
    name = ""
    conv = dense = first = None   # rule factories, set by each composite
    needs_bounds = False

    def __init__(self, bounds=None):
        self.bounds = DEFAULT_BOUNDS if bounds is None else bounds
        self.g = None
        self.firsts: set[str] = set()
        self.low = self.high = None
        self.x, self.prefix, self._ends = None, [], None

    def start(self, builder, path, active, x):
        self.g, self.x, self.prefix, self._ends = builder, x, [], None
        self.firsts = first_layers(builder, path, x, self.prefix)
        if self.needs_bounds:
            self.low, self.high = (builder.fresh(f"{x}_{end}") for end in ("low", "high"))

    @property
    def extra_inputs(self):
        if not self.needs_bounds:
            return ()
        low, high = (np.asarray(b, np.float32) for b in self.bounds)
        return tuple(ExtraInput(name, TensorProto.FLOAT, value.shape, value)
                     for name, value in ((self.low, low), (self.high, high)))

    def backward(self, node):
        g, op = self.g, node.op
        paths = split.on_path(g, node)
        if op in linear.LINEAR_OPS:
            if len(paths) == 1 and paths[0] < 2:
                if node.name in self.firsts:
                    return Backward(self.first_name, self.first_rule(node))
                return Backward(self.conv_name, self.conv()) if op in linear.CONVOLUTIONS else \
                    Backward("epsilon", linear.epsilon())
            if op == "MatMul":
                return Backward("half_product", split.half_product)
            return None
        if op in PASS_UNITS:
            return Backward("pass", split.pass_through)
        if op in SUMS:
            return Backward("norm", split.norm) if len(paths) > 1 else Backward("pass", split.pass_through)
        if op in AVERAGES:
            return Backward("norm", split.norm)
        if op in ("Mul", "Div"):
            if len(paths) == 1:
                return Backward("pass", split.pass_through)
            return Backward("half_product", split.half_product) if op == "Mul" else \
                Backward("numerator", split.numerator)
        return None

    def first_rule(self, node):
        return self.first()

    def bounds_at(self, value: str) -> tuple[str, str]:
        """The bounds, given for the image (broadcastable to it), at `value`, a first layer's input:
        the image filled with each bound goes through the ops between the image and the layer
        (a transpose in NHWC models, a normalization inside the model) and the two results, taken
        elementwise as (min, max), bound that input."""
        g = self.g
        if self._ends is None:
            shape = g.runtime_shape(self.x)
            self._ends = [{self.x: g.op("Expand", b, shape, name=f"{b}_image")} for b in (self.low, self.high)]
            for node in self.prefix:
                for names in self._ends:
                    copy = onnx.NodeProto()
                    copy.CopyFrom(node)
                    copy.name = g.fresh(f"{node.name}_bound")
                    copy.input[:] = [names.get(i, i) for i in node.input]
                    for k, out in enumerate(node.output):
                        if out:
                            names[out] = copy.output[k] = g.fresh(f"{out}_bound")
                    g.graph.node.append(copy)
        low, high = (names[value] for names in self._ends)
        if value == self.x:
            return low, high
        return g.op("Min", low, high), g.op("Max", low, high)


@rule_set("lrp_epsilon_plus_flat")
class EpsilonPlusFlat(Composite):
    name = "lrp_epsilon_plus_flat"
    conv_name, first_name = "zplus", "flat"
    conv = staticmethod(linear.alpha_beta)
    first = staticmethod(linear.flat)


@rule_set("lrp_epsilon_alpha2_beta1_flat")
class EpsilonAlpha2Beta1Flat(Composite):
    name = "lrp_epsilon_alpha2_beta1_flat"
    conv_name, first_name = "alpha2_beta1", "flat"
    conv = staticmethod(lambda: linear.alpha_beta(2.0, 1.0))
    first = staticmethod(linear.flat)


@rule_set("lrp_epsilon_gamma_box")
class EpsilonGammaBox(Composite):
    name = "lrp_epsilon_gamma_box"
    conv_name, first_name = "gamma", "zbox"
    conv = staticmethod(lambda: linear.gamma(0.25))
    needs_bounds = True

    def first_rule(self, node):
        return linear.z_box(*self.bounds_at(linear.Layer(self.g, node).x))
