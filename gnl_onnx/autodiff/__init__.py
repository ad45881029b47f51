"""The reverse pass: walk the nodes between the image and the explained output in reverse
topological order, ask the rule set which backward each node takes (an override, or its op's
chain rule), ask that for the input gradients, and sum gradients per value. Nothing here knows
an op type: rules know their op, rule sets (rulesets.py) know where to override."""
from __future__ import annotations

import onnx

from ..errors import ModelError, UnsupportedModelError
from ..graph import FLOAT_TYPES, GraphBuilder, Node
from . import gating, relevance  # noqa: F401 - the built-in rule sets register themselves
from .rules import ALL_OUTPUTS, CODE_OUTPUTS, RULES
from .rules.quantized import CODE_RANGES
from .rulesets import RuleSet

CONTROL_FLOW = {"If", "Loop", "Scan"}
CODE_TYPES = frozenset(CODE_RANGES)  # the integer types of quantized codes


def differentiable_path(builder: GraphBuilder, x: str, y: str) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes on some path x -> y, and the float values on such paths (the only values that carry
    gradient). Nodes are returned in the graph's (topological) order."""
    nodes = list(builder.graph.node)
    depends_on_x = {x}
    for node in nodes:
        carried = [i for i in node.input if i in depends_on_x]
        if carried:
            # integer codes carry gradient out of a quantizing op, and on through ops that pass
            # codes of the same type along (MaxPool, Reshape...); other integers (shapes,
            # indices, a Cast to uint8) do not
            code_types = CODE_TYPES if node.op_type in CODE_OUTPUTS else \
                {builder.elem_type(i) for i in carried} & CODE_TYPES
            depends_on_x.update(o for o in node.output
                                if o and builder.elem_type(o) in FLOAT_TYPES | code_types | {None})
    y_needs = {y}
    for node in reversed(nodes):
        if any(o in y_needs for o in node.output):
            y_needs.update(i for i in node.input if i)
    active = depends_on_x & y_needs
    path = [n for n in nodes if any(o in active for o in n.output)]
    return path, active


def check_supported(builder: GraphBuilder, path: list[onnx.NodeProto], y: str) -> None:
    """Name every node we cannot differentiate, all at once, before anything runs."""
    unsupported: dict[str, list[str]] = {}
    y_needs = {y}
    for node in reversed(builder.graph.node):
        if any(o in y_needs for o in node.output):
            y_needs.update(i for i in node.input if i)
            foreign = node.domain not in ("", "ai.onnx")
            # a subgraph reads outer values without naming them as inputs, so a control-flow node
            # may carry gradient the path cannot see; one whose outputs are all indices or flags
            # (NMS under torchvision's "no boxes" If) carries none
            carries = any(builder.elem_type(o) in FLOAT_TYPES | CODE_TYPES | {None} for o in node.output if o)
            if foreign or (node.op_type in CONTROL_FLOW and carries):
                label = f"{node.domain}.{node.op_type}" if foreign else node.op_type
                unsupported.setdefault(label, []).append(node.name)
    for node in path:
        if node.domain in ("", "ai.onnx") and node.op_type not in CONTROL_FLOW and node.op_type not in RULES:
            unsupported.setdefault(node.op_type, []).append(node.name)
    if unsupported:
        decided_at_run_time = ("an If is followed only where its condition folds to a constant (a shape test); "
                               "this one is decided at run time: export the model without its post-processing "
                               "(the raw head outputs) or with a fixed image size") if "If" in unsupported else ""
        raise UnsupportedModelError(unsupported, hint=decided_at_run_time)


def check_differentiable(builder: GraphBuilder, x: str, y: str, active: set[str]) -> None:
    """The output must reach the input through float values of the input's own precision."""
    if y in active:
        mixed = sorted(v for v in active if builder.elem_type(v) in FLOAT_TYPES - {builder.elem_type(x)})
        if mixed:
            raise ModelError(f"the path from '{x}' to '{y}' mixes float precisions (e.g. '{mixed[0]}' is "
                             f"{onnx.TensorProto.DataType.Name(builder.elem_type(mixed[0]))}); "
                             "export the model in one precision")
        return
    # y depends on x, if at all, only through integer values (indices, shapes, decisions)
    reached, float_reached = {x}, {x}
    blockers: dict[str, list[str]] = {}
    for node in builder.graph.node:
        if any(i in reached for i in node.input):
            reached.update(node.output)
        if any(i in float_reached for i in node.input):
            floats = [o for o in node.output if builder.elem_type(o) in FLOAT_TYPES | {None}]
            float_reached.update(floats)
            if not floats and node.op_type not in ("Shape", "Size"):  # where the gradient stops
                blockers.setdefault(node.op_type, []).append(node.name)
    if blockers and y in reached:
        raise UnsupportedModelError(blockers, hint=f"'{y}' depends on '{x}' only through integer values")
    raise ModelError(f"output '{y}' does not depend on input '{x}': nothing to explain")


def backpropagate(builder: GraphBuilder, path: list[onnx.NodeProto], active: set[str], x: str, y: str,
                  seed: str, policy: RuleSet) -> tuple[str, list[dict]]:
    """Append the backward graph of the checked `path` (see differentiable_path); return the name
    of d<seed . y>/dx and the nodes whose backward the rule set overrode."""
    grads, gated = backpropagate_to(builder, path, active, [x], y, seed, policy)
    return grads[x], gated


def backpropagate_to(builder: GraphBuilder, path: list[onnx.NodeProto], active: set[str], values: list[str],
                     y: str, seed: str, policy: RuleSet) -> tuple[dict[str, str], list[dict]]:
    """As backpropagate, for any values on the path (the input, inner activations): the name of
    d<seed . y>/dv for each v in `values` (the sum of its contributions, zeros when none arrives).
    The overrides come back as {"node", "op", "rule"} records, in graph order ("gate" for the
    gating policy's gated units)."""
    builder.active = active
    produced = {o for n in path for o in n.output}
    policy.start(builder, path, active, next(iter(sorted(active - produced)), values[0]))  # the input
    contributions: dict[str, list[str]] = {y: [seed]}
    totals: dict[str, str] = {}

    def total(name: str) -> str | None:
        if name not in totals and contributions.get(name):
            parts = contributions[name]
            totals[name] = parts[0] if len(parts) == 1 else builder.op("Sum", *parts, name=f"{name}_grad_sum")
        return totals.get(name)

    gated = []
    for proto in reversed(path):
        node = Node(proto)
        grads = [total(o) if o else None for o in node.outputs]
        if not any(grads):
            continue
        override = policy.backward(node)
        backward = RULES[node.op] if override is None else override.fn
        if override is not None:
            gated.append({"node": node.name, "op": node.op, "rule": override.rule})
        try:
            inputs_grads = backward(builder, node, grads if node.op in ALL_OUTPUTS else grads[0])
        except (ArithmeticError, IndexError, KeyError, TypeError, ValueError) as e:
            # a node the checker accepts but no runtime could run (LRN size 0, impossible shapes...)
            raise ModelError(f"{node.op} node '{node.name}' has attributes or shapes its gradient cannot use "
                             f"({type(e).__name__}: {e}); if the model runs in ONNX Runtime, please report "
                             "this with the model") from None
        for name, grad in zip(node.inputs, inputs_grads):
            if grad is not None and name in active:
                contributions.setdefault(name, []).append(grad)
    gated.reverse()
    return {v: total(v) or builder.zeros_like(v) for v in values}, gated
