"""Ops that pick, place or round values: the gradient goes back to where each value came from.
Indices (TopK's second output, ArgMax, NonMaxSuppression, NonZero...) are integers and carry no
gradient: the reverse pass never asks for them."""
from __future__ import annotations

from ...errors import UnsupportedModelError
from .registry import rule


@rule("Floor", "Ceil", "Round", "Sign")
def step(g, node, dy):
    # piecewise constant: the derivative is zero wherever it exists
    return [None]


@rule("TopK")
def top_k(g, node, dy):
    # the values are x's elements at the indices the forward pass picked (distinct along the axis)
    x = node.inputs[0]
    indices = g.forward_output(node, 1, f"{node.outputs[0]}_indices")
    return [g.op("ScatterElements", g.zeros_like(x), indices, dy, axis=node.attr("axis", -1), reduction="add"),
            None]


@rule("GatherElements")
def gather_elements(g, node, dy):
    data, indices = node.inputs
    return [g.op("ScatterElements", g.zeros_like(data), indices, dy, axis=node.attr("axis", 0), reduction="add"),
            None]


@rule("GatherND")
def gather_nd(g, node, dy):
    data, indices = node.inputs
    batch = node.attr("batch_dims", 0)
    if batch:  # ScatterND has no batch_dims: prepend each entry's batch coordinates to its index
        rank = g.rank(indices)
        if rank is None:
            raise UnsupportedModelError({"GatherND with batch_dims of indices of unknown rank": [node.name]})
        indices = g.op("Cast", indices, to=7)
        where = g.op("Shape", indices, start=0, end=rank - 1)
        full = g.op("Concat", where, g.ints([1]), axis=0)
        coordinates = []
        for axis in range(batch):
            count = g.op("Squeeze", g.op("Shape", indices, start=axis, end=axis + 1), g.ints([0]))
            shape = [1] * rank
            shape[axis] = -1
            line = g.op("Reshape", g.op("Range", g.ints(0), count, g.ints(1)), g.ints(shape))
            coordinates.append(g.op("Expand", line, full))
        indices = g.op("Concat", *coordinates, indices, axis=-1)
    return [g.op("ScatterND", g.zeros_like(data), indices, dy, reduction="add"), None]


def _scatter(g, node, dy, scatter_op, gather_op, **axis):
    data, indices, updates = node.inputs
    reduction = node.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise UnsupportedModelError({f"{node.op} with reduction '{reduction}'": [node.name]})
    d_data = d_updates = None
    if g.wants(data):  # "none": the written positions no longer depend on data
        d_data = dy if reduction == "add" else g.op(scatter_op, dy, indices, g.zeros_like(updates), **axis)
    if g.wants(updates):
        d_updates = g.op(gather_op, dy, indices, **axis)
    return [d_data, None, d_updates]


@rule("ScatterElements")
def scatter_elements(g, node, dy):
    return _scatter(g, node, dy, "ScatterElements", "GatherElements", axis=node.attr("axis", 0))


@rule("ScatterND")
def scatter_nd(g, node, dy):
    return _scatter(g, node, dy, "ScatterND", "GatherND")


@rule("CumSum")
def cumulative_sum(g, node, dy):
    # y_i = sum_{j <= i} x_j (or j < i, exclusive; reversed: j >= i): x_j feeds every later y
    axis = node.inputs[1]
    return [g.op("CumSum", dy, axis, exclusive=node.attr("exclusive", 0), reverse=1 - node.attr("reverse", 0)),
            None]
