"""vjp_model: an ONNX model that computes, beside its forward pass, the vector-Jacobian product
of one output with respect to the image input, by the plain chain rule, with guided gating, or by
another backward rule set (LRP composites, DeepLIFT: gnl_onnx/autodiff/rulesets.py)."""
from __future__ import annotations

import json

import onnx
from onnx import helper, numpy_helper

from .autodiff import backpropagate_to, check_differentiable, check_supported, differentiable_path
from .autodiff.rulesets import get_rule_set
from .errors import ModelError, UnsupportedModelError, UsageError
from .graph import GraphBuilder, prune, skeleton
from .intake import prepare
from .methods import FORWARD_METHODS
from .normalize import fold_constants, has_unknown_dims, probe_shapes

METADATA_KEY = "gnl_onnx.vjp"


def vjp_model(model, rule: str = "plain", gate: str = "paper",
              input: str | None = None, output: str | None = None, layers=(),
              layer_rule: str | None = None, bounds=None) -> onnx.ModelProto:
    """Return a model with the original inputs and outputs plus input `<output>_grad` (the seed,
    shaped like the output) and output `<input>_grad` = d sum(seed * output) / d input.
    `model`: a path, a ModelProto or a PreparedModel (see gnl_onnx.intake).
    `layers`: inner values A (float values on the path) whose gradient is wanted too: outputs
    `<A>` (the value itself) and `<A>_grad` = d sum(seed * output) / dA, by `layer_rule`
    (default: `rule`; a different one adds a second backward pass over the same forward pass).
    `rule`: "plain", "guided", an LRP composite ("lrp_epsilon_plus_flat", ...; the seed is then
    the relevance put at the output) or "deeplift" (the batch holds images and references: input
    `<input>_reference_rows`, int64 [rows], names each row's reference row). Rule sets that read
    extra values add them as inputs, with defaults where they have one (ZBox's bounds
    `<input>_low`/`<input>_high`, from `bounds` = (low, high), broadcastable to the image)."""
    prepared = prepare(model, input, output)
    return build_vjp(prepared.copy(), prepared.input, prepared.output, rule, gate, layers, layer_rule, bounds)


def build_vjp(proto: onnx.ModelProto, x: str, y: str, rule: str = "plain", gate: str = "paper", layers=(),
              layer_rule: str | None = None, bounds=None) -> onnx.ModelProto:
    """vjp_model on a prepared model's proto that the caller hands over: it is extended in place
    (attribution_model builds on its own copy; a second copy of vgg16 cost 0.26 s). A model whose
    backward cannot be built is refused naming every op in the way and the methods that still run
    on it (forward passes only); nothing switches to them unasked."""
    try:
        return _backward(proto, x, y, rule, gate, layers, layer_rule, bounds)
    except UnsupportedModelError as e:
        raise e.with_note(forward_methods_note()) from None


def forward_methods_note() -> str:
    return (f"Methods that need no backward run on it (forward passes only): {', '.join(FORWARD_METHODS)} "
            f"(--method {FORWARD_METHODS[0]})")


def _backward(proto, x, y, rule, gate, layers, layer_rule, bounds) -> onnx.ModelProto:
    policy = get_rule_set(rule, gate, bounds)
    layers = list(dict.fromkeys(layers))
    layer_policy = get_rule_set(layer_rule or rule, gate, bounds)
    value_types = {v.name: v.type for v in (*proto.graph.input, *proto.graph.output)}
    seed, grad = f"{y}_grad", f"{x}_grad"
    float_type = value_types[x].tensor_type.elem_type
    builder = GraphBuilder(proto, float_type=float_type)
    for name in (seed, grad, *(f"{a}_grad" for a in layers)):
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
    outside = [a for a in layers if a not in active or a == x]
    if outside:
        raise UsageError(f"'{outside[0]}' is not an inner float value on the path from '{x}' to '{y}'; "
                         "name a value computed from the image that the output depends on")
    builder.reserve(seed)
    builder.reserve(grad)
    for a in layers:
        builder.reserve(f"{a}_grad")
    proto.graph.input.append(helper.make_value_info(seed, value_types[y]))
    same = (layer_rule or rule) == rule  # the layer gradients come from the same backward pass
    grads_at, records = backpropagate_to(builder, path, active, [x, *(layers if same else [])], y, seed, policy)
    for extra in policy.extra_inputs:
        proto.graph.input.append(helper.make_tensor_value_info(extra.name, extra.elem_type, list(extra.dims)))
        if extra.default is not None:  # an initializer of the same name: the input's default
            proto.graph.initializer.append(numpy_helper.from_array(extra.default, extra.name))
    gated = [{"node": r["node"], "op": r["op"]} for r in records if r["rule"] == "gate"]
    overrides = [r for r in records if r["rule"] != "gate"]
    dx = grads_at[x]
    proto.graph.node.append(helper.make_node("Identity", [dx], [grad], name=builder.fresh("input_gradient")))
    proto.graph.output.append(helper.make_value_info(grad, value_types[x]))
    if layers:
        at = grads_at if same else backpropagate_to(builder, path, active, layers, y, seed, layer_policy)[0]
        for a in layers:
            proto.graph.node.append(helper.make_node("Identity", [at[a]], [f"{a}_grad"],
                                                     name=builder.fresh("layer_gradient")))
            kind = builder.value_types.get(a) or helper.make_tensor_type_proto(float_type, None)
            proto.graph.output.extend([helper.make_value_info(a, kind), helper.make_value_info(f"{a}_grad", kind)])
    prune(proto.graph)
    report = {"input": x, "output": y, "seed": seed, "gradient": grad, "rule": rule, "gate": gate,
              "gated": gated, "extra_inputs": [e.name for e in policy.extra_inputs]}
    if overrides:
        report["rules"] = overrides
    if layers:
        report.update(layers={a: f"{a}_grad" for a in layers}, layer_rule=layer_rule or rule)
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
