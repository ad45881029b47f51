"""Pooling. Averages spread the gradient evenly over each window (a transposed convolution with
an all-ones kernel); max pooling routes it to the element each window selected."""
from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ...errors import UnsupportedModelError
from .registry import rule
from .conv import spread_back, window_geometry


def window_counts(size, out, kernel, stride, dilation, begin, end, include_pad):
    """How many input (or padded) positions each output window of one axis covers."""
    low, high = (-begin, size + end) if include_pad else (0, size)
    starts = np.arange(out) * stride - begin
    taps = starts[:, None] + np.arange(kernel)[None, :] * dilation
    return ((taps >= low) & (taps < high)).sum(axis=1)


@rule("AveragePool")
def average_pool(g, node, dy):
    kernel = node.attr("kernel_shape")
    in_sizes, out_sizes, strides, dilations, begin, end = window_geometry(g, node, kernel)
    include_pad = node.attr("count_include_pad", 0)
    divisor = np.ones(out_sizes)
    for axis, args in enumerate(zip(in_sizes, out_sizes, kernel, strides, dilations, begin, end)):
        counts = window_counts(*args, include_pad).astype(np.float64)
        divisor = divisor * counts.reshape([-1 if a == axis else 1 for a in range(len(out_sizes))])
    uniform = np.all(divisor == divisor.flat[0])
    scaled = g.op("Mul", dy, g.const(1.0 / divisor.flat[0] if uniform else 1.0 / divisor))
    # Every channel alike: fold channels into the batch and spread with one all-ones kernel.
    single = g.op("Reshape", scaled, g.ints([-1, 1] + list(out_sizes)))
    ones = g.const(np.ones([1, 1] + list(kernel)))
    dx = spread_back(g, single, ones, in_sizes, out_sizes, kernel, strides, dilations, begin)
    return [g.reshape_like(dx, node.inputs[0])]


@rule("GlobalAveragePool")
def global_average_pool(g, node, dy):
    x = node.inputs[0]
    rank = g.rank(x)
    if rank is None or rank < 3:
        raise UnsupportedModelError({f"{node.op} (unknown rank)": [node.name]},
                                    hint="export the model with a fixed image size")
    area = int(np.prod(g.static_dims(x, range(2, rank), node.op)))
    return [g.op("Expand", g.op("Mul", dy, g.const(1.0 / area)), g.runtime_shape(x))]


@rule("GlobalMaxPool")
def global_max_pool(g, node, dy):
    x = node.inputs[0]
    return [g.op("Where", g.op("Equal", x, node.outputs[0]), dy, g.const(0.0))]


@rule("MaxPool")
def max_pool(g, node, dy):
    # Route dy to the selected elements through the forward pass's own Indices (flat over N,C,H,W).
    if node.attr("storage_order", 0):
        if len([o for o in node.outputs if o]) < 2:  # nobody reads Indices yet: use row-major ones
            node.proto.attribute.remove(next(a for a in node.proto.attribute if a.name == "storage_order"))
        else:
            raise UnsupportedModelError({"MaxPool (column-major Indices)": [node.name]})
    x = node.inputs[0]
    indices = g.forward_output(node, 1, f"{node.outputs[0]}_indices")
    flat = g.ints([-1])
    total = g.op("Reshape", g.op("Size", x), g.ints([1]))
    zeros = g.op("ConstantOfShape", total, value=numpy_helper.from_array(np.zeros(1, g.np_float)))
    routed = g.op("ScatterElements", zeros, g.op("Reshape", indices, flat), g.op("Reshape", dy, flat),
                  axis=0, reduction="add")
    return [g.reshape_like(routed, x)]
