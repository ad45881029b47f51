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
