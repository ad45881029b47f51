"""Ops that only move values around: the gradient moves them back."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ...errors import UnsupportedModelError
from .registry import rule


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
    shapes = [g.shape(x) for x in node.inputs]
    if all(s is not None and -len(s) <= axis < len(s) and isinstance(s[axis], int) for s in shapes):
        sizes = g.ints([s[axis] for s in shapes])
    else:  # e.g. a ViT's class token, expanded to the batch at run time: read the sizes then
        end = {"end": axis + 1} if axis != -1 else {}
        sizes = g.op("Concat", *[g.op("Shape", x, start=axis, **end) for x in node.inputs], axis=0)
    parts = g.op("Split", dy, sizes, axis=axis, outputs=len(node.inputs))
    return [parts] if len(node.inputs) == 1 else parts


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
    axes, steps = _constant(g, node, 3, "axes"), _constant(g, node, 4, "steps")
    rank = g.rank(x)
    if node.input(1) not in g.constants or node.input(2) not in g.constants:
        return [_slice_back_runtime(g, node, dy, axes, steps, rank)]
    starts, ends = _constant(g, node, 1, "starts"), _constant(g, node, 2, "ends")
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
    steps = [1] * len(axes) if steps is None else [int(s) for s in steps]
    # An axis sliced whole (0 to "the end", step 1) moves nothing and needs no size: tf2onnx turns a
    # StridedSlice (Keras' Cropping2D) into a Slice over every axis, the dynamic batch included.
    cut = [i for i in range(len(axes)) if not (steps[i] == 1 and int(starts[i]) == 0
                                                and int(ends[i]) >= 2**31 - 1)]
    axes, starts, ends, steps = ([v[i] for i in cut] for v in (axes, starts, ends, steps))
    shape = g.shape(x)
    if shape is None:
        g.static_dims(x, axes, node.op)  # refuses in one line
    pads = [0] * (2 * rank)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        dim = shape[axis]
        if not isinstance(dim, int):  # a size known at run time (the boxes a detector kept)
            dy = _scatter_along_runtime(g, dy, x, axis, g.ints([int(start)]), g.ints([int(end)]), step, rank)
            continue
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


def _slice_back_runtime(g, node, dy, axes, steps, rank):
    """Slice's gradient where its starts or ends are computed at run time (a detector's boxes
    kept): axis by axis, scattered back at the positions the same starts and ends pick."""
    if rank is None or axes is None and g.shape(node.input(1)) is None:
        raise UnsupportedModelError({"Slice with starts or ends computed at run time, of unknown rank": [node.name]})
    count = len(axes) if axes is not None else g.shape(node.input(1))[0]
    axes = list(range(count)) if axes is None else [int(a) % rank for a in axes]
    steps = [1] * count if steps is None else [int(v) for v in steps]
    for i, (axis, step) in enumerate(zip(axes, steps)):
        start, end = (g.op("Slice", node.input(k), g.ints([i]), g.ints([i + 1])) for k in (1, 2))
        dy = _scatter_along_runtime(g, dy, node.inputs[0], axis, start, end, step, rank)
    return dy


def _scatter_along_runtime(g, grad, x, axis, start, end, step, rank):
    """_scatter_along for an axis whose size is known at run time only: the positions picked are
    a Slice of Range(size) by the same starts and ends (1-element tensors), so they follow ONNX's
    own clamping."""
    dim = g.op("Shape", x, start=axis, end=axis + 1)
    every = g.op("Range", g.ints(0), g.op("Squeeze", dim, g.ints([0])), g.ints(1))
    picked = g.op("Slice", every, start, end, g.ints([0]), g.ints([step]))
    shape = [1] * rank
    shape[axis] = -1
    grad_shape = g.op("Shape", grad)
    full_shape = g.op("ScatterElements", grad_shape, g.ints([axis]), dim, axis=0)
    where = g.op("Expand", g.op("Reshape", picked, g.ints(shape)), grad_shape)
    zeros = g.op("ConstantOfShape", full_shape, value=numpy_helper.from_array(np.zeros(1, g.np_float)))
    return g.op("ScatterElements", zeros, where, grad, axis=axis)


@rule("Pad")
def pad(g, node, dy):
    mode = node.attr("mode", "constant")
    pads = np.asarray(_constant(g, node, 1, "pads"), dtype=np.int64)
    if mode == "constant":  # a negative pad crops: undoing a pad is padding by its negative
        undo = [dy, g.ints(-pads)] + ([None, node.input(3)] if node.input(3) else [])
        return [g.op("Pad", *undo)]
    if mode not in _UNPAD:
        raise UnsupportedModelError({f"Pad in {mode} mode": [node.name]})
    x, rank = node.inputs[0], g.rank(node.inputs[0])
    if rank is None:
        raise UnsupportedModelError({f"Pad in {mode} mode of a value of unknown rank": [node.name]})
    axes = _constant(g, node, 3, "axes")
    axes = range(rank) if axes is None else [int(a) % rank for a in axes]
    begin, end = np.zeros(rank, np.int64), np.zeros(rank, np.int64)
    begin[list(axes)], end[list(axes)] = pads[:len(pads) // 2], pads[len(pads) // 2:]
    if mode == "wrap" and np.any((np.minimum(begin, end) < 0) & (np.maximum(begin, end) > 0)):
        # Crop one side and wrap the other: onnxruntime CPU wraps the cropped tensor, numpy and the
        # spec leave it undefined, other runtimes may wrap first; no gradient fits them all.
        raise UnsupportedModelError({"Pad in wrap mode cropping one side of an axis and padding the other":
                                     [node.name]})
    # onnxruntime crops first (negative pads), then pads what is left; each axis pads independently
    # (out[i, j] = x[f(i), g(j)]), so undo the padding axis by axis, then put the crops back as zeros.
    crop_begin, crop_end = np.minimum(begin, 0), np.minimum(end, 0)
    for axis in np.flatnonzero((begin > 0) | (end > 0)):
        n = g.static_dims(x, [axis], node.op)[0] + crop_begin[axis] + crop_end[axis]
        b, e = int(max(begin[axis], 0)), int(max(end[axis], 0))
        if n < 1 or (mode == "reflect" and max(b, e) > n - 1):  # numpy reflects again, onnxruntime refuses
            raise UnsupportedModelError({f"Pad in {mode} mode with pads ({b}, {e}) on an axis of size {n}":
                                         [node.name]})
        dy = _UNPAD[mode](g, dy, int(axis), int(n), b, e, rank)
    crops = np.concatenate([-crop_begin, -crop_end])
    return [g.op("Pad", dy, g.ints(crops)) if crops.any() else dy]


def _rows(g, grad, axis, start, end, step=1):
    return g.op("Slice", grad, g.ints([start]), g.ints([end]), g.ints([axis]), g.ints([step]))


def _place(g, part, axis, before, after, rank):
    """Zero-pad `part` along `axis` so that it lines up with the centre rows it belongs to."""
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = before, after
    return g.op("Pad", part, g.ints(pads)) if before or after else part


def _unpad_edge(g, dy, axis, n, b, e, rank):
    """Every begin row copies centre row 0, every end row the last one: sum them onto those."""
    grad = _rows(g, dy, axis, b, b + n)
    if b:
        first = g.op("ReduceSum", _rows(g, dy, axis, 0, b), g.ints([axis]), keepdims=1)
        grad = g.op("Add", grad, _place(g, first, axis, 0, n - 1, rank))
    if e:
        last = g.op("ReduceSum", _rows(g, dy, axis, b + n, b + n + e), g.ints([axis]), keepdims=1)
        grad = g.op("Add", grad, _place(g, last, axis, n - 1, 0, rank))
    return grad


def _unpad_reflect(g, dy, axis, n, b, e, rank):
    """Begin row i (0-based) copies centre row b - i, end row i copies row n - 2 - i (b, e < n): the
    reversed begin rows belong to centre rows 1..b, the reversed end rows to rows n-1-e..n-2."""
    grad = _rows(g, dy, axis, b, b + n)
    if b:  # ends below -dim clamp to "before row 0", so the reversed slice keeps row 0
        grad = g.op("Add", grad, _place(g, _rows(g, dy, axis, b - 1, np.iinfo(np.int64).min, -1),
                                        axis, 1, n - 1 - b, rank))
    if e:
        grad = g.op("Add", grad, _place(g, _rows(g, dy, axis, b + n + e - 1, b + n - 1, -1),
                                        axis, n - 1 - e, 1, rank))
    return grad


def _unpad_wrap(g, dy, axis, n, b, e, rank):
    """Output row j copies centre row (j - b) mod n, for pads of any size: shift the rows by
    (-b) mod n zeros so that row j lands at a multiple of n plus its centre row, pad to whole
    periods of n, and add the periods up."""
    shift = -b % n
    fill = -(shift + b + n + e) % n
    periods = (shift + b + n + e + fill) // n
    folded = _place(g, dy, axis, shift, fill, rank)
    if periods == 1:
        return folded
    return g.op("Sum", *g.op("Split", folded, g.ints([n] * periods), axis=axis, outputs=periods))


_UNPAD = {"edge": _unpad_edge, "reflect": _unpad_reflect, "wrap": _unpad_wrap}


@rule("Gather")
def gather(g, node, dy):
    x, indices = node.inputs[0], node.inputs[1]
    if g.rank(x) == 1:  # e.g. as_strided decompositions: indices may be computed at run time
        flat = g.op("Reshape", indices, g.ints([-1]))
        size = g.op("Cast", g.op("Size", x), to=g.elem_type(indices) or 7)
        flat = g.op("Where", g.op("Less", flat, g.const(0, dtype=np.int64)), g.op("Add", flat, size), flat)
        return [g.op("ScatterElements", g.zeros_like(x), flat, g.op("Reshape", dy, g.ints([-1])),
                     axis=0, reduction="add")]
    axis = node.attr("axis", 0) % g.rank(x)
    if node.input(1) not in g.constants:
        return [_gather_back(g, x, indices, dy, axis)]
    indices = g.constants[node.input(1)]
    if indices.ndim > 1:
        return [_gather_back(g, x, node.input(1), dy, axis)]
    if indices.ndim == 0:  # the gathered axis was dropped: put it back with size 1
        dy = g.op("Unsqueeze", dy, g.ints([axis]))
    dim = g.static_dims(x, [axis], node.op)[0]
    shape = [1] * g.rank(x)
    shape[axis] = -1
    where = g.const(np.where(indices < 0, indices + dim, indices).reshape(shape).astype(np.int64))
    where = g.op("Expand", where, g.runtime_shape(dy))
    return [g.op("ScatterElements", g.zeros_like(x), where, dy, axis=axis, reduction="add")]


def _gather_back(g, x, indices, dy, axis):
    """Gather with indices of any rank, known only at run time (a detector's top-k boxes): fold the
    indices' axes of dy into one, of K entries, and scatter-add each entry to its index along axis."""
    rank = g.rank(x)
    dim = g.op("Shape", x, start=axis, end=axis + 1)
    flat = g.op("Cast", g.op("Reshape", indices, g.ints([-1])), to=7)  # int64, as int32 indices may be
    flat = g.op("Where", g.op("Less", flat, g.const(0, dtype=np.int64)), g.op("Add", flat, dim), flat)
    folded_shape = g.op("Concat", g.op("Shape", x, start=0, end=axis), g.ints([-1]),
                        g.op("Shape", x, start=axis + 1), axis=0)
    folded = g.op("Reshape", dy, folded_shape)
    shape = [1] * rank
    shape[axis] = -1
    where = g.op("Expand", g.op("Reshape", flat, g.ints(shape)), g.op("Shape", folded))
    return g.op("ScatterElements", g.zeros_like(x), where, folded, axis=axis, reduction="add")
