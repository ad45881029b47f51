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
        self.hint = hint
        parts = [f"{op} (e.g. node '{nodes[0]}'" + (f", {len(nodes)} nodes)" if len(nodes) > 1 else ")")
                 for op, nodes in self.unsupported.items()]
        message = "cannot differentiate this model: no gradient rule for " + "; ".join(parts)
        super().__init__(message + (f". {hint}" if hint else ""))

    def with_note(self, note: str) -> "UnsupportedModelError":
        """The same error with one more sentence (what does run on the model)."""
        return UnsupportedModelError(self.unsupported, ". ".join(filter(None, (self.hint.rstrip("."), note))))


class UsageError(GnlOnnxError):
    """The arguments do not fit the model or each other."""


class InputError(GnlOnnxError):
    """An input image or argument cannot be used (missing, unreadable, truncated, too large)."""


class NonFiniteError(GnlOnnxError):
    """NaN or infinity came out of the model (stage "forward": its output at the image) or out of
    the backward pass (stage "backward": the attribution) for the images at `indices`, one stage
    each in `stages`. `partial` holds the run's results, so callers can keep the finite images."""

    REASONS = {"forward": "the model's output is NaN or infinite (forward pass); its weights or this input hold "
                          "non-finite values or overflow: check the model and the preprocessing",
               "backward": "the attribution is NaN or infinite (backward pass) while the output is finite: some "
                           "gradient overflows; try output=logit, fewer steps or another baseline, and report the "
                           "model if it persists"}

    def __init__(self, indices, stages, partial=None, names=None):
        self.indices = [int(i) for i in indices]
        self.stages = [stages] * len(self.indices) if isinstance(stages, str) else list(stages)
        self.partial = partial
        self.names = list(names) if names is not None else [f"image {i}" for i in self.indices]
        parts = []
        for stage in ("forward", "backward"):
            hit = [n for n, s in zip(self.names, self.stages) if s == stage]
            if hit:
                shown = ", ".join(hit[:3]) + (f" and {len(hit) - 3} more" if len(hit) > 3 else "")
                parts.append(f"{shown}: {self.REASONS[stage]}")
        super().__init__("; ".join(parts))

    @property
    def stage(self) -> str:
        return self.stages[0]

    def named(self, names) -> "NonFiniteError":
        """The same error with the names of the batch's images instead of their positions."""
        return NonFiniteError(self.indices, self.stages, self.partial, [str(names[i]) for i in self.indices])
