"""Measuring attributions (numpy + ONNX Runtime, no torch).

Faithfulness: the deletion and insertion metrics of RISE (Petsiuk et al., 2018) as METHOD.md
states them. Pixels are ranked by the attribution and removed (deletion: replaced in all channels
by a substrate) or inserted (insertion: the image's pixels put into the substrate) in equal chunks;
the target's softmax probability is recorded after each chunk, and the area under that curve
(trapezoid, x in [0, 1]) is the score: low is good for deletion, high for insertion. A random
attribution is the floor. ROAD (Rong et al., 2022: removed pixels imputed by noisy linear
imputation, most- and least-relevant-first curves) lives in gnl_onnx.road; road_score is here too.
The model randomization of Adebayo et al. lives beside the check that uses it
(gnl_onnx/check/randomization.py)."""
from __future__ import annotations

import importlib
import math
import warnings

import numpy as np

from .baselines import gaussian_blur
from .errors import UsageError
from .pixels import image_layout, one_image_hw, rankdata, ranking, reduce_to_pixels, spearman
from .road import road_score
from .scorer import BATCH_SIZE, Scorer, as_scorer

DELETION_SUBSTRATE = "zeros"  # RISE deletion: 0 in the model's normalized input space
INSERTION_SUBSTRATE = "blur"  # RISE insertion: Gaussian blur, kernel 11, sigma 5
SUBSTRATES = ("zeros", "mean", "blur")
MODES = ("deletion", "insertion")
CURVE_STEPS = 28  # RISE: 224 * 8 pixels per step on 224 x 224



def random_attribution(shape, seed=0) -> np.ndarray:
    """Standard normal values of the given shape: the floor every method must beat."""
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)


# -- the model, scored ---------------------------------------------------------------------------


# -- substrates and curves -----------------------------------------------------------------------
def make_substrate(kind, image: np.ndarray, layout: str | None = None) -> np.ndarray:
    """What removed pixels become (or insertion starts from), shaped like the image: "zeros" (0 in
    the model's input space), "mean" (each channel's mean over the image), "blur" (Gaussian,
    kernel 11, sigma 5) or an array broadcastable to the image."""
    image = np.asarray(image, np.float32)
    layout = image_layout(image.shape, layout)
    if not isinstance(kind, str):
        s = np.asarray(kind, np.float32)
        try:
            return np.broadcast_to(s, image.shape).astype(np.float32)
        except ValueError:
            raise UsageError(f"substrate of shape {s.shape} does not broadcast to the image {image.shape}") from None
    if kind == "zeros":
        return np.zeros_like(image)
    if kind == "mean":
        _, _, axes = one_image_hw(image.shape, layout)
        return np.broadcast_to(image.mean(axis=axes, keepdims=True), image.shape).astype(np.float32)
    if kind == "blur":
        return gaussian_blur(image, layout=layout)
    raise UsageError(f"unknown substrate '{kind}'; choose one of {', '.join(SUBSTRATES)} or give an array")


def chunk_size(pixels: int, steps: int) -> int:
    """Pixels per step: ceil(pixels / steps) (RISE: 224 * 8 on 224 x 224 with 28 steps)."""
    return math.ceil(pixels / steps)


def perturbation_curve(scorer, image, order, substrate, steps: int = CURVE_STEPS, mode: str = "deletion",
                       batch_size: int = BATCH_SIZE, target: int | None = None,
                       layout: str | None = None) -> np.ndarray:
    """The target's probability at steps + 1 points, the unperturbed start included.

    image: [1, ...] in the model's layout. order: flat pixel indices, most important first (see
    ranking). Point k has min(k * ceil(H*W/steps), H*W) pixels changed: deletion replaces them (all
    channels) by the substrate, insertion starts from the substrate and puts the image's pixels
    back. target: the class whose probability is tracked (default: the image's top-1).
    All points run through ONNX Runtime, batch_size at a time."""
    if mode not in MODES:
        raise UsageError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UsageError(f"steps must be a positive integer (got {steps!r})")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1 (got {batch_size})")
    scorer = as_scorer(scorer)
    image = np.asarray(image, np.float32)
    layout = image_layout(image.shape, layout)
    h, w, axes = one_image_hw(image.shape, layout)
    substrate = make_substrate(substrate, image, layout)
    order = np.asarray(order).ravel()
    if order.size != h * w or not np.array_equal(np.sort(order), np.arange(h * w)):
        raise UsageError(f"order must be a permutation of the {h * w} pixel indices (see ranking)")
    if target is None:
        target = int(np.argmax(scorer.probabilities(image)[0]))
    position = np.empty(h * w, np.int64)
    position[order] = np.arange(h * w)  # each pixel's place in the order
    counts = np.minimum(np.arange(steps + 1) * chunk_size(h * w, steps), h * w)
    mask_shape = [1] * image.ndim
    mask_shape[axes[0]], mask_shape[axes[1]] = h, w
    changed, kept = (substrate, image) if mode == "deletion" else (image, substrate)
    curve = []
    for lo in range(0, steps + 1, batch_size):
        n = counts[lo:lo + batch_size]
        masks = (position[None, :] < n[:, None]).reshape([len(n)] + mask_shape[1:])
        curve.append(scorer(np.where(masks, changed, kept), target, batch_size))
    return np.concatenate(curve)


def auc(curve) -> float:
    """Area under a curve of N + 1 equally spaced points, x in [0, 1], trapezoid rule:
    (sum a - a_0 / 2 - a_N / 2) / N."""
    a = np.asarray(curve, np.float64).ravel()
    if a.size < 2:
        raise UsageError("a curve needs at least 2 points")
    return float((a.sum() - a[0] / 2 - a[-1] / 2) / (a.size - 1))


def _score(model, image, attribution, mode, substrate, steps, how, target, batch_size, layout):
    image = np.asarray(image, np.float32)
    layout = image_layout(image.shape, layout)
    order = ranking(reduce_to_pixels(attribution, layout, how))
    curve = perturbation_curve(model, image, order, substrate, steps, mode, batch_size, target, layout)
    return auc(curve), curve


def deletion_score(model, image, attribution, substrate=DELETION_SUBSTRATE, steps: int = CURVE_STEPS,
                   how: str = "sum", target: int | None = None, batch_size: int = BATCH_SIZE,
                   layout: str | None = None) -> tuple[float, np.ndarray]:
    """(deletion AUC, curve) of one image's attribution; lower is better. model: a Scorer, a path
    or a ModelProto (a Scorer saves building a session per call)."""
    return _score(model, image, attribution, "deletion", substrate, steps, how, target, batch_size, layout)


def insertion_score(model, image, attribution, substrate=INSERTION_SUBSTRATE, steps: int = CURVE_STEPS,
                    how: str = "sum", target: int | None = None, batch_size: int = BATCH_SIZE,
                    layout: str | None = None) -> tuple[float, np.ndarray]:
    """(insertion AUC, curve) of one image's attribution; higher is better."""
    return _score(model, image, attribution, "insertion", substrate, steps, how, target, batch_size, layout)


# -- rank correlation ----------------------------------------------------------------------------


# -- cascading model-parameter randomization ----------------------------------------------------


__all__ = ["BATCH_SIZE", "Scorer", "auc", "chunk_size", "deletion_score", "insertion_score", "make_substrate",
           "perturbation_curve", "random_attribution", "rankdata", "ranking", "reduce_to_pixels", "road_score",
           "spearman"]

# the model randomization moved beside the check that uses it (gnl_onnx/check/randomization.py);
# its old names here still answer, with a DeprecationWarning (looked up on use: check sits above)
_MOVED = ("cascading_randomization", "randomize_layers", "weighted_layers", "CascadingRandomization",
          "RandomizationStep")


def __getattr__(name):
    if name in _MOVED:
        warnings.warn(f"gnl_onnx.metrics.{name} moved to gnl_onnx.check.{name}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("gnl_onnx.check.randomization"), name)
    raise AttributeError(f"module 'gnl_onnx.metrics' has no attribute {name!r}")
