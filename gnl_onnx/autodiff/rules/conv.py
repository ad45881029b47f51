"""Convolution. The input gradient is a transposed convolution with the forward weights; it is
written as ConvTranspose without output_padding followed by an explicit crop/pad, which sidesteps
runtime bugs with asymmetric pads and auto_pad (see ONNX-NOTES.md)."""
from __future__ import annotations

import math

import numpy as np


from ...errors import UnsupportedModelError
from .registry import rule

# Strided input gradients as s*s stride-1 Convs + DepthToSpace (subpixel_spread) instead of
# ConvTranspose. Off: on ONNX Runtime CPU the interleave (DepthToSpace, Concat) costs more than the
# ConvTranspose it replaces (docs/performance.md, issue 16); not measured on CUDA.
SUBPIXEL = False


def explicit_pads(auto_pad, in_sizes, kernel, strides, dilations, pads):
    """(begin, end) pads per spatial axis, with auto_pad resolved against the known input sizes."""
    n = len(in_sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            small = total // 2
            first = small if auto_pad == "SAME_UPPER" else total - small
            begin.append(first)
            end.append(total - first)
        return begin, end
    if auto_pad == "VALID" or not pads:
        return [0] * n, [0] * n
    return list(pads[:n]), list(pads[n:])


def transposed_kernel(g, weight, group):
    """Conv weights [Cout, Cin/g, *k] -> the weights of the transposed convolution written as a
    Conv: [Cin, Cout/g, *k], each group's in/out channels swapped and the kernel flipped. Built in
    numpy when the weight is a constant (ONNX Runtime does not always fold the ops), else from ops."""
    known = g.constants.get(weight)
    shape = known.shape if known is not None else g.static_shape(weight, "Conv weight")
    if len(shape) < 3 or shape[0] % group:
        raise UnsupportedModelError({f"Conv with weights of shape {list(shape)} and group {group}": [weight]})
    cout, cin_g, kernel = shape[0], shape[1], list(shape[2:])
    if known is not None:
        w = known.reshape(group, cout // group, cin_g, *kernel).swapaxes(1, 2)
        flip = (slice(None), slice(None)) + (slice(None, None, -1),) * len(kernel)
        w = w.reshape(group * cin_g, cout // group, *kernel)[flip]
        return g.const(np.ascontiguousarray(w), dtype=known.dtype, name=f"{weight}_transposed")
    w = g.op("Reshape", weight, g.ints([group, cout // group, cin_g, *kernel]))
    w = g.op("Transpose", w, perm=[0, 2, 1, *range(3, 3 + len(kernel))])
    w = g.op("Reshape", w, g.ints([group * cin_g, cout // group, *kernel]))
    axes = list(range(2, 2 + len(kernel)))
    return g.op("Slice", w, g.ints([-1] * len(axes)), g.ints([-(2 ** 62)] * len(axes)), g.ints(axes),
                g.ints([-1] * len(axes)))


def subpixel_plan(in_sizes, out_sizes, kernel, strides, dilations, begin):
    """The sub-pixel decomposition of a strided window's transpose, per spatial axis, or None where
    it does not apply (not 2-D, unequal strides, dilation, a phase without taps, negative pads).

    With stride s, input position i = m*s + r (phase r) receives sum_t w[p + t*s] dy[m + q - t],
    where r + begin = q*s + p: a stride-1 correlation of dy with the taps p, p+s, ... reversed.
    Per axis and phase r: (p, taps, pad_begin, pad_end), every phase M = ceil(in/s) long."""
    if len(in_sizes) != 2 or len(set(strides)) != 1 or strides[0] < 2 or any(d != 1 for d in dilations):
        return None
    s = strides[0]
    plan = []
    for size, out, k, b in zip(in_sizes, out_sizes, kernel, begin):
        m, phases = -(-size // s), []
        for r in range(s):
            q, p = divmod(r + b, s)
            taps = -(-(k - p) // s) if p < k else 0
            pad_begin = taps - 1 - q
            pad_end = m - out - pad_begin + taps - 1
            if taps == 0 or pad_begin < 0 or pad_end < 0:
                return None
            phases.append((p, taps, pad_begin, pad_end))
        plan.append(phases)
    return plan


def subpixel_spread(g, dy, weight, in_sizes, out_sizes, kernel, strides, dilations, begin, group=1):
    """Input gradient of a stride-s Conv as s*s stride-1 Convs, one per output phase, each with its
    sub-kernel (every s-th tap, flipped), concatenated phase-major and interleaved by DepthToSpace
    (DCR: channel block rh*s + rw lands at row offset rh, column offset rw), then cropped to the
    input. ONNX Runtime runs these Convs in its NCHWc layout (depthwise ones with its depthwise
    kernel); ConvTranspose has neither. None where the plan does not apply or the weights are not
    constants (the caller then takes the ConvTranspose path)."""
    known = g.constants.get(weight)
    plan = subpixel_plan(in_sizes, out_sizes, kernel, strides, dilations, begin)
    if known is None or plan is None or known.ndim != 4 or known.shape[0] % group:
        return None
    s = strides[0]
    cout, cin_g = known.shape[:2]
    # [Cout, Cin/g, kh, kw] -> [Cin, Cout/g, kh, kw]: each group's in/out channels swapped
    swapped = known.reshape(group, cout // group, cin_g, *kernel).swapaxes(1, 2)
    swapped = swapped.reshape(group * cin_g, cout // group, *kernel)
    phases = []
    for rh, (ph, th, bh, eh) in enumerate(plan[0]):
        for rw, (pw, tw, bw, ew) in enumerate(plan[1]):
            sub = np.ascontiguousarray(swapped[:, :, ph::s, pw::s][:, :, ::-1, ::-1])
            assert sub.shape[2:] == (th, tw)
            w = g.const(sub, dtype=known.dtype, name=f"{weight}_phase{rh}{rw}")
            phases.append(g.op("Conv", dy, w, kernel_shape=[th, tw], group=group, pads=[bh, bw, eh, ew]))
    dx = g.op("DepthToSpace", g.op("Concat", *phases, axis=1), blocksize=s, mode="DCR")
    full = [-(-size // s) * s for size in in_sizes]
    if full != list(in_sizes):
        dx = g.op("Slice", dx, g.ints([0, 0]), g.ints(list(in_sizes)), g.ints([2, 3]))
    return dx


def spread_back(g, dy, weight, in_sizes, out_sizes, kernel, strides, dilations, begin, group=1,
                subpixel=False):
    """Transpose of a strided, dilated, padded sliding window with weights `weight`: map dy (spatial
    sizes out_sizes) back to the unpadded input (spatial sizes in_sizes). subpixel: strided windows
    with constant weights as stride-1 Convs + DepthToSpace where the geometry allows it."""
    if subpixel and SUBPIXEL and any(s > 1 for s in strides):
        dx = subpixel_spread(g, dy, weight, in_sizes, out_sizes, kernel, strides, dilations, begin, group)
        if dx is not None:
            return dx
    if all(s == 1 for s in strides):
        # Stride 1: a Conv with the transposed kernel. ONNX Runtime runs Conv in its blocked NCHWc
        # layout (and depthwise Conv with a dedicated kernel), ConvTranspose not.
        pad_begin = [(k - 1) * d - b for k, d, b in zip(kernel, dilations, begin)]
        pad_end = [i - o + b for i, o, b in zip(in_sizes, out_sizes, begin)]
        if min(pad_begin + pad_end) >= 0:
            return g.op("Conv", dy, transposed_kernel(g, weight, group), kernel_shape=list(kernel),
                        dilations=list(dilations), group=group, pads=pad_begin + pad_end)
    spans = [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(out_sizes, strides, kernel, dilations)]
    crop_begin = list(begin)
    crop_end = [span - b - size for span, b, size in zip(spans, begin, in_sizes)]  # < 0: pad zeros
    shared = [max(0, min(b, e)) for b, e in zip(crop_begin, crop_end)]  # symmetric part, done by the op
    dx = g.op("ConvTranspose", dy, weight, kernel_shape=list(kernel), strides=list(strides),
              dilations=list(dilations), group=group, pads=shared + shared)
    rest_begin = [b - s for b, s in zip(crop_begin, shared)]
    rest_end = [e - s for e, s in zip(crop_end, shared)]
    axes = list(range(2, 2 + len(in_sizes)))
    if any(rest_begin) or any(e > 0 for e in rest_end):
        lengths = [span - 2 * s for span, s in zip(spans, shared)]
        ends = [length - max(e, 0) for length, e in zip(lengths, rest_end)]
        dx = g.op("Slice", dx, g.ints(rest_begin), g.ints(ends), g.ints(axes))
    if any(e < 0 for e in rest_end):
        zeros = [0] * len(in_sizes)
        dx = g.op("Pad", dx, g.ints([0, 0] + zeros + [0, 0] + [max(-e, 0) for e in rest_end]))
    return dx


def window_geometry(g, node, kernel):
    """Input/output spatial sizes, strides, dilations and explicit begin pads of a windowed op."""
    x, y = node.inputs[0], node.outputs[0]
    rank = g.rank(x)
    if rank is None or rank < 3:
        raise UnsupportedModelError({f"{node.op} (unknown rank)": [node.name]},
                                    hint="export the model with a fixed image size")
    spatial = list(range(2, rank))
    in_sizes = g.static_dims(x, spatial, node.op)
    out_sizes = g.static_dims(y, spatial, node.op)
    n = len(spatial)
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    begin, end = explicit_pads(node.attr("auto_pad", "NOTSET"), in_sizes, kernel, strides, dilations,
                               node.attr("pads"))
    return in_sizes, out_sizes, strides, dilations, begin, end


def fixed_weight(g, node):
    """(weight, kernel sizes) of a Conv or ConvTranspose, whose weight must not depend on the image."""
    weight = node.inputs[1]
    if g.wants(weight):
        raise UnsupportedModelError({f"{node.op} with weights computed from the image": [node.name]})
    return weight, node.attr("kernel_shape") or list(g.static_shape(weight, f"{node.op} weight")[2:])


@rule("Conv")
def conv(g, node, dy):
    weight, kernel = fixed_weight(g, node)
    in_sizes, out_sizes, strides, dilations, begin, _ = window_geometry(g, node, kernel)
    return [spread_back(g, dy, weight, in_sizes, out_sizes, kernel, strides, dilations, begin,
                        group=node.attr("group", 1), subpixel=True)]


def transposed_pads(auto_pad, in_sizes, out_sizes, kernel, strides, dilations, pads, output_padding):
    """(begin, end) crops of a ConvTranspose per spatial axis: its pads, or (auto_pad SAME_*, or an
    output_shape attribute) the crop of the full output down to the output's size, split as the
    spec says (SAME_UPPER: the smaller half first)."""
    n = len(in_sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") or not pads or auto_pad == "VALID":
        begin, end = [], []
        for size, out, k, s, d, extra in zip(in_sizes, out_sizes, kernel, strides, dilations, output_padding):
            total = s * (size - 1) + extra + (k - 1) * d + 1 - out
            if auto_pad == "VALID" or (auto_pad not in ("SAME_UPPER", "SAME_LOWER") and total == 0):
                total = 0
            first = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(first)
            end.append(total - first)
        return begin, end
    return list(pads[:n]), list(pads[n:])


@rule("ConvTranspose")
def conv_transpose(g, node, dy):
    # y = ConvTranspose(x, W) is the transpose of the Conv with the same W ([C, M/group, *k] read as a
    # Conv weight maps M channels to C), strides, dilations and group: dx = Conv(dy, W), padded by
    # the forward's begin crop; the output_padding rows at the end got nothing from x and are skipped.
    weight, kernel = fixed_weight(g, node)
    x, y = node.inputs[0], node.outputs[0]
    rank = g.rank(x)
    if rank is None or rank < 3:
        raise UnsupportedModelError({f"{node.op} (unknown rank)": [node.name]},
                                    hint="export the model with a fixed image size")
    spatial = list(range(2, rank))
    in_sizes, out_sizes = g.static_dims(x, spatial, node.op), g.static_dims(y, spatial, node.op)
    n = len(spatial)
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    output_padding = node.attr("output_padding") or [0] * n
    begin, _ = transposed_pads(node.attr("auto_pad", "NOTSET"), in_sizes, out_sizes, kernel, strides, dilations,
                               node.attr("pads"), output_padding)
    if min(begin) < 0:
        raise UnsupportedModelError({"ConvTranspose with an output larger than its full extent": [node.name]})
    # pad the end so that the windows cover the rows x reached; windows past them are dropped below
    end = [max(0, s * (i - 1) + (k - 1) * d + 1 - o - b)
           for i, o, k, s, d, b in zip(in_sizes, out_sizes, kernel, strides, dilations, begin)]
    dx = g.op("Conv", dy, weight, kernel_shape=list(kernel), strides=list(strides), dilations=list(dilations),
              group=node.attr("group", 1), pads=begin + end)
    got = [(o + b + e - (k - 1) * d - 1) // s + 1
           for o, b, e, k, s, d in zip(out_sizes, begin, end, kernel, strides, dilations)]
    if got != list(in_sizes):
        dx = g.op("Slice", dx, g.ints([0] * n), g.ints(list(in_sizes)), g.ints(spatial))
    return [dx]
