"""Per-image scores of the evaluation measures Quantus 0.6.0 defines (faithfulness, robustness,
randomisation, complexity, localisation), computed in numpy with every perturbed copy of an image sent through
ONNX Runtime in batches. Each function follows the Quantus class named in its docstring: the same
perturbations, baselines, defaults (nr_runs, subset_size, features_in_step, bounds) and
preprocessing (`abs`, then `normalise`: division by the largest absolute attribution). One
difference of scope: Quantus normalises by the largest value of the whole batch it is given,
here of each image, so an image's score does not depend on which other images share its batch
(Quantus gives the same with normalise_func_kwargs={"normalise_axes": (1, 2, 3)}).

`forward(images) -> [N, classes]` is the model's output (logits, or probabilities where the
Quantus class asks softmax=True; see SOFTMAX); `explain(images, targets) -> attributions` is the
method being measured, for the robustness measures; `explain_random` the same method on a copy of
the model with every layer randomised (randomize.reset_model), for the randomisation measures.
Images are [N, C, H, W] unless a function takes a `layout`. Random draws come from a
numpy RandomState, or are given (`indices`, `fills`, `noise`), which is how the tests feed the
same perturbations to Quantus and here."""
from __future__ import annotations

import math

import numpy as np

from .errors import UsageError

# Quantus's default for `softmax` in each class's __call__: probabilities (True) or logits (False)
SOFTMAX = {"faithfulness_correlation": False, "pixel_flipping": True, "region_perturbation": True,
           "monotonicity_correlation": True, "max_sensitivity": False, "avg_sensitivity": False, "irof": True,
           "sufficiency": True}


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


def _perturbed_setup(images, attributions, abs_: bool, normalise: bool, rng):
    """What the measures that perturb each image start from, as Quantus does: the images, the
    prepared attributions [N, features], the images flat in float64, and the generator (Quantus's
    RandomState(0) unless given)."""
    images = np.asarray(images)
    flat = images.reshape(len(images), -1).astype(np.float64)
    return images, prepare(attributions, images.shape, abs_, normalise), flat, \
        np.random.RandomState(0) if rng is None else rng


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
    flat = images.reshape(len(images), -1)
    fill = _baseline(flat.astype(np.float64), baseline).astype(images.dtype)
    curves = []
    for i in range(len(images)):
        order = np.argsort(-a[i:i + 1], axis=1)[0]  # as Quantus sorts (same call, same ties)
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        steps = math.ceil(len(order) / features_in_step)
        out = []
        for lo in range(0, steps, batch_size):  # copy k has its first (k + 1) * features_in_step features flipped
            flipped = rank[None] < (np.arange(lo, min(steps, lo + batch_size)) + 1)[:, None] * features_in_step
            copies = np.where(flipped, fill[i], flat[i][None])  # one batch at a time: steps x features is large
            out.append(_rows(forward, copies, images.shape[1:], int(targets[i]), batch_size))
        curves.append(np.concatenate(out))
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
    images, a, flat, rng = _perturbed_setup(images, attributions, abs_, normalise, rng)
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


def superpixels(image, method: str = "slic") -> np.ndarray:
    """quantus.helpers.utils.get_superpixel_segments: the labels 0..K-1 of one [C, H, W] image's
    superpixels, scikit-image's SLIC (its defaults, start_label=0) or Felzenszwalb's method on the
    image as H x W x C float64."""
    try:
        from skimage.segmentation import felzenszwalb, slic
    except ImportError:
        raise UsageError("irof cuts images into superpixels with scikit-image: pip install scikit-image") from None
    image = np.moveaxis(np.asarray(image), 0, -1).astype(np.float64)
    if method not in ("slic", "felzenszwalb"):
        raise UsageError(f"unknown segmentation {method!r}; choose slic or felzenszwalb")
    return slic(image, start_label=0) if method == "slic" else felzenszwalb(image)


def _channels_first(images, layout: str) -> np.ndarray:
    return np.moveaxis(images, -1, 1) if layout == "NHWC" else images


def irof_curves(forward, images, attributions, targets, segmentation: str = "slic", baseline="mean",
                abs_: bool = False, normalise: bool = True, layout: str = "NCHW", segments=None,
                batch_size: int = 64) -> list[np.ndarray]:
    """quantus.IROF (Rieger and Hansen 2020): the image cut into superpixels (see superpixels), set
    to the baseline one after another, cumulatively, in the order of their mean attribution
    (largest first); the curve of the target's output (probabilities) relative to the clean
    image's, one point per superpixel. As Quantus, each step's baseline value comes from the image
    as perturbed so far ("mean": its mean; Quantus takes it over its whole batch, so this is Quantus
    with batch_size=1), and a superpixel covers every channel (Quantus 0.6.0's one-channel mask
    fails its own shape check on colour images). segments: [N, H, W] labels (else computed)."""
    images = np.asarray(images)
    first = _channels_first(images, layout)
    a = _channels_first(prepare(attributions, images.shape, abs_, normalise).reshape(images.shape), layout)
    curves = []
    for i in range(len(images)):
        labels = superpixels(first[i], segmentation) if segments is None else np.asarray(segments[i])
        count = len(np.unique(labels))
        if count < 2:
            raise UsageError("irof needs an image of at least two superpixels; this one has one")
        relevance = np.array([a[i][:, labels == s].mean() for s in range(count)])
        current, copies = first[i], []
        for s in np.argsort(-relevance):
            fill = _baseline(current.reshape(1, -1), baseline)[0]
            current = np.where((labels == s)[None], fill, current)
            copies.append(current)
        copies = np.stack(copies)
        if layout == "NHWC":  # back to the model's layout
            copies = np.moveaxis(copies, 1, -1)
        clean = _rows(forward, images[i:i + 1].reshape(1, -1), images.shape[1:], int(targets[i]), 1)[0]
        curves.append(_rows(forward, copies.reshape(count, -1).astype(images.dtype), images.shape[1:],
                            int(targets[i]), batch_size) / clean)
    return curves


def irof(forward, images, attributions, targets, **settings) -> np.ndarray:
    """quantus.IROF's score per image: the area over each curve, its length minus its trapezoid
    area (dx = 1). Higher is better."""
    return np.array([len(c) - _trapezoid(c) for c in irof_curves(forward, images, attributions, targets,
                                                                 **settings)])


def sufficiency(attributions, predicted, threshold: float = 0.6, distance: str = "seuclidean", abs_: bool = True,
                normalise: bool = True) -> np.ndarray:
    """quantus.Sufficiency (Dasgupta et al. 2022) over a set of images (Quantus: each batch it is
    given): for each image, of the other images whose maps lie within `threshold` of its own
    (scipy's cdist with `distance`, the matrix divided by its largest value, which Quantus does
    whatever `normalise` says), the share predicted as the same class (predicted: [N] classes);
    0 where no other map is that close. Higher is better."""
    from scipy.spatial.distance import cdist

    a = prepare(attributions, np.shape(attributions), abs_, normalise)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = cdist(a, a, distance)
        if not np.all(d == 0):
            d = d / np.max(np.abs(d))
    near = (d <= threshold) & ~np.eye(len(a), dtype=bool)
    predicted = np.asarray(predicted)
    same = predicted[None, :] == predicted[:, None]
    count = near.sum(axis=1)
    return np.where(count > 0, (near & same).sum(axis=1) / np.maximum(count, 1), 0.0)


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
    images, a, flat, rng = _perturbed_setup(images, attributions, abs_, normalise, rng)
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
    images, a, flat, rng = _perturbed_setup(images, attributions, abs_, normalise, rng)
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


# -- randomisation ---------------------------------------------------------------------------------


def ssim(a, b, win_size: int = 7) -> float:
    """The structural similarity of two maps as quantus.functions.similarity_func.ssim computes it:
    skimage's structural_similarity of the flattened maps with a data range of both maps' span,
    a uniform window of win_size values (reflected at the ends), sample covariances, K1 = 0.01,
    K2 = 0.03, and the mean over the values a whole window covers."""
    from scipy.ndimage import uniform_filter

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    span = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    mean_a, mean_b = uniform_filter(a, win_size), uniform_filter(b, win_size)
    unbiased = win_size / (win_size - 1)
    var_a = unbiased * (uniform_filter(a * a, win_size) - mean_a * mean_a)
    var_b = unbiased * (uniform_filter(b * b, win_size) - mean_b * mean_b)
    cov = unbiased * (uniform_filter(a * b, win_size) - mean_a * mean_b)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        s = ((2 * mean_a * mean_b + c1) * (2 * cov + c2)) / ((mean_a ** 2 + mean_b ** 2 + c1) * (var_a + var_b + c2))
    half = (win_size - 1) // 2
    return float(s[half:len(s) - half].mean())


def random_logit(explain, images, attributions, targets, num_classes: int, abs_: bool = False,
                 normalise: bool = True, rng=None, off=None) -> np.ndarray:
    """quantus.RandomLogit (Sixt et al. 2020): the structural similarity (ssim) of the map of the
    target with the method's map of a class drawn uniformly from the other num_classes - 1.
    Lower is better: a map that stays the same for another class does not explain the class.
    off: [N] the other classes (else drawn from rng as Quantus draws them: an index into the
    classes without the target)."""
    images = np.asarray(images)
    a = prepare(attributions, images.shape, abs_, normalise)
    targets = np.asarray(targets, np.int64)
    if off is None:
        rng = np.random.RandomState(0) if rng is None else rng
        drawn = rng.randint(0, num_classes - 1, len(images))
        off = drawn + (drawn >= targets)
    again = prepare(explain(images, np.asarray(off, np.int64)), images.shape, abs_, normalise)
    return np.array([ssim(a[i], again[i]) for i in range(len(images))])


def smooth_mprt(explain_random, images, attributions, targets, nr_samples: int = 50, noise_magnitude: float = 0.1,
                abs_: bool = True, normalise: bool = True, rng=None, noise=None) -> np.ndarray:
    """quantus.SmoothMPRT (Hedstrom et al. 2023) as return_last_correlation gives it: the Spearman
    rho between the image's map and the mean of the maps the method gives on the fully randomised
    model (explain_random) for nr_samples copies of the image, the last one clean and the others
    with Gaussian noise of std noise_magnitude x (the image's max - min). Lower is better: maps
    that survive the randomisation of the model do not explain it. Quantus divides the maps by
    their second moment; a rank correlation does not see a positive factor (here: the maximum).
    noise: [N, nr_samples, features] (else drawn from rng, the last row zeros)."""
    images, a, flat, rng = _perturbed_setup(images, attributions, abs_, normalise, rng)
    scores = np.empty(len(images))
    for i in range(len(images)):
        if noise is None:
            std = noise_magnitude * (flat[i].max() - flat[i].min())
            delta = np.concatenate([rng.standard_normal((nr_samples - 1, flat.shape[1])) * std,
                                    np.zeros((1, flat.shape[1]))])
        else:
            delta = np.asarray(noise[i])
        copies = (flat[i:i + 1] + delta).astype(images.dtype).reshape(len(delta), *images.shape[1:])
        maps = np.asarray(explain_random(copies, np.full(len(delta), int(targets[i]))), np.float64)
        smoothed = (maps / len(delta)).sum(axis=0, keepdims=True)
        scores[i] = spearman(a[i], prepare(smoothed, (1, *images.shape[1:]), abs_, normalise)[0])
    return scores


def discrete_entropy(values, n_bins: int = 100) -> float:
    """quantus.functions.complexity_func.discrete_entropy: the entropy of the values' histogram over
    n_bins equal bins between their minimum and maximum (in the values' own precision)."""
    counts = np.histogram(np.asarray(values).ravel(), bins=n_bins)[0].astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def efficient_mprt(explain_random, images, attributions, targets, n_bins: int = 100, abs_: bool = False,
                   normalise: bool = False) -> np.ndarray:
    """quantus.EfficientMPRT (Hedstrom et al. 2023), its default skip_layers: the relative rise of
    the map's complexity (discrete_entropy) when every layer of the model is randomised,
    (H(map on the random model) - H(map)) / H(map). Higher is better. Quantus explains the
    original model again for H(map); the given map is the same for a deterministic method."""
    images = np.asarray(images)
    again = np.asarray(explain_random(images, np.asarray(targets, np.int64)))

    def kept(maps):  # Quantus's defaults keep the maps as they are (and their float32 bins)
        maps = np.broadcast_to(maps, images.shape)
        return maps.reshape(len(images), -1) if not (abs_ or normalise) else prepare(maps, images.shape, abs_,
                                                                                     normalise)
    before, after = kept(np.asarray(attributions)), kept(again)
    scores = np.empty(len(images))
    for i in range(len(images)):
        h = discrete_entropy(before[i], n_bins)
        scores[i] = (discrete_entropy(after[i], n_bins) - h) / h if h > 0 else math.nan
    return scores


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


__all__ = ["SOFTMAX", "complexity", "discrete_entropy", "efficient_mprt", "faithfulness_correlation", "irof",
           "irof_curves", "local_lipschitz_estimate", "monotonicity_correlation", "pearson", "pixel_flipping",
           "pixel_flipping_curves", "pointing_game", "prepare", "random_logit", "region_perturbation",
           "region_perturbation_curves", "relevance_mass_accuracy", "relevance_rank_accuracy", "sensitivity",
           "smooth_mprt", "sparseness", "spearman", "ssim", "sufficiency", "superpixels"]
