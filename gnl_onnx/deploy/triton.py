"""`gnl-onnx convert --triton REPO`: a model repository for NVIDIA Triton Inference Server's ONNX
Runtime backend, REPO/<name>/1/model.onnx and REPO/<name>/config.pbtxt.

The combined model (combine.py) is served: the image is its one input (the backend, like ONNX
Runtime's JavaScript bindings, lists only inputs without a default), so every method runs with the
defaults written at conversion: the points of --steps, a zero baseline, no noise, the top-1
class. The outputs are every method's attribution, scores and explained class. When the
graph's batch axis is free, the config lets Triton batch requests (max_batch_size, dynamic
batching) and lists dims without it; a batch fixed in the graph gives max_batch_size 0 and the
full shapes."""
from __future__ import annotations

import re
from pathlib import Path

import onnx
from onnx import TensorProto

from ..errors import UsageError
from ..output import atomic_write
from .combine import combined_info

TRITON_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64", TensorProto.FLOAT16: "TYPE_FP16",
                TensorProto.DOUBLE: "TYPE_FP64", TensorProto.INT32: "TYPE_INT32", TensorProto.UINT8: "TYPE_UINT8"}


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]


def _type(value: onnx.ValueInfoProto) -> str:
    elem = value.type.tensor_type.elem_type
    if elem not in TRITON_TYPES:
        raise UsageError(f"{value.name}: element type {TensorProto.DataType.Name(elem)} has no Triton type here")
    return TRITON_TYPES[elem]


def triton_config(model: onnx.ModelProto, name: str, max_batch_size: int = 4) -> str:
    """config.pbtxt for the combined model (protobuf text of Triton's ModelConfig)."""
    info = combined_info(model)
    image = next(i for i in model.graph.input if i.name == info["input"])
    image_dims = _dims(image)
    batched = bool(image_dims) and image_dims[0] == -1 and max_batch_size > 0
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size if batched else 0}"]

    def tensor(value, dims, scalar=False):
        shown = dims[1:] if batched else dims
        body = [f'name: "{value.name}"', f"data_type: {_type(value)}"]
        if scalar and batched:  # one number per image: [N] in the graph, [1] per request item in Triton
            body += ["dims: [ 1 ]", "reshape: { shape: [ ] }"]
        else:
            body.append(f"dims: [ {', '.join(str(d) for d in shown)} ]")
        return "  {\n" + "\n".join("    " + b for b in body) + "\n  }"

    inputs = [tensor(image, image_dims)]
    outputs = []
    by_name = {o.name: o for o in model.graph.output}
    for method, m in info["methods"].items():
        for kind, output in m["outputs"].items():
            value = by_name[output]
            dims = _dims(value)
            if kind == "attribution":
                dims = image_dims
            elif kind in ("scores", "baseline_scores") and m.get("classes"):
                dims = [dims[0] if dims else -1, int(m["classes"])]
            outputs.append(tensor(value, dims, scalar=kind == "target_used"))
    lines.append("input [\n" + ",\n".join(inputs) + "\n]")
    lines.append("output [\n" + ",\n".join(outputs) + "\n]")
    if batched:
        lines.append("dynamic_batching { }")
    lines.append('instance_group [ { kind: KIND_CPU } ]  # KIND_GPU with the CUDA execution provider')
    return "\n".join(lines) + "\n"


def write_triton(repo: Path, model: onnx.ModelProto, name: str, max_batch_size: int = 4,
                 overwrite: bool = False) -> Path:
    """Write REPO/<name>/1/model.onnx and REPO/<name>/config.pbtxt (atomically); returns the model's folder."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UsageError(f"Triton model name {name!r}: use letters, digits, '_', '.' and '-' (--triton-name)")
    if max_batch_size < 0:
        raise UsageError("--max-batch must be 0 (no batching) or more")
    folder = Path(repo) / name
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UsageError(f"{folder} is not empty; pass --overwrite to replace the model there")
    config = triton_config(model, name, max_batch_size)
    atomic_write(folder / "1" / "model.onnx", model.SerializeToString())
    atomic_write(folder / "config.pbtxt", config)
    return folder
