"""Sessions on ONNX Runtime. The runtime comes from an extra (cpu or gpu): building graphs needs
only onnx and numpy, running them needs one of the two."""
from __future__ import annotations

from .errors import GnlOnnxError


def onnxruntime():
    try:
        import onnxruntime as ort
    except ImportError:
        raise GnlOnnxError("ONNX Runtime is not installed: pip install 'gnl-onnx[cpu]' "
                           "(or 'gnl-onnx[gpu]' for CUDA)") from None
    return ort
