"""Resampling (Resize, Upsample). Every mode but tf_crop_and_resize is linear in the input and
separable per axis: along each resized axis the output is A @ x, with A (out x in) fixed by the
sizes, the scale, the mode and the coordinate transform. The gradient is the transpose, A^T @ dy.

A is computed here in numpy from the static sizes, following the operator's definition (opset 11
on; Resize-10 and Upsample resample asymmetrically): output position i maps to x = f(i) in input
coordinates; nearest takes one input element (rounded per nearest_mode); linear and cubic take
taps at base + t (base = ceil(x) - 1, ratio r = x - base in (0, 1]) with weights k(s (t - r)),
k the triangle or Keys' cubic kernel, s = min(scale, 1) with antialias and 1 without (antialias
also renormalizes the weights); exclude_outside drops the taps outside the input and
renormalizes; taps outside are otherwise clamped to the edge. The backward is built sparsely:
input j receives from at most M outputs, so per axis it is M Gathers of dy along the axis, each
times a weight vector, summed. Where a resized axis's size is known only at run time (images of
any size), the same coordinates, taps and weights are computed with ops instead and each tap's
share is scatter-added (antialias and keep_aspect_ratio_policy are then refused). Every row of A
sums to 1, so LRP's rule of moving relevance by the gradient conserves it here; the gating and
DeepLIFT rule sets treat Resize as linear (chain rule)."""
from __future__ import annotations

import math

import numpy as np
from onnx import numpy_helper

from ...errors import UnsupportedModelError
from .registry import rule

TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric",
              "tf_half_pixel_for_nn")


def _opset(g) -> int:
    return next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), 1)


def source_coordinates(transform, out_len, in_len, scale):
    """x_original for every output position of one axis."""
    i = np.arange(out_len, dtype=np.float64)
    if transform == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if transform == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_len > 1 else np.zeros(out_len)
    if transform == "align_corners":
        return i * (in_len - 1) / (out_len - 1) if out_len > 1 else np.zeros(out_len)
    if transform == "asymmetric":
        return i / scale
    if transform == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    if transform == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        offset = in_len / 2 * (1 - adjustment)
        return offset + (i + 0.5) / scale - 0.5
    raise ValueError(transform)


def _nearest(x, mode, downsampling):
    if mode == "round_prefer_floor":
        return np.ceil(x - 0.5)
    if mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    if mode == "floor":
        return np.floor(x)
    if mode == "ceil":
        return np.ceil(x)
    if mode == "simple":  # Resize-10 / Upsample in ONNX Runtime: ceil when shrinking, else floor
        return np.ceil(x) if downsampling else np.floor(x)
    raise ValueError(mode)


def _cubic(t, a):
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def interpolation_matrix(out_len, in_len, scale, mode, transform, nearest_mode="round_prefer_floor",
                         cubic_a=-0.75, exclude_outside=False, antialias=False):
    """A (out_len x in_len): output = A @ input along one axis."""
    x = source_coordinates(transform, out_len, in_len, scale)
    rows = np.arange(out_len)
    matrix = np.zeros((out_len, in_len))
    if mode == "nearest":
        index = _nearest(x, nearest_mode, scale < 1).astype(np.int64)
        matrix[rows, np.clip(index, 0, in_len - 1)] = 1.0
        return matrix
    s = min(scale, 1.0) if antialias else 1.0
    if mode == "linear":
        first = math.floor(-1 / s) + 1
        taps, kernel = np.arange(first, 2 - first), lambda t: np.clip(1 - np.abs(t), 0, 1)
    elif mode == "cubic":
        first = math.floor(-2 / s) + 1
        taps, kernel = np.arange(first, 2 - first), lambda t: _cubic(t, cubic_a)
    else:
        raise ValueError(mode)
    base = np.ceil(x) - 1
    ratio = x - base
    weights = kernel(s * (taps[None, :] - ratio[:, None]))
    if antialias:
        weights = weights / weights.sum(axis=1, keepdims=True)
    index = base.astype(np.int64)[:, None] + taps[None, :]
    if exclude_outside:
        weights = np.where((index >= 0) & (index < in_len), weights, 0.0)
        weights = weights / weights.sum(axis=1, keepdims=True)
    np.add.at(matrix, (np.broadcast_to(rows[:, None], index.shape), np.clip(index, 0, in_len - 1)), weights)
    return matrix


def transpose_taps(matrix):
    """A^T as taps: (index [in, M], weight [in, M]) with input j = sum_m weight[j, m] dy[index[j, m]]."""
    columns = [np.flatnonzero(matrix[:, j]) for j in range(matrix.shape[1])]
    width = max(1, max(len(c) for c in columns))
    index = np.zeros((matrix.shape[1], width), np.int64)
    weight = np.zeros((matrix.shape[1], width))
    for j, c in enumerate(columns):
        index[j, :len(c)] = c
        weight[j, :len(c)] = matrix[c, j]
    return index, weight


def _refuse(node, what, hint=""):
    raise UnsupportedModelError({f"{node.op} {what}": [node.name]}, hint=hint)


def _constant(g, node, index):
    name = node.input(index)
    if name is None:
        return None
    if name not in g.constants:
        return "dynamic"
    value = np.asarray(g.constants[name])
    return value if value.size else None


def _settings(g, node):
    """(mode, transform, nearest_mode, scales-or-None per axis, axes) of a Resize or Upsample."""
    mode = node.attr("mode", "nearest")
    if node.op == "Upsample" or _opset(g) < 11:  # Upsample-7 (scales attribute), -9, Resize-10
        scales = node.attr("scales") or _constant(g, node, 1)
        return mode, "asymmetric", "simple", scales, None, None
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    return (mode, transform, node.attr("nearest_mode", "round_prefer_floor"), _constant(g, node, 2),
            _constant(g, node, 3), node.attr("axes"))


@rule("Resize", "Upsample")
def resize(g, node, dy):
    x, y = node.inputs[0], node.outputs[0]
    mode, transform, nearest_mode, scales, sizes, axes = _settings(g, node)
    if mode not in ("nearest", "linear", "cubic"):
        _refuse(node, f"in mode '{mode}'")
    if transform == "tf_crop_and_resize":
        _refuse(node, "with coordinate_transformation_mode 'tf_crop_and_resize'",
                "its region of interest and extrapolated border are not supported yet")
    if transform not in TRANSFORMS:
        _refuse(node, f"with coordinate_transformation_mode '{transform}'")
    if isinstance(scales, str) and sizes is None:
        _refuse(node, "with scales computed at run time", "export the model with constant scales or sizes")
    rank = g.rank(x)
    if rank is None:
        _refuse(node, "of a value of unknown rank", "export the model with a fixed image size")
    axes = list(range(rank)) if not axes else [int(a) % rank for a in axes]
    antialias = bool(node.attr("antialias", 0))
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    in_shape, out_shape = g.shape(x), g.shape(y)
    inputs, outputs, factors = {}, {}, {}
    for k, axis in enumerate(axes):
        n = in_shape[axis]
        if scales is not None and not isinstance(scales, str):
            factor = float(scales[k])
            known = out_shape[axis] if out_shape is not None else None
            # floor(n * scale) with the product in float32, as ONNX Runtime computes it (5 * 1.8f is 9)
            out = known if isinstance(known, int) else \
                int(np.floor(np.float32(n) * np.float32(factor))) if isinstance(n, int) else None
        else:
            out = int(sizes[k]) if sizes is not None and not isinstance(sizes, str) else out_shape and out_shape[axis]
            factor = out / n if isinstance(out, int) and isinstance(n, int) else None
        inputs[axis], outputs[axis], factors[axis] = n, out, factor
    if policy != "stretch" and sizes is not None and scales is None:
        if any(factors[a] is None for a in axes):
            _refuse(node, f"with keep_aspect_ratio_policy '{policy}' and sizes known only at run time",
                    "export the model with a fixed image size")
        pick = min if policy == "not_larger" else max
        common = pick(factors[a] for a in axes)
        for a in axes:
            factors[a], outputs[a] = common, int(math.floor(inputs[a] * common + 0.5))
    if out_shape is not None:
        for a in axes:
            if isinstance(out_shape[a], int) and outputs[a] is None:
                outputs[a] = out_shape[a]
    grad = dy
    for axis in axes:
        n, out, factor = inputs[axis], outputs[axis], factors[axis]
        if not all(isinstance(v, int) for v in (n, out)) or factor is None:
            if factor == 1.0 or (scales is None and out_shape is not None and n is not None
                                 and in_shape[axis] == out_shape[axis]):
                continue  # an axis left alone (a dynamic batch or channel axis)
            if (antialias and mode != "nearest") or policy != "stretch":
                _refuse(node, "with antialias or keep_aspect_ratio_policy of an axis whose size is only known at "
                        "run time", f"export the model with a fixed image size (axis {axis} of '{x}')")
            grad = _spread_at_runtime(g, node, grad, axis, rank, mode, transform, nearest_mode,
                                      factor if scales is not None else None)
            continue
        matrix = interpolation_matrix(out, n, factor, mode, transform, nearest_mode, node.attr("cubic_coeff_a", -0.75),
                                      bool(node.attr("exclude_outside", 0)), antialias and mode != "nearest")
        if matrix.shape[0] == matrix.shape[1] and np.array_equal(matrix, np.eye(n)):
            continue
        grad = _spread(g, grad, matrix, axis, rank)
    return [grad]


def _spread(g, grad, matrix, axis, rank):
    """A^T applied along `axis`: sum over m of Gather(grad, index[:, m]) * weight[:, m]."""
    index, weight = transpose_taps(matrix)
    shape = [1] * rank
    shape[axis] = -1
    parts = []
    for m in range(index.shape[1]):
        picked = g.op("Gather", grad, g.const(index[:, m], dtype=np.int64), axis=axis)
        w = weight[:, m]
        parts.append(picked if np.all(w == 1.0) else g.op("Mul", picked, g.const(w.reshape(shape))))
    return parts[0] if len(parts) == 1 else g.op("Sum", *parts)


def _spread_at_runtime(g, node, grad, axis, rank, mode, transform, nearest_mode, factor):
    """A^T along `axis` when the sizes are only known at run time (DBNet-style dynamic images):
    the source coordinate of every output position, its taps and weights are computed with ops
    (in the model's float type), and each tap's share of grad is scatter-added to its index.
    factor: the constant scale, or None (sizes: out / in at run time)."""
    x = node.inputs[0]
    n_in = g.op("Shape", x, start=axis, end=axis + 1)
    n_out = g.op("Shape", grad, start=axis, end=axis + 1)
    f_in, f_out = (g.op("Cast", v, to=g.float_type) for v in (n_in, n_out))
    one, half = g.const(1.0), g.const(0.5)
    i = g.op("Cast", g.op("Range", g.ints(0), g.op("Squeeze", n_out, g.ints([0])), g.ints(1)), to=g.float_type)
    scale = g.const(factor) if factor is not None else g.op("Div", f_out, f_in)
    centred = g.op("Sub", g.op("Div", g.op("Add", i, half), scale), half)
    if transform in ("half_pixel", "pytorch_half_pixel"):
        source = centred
        if transform == "pytorch_half_pixel":
            source = g.op("Where", g.op("Greater", f_out, one), centred, g.op("Mul", i, g.const(0.0)))
    elif transform == "align_corners":
        source = g.op("Div", g.op("Mul", i, g.op("Sub", f_in, one)), g.op("Max", g.op("Sub", f_out, one), one))
    elif transform == "asymmetric":
        source = g.op("Div", i, scale)
    elif transform == "tf_half_pixel_for_nn":
        source = g.op("Div", g.op("Add", i, half), scale)
    else:  # half_pixel_symmetric
        adjustment = g.op("Div", f_out, g.op("Mul", scale, f_in))
        source = g.op("Add", g.op("Mul", g.op("Mul", f_in, half), g.op("Sub", one, adjustment)), centred)
    last = g.op("Squeeze", g.op("Sub", f_in, one), g.ints([0]))  # Clip takes scalar bounds
    if mode == "nearest":
        if nearest_mode == "simple":
            nearest_mode = "ceil" if factor is not None and factor < 1 else "floor"
            if factor is None:
                _refuse(node, "(Resize-10 / Upsample) with sizes of an axis only known at run time")
        rounded = {"round_prefer_floor": lambda: g.op("Ceil", g.op("Sub", source, half)),
                   "round_prefer_ceil": lambda: g.op("Floor", g.op("Add", source, half)),
                   "floor": lambda: g.op("Floor", source), "ceil": lambda: g.op("Ceil", source)}[nearest_mode]()
        taps = [(rounded, None)]
    else:
        base = g.op("Sub", g.op("Ceil", source), one)
        ratio = g.op("Sub", source, base)
        a = node.attr("cubic_coeff_a", -0.75)
        offsets = (0, 1) if mode == "linear" else (-1, 0, 1, 2)
        taps = []
        for t in offsets:
            d = g.op("Abs", g.op("Sub", g.const(float(t)), ratio))
            if mode == "linear":
                w = g.op("Sub", one, d)
            else:
                near = g.op("Add", g.op("Mul", g.op("Mul", g.op("Sub", g.op("Mul", g.const(a + 2), d), g.const(a + 3)),
                                                    d), d), one)
                far = g.op("Sub", g.op("Mul", g.op("Add", g.op("Mul", g.op("Sub", g.op("Mul", g.const(a), d),
                                                                               g.const(5 * a)), d), g.const(8 * a)), d),
                           g.const(4 * a))
                w = g.op("Where", g.op("LessOrEqual", d, one), near, g.op("Where", g.op("Less", d, g.const(2.0)), far,
                                                                            g.op("Mul", d, g.const(0.0))))
            taps.append((g.op("Add", base, g.const(float(t))), w))
        if node.attr("exclude_outside", 0):
            inside = [g.op("Cast", g.op("And", g.op("GreaterOrEqual", at, g.const(0.0)), g.op("LessOrEqual", at, last)),
                           to=g.float_type) for at, _ in taps]
            kept = [g.op("Mul", w, m) for (_, w), m in zip(taps, inside)]
            total = g.op("Sum", *kept)
            taps = [(at, g.op("Div", w, total)) for (at, _), w in zip(taps, kept)]
    shape = [1] * rank
    shape[axis] = -1
    line = g.ints(shape)
    grad_shape = g.op("Shape", grad)
    target = g.op("Concat", g.op("Shape", grad, start=0, end=axis), n_in, g.op("Shape", grad, start=axis + 1), axis=0)
    result = g.op("ConstantOfShape", target, value=numpy_helper.from_array(np.zeros(1, g.np_float)))
    for at, w in taps:
        index = g.op("Cast", g.op("Clip", at, g.const(0.0), last), to=7)
        index = g.op("Expand", g.op("Reshape", index, line), grad_shape)
        share = grad if w is None else g.op("Mul", grad, g.op("Reshape", w, line))
        result = g.op("ScatterElements", result, index, share, axis=axis, reduction="add")
    return result
