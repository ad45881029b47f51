"""Attribution pictures (numpy; Pillow and matplotlib imported on use): heatmaps, overlays on the
photo, the input image; every file goes through gnl_onnx.output.atomic_write.

Overlays are what people look at, so they are made to be read on real photos:
- the photo is a dimmed greyscale copy, and the map's colour is laid over it, opaque where the
  attribution is strong and transparent where it is weak;
- the colour scale ends at the value below which 98% of the map's total |attribution| lies (the
  cumulative-mass clipping of Captum's visualizer, outlier_perc=2): a few extreme pixels do not
  wash out the rest, and a map whose mass is spread over many pixels still saturates somewhere;
- pixel-level maps (gradients, IG, GNL-IG: neighbouring pixels barely correlated) are smoothed
  with a Gaussian of about 1.5% of the image side before colouring; smooth maps (CAMs, already
  upsampled from a coarse grid) are left as they are ("auto"; a number forces a sigma, 0 none);
- two views: "abs" (the default for overlays) shows where the attribution's magnitude is, on a
  sequential map; "signed" keeps its sign on a diverging one (red for, blue against the class).
  A signed pixel-level map is smoothed as it is, so regions of mixed sign fade: that is the honest
  picture of its sign, and why the magnitude is the default.
Heatmaps stay the raw signed map, one PNG pixel per input pixel, clipped but never smoothed.
"""

from __future__ import annotations

import io
import pathlib

import numpy as np

from ..errors import InputError, UsageError
from ..output import PathLike, atomic_write
from ..pixels import reduce_channels

SIGNED_CMAP = "RdBu_r"  # diverging: red = supports the class, blue = speaks against it
ABS_CMAP = "inferno"
PERCENTILE = 99.5  # heatmaps: clip the colour scale so a few extreme pixels do not wash out the map
OUTLIERS = 2.0  # overlays: % of the total |attribution| mass beyond the colour scale's end (Captum's default)
SMOOTH_FRACTION = 0.015  # overlays of pixel-level maps: Gaussian sigma as a fraction of the longer side
ROUGH = 0.2  # a map whose neighbour differences carry more than this share of its variance is pixel-level
DIM = 0.5  # the photo under an overlay: greyscale at this contrast, lifted so dark photos stay visible
MAX_ALPHA = 0.9
GAMMA = 0.75  # opacity = MAX_ALPHA * strength ** GAMMA: mid-strength regions show, not only the peaks


def _pil_image():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover
        raise InputError("writing PNG reports needs Pillow: pip install pillow matplotlib (dependencies of "
                         "gnl-onnx)") from e
    return Image


def _colormap(name: str):
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover
        raise InputError("colour maps need matplotlib: pip install pillow matplotlib (dependencies of gnl-onnx)") from e
    return matplotlib.colormaps[name]


# -- files -------------------------------------------------------------------------------------


def png_bytes(rgb: np.ndarray) -> bytes:
    Image = _pil_image()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


# -- attribution maps --------------------------------------------------------------------------


def _scale(a: np.ndarray, percentile: float) -> float:
    v = float(np.percentile(np.abs(a), percentile)) if a.size else 0.0
    if not np.isfinite(v) or v <= 0:
        v = float(np.max(np.abs(a))) if a.size else 0.0  # sparse maps: most pixels exactly 0
    return v if np.isfinite(v) and v > 0 else 1.0


def colorize(attribution_2d: np.ndarray, mode: str = "signed",
             percentile: float = PERCENTILE) -> tuple[np.ndarray, np.ndarray]:
    """-> (RGB uint8 HxWx3, strength in [0, 1] HxW). signed: diverging map centred at 0, clipped
    at +-percentile(|a|); abs: |a| on a sequential map from 0 to that percentile."""
    a = np.asarray(attribution_2d, dtype=np.float64)
    if a.ndim != 2:
        raise UsageError(f"expected a 2-D attribution (see reduce_channels), got shape {a.shape}")
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    v = _scale(a, percentile)
    strength = np.clip(np.abs(a) / v, 0.0, 1.0)
    if mode == "signed":
        rgba = _colormap(SIGNED_CMAP)(np.clip(a / v, -1.0, 1.0) * 0.5 + 0.5)
    elif mode == "abs":
        rgba = _colormap(ABS_CMAP)(strength)
    else:
        raise UsageError(f"mode must be 'signed' or 'abs', got {mode!r}")
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8), strength


def heatmap_png(attribution_2d: np.ndarray, path: PathLike, mode: str = "signed",
                percentile: float = PERCENTILE) -> pathlib.Path:
    """The attribution alone, one PNG pixel per input pixel."""
    rgb, _ = colorize(attribution_2d, mode, percentile)
    return atomic_write(path, png_bytes(rgb))


def mass_clip(a: np.ndarray, outliers: float = OUTLIERS) -> float:
    """The colour scale's end for |a|: the smallest value v such that the pixels with |a| <= v
    hold (100 - outliers)% of the total |a| (1.0 for an all-zero map)."""
    v = np.sort(np.abs(np.asarray(a, dtype=np.float64)).ravel())
    total = np.cumsum(v)
    if not v.size or not np.isfinite(total[-1]) or total[-1] <= 0:
        return 1.0
    k = int(np.searchsorted(total, total[-1] * (1.0 - outliers / 100.0)))
    end = float(v[min(k, v.size - 1)])
    return end if end > 0 else float(v[-1])


def roughness(a: np.ndarray) -> float:
    """The share of a map's variance in differences between neighbouring pixels: about 1 for
    pixel-level noise-like maps, near 0 for smooth ones (upsampled CAMs)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or min(a.shape) < 2:
        return 0.0
    var = a.var()
    if not np.isfinite(var) or var <= 0:
        return 0.0
    diffs = np.mean(np.diff(a, axis=0) ** 2) + np.mean(np.diff(a, axis=1) ** 2)
    return float(diffs / (4.0 * var))


def gaussian_smooth(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (reflected edges) of a 2-D map; sigma in pixels, <= 0: unchanged."""
    a = np.asarray(a, dtype=np.float64)
    if sigma <= 0:
        return a
    radius = max(1, int(np.ceil(3.0 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    mode = "reflect" if min(a.shape) > radius else "edge"  # reflect needs the side longer than the pad
    padded = np.pad(a, radius, mode=mode)
    window = np.lib.stride_tricks.sliding_window_view
    rows = window(padded, 2 * radius + 1, axis=1) @ kernel
    return window(rows, 2 * radius + 1, axis=0) @ kernel


def smoothing_sigma(a: np.ndarray, smooth: float | str | None = "auto") -> float:
    """The sigma an overlay smooths with: "auto" -> SMOOTH_FRACTION of the longer side for
    pixel-level maps (roughness above ROUGH), 0 for smooth ones; a number is used as given."""
    if smooth is None:
        return 0.0
    if isinstance(smooth, str):
        if smooth != "auto":
            raise UsageError(f"smooth must be 'auto', a sigma in pixels or None, got {smooth!r}")
        a = np.asarray(a)
        if a.ndim != 2 or roughness(a) <= ROUGH:
            return 0.0
        sigma = SMOOTH_FRACTION * max(a.shape)
        return sigma if sigma >= 0.5 else 0.0
    return float(smooth)


def _photo(pixels_uint8: np.ndarray) -> np.ndarray:
    px = np.asarray(pixels_uint8)
    if px.ndim == 3 and px.shape[2] == 1:
        px = px[:, :, 0]
    if px.ndim == 2:
        px = np.repeat(px[:, :, None], 3, axis=2)
    if px.ndim != 3 or px.shape[2] != 3:
        raise UsageError(f"pixels must be HxW or HxWx3 uint8, got shape {np.shape(pixels_uint8)}")
    return px


def overlay(pixels_uint8: np.ndarray, attribution_2d: np.ndarray, mode: str = "abs",
            smooth: float | str | None = "auto", outliers: float = OUTLIERS, dim: float = DIM,
            max_alpha: float = MAX_ALPHA) -> np.ndarray:
    """The attribution over a dimmed greyscale copy of the photo -> RGB uint8 HxWx3 (see the
    module's docstring: views, clipping, smoothing)."""
    px = _photo(pixels_uint8)
    a = np.asarray(attribution_2d, dtype=np.float64)
    if a.shape != px.shape[:2]:
        raise UsageError(f"attribution {a.shape} and image {px.shape[:2]} sizes differ")
    if mode not in ("signed", "abs"):
        raise UsageError(f"mode must be 'signed' or 'abs', got {mode!r}")
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    sigma = smoothing_sigma(a, smooth)
    if mode == "abs":
        a = np.abs(a)  # magnitude first: opposite signs side by side do not cancel in the blur
    a = gaussian_smooth(a, sigma)
    end = mass_clip(a, outliers)
    strength = np.clip(np.abs(a) / end, 0.0, 1.0)
    if mode == "signed":
        rgba = _colormap(SIGNED_CMAP)(np.clip(a / end, -1.0, 1.0) * 0.5 + 0.5)
    else:
        rgba = _colormap(ABS_CMAP)(strength)
    colour = rgba[..., :3] * 255.0
    grey = px.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    base = np.repeat((grey * dim + (1.0 - dim) * 64.0)[:, :, None], 3, axis=2)
    alpha = (max_alpha * strength ** GAMMA)[:, :, None]
    out = base * (1.0 - alpha) + colour * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def overlay_png(pixels_uint8: np.ndarray, attribution_2d: np.ndarray, path: PathLike, mode: str = "abs",
                smooth: float | str | None = "auto", outliers: float = OUTLIERS, dim: float = DIM,
                max_alpha: float = MAX_ALPHA) -> pathlib.Path:
    """overlay(...) written as a PNG (atomically). The one overlay of explain, evaluate, audit and
    the demo."""
    return atomic_write(path, png_bytes(overlay(pixels_uint8, attribution_2d, mode, smooth, outliers, dim,
                                                 max_alpha)))


def box_overlay_png(pixels_uint8: np.ndarray, attribution_2d: np.ndarray, path: PathLike, box, caption: str,
                    mode: str = "abs") -> pathlib.Path:
    """overlay(...) with a detector's box (x0, y0, x1, y1 in the image's pixels) outlined and its
    caption (label and score) written above it, as a PNG (atomically)."""
    return atomic_write(path, png_bytes(marked(overlay(pixels_uint8, attribution_2d, mode), [box], caption)))


BOX_COLOUR = (0, 255, 0)  # a detector's box and its caption (green)
REGION_COLOUR = (0, 255, 255)  # an explained region's outline (cyan: apart from the heat colours)


def marked(rgb: np.ndarray, boxes=(), caption: str = "", region=None) -> np.ndarray:
    """A copy of a picture (HxWx3 uint8) with boxes (x0, y0, x1, y1, either corner first) outlined,
    the caption written above the first, and a region's border pixels ([H, W] booleans) coloured."""
    picture = _photo(rgb).copy()
    if region is not None:
        inside = np.asarray(region) != 0
        padded = np.pad(inside, 1, constant_values=False)
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        picture[inside & ~interior] = REGION_COLOUR
    if not len(boxes):
        return picture
    from PIL import ImageDraw

    image = _pil_image().fromarray(picture)
    draw = ImageDraw.Draw(image)
    for k, box in enumerate(boxes):
        (x0, x1), (y0, y1) = sorted(float(v) for v in box[0::2]), sorted(float(v) for v in box[1::2])
        draw.rectangle([x0, y0, x1, y1], outline=BOX_COLOUR, width=2)
        if k == 0 and caption:
            left, top, right, bottom = draw.textbbox((x0 + 2, max(y0 - 12, 0)), caption)
            draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=(0, 0, 0))
            draw.text((x0 + 2, max(y0 - 12, 0)), caption, fill=BOX_COLOUR)
    return np.asarray(image)


def image_png(pixels_uint8: np.ndarray, path: PathLike) -> pathlib.Path:
    """The (preprocessed) input image itself, e.g. from Preprocessing.to_pixels."""
    return atomic_write(path, png_bytes(np.asarray(pixels_uint8, dtype=np.uint8)))


__all__ = ["ABS_CMAP", "BOX_COLOUR", "OUTLIERS", "PERCENTILE", "REGION_COLOUR", "SIGNED_CMAP", "atomic_write",
           "colorize", "gaussian_smooth", "heatmap_png", "image_png", "marked", "mass_clip", "overlay", "overlay_png",
           "png_bytes", "reduce_channels", "roughness", "smoothing_sigma"]
