"""A usable batch dimension. Attribution runs many rows at once (path points x images), but model
zoos and many tf2onnx exports fix the batch at 1, and normalization folds that 1 into every
computed shape. Where the graph allows, the batch is rewritten to a free dimension (Reshape targets
that copy it, constants concatenated beside batched values) and the rewrite is verified by running
both graphs; where it does not, the graph is kept and later run one row at a time inside a Scan."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph import GraphBuilder, all_nodes_of, graph_inputs, reads_of, rename_value, rename_values, topological_sort
from .runtime import onnxruntime

BATCH_SYMBOL = "N"
_BROKEN = object()  # the original model itself fails: a problem for later stages to name, not a batch one
VERIFY_TOLERANCE = 1e-4  # max abs difference over max abs value: rewritten batch-2 vs two batch-1 runs


def make_batch_usable(model: onnx.ModelProto, x: str, y: str) -> tuple[onnx.ModelProto, str, str | None]:
    """(model, how, note): how is "dynamic", "made dynamic", "one per run" (a batch of 1 baked in)
    or "fixed" (a batch above 1 baked in: its own gradient works, attribution runs cannot); note is
    a line for the user when the model runs slower than it could, or not at all."""
    dims = next(i for i in model.graph.input if i.name == x).type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_value"):
        return model, "dynamic", None
    fixed = dims[0].dim_value
    rewritten, _ = _free_batch(model, x, fixed)
    problem = _verify(model, rewritten, x, y, fixed)
    if problem is None:
        return rewritten, "made dynamic", None
    if problem is _BROKEN:  # later stages name what is wrong with the model; a note would only add noise
        if fixed == 1:
            return model, "one per run", None
        problem = f"the model fails when run at its batch of {fixed}"
    if fixed != 1:  # its gradient still works at that batch; attribution runs need more rows
        return model, "fixed", (f"the model's batch is fixed at {fixed} and its graph depends on it ({problem}); "
                                "re-export it with a dynamic batch dimension")
    return model, "one per run", (f"the model's batch is fixed at 1 and its graph cannot take more ({problem}): "
                                  "images and steps run one at a time (slower); re-export it with a dynamic "
                                  "batch to run them together")


def _free_batch(model: onnx.ModelProto, x: str, fixed: int) -> tuple[onnx.ModelProto, list[str]]:
    """A copy with the batch free: the input's first dim becomes a symbol, Reshape targets that
    restate the fixed batch copy it instead (0), and constants concatenated beside batched values
    (a ViT class token) are expanded to the batch. Returns the copy and the nodes changed."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    builder = GraphBuilder(copy)
    batched = _downstream(graph, x)
    changed = []
    nodes = list(graph.node)
    for node in nodes:
        if node.op_type == "Reshape" and node.input[0] in batched and node.input[1] in builder.constants:
            target = builder.constants[node.input[1]]
            data = builder.shape(node.input[0])
            if target.ndim == 1 and target.size and target[0] == fixed and data and data[0] == fixed \
                    and 0 not in target[1:]:
                # 0 copies the input's dim, which allowzero=1 (dynamo exports) would read as empty:
                # without other zeros in the target, allowzero changes nothing else
                node.input[1] = builder.ints([0, *target[1:].tolist()])
                for attr in node.attribute:
                    if attr.name == "allowzero":
                        attr.i = 0
                changed.append(f"Reshape '{node.name}'")
        elif node.op_type == "Concat":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            live = next((i for i in node.input if i in batched), None)
            if live is None or axis % max(builder.rank(live) or 1, 1) == 0:
                continue
            for k, name in enumerate(node.input):
                shape = builder.shape(name)
                if name not in batched and shape and shape[0] == fixed and all(isinstance(d, int) for d in shape):
                    batch = builder.op("Shape", live, start=0, end=1)
                    full = builder.op("Concat", batch, builder.ints(list(shape[1:])), axis=0)
                    node.input[k] = builder.op("Expand", name, full, name=f"{node.name}_batch_{k}")
                    changed.append(f"Concat '{node.name}'")
    if len(graph.node) > len(nodes):  # the builder appended its nodes: put each before its consumer
        topological_sort(graph)
    _free_first_dim(graph, x, fixed, batched)
    return copy, changed


def _downstream(graph: onnx.GraphProto, x: str) -> set[str]:
    reached = {x}
    for node in graph.node:
        if any(i in reached for i in node.input):
            reached.update(o for o in node.output if o)
    return reached


def _free_first_dim(graph: onnx.GraphProto, x: str, fixed: int, batched: set[str]) -> None:
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if (value.name == x or value.name in batched) and dims and dims[0].HasField("dim_value") \
                and dims[0].dim_value == fixed:
            dims[0].Clear()
            dims[0].dim_param = BATCH_SYMBOL
    del graph.value_info[:]  # inferred with the fixed batch; the runtime infers them again


def _verify(original: onnx.ModelProto, rewritten: onnx.ModelProto, x: str, y: str, fixed: int) -> str | None:
    """None when the rewritten model, run on two batches at once, gives what the original gives
    on each; else what went wrong."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing run is an expected answer here, not a message for the user
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    value = next(i for i in original.graph.input if i.name == x).type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else 1 for d in value.shape.dim]
    np_type = helper.tensor_dtype_to_np_dtype(value.elem_type)
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(dims).astype(np_type) for _ in range(2)]
    try:
        before = ort.InferenceSession(original.SerializeToString(), options, providers=["CPUExecutionProvider"])
        expected = np.concatenate([before.run([y], {x: p})[0] for p in parts])
        del before
    except Exception:  # noqa: BLE001 - the model fails on its own: later stages say why, not a batch note
        return _BROKEN
    try:
        after = ort.InferenceSession(rewritten.SerializeToString(), options, providers=["CPUExecutionProvider"])
        got = after.run([y], {x: np.concatenate(parts)})[0]
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own unrelated classes
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    if got.shape != expected.shape:
        return f"two images at once give output shape {list(got.shape)}"
    scale = float(np.nanmax(np.abs(expected))) if expected.size and np.isfinite(expected).any() else 1.0
    error = np.abs(got.astype(np.float64) - expected)
    if not np.allclose(got, expected, rtol=0, atol=VERIFY_TOLERANCE * (scale or 1.0), equal_nan=True):
        return f"images in one batch change each other's outputs by {float(np.nanmax(error)):.3g}"
    return None


def run_rows_one_at_a_time(model: onnx.ModelProto, rows: list[str]) -> None:
    """Rewrite in place a graph whose outputs and `rows` inputs have a leading batch of 1 into one
    that takes any batch and runs the old graph on each row in turn, inside Scans (the weights and
    other inputs stay in the outer graph, which the bodies read). One Scan per output, each with
    only the nodes that output needs: one Scan for all would tie the forward output to the
    backward's seed, which an attribution graph computes from that very output (the top-1 class)."""
    graph = model.graph
    inputs = {v.name: v for v in graph_inputs(graph) if v.name in rows}
    outputs = list(graph.output)
    scope = {n for node in graph.node for n in (*node.input, *node.output)} | {t.name for t in graph.initializer}
    scope |= set(inputs) | {v.name for v in outputs}

    def fresh(base: str) -> str:
        name, k = f"{base}_row", 0
        while name in scope:
            k += 1
            name = f"{base}_row{k}"
        scope.add(name)
        return name

    axes = fresh("row_axes")
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), axes))
    scans = []
    for output in outputs:
        needed, nodes = {output.name}, []
        for node in reversed(graph.node):
            if any(o in needed for o in node.output):
                nodes.append(node)
                needed.update(reads_of(node))
        nodes.reverse()
        body = helper.make_graph(nodes, fresh(f"{output.name}_body"), [], [])
        # values computed inside get names of their own: the same name in two bodies, or in a body
        # and the outer graph, is not valid ONNX (and renaming an outer value would reach them)
        local = {o: fresh(o) for node in body.node for inner in all_nodes_of(node) for o in inner.output if o}
        rename_values(body, local)
        used = [inputs[name] for name in inputs if name in needed]
        prologue = []
        for value in used:
            inside, row = fresh(value.name), fresh(f"{value.name}_slice")
            rename_value(body, value.name, inside)
            body.input.append(_without_first_dim(value, row))
            prologue.append(helper.make_node("Unsqueeze", [row, axes], [inside], name=fresh("unsqueeze")))
        inside, row = local[output.name], fresh(f"{output.name}_slice")
        body.output.append(_without_first_dim(output, row))
        squeeze = helper.make_node("Squeeze", [inside, axes], [row], name=fresh("squeeze"))
        ordered = prologue + list(body.node) + [squeeze]
        del body.node[:]
        body.node.extend(ordered)
        scans.append(helper.make_node("Scan", [v.name for v in used], [output.name], name=fresh(f"{output.name}_rows"),
                                      body=body, num_scan_inputs=len(used)))
    del graph.node[:]
    graph.node.extend(scans)
    for value in (*graph.input, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if (value.name in inputs or value in outputs) and dims:
            dims[0].Clear()
            dims[0].dim_param = BATCH_SYMBOL
    del graph.value_info[:]


def _without_first_dim(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
    return helper.make_tensor_value_info(name, tensor.elem_type, dims[1:] if tensor.HasField("shape") else None)
