"""The CAM part of an attribution graph: per-channel weights, the map, ReLU, bilinear upsampling,
min-max scaling of several layers, and the attribution it becomes (see the package docstring)."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import UsageError
from ..graph import GraphBuilder
from .locate import Layer
from .scorecam import scorecam_rescore

POWER_SQUARINGS = 24  # eigencam: the covariance raised to the power 2^24 (see _first_component)


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


def cam_attribution(g: GraphBuilder, kind: str, times_gradient: bool, layers: list[Layer], image_axis: int, rows: str,
                    image: str, gradient_part: str, points: str, logits: str, renamed: dict) -> str:
    """The attribution of a CAM method inside attribution_model's graph: the map of `kind` broadcast
    to the image, times the gradient part (times_gradient: guided_gradcam, gnl_gradcam) or times
    sum(weights) (so that runs over split steps still add up, as for the other methods)."""
    grads = {a.name: renamed.get(f"{a.name}_grad", f"{a.name}_grad") for a in layers}
    rescore = (scorecam_rescore(g, image, image_axis, points, logits, "target_used")
               if kind == "scorecam" else None)
    heat = broadcast_to_image(g, cam_map(g, kind, layers, grads, rows, image, image_axis, rescore), image,
                              image_axis)
    if times_gradient:
        return g.op("Mul", gradient_part, heat)
    return g.op("Mul", heat, g.op("ReduceSum", "weights", g.ints([0]), keepdims=1))
