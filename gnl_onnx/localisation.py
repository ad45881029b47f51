"""Localisation of a map against a region (a segment's mask, a box, a text map's pixels): the share
of the positive attribution that falls inside it (relevance mass, Arras et al.'s relevance mass
accuracy on the positive part) and whether the map's maximum falls inside it (the pointing game,
Zhang et al.). Maps and regions are per pixel, [H, W] or a batch [N, H, W]; a region given at
another size (a model's output map) is resized to the map's by nearest pixel."""
from __future__ import annotations

import numpy as np

from .errors import UsageError


def fitted_region(region, shape) -> np.ndarray:
    """The region as booleans at `shape` ([..., H, W]): nearest pixel, as targets.MapRegion reads a mask."""
    region = np.asarray(region) != 0
    height, width = shape[-2:]
    h, w = region.shape[-2:]
    if (h, w) != (height, width):
        region = region[..., np.arange(height) * h // height, :][..., np.arange(width) * w // width]
    return np.broadcast_to(region, tuple(shape))


def _checked(attribution, region):
    a = np.asarray(attribution, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise UsageError(f"localisation takes per-pixel maps [H, W] or [N, H, W], got shape {list(a.shape)}; "
                         "reduce the channels first (report.reduce_channels)")
    single = a.ndim == 2
    a = a[None] if single else a
    inside = fitted_region(region, a.shape)
    if not inside.reshape(len(a), -1).any(axis=1).all():
        raise UsageError("the region is empty: there is nothing to localise in")
    return a.reshape(len(a), -1), inside.reshape(len(a), -1), single


def relevance_mass(attribution, region) -> np.ndarray | float:
    """The share of the positive attribution inside the region, 0..1 (NaN where nothing is positive)."""
    a, inside, single = _checked(attribution, region)
    positive = np.maximum(a, 0.0)
    total = positive.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, (positive * inside).sum(axis=1) / total, np.nan)
    return float(share[0]) if single else share


def pointing_game(attribution, region) -> np.ndarray | bool:
    """Whether the map's maximum lies inside the region (any pixel of a tied maximum counts)."""
    a, inside, single = _checked(attribution, region)
    hit = ((a == a.max(axis=1, keepdims=True)) & inside).any(axis=1)
    return bool(hit[0]) if single else hit


def box_region(box, shape) -> np.ndarray:
    """A box (x0, y0, x1, y1 in pixels, either corner first: a raw head's box may be inverted) as
    an [H, W] region: the pixels whose centre lies inside it or on its edge."""
    height, width = shape[-2:]
    (x0, x1), (y0, y1) = sorted(float(v) for v in box[0::2]), sorted(float(v) for v in box[1::2])
    rows, cols = np.arange(height)[:, None] + 0.5, np.arange(width)[None, :] + 0.5
    return (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)


def region_outline(region) -> np.ndarray:
    """The region's border pixels [H, W]: inside, with a 4-neighbour outside (or at the edge)."""
    inside = np.asarray(region) != 0
    padded = np.pad(inside, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~interior


__all__ = ["box_region", "fitted_region", "pointing_game", "region_outline", "relevance_mass"]
