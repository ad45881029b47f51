"""Sessions on ONNX Runtime. The runtime comes from an extra (cpu or gpu): building graphs needs
only onnx and numpy, running them needs one of the two."""
from __future__ import annotations

import ctypes
import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import GnlOnnxError, ModelError, UsageError


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise GnlOnnxError("ONNX Runtime is not installed: pip install 'gnl-onnx[cpu]' "
                           "(or 'gnl-onnx[gpu]' for CUDA)") from None
    return ort


def choose_providers(providers=None) -> list[str]:
    """CUDA when onnxruntime-gpu sees a GPU, the CPU otherwise (or what the caller names)."""
    ort = onnxruntime()
    if providers:
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise UsageError(f"ONNX Runtime here has no {', '.join(missing)}; available: "
                             f"{', '.join(ort.get_available_providers())}")
        return list(providers)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# CUDA computes in float32 as the CPU does: ONNX Runtime's CUDA provider multiplies in TF32 by
# default (a 10-bit mantissa), which on an H200 moved resnet50's input gradient by 19% of its scale
# from the CPU's (tools/gpu_check.py), where the references the methods are held to are float32.
CUDA_OPTIONS = {"use_tf32": "0"}


def with_provider_options(providers: list[str]) -> list:
    """The providers as InferenceSession takes them, with our options for those that have some."""
    return [(p, CUDA_OPTIONS) if p == "CUDAExecutionProvider" else p for p in providers]


# Initializers at least this large reach ONNX Runtime as arrays, not inside the serialized model:
# serializing a model and parsing it back copies every weight twice (vgg16's 553 MB: 2.9 s of
# session creation, 1.5 s without it).
BY_REFERENCE_BYTES = 1 << 16
_IN_MEMORY = "gnl-onnx-in-memory"  # a location no file has: the session gets the data from us
_NUMPY_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.INT32,
                TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL}


def detach_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(a copy of the model whose large initializers are references without data, their data as
    arrays). make_session(light, weights=...) runs it; the caller can drop the full model first,
    so that its weights are never held three times at once."""
    light = onnx.ModelProto(ir_version=model.ir_version)
    light.opset_import.extend(model.opset_import)
    light.metadata_props.extend(model.metadata_props)
    light.functions.extend(model.functions)
    graph, source = light.graph, model.graph
    graph.name = source.name
    for part in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(graph, part).extend(getattr(source, part))
    weights = {}
    for tensor in source.initializer:
        if tensor.data_type not in _NUMPY_TYPES or not tensor.HasField("raw_data") or \
                _nbytes(tensor) < BY_REFERENCE_BYTES:  # (reading raw_data to measure it would copy it)
            graph.initializer.append(tensor)
            continue
        try:
            weights[tensor.name] = numpy_helper.to_array(tensor)
        except ValueError as e:  # a model handed over without the intake's checks
            raise ModelError(f"initializer '{tensor.name}' is damaged ({e}); re-export the model") from None
        stub = graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                     data_location=TensorProto.EXTERNAL)
        stub.external_data.add(key="location", value=_IN_MEMORY)
    return light, weights


def _nbytes(tensor: onnx.TensorProto) -> int:
    return int(np.prod(tensor.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


QUANTIZATION_OPS = ("QuantizeLinear", "DequantizeLinear")


def make_session(model, providers=None, threads: int | None = None, memory_pattern: bool = True,
                 weights: dict[str, np.ndarray] | None = None, prepack: bool = True):
    """A session on a ModelProto; returns (session, name of the provider that really runs it:
    onnxruntime silently falls back to the CPU when a provider fails to load). memory_pattern=False
    lets the arena reuse buffers as values die instead of pre-planning one block per input shape:
    for attribution graphs it measured 35-45% less peak memory at the same speed (ResNet-50, 128
    steps: 2.9 vs 4.5 GB, 13.6 vs 13.5 s). `weights`: the data of a model from detach_weights
    (else the model is detached here). prepack=False keeps the weights in one copy (ONNX Runtime
    otherwise keeps packed copies of Gemm/MatMul weights beside them: vgg16 +450 MB, at no
    measured speed difference for attribution graphs)."""
    ort = onnxruntime()
    if weights is None:
        model, weights = detach_weights(model)
    options = ort.SessionOptions()
    # errors only: ONNX Runtime warns on every session about the inputs with defaults the graphs add
    # (score_rows, ZBox's low/high: initializers that are also inputs, by design); errors still raise
    options.log_severity_level = 3
    options.enable_mem_pattern = memory_pattern
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if threads:
        options.intra_op_num_threads = threads
    if any(node.op_type in QUANTIZATION_OPS for node in model.graph.node):
        # explain the dequantized equivalent as written: at its default level ONNX Runtime fuses
        # DequantizeLinear -> op -> QuantizeLinear into integer kernels that round apart, per CPU
        # (EfficientNet-Lite0 int8: the gradient 18 % of its max off the dequantized graph's, Grad-CAM
        # 14 %); the basic level without its QDQ handling matches no optimization at all (7e-7, 0)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    if weights:  # the session copies them: the arrays can go once it is built
        values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in weights.values()]
        options.add_external_initializers(list(weights), values)
    chosen = choose_providers(providers)
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=with_provider_options(chosen))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own unrelated classes
        raise GnlOnnxError(f"ONNX Runtime could not load the model: {str(e).splitlines()[0][:300]}") from None
    return session, session.get_providers()[0]


def release_freed_memory() -> None:
    """Hand memory freed on the C heap back to the system (glibc keeps it otherwise: after a
    session is built from vgg16, 350 MB of freed copies stayed resident). Nothing elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
