"""Model randomization (Adebayo et al.'s sanity check): the weighted layers of a graph, copies with
some of them redrawn, and cascading randomization, which explains each copy and correlates its
maps with the original's. Used by `check` (its randomization check) and by the tests."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UsageError
from ..explainer import Explainer
from ..intake import read_model
from ..pixels import image_layout, reduce_to_pixels, spearman


WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


_PASS_THROUGH = ("Identity", "Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Flatten")


def _constant_source(graph, name: str, producers, initializers):
    """The initializer (or Constant node) a weight comes from, following ops that only move or
    re-type the values; randomizing it randomizes the weight. None for a computed value."""
    while name not in initializers:
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            return node if any(a.name == "value" for a in node.attribute) else None
        if node.op_type not in _PASS_THROUGH:
            return None
        name = node.input[0]
    return initializers[name]


def weighted_layers(model) -> list[dict]:
    """The layers cascading randomization walks, output side first: Conv, Gemm and MatMul nodes
    with a constant weight, each with the constants it randomizes (the weight and the bias: Conv's
    and Gemm's third input, or the constant of an Add that alone consumes a MatMul's or a bias-less
    Conv's output, as tf2onnx writes it). Nodes without a name get '<op>#<index>'."""
    model = read_model(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layers = []
    for index, node in enumerate(graph.node):
        if node.op_type not in WEIGHTED_OPS:
            continue
        operands = list(node.input[:2])
        if node.op_type in ("Gemm", "MatMul"):  # the weight may be either operand
            sources = [_constant_source(graph, i, producers, initializers) for i in operands]
            weight = sources[1] if sources[1] is not None else sources[0]
        else:
            weight = _constant_source(graph, operands[1], producers, initializers)
        if weight is None:
            continue  # e.g. a MatMul of two activations: nothing to randomize
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = _constant_source(graph, node.input[2], producers, initializers)
        elif node.op_type in ("MatMul", "Conv"):
            users = consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add":
                other = next((i for i in users[0].input if i != node.output[0]), None)
                bias = other and _constant_source(graph, other, producers, initializers)
        layers.append({"name": node.name or f"{node.op_type}#{index}", "op": node.op_type,
                       "constants": [c for c in (weight, bias) if c is not None]})
    return layers[::-1]


def _constant_name(c) -> str:
    return c.name if isinstance(c, onnx.TensorProto) else "Constant:" + c.output[0]


def randomize_layers(model, layers=None, seed: int = 0) -> onnx.ModelProto:
    """A copy of the model with the weights and biases of `layers` (names from weighted_layers;
    None: all) redrawn. Each constant becomes normal noise with mean 0 and the original tensor's
    standard deviation (its RMS when that is 0), so activations keep their scale and only the
    learned structure is lost; an all-zero bias stays zero (the usual initialization).
    BatchNormalization parameters are left alone: they rescale per channel and hold no learned
    structure across pixels; Adebayo et al. randomize the learned weights of each layer.
    The draw for a constant depends only on (seed, its name), so cumulative randomization reuses
    the same noise for a layer at every later step."""
    model = read_model(model)
    available = weighted_layers(model)
    names = [layer["name"] for layer in available]
    chosen = names if layers is None else list(layers)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise UsageError(f"no weighted layer named {', '.join(map(repr, unknown))}; the model's layers "
                         f"(output side first) are: {', '.join(names)}")
    initializers = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    done = set()
    for layer in available:
        if layer["name"] not in chosen:
            continue
        for c in layer["constants"]:
            key = _constant_name(c)
            if key in done:  # shared by layers: randomized once
                continue
            done.add(key)
            target = initializers[c.name] if isinstance(c, onnx.TensorProto) else next(
                a.t for a in constants[c.output[0]].attribute if a.name == "value")
            target.CopyFrom(_redrawn(target, seed, key))
    return model


def _redrawn(tensor: onnx.TensorProto, seed: int, key: str) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return tensor
    v = values.astype(np.float64)
    scale = float(v.std()) or float(np.sqrt(np.mean(v ** 2)))
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])
    drawn = (rng.standard_normal(values.shape) * scale).astype(values.dtype)
    return numpy_helper.from_array(drawn, tensor.name)


@dataclass
class RandomizationStep:
    layer: str | None          # the layer randomized at this step; None: the original model
    op: str | None
    randomized: list[str]      # every layer randomized so far, output side first
    spearman_abs: np.ndarray   # [N]: rank correlation of the abs_sum per-pixel maps
    spearman_signed: np.ndarray  # [N]: of the signed (sum) per-pixel maps
    attributions: np.ndarray | None = None

    def row(self) -> dict:
        """Means over the images (NaN maps left out; None when every map was constant)."""
        def mean(v):
            return float(np.nanmean(v)) if np.any(np.isfinite(v)) else None

        return {"layer": self.layer or "(original)", "op": self.op, "randomized": len(self.randomized),
                "spearman_abs": mean(self.spearman_abs), "spearman_signed": mean(self.spearman_signed)}


@dataclass
class CascadingRandomization:
    method: str
    target: np.ndarray        # [N]: the class explained at every step (the original model's)
    original: np.ndarray      # the original model's attributions
    steps: list[RandomizationStep] = field(default_factory=list)

    def rows(self) -> list[dict]:
        return [s.row() for s in self.steps]


def cascading_randomization(model, images, method: str = "gnl_ig", layers=None, seed: int = 0,
                            target=None, layout: str | None = None, keep_attributions: bool = False,
                            **explainer_options) -> CascadingRandomization:
    """Adebayo et al.'s cascading randomization: step 0 explains the unrandomized model (through
    the same copy-and-explain path, so its correlation, 1.0, checks that path), then each step
    randomizes one more layer from the output side down (see randomize_layers) and explains again.
    Every step explains the class the original model was explained for (its top-1 unless `target`
    says otherwise), so only the model changes. Spearman correlations per image of the signed
    (sum) and absolute (abs_sum) per-pixel maps with the original's; NaN where a map is constant.
    explainer_options go to Explainer (steps, baseline, black, integration, gate, output, ...)."""
    source = read_model(model)
    images = np.ascontiguousarray(images, dtype=np.float32)
    layout = image_layout(images.shape, layout)
    available = weighted_layers(source)
    names = [layer["name"] for layer in available]
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise UsageError(f"no weighted layer named {', '.join(map(repr, unknown))}; the model's layers "
                             f"(output side first) are: {', '.join(names)}")
    walk = [layer for layer in available if layers is None or layer["name"] in layers]

    def explain(m, t):
        return Explainer(m, method=method, layout=layout, **explainer_options).explain(images, t)

    original = explain(source, target)
    result = CascadingRandomization(method, original.target, original.attributions)
    maps = {how: [reduce_to_pixels(a[None], layout, how) for a in original.attributions]
            for how in ("sum", "abs_sum")}
    done: list[str] = []
    for layer in [None] + walk:
        if layer is not None:
            done.append(layer["name"])
        randomized = randomize_layers(source, done, seed)
        a = explain(randomized, original.target).attributions
        corr = {how: np.array([spearman(maps[how][i], reduce_to_pixels(a[i:i + 1], layout, how))
                               for i in range(len(images))]) for how in maps}
        result.steps.append(RandomizationStep(layer and layer["name"], layer and layer["op"], list(done),
                                              corr["abs_sum"], corr["sum"], a if keep_attributions else None))
    return result
