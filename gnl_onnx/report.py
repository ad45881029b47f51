"""Attribution pictures and an HTML report (numpy; Pillow and matplotlib imported on use).

Every file is written under a temporary name in its target folder and os.replace'd into place,
so a reader (or a crash) never sees a half-written PNG or page.
"""

from __future__ import annotations

import base64
import html
import io
import os
import pathlib
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence, Union

import numpy as np

from .errors import InputError, UsageError

PathLike = Union[str, os.PathLike]
SIGNED_CMAP = "RdBu_r"  # diverging: red = supports the class, blue = speaks against it
ABS_CMAP = "inferno"
PERCENTILE = 99.5  # clip the colour scale so a few extreme pixels do not wash out the map


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
def atomic_write(path: PathLike, data: bytes | str | Callable[[pathlib.Path], object]) -> pathlib.Path:
    """Write `data` (bytes, text as UTF-8, or a callback given a temporary path to write to) and
    move it over `path` only once complete. If anything fails, an existing `path` is untouched
    and the temporary file is removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so os.replace is an atomic rename; same suffix, so format-by-extension writers
    # (Pillow, matplotlib) behave as for the real name.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                                    dir=path.parent)
    tmp = pathlib.Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(payload)
        with open(tmp, "rb+") as f:  # data on disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; give reports the usual permissions (or keep the old file's).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()
    return path


def _png_bytes(rgb: np.ndarray) -> bytes:
    Image = _pil_image()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG")
    return buf.getvalue()


# -- attribution maps --------------------------------------------------------------------------
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
    return atomic_write(path, _png_bytes(rgb))


def overlay_png(pixels_uint8: np.ndarray, attribution_2d: np.ndarray, path: PathLike,
                mode: str = "signed", percentile: float = PERCENTILE,
                max_alpha: float = 0.85) -> pathlib.Path:
    """The attribution over the image: each pixel's opacity grows with |a|, so unimportant
    regions show the photo (in grey, so the map's colours stay readable)."""
    px = np.asarray(pixels_uint8)
    if px.ndim == 3 and px.shape[2] == 1:
        px = px[:, :, 0]
    if px.ndim == 2:
        px = np.repeat(px[:, :, None], 3, axis=2)
    if px.ndim != 3 or px.shape[2] != 3:
        raise UsageError(f"pixels must be HxW or HxWx3 uint8, got shape {np.shape(pixels_uint8)}")
    a = np.asarray(attribution_2d, dtype=np.float64)
    if a.shape != px.shape[:2]:
        raise UsageError(f"attribution {a.shape} and image {px.shape[:2]} sizes differ")
    rgb, strength = colorize(a, mode, percentile)
    grey = px.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    base = np.repeat(grey[:, :, None], 3, axis=2)
    alpha = (max_alpha * strength)[:, :, None]
    out = base * (1.0 - alpha) + rgb.astype(np.float64) * alpha
    return atomic_write(path, _png_bytes(np.clip(out + 0.5, 0, 255).astype(np.uint8)))


def image_png(pixels_uint8: np.ndarray, path: PathLike) -> pathlib.Path:
    """The (preprocessed) input image itself, e.g. from Preprocessing.to_pixels."""
    return atomic_write(path, _png_bytes(np.asarray(pixels_uint8, dtype=np.uint8)))


# -- HTML --------------------------------------------------------------------------------------
@dataclass
class Panel:
    """One attribution picture and what produced it."""
    png: PathLike
    method: str
    baseline: str | None = None
    note: str = ""  # e.g. "deletion AUC 0.081" or "delta 2e-3"


@dataclass
class Row:
    """One input image: its picture, the explained class and the methods' panels."""
    image: PathLike | None
    label: str  # class name (and index)
    score: float | None = None  # the explained output (logit or probability)
    panels: list[Panel] = field(default_factory=list)
    title: str = ""  # e.g. the file name


def _row(r: Row | Mapping) -> Row:
    if isinstance(r, Row):
        return r
    d = dict(r)
    d["panels"] = [p if isinstance(p, Panel) else Panel(**p) for p in d.get("panels", [])]
    return Row(**d)


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td{vertical-align:top;padding:6px;text-align:center}
tr{border-top:1px solid #ddd}img{width:224px;height:auto;image-rendering:pixelated}
.cap{font-size:12px;max-width:224px;margin:auto}.cap b{font-size:13px}"""


def html_page(rows: Iterable[Row | Mapping], path: PathLike, title: str = "gnl-onnx attributions",
              embed: bool = False, notes: Sequence[str] = ()) -> pathlib.Path:
    """One page, one table row per image: the image, then each method's panel with a caption
    naming class, score, method and baseline. PNGs are linked relative to the page (keep them
    next to it) or, with embed=True, inlined as base64 so the page travels alone."""
    path = pathlib.Path(path)
    base = path.parent.resolve()

    def src(png: PathLike) -> str:
        p = pathlib.Path(png)
        if embed:
            try:
                data = p.read_bytes()
            except OSError as e:
                raise InputError(f"{p}: cannot read PNG to embed ({e.strerror})") from None
            return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        rel = os.path.relpath(p.resolve(), base)
        return html.escape(pathlib.PurePath(rel).as_posix(), quote=True)

    def cell(png: PathLike | None, lines: list[str], alt: str) -> str:
        img = f'<img src="{src(png)}" alt="{html.escape(alt, quote=True)}">' if png else ""
        cap = "<br>".join(lines)
        return f'<td>{img}<div class="cap">{cap}</div></td>'

    esc = html.escape
    body = []
    for r in map(_row, rows):
        score = "" if r.score is None else f" score {r.score:.4g}"
        head = f"<b>{esc(r.title)}</b>" if r.title else "input"
        cells = [cell(r.image, [head, esc(r.label) + esc(score)], r.title or "input")]
        for p in r.panels:
            lines = [f"<b>{esc(p.method)}</b>", esc(r.label) + esc(score)]
            lines.append(f"baseline: {esc(p.baseline)}" if p.baseline else "baseline: n/a")
            if p.note:
                lines.append(esc(p.note))
            cells.append(cell(p.png, lines, f"{p.method}: {r.label}"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes_html = "".join(f"<p>{esc(n)}</p>" for n in notes)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{notes_html}"
            f"<table>{''.join(body)}</table></body></html>\n")
    return atomic_write(path, page)


__all__ = ["Panel", "Row", "atomic_write", "colorize", "heatmap_png", "html_page", "image_png",
           "overlay_png", "reduce_channels"]
