"""Normalizations. Inference BatchNormalization with constant statistics never reaches here (it is
folded or rewritten during normalization)."""
from __future__ import annotations

import numpy as np

from .registry import rule


@rule("BatchNormalization")
def batch_normalization(g, node, dy):
    # Inference mode with statistics computed at run time: still affine per channel.
    x, scale, _, _, var = node.inputs[:5]
    std = g.op("Sqrt", g.op("Add", var, g.const(node.attr("epsilon", 1e-5))))
    factor = g.op("Div", scale, std)
    per_channel = g.op("Unsqueeze", factor, g.ints(list(range(1, g.rank(x) - 1))))
    return [g.op("Mul", dy, per_channel)]


@rule("LayerNormalization")
def layer_normalization(g, node, dy):
    # dx = r * (dz - mean(dz) - z * mean(dz * z)), z the normalized input, dz = dy * scale, r = 1/std;
    # the forward node's optional Mean and InvStdDev outputs give what it already computed.
    x, scale = node.inputs[0], node.inputs[1]
    rank = g.rank(x)
    axes = g.ints(list(range(node.attr("axis", -1) % rank, rank)))
    mean = g.forward_output(node, 1, f"{node.outputs[0]}_mean")
    inv_std = g.forward_output(node, 2, f"{node.outputs[0]}_invstd")
    elem = g.elem_type(x) or g.float_type
    if elem != node.attr("stash_type", 1):  # statistics are kept in the stash type (float32)
        mean, inv_std = g.op("Cast", mean, to=elem), g.op("Cast", inv_std, to=elem)
    z = g.op("Mul", g.op("Sub", x, mean), inv_std)
    dz = g.op("Mul", dy, scale)
    mean_dz = g.op("ReduceMean", dz, axes, keepdims=1)
    mean_dz_z = g.op("ReduceMean", g.op("Mul", dz, z), axes, keepdims=1)
    centred = g.op("Sub", g.op("Sub", dz, mean_dz), g.op("Mul", z, mean_dz_z))
    return [g.op("Mul", centred, inv_std)]


def _channel_window_sum(g, value, size, before, after):
    """Sum over a window of channels [c - before, c + after], as a 3-D convolution over (C, H, W)."""
    stacked = g.op("Unsqueeze", value, g.ints([1]))
    kernel = g.const(np.ones((1, 1, size, 1, 1)))
    summed = g.op("Conv", stacked, kernel, kernel_shape=[size, 1, 1], pads=[before, 0, 0, after, 0, 0])
    return g.op("Squeeze", summed, g.ints([1]))


@rule("LRN")
def lrn(g, node, dy):
    # y = x s^-b, s = bias + alpha/size * sum_window x^2: the window couples neighbouring channels.
    x = node.inputs[0]
    size, alpha = node.attr("size"), node.attr("alpha", 1e-4)
    beta, bias = node.attr("beta", 0.75), node.attr("bias", 1.0)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    s = g.op("Add", g.const(bias), g.op("Mul", g.const(alpha / size),
                                         _channel_window_sum(g, g.op("Mul", x, x), size, before, after)))
    s_beta = g.op("Pow", s, g.const(-beta))
    direct = g.op("Mul", dy, s_beta)
    # each channel appears in the windows of its neighbours: sum over the mirrored window
    coupled = g.op("Div", g.op("Mul", g.op("Mul", dy, x), s_beta), s)
    cross = _channel_window_sum(g, coupled, size, after, before)
    return [g.op("Sub", direct, g.op("Mul", g.const(2 * alpha * beta / size), g.op("Mul", x, cross)))]


@rule("InstanceNormalization")
def instance_normalization(g, node, dy):
    # per image and channel over the spatial axes: dx = r (dz - mean(dz) - z mean(dz z)), dz = dy * scale
    x, scale = node.inputs[0], node.inputs[1]
    rank = g.rank(x)
    spatial = g.ints(list(range(2, rank)))
    channel = g.op("Unsqueeze", scale, g.ints(list(range(1, rank - 1))))
    centred = g.op("Sub", x, g.op("ReduceMean", x, spatial, keepdims=1))
    variance = g.op("ReduceMean", g.op("Mul", centred, centred), spatial, keepdims=1)
    inv_std = g.op("Reciprocal", g.op("Sqrt", g.op("Add", variance, g.const(node.attr("epsilon", 1e-5)))))
    z = g.op("Mul", centred, inv_std)
    dz = g.op("Mul", dy, channel)
    mean_dz = g.op("ReduceMean", dz, spatial, keepdims=1)
    mean_dz_z = g.op("ReduceMean", g.op("Mul", dz, z), spatial, keepdims=1)
    return [g.op("Mul", g.op("Sub", g.op("Sub", dz, mean_dz), g.op("Mul", z, mean_dz_z)), inv_std), None, None]
