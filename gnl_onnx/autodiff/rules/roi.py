"""Region ops of two-stage detectors. RoiAlign samples each box's bins by bilinear interpolation
(as ONNX Runtime computes it: samples outside [-1, size] weigh nothing, coordinates below 0 are
clamped, the last row and column repeat); its gradient goes to the feature map only, never to the
boxes or their batch indices (torchvision's roi_align gives the boxes none either, and its
detectors detach the proposals). NonMaxSuppression only produces indices and needs no rule: the
reverse pass never asks for integer values."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ...errors import UnsupportedModelError
from .registry import rule


def _axis_samples(g, start, size, grid, grid_count, pooled: int, length):
    """One axis of the sampling grid: for each box r, bin p and sample i (i < the box's grid),
    the two taps (low, high) along the axis and their bilinear weights, [R, pooled, G] each.
    Weights are 0 for samples outside [-1, length] and for padding samples (i >= grid)."""
    bin_size = g.op("Div", size, g.const(float(pooled)))                             # [R, 1]
    p = g.op("Reshape", g.op("Cast", g.op("Range", g.ints(0), g.ints(pooled), g.ints(1)), to=g.float_type),
             g.ints([1, -1, 1]))                                                     # [1, P, 1]
    i = g.op("Reshape", g.op("Cast", g.op("Range", g.ints(0), grid_count, g.ints(1)), to=g.float_type),
             g.ints([1, 1, -1]))                                                     # [1, 1, G]
    grid3 = g.op("Unsqueeze", grid, g.ints([2]))                                     # [R, 1, 1]
    bin3 = g.op("Unsqueeze", bin_size, g.ints([2]))
    step = g.op("Div", bin3, g.op("Max", grid3, g.const(1.0)))
    coordinate = g.op("Add", g.op("Add", g.op("Unsqueeze", start, g.ints([2])), g.op("Mul", p, bin3)),
                      g.op("Mul", g.op("Add", i, g.const(0.5)), step))               # [R, P, G]
    exists = g.op("Less", i, grid3)
    valid = g.op("And", g.op("And", g.op("GreaterOrEqual", coordinate, g.const(-1.0)),
                              g.op("LessOrEqual", coordinate, length)), exists)
    last = g.op("Sub", length, g.const(1.0))
    clamped = g.op("Max", coordinate, g.const(0.0))
    low = g.op("Floor", clamped)
    at_edge = g.op("GreaterOrEqual", low, last)
    low = g.op("Where", at_edge, last, low)
    high = g.op("Where", at_edge, last, g.op("Add", low, g.const(1.0)))
    frac = g.op("Sub", g.op("Where", at_edge, last, clamped), low)
    mask = g.op("Cast", valid, to=g.float_type)
    w_low = g.op("Mul", g.op("Sub", g.const(1.0), frac), mask)
    w_high = g.op("Mul", frac, mask)
    return g.op("Cast", low, to=7), g.op("Cast", high, to=7), w_low, w_high, exists


def _interpolation_matrix(g, low, high, w_low, w_high, grid, depth):
    """[R, P, length]: the average over a bin's samples of their taps along one axis."""
    count = g.op("Unsqueeze", g.op("Max", grid, g.const(1.0)), g.ints([2, 3]))      # [R, 1, 1, 1]
    values = g.const([0.0, 1.0])
    depth = g.op("Squeeze", depth, g.ints([0]))  # a scalar: the reference evaluator takes no other
    taps = g.op("Add", g.op("Mul", g.op("OneHot", low, depth, values, axis=-1), g.op("Unsqueeze", w_low, g.ints([3]))),
                g.op("Mul", g.op("OneHot", high, depth, values, axis=-1), g.op("Unsqueeze", w_high, g.ints([3]))))
    return g.op("ReduceSum", g.op("Div", taps, count), g.ints([2]), keepdims=0)


@rule("RoiAlign")
def roi_align(g, node, dy):
    x, rois, batch_indices = node.inputs[:3]
    mode = node.attr("mode", "avg")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    if mode not in ("avg", "max") or transform not in ("half_pixel", "output_half_pixel"):
        raise UnsupportedModelError({f"RoiAlign with mode '{mode}' and {transform}": [node.name]})
    pooled_h, pooled_w = node.attr("output_height", 1), node.attr("output_width", 1)
    ratio, scale = node.attr("sampling_ratio", 0), node.attr("spatial_scale", 1.0)

    shape = g.runtime_shape(x)
    n, c, h, w = (g.op("Slice", shape, g.ints([k]), g.ints([k + 1])) for k in range(4))
    h_float, w_float = g.op("Cast", h, to=g.float_type), g.op("Cast", w, to=g.float_type)
    x1, y1, x2, y2 = g.op("Split", rois, g.ints([1, 1, 1, 1]), axis=1, outputs=4)  # [R, 1] each
    offset = g.const(0.5 if transform == "half_pixel" else 0.0)
    begin = [g.op("Sub", g.op("Mul", v, g.const(scale)), offset) for v in (x1, y1)]
    end = [g.op("Sub", g.op("Mul", v, g.const(scale)), offset) for v in (x2, y2)]
    sizes = [g.op("Sub", e, b) for b, e in zip(begin, end)]
    if transform == "output_half_pixel":  # boxes at least one cell wide, as the spec's legacy mode
        sizes = [g.op("Max", s, g.const(1.0)) for s in sizes]
    axes = []
    for start, size, pooled, length in ((begin[1], sizes[1], pooled_h, h_float), (begin[0], sizes[0], pooled_w, w_float)):
        if ratio > 0:
            grid = g.op("Add", g.op("Mul", size, g.const(0.0)), g.const(float(ratio)))  # [R, 1]
            count = g.ints(ratio)
        else:  # adaptive: ceil(size / pooled) samples per bin, padded to the largest box's count
            grid = g.op("Ceil", g.op("Div", size, g.const(float(pooled))))
            largest = g.op("ReduceMax", g.op("Concat", g.op("Reshape", grid, g.ints([-1])), g.const([1.0]), axis=0),
                           keepdims=0)
            count = g.op("Cast", largest, to=7)
        axes.append((grid, count, pooled, length, *_axis_samples(g, start, size, grid, count, pooled, length)))
    (grid_y, _, _, _, low_y, high_y, wl_y, wh_y, _), (grid_x, _, _, _, low_x, high_x, wl_x, wh_x, _) = axes

    if mode == "avg":  # separable: Y_r = A_y[r] X[b_r] A_x[r]^T, so dX[b] = sum_r A_y[r]^T dY_r A_x[r]
        a_y = _interpolation_matrix(g, low_y, high_y, wl_y, wh_y, grid_y, h)         # [R, PH, H]
        a_x = _interpolation_matrix(g, low_x, high_x, wl_x, wh_x, grid_x, w)         # [R, PW, W]
        along_x = g.op("MatMul", dy, g.op("Unsqueeze", a_x, g.ints([1])))           # [R, C, PH, W]
        rows = g.op("Reshape", g.op("Transpose", along_x, perm=[0, 2, 1, 3]),
                    g.op("Concat", g.ints([-1]), g.op("Mul", c, w), axis=0))         # [R*PH, C*W]
        in_batch = g.op("OneHot", batch_indices, g.op("Squeeze", n, g.ints([0])), g.const([0.0, 1.0]), axis=-1)   # [R, N]
        placed = g.op("Mul", g.op("Unsqueeze", a_y, g.ints([2])), g.op("Unsqueeze", in_batch, g.ints([1, 3])))
        placed = g.op("Transpose", g.op("Reshape", placed, g.op("Concat", g.ints([-1]), g.op("Mul", n, h), axis=0)),
                      perm=[1, 0])                                                   # [N*H, R*PH]
        dx = g.op("Reshape", g.op("MatMul", placed, rows), g.op("Concat", n, h, c, w, axis=0))
        return [g.op("Transpose", dx, perm=[0, 2, 1, 3]), None, None]

    # max: each output is the largest weighted tap of any of its samples; its gradient goes there
    def stacked(low, high, w_low, w_high, exists, axes):
        pair = lambda a, b: g.op("Concat", g.op("Unsqueeze", a, g.ints([3])), g.op("Unsqueeze", b, g.ints([3])), axis=3)  # noqa: E731
        return [g.op("Unsqueeze", v, g.ints(axes)) for v in
                (pair(low, high), pair(w_low, w_high), g.op("Unsqueeze", exists, g.ints([3])))]

    # to [R, PH, PW, Gy, 2, Gx, 2]: a sample is (row sample, row tap, column sample, column tap)
    index_y, weight_y, exists_y = stacked(*axes[0][4:], [2, 5, 6])
    index_x, weight_x, exists_x = stacked(*axes[1][4:], [1, 3, 4])
    weight = g.op("Mul", weight_y, weight_x)
    position = g.op("Add", g.op("Mul", index_y, w), index_x)                         # y * W + x
    exists = g.op("Expand", g.op("And", exists_y, exists_x), g.op("Shape", weight))
    flat = g.ints([0, pooled_h, pooled_w, -1])
    weight, position, exists = (g.op("Reshape", v, flat) for v in (weight, position, exists))  # [R, PH, PW, S]
    boxes_batch = g.op("Reshape", g.op("Cast", batch_indices, to=7), g.ints([-1, 1, 1, 1]))
    image = g.op("Reshape", g.op("Transpose", x, perm=[0, 2, 3, 1]),
                 g.op("Concat", n, g.op("Mul", h, w), c, axis=0))                    # [N, H*W, C]
    where = g.op("Concat", g.op("Unsqueeze", g.op("Expand", boxes_batch, g.op("Shape", position)), g.ints([-1])),
                 g.op("Unsqueeze", position, g.ints([-1])), axis=-1)
    values = g.op("Mul", g.op("GatherND", image, where), g.op("Unsqueeze", weight, g.ints([-1])))  # [R,PH,PW,S,C]
    lowest = g.const(float(np.finfo(g.np_float).min))
    values = g.op("Where", g.op("Unsqueeze", exists, g.ints([-1])), values, lowest)
    best = g.op("ArgMax", values, axis=3, keepdims=1)                                # [R, PH, PW, 1, C]
    everywhere = g.op("Shape", values)
    chosen = [g.op("Squeeze", g.op("GatherElements", g.op("Expand", g.op("Unsqueeze", v, g.ints([-1])), everywhere),
                                   best, axis=3), g.ints([3])) for v in (weight, position)]
    update = g.op("Mul", g.op("Transpose", dy, perm=[0, 2, 3, 1]), chosen[0])        # [R, PH, PW, C]
    channel = g.op("Range", g.ints(0), g.op("Squeeze", c, g.ints([0])), g.ints(1))
    flat_index = g.op("Add", g.op("Mul", g.op("Add", g.op("Mul", boxes_batch, g.op("Mul", h, w)), chosen[1]), c),
                      channel)
    size = g.op("ReduceProd", shape, keepdims=1)
    scattered = g.op("ScatterElements", g.op("ConstantOfShape", size, value=numpy_helper.from_array(
        np.zeros(1, g.np_float))), g.op("Reshape", flat_index, g.ints([-1])), g.op("Reshape", update, g.ints([-1])),
        axis=0, reduction="add")
    dx = g.op("Reshape", scattered, g.op("Concat", n, h, w, c, axis=0))
    return [g.op("Transpose", dx, perm=[0, 3, 1, 2]), None, None]
