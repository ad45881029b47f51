"""Sessions on ONNX Runtime. The runtime comes from an extra (cpu or gpu): building graphs needs
only onnx and numpy, running them needs one of the two."""
from __future__ import annotations

from .errors import GnlOnnxError, UsageError


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


def make_session(model, providers=None, threads: int | None = None, memory_pattern: bool = True):
    """A session on a ModelProto; returns (session, name of the provider that really runs it:
    onnxruntime silently falls back to the CPU when a provider fails to load). memory_pattern=False
    lets the arena reuse buffers as values die instead of pre-planning one block per input shape:
    for attribution graphs it measured 35-45% less peak memory at the same speed (ResNet-50, 128
    steps: 2.9 vs 4.5 GB, 13.6 vs 13.5 s)."""
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_mem_pattern = memory_pattern
    if threads:
        options.intra_op_num_threads = threads
    chosen = choose_providers(providers)
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=chosen)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own unrelated classes
        raise GnlOnnxError(f"ONNX Runtime could not load the model: {str(e).splitlines()[0][:300]}") from None
    return session, session.get_providers()[0]
