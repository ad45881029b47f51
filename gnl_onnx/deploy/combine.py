"""Several attribution methods in one ONNX model, the network's weights stored once.

Each method's attribution graph (gnl_onnx.attribution) keeps its own inputs and outputs, named
`<method>.<name>` (`gradcam.attribution`, `ig.alphas`, ...); the image input is shared and keeps
the model's own name. Every input but the image gets a default (an overridable initializer): the
method's points for the conversion's step count, a zero baseline, target -1 (the top-1 class) and
no noise, so a caller that only has an image feeds the image alone and asks for the outputs it
wants; ONNX Runtime runs only the nodes those outputs need. Initializers with the same bytes (the
network's weights, which every method's graph holds) are kept once."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
from onnx import numpy_helper

from ..attribution import attribution_info, attribution_model
from ..errors import UsageError
from ..graph import all_nodes, skeleton, subgraphs
from ..intake import prepare
from ..methods import get_method, split_method_list

METADATA_KEY = "gnl_onnx.methods"
SEPARATOR = "."
PER_METHOD_INPUTS = ("baseline", "target", "alphas", "weights", "noise")


def combined_name(method: str, name: str) -> str:
    """The name of a method's input or output in a combined model."""
    return f"{method}{SEPARATOR}{name}"


def parse_method_list(text: str) -> list[str]:
    """'gnl_ig,ig,gradcam' -> the methods, checked, without repeats (options kept: 'rise:masks=200,cells=3')."""
    methods = list(dict.fromkeys(m for m in split_method_list(text) if m))
    if not methods:
        raise UsageError("--methods needs at least one method, e.g. --methods gnl_ig,ig,gradcam")
    for m in methods:
        spec = get_method(m)  # unknown names fail here, with the list of known ones
        if spec.draws_noise or spec.noisy_copies:
            raise UsageError(f"{m} draws new noise on every call, which a model with fixed defaults cannot; "
                             "convert it alone with --method and feed the noise yourself (see `convert`'s help)")
    return methods


def combined_model(model, methods: list[str], steps: int = 32, integration: str = "gausslegendre",
                   gate: str = "paper", output: str = "logit", input: str | None = None,
                   output_name: str | None = None, layer=None, compact: bool = False) -> onnx.ModelProto:
    """One model computing every method in `methods` (see the module docstring). compact: the
    backward's transposed convolution kernels are computed from the network's own (a few ops,
    folded by ONNX Runtime when it loads the model) instead of stored beside them."""
    prepared = prepare(model, input, output_name)  # read and checked once for all methods
    merged = None
    image = None
    seen: dict[tuple, str] = {}  # (dtype, dims, bytes digest) -> the name the bytes are kept under
    infos = []
    for method in methods:
        spec = get_method(method)
        part = attribution_model(prepared, method=method, gate=gate, output=output, input=input,
                                 output_name=output_name, layer=layer if spec.takes_layer else None)
        info = attribution_info(part)
        image = info["input"]
        alphas, weights = spec.points(spec.steps_run(steps), integration)
        rank = len(info["image_shape"])
        defaults = {"baseline": np.zeros((1,) * rank, np.float32), "target": np.full(1, -1, np.int64),
                    "alphas": alphas, "weights": weights, "noise": np.zeros((1,) * (rank + 1), np.float32)}
        if compact:
            derive_transposed_kernels(part.graph)
        declared = {i.name: i for i in part.graph.input}
        for name, value in defaults.items():
            if name in declared:
                part.graph.initializer.append(numpy_helper.from_array(value, name))
                # free dims: a default's [1] must not bind the batch's symbol N (nor one method's S another's)
                for dim in declared[name].type.tensor_type.shape.dim:
                    dim.Clear()
        _prefix(part.graph, f"{method}{SEPARATOR}", keep={image})
        _share_initializers(part.graph, seen)
        infos.append({**info, "steps": len(alphas), "alphas": alphas.tolist(), "weights": weights.tolist(),
                      "outputs": {o.name.split(SEPARATOR, 1)[1]: o.name for o in part.graph.output}})
        if merged is None:
            merged = part
            del merged.metadata_props[:]
            continue
        graph = merged.graph
        kept = {t.name for t in graph.initializer}
        graph.initializer.extend(t for t in part.graph.initializer if t.name not in kept)
        graph.input.extend(i for i in part.graph.input if i.name != image)
        graph.output.extend(part.graph.output)
        graph.node.extend(part.graph.node)
        graph.value_info.extend(part.graph.value_info)
        have = {o.domain: o for o in merged.opset_import}
        for o in part.opset_import:
            if o.domain not in have:
                merged.opset_import.append(o)
            elif have[o.domain].version != o.version:
                raise UsageError(f"methods built graphs of different opsets ({o.domain or 'ai.onnx'} "
                                 f"{have[o.domain].version} and {o.version}); convert them separately")
        known = {f.name for f in merged.functions}
        merged.functions.extend(f for f in part.functions if f.name not in known)
    merged.graph.name = "gnl_onnx_" + "_".join(m.replace(":", "_") for m in methods)
    merged.metadata_props.add(key=METADATA_KEY, value=json.dumps({"input": image, "methods": dict(zip(methods, infos))}))
    onnx.checker.check_model(skeleton(merged))
    return merged


def combined_info(model: onnx.ModelProto) -> dict:
    """What combined_model wrote into the model: the image input and, per method, its attribution
    info, points and output names."""
    entry = next((p for p in model.metadata_props if p.key == METADATA_KEY), None)
    if entry is None:
        raise UsageError("this model was not made by gnl-onnx convert --methods")
    return json.loads(entry.value)


def _prefix(graph: onnx.GraphProto, prefix: str, keep: set[str]) -> None:
    """Prefix every value and node name the graph defines (subgraphs' own names are their own)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {
        o for n in graph.node for o in n.output}
    names = {n: prefix + n for n in defined if n and n not in keep}
    for node in all_nodes(graph):
        for values in (node.input, node.output):
            for i, name in enumerate(values):
                values[i] = names.get(name, name)
        if node.name:
            node.name = prefix + node.name
    for field in (graph.initializer, graph.input, graph.output, graph.value_info):
        for item in field:
            item.name = names.get(item.name, item.name)
    _prefix_subgraph_declarations(graph, names)


def _prefix_subgraph_declarations(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    for node in graph.node:
        for sub in subgraphs(node):
            for field in (sub.initializer, sub.input, sub.output, sub.value_info):
                for item in field:
                    item.name = names.get(item.name, item.name)
            _prefix_subgraph_declarations(sub, names)


def _share_initializers(graph: onnx.GraphProto, seen: dict[tuple, str]) -> None:
    """Point every initializer whose bytes were kept before at that copy, and drop this one."""
    inputs = {i.name for i in graph.input}
    renamed = {}
    unique = []
    for t in graph.initializer:
        if t.name in inputs:  # a default the caller may override stays the method's own
            unique.append(t)
            continue
        array = numpy_helper.to_array(t)
        key = (t.data_type, tuple(t.dims), hashlib.sha256(array.tobytes()).hexdigest())
        if key in seen:
            renamed[t.name] = seen[key]
        else:
            seen[key] = t.name
            unique.append(t)
    if renamed:
        for node in all_nodes(graph):
            for i, name in enumerate(node.input):
                node.input[i] = renamed.get(name, name)
        del graph.initializer[:]
        graph.initializer.extend(unique)


TRANSPOSED = "_transposed"  # the suffix gnl_onnx.autodiff.rules.conv.transposed_kernel names its kernels with


def derive_transposed_kernels(graph: onnx.GraphProto) -> int:
    """Replace each stored transposed kernel ([Cout, Cin/g, *k] -> [Cin, Cout/g, *k], each group's
    channels swapped, the kernel flipped) that equals the transform of an initializer of the graph
    by the ops that compute it. Returns the bytes no longer stored."""
    stored = {t.name: t for t in graph.initializer}
    nodes, dropped, saved = [], set(), 0
    for name, tensor in stored.items():
        source = stored.get(name[:-len(TRANSPOSED)]) if name.endswith(TRANSPOSED) else None
        if source is None or len(source.dims) < 3 or len(tensor.dims) != len(source.dims):
            continue
        w = numpy_helper.to_array(source)
        cout, cin_g, kernel = w.shape[0], w.shape[1], list(w.shape[2:])
        group = tensor.dims[0] // cin_g if cin_g and tensor.dims[0] % cin_g == 0 else 0
        if not group or cout % group:
            continue
        flip = (slice(None), slice(None)) + (slice(None, None, -1),) * len(kernel)
        expected = w.reshape(group, cout // group, cin_g, *kernel).swapaxes(1, 2).reshape(
            group * cin_g, cout // group, *kernel)[flip]
        if expected.shape != tuple(tensor.dims) or not np.array_equal(expected, numpy_helper.to_array(tensor)):
            continue
        axes = list(range(2, 2 + len(kernel)))
        consts = {"a": [group, cout // group, cin_g, *kernel], "b": [group * cin_g, cout // group, *kernel],
                  "starts": [-1] * len(axes), "ends": [-(2 ** 62)] * len(axes), "axes": axes, "steps": [-1] * len(axes)}
        for key, value in consts.items():
            graph.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{name}.{key}"))
        nodes += [onnx.helper.make_node("Reshape", [source.name, f"{name}.a"], [f"{name}.grouped"]),
                  onnx.helper.make_node("Transpose", [f"{name}.grouped"], [f"{name}.swapped"],
                                        perm=[0, 2, 1, *range(3, 3 + len(kernel))]),
                  onnx.helper.make_node("Reshape", [f"{name}.swapped", f"{name}.b"], [f"{name}.unflipped"]),
                  onnx.helper.make_node("Slice", [f"{name}.unflipped", f"{name}.starts", f"{name}.ends",
                                                  f"{name}.axes", f"{name}.steps"], [name])]
        dropped.add(name)
        saved += expected.nbytes
    if dropped:
        kept = [t for t in graph.initializer if t.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        existing = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + existing)  # before every reader: the graph stays topologically sorted
    return saved
