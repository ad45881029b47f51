"""Read a model safely and find the image input and the explained output."""
from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelError, UsageError

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16)


def load_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """A path or a ModelProto -> a checked ModelProto with its external data inside."""
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)  # never mutate the caller's model
    else:
        path = Path(model)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file; give the path of an .onnx file")
        try:
            proto = onnx.load_model(str(path), load_external_data=False)
        except (DecodeError, ValueError, RuntimeError) as e:
            raise ModelError(f"{path}: not a readable ONNX model ({e.__class__.__name__}); "
                             "re-export it or check the file was fully copied") from None
        _load_external_data(proto, path.parent.resolve())
    if not proto.graph.node:
        raise ModelError("the model's graph has no nodes; export the model again")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"the model is not valid ONNX: {first}") from None
    return proto


def _load_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    """Load tensors stored beside the model, refusing any location outside the model's folder."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data, load_external_data_for_tensor

    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not target.is_relative_to(folder):
            raise ModelError(f"tensor '{tensor.name}' points to external data outside the model's "
                             f"folder ({location}); refusing to read it")
        if not target.is_file():
            raise ModelError(f"tensor '{tensor.name}' needs external data file '{location}', which is "
                             f"missing; keep it beside the model")
        load_external_data_for_tensor(tensor, str(folder))
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: old models (IR < 4) also list every initializer as an input."""
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


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
    return names[0]
