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
from .graph import GraphBuilder, prune, rename_value, skeleton, topological_sort
from .intake import PreparedModel, prepare
from .methods import (LRP_METHODS, MAX_GAUSS_LEGENDRE_STEPS, METHODS, Method, get_method,  # noqa: F401 - also
                      path_points)  # imported from here (METHODS, get_method: used)
from .targets import OUTPUT_KINDS, get_target, select_output, selected  # noqa: F401 - also imported from here
from .vjp import build_vjp, vjp_report

METADATA_KEY = "gnl_onnx.attribution"
INPUT_NAMES = ("baseline", "target", "alphas", "weights", "noise", "score_rows")
ALL_ROWS = np.iinfo(np.int64).max
OUTPUT_NAMES = ("attribution", "scores", "target_used", "baseline_scores")


def attribution_model(model, method: str = "gnl_ig", gate: str = "paper",
                      output: str = "logit", input: str | None = None,
                      output_name: str | None = None, layer=None, bounds=None) -> onnx.ModelProto:
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
    first block of points."""
    spec = get_method(method).wrapped()  # a wrapper that runs its inner method's graph builds that one
    if spec.forward_only:
        raise UsageError(f"{method} runs the model on perturbed copies of the image (forward passes only), which "
                         "no attribution graph holds; run it with explain or the Explainer")
    if layer and not spec.takes_layer:
        cams = ", ".join(name for name, m in METHODS.items() if m.takes_layer)
        raise UsageError(f"--layer (layer=) is for the CAM methods ({cams}), not {method}")
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
    image_type = next(i.type for i in graph.input if i.name == x)
    if image_type.tensor_type.elem_type != TensorProto.FLOAT:
        raise UsageError("attribution models are built for float32 image inputs")

    if x in INPUT_NAMES + OUTPUT_NAMES:
        raise UsageError(f"the model's image input is named '{x}', a name the attribution model gives to "
                         "another input or output; rename the model's input")
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


def bytes_per_row(vjp: onnx.ModelProto, x: str) -> int:
    """Peak bytes of the values alive at once per batch row, walking the graph in order (a
    value lives from its producer to its last consumer; graph outputs to the end): what one path
    point of one image needs when the runtime frees buffers after their last use, as ONNX Runtime's
    planner does. Summing every value instead overstates it about threefold on ResNet-50, and
    smaller step chunks than the memory allows run slower."""
    builder = GraphBuilder(vjp)
    batch = (builder.shape(x) or [None])[0]

    def size(name: str) -> int:
        shape, kind = builder.shape(name), builder.elem_type(name)
        if shape and shape[0] == batch and all(isinstance(d, int) for d in shape[1:]):
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
