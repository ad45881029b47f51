"""Files in, files out: explain image files with a model and write heatmaps, overlays, raw
attributions and a JSON summary (the service under the explain command and the demo). Every file
is written atomically, and nothing that exists is replaced without overwrite."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InputError, NonFiniteError, UsageError
from .explainer import Explainer
from .intake import at_image_size, prepare
from .images import load_all
from .output import atomic_write, prepare_folder, progress, unique_stems
from .presets import class_names
from .report import heatmap_png, overlay_png, reduce_channels
from .settings import Settings

BATCH = 8  # images per Explainer call: the Explainer still splits steps to the memory budget


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
            overlay_png(prep.to_pixels(arrays[i]), per_pixel, files["overlay.png"])
            record = result.summary(j)
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


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


