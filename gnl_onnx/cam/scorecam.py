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
    UpsamplingBilinear2d), shaped [N, K, 1, 1]. The masked images go through the network a chunk
    of channels at a time."""
    def rescore(a: str, layer: Layer) -> str:
        shape = g.shape(image)
        height, width = [d for i, d in enumerate(shape[1:], 1) if i != image_axis]
        k = layer.channels
        item = g.op("Slice", g.op("Shape", image), g.ints([1]), g.ints([4]))
        chunk = scorecam_chunk(k)
        flat_shape = g.op("Concat", g.ints([-1]), item, axis=0)
        # A Loop over chunks of `chunk` channels: each step builds only its own N*chunk masked images
        # (all K at once would hold N*K images: 1.2 GB per image for a 2048-channel layer at 224 px)
        # and runs them through a copy of the forward graph. The layer, the image and the row shape
        # are carried through unchanged: as inputs of the Loop node they order it after their producers.
        iteration, keep, keep_out = g.fresh("chunk_index"), g.fresh("keep_going"), g.fresh("keep_going_out")
        carried = {name: (g.fresh(f"{name}_in"), g.fresh(f"{name}_out")) for name in ("layer", "image", "shape")}
        nodes = []

        def body_op(op_type, *inputs, **attrs):
            out = g.fresh(f"scorecam_{op_type.lower()}")
            nodes.append(helper.make_node(op_type, list(inputs), [out], name=g.fresh(f"scorecam_{op_type}_node"),
                                          **attrs))
            return out

        def body_const(values):  # constants inside the body: prune does not look into bodies
            return body_op("Constant", value=onnx.numpy_helper.from_array(np.asarray(values)))

        layer_in, image_in, shape_in = (carried[n][0] for n in ("layer", "image", "shape"))
        first = body_op("Mul", body_const(np.array([chunk], np.int64)), iteration)
        part = body_op("Slice", layer_in, first, body_op("Add", first, body_const(np.array([chunk], np.int64))),
                       body_const(np.array([1], np.int64)))  # [N, chunk, h, w]
        sizes = body_op("Concat", body_op("Slice", body_op("Shape", part), body_const(np.array([0], np.int64)),
                                          body_const(np.array([2], np.int64))),
                        body_const(np.array([height, width], np.int64)), axis=0)
        up = body_op("Resize", part, "", "", sizes, mode="linear", coordinate_transformation_mode="align_corners")
        spatial = body_const(np.array([2, 3], np.int64))
        low, high = body_op("ReduceMin", up, spatial, keepdims=1), body_op("ReduceMax", up, spatial, keepdims=1)
        masks = body_op("Div", body_op("Sub", up, low),
                        body_op("Add", body_op("Sub", high, low), body_const(np.array(1e-8, np.float32))))
        masks = body_op("Unsqueeze", masks, body_const(np.array([2], np.int64)))  # [N, chunk, 1, H, W]
        if image_axis == 3:
            masks = body_op("Transpose", masks, perm=[0, 1, 3, 4, 2])  # [N, chunk, H, W, 1]
        masked = body_op("Mul", body_op("Unsqueeze", image_in, body_const(np.array([1], np.int64))), masks)
        rows_in = body_op("Reshape", masked, shape_in)  # [N*chunk, *image]
        nodes += [helper.make_node("Identity", [keep], [keep_out])]
        nodes += [helper.make_node("Identity", [inside], [outside]) for inside, outside in carried.values()]
        body = helper.make_graph(nodes, g.fresh("scorecam_chunk"), [
            helper.make_tensor_value_info(iteration, onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info(keep, onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info(layer_in, onnx.TensorProto.FLOAT, None),
            helper.make_tensor_value_info(image_in, onnx.TensorProto.FLOAT, None),
            helper.make_tensor_value_info(shape_in, onnx.TensorProto.INT64, [None])], [])
        chunk_scores = forward_copy(g, points, logits, rows_in, into=body)  # [N*chunk, classes]
        body.output.extend([helper.make_tensor_value_info(keep_out, onnx.TensorProto.BOOL, []),
                            helper.make_tensor_value_info(carried["layer"][1], onnx.TensorProto.FLOAT, None),
                            helper.make_tensor_value_info(carried["image"][1], onnx.TensorProto.FLOAT, None),
                            helper.make_tensor_value_info(carried["shape"][1], onnx.TensorProto.INT64, [None]),
                            helper.make_tensor_value_info(chunk_scores, onnx.TensorProto.FLOAT, None)])
        stacked = g.op("Loop", g.ints(k // chunk), "", a, image, flat_shape, body=body, outputs=4,
                       name="scorecam_loop")[3]  # [K/chunk, N*chunk, classes]
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
