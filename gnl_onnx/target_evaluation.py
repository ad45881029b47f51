"""Faithfulness and localisation of a box or region target, the service under `evaluate` (and
`audit`) when --target names a detector's boxes (box...), a segmenter's region (segment...), a
dense map's region (dense...) or given post-processed boxes (BoxScoreMatch, from the API).

Every kept box, or every image's region, is one row: the method explains that row's score (the
target's scalar, as `explain --target` explains it), and deletion, insertion and ROAD track that
same score on the perturbed images through scorer.TargetScorer, the target's own explained graph
(its docstring says what a perturbed image's score is when its box may no longer be kept). The
localisation measures need no --masks: each row brings its region on the input's pixels (the
box's pixels, or the region mask at the image fitted to the input by nearest pixel), and
pointing_game (Quantus's, gnl_onnx/scores.py) and relevance_mass (the positive part's share inside,
0..1, gnl_onnx/localisation.py, as explain reports it) are always taken; Quantus's signed
relevance_mass_accuracy, which leaves 0..1 where the map has both signs, when asked."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from .box_targets import BoxScoreMatch, DetectionBox
from .detection import find_boxes, prepare_detector, pyramid_layers
from .errors import NonFiniteError, UsageError
from .evaluation import Evaluation, attribute_counted, image_record, summarize
from .explainer import Explainer
from .intake import prepare, read_model
from .localisation import box_region, fitted_region
from .measures import RANDOM
from .methods import get_method
from .pixels import height_width, ranking, reduce_to_pixels
from .scorer import TargetScorer
from .targets import MapRegion, Target

# the measures a target's scalar score allows: those that read the score (not class probabilities),
# the region, or the map alone; the localisation measures are always taken (the region is known)
TARGET_METRICS = ("deletion", "insertion", "road", "pointing_game", "relevance_mass", "relevance_mass_accuracy",
                  "relevance_rank_accuracy", "sparseness", "complexity")
LOCALISATION = ("pointing_game", "relevance_mass")  # as explain --target reports them
BATCH = 8  # rows per Explainer call


def is_row_target(target) -> bool:
    """Whether `target` is explained row by row (a box or a region), not as a class score."""
    return isinstance(target, (DetectionBox, MapRegion, BoxScoreMatch))


def target_metrics(metrics) -> tuple:
    """The metrics asked for, checked for a box or region target, with the localisation measures added."""
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    refused = [m for m in names if m and m not in TARGET_METRICS]
    if refused:
        raise UsageError(f"--metrics {', '.join(refused)}: a box or region target is scored by "
                         f"{', '.join(TARGET_METRICS)} (the others read class probabilities)")
    return tuple(dict.fromkeys([*filter(None, names), *LOCALISATION]))


@dataclass
class Row:
    """One explained box or region: the image's position, the column or channel of the target's
    explained output (`chosen`), the class, the target's score at the image, its region on the
    input's pixels [H, W], and the box (x0, y0, x1, y1) where there is one."""
    image: int
    chosen: int
    label: int
    score: float
    region: np.ndarray
    name: str = ""  # "box0", "region": with the image's name, the row's name
    box: tuple | None = None
    boxes: tuple = ()  # BoxScoreMatch's given boxes, to draw
    reference: np.ndarray | None = None  # the explained output at the image (a region target reads its region there)


def prepared_for(model, target: Target, input: str | None = None, output_name: str | None = None):
    """(the model prepared for `target`, the target with the output it reads named)."""
    if isinstance(target, DetectionBox):
        return prepare_detector(model, target, input)
    if isinstance(target, MapRegion):
        return prepare(model, input, target.output_name or output_name), target
    first = output_name or read_model(model).graph.output[0].name  # a target that reads outputs by name
    return prepare(model, input, first), target


def find_rows(scorer: TargetScorer, prepared, images, target, chosen=None, layout: str | None = None,
              providers=None, threads=None) -> tuple[list[Row], str]:
    """The rows of every image (image order, then score) and a note on what was left out (no box
    above the threshold, an empty region). chosen: a region's class (None: the one whose region
    scores highest, as explain takes it)."""
    hw = height_width(images.shape, layout)
    if isinstance(target, DetectionBox):
        boxes, note = find_boxes(prepared, images, target, providers, threads)
        counts: dict[int, int] = {}
        rows = []
        for box in boxes:
            k = counts[box.image] = counts.get(box.image, -1) + 1
            rows.append(Row(box.image, box.index, box.label, box.score, box_region(box.xyxy, hw), f"box{k}", box.xyxy))
        return rows, note
    explained = scorer.explained(images)
    if isinstance(target, BoxScoreMatch):
        region = np.zeros(hw, bool)
        for b in target.boxes:
            region |= box_region(b, hw)
        return [Row(i, 0, 0, float(explained[i, 0]), region, "boxes", boxes=target.boxes)
                for i in range(len(images))], ""
    region = np.broadcast_to(target.region_np(explained), explained.shape)
    classes = (explained * region).sum(axis=(2, 3)).argmax(axis=1) if chosen is None else None
    rows, empty = [], []
    for i in range(len(images)):
        c = int(chosen if chosen is not None else classes[i])
        if not 0 <= c < explained.shape[1]:
            raise UsageError(f"target class {c} is out of range: the map has {explained.shape[1]} channels")
        pixels = fitted_region(target.region_at(explained[i], c), hw)
        if not pixels.any():
            empty.append(i)
            continue
        score = float(target.score(explained[i:i + 1], np.array([c]))[0])
        rows.append(Row(i, c, c, score, np.array(pixels), "region", reference=explained[i]))
    note = f"{len(empty)} image(s) have an empty region: nothing to evaluate there" if empty else ""
    return rows, note


def evaluate_rows(prepared, images, target, methods, run, scored, names, chosen=None, progress=None, keep=None,
                  config=None) -> tuple[Evaluation, list[Row]]:
    """Every method explains every row; each attribution is scored by `scored`'s measures on the
    row's score (TargetScorer) and region. Returns (the Evaluation: one record per row and method,
    summaries per method over the rows; the rows). keep(method, rows, attributions) sees
    each batch's maps (the report's overlays). config: the Evaluation's settings to add to."""
    scorer = TargetScorer(prepared, target, run.providers, run.threads)
    rows, note = find_rows(scorer, prepared, images, target, chosen, run.layout, run.providers, run.threads)
    evaluation = Evaluation({**(config or {}), "target": target.describe(), "rows": len(rows),
                             "provider": scorer.provider, **({"note": note} if note else {})})
    for method in methods if rows else ():
        explainer = None if method == RANDOM else Explainer(prepared,
                                                            settings=row_settings(run, method, prepared, target))
        per = {name: [] for m in scored.measures for name in m.curve_names}
        for lo in range(0, len(rows), BATCH):
            part = rows[lo:lo + BATCH]
            x = images[[r.image for r in part]]
            wanted = np.array([r.chosen for r in part], np.int64)
            start = time.perf_counter()
            try:
                attributions, taken = attribute_counted(explainer, x, wanted, range(lo, lo + len(part)), run.seed)
            except NonFiniteError as e:
                raise e.named([f"{names[r.image]} {r.name}" for r in part]) from None
            seconds = round((time.perf_counter() - start) / len(part), 4)
            if keep is not None:
                keep(method, part, attributions)
            for k, row in enumerate(part):
                curves = score_row(scorer, x[k:k + 1], attributions[k:k + 1], row, scored, lo + k)
                for mode in per:
                    per[mode].append(curves[mode])
                evaluation.records.append(row_record(row, names, method, image_record(curves, scored, steps=taken[k],
                                                                                 attribution_seconds=seconds)))
                if progress is not None:
                    progress(1)
        evaluation.summaries[method] = summarize(method, per, None if explainer is None else explainer.steps,
                                                 scored.road_fractions)
    return evaluation, rows


def score_row(scorer: TargetScorer, image, attribution, row: Row, scored, key) -> dict:
    """One row's curves by every measure of `scored`: deletion, insertion and ROAD on the row's
    score (the region read at the unperturbed image), the localisation measures on its region."""
    bound = scorer.at(row.reference)
    order = _order(attribution, scored)
    found = {}
    for measure in scored.measures:
        found.update(measure.curves(bound, image, order, row.chosen, key, scored, attribution=attribution,
                                    mask=row.region))
    return found


def _order(attribution, scored):
    return ranking(reduce_to_pixels(attribution, scored.layout, scored.reduce))


def row_record(row: Row, names, method: str, numbers: dict) -> dict:
    """One row's record: the image, the row, the method, the class and score, the box, then the numbers."""
    record = {"image": names[row.image], "row": f"{names[row.image]} {row.name}", "method": method,
              "target": row.label, "score": row.score}
    if row.box is not None:
        record["box"] = [round(float(v), 2) for v in row.box]
    record["region_pixels"] = int(row.region.sum())
    return {**record, **numbers}


def row_settings(run, method: str, prepared, target):
    """The run's settings for one method on the target; a CAM method on a detector defaults to its
    feature pyramid's layers (detection.pyramid_layers), as explain takes them."""
    settings = run.for_method(method).replace(output=target)
    if isinstance(target, DetectionBox) and get_method(method).takes_layer and not settings.layer:
        settings = settings.replace(layer=tuple(pyramid_layers(prepared, target)))
    return settings


ROW_ID = re.compile(r"(.*)#(box\d+|region|boxes)")  # an audit's row id: "<image id>#box0", "<image id>#region"


def row_id(image_id: str, row: Row) -> str:
    return f"{image_id}#{row.name}"


def image_of(key: str) -> str:
    """The image id of an audit's row id (an image id is its own)."""
    found = ROW_ID.fullmatch(str(key))
    return found[1] if found else str(key)


__all__ = ["LOCALISATION", "TARGET_METRICS", "Row", "evaluate_rows", "find_rows", "image_of", "is_row_target",
           "prepared_for", "row_id", "row_record", "row_settings", "score_row", "target_metrics"]
