"""Measuring attributions (numpy + ONNX Runtime, no torch).

Faithfulness: the deletion and insertion metrics of RISE (Petsiuk et al., 2018) as METHOD.md
states them. Pixels are ranked by the attribution and removed (deletion: replaced in all channels
by a substrate) or inserted (insertion: the image's pixels put into the substrate) in equal chunks;
the target's softmax probability is recorded after each chunk, and the area under that curve
(trapezoid, x in [0, 1]) is the score: low is good for deletion, high for insertion. A random
attribution is the floor. ROAD (Rong et al., 2022: removed pixels imputed by noisy linear
imputation, most- and least-relevant-first curves) lives in gnl_onnx.road; road_score is here too.

Sanity: cascading model-parameter randomization (Adebayo et al., 2018): weights are randomized
from the output side down, and the rank correlation of each randomized model's attribution with
the original one says whether the method explains the model or only the image.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from .baselines import gaussian_blur, spatial_axes
from .errors import UsageError
from .report import reduce_channels
from .road import road_score

DELETION_SUBSTRATE = "zeros"  # RISE deletion: 0 in the model's normalized input space
INSERTION_SUBSTRATE = "blur"  # RISE insertion: Gaussian blur, kernel 11, sigma 5
SUBSTRATES = ("zeros", "mean", "blur")
MODES = ("deletion", "insertion")
CURVE_STEPS = 28  # RISE: 224 * 8 pixels per step on 224 x 224
BATCH_SIZE = 16


def _layout(shape, layout: str | None) -> str:
    if layout is not None:
        if layout not in ("NCHW", "NHWC"):
            raise UsageError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        return layout
    return "NHWC" if spatial_axes(shape) == (1, 2) and len(shape) == 4 else "NCHW"


def _hw(shape, layout: str) -> tuple[int, int, tuple[int, int]]:
    if len(shape) != 4 or shape[0] != 1:
        raise UsageError(f"expected one image shaped [1, C, H, W] or [1, H, W, C], got {tuple(shape)}")
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    return shape[axes[0]], shape[axes[1]], axes


# -- per-pixel maps and rankings ----------------------------------------------------------------
def reduce_to_pixels(attribution, layout: str | None = None, how: str = "sum") -> np.ndarray:
    """One value per pixel, [H, W] float64: the sum over channels ("sum", signed, METHOD.md's
    default) or the sum of absolute values ("abs_sum"). layout None: guessed from the shape."""
    if how not in ("sum", "abs_sum"):
        raise UsageError(f"how must be 'sum' or 'abs_sum', got {how!r}")
    a = np.asarray(attribution)
    return reduce_channels(a, _layout(a.shape if a.ndim == 4 else (1,) + a.shape, layout), how)


def ranking(pixel_scores) -> np.ndarray:
    """Flat pixel indices (row-major into [H, W]) from the most to the least important. Ties keep
    row-major order (a stable sort), so the same scores always give the same order."""
    s = np.asarray(pixel_scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise UsageError("the pixel scores contain NaN or infinite values")
    return np.argsort(-s, kind="stable")


def random_attribution(shape, seed=0) -> np.ndarray:
    """Standard normal values of the given shape: the floor every method must beat."""
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)


# -- the model, scored ---------------------------------------------------------------------------
_NUMPY_OF_ORT = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


class Scorer:
    """One ONNX Runtime session of the model, scoring images by softmax probabilities: a graph
    ending in Softmax is used as it is, one ending in LogSoftmax is exponentiated
    (attribution.select_output(model, "prob")); any other output is taken as logits and softmaxed
    here, in float64, over all its non-batch values (so [N, classes, 1, 1] heads work too)."""

    def __init__(self, model, input: str | None = None, output_name: str | None = None, providers=None,
                 threads: int | None = None):
        from .attribution import selected
        from .intake import prepare
        from .loading import graph_inputs
        from .runtime import make_session

        source = prepare(model, input, output_name).for_rows  # a fixed batch freed where it can be
        self.input_name, y = source.input, source.output
        ending = next((n.op_type for n in source.proto.graph.node if y in n.output), None)
        self.softmax_here = ending not in ("Softmax", "LogSoftmax")
        prob = selected(source, "logit" if self.softmax_here else "prob").proto
        others = [i.name for i in graph_inputs(prob.graph) if i.name != self.input_name]
        if others:
            raise UsageError(f"the model needs inputs besides the image ({', '.join(others)}); the metrics "
                             "feed only the image")
        dims = next(i for i in prob.graph.input if i.name == self.input_name).type.tensor_type.shape.dim
        self.image_shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        # a model exported with batch 1 fixed runs one image at a time
        self.max_batch = 1 if self.image_shape and self.image_shape[0] == 1 else None
        self.session, self.provider = make_session(prob, providers, threads)
        kind = next(i.type for i in self.session.get_inputs() if i.name == self.input_name)
        self.dtype = _NUMPY_OF_ORT.get(kind, np.float32)

    def probabilities(self, images, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """[N, classes] float64 probabilities of N images, run batch_size at a time."""
        images = np.asarray(images)
        step = max(1, int(batch_size) if self.max_batch is None else self.max_batch)
        parts = []
        for lo in range(0, len(images), step):
            (out,) = self.session.run(None, {self.input_name: images[lo:lo + step].astype(self.dtype, copy=False)})
            out = np.asarray(out, np.float64).reshape(len(out), -1)
            if self.softmax_here:
                out = np.exp(out - out.max(axis=1, keepdims=True))
                out /= out.sum(axis=1, keepdims=True)
            parts.append(out)
        return np.concatenate(parts)

    def __call__(self, images, target, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """[N] probability of class `target` for each image."""
        p = self.probabilities(images, batch_size)
        if not 0 <= int(target) < p.shape[1]:
            raise UsageError(f"target {target} is out of range: the model has {p.shape[1]} classes")
        return p[:, int(target)]


def _scorer(model_or_scorer) -> Scorer:
    return model_or_scorer if isinstance(model_or_scorer, Scorer) else Scorer(model_or_scorer)


# -- substrates and curves -----------------------------------------------------------------------
def make_substrate(kind, image: np.ndarray, layout: str | None = None) -> np.ndarray:
    """What removed pixels become (or insertion starts from), shaped like the image: "zeros" (0 in
    the model's input space), "mean" (each channel's mean over the image), "blur" (Gaussian,
    kernel 11, sigma 5) or an array broadcastable to the image."""
    image = np.asarray(image, np.float32)
    layout = _layout(image.shape, layout)
    if not isinstance(kind, str):
        s = np.asarray(kind, np.float32)
        try:
            return np.broadcast_to(s, image.shape).astype(np.float32)
        except ValueError:
            raise UsageError(f"substrate of shape {s.shape} does not broadcast to the image {image.shape}") from None
    if kind == "zeros":
        return np.zeros_like(image)
    if kind == "mean":
        _, _, axes = _hw(image.shape, layout)
        return np.broadcast_to(image.mean(axis=axes, keepdims=True), image.shape).astype(np.float32)
    if kind == "blur":
        return gaussian_blur(image, layout=layout)
    raise UsageError(f"unknown substrate '{kind}'; choose one of {', '.join(SUBSTRATES)} or give an array")


def chunk_size(pixels: int, steps: int) -> int:
    """Pixels per step: ceil(pixels / steps) (RISE: 224 * 8 on 224 x 224 with 28 steps)."""
    return math.ceil(pixels / steps)


def perturbation_curve(scorer, image, order, substrate, steps: int = CURVE_STEPS, mode: str = "deletion",
                       batch_size: int = BATCH_SIZE, target: int | None = None,
                       layout: str | None = None) -> np.ndarray:
    """The target's probability at steps + 1 points, the unperturbed start included.

    image: [1, ...] in the model's layout. order: flat pixel indices, most important first (see
    ranking). Point k has min(k * ceil(H*W/steps), H*W) pixels changed: deletion replaces them (all
    channels) by the substrate, insertion starts from the substrate and puts the image's pixels
    back. target: the class whose probability is tracked (default: the image's top-1).
    All points run through ONNX Runtime, batch_size at a time."""
    if mode not in MODES:
        raise UsageError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UsageError(f"steps must be a positive integer (got {steps!r})")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1 (got {batch_size})")
    scorer = _scorer(scorer)
    image = np.asarray(image, np.float32)
    layout = _layout(image.shape, layout)
    h, w, axes = _hw(image.shape, layout)
    substrate = make_substrate(substrate, image, layout)
    order = np.asarray(order).ravel()
    if order.size != h * w or not np.array_equal(np.sort(order), np.arange(h * w)):
        raise UsageError(f"order must be a permutation of the {h * w} pixel indices (see ranking)")
    if target is None:
        target = int(np.argmax(scorer.probabilities(image)[0]))
    position = np.empty(h * w, np.int64)
    position[order] = np.arange(h * w)  # each pixel's place in the order
    counts = np.minimum(np.arange(steps + 1) * chunk_size(h * w, steps), h * w)
    mask_shape = [1] * image.ndim
    mask_shape[axes[0]], mask_shape[axes[1]] = h, w
    changed, kept = (substrate, image) if mode == "deletion" else (image, substrate)
    curve = []
    for lo in range(0, steps + 1, batch_size):
        n = counts[lo:lo + batch_size]
        masks = (position[None, :] < n[:, None]).reshape([len(n)] + mask_shape[1:])
        curve.append(scorer(np.where(masks, changed, kept), target, batch_size))
    return np.concatenate(curve)


def auc(curve) -> float:
    """Area under a curve of N + 1 equally spaced points, x in [0, 1], trapezoid rule:
    (sum a - a_0 / 2 - a_N / 2) / N."""
    a = np.asarray(curve, np.float64).ravel()
    if a.size < 2:
        raise UsageError("a curve needs at least 2 points")
    return float((a.sum() - a[0] / 2 - a[-1] / 2) / (a.size - 1))


def _score(model, image, attribution, mode, substrate, steps, how, target, batch_size, layout):
    image = np.asarray(image, np.float32)
    layout = _layout(image.shape, layout)
    order = ranking(reduce_to_pixels(attribution, layout, how))
    curve = perturbation_curve(model, image, order, substrate, steps, mode, batch_size, target, layout)
    return auc(curve), curve


def deletion_score(model, image, attribution, substrate=DELETION_SUBSTRATE, steps: int = CURVE_STEPS,
                   how: str = "sum", target: int | None = None, batch_size: int = BATCH_SIZE,
                   layout: str | None = None) -> tuple[float, np.ndarray]:
    """(deletion AUC, curve) of one image's attribution; lower is better. model: a Scorer, a path
    or a ModelProto (a Scorer saves building a session per call)."""
    return _score(model, image, attribution, "deletion", substrate, steps, how, target, batch_size, layout)


def insertion_score(model, image, attribution, substrate=INSERTION_SUBSTRATE, steps: int = CURVE_STEPS,
                    how: str = "sum", target: int | None = None, batch_size: int = BATCH_SIZE,
                    layout: str | None = None) -> tuple[float, np.ndarray]:
    """(insertion AUC, curve) of one image's attribution; higher is better."""
    return _score(model, image, attribution, "insertion", substrate, steps, how, target, batch_size, layout)


# -- rank correlation ----------------------------------------------------------------------------
def rankdata(values) -> np.ndarray:
    """Ranks 1..n of the flattened values, ties given the average of the ranks they span."""
    x = np.asarray(values, np.float64).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    bounds = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1], True])  # tie-group edges
    average = (bounds[:-1] + bounds[1:] + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat(average, np.diff(bounds))
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's correlation of the tie-averaged ranks. NaN when
    either input is constant (the correlation is undefined)."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.size != rb.size:
        raise UsageError(f"cannot correlate {ra.size} values with {rb.size}")
    if ra.size < 2:
        return float("nan")
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denominator) if denominator > 0 else float("nan")


# -- cascading model-parameter randomization ----------------------------------------------------
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
    from .loading import load_model

    model = load_model(model)
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
    from .loading import load_model

    model = load_model(model)
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
    from .explain import Explainer
    from .loading import load_model

    source = load_model(model)
    images = np.ascontiguousarray(images, dtype=np.float32)
    layout = _layout(images.shape, layout)
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


__all__ = ["Scorer", "auc", "cascading_randomization", "chunk_size", "deletion_score", "insertion_score",
           "make_substrate", "perturbation_curve", "random_attribution", "randomize_layers", "rankdata",
           "ranking", "reduce_to_pixels", "road_score", "spearman", "weighted_layers", "CascadingRandomization",
           "RandomizationStep"]
