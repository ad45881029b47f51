"""Bring any exported CNN into one canonical form before differentiation: a modern opset, named
nodes, constants folded (shape arithmetic included where shapes are static), BatchNormalization
folded into its Conv or written as Mul + Add, Identity/Dropout removed, and quantized operators
written as their dequantized equivalents (dequantize.py)."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .dequantize import dequantize_operators, recover_rectifiers
from .errors import ModelError, UnsupportedModelError
from .graph import (HALF_TYPES, SKELETON_KEEPS, GraphBuilder, all_nodes, all_nodes_of, drop_unused_initializers,
                    prune, reads_of, skeleton)
from .runtime import onnxruntime

TARGET_OPSET = 18
MAX_FOLDED_BYTES = 64 << 20  # larger computed constants stay computed at run time
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli"}


class PrecisionNote(UserWarning):
    """The model was converted to another precision before differentiation."""


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def normalize(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """Return a canonical copy of a checked model (the argument is left untouched unless
    in_place: the intake normalizes the model it has just read, and copying vgg16 cost 0.9 s)."""
    model = upgrade_opset(model, in_place)
    _name_nodes(model.graph)
    if half_to_float(model):
        warnings.warn("the model computes in float16; gnl-onnx converted it to float32, so the attribution "
                      "is computed in float32 (the model's float16 weights are kept exactly)", PrecisionNote,
                      stacklevel=2)
    _remove_passthrough(model.graph)
    for _ in range(4):  # folding can reveal shapes, which can reveal more folding (and If conditions)
        folded = fold_constants(model)
        if not (inline_constant_ifs(model) or folded):
            break
    if dequantize_operators(model):  # QLinearConv & co. -> DequantizeLinear, float op, QuantizeLinear
        fold_constants(model)
    recover_rectifiers(model)  # the Relus the quantizer fused into quantization ranges
    _match_clip_bound_types(model)
    fold_batchnorm(model)
    prune(model.graph)
    return model


def upgrade_opset(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    version = default_opset(model)
    if version < 7:
        raise ModelError(f"the model uses opset {version}; opsets from 7 up are supported: re-export it")
    if version >= TARGET_OPSET:
        if in_place:
            return model
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    # Convert the graph without the weights' bytes (copying them dominated the cost), then put
    # the weights back: the converter adds constants but never rewrites existing initializers.
    weights = [t for t in model.graph.initializer if np.prod(t.dims) > SKELETON_KEEPS]
    declared = {i.name for i in model.graph.input}
    try:
        converted = onnx.version_converter.convert_version(skeleton(model), TARGET_OPSET)
    except Exception as e:  # the converter raises bare RuntimeErrors with C++ messages
        raise ModelError(f"could not upgrade the model from opset {version} to {TARGET_OPSET} "
                         f"({str(e).strip().splitlines()[0][:200]}); re-export it at opset {TARGET_OPSET}") from None
    moved = {t.name for t in weights} - declared
    inputs = [i for i in converted.graph.input if i.name not in moved]
    if in_place:  # the converted structure moves into the model, around its weights (never copied)
        graph, big = model.graph, {t.name for t in weights}
        for i in reversed(range(len(graph.initializer))):
            if graph.initializer[i].name not in big:
                del graph.initializer[i]
        for part in ("node", "input", "value_info"):
            del getattr(graph, part)[:]
        graph.node.extend(converted.graph.node)
        graph.input.extend(inputs)
        graph.value_info.extend(converted.graph.value_info)
        graph.initializer.extend(converted.graph.initializer)  # the small ones, as converted
        del model.opset_import[:]
        model.opset_import.extend(converted.opset_import)
        del model.functions[:]
        model.functions.extend(converted.functions)
        model.ir_version = max(model.ir_version, 8, converted.ir_version)
        return model
    del converted.graph.input[:]
    converted.graph.input.extend(inputs)
    converted.graph.initializer.extend(weights)
    converted.ir_version = max(model.ir_version, 8)
    converted.metadata_props.extend(model.metadata_props)
    for field_ in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(converted, field_, getattr(model, field_))
    return converted


def half_to_float(model: onnx.ModelProto) -> bool:
    """Rewrite a float16/bfloat16 graph (or its half parts) in float32: initializers, constant
    tensors, Cast targets, declared types. ONNX Runtime has few half kernels on the CPU and half
    gradients lose most of their digits; every float16 value is exact in float32. Returns whether
    anything was half."""
    graph = model.graph
    changed = False
    for tensor in graph.initializer:
        if tensor.data_type in HALF_TYPES:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
            changed = True
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in HALF_TYPES:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32),
                                                        attr.t.name))
                changed = True
            elif attr.type == onnx.AttributeProto.INT and attr.name in ("to", "dtype") and attr.i in HALF_TYPES:
                attr.i = onnx.TensorProto.FLOAT
                changed = True
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type in HALF_TYPES:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
            changed = True
    return changed


def _match_clip_bound_types(model: onnx.ModelProto) -> None:
    """Opset < 11 Clip kept min/max as attributes; the converter turns them into float32 inputs
    even when the clipped tensor is double or half."""
    builder = GraphBuilder(model)
    for node in model.graph.node:
        elem = builder.elem_type(node.input[0]) if node.op_type == "Clip" else None
        if not elem or elem == onnx.TensorProto.FLOAT:
            continue
        for i in (1, 2):
            bound = node.input[i] if i < len(node.input) else ""
            if bound in builder.constants and builder.constants[bound].dtype != helper.tensor_dtype_to_np_dtype(elem):
                node.input[i] = builder.const(builder.constants[bound], dtype=helper.tensor_dtype_to_np_dtype(elem),
                                              name=bound)


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Every node gets a unique name: errors and gating reports refer to nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in {i for inner in all_nodes_of(node) for i in inner.input}:  # bodies read outer values
            users.setdefault(name, []).append(node)
    return users


def _remove_passthrough(graph: onnx.GraphProto) -> None:
    """Identity and inference-mode Dropout compute nothing: drop them (kept where they name a
    graph output, since a graph output must be produced by some node)."""
    outputs = {o.name for o in graph.output}
    users = _consumers(graph)
    keep, renamed = [], {}
    for node in graph.node:
        passthrough = node.op_type == "Identity" or (
            node.op_type == "Dropout" and not any(users.get(o) for o in node.output[1:]))
        if passthrough and node.output[0] not in outputs:
            renamed[node.output[0]] = renamed.get(node.input[0], node.input[0])
            continue
        if node.op_type == "Dropout":  # a graph output: keep it as a plain Identity
            node.CopyFrom(helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    for node in all_nodes(graph):  # the uses of what was dropped read its input (bodies too)
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]


def fold_constants(model: onnx.ModelProto) -> bool:
    """Evaluate every node whose inputs are all known (initializers, Constant outputs, shapes of
    statically shaped values). Returns whether anything changed."""
    graph = model.graph
    builder = GraphBuilder(model)
    known = builder.constants
    outputs = {o.name for o in graph.output}
    opsets = list(model.opset_import)
    keep, changed = [], False
    partial: dict[str, tuple] = {}  # Shape outputs of values whose batch dim is dynamic
    for node in graph.node:
        if node.op_type == "Shape" and not node.attribute:
            partial[node.output[0]] = builder.shape(node.input[0])
        value = _evaluate(node, known, builder, opsets) or _static_part_of_shape(node, partial, known)
        if value is None or any(o in outputs for o in node.output):
            keep.append(node)
            continue
        known.update(value)
        changed = True
    if not changed:
        return False
    # in order of first use, not set order: the model's bytes must not depend on PYTHONHASHSEED
    used = dict.fromkeys([name for node in keep for inner in all_nodes_of(node) for name in inner.input]
                         + [o.name for o in graph.output])
    existing = {t.name for t in graph.initializer}
    folded = known.names() - existing
    for name in (n for n in used if n in folded):
        graph.initializer.append(numpy_helper.from_array(known[name], name))
    del graph.node[:]
    graph.node.extend(keep)
    return True


def inline_constant_ifs(model: onnx.ModelProto) -> bool:
    """An If whose condition is a constant (after folding: often a shape test) is replaced by the
    nodes of the branch it takes; the branch's own values are renamed so they cannot collide with
    the outer graph's. Returns whether anything changed. An If decided only at run time stays
    (the reverse pass refuses it, naming the node)."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    keep, changed, taken = [], False, 0
    for node in graph.node:
        if node.op_type != "If" or node.input[0] not in constants:
            keep.append(node)
            continue
        condition = numpy_helper.to_array(constants[node.input[0]])
        branch_name = "then_branch" if bool(np.asarray(condition).reshape(-1)[0]) else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == branch_name)
        taken += 1
        prefix = f"{node.name or 'If'}_{branch_name}_{taken}/"
        local = {v for n in branch.node for v in n.output if v} | {t.name for t in branch.initializer}
        renamed = {name: prefix + name for name in local}
        for tensor in branch.initializer:
            copy = graph.initializer.add()
            copy.CopyFrom(tensor)
            copy.name = renamed[tensor.name]
        for index, inner in enumerate(branch.node):
            copy = onnx.NodeProto()
            copy.CopyFrom(inner)
            copy.name = f"{prefix}{inner.name or inner.op_type}_{index}"
            for i, name in enumerate(copy.input):
                copy.input[i] = renamed.get(name, name)
            for i, name in enumerate(copy.output):
                copy.output[i] = renamed.get(name, name)
            for sub in (s for a in copy.attribute for s in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)):
                for n in all_nodes(sub):  # nested subgraphs read the branch's values by name
                    for i, name in enumerate(n.input):
                        n.input[i] = renamed.get(name, name)
            keep.append(copy)
        for produced, result in zip(branch.output, node.output):
            keep.append(helper.make_node("Identity", [renamed.get(produced.name, produced.name)], [result],
                                         name=f"{prefix}{result}"))
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(keep)
        _remove_passthrough(graph)
    return changed


def _static_part_of_shape(node, partial, known) -> dict | None:
    """x.shape[1] and x.shape[1:] are constants even when x.shape[0] (the batch) is not."""
    if node.op_type not in ("Gather", "Slice") or node.input[0] not in partial or partial[node.input[0]] is None:
        return None
    dims = np.array([d if isinstance(d, int) else -1 for d in partial[node.input[0]]], dtype=np.int64)
    if not all(i in known for i in node.input[1:] if i):
        return None
    if node.op_type == "Gather":
        try:
            picked = dims[known[node.input[1]]]
        except IndexError:
            raise ModelError(f"node '{node.name}' reads dimension {known[node.input[1]]} of a {len(dims)}-D "
                             "shape; the model is broken: re-export it") from None
    else:
        starts, ends = known[node.input[1]], known[node.input[2]]
        steps = known[node.input[4]] if len(node.input) > 4 and node.input[4] else [1]
        picked = dims[int(starts[0]):int(ends[0]) if ends[0] < 2**62 else None:int(steps[0])]
    return None if np.any(picked < 0) else {node.output[0]: picked}


def _evaluate(node, known, builder, opsets) -> dict | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in NONDETERMINISTIC:
        return None
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return None
    if node.op_type in ("Shape", "Size"):
        shape = builder.shape(node.input[0])
        if shape is None or not all(isinstance(d, int) for d in shape):
            return None
        if node.op_type == "Size":
            return {node.output[0]: np.array(int(np.prod(shape)), dtype=np.int64)}
        attrs = {a.name: a.i for a in node.attribute}
        dims = np.array(shape, dtype=np.int64)[attrs.get("start", 0):attrs.get("end", len(shape)) or None]
        if "end" in attrs and attrs["end"] == 0:
            dims = dims[:0]
        return {node.output[0]: dims}
    inputs = [name for name in node.input if name]
    if not all(name in known for name in inputs):
        return None
    if node.op_type == "DequantizeLinear":  # weight-only quantization; the reference has it from opset 19 only
        return _dequantize(node, known)
    from onnx.reference import ReferenceEvaluator

    feeds = {name: known[name] for name in inputs}
    single = helper.make_model(
        helper.make_graph([node], "fold",
                          [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
                           for n, a in feeds.items()],
                          [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                           for o in node.output if o]),
        opset_imports=opsets)
    try:
        results = ReferenceEvaluator(single).run(None, feeds)
    except Exception:  # leave anything the reference cannot evaluate to the run time
        return None
    values = {o: np.asarray(r) for o, r in zip([o for o in node.output if o], results)}
    if sum(v.nbytes for v in values.values()) > MAX_FOLDED_BYTES:
        return None
    return values


def _dequantize(node, known) -> dict | None:
    """(x - zero_point) * scale, per tensor or per axis, as ONNX Runtime computes it."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("block_size"):
        return None
    x, scale = known[node.input[0]], known[node.input[1]]
    zero = known[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.int64)
    if scale.ndim == 1 and scale.size > 1 and x.ndim > 0:  # a 1-element scale is per tensor
        per_axis = [1] * x.ndim
        per_axis[attrs.get("axis", 1) % x.ndim] = -1
        scale, zero = scale.reshape(per_axis), zero.reshape(per_axis)
    value = (x.astype(np.float64) - zero.astype(np.float64)) * scale.astype(np.float64)
    return {node.output[0]: value.astype(scale.dtype)}


def fold_batchnorm(model: onnx.ModelProto) -> None:
    """Inference BatchNormalization is an affine map per channel: merge it into the Conv that feeds
    it when nothing else reads the Conv's output, otherwise write it as Mul + Add."""
    graph = model.graph
    builder = GraphBuilder(model)
    constants = builder.constants
    producers = {o: n for n in graph.node for o in n.output}
    users = _consumers(graph)
    outputs = {o.name for o in graph.output}
    removed = set()
    for bn in [n for n in graph.node if n.op_type == "BatchNormalization"]:
        attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
        if attrs.get("training_mode", 0) or len([o for o in bn.output if o]) > 1:
            raise UnsupportedModelError({"BatchNormalization (training mode)": [bn.name]},
                                        hint="export the model in eval/inference mode")
        params = [constants.get(name) for name in bn.input[1:5]]
        if any(p is None for p in params):
            continue  # statistics computed at run time: the BatchNormalization rule handles it
        scale, bias, mean, var = (p.astype(np.float64) for p in params)
        factor = scale / np.sqrt(var + attrs.get("epsilon", 1e-5))
        shift = bias - mean * factor
        conv = producers.get(bn.input[0])
        if (conv is not None and conv.op_type == "Conv" and len(users.get(bn.input[0], [])) == 1
                and bn.input[0] not in outputs and conv.input[1] in constants
                and (len(conv.input) < 3 or not conv.input[2] or conv.input[2] in constants)):
            weight = constants[conv.input[1]]
            old_bias = constants[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else 0.0
            new_weight = (weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype)
            new_bias = (np.asarray(old_bias, np.float64) * factor + shift).astype(weight.dtype)
            w_name = builder.const(new_weight, dtype=weight.dtype, name=f"{conv.name}_W_bnfolded")
            b_name = builder.const(new_bias, dtype=weight.dtype, name=f"{conv.name}_B_bnfolded")
            del conv.input[1:]
            conv.input.extend([w_name, b_name])
            conv.output[0] = bn.output[0]
            removed.add(bn.name)
            continue
        rank = builder.rank(bn.input[0]) or 4
        float_type = helper.np_dtype_to_tensor_dtype(params[0].dtype)
        shape = (-1,) + (1,) * (rank - 2)
        np_type = helper.tensor_dtype_to_np_dtype(float_type)
        mul_c = builder.const(factor.reshape(shape), dtype=np_type, name=f"{bn.name}_scale")
        add_c = builder.const(shift.reshape(shape), dtype=np_type, name=f"{bn.name}_shift")
        scaled = builder.fresh(f"{bn.name}_scaled")
        mul = helper.make_node("Mul", [bn.input[0], mul_c], [scaled], name=builder.fresh(f"{bn.name}_mul"))
        add = helper.make_node("Add", [scaled, add_c], [bn.output[0]], name=builder.fresh(f"{bn.name}_add"))
        index = list(graph.node).index(bn)
        graph.node.insert(index, add)
        graph.node.insert(index, mul)
        removed.add(bn.name)
    nodes = [n for n in graph.node if n.name not in removed or n.op_type != "BatchNormalization"]
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)


def has_unknown_dims(builder: GraphBuilder, names, batch_symbol) -> bool:
    """Whether shape inference left a dim (other than the batch) unknown on the path."""
    for name in names:
        shape = builder.shape(name)
        if shape is None or any(not isinstance(d, int) and d != batch_symbol for d in shape):
            return True
    return False


# Ops whose output shape follows their input's values (and control flow, whose branches may
# differ): what a detector's score threshold or NMS keeps.
DATA_SHAPED = {"NonZero", "NonMaxSuppression", "Compress", "Unique", "If", "Loop", "Scan"}


def data_shaped(model: onnx.ModelProto, x: str) -> set[str]:
    """The values computed after an op of DATA_SHAPED that reads the image: their sizes may
    change from one image to the next (the number of boxes kept), however a probe measured them."""
    reached, tainted = {x}, set()
    for node in model.graph.node:
        reads = reads_of(node)
        if reads & reached:
            reached.update(node.output)
            if node.op_type in DATA_SHAPED or reads & tainted:
                tainted.update(o for o in node.output if o)
    return tainted


def probe_shapes(model: onnx.ModelProto, x: str, names) -> None:
    """Fill in the shapes static inference could not derive (e.g. Reshape fed by computed shapes
    on a dynamic batch) by running the checked forward graph at batch 1 and 2 (a batch fixed in the
    graph: on two draws): dims that change with the batch get the batch's symbol, those that change
    otherwise and those of values after a data-shaped op (data_shaped) stay unknown, all others
    are static."""
    declared = next(i for i in model.graph.input if i.name == x).type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in declared.shape.dim]
    symbol = declared.shape.dim[0].dim_param if dims and dims[0] is None else None
    if not dims or any(d is None for d in dims[1:]):
        return  # only the batch may be free: nothing to probe with
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    wanted = [n for n in names if n not in outputs and n != x]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted)
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    np_type = helper.tensor_dtype_to_np_dtype(declared.elem_type)
    rng = np.random.default_rng(0)
    shapes, types = [], []
    try:  # the checker passed, but only running it proves a model computes (e.g. Reshape sizes)
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for batch in ((1, 2) if dims[0] is None else (dims[0], dims[0])):
            feed = rng.standard_normal([batch] + dims[1:]).astype(np_type)
            values = session.run(wanted, {x: feed})
            shapes.append([v.shape for v in values])
            types = [helper.np_dtype_to_tensor_dtype(v.dtype) for v in values]
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own unrelated classes
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ModelError(f"the model fails when run on an input of its declared shape ({first}); it is "
                         "broken: re-export it") from None
    infos = {v.name: v for v in model.graph.value_info}
    builder, varying = GraphBuilder(model), data_shaped(model, x)
    for i, name in enumerate(wanted):
        observed = [s[i] for s in shapes]
        shape = [d if all(o[k] == d for o in observed) else _batch_multiple(symbol, [o[k] for o in observed])
                 for k, d in enumerate(observed[0])]
        if name in varying:  # what inference knew stands; a measured size held for this draw only
            known = builder.shape(name)
            shape = [k if isinstance(k, (int, str)) else None for k in known] if known and len(known) == len(shape) \
                else [None] * len(shape)
        info = helper.make_tensor_value_info(name, types[i], shape)
        if name in infos:
            infos[name].CopyFrom(info)
        else:
            model.graph.value_info.append(info)


def _batch_multiple(symbol, sizes):
    """A dim that grows with the batch is the batch only when it equals it: windows or tokens
    folded into the batch axis (Swin's B * windows, a ViT's B * tokens) are k times the batch,
    and ONNX Runtime trusts equal symbols (re-used buffers, folded shapes), so they get their own
    symbol 'k*batch' (None, unknown, if the dim is no multiple of the batch)."""
    if sizes[0] == 1 and sizes[1] == 2:
        return symbol
    if sizes[1] == 2 * sizes[0] and symbol:
        return f"{sizes[0]}*{symbol}"
    return None
