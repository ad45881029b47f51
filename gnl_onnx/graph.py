"""A small graph builder used by normalization and the gradient rules: fresh names, nodes,
constants, and what shape inference knows about each value."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import ModelError, UnsupportedModelError

# The float element types: values of these types carry gradients and can be images (one definition
# for the package: the intake, the reverse pass and the CAM locator read it).
HALF_TYPES = frozenset({onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16})
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE}) | HALF_TYPES


class Constants(dict):
    """Initializers as numpy arrays, converted on first use (weights can be hundreds of MB)."""

    def __init__(self, initializers):
        super().__init__()
        self._protos = {t.name: t for t in initializers}

    def __contains__(self, name):
        return super().__contains__(name) or name in self._protos

    def __getitem__(self, name):
        if not super().__contains__(name):
            try:
                self[name] = numpy_helper.to_array(self._protos[name])
            except (ValueError, TypeError, KeyError) as e:  # bytes that do not fit the shape, unknown types
                raise ModelError(f"initializer '{name}' is damaged ({e}); re-export the model") from None
        return super().__getitem__(name)

    def get(self, name, default=None):
        return self[name] if name in self else default

    def names(self):
        return set(self._protos) | set(super().keys())


SKELETON_KEEPS = 64  # initializers of at most this many values stay in a skeleton (shapes, axes, scalars)


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with large initializers turned into typed inputs: shape inference needs their
    shapes, not their bytes, and copying the bytes dominated the cost."""
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = light.graph
    graph.name = model.graph.name or "graph"
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if np.prod(t.dims) <= SKELETON_KEEPS:
            graph.initializer.append(t)
        elif t.name not in declared:
            graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return light


@dataclass
class Node:
    """A forward node as the rules see it: op type, names and decoded attributes."""
    proto: onnx.NodeProto
    attrs: dict = field(init=False)

    def __post_init__(self):
        self.attrs = {a.name: helper.get_attribute_value(a) for a in self.proto.attribute}
        for key, value in self.attrs.items():
            if isinstance(value, bytes):
                self.attrs[key] = value.decode()

    @property
    def op(self) -> str:
        return self.proto.op_type

    @property
    def name(self) -> str:
        return self.proto.name

    @property
    def inputs(self) -> list[str]:
        return list(self.proto.input)

    @property
    def outputs(self) -> list[str]:
        return list(self.proto.output)

    def input(self, i: int) -> str | None:
        """The i-th input name, or None where it is absent or left empty (optional inputs)."""
        return self.proto.input[i] if i < len(self.proto.input) and self.proto.input[i] else None

    def attr(self, name, default=None):
        return self.attrs.get(name, default)


def subgraphs(node: onnx.NodeProto):
    """The graphs a node holds as attributes (a Scan or Loop body, If branches)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def all_nodes_of(node: onnx.NodeProto):
    """The node and the nodes of its subgraphs, which read outer values by name."""
    yield node
    for sub in subgraphs(node):
        yield from all_nodes(sub)


def all_nodes(graph: onnx.GraphProto):
    """The graph's nodes and those of its subgraphs."""
    for node in graph.node:
        yield from all_nodes_of(node)


def reads_of(node: onnx.NodeProto) -> set[str]:
    """The values a node reads from its graph: its inputs, and the outer values its subgraphs read
    by name (an If branch's captures), less what the subgraphs define themselves."""
    inner = [n for sub in subgraphs(node) for n in all_nodes(sub)]
    defined = {o for n in inner for o in n.output} | {v.name for sub in subgraphs(node) for g in _graphs_in(sub)
                                                     for v in (*g.input, *g.initializer)}
    return {i for i in node.input if i} | {i for n in inner for i in n.input if i and i not in defined}


def _graphs_in(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from _graphs_in(sub)


class GraphBuilder:
    """Appends nodes and initializers to a model's graph, with names that never collide."""

    def __init__(self, model: onnx.ModelProto, float_type: int = onnx.TensorProto.FLOAT):
        self.model = model
        self.graph = model.graph
        self.float_type = float_type
        self.np_float = helper.tensor_dtype_to_np_dtype(float_type)
        # names must be unique across the graph and its subgraphs (their inputs and constants too)
        self._names = {n for node in all_nodes(self.graph) for n in (*node.input, *node.output, node.name)}
        self._names |= {v.name for node in all_nodes(self.graph) for sub in subgraphs(node)
                        for v in (*sub.input, *sub.initializer)}
        self._names |= {v.name for v in (*self.graph.input, *self.graph.output, *self.graph.value_info)}
        self._names |= {t.name for t in self.graph.initializer}
        self._const_cache: dict = {}
        self._shape_cache: dict = {}
        self.constants = Constants(self.graph.initializer)
        self.value_types: dict[str, onnx.TypeProto] = {}
        self.active: set[str] = set()
        self.refresh_types()

    # ---- names and nodes
    def fresh(self, base: str) -> str:
        base = base or "v"
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def op(self, op_type: str, *inputs: str | None, outputs: int = 1, name: str = "", out: str | None = None,
           **attrs):
        """Append a node; return its output name (or list of names when outputs > 1). `out` names
        the (single) output explicitly."""
        base = name or f"grad_{op_type}"
        outs = [out] if out else [self.fresh(base) for _ in range(outputs)]
        node = helper.make_node(op_type, [i or "" for i in inputs], outs, name=self.fresh(base + "_node"),
                                **{k: v for k, v in attrs.items() if v is not None})
        self.graph.node.append(node)
        return outs[0] if outputs == 1 else outs

    def const(self, value, dtype=None, name: str = "c") -> str:
        """An initializer holding `value`; float values take the model's float type."""
        array = np.asarray(value)
        array = array.astype(dtype if dtype is not None else
                             (self.np_float if array.dtype.kind == "f" or array.dtype == object else array.dtype),
                             copy=False)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 64 else None  # small ones shared
        if key in self._const_cache:
            return self._const_cache[key]
        # written into the graph directly: from_array + append copied every byte twice more
        tensor = self.graph.initializer.add(name=self.fresh(name), dims=array.shape,
                                            data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
        tensor.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        self.constants[tensor.name] = array
        if key is not None:
            self._const_cache[key] = tensor.name
        return tensor.name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), dtype=np.int64, name="ints")

    # ---- what is known about values
    def refresh_types(self) -> None:
        """Re-read types and shapes from shape inference (after normalization changes)."""
        try:
            inferred = onnx.shape_inference.infer_shapes(skeleton(self.model), data_prop=True)
        except Exception:  # shape inference is advisory; rules fall back to run-time shapes
            inferred = self.model
        g = inferred.graph
        self.value_types = {v.name: v.type for v in (*g.input, *g.output, *g.value_info)}
        for t in self.graph.initializer:
            self.value_types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
        self._shape_cache.clear()

    def elem_type(self, name: str) -> int | None:
        t = self.value_types.get(name)
        return t.tensor_type.elem_type if t is not None and t.HasField("tensor_type") else None

    def shape(self, name: str) -> tuple | None:
        """Dims of a value: ints, symbolic names or None; None when even the rank is unknown."""
        t = self.value_types.get(name)
        if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
            return None
        return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in t.tensor_type.shape.dim)

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def static_shape(self, name: str, what: str = "") -> tuple[int, ...]:
        """Dims that a rule needs as numbers; fails clearly when shape inference could not tell."""
        shape = self.shape(name)
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise UnsupportedModelError(
                {what or "shape": [name]},
                hint=f"the shape of '{name}' ({shape}) must be known; export the model with a fixed "
                     "image size (only the batch dimension may be dynamic)")
        return shape

    def static_dims(self, name: str, axes, what: str = "") -> list[int]:
        """Static sizes of some axes of a value (other axes may be dynamic)."""
        shape = self.shape(name)
        dims = [shape[a] if shape is not None and -len(shape) <= a < len(shape) else None for a in axes]
        if not all(isinstance(d, int) for d in dims):
            raise UnsupportedModelError(
                {what or "shape": [name]},
                hint=f"the sizes of axes {list(axes)} of '{name}' (shape {shape}) must be known; export the "
                     "model with a fixed image size (only the batch dimension may be dynamic)")
        if min(dims, default=1) < 1:
            raise ModelError(f"'{name}' has shape {list(shape)}, with an empty dimension; the model is broken")
        return dims

    def wants(self, name: str) -> bool:
        """Whether a value lies on the path being differentiated (set by the reverse pass);
        rules skip costly gradients of weights and other constants."""
        return name in self.active

    def runtime_shape(self, name: str) -> str:
        if name not in self._shape_cache:
            self._shape_cache[name] = self.op("Shape", name, name=f"{name}_shape")
        return self._shape_cache[name]

    # ---- helpers shared by many rules
    def has_name(self, name: str) -> bool:
        return name in self._names

    def reserve(self, name: str) -> None:
        """Keep a name for the caller (e.g. the names of the inputs and outputs it will add)."""
        self._names.add(name)

    def reshape_like(self, value: str, like: str) -> str:
        # allowzero: a 0 in the shape is a dim of size 0 (a detector that kept no box), not "copy
        # the input's dim" as Reshape reads it by default; Shape never gives the -1 that excludes
        return self.op("Reshape", value, self.runtime_shape(like), allowzero=1)

    def zeros_like(self, like: str) -> str:
        return self.op("ConstantOfShape", self.runtime_shape(like),
                       value=numpy_helper.from_array(np.zeros(1, self.np_float)))

    def unbroadcast(self, grad: str, like: str, grad_of: str | tuple) -> str:
        """Sum a gradient shaped like `grad_of` (a value name, or its shape) back to the shape of
        operand `like`, undoing numpy broadcasting."""
        source = grad_of if isinstance(grad_of, tuple) else self.shape(grad_of)
        target = self.shape(like)
        if source is None or target is None:
            return self._unbroadcast_at_runtime(grad, like)
        if source == target:
            return grad
        lead = len(source) - len(target)
        axes = list(range(lead))
        for i, t in enumerate(target):
            s = source[lead + i]
            if t == s:
                continue
            if t == 1:
                axes.append(lead + i)
            else:  # unknown or differently named dims: only the run time can tell
                return self._unbroadcast_at_runtime(grad, like)
        summed = self.op("ReduceSum", grad, self.ints(axes), keepdims=1)
        if lead == 0:
            return summed
        static = all(isinstance(d, int) for d in target)
        return self.op("Reshape", summed, self.ints(target)) if static else self.reshape_like(summed, like)

    def _unbroadcast_at_runtime(self, grad: str, like: str) -> str:
        """Sum over the axes where `like` is 1 or missing, found from the run-time shapes."""
        grad_shape, like_shape = self.runtime_shape(grad), self.runtime_shape(like)
        padding = self.op("Sub", self.op("Shape", grad_shape), self.op("Shape", like_shape))
        padded = self.op("Concat", self.op("Expand", self.ints([1]), padding), like_shape, axis=0)
        differs = self.op("Not", self.op("Equal", padded, grad_shape))
        axes = self.op("Reshape", self.op("NonZero", differs), self.ints([-1]))
        summed = self.op("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
        return self.reshape_like(summed, like)

    def forward_output(self, node: Node, index: int, base: str) -> str:
        """Make forward node produce its optional output `index` (e.g. MaxPool's Indices), so the
        backward pass reuses what the forward pass computes instead of recomputing it."""
        outs = node.proto.output
        if index < len(outs) and outs[index]:
            return outs[index]
        while len(outs) <= index:
            outs.append("")
        outs[index] = self.fresh(base)
        return outs[index]


def prune(graph: onnx.GraphProto) -> None:
    """Drop nodes no graph output depends on (left over from folding, rewrites, and gradients of
    constants that rules computed but the reverse pass did not use)."""
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for inner in all_nodes_of(node) for i in inner.input if i)  # bodies read outer values
    del graph.node[:]
    graph.node.extend(reversed(live))
    drop_unused_initializers(graph)


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {i for n in all_nodes(graph) for i in n.input} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    if len(keep) != len(graph.initializer):
        declared_inputs = {t.name for t in graph.initializer} - used
        del graph.initializer[:]
        graph.initializer.extend(keep)
        # IR < 4 models list initializers as inputs too: drop those that no longer exist
        real = [i for i in graph.input if i.name not in declared_inputs]
        del graph.input[:]
        graph.input.extend(real)


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename a value everywhere it appears in a graph (see rename_values)."""
    rename_values(graph, {old: new})


def rename_values(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Rename values by `names` in one pass: nodes, initializers, declarations, and subgraphs (a
    Scan body reads outer values by name)."""
    for node in graph.node:
        for values in (node.input, node.output):
            for i, name in enumerate(values):
                values[i] = names.get(name, name)
        for sub in subgraphs(node):
            rename_values(sub, names)
    for field_ in (graph.initializer, graph.input, graph.output, graph.value_info):
        for item in field_:
            item.name = names.get(item.name, item.name)


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs (stable otherwise)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = [(node, reads_of(node)) for node in graph.node], []  # reads found once, not per pass
    while pending:
        rest = []
        for node, reads in pending:
            if all(i in available for i in reads):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append((node, reads))
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a missing value near node '{rest[0][0].name}'")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: old models (IR < 4) also list every initializer as an input."""
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]
