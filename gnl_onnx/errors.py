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


class NonFiniteError(GnlOnnxError):
    """NaN or infinity came out of the model (stage "forward": its output at the image) or out of
    the backward pass (stage "backward": the attribution), for the images at `indices`. `partial`
    holds the run's results, so callers can keep the images that came out finite."""

    def __init__(self, indices, stage: str, partial=None, names=None):
        self.indices, self.stage, self.partial = [int(i) for i in indices], stage, partial
        self.names = names or [f"image {i}" for i in self.indices]
        shown = ", ".join(self.names[:3]) + (f" and {len(self.names) - 3} more" if len(self.names) > 3 else "")
        what = ("the model's output is NaN or infinite (forward pass); its weights or this input hold non-finite "
                "values or overflow: check the model and the preprocessing" if stage == "forward" else
                "the attribution is NaN or infinite (backward pass) while the output is finite: some gradient "
                "overflows; try output=logit, fewer steps or another baseline, and report the model if it persists")
        self.reason = what
        super().__init__(f"{shown}: {what}")

    def named(self, names) -> "NonFiniteError":
        """The same error with file names instead of batch positions."""
        return NonFiniteError(self.indices, self.stage, self.partial, [str(names[i]) for i in self.indices])
