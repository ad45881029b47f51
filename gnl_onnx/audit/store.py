"""Results on disk: Parquet parts written atomically per batch, resuming from them, and the end of
a run (de-duplicated results, table, summary, curves, the HTML report)."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import UsageError
from ..evaluation import (
    FILES,
    Evaluation,
    Scoring,
    plot_curves,
    summarize,
)
from ..measures import MEASURES
from ..report import OVERLAYS
from ..target_evaluation import image_of
from ..road import FRACTIONS as ROAD_FRACTIONS
from .layout import ATTRIBUTIONS, IDENTITY, PARTS, RESULTS, SETTINGS, SUMMARY
import gnl_onnx.audit.sources as sources
from .sources import _label, _load_local, need_pyarrow
from ..images import load_image
from ..output import atomic_write, prepare_folder, unique_stems as _stems
from ..report import REPORT_IMAGES, ReportImages, agreement, evaluation_page


# -- results on disk ---------------------------------------------------------------------------
class _Store:
    """OUT/parts/*.parquet and OUT/attributions/: what is done, and writing finished batches."""

    def __init__(self, out: Path, road_fractions=None):
        self.out, self.parts = out, out / PARTS
        self.road_fractions = road_fractions  # None: ROAD not measured
        self.done: set[tuple[str, str]] = set()
        self.errors: dict[tuple[str, str], str] = {}
        self.written = 0

    def read(self):
        """Every part's rows as one pyarrow table (None when there are none)."""
        pa = need_pyarrow()
        files = sorted(p for p in self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []
        if not files:
            return None
        return pa.concat_tables([pa.parquet.read_table(p) for p in files])

    def load_done(self):
        table = self.read()
        if table is not None:
            self.done = set(zip(table.column("image").to_pylist(), table.column("method").to_pylist()))
            # a box's or region's row done: its image is done for that method (the audit asks by image)
            self.done |= {(image_of(i), m) for i, m in self.done}

    def write(self, batch: dict):
        """One finished batch: its attributions, then its part file (so a part never names a
        missing .npy); keys done already (a retried batch) are dropped."""

        pa = need_pyarrow()
        keep = []
        for i, (image, method, error) in enumerate(zip(batch["image"], batch["method"], batch["error"])):
            key = (str(image), str(method))
            if error:
                self.errors[key] = str(error)
            elif key not in self.done:
                self.done.update({key, (image_of(key[0]), key[1])})
                self.errors.pop(key, None)
                keep.append(i)
        if not keep:
            return 0
        paths = []
        for i in keep:
            relative = f"{ATTRIBUTIONS}/{batch['method'][i]}/{batch['image'][i]}.npy"
            atomic_write(self.out / relative, bytes(batch["npy"][i]))
            paths.append(relative)
        steps = [int(s) for s in batch["steps"][keep]]
        # every measure whose curves the batch holds: its numbers after the score, its curves last
        measures = [m for m in MEASURES.values() if all(f"{c}_curve" in batch for c in m.curve_names)]
        settings = Scoring(road_fractions=tuple(self.road_fractions or ROAD_FRACTIONS))
        numbers: dict[str, list] = {}
        for i in keep:
            for m in measures:
                curves = {c: np.asarray(batch[f"{c}_curve"][i]) for c in m.curve_names}
                for k, v in m.numbers(curves, settings).items():
                    numbers.setdefault(k, []).append(v)
        table = pa.table({
            "image": pa.array([str(batch["image"][i]) for i in keep], pa.string()),
            "method": pa.array([str(batch["method"][i]) for i in keep], pa.string()),
            "target": pa.array(batch["target"][keep], pa.int64()),
            "score": pa.array(batch["score"][keep], pa.float64()),
            **{k: pa.array(v, pa.float64()) for k, v in numbers.items()},
            "steps": pa.array([None if s < 0 else s for s in steps], pa.int64()),
            "attribution_seconds": pa.array(batch["attribution_seconds"][keep], pa.float64()),
            "provider": pa.array([str(batch["provider"][i]) for i in keep], pa.string()),
            "attribution": pa.array(paths, pa.string()),
            **{f"{c}_curve": pa.array([batch[f"{c}_curve"][i].tolist() for i in keep], pa.list_(pa.float64()))
               for m in measures for c in m.curve_names},
            # a detector's boxes (a box target's rows; every part of such an audit has them)
            **({"box": pa.array([batch["box"][i].tolist() for i in keep], pa.list_(pa.float64()))}
               if "box" in batch and np.isfinite(batch["box"][keep]).all() else {})})
        atomic_write(self.parts / f"part-{uuid.uuid4().hex}.parquet", lambda tmp: pa.parquet.write_table(table, tmp))
        self.written += len(keep)
        return len(keep)


def _prepare_out(out: Path, identity: dict, overwrite: bool):
    """Check that OUT is new or holds an audit with the same settings (else --overwrite clears it)."""

    ours = [out / n for n in (RESULTS, SETTINGS, SUMMARY, PARTS, ATTRIBUTIONS, FILES["table"], FILES["curves"],
                              FILES["report"], OVERLAYS)]
    settings = out / SETTINGS
    if settings.is_file() and not overwrite:
        try:
            earlier = json.loads(settings.read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"{settings} cannot be read ({e}); pass --overwrite to start this audit afresh") from None
        changed = [k for k in IDENTITY if earlier.get(k) != identity.get(k)]
        if changed:
            raise UsageError(f"{out} holds an audit with other settings ({', '.join(changed)}: "
                             f"{', '.join(repr(earlier.get(k)) for k in changed)}); use another --out, the same "
                             "settings to resume it, or --overwrite to start afresh")
    elif any(p.exists() for p in ours) and not overwrite:
        raise UsageError(f"{out} holds results but no {SETTINGS}; use another --out or pass --overwrite")
    if overwrite:
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    prepare_folder(out)
    atomic_write(settings, json.dumps(identity, indent=2))


def finalize(out: Path, found, methods, labels: dict, identity: dict, store: _Store, prep=None, source=None):
    """De-duplicate the parts into results.parquet (the images found, the methods asked for, in
    method then image order, with the true labels), and write the aggregate table, summary and
    curves, and with the preprocessing `prep` the report (write_report). Returns (evaluation or
    None when nothing is done, top-1 accuracy or None)."""

    pa = need_pyarrow()
    table = store.read()
    if table is None:
        return None, None
    ids = [image_id for image_id, _ in found]
    wanted = {(i, m) for i in ids for m in methods}
    first: dict[tuple[str, str], int] = {}
    for row, key in enumerate(zip(table.column("image").to_pylist(), table.column("method").to_pylist())):
        if (image_of(key[0]), key[1]) in wanted:  # a box's or region's row: its image
            first.setdefault(key, row)
    order = {m: k for k, m in enumerate(methods)}
    chosen = sorted(first, key=lambda key: (order[key[1]], key[0]))
    table = table.take(pa.array([first[key] for key in chosen], pa.int64()))
    true = [_label(labels, image_of(i)) for i in table.column("image").to_pylist()]
    table = table.add_column(1, "label", pa.array(true, pa.int64()))
    atomic_write(out / RESULTS, lambda tmp: pa.parquet.write_table(table, tmp))
    if not len(table):
        return None, None
    config = {**identity, "methods": methods, "provider": ", ".join(sorted(set(table.column("provider").to_pylist())))}
    evaluation = Evaluation(config)
    modes = tuple(c for m in MEASURES.values() if all(f"{c}_curve" in table.column_names for c in m.curve_names)
                  for c in m.curve_names)  # the curves of the measures this audit took
    columns = {k: table.column(k).to_pylist() for k in ("method", "steps") + tuple(f"{m}_curve" for m in modes)}
    for method in methods:
        rows = [k for k, m in enumerate(columns["method"]) if m == method]
        if rows:
            per = {mode: [np.asarray(columns[f"{mode}_curve"][k]) for k in rows] for mode in modes}
            taken = [columns["steps"][k] for k in rows]
            adaptive = identity.get("steps") == "auto" and taken[0] is not None  # (the random floor has none)
            evaluation.summaries[method] = summarize(method, per, "auto" if adaptive else taken[0],
                                                     identity.get("road_fractions", ROAD_FRACTIONS),
                                                     taken if adaptive else None)
    # the model's top-1 accuracy on labelled images (every method explains the same target)
    per_image = dict(zip(table.column("image").to_pylist(), zip(table.column("target").to_pylist(), true)))
    labelled = [t == y for t, y in per_image.values() if y is not None]
    # with --target the target is the forced class, not the model's top-1: no accuracy to report
    # (and a box's or region's class is not the image's label)
    rows = any(image_of(i) != i for i in per_image)
    accuracy = float(np.mean(labelled)) if labelled and identity.get("target") is None and not rows else None
    summary = {"config": config, "summary": [s.as_dict() for s in evaluation.summaries.values()],
               "recommendation": evaluation.recommendation(), "images": len(ids), "results": len(table),
               "complete": len({(image_of(i), m) for i, m in first}) == len(wanted), "labelled": len(labelled),
               "accuracy": accuracy,
               "failed": [{"image": i, "method": m, "error": e} for (i, m), e in sorted(store.errors.items())],
               **({"agreement": evaluation.agreement()} if evaluation.agreement_lines() else {})}
    atomic_write(out / SUMMARY, json.dumps(summary, indent=2))
    atomic_write(out / FILES["table"], "\n".join([evaluation.table(), *evaluation.agreement_lines(),
                                                  evaluation.recommendation()]) + "\n")
    plot_curves(evaluation, out / FILES["curves"])
    if prep is not None:
        write_report(out, evaluation, table, found, prep, source)
    return evaluation, accuracy


def write_report(out: Path, evaluation: Evaluation, table, found, prep, source) -> Path:
    """OUT/report.html and, for the images it shows, OUT/overlays/: the images where the methods
    disagree most (lowest mean rank correlation of their per-pixel maps, read back from
    OUT/attributions/), at most REPORT_IMAGES of them."""

    pa = need_pyarrow()
    columns = [f.name for f in table.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
    data = {k: table.column(k).to_pylist() for k in ("image", "method", "attribution", *columns)}
    records = [{k: data[k][i] for k in ("image", "method", *columns)} for i in range(len(table))]
    for r in records:
        if image_of(r["image"]) != r["image"]:  # a box's or region's row: its score, not a probability
            r["row"] = r["image"]
        else:
            r["probability"] = r.pop("score", None)
    boxes = dict(zip(data["image"], table.column("box").to_pylist())) if "box" in table.column_names else {}
    scores = dict(zip(data["image"], data.get("score", [])))
    classes = dict(zip(data["image"], data.get("target", [])))
    files: dict[str, dict[str, str]] = {}
    for image, method, relative in zip(data["image"], data["method"], data["attribution"]):
        files.setdefault(image, {})[method] = relative
    stems = dict(zip(files, _stems(list(files))))
    shown = ReportImages(out, prep.layout, evaluation.config.get("reduce", "sum"))

    def maps(image):  # every method's per-pixel map of one image, from its saved attribution
        return {m: shown.add(stems[image], m, np.load(out / relative)) for m, relative in files[image].items()}

    agree = {}
    for image in files:  # one image at a time: the maps of all images need not fit in memory
        agree[image] = agreement(maps(image))
        shown.maps.pop(stems[image], None)
    ranked = sorted(files, key=lambda i: (agree[i] is None, agree[i] if agree[i] is not None else 0.0))
    fs, _ = sources.filesystem(source) if source is not None else (None, None)
    paths = dict(found)
    for image in ranked[:REPORT_IMAGES]:
        maps(image)
        pixels = prep.to_pixels(_load_local(fs, paths[image_of(image)], prep, load_image))
        box = boxes.get(image)
        shown.image(stems[image], image, pixels, boxes=[box] if box else (),
                    caption=f"{classes.get(image)} {scores.get(image, float('nan')):.2f}" if box else "")
    shown.write()
    return evaluation_page(evaluation, out / FILES["report"], shown.results(), curves=out / FILES["curves"],
                           records=records, total_images=len(files),
                           title=f"gnl-onnx audit: {PurePosixPath(str(evaluation.config.get('model', ''))).name}")
