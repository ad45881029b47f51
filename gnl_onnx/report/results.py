"""What the evaluation report is built from: each image's photo and per-method overlays in
OUT/overlays/, and how much the methods agree on the image (the rank correlation of their
per-pixel maps). Used alike by `evaluate` (attributions in memory) and `audit` (attributions
read back from OUT/attributions/)."""
from __future__ import annotations

import math
import pathlib
from typing import Mapping, Sequence

import numpy as np

from .pages import ImageResult
from .pictures import PathLike, image_png, marked, overlay, png_bytes, reduce_channels
from ..output import atomic_write, unique_stems
from ..pixels import rankdata

OVERLAYS = "overlays"  # OUT/overlays/<stem>.png (the image) and <stem>.<method>.png (each overlay)
REPORT = "report.html"
REPORT_IMAGES = 100  # images shown in a report at most: those where the methods disagree most
FLOOR = "random"  # the random floor: no agreement with anything by construction, left out


def overlay_paths(out: PathLike, stem: str, methods: Sequence[str]) -> dict[str, pathlib.Path]:
    """{"": the photo, method: its overlay} under OUT/overlays/."""
    folder = pathlib.Path(out) / OVERLAYS
    return {"": folder / f"{stem}.png", **{m: folder / f"{stem}.{m}.png" for m in methods}}


def agreement(maps: Mapping[str, np.ndarray], floor: str = FLOOR) -> float | None:
    """The mean Spearman rank correlation over pairs of the methods' per-pixel maps (the random
    floor left out); None with fewer than two methods or when every pair is undefined (a constant
    map)."""

    ranks = []
    for method, m in maps.items():
        if method == floor:
            continue
        r = rankdata(m)
        r -= r.mean()
        norm = math.sqrt(float(r @ r))
        ranks.append(r / norm if norm > 0 else None)
    values = [float(a @ b) for i, a in enumerate(ranks) for b in ranks[i + 1:] if a is not None and b is not None]
    return float(np.mean(values)) if values else None


class ReportImages:
    """Collects, per image (keyed by its file stem, unique even where names repeat), the pixels and
    every method's per-pixel map; write() then renders the photos and overlays into OUT/overlays/
    (nothing is written before, so a failed run leaves nothing behind), and results() orders the
    images by the methods' agreement for the report."""

    def __init__(self, out: PathLike, layout: str, reduce: str = "sum", mode: str = "abs"):
        self.out, self.layout, self.reduce, self.mode = pathlib.Path(out), layout, reduce, mode
        self.names: dict[str, str] = {}  # stem -> the image's name in the records (insertion order)
        self.labels: dict[str, str | None] = {}
        self.pixels: dict[str, np.ndarray] = {}
        self.files: dict[str, dict[str, pathlib.Path]] = {}
        self.maps: dict[str, dict[str, np.ndarray]] = {}
        self.marks: dict[str, dict] = {}  # stem -> what is drawn on its pictures (boxes, caption, region)

    def image(self, stem: str, name: str, pixels: np.ndarray, label: str | None = None, boxes=(),
              caption: str = "", region=None):
        """An image as the model sees it (uint8 HxWx3, e.g. Preprocessing.to_pixels); boxes (x0, y0,
        x1, y1), their caption and a region ([H, W] booleans) are drawn on its photo and overlays."""
        self.names[stem], self.labels[stem], self.pixels[stem] = str(name), label, np.asarray(pixels)
        if len(boxes) or region is not None:
            self.marks[stem] = {"boxes": list(boxes), "caption": caption, "region": region}

    def add(self, stem: str, method: str, attribution: np.ndarray) -> np.ndarray:
        """One method's attribution of one image (the model's layout, [1, ...] or not); returns
        its per-pixel map."""
        a = np.asarray(attribution)
        per_pixel = reduce_channels(a if a.ndim == 4 else a[None], self.layout, self.reduce)
        self.maps.setdefault(stem, {})[method] = per_pixel.astype(np.float32)
        return per_pixel

    def keeper(self, stems: Sequence[str]):
        """A callback keep(method, indices, attributions) for gnl_onnx.evaluate.evaluate: image i
        of the evaluation is stems[i]."""
        def keep(method, indices, attributions):
            for k, i in enumerate(indices):
                self.add(stems[i], method, attributions[k])
        return keep

    def row_keeper(self, names: Sequence[str], pixels: Sequence[np.ndarray], labels=None):
        """A callback keep(method, rows, attributions) for a box or region target's evaluation
        (target_evaluation.Row: the image's position, its name, box, region): each row is one
        entry, named "<image> <row>", its box or region drawn. labels: the class names, if known."""
        stems = unique_stems([str(n) for n in names])

        def keep(method, rows, attributions):
            for row, attribution in zip(rows, attributions):
                stem = f"{stems[row.image]}.{row.name}"
                if stem not in self.names:
                    label = (labels[row.label] if labels is not None and 0 <= row.label < len(labels)
                             else str(row.label))
                    boxes = [row.box] if row.box is not None else list(row.boxes)
                    self.image(stem, f"{names[row.image]} {row.name}", pixels[row.image], label, boxes,
                               f"{label} {row.score:.2f}" if row.box is not None else "",
                               None if boxes else row.region)
                self.add(stem, method, attribution)
        return keep

    def planned(self, stems: Sequence[str], methods: Sequence[str]) -> list[pathlib.Path]:
        """Every file write() may write for these images and methods."""
        return [p for stem in stems for p in overlay_paths(self.out, stem, methods).values()]

    def write(self, stems: Sequence[str] | None = None) -> list[pathlib.Path]:
        """The photo and each method's overlay of the images (default: all), atomically."""
        written = []
        for stem in self.names if stems is None else stems:
            paths = overlay_paths(self.out, stem, list(self.maps.get(stem, {})))
            files = self.files.setdefault(stem, {})
            marks = self.marks.get(stem)
            files[""] = image_png(self.pixels[stem] if marks is None else marked(self.pixels[stem], **marks), paths[""])
            for method, per_pixel in self.maps.get(stem, {}).items():
                picture = overlay(self.pixels[stem], per_pixel, mode=self.mode)
                files[method] = atomic_write(paths[method], png_bytes(picture if marks is None else
                                                                      marked(picture, **marks)))
            written += files.values()
        return written

    def agreements(self) -> dict[str, float | None]:
        return {stem: agreement(self.maps.get(stem, {})) for stem in self.names}

    def ranked(self, limit: int | None = REPORT_IMAGES) -> list[str]:
        """The stems, those where the methods disagree most first (no agreement: last), at most `limit`."""
        agree = self.agreements()
        order = sorted(self.names, key=lambda s: (agree[s] is None, agree[s] if agree[s] is not None else 0.0))
        return order if limit is None else order[:limit]

    def results(self, limit: int | None = REPORT_IMAGES) -> list[ImageResult]:
        """The report's images (see ranked), with the files write() wrote for them."""
        agree = self.agreements()
        return [ImageResult(self.names[s], self.files.get(s, {}).get(""),
                            {m: p for m, p in self.files.get(s, {}).items() if m}, agree[s], self.labels.get(s))
                for s in self.ranked(limit)]


__all__ = ["OVERLAYS", "REPORT", "REPORT_IMAGES", "ReportImages", "agreement", "overlay_paths"]
