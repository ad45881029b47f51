"""Where a class activation map is taken: the candidate layers of a graph (4-D activations on the
path from the image to the explained output) and the default one, torchcam's rule on the graph."""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..errors import UsageError
from ..graph import FLOAT_TYPES, GraphBuilder
from ..autodiff import differentiable_path
from ..loading import choose_input
from ..normalize import normalize
from ..targets import select_output

NCHW_OPS = {"Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
            "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN"}


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
            if not v or v in seen or v == x or v not in active or builder.elem_type(v) not in FLOAT_TYPES:
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


def locate_layers(builder: GraphBuilder, path, active: set[str], x: str, names=None,
                  y: str | None = None) -> tuple[list[Layer], list[Layer]]:
    """The layers to use (the default one, or the named ones checked) and all candidates. y: the
    explained output; a map [N, C, H, W] (a segmenter's) is no layer of its own, and its default
    layer is the last one before the head, the last candidate of another channel count than C
    (later ones are the class maps and their upsampling)."""
    candidates = [c for c in layer_candidates(builder, path, active, x) if c.name != y]
    out_shape = builder.shape(y) if y else None
    head_channels = out_shape[1] if out_shape is not None and len(out_shape) == 4 else None
    by_name = {c.name: c for c in candidates}
    shown = candidates[-12:]  # the deepest ones: where class activation maps are usually taken
    listed = "; ".join(c.describe() for c in shown) or "none"
    if len(candidates) > len(shown):
        listed += f" (and {len(candidates) - len(shown)} earlier ones: gnl-onnx inspect lists them all)"
    if not names:
        before_head = candidates
        while head_channels is not None and before_head and before_head[-1].channels == head_channels:
            before_head = before_head[:-1]
        chosen = default_layer(builder, before_head)
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


def candidates_report(model, input=None, output_name=None) -> dict:
    """For `gnl-onnx inspect`: the candidate layers with shapes, and the default."""

    proto = normalize(select_output(model, "logit", output_name))
    x = choose_input(proto.graph, input)
    builder = GraphBuilder(proto)
    path, active = differentiable_path(builder, x, proto.graph.output[0].name)
    candidates = layer_candidates(builder, path, active, x)
    default = default_layer(builder, candidates)
    return {"cam_layers": [c.describe() for c in candidates], "cam_default": default.name if default else None}


def locate(proto: onnx.ModelProto, x: str, y: str, names=None) -> tuple[list[Layer], int]:
    """The CAM layers of a normalized model (image input x, explained output y) and the image's
    channel axis."""

    builder = GraphBuilder(proto)
    path, active = differentiable_path(builder, x, y)
    layers, _ = locate_layers(builder, path, active, x, names, y)
    axis = image_channel_axis(builder, list(builder.graph.node), x)
    if builder.rank(x) != 4 or axis not in (1, 3):
        raise UsageError("class activation maps need a 4-D image input (NCHW or NHWC)")
    return layers, axis
