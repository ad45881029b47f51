"""ROAD: RemOve And Debias (Rong, Leemann et al., ICML 2022), the faithfulness metric whose removed
pixels are imputed from their neighbours instead of replaced by a constant, so that the shape of
the removed region leaks less into the model's output.

Noisy linear imputation. Every removed pixel becomes the weighted mean of its 8 neighbours, weight
1/6 for the 4 direct and 1/12 for the 4 diagonal ones, renormalized over the neighbours inside the
image (a corner pixel has 3, an edge pixel 5). Removed neighbours are unknowns too, so all removed
pixels of a channel are solved jointly: one sparse linear system per image and mask, with one
right-hand side per channel. Then Gaussian noise is added to the imputed pixels only.

Decisions where the sources leave room (tleemann/road_evaluation's imputer works on [0, 1] images
before the normalization; noise 0.01 there is absolute in that range):
- The imputation runs in the model's input space. It is equivariant to each channel's affine
  normalization (weights summing to 1), so this equals imputing the [0, 1] image and normalizing.
- The noise is `noise` times `span`, per channel: span is the width of the pixel range [0, 255] in
  the model's input space (value_range / std; see span_of). With a preprocessing, noise 0.01 is
  then exactly road_evaluation's 0.01 on [0, 1] images; without one (the API on bare arrays), span
  defaults to 1.0, i.e. absolute noise on inputs assumed in [0, 1].
- The noise is seeded by (seed, the image's key) alone: one standard normal field per image, of
  the image's shape, used at every fraction, in both orders and for every method (common random
  numbers: methods differ by their rankings only). Results do not depend on batching. The stream
  differs from the random floor's (seeded by (seed, key)), which must not rank by the noise.
- Fractions are of the H*W pixels removed, rounded to the nearest pixel count, for both orders:
  MoRF removes the most relevant fraction, LeRF the least relevant fraction (the ROAD paper plots
  both against the fraction removed; road_evaluation's code parametrizes LeRF by the fraction kept).
  Default 0.1, 0.2, ..., 0.9 as in the paper, pytorch-grad-cam and road_evaluation's benchmark.
  A fraction that removes every pixel leaves nothing to impute from and is refused.
- The curve is the target's softmax probability at each fraction (as deletion/insertion here;
  road_evaluation also reports accuracy). Its AUC is the trapezoid area over the fractions divided
  by their span (the curve's mean height; with one fraction, that value).
  MoRF AUC: lower is better. LeRF AUC: higher is better. Their difference LeRF - MoRF: higher is
  better (pytorch-grad-cam's ROADCombined reports half of it).
- Pixels are ranked as deletion ranks them (metrics.reduce_to_pixels + metrics.ranking: a stable
  sort, ties in row-major order) instead of road_evaluation's random 1e-4 jitter.

Why scipy: the system is an M-matrix with up to H*W unknowns (45,000 at 90 % of 224 x 224); a
sparse LU (SuperLU through scipy.sparse.linalg.splu) solves it exactly, once for all channels, in
0.01-0.5 s on one core (224 x 224, 10-90 % removed), where a numpy Jacobi or CG iteration needs
hundreds of sweeps over large removed regions (convergence slows with the region's diameter
squared; scipy's own CG took 4x longer than the LU on a smooth 90 % mask) and leaves a tolerance
to choose. scipy is a core dependency for this.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import splu

from .errors import UsageError
from .pixels import image_layout, one_image_hw, ranking, reduce_to_pixels
from .scorer import as_scorer

NOISE = 0.01
FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
ORDERS = ("morf", "lerf")  # most relevant first, least relevant first
# (row offset, column offset, weight): 1/6 for the direct neighbours, 1/12 for the diagonal ones
NEIGHBOURS = tuple((dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
_STREAM = 0x524F4144  # "ROAD": keeps the noise's seed sequence apart from the random floor's


def _layout_axes(shape, layout: str | None) -> tuple[str, int]:
    """(layout, channel axis) of one image [1, C, H, W] or [1, H, W, C]."""
    layout = image_layout(shape, layout)
    one_image_hw(shape, layout)  # checks [1, ...] and 4-D
    return layout, (1 if layout == "NCHW" else 3)


def span_of(prep) -> np.ndarray:
    """The width of the pixel range [0, 255] in the model's input space, per channel, shaped like
    prep.black() to broadcast against a [1, ...] image: value_range / std."""
    return (np.float32(prep.value_range) / np.asarray(prep.std, np.float32)).reshape(prep.black().shape)


def noise_field(shape, seed: int = 0, key: int = 0) -> np.ndarray:
    """The standard normal field of one image: seeded by (seed, key) only, see the module notes."""
    return np.random.default_rng([int(seed), int(key), _STREAM]).standard_normal(tuple(shape)).astype(np.float32)


def imputation_system(removed):
    """(A, neighbours, weights) of the linear imputation of the removed pixels of an [H, W] mask.

    Unknowns are the removed pixels in row-major order. Row i says: (sum of the weights of pixel
    i's in-image neighbours) * x_i - sum over its removed neighbours j of w_ij * x_j = sum over its
    kept neighbours k of w_ik * v_k. A is that left-hand side (scipy CSC, symmetric); `neighbours`
    [n, 8] holds each unknown's kept neighbours as flat pixel indices (0 where none) and `weights`
    [n, 8] their weights (0 where none), so the right-hand side is sum(weights * image[neighbours])."""
    removed = np.asarray(removed, bool)
    if removed.ndim != 2:
        raise UsageError(f"the mask of removed pixels must be [H, W], got shape {removed.shape}")
    h, w = removed.shape
    flat = removed.ravel()
    pixels = np.flatnonzero(flat)
    n = pixels.size
    if n == h * w:
        raise UsageError("every pixel is removed: linear imputation has nothing to impute from")
    unknown = np.full(h * w, -1, np.int64)
    unknown[pixels] = np.arange(n)
    rows, cols = np.divmod(pixels, w)
    diagonal = np.zeros(n)
    a_rows, a_cols, a_values = [], [], []
    neighbours = np.zeros((n, len(NEIGHBOURS)), np.int64)
    weights = np.zeros((n, len(NEIGHBOURS)))
    for k, (dy, dx, weight) in enumerate(NEIGHBOURS):
        r, c = rows + dy, cols + dx
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        diagonal[inside] += weight
        target = np.where(inside, r * w + c, 0)
        is_unknown = inside & flat[target]
        a_rows.append(np.flatnonzero(is_unknown))
        a_cols.append(unknown[target[is_unknown]])
        a_values.append(np.full(a_rows[-1].size, -weight))
        kept = inside & ~flat[target]
        neighbours[kept, k] = target[kept]
        weights[kept, k] = weight
    a_rows.append(np.arange(n))
    a_cols.append(np.arange(n))
    a_values.append(diagonal)
    a = sparse.csc_matrix((np.concatenate(a_values), (np.concatenate(a_rows), np.concatenate(a_cols))),
                          shape=(n, n))
    return a, neighbours, weights


def impute(image, removed, noise: float = NOISE, span=1.0, field=None, seed: int = 0, key: int = 0,
           layout: str | None = None) -> np.ndarray:
    """One image [1, C, H, W] or [1, H, W, C] (the model's input space) with the pixels of the
    [H, W] boolean mask `removed` imputed linearly, in every channel, plus Gaussian noise of standard
    deviation noise * span on the imputed pixels (span: a number or per-channel values shaped to
    broadcast against the image; see span_of). field: the standard normal field to scale (default:
    noise_field(image.shape, seed, key)); noise 0: the exact linear imputation. float32 out; the
    solve runs in float64."""
    image = np.asarray(image, np.float32)
    layout, channel_axis = _layout_axes(image.shape, layout)
    chw = image[0] if layout == "NCHW" else np.moveaxis(image[0], -1, 0)  # [C, H, W]
    removed = np.asarray(removed, bool)
    if removed.shape != chw.shape[1:]:
        raise UsageError(f"the mask {removed.shape} does not match the image's pixels {chw.shape[1:]}")
    out = chw.astype(np.float64)  # a copy
    if removed.any():
        a, neighbours, weights = imputation_system(removed)
        values = out.reshape(len(out), -1)
        rhs = np.einsum("nk,cnk->nc", weights, values[:, neighbours])
        # one factorization for every channel; A is symmetric: a minimum-degree ordering of A + A^T
        # with symmetric pivoting factorizes it 1.5-2x faster than the default COLAMD (measured)
        solution = splu(a, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}).solve(rhs)
        values[:, removed.ravel()] = solution.T
        if noise:
            if field is None:
                field = noise_field(image.shape, seed, key)
            field = np.asarray(field, np.float64)
            if field.shape != image.shape:
                raise UsageError(f"the noise field {field.shape} does not match the image {image.shape}")
            scale = np.broadcast_to(np.asarray(span, np.float64) * float(noise), image.shape)
            scaled = (field * scale)[0]
            if layout == "NHWC":
                scaled = np.moveaxis(scaled, -1, 0)
            out[:, removed] += scaled[:, removed]
    out = out.astype(np.float32)
    return (out if layout == "NCHW" else np.moveaxis(out, 0, -1))[None]


def removal_masks(order, shape, fractions=FRACTIONS, which: str = "morf") -> np.ndarray:
    """[F, H, W] booleans: the pixels removed at each fraction. order: flat pixel indices, most
    relevant first (metrics.ranking). MoRF removes the first round(f * H * W) of the order, LeRF the
    last round(f * H * W)."""
    if which not in ORDERS:
        raise UsageError(f"order must be 'morf' or 'lerf', got {which!r}")
    h, w = shape
    order = np.asarray(order).ravel()
    if order.size != h * w or not np.array_equal(np.sort(order), np.arange(h * w)):
        raise UsageError(f"order must be a permutation of the {h * w} pixel indices (see ranking)")
    position = np.empty(h * w, np.int64)
    position[order] = np.arange(h * w)
    if which == "lerf":
        position = h * w - 1 - position  # the least relevant pixel first
    counts = np.array([round(f * h * w) for f in check_fractions(fractions)])
    return (position[None, :] < counts[:, None]).reshape(len(counts), h, w)


def check_fractions(fractions) -> tuple[float, ...]:
    """The fractions as floats, each in [0, 1), increasing: a curve over them."""
    if isinstance(fractions, str):
        try:
            fractions = [float(f) for f in fractions.split(",") if f.strip()]
        except ValueError:
            raise UsageError(f"ROAD fractions must be numbers like 0.1,0.2,...,0.9, got {fractions!r}") from None
    values = tuple(float(f) for f in np.asarray(fractions, np.float64).ravel())
    if not values or any(not (0 <= f < 1) for f in values) or any(b <= a for a, b in zip(values, values[1:])):
        raise UsageError(f"ROAD fractions must be increasing numbers in [0, 1), e.g. 0.1,0.2,...,0.9; got "
                         f"{list(values)}")
    return values


def road_curve(scorer, image, order, fractions=FRACTIONS, which: str = "morf", noise: float = NOISE, span=1.0,
               seed: int = 0, key: int = 0, target: int | None = None, batch_size: int = 16,
               layout: str | None = None) -> np.ndarray:
    """The target's softmax probability at each fraction, the pixels of order (most relevant first)
    removed most- (which="morf") or least-relevant first ("lerf") and imputed by impute(). scorer: a
    metrics.Scorer, a path or a ModelProto. target: default the image's top-1."""
    scorer = as_scorer(scorer)
    image = np.asarray(image, np.float32)
    layout, _ = _layout_axes(image.shape, layout)
    h, w, _ = one_image_hw(image.shape, layout)
    masks = removal_masks(order, (h, w), fractions, which)
    if target is None:
        target = int(np.argmax(scorer.probabilities(image)[0]))
    field = noise_field(image.shape, seed, key) if noise else None
    imputed = np.concatenate([impute(image, m, noise, span, field, layout=layout) for m in masks])
    return scorer(imputed, target, batch_size)


def auc(curve, fractions=FRACTIONS) -> float:
    """Trapezoid area under the curve over the fractions, divided by their span: the mean height
    (the value itself for one fraction)."""
    a = np.asarray(curve, np.float64).ravel()
    x = np.asarray(fractions, np.float64).ravel()
    if a.size != x.size or a.size < 1:
        raise UsageError(f"a ROAD curve needs one value per fraction ({x.size}), got {a.size}")
    if a.size == 1:
        return float(a[0])
    return float(np.sum((a[1:] + a[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def road_score(model, image, attribution, fractions=FRACTIONS, noise: float = NOISE, span=1.0, how: str = "sum",
               seed: int = 0, key: int = 0, target: int | None = None, batch_size: int = 16,
               layout: str | None = None) -> dict:
    """ROAD of one image's attribution: {"morf": curve, "lerf": curve, "morf_auc", "lerf_auc",
    "difference": lerf_auc - morf_auc}. MoRF lower, LeRF and the difference higher is better."""
    scorer = as_scorer(model)
    image = np.asarray(image, np.float32)
    layout = image_layout(image.shape, layout)
    order = ranking(reduce_to_pixels(attribution, layout, how))
    fractions = check_fractions(fractions)
    curves = {which: road_curve(scorer, image, order, fractions, which, noise, span, seed, key, target, batch_size,
                                layout) for which in ORDERS}
    return summary(curves["morf"], curves["lerf"], fractions)


def summary(morf, lerf, fractions=FRACTIONS) -> dict:
    """The curves with their AUCs and the difference LeRF - MoRF."""
    m, le = auc(morf, fractions), auc(lerf, fractions)
    return {"morf": np.asarray(morf), "lerf": np.asarray(lerf), "morf_auc": m, "lerf_auc": le,
            "difference": le - m if math.isfinite(le - m) else float("nan")}


__all__ = ["FRACTIONS", "NEIGHBOURS", "NOISE", "auc", "check_fractions", "impute", "imputation_system",
           "noise_field", "removal_masks", "road_curve", "road_score", "span_of", "summary"]
