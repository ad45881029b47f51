"""Ops that only move values around: the gradient moves them back."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ...errors import UnsupportedModelError
from . import rule


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(g, node, dy):
    return [g.reshape_like(dy, node.inputs[0])]


@rule("Identity", "Dropout")
def identity(g, node, dy):
    return [dy]


@rule("Transpose")
def transpose(g, node, dy):
    perm = node.attr("perm") or list(reversed(range(g.rank(node.inputs[0]))))
    return [g.op("Transpose", dy, perm=[int(i) for i in np.argsort(perm)])]


@rule("Expand")
def expand(g, node, dy):
    return [g.unbroadcast(dy, node.inputs[0], node.outputs[0])]


@rule("Concat")
def concat(g, node, dy):
    axis = node.attr("axis")
    sizes = [g.static_dims(x, [axis], node.op)[0] for x in node.inputs]
    parts = g.op("Split", dy, g.ints(sizes), axis=axis, outputs=len(sizes))
    return [parts] if len(sizes) == 1 else parts


@rule("Split", all_outputs=True)
def split(g, node, dys):
    pieces = [dy if dy is not None else g.zeros_like(out) for dy, out in zip(dys, node.outputs)]
    return [g.op("Concat", *pieces, axis=node.attr("axis", 0))]


def _constant(g, node, index, what):
    name = node.input(index)
    if name is None:
        return None
    if name not in g.constants:
        raise UnsupportedModelError({f"{node.op} with {what} computed at run time": [node.name]},
                                    hint="export the model with a fixed image size")
    return g.constants[name]


@rule("Slice")
def slice_(g, node, dy):
    x = node.inputs[0]
    starts, ends = _constant(g, node, 1, "starts"), _constant(g, node, 2, "ends")
    axes, steps = _constant(g, node, 3, "axes"), _constant(g, node, 4, "steps")
    rank = g.rank(x)
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
    steps = [1] * len(axes) if steps is None else [int(s) for s in steps]
    dims = g.static_dims(x, axes, node.op)
    pads = [0] * (2 * rank)
    for axis, dim, start, end, step in zip(axes, dims, starts, ends, steps):
        picked = np.arange(dim)[slice(int(start), int(end), step)]  # numpy clamps as ONNX does
        if step == 1:  # a contiguous block: pad the gradient back around it
            first = picked[0] if picked.size else dim
            pads[axis], pads[rank + axis] = first, dim - first - picked.size
        else:  # strided or reversed: scatter each picked position back along the axis
            dy = _scatter_along(g, dy, picked, axis, dim, rank)
    return [g.op("Pad", dy, g.ints(pads)) if any(pads) else dy]


def _scatter_along(g, grad, positions, axis, dim, rank):
    """A tensor with `dim` entries along `axis`: grad's slices at `positions`, zeros elsewhere."""
    grad_shape = g.op("Shape", grad)
    full_shape = g.op("ScatterElements", grad_shape, g.ints([axis]), g.ints([dim]), axis=0)
    shape = [1] * rank
    shape[axis] = -1
    where = g.op("Expand", g.const(positions.reshape(shape), dtype=np.int64), grad_shape)
    zeros = g.op("ConstantOfShape", full_shape, value=numpy_helper.from_array(np.zeros(1, g.np_float)))
    return g.op("ScatterElements", zeros, where, grad, axis=axis)


@rule("Pad")
def pad(g, node, dy):
    if node.attr("mode", "constant") != "constant":
        raise UnsupportedModelError({f"Pad in {node.attr('mode')} mode": [node.name]})
    pads = _constant(g, node, 1, "pads")
    # A negative pad crops: undoing a pad is padding by its negative.
    undo = [dy, g.ints(-np.asarray(pads, dtype=np.int64))] + ([None, node.input(3)] if node.input(3) else [])
    return [g.op("Pad", *undo)]


@rule("Gather")
def gather(g, node, dy):
    x, indices = node.inputs[0], node.inputs[1]
    if g.rank(x) == 1:  # e.g. as_strided decompositions: indices may be computed at run time
        flat = g.op("Reshape", indices, g.ints([-1]))
        size = g.op("Cast", g.op("Size", x), to=g.elem_type(indices) or 7)
        flat = g.op("Where", g.op("Less", flat, g.const(0, dtype=np.int64)), g.op("Add", flat, size), flat)
        return [g.op("ScatterElements", g.zeros_like(x), flat, g.op("Reshape", dy, g.ints([-1])),
                     axis=0, reduction="add")]
    indices = _constant(g, node, 1, "indices")
    axis = node.attr("axis", 0) % g.rank(x)
    if indices.ndim > 1:
        raise UnsupportedModelError({"Gather with indices of rank > 1": [node.name]})
    if indices.ndim == 0:  # the gathered axis was dropped: put it back with size 1
        dy = g.op("Unsqueeze", dy, g.ints([axis]))
    dim = g.static_dims(x, [axis], node.op)[0]
    shape = [1] * g.rank(x)
    shape[axis] = -1
    where = g.const(np.where(indices < 0, indices + dim, indices).reshape(shape).astype(np.int64))
    where = g.op("Expand", where, g.runtime_shape(dy))
    return [g.op("ScatterElements", g.zeros_like(x), where, dy, axis=axis, reduction="add")]
