"""Gate values from an onnxruntime run, for float64 references that take their gate decisions from
it (tests/test_architectures.py explains why: a rectifier input within float32 rounding of 0 can go
either way, and each such flip moves the input gradient by a finite amount).

expose_gates() adds the gated nodes' inputs (and MaxPool's indices) as outputs of a VJP model;
run_with_gates() runs it and returns the gradient with one {"op", "input", "indices"} array dict
per gated node, in graph order, as torch_reference.patched(gates=...) and
models/keras_zoo.input_gradient(gates=...) take them."""
from __future__ import annotations

import onnx
import onnxruntime as ort

import gnl_onnx


def expose_gates(vjp: onnx.ModelProto, gate_nodes: list[str]) -> list[dict]:
    """Add the gated nodes' inputs (and MaxPool indices) as graph outputs of `vjp`, in graph
    order; returns one {"op", "input", "indices"} dict of output names per gated node."""
    position = {n.name: i for i, n in enumerate(vjp.graph.node)}
    missing = [g for g in gate_nodes if g not in position]
    assert not missing, f"gated nodes not found in the VJP graph: {missing[:5]}"
    outputs = {o.name for o in vjp.graph.output}
    graph_inputs = {i.name for i in vjp.graph.input}
    gates = []
    for name in sorted(gate_nodes, key=position.get):
        node = vjp.graph.node[position[name]]
        gate = {"op": node.op_type, "input": node.input[0], "indices": None}
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            gate["indices"] = node.output[1]
        for key, elem in (("input", onnx.TensorProto.FLOAT), ("indices", onnx.TensorProto.INT64)):
            tensor = gate[key]
            if tensor and tensor not in outputs and tensor not in graph_inputs:
                vjp.graph.output.append(onnx.helper.make_tensor_value_info(tensor, elem, None))
                outputs.add(tensor)
        gates.append(gate)
    return gates


def run_with_gates(vjp: onnx.ModelProto, gate_nodes: list[str], x, seed):
    """Run `vjp` (onnxruntime CPU) on input x and seed: (output, input gradient, gate values).
    `vjp` gets the gate outputs added; gate_nodes: the nodes the guided rule gated (its report)."""
    rep = gnl_onnx.vjp_report(vjp)
    x_name, y_name = rep["input"], rep["output"]
    feeds = {x_name: x, f"{y_name}_grad": seed}
    gates = expose_gates(vjp, gate_nodes)
    extra = [t for g in gates for t in (g["input"], g["indices"]) if t and t not in feeds]
    sess = ort.InferenceSession(vjp.SerializeToString(), providers=["CPUExecutionProvider"])
    y, grad, *values = sess.run([y_name, f"{x_name}_grad", *extra], feeds)
    got = dict(zip(extra, values), **feeds)
    imposed = [{"op": g["op"], "input": got[g["input"]],
                "indices": got[g["indices"]] if g["indices"] else None} for g in gates]
    return y, grad, imposed
