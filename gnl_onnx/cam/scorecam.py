"""Score-CAM: the image masked by each upsampled channel of the layer, scored by a copy of the
forward graph inside an ONNX Loop, a chunk of channels per step."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..graph import GraphBuilder
from .locate import Layer


def forward_copy(g: GraphBuilder, start: str, end: str, new_start: str, into: onnx.GraphProto | None = None) -> str:
    """Clone the nodes computing `end` from `start` with fresh value names, fed by `new_start`,
    into `into` (default: the graph itself; a Loop body reads the weights and the values that do
    not depend on `start` from the outer graph); return the clone of `end`."""
    nodes = list(g.graph.node)
    depends = {start}
    for node in nodes:
        if any(i in depends for i in node.input):
            depends.update(o for o in node.output if o)
    needed, chosen = {end}, []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            needed.update(i for i in node.input if i)
            if any(o in depends for o in node.output):
                chosen.append(node)
    renamed = {start: new_start}
    for node in reversed(chosen):
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = g.fresh(f"scorecam/{node.name or node.op_type}")
        for i, name in enumerate(copy.input):
            copy.input[i] = renamed.get(name, name)
        for i, name in enumerate(copy.output):
            if name:
                renamed[name] = copy.output[i] = g.fresh(f"scorecam/{name}")
        (g.graph if into is None else into).node.append(copy)
    return renamed[end]


def scorecam_rescore(g: GraphBuilder, image: str, image_axis: int, points: str, logits: str, target: str):
    """A function a (the layer at the images, NCHW [N, K, h, w]) -> softmax_k of the target's score
    on the image times the k-th min-max scaled mask upsampled (bilinear, align_corners as torch's
    UpsamplingBilinear2d), shaped [N, K, 1, 1]. All N*K masked images go through the network as
    one batch."""
    def rescore(a: str, layer: Layer) -> str:
        shape = g.shape(image)
        height, width = [d for i, d in enumerate(shape[1:], 1) if i != image_axis]
        k = layer.channels
        sizes = g.op("Concat", g.op("Slice", g.op("Shape", a), g.ints([0]), g.ints([2])), g.ints([height, width]),
                     axis=0)
        up = g.op("Resize", a, "", "", sizes, mode="linear", coordinate_transformation_mode="align_corners",
                  name="scorecam_masks")
        low = g.op("ReduceMin", up, g.ints([2, 3]), keepdims=1)
        high = g.op("ReduceMax", up, g.ints([2, 3]), keepdims=1)
        masks = g.op("Div", g.op("Sub", up, low), g.op("Add", g.op("Sub", high, low), g.const(np.float32(1e-8))))
        masks = g.op("Unsqueeze", masks, g.ints([2]))  # [N, K, 1, H, W]
        if image_axis == 3:
            masks = g.op("Transpose", masks, perm=[0, 1, 3, 4, 2])  # [N, K, H, W, 1]
        masked = g.op("Mul", g.op("Unsqueeze", image, g.ints([1])), masks)  # [N, K, *image]
        item = g.op("Slice", g.op("Shape", image), g.ints([1]), g.ints([4]))
        chunk = scorecam_chunk(k)
        # a Loop over chunks of `chunk` channels: N*chunk masked images per forward pass
        iteration, keep, keep_out = g.fresh("chunk_index"), g.fresh("keep_going"), g.fresh("keep_going_out")
        first, flat_shape = g.fresh("chunk_start"), g.op("Concat", g.ints([-1]), item, axis=0)
        size, one = g.fresh("chunk_size"), g.fresh("one")  # constants inside the body (prune sees no body)
        last, part, rows_in = g.fresh("chunk_end"), g.fresh("chunk"), g.fresh("chunk_rows")
        # the masked images and their row shape are carried through the loop unchanged: as explicit
        # inputs of the Loop node, they order it after their producers
        masked_in, masked_out, shape_in, shape_out = (g.fresh(n) for n in ("masked_in", "masked_out", "shape_in",
                                                                             "shape_out"))
        body = helper.make_graph([
            helper.make_node("Constant", [], [size], value=onnx.numpy_helper.from_array(np.array([chunk], np.int64))),
            helper.make_node("Constant", [], [one], value=onnx.numpy_helper.from_array(np.array([1], np.int64))),
            helper.make_node("Mul", [size, iteration], [first]),
            helper.make_node("Add", [first, size], [last]),
            helper.make_node("Slice", [masked_in, first, last, one], [part]),
            helper.make_node("Reshape", [part, shape_in], [rows_in]),
            helper.make_node("Identity", [keep], [keep_out]),
            helper.make_node("Identity", [masked_in], [masked_out]),
            helper.make_node("Identity", [shape_in], [shape_out])], g.fresh("scorecam_chunk"),
            [helper.make_tensor_value_info(iteration, onnx.TensorProto.INT64, []),
             helper.make_tensor_value_info(keep, onnx.TensorProto.BOOL, []),
             helper.make_tensor_value_info(masked_in, onnx.TensorProto.FLOAT, None),
             helper.make_tensor_value_info(shape_in, onnx.TensorProto.INT64, [None])], [])
        chunk_scores = forward_copy(g, points, logits, rows_in, into=body)  # [N*chunk, classes]
        body.output.extend([helper.make_tensor_value_info(keep_out, onnx.TensorProto.BOOL, []),
                            helper.make_tensor_value_info(masked_out, onnx.TensorProto.FLOAT, None),
                            helper.make_tensor_value_info(shape_out, onnx.TensorProto.INT64, [None]),
                            helper.make_tensor_value_info(chunk_scores, onnx.TensorProto.FLOAT, None)])
        stacked = g.op("Loop", g.ints(k // chunk), "", masked, flat_shape, body=body, outputs=3,
                       name="scorecam_loop")[2]  # [K/chunk, N*chunk, classes]
        classes = g.op("Slice", g.op("Shape", stacked), g.ints([2]), g.ints([3]))
        scores = g.op("Reshape", stacked, g.op("Concat", g.ints([k // chunk, -1, chunk]), classes, axis=0))
        scores = g.op("Reshape", g.op("Transpose", scores, perm=[1, 0, 2, 3]),
                      g.op("Concat", g.ints([-1, k]), classes, axis=0))  # [N, K, classes]
        index = g.op("Expand", g.op("Reshape", target, g.ints([-1, 1, 1])),
                     g.op("Concat", g.op("Slice", g.op("Shape", scores), g.ints([0]), g.ints([2])), g.ints([1]),
                          axis=0))
        picked = g.op("GatherElements", scores, index, axis=2)  # [N, K, 1]
        weights = g.op("Softmax", picked, axis=1)
        return g.op("Unsqueeze", weights, g.ints([3]))
    return rescore


def scorecam_chunk(channels: int, most: int = 32) -> int:
    """Channels per forward pass of Score-CAM's loop: the largest divisor of K up to `most`."""
    return max(d for d in range(1, min(most, channels) + 1) if channels % d == 0)
