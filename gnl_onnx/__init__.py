"""gnl-onnx: explain image CNNs from any framework by rewriting their ONNX graphs.

The public API, shared by every method: vjp_model (the backward-graph primitive),
attribution_model (one ONNX model per method), Explainer (the runtime), Settings (a run's
settings as one validated value)."""
from .attribution import METHODS, attribution_model
from .errors import GnlOnnxError, InputError, ModelError, NonFiniteError, UnsupportedModelError, UsageError
from .explainer import Explainer, Explanation
from .intake import PreparedModel, prepare
from .settings import Settings
from .vjp import vjp_model, vjp_report

__all__ = ["vjp_model", "vjp_report", "attribution_model", "Explainer", "Explanation", "METHODS",
           "GnlOnnxError", "InputError", "ModelError", "NonFiniteError", "UnsupportedModelError",
           "UsageError", "PreparedModel", "prepare", "Settings"]
__version__ = "0.1.0"
