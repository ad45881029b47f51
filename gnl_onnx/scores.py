"""Per-image scores of the evaluation measures Quantus 0.6.0 defines (faithfulness, robustness,
complexity, localisation), computed in numpy with every perturbed copy of an image sent through
ONNX Runtime in batches. Each function follows the Quantus class named in its docstring: the same
perturbations, baselines, defaults (nr_runs, subset_size, features_in_step, bounds) and
preprocessing (`abs`, then `normalise`: division by the largest absolute attribution). One
difference of scope: Quantus normalises by the largest value of the whole batch it is given,
here of each image, so an image's score does not depend on which other images share its batch
(Quantus gives the same with normalise_func_kwargs={"normalise_axes": (1, 2, 3)}).

`forward(images) -> [N, classes]` is the model's output (logits, or probabilities where the
Quantus class asks softmax=True; see SOFTMAX); `explain(images, targets) -> attributions` is the
method being measured, for the robustness measures. Random draws come from a
numpy RandomState, or are given (`indices`, `fills`, `noise`), which is how the tests feed the
same perturbations to Quantus and here."""
from __future__ import annotations

import math

import numpy as np

# Quantus's default for `softmax` in each class's __call__: probabilities (True) or logits (False)
SOFTMAX = {"faithfulness_correlation": False, "pixel_flipping": True, "region_perturbation": True,
           "monotonicity_correlation": True, "max_sensitivity": False, "avg_sensitivity": False}


def prepare(attributions, images_shape, abs_: bool, normalise: bool) -> np.ndarray:
    """Attributions as Quantus's general_preprocess leaves them, per image: broadcast to the input's
    shape, divided by their largest absolute value when normalise (all-zero maps left alone),
    then made absolute when abs_; flattened to [N, features], float64."""
    a = np.broadcast_to(np.asarray(attributions, np.float64), images_shape).reshape(images_shape[0], -1).copy()
    if normalise:
        largest = np.abs(a).max(axis=1, keepdims=True)
        a = np.where(largest > 0, a / np.where(largest > 0, largest, 1.0), a)
    return np.abs(a) if abs_ else a


def _baseline(flat: np.ndarray, name) -> np.ndarray:
    """Quantus's baseline value per image ([N]): "black" the image's minimum, "white" its maximum,
    "mean" its mean, or a number."""
    if isinstance(name, str):
        kinds = {"black": flat.min, "white": flat.max, "mean": flat.mean}
        if name not in kinds:
            raise ValueError(f"unknown baseline {name!r}; choose black, white, mean or a number")
        return kinds[name](axis=1)
    return np.full(len(flat), float(name))


def _rows(forward, batch: np.ndarray, shape, target: int, batch_size: int) -> np.ndarray:
    """The target's output for each perturbed copy ([K, features] -> [K]), batch_size at a time."""
    out = [np.asarray(forward(batch[lo:lo + batch_size].reshape(-1, *shape)), np.float64)[:, target]
           for lo in range(0, len(batch), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r of two vectors (scipy.stats.pearsonr's value; NaN when one is constant)."""
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks of ties (scipy.stats.rankdata's default)."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    values, inverse = np.unique(v, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / np.bincount(inverse))[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (scipy.stats.spearmanr's value): Pearson's r of the average ranks."""
    return pearson(_ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64)))


# -- faithfulness ------------------------------------------------------------------------------------


def faithfulness_correlation(forward, images, attributions, targets, nr_runs: int = 100, subset_size: int = 224,
                             baseline="black", abs_: bool = False, normalise: bool = True, rng=None, indices=None,
                             batch_size: int = 64) -> np.ndarray:
    """quantus.FaithfulnessCorrelation (Bhatt et al. 2020): Pearson's r, over nr_runs random subsets
    of subset_size input features, between the attributions' sum over the subset and the drop of
    the target's output (logits) when the subset is set to the baseline. Higher is better.
    indices: [N, nr_runs, subset_size] subsets (else drawn from rng without replacement)."""
    images = np.asarray(images)
    a = prepare(attributions, images.shape, abs_, normalise)
    flat = images.reshape(len(images), -1).astype(np.float64)
    fill = _baseline(flat, baseline)
    rng = np.random.RandomState(0) if rng is None else rng
    scores = np.empty(len(images))
    for i in range(len(images)):
        subsets = (np.stack([rng.choice(flat.shape[1], subset_size, replace=False) for _ in range(nr_runs)])
                   if indices is None else np.asarray(indices[i]))
        copies = np.repeat(flat[i:i + 1], len(subsets), axis=0)
        np.put_along_axis(copies, subsets, fill[i], axis=1)
        clean = _rows(forward, flat[i:i + 1], images.shape[1:], int(targets[i]), 1)[0]
        drops = clean - _rows(forward, copies.astype(images.dtype), images.shape[1:], int(targets[i]), batch_size)
        scores[i] = pearson(np.take_along_axis(np.repeat(a[i:i + 1], len(subsets), 0), subsets, 1).sum(1), drops)
    return scores


def pixel_flipping_curves(forward, images, attributions, targets, features_in_step: int = 1, baseline="black",
                          abs_: bool = False, normalise: bool = True, batch_size: int = 64) -> list[np.ndarray]:
    """quantus.PixelFlipping (Bach et al. 2015): the target's output (probabilities) as the input
    features are set to the baseline features_in_step at a time, most relevant first; one curve of
    ceil(features / features_in_step) points per image. Lower area is better."""
    images = np.asarray(images)
    a = prepare(attributions, images.shape, abs_, normalise)
    flat = images.reshape(len(images), -1).astype(np.float64)
    fill = _baseline(flat, baseline)
    curves = []
    for i in range(len(images)):
        order = np.argsort(-a[i:i + 1], axis=1)[0]  # as Quantus sorts (same call, same ties)
        steps = math.ceil(len(order) / features_in_step)
        copies = np.repeat(flat[i:i + 1], steps, axis=0)
        for k in range(steps):  # copy k has the first (k + 1) * features_in_step features flipped
            copies[k, order[:(k + 1) * features_in_step]] = fill[i]
        curves.append(_rows(forward, copies.astype(images.dtype), images.shape[1:], int(targets[i]), batch_size))
    return curves


def pixel_flipping(forward, images, attributions, targets, **settings) -> np.ndarray:
    """quantus.PixelFlipping with return_auc_per_sample=True: the trapezoid area (dx=1) of each curve."""
    return np.array([_trapezoid(c) for c in pixel_flipping_curves(forward, images, attributions, targets,
                                                                   **settings)])


def _trapezoid(curve: np.ndarray, dx: float = 1.0) -> float:
    curve = np.asarray(curve, np.float64)
    return float(dx * (curve[1:] + curve[:-1]).sum() / 2) if len(curve) > 1 else 0.0


def region_perturbation_curves(forward, images, attributions, targets, patch_size: int = 8,
                               regions_evaluation: int = 100, order: str = "morf", baseline="black",
                               abs_: bool = False, normalise: bool = True, batch_size: int = 64) -> list[np.ndarray]:
    """quantus.RegionPerturbation (Samek et al. 2015): the image cut into a grid of patch_size
    squares (all channels), the squares set to the baseline one after another, cumulatively, in
    the order of their summed attribution (order "morf": largest first; "lerf": smallest first),
    and the curve of the drop of the target's output (probabilities) y(x) - y(x'), one point per
    square up to regions_evaluation. AOPC is the curve's mean. Higher (morf) is better. As Quantus,
    an image whose sides are not multiples of patch_size is padded around (its edge values; the
    attributions with zeros) to whole squares, and cropped back for the model."""
    images = np.asarray(images)
    n, channels, height, width = images.shape
    pad_h, pad_w = _padding(height, patch_size), _padding(width, patch_size)
    padding = ((0, 0), (0, 0), pad_h, pad_w)
    a = np.pad(prepare(attributions, images.shape, abs_, normalise).reshape(images.shape), padding)
    x = np.pad(images.astype(np.float64), padding, mode="edge")
    tall, wide = x.shape[2:]
    flat = x.reshape(n, -1)
    fill = _baseline(flat, baseline)
    grid = np.arange(channels * tall * wide).reshape(channels, tall // patch_size, patch_size,
                                                     wide // patch_size, patch_size)
    blocks = grid.transpose(1, 3, 0, 2, 4).reshape((tall // patch_size) * (wide // patch_size), -1)
    curves = []
    for i in range(n):
        sums = a[i].reshape(-1)[blocks].sum(axis=1)
        ranking = np.argsort(-sums) if order == "morf" else np.argsort(sums)
        chosen = ranking[:regions_evaluation]
        copies = np.repeat(flat[i:i + 1], len(chosen), axis=0)
        for k in range(len(chosen)):  # copy k has the first k + 1 squares set to the baseline
            copies[k, blocks[chosen[:k + 1]].reshape(-1)] = fill[i]
        cropped = copies.reshape(len(chosen), channels, tall, wide)[:, :, pad_h[0]:pad_h[0] + height,
                                                                    pad_w[0]:pad_w[0] + width]
        clean = _rows(forward, images[i:i + 1].reshape(1, -1), images.shape[1:], int(targets[i]), 1)[0]
        curves.append(clean - _rows(forward, cropped.reshape(len(chosen), -1).astype(images.dtype), images.shape[1:],
                                    int(targets[i]), batch_size))
    return curves


def _padding(size: int, patch: int) -> tuple[int, int]:
    """Quantus's get_padding_size: what makes `size` a multiple of `patch`, split floor/ceil."""
    total = (patch - size % patch) % patch
    return total // 2, total - total // 2


def region_perturbation(forward, images, attributions, targets, **settings) -> np.ndarray:
    """AOPC of quantus.RegionPerturbation's curves: each curve's mean."""
    return np.array([float(np.mean(c)) for c in region_perturbation_curves(forward, images, attributions, targets,
                                                                          **settings)])


def monotonicity_correlation(forward, images, attributions, targets, nr_samples: int = 100,
                             features_in_step: int = 1, eps: float = 1e-5, baseline="uniform", abs_: bool = True,
                             normalise: bool = True, rng=None, fills=None, batch_size: int = 64) -> np.ndarray:
    """quantus.MonotonicityCorrelation (Nguyen and Martinez 2020): Spearman's rho between the
    attributions summed over each group of features_in_step features (least relevant first) and
    the mean squared change of the target's output (probabilities) over nr_samples fillings of
    that group alone, scaled by 1/y(x)^2. The "uniform" baseline fills a group with one value
    drawn in [0, 1); fills: [N, groups, nr_samples] (else from rng). Higher is better."""
    images = np.asarray(images)
    a = prepare(attributions, images.shape, abs_, normalise)
    flat = images.reshape(len(images), -1).astype(np.float64)
    rng = np.random.RandomState(0) if rng is None else rng
    scores = np.empty(len(images))
    for i in range(len(images)):
        order = np.argsort(a[i:i + 1], axis=1)[0]
        groups = [order[k:k + features_in_step] for k in range(0, len(order), features_in_step)]
        values = (rng.uniform(0.0, 1.0, size=(len(groups), nr_samples)) if fills is None else np.asarray(fills[i]))
        if not isinstance(baseline, str) or baseline != "uniform":
            values = np.broadcast_to(_baseline(flat[i:i + 1], baseline)[0], (len(groups), nr_samples))
        copies = np.repeat(flat[i:i + 1], len(groups) * nr_samples, axis=0).reshape(len(groups), nr_samples, -1)
        for g, group in enumerate(groups):
            copies[g][:, group] = values[g][:, None]
        clean = _rows(forward, flat[i:i + 1], images.shape[1:], int(targets[i]), 1)[0]
        outputs = _rows(forward, copies.reshape(-1, flat.shape[1]).astype(images.dtype), images.shape[1:],
                        int(targets[i]), batch_size).reshape(len(groups), nr_samples)
        inverse = 1.0 / abs(clean) if abs(clean) >= eps else 1.0
        variances = ((outputs - clean) ** 2).mean(axis=1) * inverse ** 2
        scores[i] = spearman(np.array([a[i, g].sum() for g in groups]), variances)
    return scores


# -- robustness --------------------------------------------------------------------------------------


def sensitivity(explain, images, attributions, targets, nr_samples: int = 200, lower_bound: float = 0.2,
                upper_bound: float | None = None, abs_: bool = False, normalise: bool = False, rng=None,
                noise=None, reduce: str = "max") -> np.ndarray:
    """quantus.MaxSensitivity (reduce "max") and quantus.AvgSensitivity ("mean") (Yeh et al. 2019):
    over nr_samples copies of the input with uniform noise in [-lower_bound, lower_bound] (or
    [lower_bound, upper_bound]) on every feature, the Frobenius norm of the change of the
    explanation relative to the explanation's norm, its maximum or mean. Lower is better. They do
    not flag a random explanation: its relative change is large, but so is that of a good method
    on a model with sharp gradients, and a constant map scores a perfect 0 (Hedstrom et al. 2023).
    noise: [N, nr_samples, features] (else drawn from rng)."""
    images = np.asarray(images)
    a = prepare(attributions, images.shape, abs_, normalise)
    flat = images.reshape(len(images), -1).astype(np.float64)
    rng = np.random.RandomState(0) if rng is None else rng
    low, high = (-lower_bound, lower_bound) if upper_bound is None else (lower_bound, upper_bound)
    scores = np.empty(len(images))
    for i in range(len(images)):
        delta = rng.uniform(low, high, size=(nr_samples, flat.shape[1])) if noise is None else np.asarray(noise[i])
        copies = (flat[i:i + 1] + delta).astype(images.dtype).reshape(len(delta), *images.shape[1:])
        again = prepare(explain(copies, np.full(len(delta), int(targets[i]))), copies.shape, abs_, normalise)
        ratios = np.linalg.norm(a[i:i + 1] - again, axis=1) / np.linalg.norm(a[i])
        scores[i] = np.nanmax(ratios) if reduce == "max" else np.nanmean(ratios)
    return scores


def local_lipschitz_estimate(explain, images, attributions, targets, nr_samples: int = 200, perturb_std: float = 0.1,
                             perturb_mean: float = 0.0, abs_: bool = False, normalise: bool = True, rng=None,
                             noise=None) -> np.ndarray:
    """quantus.LocalLipschitzEstimate (Alvarez-Melis and Jaakkola 2018): over nr_samples copies of the
    input with Gaussian noise (perturb_mean, perturb_std) on every feature, the largest ratio of the
    Euclidean distance of the explanations to that of the inputs (+ 1e-10). Lower is better.
    noise: [N, nr_samples, features] (else drawn from rng)."""
    images = np.asarray(images)
    a = prepare(attributions, images.shape, abs_, normalise)
    flat = images.reshape(len(images), -1).astype(np.float64)
    rng = np.random.RandomState(0) if rng is None else rng
    estimates = np.empty(len(images))
    for i in range(len(images)):
        delta = (rng.normal(perturb_mean, perturb_std, size=(nr_samples, flat.shape[1])) if noise is None
                 else np.asarray(noise[i]))
        moved = flat[i:i + 1] + delta
        copies = moved.astype(images.dtype).reshape(len(delta), *images.shape[1:])
        again = prepare(explain(copies, np.full(len(delta), int(targets[i]))), copies.shape, abs_, normalise)
        ratios = np.linalg.norm(a[i:i + 1] - again, axis=1) / (np.linalg.norm(moved - flat[i:i + 1], axis=1) + 1e-10)
        estimates[i] = np.nanmax(ratios)
    return estimates


# -- complexity --------------------------------------------------------------------------------------


def sparseness(attributions, images_shape=None, abs_: bool = True, normalise: bool = True) -> np.ndarray:
    """quantus.Sparseness (Chalasani et al. 2020): the Gini index of the absolute attributions (1e-7
    added to each). Higher is sparser."""
    shape = np.shape(attributions) if images_shape is None else images_shape
    a = np.sort(prepare(attributions, shape, abs_, normalise) + 1e-7, axis=1)
    n = a.shape[1]
    return ((2 * np.arange(1, n + 1) - n - 1) * a).sum(axis=1) / (n * a.sum(axis=1))


def complexity(attributions, images_shape=None, abs_: bool = True, normalise: bool = True) -> np.ndarray:
    """quantus.Complexity (Bhatt et al. 2020): the entropy of the attributions' shares of their
    absolute sum. Lower is simpler."""
    shape = np.shape(attributions) if images_shape is None else images_shape
    a = prepare(attributions, shape, abs_, normalise)
    a = a / np.abs(a).sum(axis=1, keepdims=True)
    return -(a * np.log(a + 1e-12)).sum(axis=1)


# -- localisation (a region known per image: masks of the input's shape or broadcastable to it) -----


def _masks(masks, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(masks).astype(bool), shape).reshape(shape[0], -1)


def pointing_game(attributions, masks, images_shape=None, weighted: bool = False, abs_: bool = False,
                  normalise: bool = True) -> np.ndarray:
    """quantus.PointingGame (Zhang et al. 2018): 1 when a feature of largest attribution lies in the
    mask (weighted: 1 - the mask's share of the input), else 0; NaN for an empty mask."""
    shape = np.shape(attributions) if images_shape is None else images_shape
    a, s = prepare(attributions, shape, abs_, normalise), _masks(masks, shape)
    hit = np.any(s & (a == a.max(axis=1, keepdims=True)), axis=1).astype(np.float64)
    if weighted:
        hit[hit > 0] = 1 - s[hit > 0].sum(axis=1) / s.shape[1]
    hit[s.sum(axis=1) == 0] = np.nan
    return hit


def relevance_mass_accuracy(attributions, masks, images_shape=None, abs_: bool = False,
                            normalise: bool = True) -> np.ndarray:
    """quantus.RelevanceMassAccuracy (Arras et al. 2021): the share of the attributions' sum inside
    the mask; NaN for an empty mask."""
    shape = np.shape(attributions) if images_shape is None else images_shape
    a, s = prepare(attributions, shape, abs_, normalise), _masks(masks, shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (a * s).sum(axis=1) / a.sum(axis=1)
    share[s.sum(axis=1) == 0] = np.nan
    return share


def relevance_rank_accuracy(attributions, masks, images_shape=None, abs_: bool = False,
                            normalise: bool = True) -> np.ndarray:
    """quantus.RelevanceRankAccuracy (Arras et al. 2021): of the K features of largest attribution,
    K the mask's size, the share inside the mask; NaN for an empty mask."""
    shape = np.shape(attributions) if images_shape is None else images_shape
    a, s = prepare(attributions, shape, abs_, normalise), _masks(masks, shape)
    top = np.argsort(-a, axis=-1)
    sizes = s.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.array([s[i, top[i, :k]].sum() / k for i, k in enumerate(sizes)], np.float64)
    share[sizes == 0] = np.nan
    return share


__all__ = ["SOFTMAX", "complexity", "faithfulness_correlation", "local_lipschitz_estimate", "monotonicity_correlation",
           "pearson",
           "pixel_flipping", "pixel_flipping_curves", "pointing_game", "prepare", "region_perturbation",
           "region_perturbation_curves",
           "relevance_mass_accuracy", "relevance_rank_accuracy", "sensitivity", "sparseness", "spearman"]
