"""Class activation maps as ONNX graphs: where the target layer is (the locator), and the CAM part
of an attribution graph (weights per channel, the map, ReLU, bilinear upsampling), from standard
ONNX ops only.

Definitions follow pytorch-grad-cam 1.5.7 (PyPI `grad-cam`), with A a layer's activation
[N, K, h, w] at the image and g = dY/dA (the plain gradient of the explained score):

    gradcam      w_k = mean_ij g                         map = sum_k w_k A_k
    gradcam_pp   w_k = sum_ij relu(g) a,  a = g^2 / (2 g^2 + sum_ij(A) g^3 + 1e-6)  (0 where g = 0)
    hirescam     map = sum_k g_k * A_k
    xgradcam     w_k = sum_ij g A / (sum_ij A + 1e-7)
    layercam     map = sum_k relu(g_k) * A_k
    eigencam     map = the centred A (pixels x channels) projected on its first principal component
    scorecam     w = softmax_k(score of the image masked by the min-max scaled, upsampled A_k)

then map = resize_bilinear(relu(map)) to the image's height and width (cv2's INTER_LINEAR, i.e.
ONNX Resize linear with half_pixel coordinates). Several layers: each layer's map is min-max
scaled (x - min) / (max + 1e-7) per image before upsampling and the upsampled maps are averaged, as
the anchor aggregates; one layer: the raw map. guided_gradcam and gnl_gradcam multiply guided backprop or
GNL-IG by the Grad-CAM map.

The map [N, 1, H, W] ([N, H, W, 1] for NHWC images) is broadcast to the image's shape, so the
attribution output keeps the image's shape for every method: each channel holds the map."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .errors import UsageError
from .graph import GraphBuilder

# name: (rule of the input gradient, factor, path, summary, cam, the gradient part is used)
CAM_METHODS = {
    "gradcam": ("plain", "none", "image", "Grad-CAM (Selvaraju et al.): the target layer's channels weighted "
                "by their mean gradient, ReLU, upsampled", "gradcam", False),
    "gradcam_pp": ("plain", "none", "image", "Grad-CAM++ (Chattopadhyay et al.): channel weights from "
                   "positive gradients and second/third-order alphas", "gradcam_pp", False),
    "hirescam": ("plain", "none", "image", "HiResCAM (Draelos and Carin): the sum over channels of gradient "
                 "times activation, per position", "hirescam", False),
    "xgradcam": ("plain", "none", "image", "XGradCAM (Fu et al.): channels weighted by the activation-"
                 "normalized sum of gradient times activation", "xgradcam", False),
    "layercam": ("plain", "none", "image", "LayerCAM (Jiang et al.): the sum over channels of the positive "
                 "gradient times activation", "layercam", False),
    "eigencam": ("plain", "none", "image", "Eigen-CAM (Muhammad and Yeasin): the layer's first principal "
                 "component (no gradient; power iteration in the graph)", "eigencam", False),
    "scorecam": ("plain", "none", "image", "Score-CAM (Wang et al.): channels weighted by the softmax of the "
                 "scores of the image masked by each upsampled channel (forward passes only)", "scorecam", False),
    "guided_gradcam": ("guided", "none", "image", "Guided Grad-CAM: guided backprop times the upsampled "
                       "Grad-CAM map", "gradcam", True),
    "gnl_gradcam": ("guided", "delta", "line", "GNL-IG times the upsampled Grad-CAM map", "gradcam", True),
}
NCHW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
            "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN"}
FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
POWER_SQUARINGS = 24  # eigencam: the covariance raised to the power 2^24 (see _first_component)


@dataclass(frozen=True)
class Layer:
    name: str
    shape: tuple          # as declared/inferred (batch may be symbolic)
    channel_axis: int     # 1 (NCHW) or 3 (NHWC)

    @property
    def layout(self) -> str:
        return "NCHW" if self.channel_axis == 1 else "NHWC"

    @property
    def spatial(self) -> tuple:
        return tuple(d for i, d in enumerate(self.shape[1:], 1) if i != self.channel_axis)

    @property
    def channels(self):
        return self.shape[self.channel_axis]

    def describe(self) -> str:
        dims = ", ".join("N" if i == 0 else str(d) for i, d in enumerate(self.shape))
        return f"{self.name} [{dims}] {self.layout}"


def channel_axes(builder: GraphBuilder, nodes) -> dict[str, int]:
    """The channel axis of 4-D values, where the graph tells: inputs and outputs of NCHW ops
    (Conv, pooling, normalization) have it at 1; Transpose moves it; ops whose 4-D output has the
    shape of a 4-D input keep it. Propagated forwards and backwards until nothing changes."""
    axes: dict[str, int] = {}
    four_d = lambda v: v and builder.rank(v) == 4  # noqa: E731
    for node in nodes:
        if node.op_type in NCHW_OPS:
            for v in (node.input[0], node.output[0]):
                if four_d(v):
                    axes[v] = 1
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [3, 2, 1, 0])
                src, dst = node.input[0], node.output[0]
                if src in axes and dst not in axes and len(perm) == 4:
                    axes[dst] = perm.index(axes[src])
                    changed = True
                elif dst in axes and src not in axes and len(perm) == 4:
                    axes[src] = perm[axes[dst]]
                    changed = True
                continue
            outs = [o for o in node.output if four_d(o)]
            ins = [i for i in node.input if four_d(i)]
            for o in outs:
                for i in ins:
                    if builder.shape(i) == builder.shape(o):
                        if i in axes and o not in axes:
                            axes[o] = axes[i]
                            changed = True
                        elif o in axes and i not in axes:
                            axes[i] = axes[o]
                            changed = True
    return axes


def _guess_axis(shape) -> int:
    """Without a hint from the graph: channels last when the middle two dims look spatial."""
    return 3 if shape[1] == shape[2] and shape[3] != shape[1] else 1


def image_channel_axis(builder: GraphBuilder, nodes, x: str) -> int:
    axis = channel_axes(builder, nodes).get(x)
    return axis if axis is not None else _guess_axis(builder.shape(x))


def layer_candidates(builder: GraphBuilder, path, active: set[str], x: str) -> list[Layer]:
    """4-D float values with static non-batch dims on the path from the image to the output, in
    graph order."""
    axes = channel_axes(builder, list(builder.graph.node))
    found, seen = [], set()
    for node in path:
        for v in node.output:
            if not v or v in seen or v == x or v not in active or builder.elem_type(v) not in FLOAT:
                continue
            shape = builder.shape(v)
            if shape is None or len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
                continue
            seen.add(v)
            axis = axes.get(v, _guess_axis(shape))
            if axis in (1, 3):
                found.append(Layer(v, shape, axis))
    return found


def default_layer(builder: GraphBuilder, candidates: list[Layer]) -> Layer | None:
    """torchcam's rule on the graph: the last candidate whose spatial size is above 1 (later
    values are globally pooled, flattened or 1x1). A pooling that keeps the shape (an adaptive
    average pool to the same size, exported as a 1x1 AveragePool) is stepped over: its input is
    the layer the network computed."""
    chosen = next((c for c in reversed(candidates) if any(d > 1 for d in c.spatial)), None)
    by_name = {c.name: c for c in candidates}
    producers = {o: n for n in builder.graph.node for o in n.output}
    while chosen is not None:
        node = producers.get(chosen.name)
        if node is None or node.op_type not in ("AveragePool", "MaxPool", "Identity", "Resize"):
            break
        source = by_name.get(node.input[0])
        if source is None or source.shape != chosen.shape:
            break
        chosen = source
    return chosen


def locate_layers(builder: GraphBuilder, path, active: set[str], x: str, names=None) -> tuple[list[Layer], list[Layer]]:
    """The layers to use (the default one, or the named ones checked) and all candidates."""
    candidates = layer_candidates(builder, path, active, x)
    by_name = {c.name: c for c in candidates}
    shown = candidates[-12:]  # the deepest ones: where class activation maps are usually taken
    listed = "; ".join(c.describe() for c in shown) or "none"
    if len(candidates) > len(shown):
        listed += f" (and {len(candidates) - len(shown)} earlier ones: gnl-onnx inspect lists them all)"
    if not names:
        chosen = default_layer(builder, candidates)
        if chosen is None:
            raise UsageError("the model has no 4-D activation with a spatial size above 1 between the image and "
                             f"the output, so there is no layer for a class activation map (candidates: {listed})")
        return [chosen], candidates
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        if name not in by_name:
            raise UsageError(f"layer '{name}' is not a 4-D float value on the path from the image to the output; "
                             f"candidates: {listed}")
    return [by_name[n] for n in dict.fromkeys(names)], candidates


# ---- the CAM part of the attribution graph

def _to_nchw(g: GraphBuilder, value: str, layer: Layer) -> str:
    return value if layer.channel_axis == 1 else g.op("Transpose", value, perm=[0, 3, 1, 2], name="cam_nchw")


def _image_rows(g: GraphBuilder, value: str, rows: str) -> str:
    """The last N rows of a batch of S*N path rows followed by the N images."""
    return g.op("Slice", value, rows, g.ints([np.iinfo(np.int64).max]), g.ints([0]), name="at_image")


def _sum_hw(g, v, keepdims=1):
    return g.op("ReduceSum", v, g.ints([2, 3]), keepdims=keepdims)


def _eps(g, value):
    return g.const(np.float32(value))


def _channel_map(g: GraphBuilder, kind: str, a: str, grad: str | None, layer: Layer, rows: str,
                 rescore) -> str:
    """The raw map [N, 1, h, w] of one layer (before ReLU)."""
    a = _to_nchw(g, _image_rows(g, a, rows), layer)
    grad = None if grad is None else _to_nchw(g, _image_rows(g, grad, rows), layer)
    channel_sum = lambda v: g.op("ReduceSum", v, g.ints([1]), keepdims=1, name="cam")  # noqa: E731
    if kind == "gradcam":
        return channel_sum(g.op("Mul", g.op("ReduceMean", grad, g.ints([2, 3]), keepdims=1), a))
    if kind == "hirescam":
        return channel_sum(g.op("Mul", grad, a))
    if kind == "layercam":
        return channel_sum(g.op("Mul", g.op("Relu", grad), a))
    if kind == "xgradcam":
        weights = _sum_hw(g, g.op("Div", g.op("Mul", grad, a), g.op("Add", _sum_hw(g, a), _eps(g, 1e-7))))
        return channel_sum(g.op("Mul", weights, a))
    if kind == "gradcam_pp":
        g2 = g.op("Mul", grad, grad)
        g3 = g.op("Mul", g2, grad)
        denominator = g.op("Add", g.op("Add", g.op("Mul", g2, g.const(np.float32(2))),
                                       g.op("Mul", _sum_hw(g, a), g3)), _eps(g, 1e-6))
        alpha = g.op("Where", g.op("Equal", grad, g.const(np.float32(0))), g.const(np.float32(0)),
                     g.op("Div", g2, denominator))
        weights = _sum_hw(g, g.op("Mul", g.op("Relu", grad), alpha))
        return channel_sum(g.op("Mul", weights, a))
    if kind == "eigencam":
        return _first_component(g, a, layer)
    if kind == "scorecam":
        return channel_sum(g.op("Mul", rescore(a), a))
    raise UsageError(f"unknown class activation map '{kind}'")


def _first_component(g: GraphBuilder, a: str, layer: Layer) -> str:
    """Eigen-CAM: the centred activation X (pixels x channels) projected on its first right
    singular vector v, [N, 1, h, w]. v comes from power iteration by repeated squaring of the
    smaller Gram matrix (X X^T, pixels x pixels, or X^T X, channels x channels), normalized by its
    largest entry at each squaring; after 2^24 powers the matrix is the top eigenvector's outer
    product u u^T, whose column of largest diagonal is +-u. The sign of a singular vector is
    arbitrary (numpy's SVD, which the anchor uses, picks one by its LAPACK build): here the
    projection's entry of largest magnitude is made positive."""
    h, w = layer.spatial
    k = layer.channels
    x = g.op("Transpose", g.op("Reshape", a, g.ints([0, k, h * w])), perm=[0, 2, 1])  # [N, hw, K]
    x = g.op("Sub", x, g.op("ReduceMean", x, g.ints([1]), keepdims=1), name="centred")
    xt = g.op("Transpose", x, perm=[0, 2, 1])
    pixels = h * w <= k
    m = g.op("MatMul", x, xt) if pixels else g.op("MatMul", xt, x)
    size = h * w if pixels else k
    tiny = g.const(np.float32(1e-30))
    for _ in range(POWER_SQUARINGS):
        m = g.op("MatMul", m, m)
        m = g.op("Div", m, g.op("Add", g.op("ReduceMax", g.op("Abs", m), g.ints([1, 2]), keepdims=1), tiny))
    diagonal = g.op("ReduceSum", g.op("Mul", m, g.const(np.eye(size, dtype=np.float32))), g.ints([2]), keepdims=0)
    pick = g.op("ArgMax", diagonal, axis=1, keepdims=1)  # [N, 1]
    index = g.op("Expand", g.op("Unsqueeze", pick, g.ints([1])),
                 g.op("Concat", g.op("Slice", g.op("Shape", m), g.ints([0]), g.ints([1])), g.ints([size, 1]), axis=0))
    column = g.op("GatherElements", m, index, axis=2)  # [N, size, 1]
    v = g.op("MatMul", xt, column) if pixels else column  # [N, K, 1]
    v = g.op("Div", v, g.op("Add", g.op("Sqrt", g.op("ReduceSum", g.op("Mul", v, v), g.ints([1, 2]), keepdims=1)),
                            tiny))
    projection = g.op("MatMul", x, v)  # [N, hw, 1]
    largest = g.op("ArgMax", g.op("Abs", projection), axis=1, keepdims=1)  # [N, 1, 1]
    sign = g.op("Sign", g.op("GatherElements", projection, largest, axis=1))
    sign = g.op("Add", sign, g.op("Cast", g.op("Equal", sign, g.const(np.float32(0))), to=onnx.TensorProto.FLOAT))
    return g.op("Reshape", g.op("Mul", projection, sign), g.ints([0, 1, h, w]), name="cam")


def _upsample(g: GraphBuilder, cam: str, height: int, width: int) -> str:
    """cv2.resize(INTER_LINEAR) of each map to the image size: half-pixel bilinear."""
    sizes = g.op("Concat", g.op("Slice", g.op("Shape", cam), g.ints([0]), g.ints([2])), g.ints([height, width]), axis=0)
    return g.op("Resize", cam, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel",
                name="cam_upsampled")


def _minmax(g: GraphBuilder, cam: str) -> str:
    low = g.op("ReduceMin", cam, g.ints([1, 2, 3]), keepdims=1)
    shifted = g.op("Sub", cam, low)
    return g.op("Div", shifted, g.op("Add", g.op("ReduceMax", shifted, g.ints([1, 2, 3]), keepdims=1), _eps(g, 1e-7)))


def cam_map(g: GraphBuilder, kind: str, layers: list[Layer], grads: dict[str, str], rows: str, image: str,
            image_axis: int, rescore=None) -> str:
    """The upsampled map [N, 1, H, W] (NCHW) of the given layers (see the module docstring)."""
    shape = g.shape(image)
    height, width = [d for i, d in enumerate(shape[1:], 1) if i != image_axis]
    maps = []
    for layer in layers:
        raw = _channel_map(g, kind, layer.name, grads.get(layer.name), layer, rows,
                           None if rescore is None else (lambda a, lay=layer: rescore(a, lay)))
        positive = g.op("Relu", raw)
        # several layers: each map min-max scaled at its own resolution first, as the anchor does
        maps.append(_upsample(g, positive if len(layers) == 1 else _minmax(g, positive), height, width))
    if len(maps) == 1:
        return maps[0]
    return g.op("Div", g.op("Sum", *maps), g.const(np.float32(len(maps))), name="cam_mean")


def broadcast_to_image(g: GraphBuilder, cam: str, image: str, image_axis: int) -> str:
    """[N, 1, H, W] -> the image's shape (every channel holds the map)."""
    if image_axis == 3:
        cam = g.op("Transpose", cam, perm=[0, 2, 3, 1])
    return g.op("Expand", cam, g.op("Shape", image), name="cam_like_image")


# ---- Score-CAM: a second forward pass over masked images

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
        masks = g.op("Div", g.op("Sub", up, low), g.op("Add", g.op("Sub", high, low), _eps(g, 1e-8)))
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


def candidates_report(model, input=None, output_name=None) -> dict:
    """For `gnl-onnx inspect`: the candidate layers with shapes, and the default."""
    from .attribution import select_output
    from .autodiff import differentiable_path
    from .loading import choose_input
    from .normalize import normalize

    proto = normalize(select_output(model, "logit", output_name))
    x = choose_input(proto.graph, input)
    builder = GraphBuilder(proto)
    path, active = differentiable_path(builder, x, proto.graph.output[0].name)
    candidates = layer_candidates(builder, path, active, x)
    default = default_layer(builder, candidates)
    return {"cam_layers": [c.describe() for c in candidates], "cam_default": default.name if default else None}


__all__ = ["CAM_METHODS", "Layer", "locate_layers", "layer_candidates", "default_layer", "cam_map",
           "broadcast_to_image", "scorecam_rescore", "candidates_report"]


def locate(proto: onnx.ModelProto, x: str, y: str, names=None) -> tuple[list[Layer], int]:
    """The CAM layers of a normalized model (image input x, explained output y) and the image's
    channel axis."""
    from .autodiff import differentiable_path

    builder = GraphBuilder(proto)
    path, active = differentiable_path(builder, x, y)
    layers, _ = locate_layers(builder, path, active, x, names)
    axis = image_channel_axis(builder, list(builder.graph.node), x)
    if builder.rank(x) != 4 or axis not in (1, 3):
        raise UsageError("class activation maps need a 4-D image input (NCHW or NHWC)")
    return layers, axis


def cam_attribution(g: GraphBuilder, spec, layers: list[Layer], image_axis: int, rows: str, image: str,
                    gradient_part: str, points: str, logits: str, renamed: dict) -> str:
    """The attribution of a CAM method inside attribution_model's graph: the map broadcast to the
    image, times the gradient part (guided_gradcam, gnl_gradcam) or times sum(weights) (so that
    runs over split steps still add up, as for the other methods)."""
    grads = {a.name: renamed.get(f"{a.name}_grad", f"{a.name}_grad") for a in layers}
    rescore = (scorecam_rescore(g, image, image_axis, points, logits, "target_used")
               if spec.cam == "scorecam" else None)
    heat = broadcast_to_image(g, cam_map(g, spec.cam, layers, grads, rows, image, image_axis, rescore), image,
                              image_axis)
    if spec.cam_times:
        return g.op("Mul", gradient_part, heat)
    return g.op("Mul", heat, g.op("ReduceSum", "weights", g.ints([0]), keepdims=1))
