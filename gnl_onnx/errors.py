"""The package's exceptions. Each message says what went wrong and what the user can do."""


class GnlOnnxError(Exception):
    """Base class: every failure the package anticipates is one of these."""


class ModelError(GnlOnnxError):
    """The model file cannot be read, or is not a valid ONNX model."""


class UnsupportedModelError(ModelError):
    """The model is valid but cannot be differentiated (ops without a gradient rule, control flow,
    custom domains). `unsupported` maps each offending op type to the nodes that use it."""

    def __init__(self, unsupported: dict[str, list[str]], hint: str = ""):
        self.unsupported = {op: list(nodes) for op, nodes in sorted(unsupported.items())}
        parts = [f"{op} (e.g. node '{nodes[0]}'" + (f", {len(nodes)} nodes)" if len(nodes) > 1 else ")")
                 for op, nodes in self.unsupported.items()]
        message = "cannot differentiate this model: no gradient rule for " + "; ".join(parts)
        super().__init__(message + (f". {hint}" if hint else ""))


class UsageError(GnlOnnxError):
    """The arguments do not fit the model or each other."""


class InputError(GnlOnnxError):
    """An input image or argument cannot be used (missing, unreadable, truncated, too large)."""
