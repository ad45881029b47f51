"""gnl-onnx: explain image CNNs from any framework by rewriting their ONNX graphs."""
from .errors import GnlOnnxError, ModelError, UnsupportedModelError, UsageError
from .vjp import vjp_model, vjp_report

__all__ = ["vjp_model", "vjp_report", "GnlOnnxError", "ModelError", "UnsupportedModelError", "UsageError"]
__version__ = "0.1.0"
