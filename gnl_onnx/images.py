"""Image loading and model preprocessing (Pillow + numpy only).

A `Preprocessing` turns a photo into the exact tensor a model was trained on, maps a tensor back
to displayable pixels, and says what "black" is in the model's input space (the IG baseline that
METHOD.md warns is (0 - mean) / std, not 0).
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, UsageError

_LAYOUTS = ("NCHW", "NHWC")
_CHANNELS = ("RGB", "BGR", "L")
_FITS = ("shorter", "exact", "letterbox", "own")
_RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos")


def _pil():
    """Import Pillow on first use so the core package does not depend on it."""
    try:
        from PIL import Image, ImageOps
    except ImportError as e:  # pragma: no cover - exercised only without Pillow
        raise InputError("reading images needs Pillow: pip install pillow matplotlib (dependencies of gnl-onnx)") from e
    return Image, ImageOps


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    h, w = v
    return int(h), int(w)


@dataclass(frozen=True)
class Preprocessing:
    """How a model wants its pixels.

    size: int -> the shorter side is resized to it (fit="shorter", torchvision's Resize(int));
        (h, w) -> resized to exactly that (fit="exact") or fitted inside it keeping the aspect
        ratio and padded with `pad` (fit="letterbox"). fit="own": the photo's own size (size unused).
    multiple: each side is then resized to the nearest multiple of it (DBNet takes multiples of 32).
    crop: (h, w) centre crop after the resize, or None.
    mean, std: per channel, in the model's channel order, in the value range given by
        `value_range` (value_range=1.0: pixel 255 -> 1.0, e.g. ImageNet's 0.485; 255.0: caffe-style
        means such as 103.94). model input = (pixel * value_range / 255 - mean) / std.
    layout: "NCHW" or "NHWC". channels: "RGB", "BGR" or "L" (grayscale, one channel).
    """

    size: int | tuple[int, int]
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    value_range: float = 1.0
    layout: str = "NCHW"
    channels: str = "RGB"
    fit: str = "shorter"
    resample: str = "bilinear"
    pad: int = 255  # letterbox fill (grey level, all channels): white as document scanners pad
    multiple: int = 1

    def __post_init__(self):
        if self.layout not in _LAYOUTS:
            raise UsageError(f"layout must be one of {_LAYOUTS}, got {self.layout!r}")
        if self.channels not in _CHANNELS:
            raise UsageError(f"channels must be one of {_CHANNELS}, got {self.channels!r}")
        if self.fit not in _FITS:
            raise UsageError(f"fit must be one of {_FITS}, got {self.fit!r}")
        if self.resample not in _RESAMPLE:
            raise UsageError(f"resample must be one of {_RESAMPLE}, got {self.resample!r}")
        if self.value_range not in (1.0, 255.0):
            raise UsageError(f"value_range must be 1.0 or 255.0, got {self.value_range!r}")
        if not isinstance(self.multiple, (int, np.integer)) or self.multiple < 1:
            raise UsageError(f"multiple must be a positive integer, got {self.multiple!r}")
        if self.fit == "shorter" and not isinstance(self.size, (int, np.integer)):
            raise UsageError("fit='shorter' needs an int size (the shorter side)")
        n = self.num_channels
        # Accept one value for all channels (e.g. mean=(127.0,)) but store one per channel.
        for field in ("mean", "std"):
            v = tuple(float(x) for x in np.atleast_1d(getattr(self, field)))
            if len(v) == 1 or (n == 1 and len(set(v)) == 1):  # one value for all (the defaults for "L" too)
                v = v[:1] * n
            if len(v) != n:
                raise UsageError(f"{field} has {len(v)} values for {n} channel(s)")
            object.__setattr__(self, field, v)
        if any(s == 0 for s in self.std):
            raise UsageError("std must not contain 0")

    @property
    def num_channels(self) -> int:
        return 1 if self.channels == "L" else 3

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(h, w) of the model input, or None when it depends on the photo (shorter-side resize
        without a crop)."""
        if self.crop is not None:
            return _pair(self.crop)
        if self.fit in ("exact", "letterbox"):
            h, w = _pair(self.size)
            return (max(1, round(h / self.multiple)) * self.multiple, max(1, round(w / self.multiple)) * self.multiple)
        return None

    # -- forward -----------------------------------------------------------------------------
    def _resized(self, im):
        im = self._fitted(im)
        w, h = im.size
        m = self.multiple
        rounded = (max(1, round(w / m)) * m, max(1, round(h / m)) * m)  # round() as PaddleOCR/RapidOCR do
        if rounded != (w, h):
            Image, _ = _pil()
            im = im.resize(rounded, getattr(Image.Resampling, self.resample.upper()))
        return im

    def _fitted(self, im):
        Image, _ = _pil()
        resample = getattr(Image.Resampling, self.resample.upper())
        w, h = im.size
        if self.fit == "own":
            return im
        if self.fit == "shorter":
            # torchvision's Resize(int) rule: shorter side -> size, longer side truncated.
            s = int(self.size)
            nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            return im.resize((nw, nh), resample)
        th, tw = _pair(self.size)
        if self.fit == "exact":
            return im.resize((tw, th), resample)
        scale = min(tw / w, th / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        canvas = Image.new(im.mode, (tw, th), self.pad if im.mode == "L" else (self.pad,) * 3)
        canvas.paste(im.resize((nw, nh), resample), ((tw - nw) // 2, (th - nh) // 2))
        return canvas

    def _cropped(self, a: np.ndarray) -> np.ndarray:
        if self.crop is None:
            return a
        ch, cw = _pair(self.crop)
        h, w = a.shape[:2]
        if h < ch or w < cw:  # torchvision's CenterCrop pads small images with zeros
            ph, pw = max(ch - h, 0), max(cw - w, 0)
            pads = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (a.ndim - 2)
            a = np.pad(a, pads)
            h, w = a.shape[:2]
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return a[top:top + ch, left:left + cw]

    def to_input(self, image: Any) -> np.ndarray:
        """PIL image or uint8/float array (HxW or HxWxC; floats in 0..1) -> float32 [1, ...]."""
        im = _as_pil(image)
        im = _to_mode(im, "L" if self.channels == "L" else "RGB")
        a = self._cropped(np.asarray(self._resized(im), dtype=np.uint8))
        a = a.astype(np.float32)
        if a.ndim == 2:
            a = a[:, :, None]
        if self.channels == "BGR":
            a = a[:, :, ::-1]
        a = a * np.float32(self.value_range / 255.0)
        a = (a - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.layout == "NCHW":
            a = a.transpose(2, 0, 1)
        return np.ascontiguousarray(a[None], dtype=np.float32)

    # -- backward ----------------------------------------------------------------------------
    def _channel_shape(self) -> tuple[int, ...]:
        n = self.num_channels
        return (1, n, 1, 1) if self.layout == "NCHW" else (1, 1, 1, n)

    def black(self) -> np.ndarray:
        """Pixel value 0 in the model's input space: (0 - mean) / std, shaped to broadcast
        against a [1, ...] input ([1,C,1,1] for NCHW, [1,1,1,C] for NHWC)."""
        m = np.asarray(self.mean, np.float32).reshape(self._channel_shape())
        s = np.asarray(self.std, np.float32).reshape(self._channel_shape())
        return (np.float32(0.0) - m) / s

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high): pixel values 0 and 255 in the model's input space, (0 - mean) / std and
        (value_range - mean) / std, shaped as black(): the input range ZBox (lrp_epsilon_gamma_box)
        needs."""
        m = np.asarray(self.mean, np.float32).reshape(self._channel_shape())
        s = np.asarray(self.std, np.float32).reshape(self._channel_shape())
        return (np.float32(0.0) - m) / s, (np.float32(self.value_range) - m) / s

    def to_pixels(self, array: np.ndarray) -> np.ndarray:
        """Model input ([1,...] or without the batch dim) -> uint8 HxWx3 RGB for display."""
        a = np.asarray(array, dtype=np.float32)
        if a.ndim == 4:
            if a.shape[0] != 1:
                raise UsageError(f"to_pixels takes one image, got a batch of {a.shape[0]}")
            a = a[0]
        if a.ndim != 3:
            raise UsageError(f"to_pixels expects a 3-D or [1, ...] 4-D array, got shape {a.shape}")
        if self.layout == "NCHW":
            a = a.transpose(1, 2, 0)
        if a.shape[2] != self.num_channels:
            raise UsageError(f"expected {self.num_channels} channel(s) in {self.layout}, got shape "
                             f"{np.shape(array)}")
        a = a * np.asarray(self.std, np.float32) + np.asarray(self.mean, np.float32)
        a = a * np.float32(255.0 / self.value_range)
        if self.channels == "BGR":
            a = a[:, :, ::-1]
        elif self.channels == "L":
            a = np.repeat(a, 3, axis=2)
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)


# -- loading -----------------------------------------------------------------------------------
def _as_pil(image: Any):
    Image, _ = _pil()
    if isinstance(image, Image.Image):
        return image
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise InputError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {a.shape}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = np.rint(a / 257.0).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)  # skimage convention: 0..1
    elif a.dtype != np.uint8:
        raise InputError(f"unsupported image array dtype {a.dtype}; use uint8, uint16 or float")
    return Image.fromarray(np.ascontiguousarray(a))


def _to_mode(im, mode: str):
    """Any Pillow mode -> "RGB" or "L": transparency composited on white, high bit depths scaled
    (not clipped) to 8 bits."""
    Image, _ = _pil()
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        # 16-bit files (PNG, TIFF) -> 0..65535; "I"/"F" from other sources may already be 8-bit.
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        im = canvas.convert("RGB")
    if im.mode != mode:
        im = im.convert(mode)
    return im


def regular_file(path: str | os.PathLike) -> str:
    """The path, if it names a regular file: a folder, a pipe, a device or a socket is refused in
    one line before anything opens it (reading a FIFO would wait for a writer forever)."""
    name = os.fspath(path)
    try:
        mode = os.stat(name).st_mode  # stat does not open: a FIFO does not block it
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as e:
        raise InputError(f"{name}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else
                "not a regular file")
        raise InputError(f"{name}: is {kind}, not an image file; name an image file")
    return name


def open_image(path: str | os.PathLike, mode: str = "RGB"):
    """Read an image file upright (EXIF orientation applied) as a Pillow image in `mode`
    ("RGB" or "L"). Every failure is an InputError naming the file."""
    Image, ImageOps = _pil()
    name = regular_file(path)
    try:
        with warnings.catch_warnings():
            # EXIF/ICC quirks in real photos are not the user's problem. Pillow only warns between
            # MAX_IMAGE_PIXELS and twice that: honour the limit itself.
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as im:
                im.load()  # decode now: truncated files fail here, inside the try
                im = ImageOps.exif_transpose(im)
                return _to_mode(im, mode)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not an image") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(f"{name}: image too large for Pillow's decompression-bomb limit "
                         f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {e}; downscale it, or raise "
                         "that limit from Python if you trust the file") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{name}: not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncated/corrupt data as OSError (and SyntaxError/ValueError in some
        # decoders): say so in one line.
        raise InputError(f"{name}: cannot decode image ({e})") from None


ARRAY_SUFFIX = ".npy"


def is_array_file(path: str | os.PathLike) -> bool:
    return os.fspath(path).lower().endswith(ARRAY_SUFFIX)


def load_array(path: str | os.PathLike, rank: int = 4) -> np.ndarray:
    """An .npy file already in the model's input space and layout: one image (rank - 1 dims) or a
    batch (rank dims) -> float32 [k, ...]. Every failure is an InputError naming the file."""
    name = regular_file(path)
    try:
        a = np.load(name, allow_pickle=False)  # never unpickle a user's file
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{name}: not a readable .npy array ({str(e).splitlines()[0][:120]})") from None
    if a.dtype.kind not in "fiub":
        raise InputError(f"{name}: holds {a.dtype} values; save the preprocessed input as a float array")
    if a.ndim == rank - 1:
        a = a[None]
    if a.ndim != rank or a.shape[0] == 0:
        raise InputError(f"{name}: array of shape {a.shape}; give one image of {rank - 1} dims or a batch of "
                         f"{rank} dims, already preprocessed in the model's layout")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{name}: holds {int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite values")
    return np.ascontiguousarray(a, dtype=np.float32)


def load_inputs(path: str | os.PathLike, prep: Preprocessing | None) -> np.ndarray:
    """An image file (preprocessed: [1, ...]) or an .npy array (as it is: [k, ...])."""
    if is_array_file(path):
        return load_array(path)
    if prep is None:
        raise UsageError(f"{os.fspath(path)} is an image file: say how to prepare it (--preset, or --size)")
    return load_image(path, prep)


def load_all(paths, prep: Preprocessing | None, strict: bool = False):
    """Every image of the files named: (arrays [1, ...], their names, unreadable files as
    {"image", "error"}). An .npy batch gives one name per image ("a.npy[3]"). strict: the first
    unreadable file raises its InputError instead."""
    arrays, names, bad = [], [], []
    for path in paths:
        try:
            batch = load_inputs(path, prep)
        except InputError as e:
            if strict:
                raise
            bad.append({"image": str(path), "error": str(e)})
            continue
        arrays.extend(batch[k:k + 1] for k in range(len(batch)))
        names.extend([str(path)] if len(batch) == 1 else [f"{path}[{k}]" for k in range(len(batch))])
    return arrays, names, bad


def load_image(path: str | os.PathLike, prep: Preprocessing) -> np.ndarray:
    """Read a file and preprocess it: float32 [1, ...] model input (an .npy file: its one image)."""
    if is_array_file(path):
        array = load_array(path)
        if len(array) != 1:
            raise InputError(f"{os.fspath(path)}: holds a batch of {len(array)}; one image per file here")
        return array
    return prep.to_input(open_image(path, "L" if prep.channels == "L" else "RGB"))


def read_mask(path: str | os.PathLike, prep: Preprocessing | None = None) -> np.ndarray:
    """A region mask [H, W] of booleans from a file: an .npy array (nonzero inside) as it is, or an
    image (grey above 127 inside), resized and cropped as `prep` prepares the images, so that it
    lies on the model input's pixels (without `prep`: at its own size)."""
    if is_array_file(path):
        a = np.load(regular_file(path), allow_pickle=False)
        a = a.reshape(a.shape[-2:]) if a.ndim > 2 and int(np.prod(a.shape[:-2])) == 1 else a
        if a.ndim != 2:
            raise InputError(f"{os.fspath(path)}: a mask is an [H, W] array, got shape {list(a.shape)}")
        return a != 0
    grey = open_image(path, "L")
    if prep is None:
        return np.asarray(grey) > 127
    as_grey = Preprocessing(size=prep.size, crop=prep.crop, fit=prep.fit, resample="nearest", pad=0, channels="L",
                            mean=(0.0,), std=(1.0,), layout="NCHW", multiple=prep.multiple)
    return as_grey.to_input(grey)[0, 0] > 0.5


def from_model_shape(shape, given: dict) -> Preprocessing | None:
    """The preprocessing a model's static input shape implies ([N, C, H, W] or [N, H, W, C] with 1 or
    3 channels): photos resized on their shorter side to cover H x W and centre-cropped to it, pixels
    scaled to 0..1; `given` fields (flags) override. None when the shape says too little."""
    if shape is None or len(shape) != 4:
        return None
    _, a, b, c = shape
    layout = given.get("layout") or ("NCHW" if a in (1, 3) else "NHWC" if c in (1, 3) else None)
    if layout is None:
        return None
    channels, h, w = (a, b, c) if layout == "NCHW" else (c, a, b)
    if not all(isinstance(d, int) for d in (h, w)):
        return None
    fields = {"size": max(h, w), "crop": (h, w), "layout": layout, "channels": "L" if channels == 1 else "RGB"}
    fields.update(given)
    if isinstance(fields["size"], tuple) and "fit" not in fields:
        fields["fit"] = "exact"
    return Preprocessing(**fields)




# .npy: arrays already in the model's input space and layout (one image, or a batch where allowed)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".npy")


def find_images(paths, folder=None) -> list[str]:
    """The image files named, then those in `folder` (by suffix, sorted)."""
    found = [str(p) for p in paths or []]
    if folder is not None:
        d = Path(folder)
        if not d.is_dir():
            raise UsageError(f"{d}: no such folder of images")
        inside = sorted(str(p) for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not inside:
            raise InputError(f"{d}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
        found += inside
    if not found:
        raise UsageError("no images: name image files or give a folder with --images DIR")
    return found


__all__ = ["Preprocessing", "find_images", "IMAGE_SUFFIXES", "open_image", "load_image", "load_array", "load_inputs", "load_all",
           "from_model_shape"]
