"""Every gradient rule against central finite differences, on hand-built one- or two-node graphs.

For each case: a float64 graph X -> op(s) -> Y (other operands are initializers, or extra graph
inputs fed as constants); vjp_model(rule="plain") gives sum(seed * dY/dX), which must match central
finite differences of L(x) = sum(seed * F(x)) taken element by element of X (the tensors are tiny, so
the whole gradient is checked, not a projection of it).

Tolerances (float64, eps = 1e-6): truncation error ~ eps^2 |L'''| ~ 1e-12 and rounding error
~ 1e-16 |L| / eps ~ 1e-10 |L|, so 1e-6 relative to max |gradient| leaves a wide margin for correct
rules while a wrong rule (a missing term, a wrong divisor, a transposed kernel) is off by O(1).
Inputs stay away from kinks (Relu/Clip/MaxPool/HardSigmoid/...) by far more than eps.

The same VJP built from the float32 model must run in onnxruntime CPU (the engine's target) and agree
with the float64 finite differences to float32 accuracy.
"""
from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_builders import (Runner, away_from, distinct_values, fd_gradient, make_model, max_rel_err,
                           ort_session)

import gnl_onnx
from gnl_onnx.errors import UnsupportedModelError

EPS64 = 1e-6
RTOL64 = 1e-6
# float32 VJP vs float64 truth: a handful of float32 roundings (~6e-8 each) in forward and backward;
# the largest error measured over all cases was 5e-7 (Div, Softmax), so 2e-5 leaves a 40x margin.
RTOL32 = 2e-5


def node(op, inputs, outputs=("Y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def i64(*v):
    return np.array(v, dtype=np.int64)


@dataclass
class Case:
    id: str
    nodes: list | Callable[[int], list]     # list of NodeProto, or elem type -> list (for Cast)
    x: Callable[[np.random.Generator], np.ndarray]
    inits: dict = field(default_factory=dict)  # float arrays are cast to the model's dtype
    extra: dict = field(default_factory=dict)  # extra float graph inputs, fed as constants
    opset: int = 18
    eps: float = EPS64
    rtol: float = RTOL64
    marks: tuple = ()
    ort32: str = ""  # non-empty: why the float32 onnxruntime check cannot run for this case

    def build(self, dtype) -> onnx.ModelProto:
        elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
        nodes = self.nodes(elem) if callable(self.nodes) else self.nodes
        inits = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in self.inits.items()}
        x = self.x_value(dtype)
        inputs = [("X", dtype, list(x.shape))] + [(k, dtype, list(v.shape)) for k, v in self.extra.items()]
        draft = make_model(nodes, inputs, [("Y", dtype, None)], inits, opset=self.opset, check=False)
        y = Runner(draft)(self.feeds(x, dtype))[0]
        return make_model(nodes, inputs, [("Y", dtype, list(y.shape))], inits, opset=self.opset)

    def x_value(self, dtype):
        return self.x(np.random.default_rng(zlib.crc32(self.id.encode()))).astype(dtype)

    def feeds(self, x, dtype):
        return {"X": x, **{k: v.astype(dtype) for k, v in self.extra.items()}}


_W = np.random.default_rng(20240611)  # weights; drawn once at import, in case order


def normal(*shape):
    return lambda rng: rng.normal(size=shape)


def positive(*shape, low=0.5, high=2.0):
    return lambda rng: rng.uniform(low, high, size=shape)


def distinct(*shape):
    return lambda rng: distinct_values(rng, shape)


def away(*shape, points=(0.0,), margin=0.05, low=-2.0, high=2.0):
    return lambda rng: away_from(rng, shape, points, margin, low, high)


def w(*shape):
    return _W.normal(size=shape)


def wpos(*shape, low=0.5, high=2.0):
    return _W.uniform(low, high, size=shape)


CASES: list[Case] = []


def case(id, nodes, x, inits=None, **kw):
    CASES.append(Case(id, nodes, x, inits or {}, **kw))


# ---------------------------------------------------------------- Conv
def conv(id, xshape, wshape, bias=True, extra_w=False, **attrs):
    wt = w(*wshape)
    ins = ["X", "W"]
    inits = {} if extra_w else {"W": wt}
    if bias:
        inits["B"] = w(wshape[0])
        ins.append("B")
    case(id, [node("Conv", ins, **attrs)], normal(*xshape), inits,
         extra={"W": wt} if extra_w else {})


conv("conv_s1_p1", (2, 2, 5, 5), (3, 2, 3, 3), pads=[1, 1, 1, 1], kernel_shape=[3, 3])
conv("conv_s2_p1_floor", (1, 2, 6, 7), (3, 2, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1])
conv("conv_s3_drops_rows", (1, 2, 7, 8), (2, 2, 2, 3), strides=[3, 3])
conv("conv_dil2", (1, 2, 6, 6), (2, 2, 3, 3), dilations=[2, 2], pads=[2, 2, 2, 2])
conv("conv_s2_dil2", (1, 2, 7, 7), (2, 2, 3, 3), strides=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1])
conv("conv_grouped", (1, 4, 5, 5), (6, 2, 3, 3), group=2, pads=[1, 1, 1, 1])
conv("conv_depthwise_s2", (1, 3, 5, 5), (3, 1, 3, 3), group=3, strides=[2, 2], pads=[1, 1, 1, 1])
conv("conv_depthwise_mult2", (1, 3, 4, 4), (6, 1, 3, 3), group=3)
conv("conv_asym_pads", (1, 2, 5, 4), (3, 2, 2, 3), pads=[0, 1, 2, 0])
conv("conv_same_upper_s2_k2", (1, 2, 5, 5), (2, 2, 2, 2), strides=[2, 2], auto_pad="SAME_UPPER")
conv("conv_same_upper_s1_k3", (1, 2, 4, 5), (2, 2, 3, 3), auto_pad="SAME_UPPER")
conv("conv_same_lower_s2_k2", (1, 2, 5, 5), (2, 2, 2, 2), strides=[2, 2], auto_pad="SAME_LOWER")
conv("conv_same_lower_s1_k4", (1, 2, 5, 5), (2, 2, 4, 4), auto_pad="SAME_LOWER")
conv("conv_valid_s2", (1, 2, 6, 6), (2, 2, 3, 3), strides=[2, 2], auto_pad="VALID")
conv("conv1d_s2_asym", (2, 2, 7), (3, 2, 3), strides=[2], pads=[1, 0])
conv("conv_no_bias", (1, 2, 4, 4), (2, 2, 3, 3), bias=False)
conv("conv_1x1", (2, 3, 2, 3), (4, 3, 1, 1))
conv("conv_w_graph_input", (1, 2, 4, 4), (3, 2, 3, 3), extra_w=True, pads=[1, 1, 1, 1])

# ---------------------------------------------------------------- activations with kinks
case("relu", [node("Relu", ["X"])], away(2, 3, 4))
_lo, _hi = np.array(-0.5), np.array(0.7)
_clip_x = away(2, 3, 4, points=(-0.5, 0.7), low=-1.5, high=1.5)
case("clip_inputs_op13", [node("Clip", ["X", "lo", "hi"])], _clip_x, {"lo": _lo, "hi": _hi}, opset=13)
case("clip_inputs_op11", [node("Clip", ["X", "lo", "hi"])], _clip_x, {"lo": _lo, "hi": _hi}, opset=11)
case("clip_min_only", [node("Clip", ["X", "lo"])], _clip_x, {"lo": _lo})
case("clip_max_only", [node("Clip", ["X", "", "hi"])], _clip_x, {"hi": _hi})
case("clip_attrs_op9", [node("Clip", ["X"], min=-0.5, max=0.7)], _clip_x, opset=9)
case("leaky_relu", [node("LeakyRelu", ["X"], alpha=0.1)], away(2, 3, 4))
case("prelu_per_channel", [node("PRelu", ["X", "S"])], away(2, 3, 2, 3), {"S": wpos(3, 1, 1, low=0.05, high=0.5)})
case("prelu_scalar_slope", [node("PRelu", ["X", "S"])], away(2, 3), {"S": np.array([0.2])})

# ---------------------------------------------------------------- pooling
case("maxpool_3x3_s2_overlap", [node("MaxPool", ["X"], kernel_shape=[3, 3], strides=[2, 2])], distinct(1, 2, 7, 7))
case("maxpool_3x3_s2_pads", [node("MaxPool", ["X"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
     distinct(1, 2, 6, 6))
case("maxpool_ceil", [node("MaxPool", ["X"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)], distinct(1, 1, 6, 6))
case("maxpool_dil2", [node("MaxPool", ["X"], kernel_shape=[2, 2], dilations=[2, 2])], distinct(1, 2, 6, 6))
case("maxpool_k2s2_batch2", [node("MaxPool", ["X"], kernel_shape=[2, 2], strides=[2, 2])], distinct(2, 2, 4, 4))
case("maxpool_same_upper", [node("MaxPool", ["X"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")],
     distinct(1, 2, 6, 6))
case("maxpool_1d", [node("MaxPool", ["X"], kernel_shape=[3], strides=[2])], distinct(1, 2, 9))
case("maxpool_indices_unused", [node("MaxPool", ["X"], ["Y", "I"], kernel_shape=[3, 3], strides=[2, 2])],
     distinct(1, 2, 5, 5))
case("avgpool_cip0_pads", [node("AveragePool", ["X"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
     normal(1, 2, 5, 5))
case("avgpool_cip1_pads", [node("AveragePool", ["X"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                count_include_pad=1)], normal(1, 2, 5, 5))
case("avgpool_asym_pads_cip1", [node("AveragePool", ["X"], kernel_shape=[2, 3], pads=[1, 0, 0, 2],
                                     count_include_pad=1)], normal(1, 2, 4, 4))
case("avgpool_ceil", [node("AveragePool", ["X"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)],
     normal(1, 2, 6, 6))
case("avgpool_k2s2_batch2", [node("AveragePool", ["X"], kernel_shape=[2, 2], strides=[2, 2])], normal(2, 2, 4, 4))
case("global_avgpool", [node("GlobalAveragePool", ["X"])], normal(2, 3, 3, 4))

# ---------------------------------------------------------------- Gemm / MatMul
case("gemm", [node("Gemm", ["X", "B", "C"])], normal(2, 3), {"B": w(3, 4), "C": w(4)})
case("gemm_transA", [node("Gemm", ["X", "B", "C"], transA=1)], normal(3, 2), {"B": w(3, 4), "C": w(4)})
case("gemm_transB_alpha_beta", [node("Gemm", ["X", "B", "C"], transB=1, alpha=0.7, beta=1.3)], normal(2, 3),
     {"B": w(4, 3), "C": w(2, 4)})
case("gemm_transA_transB", [node("Gemm", ["X", "B", "C"], transA=1, transB=1, alpha=2.0, beta=0.5)], normal(3, 2),
     {"B": w(4, 3), "C": w(1, 4)})
case("gemm_no_C", [node("Gemm", ["X", "B"])], normal(2, 3), {"B": w(3, 4)})
case("gemm_x_as_B_transB", [node("Gemm", ["A", "X", "C"], transB=1, alpha=1.5)], normal(4, 3),
     {"A": w(2, 3), "C": w(4)})
case("matmul_2d", [node("MatMul", ["X", "W"])], normal(2, 3), {"W": w(3, 4)})
case("matmul_batched_bcast", [node("MatMul", ["X", "W"])], normal(2, 1, 3, 4), {"W": w(3, 4, 5)})
case("matmul_x_right_bcast", [node("MatMul", ["A", "X"])], normal(4, 2), {"A": w(2, 3, 4)})
case("matmul_vec_left", [node("MatMul", ["X", "W"])], normal(4), {"W": w(4, 3)})
case("matmul_vec_right", [node("MatMul", ["W", "X"])], normal(4), {"W": w(2, 3, 4)})

# ---------------------------------------------------------------- elementwise, broadcasting
case("add_bcast", [node("Add", ["X", "B"])], normal(2, 3, 4), {"B": w(3, 1)})
case("add_x_is_small", [node("Add", ["X", "B"])], normal(3, 1), {"B": w(2, 3, 4)})
case("add_scalar", [node("Add", ["B", "X"])], normal(2, 3), {"B": np.array(0.3)})
case("sub_x_right_both_bcast", [node("Sub", ["B", "X"])], normal(2, 1, 4), {"B": w(1, 3, 1)})
case("sub_x_left", [node("Sub", ["X", "B"])], normal(2, 3), {"B": w(3)})
case("mul_bcast", [node("Mul", ["X", "B"])], normal(2, 3, 4), {"B": w(4)})
case("mul_x_right_small", [node("Mul", ["B", "X"])], normal(3, 1), {"B": w(2, 3, 4)})
case("div_x_left", [node("Div", ["X", "B"])], normal(2, 3, 4), {"B": wpos(3, 1)})
case("div_x_right", [node("Div", ["B", "X"])], positive(3, 1), {"B": w(2, 3, 4)})
case("add_x_x", [node("Add", ["X", "X"])], normal(2, 3))
case("mul_x_x", [node("Mul", ["X", "X"])], normal(2, 3))
case("sub_x_x_zero_grad", [node("Sub", ["X", "X"])], normal(2, 3))
case("div_x_by_f_of_x", [node("Add", ["X", "c"], ["T"]), node("Div", ["X", "T"])], positive(2, 3),
     {"c": np.array(3.0)})
case("mul_b_graph_input", [node("Mul", ["X", "B"])], normal(2, 3), extra={"B": w(2, 3)})
case("sum_variadic_bcast", [node("Sum", ["X", "B", "X"])], normal(2, 3), {"B": w(3)})
case("sum_single", [node("Sum", ["X"])], normal(2, 3))

# ---------------------------------------------------------------- shape ops
case("concat_axis1", [node("Concat", ["X", "B"], axis=1)], normal(2, 3, 2), {"B": w(2, 2, 2)})
case("concat_x_x_neg_axis", [node("Concat", ["B", "X", "X"], axis=-1)], normal(2, 3), {"B": w(2, 1)})
case("split_equal_mul", [node("Split", ["X"], ["a", "b"], axis=1, num_outputs=2), node("Mul", ["a", "b"])],
     normal(2, 4, 3))
case("split_sizes_second_only", [node("Split", ["X", "s"], ["u", "Y"], axis=1)], normal(2, 4, 3),
     {"s": i64(1, 3)})
case("split_op13_three", [node("Split", ["X", "s"], ["a", "b", "c"], axis=-1), node("Sum", ["a", "c"], ["t"]),
                          node("Mul", ["t", "b"])], normal(2, 6), {"s": i64(2, 2, 2)}, opset=13)
case("slice_neg_starts_ends", [node("Slice", ["X", "st", "en", "ax"])], normal(2, 3, 5),
     {"st": i64(-3), "en": i64(-1), "ax": i64(-1)})
case("slice_axes_steps", [node("Slice", ["X", "st", "en", "ax", "sp"])], normal(2, 3, 5),
     {"st": i64(0, 1), "en": i64(2, 100), "ax": i64(1, 2), "sp": i64(2, 2)})
case("slice_reverse", [node("Slice", ["X", "st", "en", "ax", "sp"])], normal(2, 3, 5),
     {"st": i64(-1), "en": i64(-(2**62)), "ax": i64(2), "sp": i64(-1)})
case("slice_neg_axis_neg_step", [node("Slice", ["X", "st", "en", "ax", "sp"])], normal(2, 4, 3),
     {"st": i64(3), "en": i64(0), "ax": i64(-2), "sp": i64(-2)})
case("slice_no_axes", [node("Slice", ["X", "st", "en"])], normal(3, 4), {"st": i64(1, -3), "en": i64(3, -1)})
case("pad_constant", [node("Pad", ["X", "p", "v"])], normal(1, 2, 3, 3),
     {"p": i64(0, 0, 1, 2, 0, 0, 2, 1), "v": np.array(0.5)})
case("pad_negative_crops", [node("Pad", ["X", "p"])], normal(1, 2, 4, 4), {"p": i64(0, 0, -1, 1, 0, 0, 1, -2)})
case("pad_axes_op18", [node("Pad", ["X", "p", "", "ax"])], normal(2, 3), {"p": i64(1, 2), "ax": i64(-1)})
case("transpose_perm", [node("Transpose", ["X"], perm=[2, 0, 1])], normal(2, 3, 4))
case("transpose_default", [node("Transpose", ["X"])], normal(2, 3, 4))
case("reshape_minus1", [node("Reshape", ["X", "s"])], normal(2, 3, 2), {"s": i64(3, -1)})
case("reshape_zero_copies", [node("Reshape", ["X", "s"])], normal(2, 3, 2), {"s": i64(0, -1)})
case("flatten_axis2", [node("Flatten", ["X"], axis=2)], normal(2, 3, 2, 2))
case("flatten_axis0", [node("Flatten", ["X"], axis=0)], normal(2, 3, 2))
case("squeeze_axes", [node("Squeeze", ["X", "a"])], normal(2, 1, 3), {"a": i64(1)})
case("squeeze_all", [node("Squeeze", ["X"])], normal(1, 3, 1, 2))
case("unsqueeze", [node("Unsqueeze", ["X", "a"])], normal(2, 3), {"a": i64(0, 3)})
case("expand", [node("Expand", ["X", "s"])], normal(3, 1), {"s": i64(2, 3, 4)})
case("expand_lower_rank_shape", [node("Expand", ["X", "s"])], normal(2, 3, 1), {"s": i64(3, 1)})
case("identity", [node("Identity", ["X"])], normal(2, 3))
case("dropout_inference", [node("Dropout", ["X"], ratio=0.5)], normal(2, 3), opset=11)

# ---------------------------------------------------------------- reductions
case("reducemean_keepdims", [node("ReduceMean", ["X", "a"], keepdims=1)], normal(2, 3, 4), {"a": i64(1)})
case("reducemean_neg_axis_nokeep", [node("ReduceMean", ["X", "a"], keepdims=0)], normal(2, 3, 4), {"a": i64(-1)})
case("reducemean_all", [node("ReduceMean", ["X"], keepdims=0)], normal(2, 3, 4))
case("reducemean_attr_op13", [node("ReduceMean", ["X"], axes=[2, 3])], normal(2, 3, 2, 2), opset=13)
case("reducesum_two_axes", [node("ReduceSum", ["X", "a"], keepdims=0)], normal(2, 3, 4), {"a": i64(0, 2)})
case("reducesum_all_keep", [node("ReduceSum", ["X"])], normal(2, 3))

# ---------------------------------------------------------------- softmax family
case("softmax_last", [node("Softmax", ["X"], axis=-1)], normal(2, 3, 4))
case("softmax_axis1", [node("Softmax", ["X"], axis=1)], normal(2, 3, 4))
case("softmax_op11_flattens", [node("Softmax", ["X"], axis=1)], normal(2, 3, 4), opset=11)
case("logsoftmax_axis1", [node("LogSoftmax", ["X"], axis=1)], normal(2, 3, 4))
case("logsoftmax_op11_default", [node("LogSoftmax", ["X"])], normal(2, 3, 4), opset=11)

# ---------------------------------------------------------------- smooth unary
case("sigmoid", [node("Sigmoid", ["X"])], normal(2, 3, 4))
case("tanh", [node("Tanh", ["X"])], normal(2, 3, 4))
# HardSigmoid kinks where alpha*x+beta hits 0 or 1; HardSwish at -3 and 3.
case("hardsigmoid", [node("HardSigmoid", ["X"], alpha=0.3, beta=0.4)],
     away(3, 5, points=(-0.4 / 0.3, 0.6 / 0.3), low=-3, high=3))
case("hardswish", [node("HardSwish", ["X"])], away(3, 5, points=(-3.0, 3.0), low=-4.5, high=4.5))
case("erf", [node("Erf", ["X"])], normal(2, 3, 4))
case("softplus", [node("Softplus", ["X"])], normal(2, 3, 4))
case("elu", [node("Elu", ["X"], alpha=0.8)], away(2, 3, 4))
case("exp", [node("Exp", ["X"])], normal(2, 3, 4))
case("log", [node("Log", ["X"])], positive(2, 3, 4))
case("sqrt", [node("Sqrt", ["X"])], positive(2, 3, 4))
case("pow_3", [node("Pow", ["X", "e"])], normal(2, 3), {"e": np.array(3.0)})
case("pow_half", [node("Pow", ["X", "e"])], positive(2, 3), {"e": np.array(0.5)})
case("pow_neg_exponent", [node("Pow", ["X", "e"])], positive(2, 3), {"e": np.array(-1.5)})
case("neg", [node("Neg", ["X"])], normal(2, 3))

# ---------------------------------------------------------------- normalisation
case("lrn_size3", [node("LRN", ["X"], size=3, alpha=0.5, beta=0.75, bias=1.0)], normal(1, 5, 2, 2))
case("lrn_size2_even", [node("LRN", ["X"], size=2, alpha=0.3, beta=0.6, bias=2.0)], normal(2, 4, 2, 1),
     ort32="onnxruntime's LRN kernel rejects an even size (size_ % 2 == 1), which the spec allows")
case("layernorm_last_axis", [node("LayerNormalization", ["X", "g", "b"], axis=-1, epsilon=1e-5)], normal(2, 3, 5),
     {"g": w(5), "b": w(5)})
case("layernorm_last_axis_no_bias", [node("LayerNormalization", ["X", "g"], axis=-1)], normal(3, 4), {"g": w(4)})
_bn = {"s": w(3), "bb": w(3), "mu": w(3), "var": wpos(3)}
case("batchnorm_alone", [node("BatchNormalization", ["X", "s", "bb", "mu", "var"], epsilon=1e-3)],
     normal(2, 3, 2, 2), _bn)
case("batchnorm_after_conv", [node("Conv", ["X", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
                              node("BatchNormalization", ["c", "s", "bb", "mu", "var"], epsilon=1e-3)],
     normal(1, 2, 4, 4), {"W": w(3, 2, 3, 3), "B": w(3), **_bn})
case("batchnorm_after_conv_no_bias", [node("Conv", ["X", "W"], ["c"], strides=[2, 2]),
                                      node("BatchNormalization", ["c", "s", "bb", "mu", "var"])],
     normal(1, 2, 5, 5), {"W": w(3, 2, 3, 3), **_bn})
case("batchnorm_op9", [node("BatchNormalization", ["X", "s", "bb", "mu", "var"], epsilon=1e-3)],
     normal(2, 3, 2, 2), _bn, opset=9)

# ---------------------------------------------------------------- Cast
case("cast_same_type", lambda elem: [node("Cast", ["X"], to=elem)], normal(2, 3))
case("castlike_same_type", lambda elem: [node("CastLike", ["X", "X"])], normal(2, 3))
# Ops in the brief's list the engine does not differentiate yet: filled in from the engine's answers
# (strict xfail, so the day a rule lands the marker must go).
NO_RULE_YET: set[str] = set()


def _params():
    out = []
    for c in CASES:
        marks = list(c.marks)
        if c.id in NO_RULE_YET:
            marks.append(pytest.mark.xfail(raises=UnsupportedModelError, strict=True,
                                           reason="engine: no rule yet"))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def _vjp(model, **kw):
    extra_inputs = [i.name for i in model.graph.input if i.name != "X"]
    if extra_inputs:
        kw.setdefault("input", "X")
    return gnl_onnx.vjp_model(model, **kw)


@functools.lru_cache(maxsize=None)
def _truth(case_id: str):
    """(x, seed, y, finite-difference gradient) in float64 for one case, computed once."""
    c = next(c for c in CASES if c.id == case_id)
    model = c.build(np.float64)
    run = Runner(model)
    x = c.x_value(np.float64)
    feeds = c.feeds(x, np.float64)
    y = run(feeds)[0]
    seed = np.random.default_rng(7).normal(size=y.shape)
    g_fd = fd_gradient(lambda xx: run({**feeds, "X": xx})[0], x, seed, c.eps)
    return model, x, seed, y, g_fd


def _run_vjp(vjp, feeds, seed, allow_reference=True):
    run = Runner(vjp, allow_reference=allow_reference)
    y, g = run({**feeds, "Y_grad": seed}, ["Y", "X_grad"])
    return y, g, run.backend


@pytest.mark.parametrize("c", _params())
def test_plain_vjp_matches_finite_differences_float64(c: Case):
    model, x, seed, y, g_fd = _truth(c.id)
    vjp = _vjp(model, rule="plain")
    y_v, g, backend = _run_vjp(vjp, c.feeds(x, np.float64), seed)
    assert g.dtype == np.float64 and g.shape == x.shape
    np.testing.assert_allclose(y_v, y, rtol=1e-12, atol=1e-12)
    err = max_rel_err(g, g_fd)
    scale = float(np.max(np.abs(g_fd)))
    # A zero gradient (Sub(X, X)) is checked in absolute terms.
    assert err <= (c.rtol if scale > 0 else 1e-9), (
        f"{c.id} [{backend}]: max rel err {err:.3g}\nvjp=\n{g}\nfd=\n{g_fd}")


@pytest.mark.parametrize("c", _params())
def test_plain_vjp_float32_runs_in_onnxruntime(c: Case):
    if c.ort32:
        pytest.skip(c.ort32)
    _, x64, seed, y64, g_fd = _truth(c.id)
    model = c.build(np.float32)
    vjp = _vjp(model, rule="plain")
    # No reference fallback: the float32 VJP must run on onnxruntime CPU as it is.
    sess = ort_session(vjp)
    feeds = {**c.feeds(x64.astype(np.float32), np.float32), "Y_grad": seed.astype(np.float32)}
    y, g = sess.run(["Y", "X_grad"], feeds)
    assert g.dtype == np.float32 and g.shape == x64.shape
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-6)
    tol = max(RTOL32, c.rtol)
    err = max_rel_err(g, g_fd)
    assert err <= (tol if np.max(np.abs(g_fd)) > 0 else 1e-6), f"{c.id}: max rel err {err:.3g}"


# ---------------------------------------------------------------- harness self-checks
def test_harness_accepts_a_correct_gradient_and_rejects_a_wrong_one():
    """The FD harness itself, with hand-written VJP graphs (no engine): d(x^2 * b) = 2 x b seed."""
    rng = np.random.default_rng(0)
    b = rng.normal(size=(2, 3))
    fwd = make_model([node("Mul", ["X", "X"], ["t"]), node("Mul", ["t", "B"])],
                     [("X", np.float64, [2, 3])], [("Y", np.float64, [2, 3])], {"B": b})
    run = Runner(fwd)
    x = rng.normal(size=(2, 3))
    seed = rng.normal(size=(2, 3))
    g_fd = fd_gradient(lambda xx: run({"X": xx})[0], x, seed, EPS64)
    good = 2 * x * b * seed
    wrong = x * b * seed  # forgets the factor 2 of the square
    assert max_rel_err(good, g_fd) < 1e-9
    assert max_rel_err(wrong, g_fd) > 0.4


def test_harness_runs_float64_conv_on_reference_and_matches_numpy():
    """ORT CPU has no float64 Conv: the runner must fall back to the reference evaluator, and that
    evaluator's Conv must agree with a direct numpy correlation."""
    rng = np.random.default_rng(1)
    wt = rng.normal(size=(2, 1, 2, 2))
    m = make_model([node("Conv", ["X", "W"])], [("X", np.float64, [1, 1, 3, 3])],
                   [("Y", np.float64, [1, 2, 2, 2])], {"W": wt})
    run = Runner(m)
    assert run.backend == "reference"
    x = rng.normal(size=(1, 1, 3, 3))
    want = np.array([[[[np.sum(x[0, 0, i:i + 2, j:j + 2] * wt[o, 0]) for j in range(2)] for i in range(2)]
                      for o in range(2)]])
    np.testing.assert_allclose(run({"X": x})[0], want, rtol=1e-12)


def test_reference_lrn_fix_matches_onnxruntime():
    """Our LRN replacement for the reference evaluator agrees with onnxruntime's float32 kernel on
    N != C (where onnx's own reference LRN is wrong)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 2, 3))
    m = make_model([node("LRN", ["X"], size=3, alpha=0.5, beta=0.75, bias=1.0)],
                   [("X", np.float64, list(x.shape))], [("Y", np.float64, list(x.shape))])
    m32 = make_model(list(m.graph.node), [("X", np.float32, list(x.shape))], [("Y", np.float32, list(x.shape))])
    got = Runner(m)({"X": x})[0]
    want = ort_session(m32).run(None, {"X": x.astype(np.float32)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_reference_erf_fix_keeps_float64():
    x = np.array([0.3, -1.1, 2.0])
    m = make_model([node("Erf", ["X"])], [("X", np.float64, [3])], [("Y", np.float64, [3])])
    run = Runner(m)
    got = run({"X": x})[0]
    assert run.backend == "reference" and got.dtype == np.float64
    np.testing.assert_allclose(got, [math.erf(v) for v in x], rtol=1e-15)


def test_kink_margins_are_far_larger_than_the_fd_step():
    """Inputs drawn for kinked ops stay >= 0.05 from each kink and MaxPool inputs have no near-ties,
    so every +-eps step stays on one smooth piece."""
    rng = np.random.default_rng(2)
    v = away_from(rng, (200,), (0.0, 1.0), 0.05)
    assert np.min(np.abs(v)) >= 0.05 and np.min(np.abs(v - 1.0)) >= 0.05
    d = np.sort(distinct_values(rng, (300,)).ravel())
    assert np.min(np.diff(d)) > 0.05 > 100 * EPS64


# ---------------------------------------------------------------- guided gating on single ops
def _case(case_id: str) -> Case:
    return next(c for c in CASES if c.id == case_id)


@functools.lru_cache(maxsize=None)
def _model32(case_id: str) -> onnx.ModelProto:
    return _case(case_id).build(np.float32)


def _grad(case_id: str, seed: np.ndarray, **kw):
    """Input gradient of one case's VJP for this seed (float32, onnxruntime), and the VJP's report.
    float32 keeps these gating checks independent of float64 support; guided and plain runs share
    their arithmetic, so they are compared at float32 rounding (rtol 1e-6)."""
    c = _case(case_id)
    x = c.x_value(np.float32)
    vjp = _vjp(_model32(case_id), **kw)
    g = _run_vjp(vjp, c.feeds(x, np.float32), seed.astype(np.float32), allow_reference=False)[1]
    return g, gnl_onnx.vjp_report(vjp)


def _mixed_seed(case_id: str) -> np.ndarray:
    seed = _truth(case_id)[2]
    assert (seed > 0).any() and (seed < 0).any()  # the gating must have something to do
    return seed


def _gated_ops(report) -> set[str]:
    return {entry["op"] for entry in report["gated"]}


PAPER_GATED = {"relu": "Relu", "maxpool_3x3_s2_overlap": "MaxPool", "maxpool_3x3_s2_pads": "MaxPool",
               "clip_inputs_op13": "Clip", "clip_attrs_op9": "Clip", "leaky_relu": "LeakyRelu",
               "prelu_per_channel": "PRelu"}
ALL_ONLY_GATED = {"sigmoid": "Sigmoid", "tanh": "Tanh", "hardsigmoid": "HardSigmoid", "hardswish": "HardSwish",
                  "softplus": "Softplus", "elu": "Elu"}
NEVER_GATED = ["conv_s1_p1", "conv_depthwise_s2", "add_bcast", "avgpool_cip1_pads", "gemm", "matmul_2d",
               "global_avgpool", "batchnorm_after_conv", "concat_axis1", "transpose_perm", "reducemean_keepdims"]


@pytest.mark.parametrize("gate", ["paper", "all"])
@pytest.mark.parametrize("case_id", list(PAPER_GATED))
def test_guided_paper_units_pass_only_positive_gradients(case_id, gate):
    seed = _mixed_seed(case_id)
    guided, report = _grad(case_id, seed, rule="guided", gate=gate)
    plain_pos, _ = _grad(case_id, np.maximum(seed, 0), rule="plain")
    plain, plain_report = _grad(case_id, seed, rule="plain")
    np.testing.assert_allclose(guided, plain_pos, rtol=1e-6, atol=1e-7)
    assert not np.allclose(guided, plain)  # the gate changed something
    # Every gated unit here has non-negative slopes: only positive gradient reaches X.
    assert (guided >= 0).all()
    if guided.shape == seed.shape:  # elementwise: a negative seed stops at its own element
        assert (guided[seed < 0] == 0).all()
    assert _gated_ops(report) == {PAPER_GATED[case_id]}
    assert report["rule"] == "guided" and report["gate"] == gate and plain_report["gated"] == []


@pytest.mark.parametrize("case_id", list(ALL_ONLY_GATED))
def test_other_nonlinear_units_are_gated_only_with_gate_all(case_id):
    seed = _mixed_seed(case_id)
    plain, _ = _grad(case_id, seed, rule="plain")
    paper, paper_report = _grad(case_id, seed, rule="guided", gate="paper")
    gated, all_report = _grad(case_id, seed, rule="guided", gate="all")
    plain_pos, _ = _grad(case_id, np.maximum(seed, 0), rule="plain")
    np.testing.assert_allclose(paper, plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gated, plain_pos, rtol=1e-6, atol=1e-7)
    assert not np.allclose(gated, plain)
    assert (gated[seed < 0] == 0).all()
    assert paper_report["gated"] == [] and _gated_ops(all_report) == {ALL_ONLY_GATED[case_id]}


def test_erf_is_not_a_gated_unit_even_with_gate_all():
    """The contract: Erf (the piece of a decomposed GELU) is not a unit, so never gated."""
    seed = _mixed_seed("erf")
    plain, _ = _grad("erf", seed, rule="plain")
    gated, report = _grad("erf", seed, rule="guided", gate="all")
    np.testing.assert_allclose(gated, plain, rtol=1e-6, atol=1e-7)
    assert report["gated"] == []


@pytest.mark.parametrize("gate", ["paper", "all"])
@pytest.mark.parametrize("case_id", NEVER_GATED)
def test_linear_ops_are_never_gated(case_id, gate):
    seed = _mixed_seed(case_id)
    plain, _ = _grad(case_id, seed, rule="plain")
    guided, report = _grad(case_id, seed, rule="guided", gate=gate)
    np.testing.assert_allclose(guided, plain, rtol=1e-6, atol=1e-7)
    assert (plain < 0).any() and (plain > 0).any()  # mixed signs really went through
    assert report["gated"] == []
