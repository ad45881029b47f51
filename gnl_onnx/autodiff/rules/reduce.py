"""Reductions: the gradient of a sum is copied back over the reduced axes, a mean divides it."""
from __future__ import annotations

import numpy as np

from ...errors import UnsupportedModelError
from .registry import rule


def _axes(g, node):
    name = node.input(1)
    if name is not None:
        if name not in g.constants:
            raise UnsupportedModelError({f"{node.op} with axes computed at run time": [node.name]})
        axes = g.constants[name].tolist()
    else:
        axes = node.attr("axes")  # before opset 18 (ReduceSum: 13) axes was an attribute
    rank = g.rank(node.inputs[0])
    if not axes:
        return [] if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in axes)


@rule("ReduceSum", "ReduceMean")
def reduce_sum_or_mean(g, node, dy):
    x = node.inputs[0]
    axes = _axes(g, node)
    if not node.attr("keepdims", 1) and axes:
        dy = g.op("Unsqueeze", dy, g.ints(axes))
    if node.op == "ReduceMean" and axes:
        count = int(np.prod(g.static_dims(x, axes, node.op)))
        dy = g.op("Mul", dy, g.const(1.0 / count))
    return [g.op("Expand", dy, g.runtime_shape(x))]


def _kept(g, node, value, axes):
    """A reduced value (the output or its gradient) with the reduced axes back as size 1."""
    if not node.attr("keepdims", 1) and axes:
        return g.op("Unsqueeze", value, g.ints(axes))
    return value


@rule("ReduceMax", "ReduceMin")
def reduce_extremum(g, node, dy):
    # to the elements equal to the extremum, shared equally among ties (as torch's amax/amin)
    x = node.inputs[0]
    axes = _axes(g, node)
    y, dy = _kept(g, node, node.outputs[0], axes), _kept(g, node, dy, axes)
    hit = g.op("Cast", g.op("Equal", x, y), to=g.elem_type(x) or g.float_type)
    count = g.op("ReduceSum", hit, g.ints(axes), keepdims=1) if axes else None
    share = g.op("Div", dy, count) if count is not None else dy
    return [g.op("Mul", hit, share)]


@rule("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd")
def reduce_smooth(g, node, dy):
    x = node.inputs[0]
    axes = _axes(g, node)
    y, dy = _kept(g, node, node.outputs[0], axes), _kept(g, node, dy, axes)
    factor = {
        "ReduceL1": lambda: g.op("Sign", x),                                    # d|x| = sign(x)
        "ReduceL2": lambda: g.op("Div", x, y),                                  # x / ||x||
        "ReduceSumSquare": lambda: g.op("Mul", x, g.const(2.0)),
        "ReduceLogSum": lambda: g.op("Expand", g.op("Reciprocal", g.op("Exp", y)), g.runtime_shape(x)),  # 1/sum
        "ReduceLogSumExp": lambda: g.op("Exp", g.op("Sub", x, y)),              # softmax over the axes
        "ReduceProd": lambda: g.op("Div", y, x),                                # the product of the others
    }[node.op]()
    return [g.op("Mul", factor, dy)]
