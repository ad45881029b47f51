"""Files in, files out: explain image files with a model and write heatmaps, overlays, raw
attributions and a JSON summary (the service under the explain command and the demo). Every file
is written atomically, and nothing that exists is replaced without overwrite."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError, NonFiniteError, UsageError
from .detection import explain_boxes, prepare_detector
from .explainer import Explainer
from .intake import at_image_size, prepare
from .images import load_all
from .output import atomic_write, prepare_folder, progress, unique_stems
from .presets import class_names
from .localisation import box_region, fitted_region, pointing_game, region_outline, relevance_mass
from .report import heatmap_png, overlay, overlay_png, png_bytes, reduce_channels
from .report.pictures import box_overlay_png
from .settings import Settings

BATCH = 8  # images per Explainer call: the Explainer still splits steps to the memory budget
REGION_COLOUR = (0, 255, 255)  # the explained region's outline on the overlay (cyan: apart from the heat colours)


def explain_to_folder(model, images, out: Path, prep, preset, method="gnl_ig", steps=32, baseline="zeros",
                      integration="gausslegendre", target=None, gate="paper", output="logit",
                      memory_budget="auto", overwrite=False, input=None, output_name=None,
                      summary_name="summary.json", layer=None, settings: Settings | None = None):
    """Explain image files (and .npy arrays, one or a batch each); returns (records of the
    explained images, the images that failed: unreadable, or non-finite in the model). `settings`:
    the run's Settings; without it, the keywords make one."""
    if settings is None:  # the keywords make the run's settings (with the preprocessing's)
        settings = Settings(method=method, steps=steps, baseline=baseline, integration=integration,
                            memory_budget=memory_budget, gate=gate, output=output, input=input, output_name=output_name,
                            layer=layer)
    settings = settings.replace(black=prep.black(), layout=prep.layout, bounds=prep.bounds())
    method = settings.method
    prepare_folder(out)
    arrays, names, bad = load_all(images, prep)
    if not arrays:  # nothing to explain: write nothing
        raise InputError(bad[0]["error"] if len(bad) == 1 else f"none of the {len(bad)} images could be read "
                         f"(first: {bad[0]['error']})")
    planned = [{kind: out / f"{stem}.{method}.{kind}" for kind in ("heatmap.png", "overlay.png", "npy")}
               for stem in unique_stems(names)]
    existing = [p for files in planned for p in files.values() if p.exists()]
    if (out / summary_name).exists():
        existing.append(out / summary_name)
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --overwrite to replace")
    model = prepare(model, settings.input, settings.output_name)
    free_size = any(d is None for d in model.image_shape[1:])  # DBNet: runs at each image's own size
    explainers = {}

    def explainer_for(shape):
        key = tuple(shape[1:]) if free_size else None
        if key not in explainers:
            explainers[key] = Explainer(at_image_size(model, shape) if free_size else model, settings=settings)
        return explainers[key]

    by_shape = {}  # images of one shape go through one run (and, for a free-size model, one graph)
    for i, a in enumerate(arrays):
        by_shape.setdefault(a.shape, []).append(i)
    batches = [group[lo:lo + BATCH] for group in by_shape.values() for lo in range(0, len(group), BATCH)]
    labels = class_names(preset) if preset else None
    records, failed_names = [], []
    bar = progress(len(arrays), method)
    for batch in batches:
        explainer = explainer_for(arrays[batch[0]].shape)
        failed = set()
        try:
            result = explainer.explain(np.concatenate([arrays[i] for i in batch]), target)
        except NonFiniteError as e:  # keep the finite images of the batch, name the others
            for j, stage in zip(e.indices, e.stages):
                failed.add(batch[j])
                failed_names.append((names[batch[j]], stage))
                bad.append({"image": names[batch[j]], "error": e.REASONS[stage]})
            result = e.partial
        for j, i in enumerate(batch):
            if i in failed:
                continue
            attribution = result.attributions[j:j + 1]
            files = planned[i]
            atomic_write(files["npy"], lambda tmp, a=attribution: np.save(tmp, a))
            per_pixel = reduce_channels(attribution, prep.layout, "sum")
            heatmap_png(per_pixel, files["heatmap.png"])
            region = explainer.target.region_at(result.scores[j], int(result.target[j]))
            localised = {}
            if region is None:
                overlay_png(prep.to_pixels(arrays[i]), per_pixel, files["overlay.png"])
            else:  # the region's outline over the heatmap, and how much of the map falls inside it
                region = fitted_region(region, per_pixel.shape)
                picture = overlay(prep.to_pixels(arrays[i]), per_pixel)
                picture[region_outline(region)] = REGION_COLOUR
                atomic_write(files["overlay.png"], png_bytes(picture))
                localised = {"region_pixels": int(region.sum())}
                if region.any():
                    localised.update(relevance_mass=relevance_mass(per_pixel, region),
                                     pointing_game=pointing_game(per_pixel, region))
            record = result.summary(j)
            record.update(localised)
            record.update(image=names[i], files={k.split(".")[0]: str(v) for k, v in files.items()},
                          input_shape=list(arrays[i].shape), explained=explainer.target.describe())
            record["label"] = labels[record["target"]] if labels and record["target"] < len(labels) else None
            if result.scores.ndim == 2:  # class scores (a region target's map has no one probability)
                record["probability"] = float(_softmax(result.scores[j])[record["target"]])
            records.append(record)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if failed_names and not records:  # no image came out finite: an error, and nothing written
        raise NonFiniteError(range(len(failed_names)), [s for _, s in failed_names],
                             names=[n for n, _ in failed_names])
    summary = {"model": str(model), "method": method, "explained": records, "skipped": bad}
    atomic_write(out / summary_name, json.dumps(summary, indent=2))
    return records, bad


def explain_boxes_to_folder(model, images, out: Path, prep, preset, settings: Settings, target,
                            overwrite=False, summary_name="summary.json"):
    """A detector's kept boxes (target: a DetectionBox) explained, one map per box: per box an .npy,
    a heatmap and an overlay with the box, its label and score drawn, and in summary.json the box,
    its relevance mass (the share of the positive attribution inside it) and whether the map's
    maximum falls inside it (pointing game). Returns (records, skipped images, the note: why no box)."""
    settings = settings.replace(black=prep.black(), layout=prep.layout, bounds=prep.bounds())
    prepare_folder(out)
    arrays, names, bad = load_all(images, prep)
    if not arrays:
        raise InputError(bad[0]["error"] if len(bad) == 1 else f"none of the {len(bad)} images could be read "
                         f"(first: {bad[0]['error']})")
    if (out / summary_name).exists() and not overwrite:
        raise UsageError(f"{out / summary_name} exists; pass --overwrite to replace")
    prepared, target = prepare_detector(model, target, settings.input)
    result = explain_boxes(prepared, np.concatenate(arrays), target, settings=settings)
    labels = class_names(preset) if preset else None
    stems = unique_stems(names)
    records = []
    for k, (box, attribution, score) in enumerate(zip(result.boxes, result.attributions, result.scores)):
        per_pixel = reduce_channels(attribution[None], prep.layout, "sum")
        label = labels[box.label] if labels and box.label < len(labels) else str(box.label)
        stem = f"{stems[box.image]}.box{k}.{settings.method}"
        files = {"npy": out / f"{stem}.npy", "heatmap": out / f"{stem}.heatmap.png", "overlay": out / f"{stem}.overlay.png"}
        if not overwrite and any(p.exists() for p in files.values()):
            raise UsageError(f"{next(p for p in files.values() if p.exists())} exists; pass --overwrite to replace")
        atomic_write(files["npy"], lambda tmp, a=attribution: np.save(tmp, a[None]))
        heatmap_png(per_pixel, files["heatmap"])
        box_overlay_png(prep.to_pixels(arrays[box.image]), per_pixel, files["overlay"], box.xyxy,
                        f"{label} {box.score:.2f}")
        inside = box_region(box.xyxy, per_pixel.shape)
        positive = np.maximum(per_pixel, 0)
        records.append({"image": names[box.image], "box": [round(float(v), 2) for v in box.xyxy],
                        "label": label, "class": box.label, "score": box.score, "explained_score": float(score),
                        "relevance_mass": float(positive[inside].sum() / positive.sum()) if positive.sum() > 0 else None,
                        "pointing_game": bool(inside.ravel()[int(np.argmax(per_pixel))]),
                        "files": {kind: str(path) for kind, path in files.items()}})
    summary = {"model": str(prepared), "method": settings.method, "explained": target.describe(), "boxes": records,
               "note": result.note, "skipped": bad}
    atomic_write(out / summary_name, json.dumps(summary, indent=2))
    return records, bad, result.note


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


