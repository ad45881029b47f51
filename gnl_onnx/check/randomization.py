"""Model randomization (Adebayo et al.'s sanity check): cascading randomization, which explains
each copy of the model with some weighted layers redrawn (gnl_onnx/randomize.py, re-exported here)
and correlates its maps with the original's. Used by `check` (its randomization check) and by the
tests."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from ..explainer import Explainer
from ..intake import read_model
from ..randomize import WEIGHTED_OPS, randomize_layers, weighted_layers  # noqa: F401 - their old home
from ..pixels import image_layout, reduce_to_pixels, spearman


@dataclass
class RandomizationStep:
    layer: str | None          # the layer randomized at this step; None: the original model
    op: str | None
    randomized: list[str]      # every layer randomized so far, output side first
    spearman_abs: np.ndarray   # [N]: rank correlation of the abs_sum per-pixel maps
    spearman_signed: np.ndarray  # [N]: of the signed (sum) per-pixel maps
    attributions: np.ndarray | None = None

    def row(self) -> dict:
        """Means over the images (NaN maps left out; None when every map was constant)."""
        def mean(v):
            return float(np.nanmean(v)) if np.any(np.isfinite(v)) else None

        return {"layer": self.layer or "(original)", "op": self.op, "randomized": len(self.randomized),
                "spearman_abs": mean(self.spearman_abs), "spearman_signed": mean(self.spearman_signed)}


@dataclass
class CascadingRandomization:
    method: str
    target: np.ndarray        # [N]: the class explained at every step (the original model's)
    original: np.ndarray      # the original model's attributions
    steps: list[RandomizationStep] = field(default_factory=list)

    def rows(self) -> list[dict]:
        return [s.row() for s in self.steps]


def cascading_randomization(model, images, method: str = "gnl_ig", layers=None, seed: int = 0,
                            target=None, layout: str | None = None, keep_attributions: bool = False,
                            **explainer_options) -> CascadingRandomization:
    """Adebayo et al.'s cascading randomization: step 0 explains the unrandomized model (through
    the same copy-and-explain path, so its correlation, 1.0, checks that path), then each step
    randomizes one more layer from the output side down (see randomize_layers) and explains again.
    Every step explains the class the original model was explained for (its top-1 unless `target`
    says otherwise), so only the model changes. Spearman correlations per image of the signed
    (sum) and absolute (abs_sum) per-pixel maps with the original's; NaN where a map is constant.
    explainer_options go to Explainer (steps, baseline, black, integration, gate, output, ...)."""
    source = read_model(model)
    images = np.ascontiguousarray(images, dtype=np.float32)
    layout = image_layout(images.shape, layout)
    available = weighted_layers(source)
    names = [layer["name"] for layer in available]
    if layers is not None:
        unknown = [n for n in layers if n not in names]
        if unknown:
            raise UsageError(f"no weighted layer named {', '.join(map(repr, unknown))}; the model's layers "
                             f"(output side first) are: {', '.join(names)}")
    walk = [layer for layer in available if layers is None or layer["name"] in layers]

    def explain(m, t):
        return Explainer(m, method=method, layout=layout, **explainer_options).explain(images, t)

    original = explain(source, target)
    result = CascadingRandomization(method, original.target, original.attributions)
    maps = {how: [reduce_to_pixels(a[None], layout, how) for a in original.attributions]
            for how in ("sum", "abs_sum")}
    done: list[str] = []
    for layer in [None] + walk:
        if layer is not None:
            done.append(layer["name"])
        randomized = randomize_layers(source, done, seed)
        a = explain(randomized, original.target).attributions
        corr = {how: np.array([spearman(maps[how][i], reduce_to_pixels(a[i:i + 1], layout, how))
                               for i in range(len(images))]) for how in maps}
        result.steps.append(RandomizationStep(layer and layer["name"], layer and layer["op"], list(done),
                                              corr["abs_sum"], corr["sum"], a if keep_attributions else None))
    return result
