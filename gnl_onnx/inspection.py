"""What a model is and what the engine will do with it: inputs, outputs, op histogram, the units
that guided gating will gate, the ops it cannot differentiate, and the methods that run without a
backward (forward passes only)."""
from __future__ import annotations

import collections

import onnx

from .autodiff import check_supported, differentiable_path
from .autodiff.gating import OTHER_NONLINEAR_UNITS, PAPER_UNITS
from .cam import default_layer, layer_candidates  # the target layers of CAM methods (--layer)
from .errors import UnsupportedModelError
from .graph import GraphBuilder
from .intake import read_model
from .loading import choose_input, choose_output, graph_inputs
from .methods import FORWARD_METHODS
from .normalize import default_opset, normalize
from .targets import output_kinds


def _describe(value) -> str:
    t = value.type.tensor_type
    dims = ["?" if not (d.HasField("dim_value") or d.dim_param) else (d.dim_param or str(d.dim_value))
            for d in t.shape.dim]
    return f"{value.name}: {onnx.TensorProto.DataType.Name(t.elem_type).lower()}[{', '.join(dims)}]"


def inspect_model(model, input: str | None = None, output: str | None = None) -> dict:
    """A report (plain data) on the model; `unsupported` lists what blocks differentiation."""
    proto = read_model(model)
    report = {
        "opset": default_opset(proto),
        "inputs": [_describe(i) for i in graph_inputs(proto.graph)],
        "outputs": [_describe(o) for o in proto.graph.output],
        "ops": dict(collections.Counter(n.op_type for n in proto.graph.node).most_common()),
    }
    x = choose_input(proto.graph, input)
    y = choose_output(proto.graph, output)
    normalized = normalize(proto)
    report["output_kinds"] = output_kinds(normalized)  # what each output looks like, the --target that explains it
    builder = GraphBuilder(normalized)
    path, _active = differentiable_path(builder, x, y)
    on_path = collections.Counter(n.op_type for n in path)
    report["input"], report["output"] = x, y
    report["gated_paper"] = {op: c for op, c in on_path.items() if op in PAPER_UNITS}
    report["gated_all_extra"] = {op: c for op, c in on_path.items() if op in OTHER_NONLINEAR_UNITS}
    try:
        check_supported(builder, path, y)
        report["unsupported"] = {}
    except UnsupportedModelError as e:
        report["unsupported"] = e.unsupported
    report["forward_methods"] = list(FORWARD_METHODS)  # they need no backward: they run on any model

    candidates = layer_candidates(builder, path, _active, x)
    default = default_layer(builder, candidates)
    report["cam_layers"] = [c.describe() for c in candidates]
    report["cam_default"] = default.name if default else None
    return report
