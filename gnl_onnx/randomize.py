"""Copies of a model with weighted layers redrawn: the model randomization of Adebayo et al.'s
sanity check (`check`'s randomization, gnl_onnx/check/randomization.py) and of Quantus's model
parameter randomisation measures (smooth and efficient MPRT, gnl_onnx/scores.py). Two ways to
redraw a layer: "scale" (normal noise with the original tensor's standard deviation: only the
learned structure is lost) and "reset" (what torch's reset_parameters draws, as Quantus
randomises a layer: uniform in +-1/sqrt(fan_in) for the weight and the bias)."""
from __future__ import annotations

import math
import zlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import UsageError
from .intake import read_model

INITS = ("scale", "reset")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
# Quantus randomises every torch module with reset_parameters; the normalizations among them are
# reset to scale 1, shift 0 (and running mean 0, variance 1): input positions of those constants
NORMALIZATIONS = {"BatchNormalization": {1: 1.0, 2: 0.0, 3: 0.0, 4: 1.0}, "LayerNormalization": {1: 1.0, 2: 0.0},
                  "GroupNormalization": {1: 1.0, 2: 0.0}, "InstanceNormalization": {1: 1.0, 2: 0.0}}


_PASS_THROUGH = ("Identity", "Transpose", "Reshape", "Cast", "Squeeze", "Unsqueeze", "Flatten")


def _constant_source(graph, name: str, producers, initializers):
    """The initializer (or Constant node) a weight comes from, following ops that only move or
    re-type the values; randomizing it randomizes the weight. None for a computed value."""
    while name not in initializers:
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            return node if any(a.name == "value" for a in node.attribute) else None
        if node.op_type not in _PASS_THROUGH:
            return None
        name = node.input[0]
    return initializers[name]


def _tensor(c) -> onnx.TensorProto:
    return c if isinstance(c, onnx.TensorProto) else next(a.t for a in c.attribute if a.name == "value")


def _fan_in(node, weight, operand: int) -> int | None:
    """The inputs each output of the layer sums over, as torch's initialization counts them, from the
    weight's shape when it is the node's operand itself (None when it comes through a Transpose or
    Reshape, whose shape says nothing sure)."""
    direct = node.input[operand] == (weight.name if isinstance(weight, onnx.TensorProto) else weight.output[0])
    dims = list(_tensor(weight).dims)
    if not direct or not dims:
        return None
    if node.op_type == "Conv":  # [out, in / groups, kh, kw]
        return int(np.prod(dims[1:])) if len(dims) > 1 else None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":  # Y = A' B': the weight is B [K, N] (transB: [N, K]) or A [M, K]
        transposed = attrs.get("transB" if operand == 1 else "transA", 0)
        k_axis = (1 if transposed else 0) if operand == 1 else (0 if transposed else 1)
        return int(dims[k_axis]) if len(dims) == 2 else None
    return int(dims[-2] if operand == 1 else dims[-1]) if len(dims) >= 2 else None  # MatMul: [.., K, N] or [M, K]


def weighted_layers(model) -> list[dict]:
    """The layers cascading randomization walks, output side first: Conv, Gemm and MatMul nodes
    with a constant weight, each with the constants it randomizes (the weight and the bias: Conv's
    and Gemm's third input, or the constant of an Add that alone consumes a MatMul's or a bias-less
    Conv's output, as tf2onnx writes it) and its fan_in (see _fan_in). Nodes without a name get
    '<op>#<index>'."""
    model = read_model(model)
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    layers = []
    for index, node in enumerate(graph.node):
        if node.op_type not in WEIGHTED_OPS:
            continue
        operands = list(node.input[:2])
        operand = 1
        if node.op_type in ("Gemm", "MatMul"):  # the weight may be either operand
            sources = [_constant_source(graph, i, producers, initializers) for i in operands]
            operand = 1 if sources[1] is not None else 0
            weight = sources[operand]
        else:
            weight = _constant_source(graph, operands[1], producers, initializers)
        if weight is None:
            continue  # e.g. a MatMul of two activations: nothing to randomize
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = _constant_source(graph, node.input[2], producers, initializers)
        elif node.op_type in ("MatMul", "Conv"):
            users = consumers.get(node.output[0], [])
            if len(users) == 1 and users[0].op_type == "Add":
                other = next((i for i in users[0].input if i != node.output[0]), None)
                bias = other and _constant_source(graph, other, producers, initializers)
        layers.append({"name": node.name or f"{node.op_type}#{index}", "op": node.op_type,
                       "constants": [c for c in (weight, bias) if c is not None],
                       "fan_in": _fan_in(node, weight, operand)})
    return layers[::-1]


def _constant_name(c) -> str:
    return c.name if isinstance(c, onnx.TensorProto) else "Constant:" + c.output[0]


def randomize_layers(model, layers=None, seed: int = 0, init: str = "scale") -> onnx.ModelProto:
    """A copy of the model with the weights and biases of `layers` (names from weighted_layers;
    None: all) redrawn. init "scale": each constant becomes normal noise with mean 0 and the
    original tensor's standard deviation (its RMS when that is 0), so activations keep their scale
    and only the learned structure is lost; an all-zero bias stays zero (the usual initialization).
    init "reset": uniform in +-1/sqrt(fan_in), weight and bias, as torch's reset_parameters of a
    Conv or Linear (kaiming_uniform with a = sqrt(5)); a layer whose fan_in is unknown draws
    uniformly with the original tensor's standard deviation.
    BatchNormalization parameters are left alone: they rescale per channel and hold no learned
    structure across pixels; Adebayo et al. randomize the learned weights of each layer.
    The draw for a constant depends only on (seed, its name), so cumulative randomization reuses
    the same noise for a layer at every later step."""
    if init not in INITS:
        raise UsageError(f"unknown initialization {init!r}; choose {' or '.join(INITS)}")
    model = read_model(model)
    available = weighted_layers(model)
    names = [layer["name"] for layer in available]
    chosen = names if layers is None else list(layers)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise UsageError(f"no weighted layer named {', '.join(map(repr, unknown))}; the model's layers "
                         f"(output side first) are: {', '.join(names)}")
    initializers = {t.name: t for t in model.graph.initializer}
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    done = set()
    for layer in available:
        if layer["name"] not in chosen:
            continue
        for c in layer["constants"]:
            key = _constant_name(c)
            if key in done:  # shared by layers: randomized once
                continue
            done.add(key)
            target = initializers[c.name] if isinstance(c, onnx.TensorProto) else _tensor(constants[c.output[0]])
            target.CopyFrom(_redrawn(target, seed, key, init, layer["fan_in"]))
    return model


def reset_model(model, seed: int = 0) -> onnx.ModelProto:
    """A copy of the model as Quantus's cascading randomisation leaves it after its last layer: every
    weighted layer redrawn as torch's reset_parameters draws it (randomize_layers, init "reset") and
    every normalization's constant scale, shift, mean and variance reset to 1, 0, 0 and 1 (what
    reset_parameters does to torch's normalization layers; a normalization the export folded into a
    Conv is reset with it)."""
    model = randomize_layers(model, None, seed, init="reset")
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        for position, value in NORMALIZATIONS.get(node.op_type, {}).items():
            if position < len(node.input) and node.input[position] in initializers:
                t = initializers[node.input[position]]
                if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
                    values = numpy_helper.to_array(t)
                    t.CopyFrom(numpy_helper.from_array(np.full_like(values, value), t.name))
    return model


def _redrawn(tensor: onnx.TensorProto, seed: int, key: str, init: str = "scale",
             fan_in: int | None = None) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return tensor
    v = values.astype(np.float64)
    scale = float(v.std()) or float(np.sqrt(np.mean(v ** 2)))
    rng = np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8"))])
    if init == "reset":
        bound = 1 / math.sqrt(fan_in) if fan_in else math.sqrt(3) * scale
        drawn = rng.uniform(-bound, bound, values.shape)
    else:
        drawn = rng.standard_normal(values.shape) * scale
    return numpy_helper.from_array(drawn.astype(values.dtype), tensor.name)


__all__ = ["INITS", "WEIGHTED_OPS", "randomize_layers", "reset_model", "weighted_layers"]
