"""Relevance propagation as methods: the LRP composites and DeepLIFT, whose backward rule sets live
in gnl_onnx/autodiff/relevance/. Both are defined at the image, so their scores come from their
first block of points (no score rows): LRP runs one point; DeepLIFT runs the image and its
reference (the baseline) in one batch, alphas [1, 0], weights [1, 0], the last block being the
reference of the others, and also outputs the scores at the baseline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .base import Method
from .registry import register


@dataclass(frozen=True)
class Lrp(Method):
    """An LRP composite at the image; the seed is the one-hot of the target, so a map sums to about 1
    (what biases and stabilizers absorb is missing), as in Zennit."""
    scores_at_points: ClassVar[bool] = True
    extra_input_names: ClassVar[tuple] = ("low", "high")  # ZBox's bounds (lrp_epsilon_gamma_box)


@dataclass(frozen=True)
class DeepLift(Method):
    uses_baseline: ClassVar[bool] = True
    scores_at_points: ClassVar[bool] = True
    pairs_rows: ClassVar[bool] = True
    extra_outputs: ClassVar[tuple] = ("baseline_scores",)

    def steps_run(self, steps: int) -> int:
        return 2  # the image and its reference, whatever the step count asked

    def points(self, steps, integration="gausslegendre"):
        return np.array([1.0, 0.0], np.float32), np.array([1.0, 0.0], np.float32)

    def add_rows(self, g, rows):
        """Row r's reference is row (S-1) N + r mod N (the last block): the rule set's extra input."""
        n_rows = g.op("Slice", rows["image_shape"], g.ints([0]), g.ints([1]))
        every = g.op("Range", g.ints(0), g.op("Squeeze", g.op("Shape", rows["points"], end=1), g.ints([0])),
                     g.ints(1))
        last = g.op("Mul", g.op("Sub", g.op("Shape", "alphas"), g.ints([1])), n_rows)
        g.op("Add", last, g.op("Mod", every, n_rows), out=rows["extra_inputs"][0])

    def add_outputs(self, g, rows):
        g.op("Slice", rows["scores_all"], g.op("Sub", rows["rows"], rows["n"]), rows["rows"], g.ints([0]),
             out="baseline_scores")


register(
    Lrp("lrp_epsilon_plus_flat", "LRP, Zennit's EpsilonPlusFlat: Flat at the first layer, ZPlus at convolutions, "
        "Epsilon at dense layers", rule="lrp_epsilon_plus_flat"),
    Lrp("lrp_epsilon_gamma_box", "LRP, Zennit's EpsilonGammaBox: ZBox at the first layer, Gamma(0.25) at "
        "convolutions, Epsilon at dense layers", rule="lrp_epsilon_gamma_box"),
    Lrp("lrp_epsilon_alpha2_beta1_flat", "LRP, Zennit's EpsilonAlpha2Beta1Flat: Flat at the first layer, "
        "AlphaBeta(2, 1) at convolutions, Epsilon at dense layers", rule="lrp_epsilon_alpha2_beta1_flat"),
    DeepLift("deeplift", "DeepLIFT, Rescale rule (Shrikumar et al.; as Captum): (image - baseline) times "
             "multipliers (y - y0) / (x - x0) at non-linear units", rule="deeplift", factor="delta", complete=True),
)
