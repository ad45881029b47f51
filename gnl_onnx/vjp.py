"""vjp_model: an ONNX model that computes, beside its forward pass, the vector-Jacobian product
of one output with respect to the image input, by the plain chain rule or with guided gating."""
from __future__ import annotations

import json
import os

import onnx
from onnx import helper

from .autodiff import backpropagate, check_differentiable, check_supported, differentiable_path
from .autodiff.gating import GatingPolicy
from .errors import ModelError
from .graph import GraphBuilder, prune, skeleton
from .loading import choose_input, choose_output, load_model
from .normalize import fold_constants, has_unknown_dims, normalize, probe_shapes

METADATA_KEY = "gnl_onnx.vjp"


def vjp_model(model: str | os.PathLike | onnx.ModelProto, rule: str = "plain", gate: str = "paper",
              input: str | None = None, output: str | None = None) -> onnx.ModelProto:
    """Return a model with the original inputs and outputs plus input `<output>_grad` (the seed,
    shaped like the output) and output `<input>_grad` = d sum(seed * output) / d input."""
    policy = GatingPolicy(rule, gate)
    proto = load_model(model)
    x = choose_input(proto.graph, input)
    y = choose_output(proto.graph, output)
    proto = normalize(proto)
    value_types = {v.name: v.type for v in (*proto.graph.input, *proto.graph.output)}
    seed, grad = f"{y}_grad", f"{x}_grad"
    float_type = value_types[x].tensor_type.elem_type
    builder = GraphBuilder(proto, float_type=float_type)
    for name in (seed, grad):
        if builder.has_name(name):
            raise ModelError(f"the model already has a value named '{name}'; rename it before converting")
    path, active = differentiable_path(builder, x, y)
    check_supported(builder, path, y)
    check_differentiable(builder, x, y, active)
    batch = (builder.shape(x) or [None])[0]
    if has_unknown_dims(builder, active, batch if isinstance(batch, str) else None):
        # measure what shape inference could not derive; known shapes may fold shape arithmetic
        probe_shapes(proto, x, sorted(active))
        fold_constants(proto)
        prune(proto.graph)
        builder = GraphBuilder(proto, float_type=float_type)
        path, active = differentiable_path(builder, x, y)
    builder.reserve(seed)
    builder.reserve(grad)
    proto.graph.input.append(helper.make_value_info(seed, value_types[y]))
    dx, gated = backpropagate(builder, path, active, x, y, seed, policy)
    proto.graph.node.append(helper.make_node("Identity", [dx], [grad], name=builder.fresh("input_gradient")))
    proto.graph.output.append(helper.make_value_info(grad, value_types[x]))
    prune(proto.graph)
    report = {"input": x, "output": y, "seed": seed, "gradient": grad, "rule": rule, "gate": gate,
              "gated": gated}
    entry = next((p for p in proto.metadata_props if p.key == METADATA_KEY), None) or proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(report)
    try:  # the weights were checked on loading: check the new graph's structure without them
        onnx.checker.check_model(skeleton(proto))
    except onnx.checker.ValidationError as e:  # a bug of ours, not the user's: say so
        raise ModelError(f"internal error: the gradient graph is not valid ONNX ({str(e).splitlines()[0]}); "
                         "please report it with the model") from None
    return proto


def vjp_report(model: onnx.ModelProto) -> dict:
    """What vjp_model recorded: input, output, rule, gate and the gated nodes."""
    entry = next((p for p in model.metadata_props if p.key == METADATA_KEY), None)
    if entry is None:
        raise ModelError("this model was not made by gnl_onnx.vjp_model")
    return json.loads(entry.value)
