"""Attribution maps as pixels: the layout of an image batch, one value per pixel (channels reduced),
pixels ranked by importance, and rank correlation of two maps. Plain numpy; measures, checks and
reports build on it."""
from __future__ import annotations

import math

import numpy as np

from .baselines import spatial_axes
from .errors import UsageError


def reduce_channels(attribution: np.ndarray, layout: str = "NCHW", how: str = "sum") -> np.ndarray:
    """One value per pixel: [1,C,H,W] / [C,H,W] (NCHW) or [1,H,W,C] / [H,W,C] (NHWC) -> [H,W].
    how: "sum" (signed, METHOD.md's default), "abs_sum" or "max_abs"."""
    a = np.asarray(attribution, dtype=np.float64)
    if layout not in ("NCHW", "NHWC"):
        raise UsageError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise UsageError(f"reduce_channels takes one image, got a batch of {a.shape[0]}")
        a = a[0]
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise UsageError(f"expected a 2-, 3- or 4-D attribution, got shape {np.shape(attribution)}")
    axis = 0 if layout == "NCHW" else 2
    if how == "sum":
        return a.sum(axis=axis)
    if how == "abs_sum":
        return np.abs(a).sum(axis=axis)
    if how == "max_abs":
        return np.abs(a).max(axis=axis)
    raise UsageError(f"how must be 'sum', 'abs_sum' or 'max_abs', got {how!r}")


def image_layout(shape, layout: str | None) -> str:
    if layout is not None:
        if layout not in ("NCHW", "NHWC"):
            raise UsageError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
        return layout
    return "NHWC" if spatial_axes(shape) == (1, 2) and len(shape) == 4 else "NCHW"


def height_width(shape, layout: str | None) -> tuple:
    """(H, W) of a batch of images [N, C, H, W] or [N, H, W, C] (layout None: guessed)."""
    return tuple(shape[2:4]) if image_layout(shape, layout) == "NCHW" else tuple(shape[1:3])


def one_image_hw(shape, layout: str) -> tuple[int, int, tuple[int, int]]:
    if len(shape) != 4 or shape[0] != 1:
        raise UsageError(f"expected one image shaped [1, C, H, W] or [1, H, W, C], got {tuple(shape)}")
    axes = (2, 3) if layout == "NCHW" else (1, 2)
    return shape[axes[0]], shape[axes[1]], axes


def reduce_to_pixels(attribution, layout: str | None = None, how: str = "sum") -> np.ndarray:
    """One value per pixel, [H, W] float64: the sum over channels ("sum", signed, METHOD.md's
    default) or the sum of absolute values ("abs_sum"). layout None: guessed from the shape."""
    if how not in ("sum", "abs_sum"):
        raise UsageError(f"how must be 'sum' or 'abs_sum', got {how!r}")
    a = np.asarray(attribution)
    return reduce_channels(a, image_layout(a.shape if a.ndim == 4 else (1,) + a.shape, layout), how)


def ranking(pixel_scores) -> np.ndarray:
    """Flat pixel indices (row-major into [H, W]) from the most to the least important. Ties keep
    row-major order (a stable sort), so the same scores always give the same order."""
    s = np.asarray(pixel_scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(s)):
        raise UsageError("the pixel scores contain NaN or infinite values")
    return np.argsort(-s, kind="stable")


def rankdata(values) -> np.ndarray:
    """Ranks 1..n of the flattened values, ties given the average of the ranks they span."""
    x = np.asarray(values, np.float64).ravel()
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    bounds = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1], True])  # tie-group edges
    average = (bounds[:-1] + bounds[1:] + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat(average, np.diff(bounds))
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's correlation of the tie-averaged ranks. NaN when
    either input is constant (the correlation is undefined)."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.size != rb.size:
        raise UsageError(f"cannot correlate {ra.size} values with {rb.size}")
    if ra.size < 2:
        return float("nan")
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denominator) if denominator > 0 else float("nan")
