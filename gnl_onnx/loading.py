"""Read a model safely and find the image input and the explained output."""
from __future__ import annotations

import math
import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelError, UsageError
from .graph import FLOAT_TYPES, SKELETON_KEEPS, graph_inputs, skeleton
PROTOBUF_LIMIT = 2 << 30  # one serialized ModelProto (and so one in-memory model) stays under 2 GB
MAX_INPUT_ELEMENTS = 1 << 30  # fixed dims of one input beyond this (4 GiB of float32) are no image
TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
# Types packed below a byte (their sizes are ONNX Runtime's to check): the size check skips them.
SUB_BYTE = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2", "FLOAT6E2M3",
                                                          "FLOAT6E3M2") if hasattr(onnx.TensorProto, name)}


def load_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """A path or a ModelProto -> a checked ModelProto with its external data inside
    (intake.read_model also takes a PreparedModel)."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)  # never mutate the caller's model
    else:
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file; give the path of an .onnx file")
        try:
            proto = onnx.load_model(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError, OSError) as e:
            raise ModelError(f"{path}: not a readable ONNX model ({e.__class__.__name__}); "
                             "re-export it or check the file was fully copied") from None
        _check_text(proto)
        if not proto.graph.node and not proto.graph.input:
            raise ModelError(f"{path}: no ONNX graph in this file (empty, or another format); "
                             "give the .onnx file the exporter wrote")
        _load_external_data(proto, path)
    if not proto.graph.node:
        raise ModelError("the model's graph has no nodes; export the model again")
    try:
        # the structure, on a copy without the weights' bytes (checking them in the checker cost a
        # second on vgg16: it serializes or re-reads the whole file), then their sizes here
        onnx.checker.check_model(skeleton(proto))
        _check_weights(proto.graph)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:300].rstrip(".")
        raise ModelError(f"the model is not valid ONNX: {first}; re-export it") from None
    _check_input_dims(proto.graph)
    return proto


def _check_text(message, where: str = "") -> None:
    """protobuf reads proto2 strings without checking them: a damaged file can hold names that are
    not UTF-8, which fail later, far from the cause. (Bytes fields, the weights, are not touched.)"""
    from google.protobuf.descriptor import FieldDescriptor

    for field in message.DESCRIPTOR.fields:
        if field.type not in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING):
            continue
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
        if not repeated and field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            continue
        try:
            values = getattr(message, field.name)
        except UnicodeDecodeError:
            values = b""
        for value in (values if repeated else [values]):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                _check_text(value, f"{where}{field.name}.")
            elif isinstance(value, bytes):
                raise ModelError(f"the model's {where}{field.name} is not UTF-8 text; the file is damaged: "
                                 "re-export it or copy it again")


def _check_weights(graph: onnx.GraphProto) -> None:
    """What onnx.checker verifies of the initializers that skeleton() turns into typed inputs (those
    of more than 64 values; it checks the rest): a known type, no negative dims, the values in one
    field, and exactly as many as the shape needs (ONNX Runtime needs them exact)."""
    T = onnx.TensorProto
    known = set(T.DataType.values()) - {T.UNDEFINED}
    for tensor in graph.initializer:
        count = math.prod(tensor.dims)
        if count <= SKELETON_KEEPS and all(d >= 0 for d in tensor.dims):
            continue
        if tensor.data_type not in known:
            raise onnx.checker.ValidationError(f"initializer {tensor.name} has no known data type "
                                               f"({tensor.data_type})")
        if any(d < 0 for d in tensor.dims):
            raise onnx.checker.ValidationError(f"initializer {tensor.name} has a negative dimension")
        if tensor.data_location == T.EXTERNAL:  # (read beside the model on loading, or not read at all)
            continue
        fields = [f for f in TYPED_FIELDS + ("string_data",) if len(getattr(tensor, f))]
        if tensor.HasField("raw_data"):
            fields.append("raw_data")
        if len(fields) > 1:
            raise onnx.checker.ValidationError(f"initializer {tensor.name} holds its values in more than one "
                                               f"field ({', '.join(fields)})")
        if tensor.data_type in SUB_BYTE:
            continue
        if fields == ["raw_data"]:
            if tensor.data_type == T.STRING:
                raise onnx.checker.ValidationError(f"initializer {tensor.name} is a string tensor in raw_data")
            need = count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            size = len(tensor.raw_data)  # (reading it copies it: 0.3 s on vgg16; ByteSize() was slower still)
        else:
            need = count * (2 if tensor.data_type in (T.COMPLEX64, T.COMPLEX128) else 1)
            size = sum(len(getattr(tensor, f)) for f in fields)
        if size != need:
            unit = "bytes" if fields == ["raw_data"] else "values"
            raise onnx.checker.ValidationError(f"initializer '{tensor.name}' is damaged: it holds {size} {unit}, "
                                               f"its shape and type need {need}")


def _check_input_dims(graph: onnx.GraphProto) -> None:
    """Declared sizes must be usable: no empty or negative dims, nothing absurdly large (every
    later step, memory planning included, trusts them)."""
    for value in graph_inputs(graph):
        dims = value.type.tensor_type.shape.dim
        fixed = [d.dim_value for d in dims if d.HasField("dim_value")]
        shown = "[" + ", ".join(d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?")
                                for d in dims) + "]"
        if any(d <= 0 for d in fixed):
            raise ModelError(f"input '{value.name}' declares shape {shown}, with an empty or negative "
                             "dimension; re-export the model with the real image size (or a named "
                             "dimension for the batch)")
        if math.prod(fixed) > MAX_INPUT_ELEMENTS:
            raise ModelError(f"input '{value.name}' declares shape {shown}, over {MAX_INPUT_ELEMENTS:,} "
                             "values: not an image size; re-export the model with the real image size")


def _load_external_data(proto: onnx.ModelProto, path: Path) -> bool:
    """Load tensors stored beside the model, refusing any location outside the model's folder.
    Returns whether there were any."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data, load_external_data_for_tensor

    folder = path.parent.resolve()
    external = [t for t in _get_all_tensors(proto) if uses_external_data(t)]
    if not external:
        return False
    total = path.stat().st_size  # the file's size is the proto's: ByteSize() walks every weight
    for tensor in external:
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location:
            raise ModelError(f"tensor '{tensor.name}' keeps its data in an external file but names none; "
                             "re-export the model")
        if not target.is_relative_to(folder):
            raise ModelError(f"tensor '{tensor.name}' points to external data outside the model's "
                             f"folder ({location}); refusing to read it")
        if not target.is_file():
            raise ModelError(f"tensor '{tensor.name}' needs external data file '{location}', which is "
                             f"missing; keep it beside the model")
        try:
            total += int(info["length"]) if "length" in info else target.stat().st_size
        except ValueError:
            raise ModelError(f"tensor '{tensor.name}' has a damaged external data length "
                             f"({info['length']!r}); re-export the model") from None
    if total > PROTOBUF_LIMIT:  # checked before reading a byte of it
        raise ModelError(f"the model with its external data is {total / (1 << 30):.1f} GB; gnl-onnx builds the "
                         "backward graph as one in-memory ONNX model, which protobuf limits to 2 GB, so "
                         "models this large are not supported: explain a smaller model")
    for tensor in external:
        try:
            load_external_data_for_tensor(tensor, str(folder))
        except (ValueError, OSError, RuntimeError, onnx.checker.ValidationError) as e:
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
            raise ModelError(f"cannot read the external data of tensor '{tensor.name}' ({first}); "
                             "copy the weight file beside the model again") from None
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return True


def choose_input(graph: onnx.GraphProto, name: str | None) -> str:
    candidates = [i for i in graph_inputs(graph) if i.type.tensor_type.elem_type in FLOAT_TYPES]
    if name is not None:
        if name not in {i.name for i in graph_inputs(graph)}:
            raise UsageError(f"input '{name}' is not an input of the model; its inputs are "
                             f"{[i.name for i in graph_inputs(graph)]}")
        return name
    if not candidates:
        raise ModelError("the model has no float input to explain; an image model takes a float tensor")
    if len(candidates) > 1:
        raise UsageError(f"the model has several float inputs {[c.name for c in candidates]}; "
                         "say which is the image with input=")
    return candidates[0].name


def choose_output(graph: onnx.GraphProto, name: str | None) -> str:
    names = [o.name for o in graph.output]
    if name is not None:
        if name not in names:
            raise UsageError(f"output '{name}' is not an output of the model; its outputs are {names}")
        return name
    if len(names) > 1:
        raise UsageError(f"the model has several outputs {names}; say which to explain with output=")
    if not names:
        raise ModelError("the model declares no outputs: nothing to explain; re-export it")
    return names[0]
