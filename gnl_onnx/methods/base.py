"""What a method is, answered once (the commands and the runtime ask; they never test names).

A method is an attribution graph of one shape (gnl_onnx/attribution.py):

    points      = baseline + alphas[s] * (image - baseline) + noise[s]      (S points per image)
    grads       = the backward of the explained score at the points, by the method's rule set
    attribution = factor * sum_s weights[s] * grads[s]      (then the method's own finish: a CAM map)

A Method says which rule set the backward uses, the factor, which points it samples for a step
count and how many it really runs, whether it takes a layer, reads a baseline, draws noise, and
what its graph adds (DeepLIFT's reference rows, a CAM's map, Score-CAM's loop), and what its
result carries (complete methods report their convergence delta)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import UsageError

MAX_GAUSS_LEGENDRE_STEPS = 1024
INTEGRATIONS = ("gausslegendre", "left", "right", "middle", "trapezoid")


@dataclass(frozen=True)
class Method:
    """A method at one point, the image (gradient, input x gradient, guided backprop)."""
    name: str
    summary: str
    rule: str = "plain"    # the backward rule set: "plain", "guided", an LRP composite, "deeplift"
    factor: str = "none"   # times the weighted gradients: "delta" (image - baseline), "image" or "none"
    complete: bool = False  # sums to F(image) - F(baseline): the runtime reports the gap as delta

    uses_baseline: ClassVar[bool] = False     # its points or factor read the baseline
    uses_integration: ClassVar[bool] = False  # its points follow a quadrature rule
    draws_noise: ClassVar[bool] = False       # the runtime feeds noise to its points
    takes_layer: ClassVar[bool] = False       # a target layer (CAMs: --layer)
    scores_at_points: ClassVar[bool] = False  # its first block of points is the images: no score rows
    pairs_rows: ClassVar[bool] = False        # each image's rows and its reference's share a run
    extra_input_names: ClassVar[tuple] = ()   # public names of its rule set's extra inputs
    extra_outputs: ClassVar[tuple] = ()       # outputs beside attribution, scores and target_used
    noisy_copies: ClassVar[bool] = False      # the runtime runs it on noisy copies (SmoothGrad's wrapper)
    prunes: ClassVar[bool] = False            # its graph drops what does not reach the outputs
    follows_steps: ClassVar[bool] = False     # its number of points is the step count asked
    forward_only: ClassVar[bool] = False      # forward passes of perturbed copies, no backward (perturbation.py)
    rescores_classes: ClassVar[bool] = False  # its graph scores copies of the image by class (Score-CAM)

    def steps_run(self, steps: int) -> int:
        """How many points it really runs for a step count (what results and reports show)."""
        return int(steps) if self.follows_steps else 1

    def points(self, steps: int, integration: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
        """(alphas, weights) of its steps_run(steps) points, float32."""
        n = self.steps_run(steps)
        ones = np.ones(n, np.float32)
        return ones, ones / n

    # -- its part of the attribution graph (gnl_onnx/attribution.py calls these) --------------
    def layers(self, proto, x: str, y: str, names) -> tuple[list, int | None]:
        """The inner values whose gradients it reads (a CAM's layers) and the image's channel axis."""
        return [], None

    def seeds_image_rows(self) -> bool:
        """Whether the score rows of the images are seeded too (their gradients are read)."""
        return False

    def add_rows(self, g, rows: dict) -> None:
        """Values its rule set reads beside the points (DeepLIFT: each row's reference row)."""

    def add_outputs(self, g, rows: dict) -> None:
        """Its extra_outputs, built from the scores of every row."""

    def finish(self, g, weighted: str, factor: str | None, rows: dict) -> tuple[str, str | None]:
        """(the attribution before its factor, the factor): the weighted gradients as they are."""
        return weighted, factor

    def row_bytes(self, row_bytes: int, layers) -> int:
        """Memory of one row of its runs, from that of the backward graph."""
        return row_bytes

    def wrapped(self) -> Method:
        """The method whose graph runs (a wrapper's inner one; itself otherwise)."""
        return self

    # -- the fields methods had when they were rows of one table (deprecated) ----------------------
    @property
    def path(self) -> str:
        _moved("path", "uses_integration, draws_noise, pairs_rows")
        return ("reference" if self.pairs_rows else "noise" if self.draws_noise
                else "line" if self.uses_integration else "image")

    @property
    def cam(self) -> str | None:
        _moved("cam", "takes_layer (and Cam.kind)")
        return getattr(self, "kind", None)

    @property
    def cam_times(self) -> bool:
        _moved("cam_times", "Cam.times_gradient")
        return getattr(self, "times_gradient", False)


def _moved(old: str, new: str) -> None:
    warnings.warn(f"Method.{old} is deprecated: ask the method's {new}", DeprecationWarning, stacklevel=3)


@dataclass(frozen=True)
class PathMethod(Method):
    """Points on the straight path from the baseline to the image, by a quadrature rule (IG)."""
    uses_baseline: ClassVar[bool] = True
    uses_integration: ClassVar[bool] = True
    follows_steps: ClassVar[bool] = True

    def points(self, steps, integration="gausslegendre"):
        return path_points(self.steps_run(steps), integration)


def path_points(steps: int, rule: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """Points alpha in [0, 1] and weights of a quadrature of the integral over the path."""
    if steps < 1:
        raise UsageError(f"steps must be at least 1 (got {steps})")
    k = np.arange(steps, dtype=np.float64)
    if rule == "gausslegendre":
        if steps > MAX_GAUSS_LEGENDRE_STEPS:  # numpy's leggauss builds a steps x steps matrix
            raise UsageError(f"Gauss-Legendre takes at most {MAX_GAUSS_LEGENDRE_STEPS} steps (its error is "
                             "already tiny there); use integration 'middle' or 'trapezoid' for more")
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (nodes + 1) / 2, weights / 2
    elif rule in ("left", "right", "middle"):
        alphas = (k + {"left": 0.0, "right": 1.0, "middle": 0.5}[rule]) / steps
        weights = np.full(steps, 1.0 / steps)
    elif rule == "trapezoid":
        if steps < 2:
            raise UsageError("the trapezoid rule needs at least 2 steps")
        alphas = k / (steps - 1)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
    else:
        raise UsageError(f"unknown integration rule '{rule}'; choose gausslegendre, left, right, middle or trapezoid")
    return alphas.astype(np.float32), weights.astype(np.float32)
