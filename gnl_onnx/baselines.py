"""Baselines for path methods: what "absence of signal" means. Which one ran is reported with
every result, because the attribution measures the image against it (see README)."""
from __future__ import annotations

import numpy as np

from .errors import UsageError

NAMES = ("zeros", "black", "blur", "noise")


def spatial_axes(shape, layout: str | None = None) -> tuple[int, ...]:
    """Height and width axes of an image batch, NCHW unless the layout or the shape says NHWC."""
    if layout is None:
        layout = "NHWC" if len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "NCHW"
    return tuple(range(1, len(shape) - 1)) if layout == "NHWC" else tuple(range(2, len(shape)))


def gaussian_blur(images: np.ndarray, sigma: float = 5.0, kernel: int = 11, layout: str | None = None) -> np.ndarray:
    """Separable Gaussian blur over the spatial axes, edges reflected (RISE uses kernel 11, sigma 5)."""
    radius = kernel // 2
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    out = images.astype(np.float32)
    for axis in spatial_axes(images.shape, layout):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        out = sum(taps[k] * np.take(padded, np.arange(k, k + out.shape[axis]), axis=axis) for k in range(kernel))
    return out.astype(np.float32)


def make_baseline(kind, images: np.ndarray, black=None, layout: str | None = None, seed: int = 0) -> np.ndarray:
    """`kind`: "zeros" (0 in the model's input space), "black" (pixel 0 after the model's
    preprocessing: needs `black`, e.g. Preprocessing.black()), "blur", "noise" (uniform over each
    image's value range), or an array broadcastable to the images."""
    if not isinstance(kind, str):
        baseline = np.asarray(kind, dtype=np.float32)
        try:
            np.broadcast_shapes(baseline.shape, images.shape)
        except ValueError:
            raise UsageError(f"baseline of shape {baseline.shape} does not broadcast to the images "
                             f"{images.shape}") from None
        return np.broadcast_to(baseline, images.shape).astype(np.float32)
    if kind == "zeros":
        return np.zeros_like(images, dtype=np.float32)
    if kind == "black":
        if black is None:
            raise UsageError("the black baseline needs the model's preprocessing (mean/std, value range): "
                             "give a preset or mean/std, or use baseline='zeros'")
        return np.broadcast_to(np.asarray(black, np.float32), images.shape).astype(np.float32)
    if kind == "blur":
        return gaussian_blur(images, layout=layout)
    if kind == "noise":
        rng = np.random.default_rng(seed)
        axes = tuple(range(1, images.ndim))
        low, high = images.min(axis=axes, keepdims=True), images.max(axis=axes, keepdims=True)
        return (low + (high - low) * rng.random(images.shape)).astype(np.float32)
    raise UsageError(f"unknown baseline '{kind}'; choose one of {', '.join(NAMES)} or give an array")
