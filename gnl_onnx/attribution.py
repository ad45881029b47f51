"""Attribution methods as ONNX graphs. Every method is the same graph shape:

    points  = baseline + alphas[s] * (image - baseline) + noise[s]      (S points per image)
    grads   = (guided or plain) d scores[target] / d points              (one batch of S*N rows)
    attribution = factor * sum_s weights[s] * grads[s]

with factor = image - baseline (integrated gradients), image (input x gradient) or 1. The method
fixes the gradient rule and the factor; the caller (the Explainer, or any ONNX Runtime user of a
converted model) chooses the points and weights, so one converted model serves any step count,
quadrature rule and chunking. The scores are at the images, on N extra rows (only in the first
run of a path that is split over several: the input `score_rows`), except for the
relevance methods, which are defined at the image: LRP composites (alphas [1], no noise) and
deeplift (alphas [1, 0]) take them from their first block of points, the images, so a run has no
rows beyond the points (half the rows of an LRP run); deeplift also outputs `baseline_scores`, the
scores at its last block (the baselines)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .batch import run_rows_one_at_a_time
from .errors import ModelError, UsageError
from .graph import GraphBuilder, all_nodes_of, prune, rename_value, skeleton, topological_sort
from .intake import PreparedModel, prepare
from .methods import (LRP_METHODS, MAX_GAUSS_LEGENDRE_STEPS, METHODS, Method, get_method,  # noqa: F401 - also
                      path_points)  # imported from here (METHODS, get_method: used)
from .targets import OUTPUT_KINDS, get_target, select_output, selected  # noqa: F401 - also imported from here
from .vjp import build_vjp, vjp_report

METADATA_KEY = "gnl_onnx.attribution"
INPUT_NAMES = ("baseline", "target", "alphas", "weights", "noise", "score_rows")
ALL_ROWS = np.iinfo(np.int64).max
OUTPUT_NAMES = ("attribution", "scores", "target_used", "baseline_scores")


def _checked_image_type(graph, x: str):
    """The image input's type: an attribution model takes a float32 image under a name that is not
    one of its own."""
    image_type = next(i.type for i in graph.input if i.name == x)
    if image_type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UsageError("attribution models are built for float32 image inputs")
    if x in INPUT_NAMES + OUTPUT_NAMES:
        raise UsageError(f"the model's image input is named '{x}', a name the attribution model gives to "
                         "another input or output; rename the model's input")
    return image_type


def attribution_model(model, method: str = "gnl_ig", gate: str = "paper",
                      output: str = "logit", input: str | None = None,
                      output_name: str | None = None, layer=None, bounds=None, seed: int = 0) -> onnx.ModelProto:
    """One ONNX model computing an attribution end to end (see the module docstring).
    `layer`: the target layer(s) of CAM methods, value names (default: found, see gnl_onnx/cam/).
    `bounds`: (low, high), the lowest and highest input values (scalars or broadcastable to the
    image, e.g. [1, C, 1, 1]) for lrp_epsilon_gamma_box's ZBox rule: the defaults of its optional
    inputs `low` and `high` (default (0, 1): pixels 0..1 with no mean/std).

    Inputs: the image batch (the model's own input name and layout), `baseline` (broadcastable to
    it), `target` (int64 [N]; negative = the top-1 class), `alphas` and `weights` (float [S]),
    `noise` (broadcastable to [S, N, *image dims]; zeros of shape [1, 1, 1, 1, 1] for none with 4-D
    images). `baseline` has the image's rank (size-1 dims broadcast).
    Optional input `score_rows` (int64 [1], default all): how many of the images get their score
    rows; a run after the first of the same images passes 0 and the targets the first returned.
    Outputs: `attribution` (shaped like the image), `scores` (the explained output at the first
    `score_rows` images, [N, classes] by default) and `target_used` (int64 [N]; an unscored image
    keeps the target it was given); deeplift also `baseline_scores` (at the baseline).
    deeplift takes alphas [1, 0] and weights [1, 0]: the last block of points is the reference of
    the others (the baseline). LRP methods take alphas [1] and no noise: their scores are at the
    first block of points.
    A forward-only method whose copies are fixed masks (occlusion, rise, kernelshap) is another
    graph with the same image, `baseline` and `target` inputs and the same outputs: see
    forward_attribution_model (`seed`: its masks' seed)."""
    spec = get_method(method).wrapped()  # a wrapper that runs its inner method's graph builds that one
    if layer and not spec.takes_layer:
        cams = ", ".join(name for name, m in METHODS.items() if m.takes_layer)
        raise UsageError(f"--layer (layer=) is for the CAM methods ({cams}), not {method}")
    if spec.forward_only:
        return forward_attribution_model(model, spec, output, input, output_name, seed)
    # a model read here is this call's alone: its output is selected in place (a copy of vgg16: 0.26 s)
    target = get_target(output)  # what is explained: it selects the output, chooses the class, seeds
    chosen = target.select(prepare(model, input, target.output_name or output_name).for_rows,
                           in_place=not isinstance(model, PreparedModel))
    if target.reads_image_rows and spec.rescores_classes:
        raise UsageError(f"{method} scores masked copies of the image by class; with a region target (--target "
                         f"{target.describe()}) use another CAM, e.g. gradcam")
    if chosen.batch == "fixed":
        raise ModelError(chosen.notes[0])
    if chosen.one_per_run and spec.pairs_rows:  # its image and reference rows must meet in one run
        raise ModelError(f"{method} runs each image beside its baseline in one batch, which this model cannot "
                         "take (its batch is fixed at 1 in its graph); re-export it with a dynamic batch")
    x = chosen.input
    explained_shape = GraphBuilder(chosen.proto).shape(chosen.output)
    n_classes = target.classes(explained_shape)
    layers, image_axis = spec.layers(chosen.proto, x, chosen.output, layer)
    vjp = build_vjp(chosen.proto, x, chosen.output, rule=spec.rule, gate=gate, layers=[a.name for a in layers],
                    layer_rule="plain", bounds=bounds)  # chosen is selected()'s own copy: built in place
    report = vjp_report(vjp)
    graph = vjp.graph
    row_bytes = bytes_per_row(vjp, x)
    if chosen.one_per_run:  # a batch baked in at 1: the rows of a run go through one at a time
        run_rows_one_at_a_time(vjp, [x, report["seed"]])
    image_type = _checked_image_type(graph, x)
    # Free the public names: the model's own values keep working under fresh names.
    builder = GraphBuilder(vjp)
    renamed = {}
    extras = dict(zip(report["extra_inputs"], spec.extra_input_names))  # inputs the rule set names publicly
    for public in INPUT_NAMES + OUTPUT_NAMES + tuple(extras.values()):
        if builder.has_name(public) and public not in extras:
            renamed[public] = builder.fresh(public)
            rename_value(graph, public, renamed[public])
    points, seed, scores_all, grads_all = (builder.fresh(n) for n in
                                           ("points", "seed", "scores_all", "grads_all"))
    rename_value(graph, x, points)
    for old, new in ((report["seed"], seed), (report["output"], scores_all), (report["gradient"], grads_all)):
        rename_value(graph, renamed.get(old, old), new)
    extra_types = {i.name: i.type for i in graph.input if i.name in report["extra_inputs"]}
    for old, new in extras.items():  # ZBox's bounds: optional inputs with defaults (initializers)
        rename_value(graph, renamed.get(old, old), new)
        extra_types[new] = extra_types.pop(old)
    del graph.input[:]
    del graph.output[:]
    rank = len(image_type.tensor_type.shape.dim)
    graph.input.extend([
        helper.make_value_info(x, image_type),
        helper.make_tensor_value_info("baseline", TensorProto.FLOAT, [f"baseline_{i}" for i in range(rank)]),
        helper.make_tensor_value_info("target", TensorProto.INT64, ["N"]),
        helper.make_tensor_value_info("alphas", TensorProto.FLOAT, ["S"]),
        helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["S"]),
        helper.make_tensor_value_info("noise", TensorProto.FLOAT, [f"noise_{i}" for i in range(rank + 1)]),
    ])
    graph.input.extend(helper.make_value_info(name, extra_types[name]) for name in extras.values())
    g = builder
    direct = spec.scores_at_points
    if not direct:  # optional (an initializer of the same name is its default: every image)
        graph.input.append(helper.make_tensor_value_info("score_rows", TensorProto.INT64, [1]))
        graph.initializer.append(numpy_helper.from_array(np.array([ALL_ROWS], np.int64), "score_rows"))
    # the batch of points: S blocks of N images, then the first `score_rows` images themselves (for
    # their scores), unless the first block is the images (LRP, deeplift: see the module docstring)
    delta = g.op("Sub", x, "baseline", name="image_minus_baseline")
    per_step = g.ints([-1] + [1] * rank)  # [S, 1, ..., 1]: one alpha or weight per block of N images
    along = g.op("Mul", g.op("Reshape", "alphas", per_step), g.op("Unsqueeze", delta, g.ints([0])))
    path = g.op("Add", g.op("Add", along, "baseline"), "noise", name="path")
    image_shape = g.op("Shape", x)
    item_shape = g.op("Slice", image_shape, g.ints([1]), g.ints([rank]))
    flat = g.op("Reshape", path, g.op("Concat", g.ints([-1]), item_shape, axis=0))
    if direct:
        g.op("Identity", flat, out=points)
    else:
        scored = g.op("Slice", x, g.ints([0]), "score_rows", g.ints([0]))
        g.op("Concat", flat, scored, axis=0, out=points)
    parts = {"x": x, "points": points, "image_shape": image_shape, "scores_all": scores_all, "renamed": renamed,
             "layers": layers, "image_axis": image_axis,
             "extra_inputs": [renamed.get(e, e) for e in report["extra_inputs"]]}
    spec.add_rows(g, parts)  # what its rule set reads beside the points (DeepLIFT's reference rows)
    # scores at the images, the target, and the seed (one-hot on the target, zero for image rows)
    n = g.op("Slice", image_shape, g.ints([0]), g.ints([1]))
    steps = g.op("Shape", "alphas")
    rows = g.op("Mul", steps, n)
    parts.update(n=n, rows=rows)
    if direct:
        g.op("Slice", scores_all, g.ints([0]), n, g.ints([0]), out="scores")
    else:
        g.op("Slice", scores_all, rows, g.ints([np.iinfo(np.int64).max]), g.ints([0]), out="scores")
    spec.add_outputs(g, parts)
    # unscored images (score_rows < N) take their given target
    target.choose(g, "scores", "target", None if direct else n, out="target_used")
    one_hot = target.seed(g, "scores", "target_used")
    ones = g.op("ConstantOfShape", g.op("Sub", g.op("Shape", g.op("Shape", one_hot)), g.ints([1])),
                value=numpy_helper.from_array(np.ones(1, np.int64)))  # the seed's other dims: [1, ...]
    tiled = g.op("Tile", one_hot, g.op("Concat", steps, ones, axis=0))
    if direct:
        g.op("Identity", tiled, out=seed)
    else:
        at_images = g.op("Slice", one_hot, g.ints([0]), "score_rows", g.ints([0]))
        g.op("Concat", tiled, at_images if spec.seeds_image_rows() else g.op("Mul", at_images, g.const(0.0)), axis=0,
             out=seed)
    # weighted sum of the path gradients, times the method's factor (or the method's own finish)
    path_grads = g.op("Slice", grads_all, g.ints([0]), rows, g.ints([0]))
    stacked = g.op("Reshape", path_grads, g.op("Concat", g.ints([-1]), image_shape, axis=0))
    weighted = g.op("ReduceSum", g.op("Mul", stacked, g.op("Reshape", "weights", per_step)),
                    g.ints([0]), keepdims=0)
    factor = {"delta": delta, "image": x, "none": None}[spec.factor]
    weighted, factor = spec.finish(g, weighted, factor, parts)
    g.op("Mul", weighted, factor, out="attribution") if factor else g.op("Identity", weighted, out="attribution")
    graph.output.extend([
        helper.make_value_info("attribution", image_type),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N"] + [None] * (len(explained_shape or "NC") - 1)),
        helper.make_tensor_value_info("target_used", TensorProto.INT64, ["N"]),
    ])
    graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"] + [None] * (len(explained_shape or "NC") - 1))
                        for name in spec.extra_outputs)
    del graph.value_info[:]  # shapes of the renamed batch changed; the runtime infers them again
    topological_sort(graph)
    if spec.prunes:
        prune(graph)
    row_bytes = spec.row_bytes(row_bytes, layers)
    info = {"method": spec.name, "rule": spec.rule, "gate": gate, "output": target.describe(), "input": x,
            "layers": [a.name for a in layers],
            "gated": report["gated"], "summary": spec.summary, "bytes_per_row": row_bytes,
            "rules": dict(Counter(r["rule"] for r in report.get("rules", []))),
            "classes": n_classes, "region": target.reads_image_rows,
            "image_shape": [d.dim_value if d.HasField("dim_value") else None for d in image_type.tensor_type.shape.dim]}
    kept = [p for p in vjp.metadata_props if p.key != "gnl_onnx.vjp"]
    del vjp.metadata_props[:]
    vjp.metadata_props.extend(kept)
    vjp.metadata_props.add(key=METADATA_KEY, value=json.dumps(info))
    onnx.checker.check_model(skeleton(vjp))  # the weights were checked on loading: the new structure is what needs it
    return vjp


def bytes_per_row(vjp: onnx.ModelProto, x: str, any_lead_is_batch: bool = False) -> int:
    """Peak bytes of the values alive at once per batch row, walking the graph in order (a
    value lives from its producer to its last consumer; graph outputs to the end): what one path
    point of one image needs when the runtime frees buffers after their last use, as ONNX Runtime's
    planner does. Summing every value instead overstates it about threefold on ResNet-50, and
    smaller step chunks than the memory allows run slower. any_lead_is_batch: a leading dim that
    is unknown or another symbol counts as the batch too, for graphs whose shapes were not probed
    (static inference names the batch anew after a Pad or Reshape fed by computed sizes: counting
    only the input's symbol, a forward-only method saw EfficientNet-Lite0's rows as its image
    alone, 0.6 MB, planned 1770 copies for 1 GB and used over 20 GB)."""
    builder = GraphBuilder(vjp)
    batch = (builder.shape(x) or [None])[0]

    def is_batch(dim) -> bool:
        return dim == batch or (any_lead_is_batch and not isinstance(batch, int) and not isinstance(dim, int))

    def size(name: str) -> int:
        shape, kind = builder.shape(name), builder.elem_type(name)
        if shape and is_batch(shape[0]) and all(isinstance(d, int) for d in shape[1:]):
            item = np.dtype(helper.tensor_dtype_to_np_dtype(kind)).itemsize if kind else 4  # MaxPool Indices: 8
            return int(np.prod(shape[1:], dtype=np.int64)) * item
        return 0

    nodes = list(vjp.graph.node)
    last_use = {name: len(nodes) for name in (o.name for o in vjp.graph.output)}
    for i, node in enumerate(nodes):
        for name in node.input:
            last_use[name] = max(last_use.get(name, i), i)
    live = peak = size(x)
    ending: dict[int, int] = {}
    for i, node in enumerate(nodes):
        for name in node.output:
            if name:
                live += size(name)
                ending[last_use.get(name, i)] = ending.get(last_use.get(name, i), 0) + size(name)
        peak = max(peak, live)
        live -= ending.pop(i, 0)
    return max(peak, 4 * int(np.prod([d for d in builder.shape(x)[1:] if isinstance(d, int)])))


def attribution_info(model: onnx.ModelProto) -> dict:
    entry = next((p for p in model.metadata_props if p.key == METADATA_KEY), None)
    if entry is None:
        raise UsageError("this model was not made by gnl_onnx.attribution_model")
    return json.loads(entry.value)


FORWARD_RUN_BYTES = 256 * 2**20  # a converted forward-only model's masked rows per loop step and image:
FORWARD_RUN_ROWS = 256           # as many as this memory holds (bytes_per_row), at most this many


class _Body:
    """GraphBuilder's op and const for the nodes of a Loop body (constants stay in the outer graph,
    which the body reads by name)."""

    def __init__(self, g: GraphBuilder):
        self.g, self.graph = g, onnx.GraphProto()
        self.const, self.ints = g.const, g.ints

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.g.fresh(f"masked_{op_type.lower()}")
        self.graph.node.append(helper.make_node(op_type, list(inputs), [out], name=self.g.fresh(f"masked_{op_type}"),
                                                **attrs))
        return out


def forward_attribution_model(model, spec: Method, output="logit", input: str | None = None,
                              output_name: str | None = None, seed: int = 0) -> onnx.ModelProto:
    """A forward-only method whose copies are masks fixed by the image size and the seed
    (spec.converts) as one ONNX model, equal to the Explainer's result: the masks (or what draws
    them: RISE's grids and shifts, KernelSHAP's coalitions) are initializers; a Loop runs the
    model on B copies of each image per step ([N * B] rows, B fixed here from the model's memory
    per row): copy 0 is the image itself (its scores choose the class: one pass more than the
    Explainer's count), the others masked; it picks each copy's target score and sums score x
    mask; the method's graph_maps turns the scores and that sum into the map, in float64 as the
    Explainer does.
    Inputs: the image batch (its height and width fixed in the model), `baseline` (broadcastable
    to it), `target` (int64 [N]; negative: the top-1 class). Outputs: `attribution`, `scores`
    (at the images), `target_used`."""
    target = get_target(output)
    converting = ", ".join(n for n, m in METHODS.items() if getattr(m, "converts", False))
    if not spec.converts:
        raise UsageError(f"{spec.name} does not convert to one ONNX graph (its copies depend on the model's "
                         f"activations); of the forward-only methods {converting} do; run {spec.name} with explain "
                         "or the Explainer")
    if spec.weighs_detections and target.matches_detections:
        raise UsageError(f"{spec.name} of a detector's box is D-RISE, whose matching of boxes runs in numpy and does "
                         "not convert; convert occlusion or kernelshap for a box, or run rise with explain")
    if target.reads_image_rows:
        raise UsageError(f"{spec.name} converts for a class score, not a region ({target.describe()})")
    chosen = target.select(prepare(model, input, target.output_name or output_name).for_rows,
                           in_place=not isinstance(model, PreparedModel))
    if chosen.batch == "fixed":
        raise ModelError(chosen.notes[0])
    x, y = chosen.input, chosen.output
    shape = chosen.image_shape
    if len(shape) != 4 or None in shape[1:]:
        raise UsageError(f"{spec.name}'s masks are fixed at conversion, which needs images of one size: the model's "
                         f"input is ({', '.join('?' if d is None else str(d) for d in shape)}); export it with a "
                         "fixed height and width")
    g = GraphBuilder(chosen.proto)
    graph = g.graph
    explained = g.shape(y)
    image_type = _checked_image_type(graph, x)
    for public in INPUT_NAMES + OUTPUT_NAMES:  # the model's own values keep working under fresh names
        if g.has_name(public):
            fresh = g.fresh(public)
            rename_value(graph, public, fresh)
            y = fresh if y == public else y
    channel_axis = 3 if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4) else 1  # as baselines.spatial_axes
    height, width = shape[1:3] if channel_axis == 3 else shape[2:]
    copies = spec.perturbations(height, width, channel_axis, seed)
    count, pixels = copies.count, height * width
    row_bytes = bytes_per_row(chosen.proto, x)
    # copy 0 is the image itself (its scores choose the class), copies 1..count the masked ones
    most = 1 if chosen.one_per_run else max(1, min(count + 1, FORWARD_RUN_ROWS, FORWARD_RUN_BYTES // row_bytes))
    steps = -(-(count + 1) // most)
    per_step = -(-(count + 1) // steps)  # equal steps; the last one's rows past count get zero masks, dropped

    # The network moves into the Loop's body with its weights: ONNX Runtime optimizes a body's
    # convolutions only with their weights in the body (read from the outer graph, the loop ran
    # 1.9x slower on the MNIST CNN).
    network, weights = list(graph.node), {t.name for t in graph.initializer}
    del graph.node[:]
    b = _Body(g)
    step, keep_going, keep_going_out = g.fresh("step"), g.fresh("keep_going"), g.fresh("keep_going_out")
    target_in, target_out, sum_in, sum_out = (g.fresh(n) for n in ("target_in", "target_out", "sum_in", "sum_out"))
    at = b.op("Add", b.op("Mul", step, g.const(np.int64(per_step))), g.ints(np.arange(per_step)))  # [B] copies
    index = b.op("Min", b.op("Max", b.op("Sub", at, g.const(np.int64(1))), g.const(np.int64(0))),
                 g.const(np.int64(count - 1)))  # the copies' masks
    real = b.op("Cast", b.op("And", b.op("Greater", at, g.const(np.int64(0))), b.op("Less", at, g.const(np.int64(
        count + 1)))), to=TensorProto.FLOAT)
    image_row = b.op("Cast", b.op("Equal", at, g.const(np.int64(0))), to=TensorProto.FLOAT)
    spread = g.ints([1, 2])
    masks = b.op("Mul", copies.graph_masks(b, index), b.op("Unsqueeze", real, spread))  # [B, H, W], 0 off the masks
    keep = b.op("Add", masks, b.op("Unsqueeze", image_row, spread))
    keep = b.op("Unsqueeze", keep, g.ints([0, 2] if channel_axis == 1 else [0, 4]))  # [1, B, 1, H, W] or NHWC
    base = b.op("Unsqueeze", "baseline", g.ints([1]))
    rows = b.op("Add", base, b.op("Mul", keep, b.op("Sub", b.op("Unsqueeze", x, g.ints([1])), base)))
    item = b.op("Slice", b.op("Shape", x), g.ints([1]), g.ints([4]))
    flat = b.op("Reshape", rows, b.op("Concat", g.ints([-1]), item, axis=0))  # [N * B, *image]
    for inner in (n for node in network for n in all_nodes_of(node)):  # (a subgraph reads the image too)
        inner.input[:] = [flat if i == x else i for i in inner.input]
    b.graph.node.extend(network)
    classes = b.op("Slice", b.op("Shape", y), g.ints([1]), g.ints([2]))
    by_image = b.op("Reshape", y, b.op("Concat", g.ints([-1, per_step]), classes, axis=0))  # [N, B, classes]
    first = b.op("Reshape", b.op("Slice", by_image, g.ints([0]), g.ints([1]), g.ints([1])),
                 b.op("Concat", g.ints([-1]), classes, axis=0))  # [N, classes]: the images at step 0
    chosen_class = b.op("Where", b.op("Equal", step, g.const(np.int64(0))), target.choose(b, first, target_in),
                        target_in, out=target_out)
    where = b.op("Expand", b.op("Reshape", chosen_class, g.ints([-1, 1, 1])),
                 b.op("Concat", b.op("Slice", b.op("Shape", by_image), g.ints([0]), g.ints([2])), g.ints([1]), axis=0))
    picked = b.op("Cast", b.op("Reshape", b.op("GatherElements", by_image, where, axis=2), g.ints([0, per_step])),
                  to=TensorProto.DOUBLE)  # [N, B]
    flat_masks = b.op("Cast", b.op("Reshape", masks, g.ints([per_step, pixels])), to=TensorProto.DOUBLE)
    b.op("Add", sum_in, b.op("MatMul", picked, flat_masks), out=sum_out)
    b.op("Identity", keep_going, out=keep_going_out)
    b.graph.name = g.fresh("masked_copies")
    b.graph.input.extend([helper.make_tensor_value_info(step, TensorProto.INT64, []),
                          helper.make_tensor_value_info(keep_going, TensorProto.BOOL, []),
                          helper.make_tensor_value_info(target_in, TensorProto.INT64, None),
                          helper.make_tensor_value_info(sum_in, TensorProto.DOUBLE, None)])
    b.graph.output.extend([helper.make_tensor_value_info(name, kind, None) for name, kind in (
        (keep_going_out, TensorProto.BOOL), (target_out, TensorProto.INT64), (sum_out, TensorProto.DOUBLE),
        (picked, TensorProto.DOUBLE), (first, TensorProto.FLOAT))])  # the last two stacked: [steps, N, ...]
    moved = [t for t in graph.initializer if t.name in weights]
    b.graph.initializer.extend(moved)
    kept = [t for t in graph.initializer if t.name not in weights]
    del graph.initializer[:]
    graph.initializer.extend(kept)

    n = g.op("Slice", g.op("Shape", x), g.ints([0]), g.ints([1]))
    zeros = g.op("ConstantOfShape", g.op("Concat", n, g.ints([pixels]), axis=0),
                 value=numpy_helper.from_array(np.zeros(1, np.float64)))
    used, masked, stacked, at_images = g.op("Loop", g.ints(steps), "", "target", zeros, body=b.graph, outputs=4,
                                            name="masked_copies_loop")
    g.op("Identity", used, out="target_used")
    g.op("Gather", at_images, g.ints(0), axis=0, out="scores")
    scores = g.op("Reshape", g.op("Transpose", stacked, perm=[1, 0, 2]), g.ints([0, -1]))  # [N, steps * B]
    scores = g.op("Slice", scores, g.ints([1]), g.ints([count + 1]), g.ints([1]))
    clean = g.op("Cast", g.op("Reshape", g.op("GatherElements", "scores", g.op("Unsqueeze", "target_used", g.ints([1])),
                                              axis=1), g.ints([-1])), to=TensorProto.DOUBLE)
    maps = g.op("Cast", copies.graph_maps(g, scores, masked, clean), to=TensorProto.FLOAT)  # [N, H * W]
    maps = g.op("Unsqueeze", g.op("Reshape", maps, g.ints([-1, height, width])), g.ints([channel_axis]))
    g.op("Expand", maps, g.op("Shape", x), out="attribution")
    del graph.input[:]
    del graph.output[:]
    del graph.value_info[:]
    graph.input.extend([
        helper.make_value_info(x, image_type),
        helper.make_tensor_value_info("baseline", TensorProto.FLOAT, [f"baseline_{i}" for i in range(4)]),
        helper.make_tensor_value_info("target", TensorProto.INT64, ["N"])])
    graph.output.extend([
        helper.make_value_info("attribution", image_type),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", (explained or [0, None])[-1]]),
        helper.make_tensor_value_info("target_used", TensorProto.INT64, ["N"])])
    prune(graph)
    info = {"method": spec.name, "rule": "none (forward only)", "gate": "none", "output": target.describe(),
            "input": x, "layers": [], "gated": [], "summary": spec.summary, "bytes_per_row": row_bytes * per_step,
            "rules": {}, "classes": target.classes(explained), "region": False, "image_shape": shape,
            "forward_passes": count, "copies_per_step": per_step, "seed": seed}
    chosen.proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(info))
    onnx.checker.check_model(skeleton(chosen.proto))
    return chosen.proto
