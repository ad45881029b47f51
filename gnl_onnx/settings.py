"""Run settings as one value: method, steps, baseline, integration, gate, output, input and output
names, layer, bounds, seed, threads, providers and the memory budget, validated once where they
enter (a CLI flag or an API call) and handed down as they are to the runtime, evaluate, check and
audit, which read them instead of passing twenty keywords along.

    settings = Settings(method="ig", steps=16, memory_budget="2GB")   # refused here if wrong
    Explainer(model, settings=settings); evaluate(model, images, settings=settings)
    settings.replace(method="gradcam")                                 # checked again

The memory budget stays as it was given (a size or "auto"): each process resolves it once, into
bytes and a note, with gnl_onnx.budget (the available memory is that of the machine that runs)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import numpy as np

from .autodiff.gating import GATES
from .budget import parse_bytes
from .errors import UsageError
from .methods import INTEGRATIONS, get_method
from .targets import OUTPUT_KINDS, Target

MAX_STEPS = 100_000


@dataclass(frozen=True, eq=False)
class Settings:
    method: str = "gnl_ig"
    steps: object = 32               # an integer, or "auto": per image, as many as `tolerance` needs (ig, gnl_ig)
    baseline: object = "zeros"        # a name (zeros, black, blur, noise) or an array
    integration: str = "gausslegendre"
    gate: str = "paper"
    output: object = "logit"          # what is explained: logit, prob or logprob of the target class, or a
    # Target (gnl_onnx/targets.py: a segment's or a dense map's region, an output slice)
    input: str | None = None          # the image input's name (None: found)
    output_name: str | None = None    # the model output to explain (None: found)
    layer: tuple | None = None        # the CAM methods' target layer(s) (None: found)
    bounds: tuple | None = None       # (low, high) of the input, for ZBox (None: 0 and 1)
    black: object = None              # pixel value 0 in the model's input space (the "black" baseline)
    layout: str | None = None         # NCHW or NHWC (None: guessed from the shape)
    noise_level: float = 0.15         # SmoothGrad: noise as a fraction of each image's value range
    seed: int = 0
    threads: int | None = None
    providers: tuple | None = None
    memory_budget: object = "auto"    # "auto" or a size ("2GB", bytes)
    tolerance: float = 0.01           # steps="auto": ig's completeness gap, gnl_ig's change of the map

    def __post_init__(self):
        get_method(self.method)
        if self.steps != "auto" and (not isinstance(self.steps, (int, np.integer)) or isinstance(self.steps, bool)
                                     or not 1 <= self.steps <= MAX_STEPS):
            raise UsageError(f"steps must be an integer from 1 to {MAX_STEPS}, or 'auto' (got {self.steps!r})")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float, np.integer, np.floating)) \
                or not 0 < self.tolerance < 1:
            raise UsageError(f"the tolerance must be a number between 0 and 1, e.g. 0.01 (got {self.tolerance!r})")
        if self.integration not in INTEGRATIONS:
            raise UsageError(f"unknown integration rule '{self.integration}'; choose gausslegendre, left, right, "
                             "middle or trapezoid")
        if self.gate not in GATES:
            raise UsageError(f"unknown gate '{self.gate}'; choose one of {', '.join(GATES)}")
        if not isinstance(self.output, Target) and self.output not in OUTPUT_KINDS:
            raise UsageError(f"unknown output '{self.output}'; choose one of {', '.join(OUTPUT_KINDS)}")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            raise UsageError(f"the seed must be a non-negative integer (got {self.seed!r})")
        if self.threads is not None and (not isinstance(self.threads, (int, np.integer)) or self.threads < 0):
            raise UsageError(f"threads must be a non-negative integer (got {self.threads!r})")
        if self.layout not in (None, "NCHW", "NHWC"):
            raise UsageError(f"layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
        parse_bytes(self.memory_budget)  # a budget that cannot be read is refused here, not in a worker
        for name in ("layer", "providers"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(value) or None)

    def replace(self, **changes) -> Settings:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def for_method(self, method: str) -> Settings:
        """These settings for another method: the layer only where the method takes one."""
        return self.replace(method=method, layer=self.layer if get_method(method).takes_layer else None)

    @classmethod
    def from_options(cls, settings: Settings | None = None, **options) -> Settings:
        """Settings from keywords (the API's), over `settings` when given; unknown names are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise UsageError(f"unknown setting {', '.join(map(repr, unknown))}")
        return (settings or cls()).replace(**options) if options else (settings or cls())

    def explainer_options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
