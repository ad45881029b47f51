"""The evaluate command: which attribution method is most faithful to this model on these images?
Every method explains every image; each attribution is scored by deletion and insertion (and ROAD
when asked) through gnl_onnx.evaluation, a random attribution gives the floor, and the results are
written as CSV, JSON, a text table, a PNG of the mean curves and the HTML report, atomically, never
over existing files unless asked."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import gnl_onnx.road as road

from .errors import InputError, NonFiniteError, UsageError
from .evaluation import (ALL_METHODS, DEFAULT_METRICS, FILES, METRICS, RANDOM, Evaluation,  # noqa: F401 - also
                         MethodSummary, attribute, attribute_counted, explain_function, image_record,  # imported
                         parse_methods, parse_metrics, plot_curves, randomized_function, road_record,  # from
                         score_curves, scoring, summarize, write_csv)  # here
from .explainer import Explainer
from .images import find_images, is_array_file, load_all, read_mask  # noqa: F401 - find_images: imported from
# here by callers
from .intake import prepare
from .pixels import height_width
from .metrics import BATCH_SIZE, CURVE_STEPS, DELETION_SUBSTRATE, INSERTION_SUBSTRATE, Scorer
from .output import atomic_write, prepare_folder, progress, unique_stems
from .report import ReportImages, evaluation_page
from .settings import Settings
from .target_evaluation import evaluate_rows, is_row_target, prepared_for, target_metrics


BATCH = 8  # images per Explainer call; the Explainer still splits steps to the memory budget


def evaluate(model, images, methods=ALL_METHODS, steps: int = 32, curve_steps: int = CURVE_STEPS,
             reduce: str = "sum", baseline="zeros", black=None, layout: str | None = None,
             integration: str = "gausslegendre", target=None, gate: str = "paper", output: str = "logit",
             memory_budget="auto", input: str | None = None, output_name: str | None = None,
             deletion_substrate=DELETION_SUBSTRATE, insertion_substrate=INSERTION_SUBSTRATE,
             batch_size: int = BATCH_SIZE, seed: int = 0, names=None, progress=None, providers=None,
             threads: int | None = None, metrics=DEFAULT_METRICS, road_fractions=road.FRACTIONS,
             road_noise: float = road.NOISE, road_span=None, keep=None, bounds=None, layer=None,
             settings: Settings | None = None, masks=None) -> Evaluation:
    """Explain `images` (float32 [N, ...], the model's input) with every method and score each
    attribution by deletion and insertion, and by ROAD when metrics include "road" (road_span: the
    pixel range in the model's input space, road.span_of(preprocessing); None: 1.0, inputs in [0, 1];
    its noise is seeded by (seed, the image's position)). Every method explains the same class per image: the
    model's top-1 (or `target`), the class whose probability the curves track. "random" is a
    random attribution (seeded per image), the floor. `progress(n)` is called after each image.
    `providers` and `threads` go to every ONNX Runtime session (default: CUDA when present, all cores).
    keep(method, indices, attributions), when given, sees each batch's attributions (the report's overlays).
    bounds: (low, high) of the input for lrp_epsilon_gamma_box (Preprocessing.bounds(); None: 0 and 1).
    layer: the CAM methods' target layer(s) (value names; None: the default layer).
    masks: [N, H, W] region masks on the input's pixels, for the localisation measures (and only them).
    settings: the run's Settings (gnl_onnx/settings.py; its method is not read): with it, the
    keywords it holds (steps ... memory_budget) are not read.
    A box or region target as the output (settings.output or `output`: a DetectionBox, SegmentRegion,
    DenseRegion or BoxScoreMatch; `target` then names a region's class, None: the one whose region
    scores highest) makes every kept box, or every image's region, one row: the curves track that
    row's score (scorer.TargetScorer), pointing_game and relevance_mass read its region
    (gnl_onnx/target_evaluation.py); no box above the threshold: no rows, and config["note"] says why."""
    methods = parse_methods(methods)
    if settings is None:
        settings = Settings(steps=steps, baseline=baseline, integration=integration, gate=gate, output=output,
                            input=input, output_name=output_name, layer=layer, bounds=bounds, black=black,
                            layout=layout, seed=seed, threads=threads, providers=providers,
                            memory_budget=memory_budget)
    run = settings
    explained = run.output if is_row_target(run.output) else None  # a box or region: one row per box or region
    if explained is not None:
        if masks is not None:
            raise UsageError("--masks: a box or region target brings its own region; the localisation measures "
                             "read it")
        metrics = target_metrics(metrics)
    scored = scoring(curve_steps, reduce, run.layout, batch_size, deletion_substrate, insertion_substrate, run.black,
                       metrics, road_fractions, road_noise, road_span, run.seed)
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise UsageError(f"expected a batch of images [N, C, H, W] or [N, H, W, C], got shape {images.shape}")
    n = len(images)
    names = list(names) if names is not None else [str(i) for i in range(n)]
    if explained is not None:
        prepared, explained = prepared_for(model, explained, run.input, run.output_name)
        config = {"model": str(prepared), "methods": methods, "steps": run.steps, **scored.config(),
                  "baseline": run.baseline if isinstance(run.baseline, str) else "array",
                  "integration": run.integration, "gate": run.gate, "seed": run.seed}
        return evaluate_rows(prepared, images, explained, methods, run.replace(output=explained), scored, names,
                             target, progress, keep, config)[0]
    masks = _checked_masks(masks, scored, images.shape, run.layout)
    model = prepare(model, run.input, run.output_name)  # read and normalized once for the scorer and every method
    scorer = Scorer(model, input=run.input, output_name=run.output_name, providers=run.providers, threads=run.threads)
    probabilities = scorer.probabilities(images, batch_size)
    broken = ~np.isfinite(probabilities).all(axis=1)
    if broken.any():  # the curves would be NaN: say which images and stop before any method runs
        raise NonFiniteError(np.flatnonzero(broken), "forward").named(names)
    if target is None:
        targets = probabilities.argmax(axis=1)
    else:
        targets = np.broadcast_to(np.asarray(target, np.int64), (n,)).copy()
        if np.any(targets < 0) or np.any(targets >= probabilities.shape[1]):
            raise UsageError(f"target {target} is out of range: the model has {probabilities.shape[1]} classes")
    config = {"model": str(model),
              "methods": methods, "steps": run.steps, **({"tolerance": run.tolerance} if run.steps == "auto" else {}),
              **scored.config(),
              "baseline": run.baseline if isinstance(run.baseline, str) else "array", "integration": run.integration,
              "gate": run.gate, "output": run.output, "seed": run.seed, "provider": scorer.provider}
    if run.layer:
        config["layer"] = list(run.layer)
    evaluation = Evaluation(config)
    curves: dict[str, dict[str, list]] = {}
    for method in methods:
        explainer = None
        if method != RANDOM:
            explainer = Explainer(model, settings=run.for_method(method))
        adaptive = explainer is not None and explainer.adaptive is not None  # steps chosen per image
        per = curves.setdefault(method, {name: [] for m in scored.measures for name in m.curve_names})
        randomized = randomized_function(model, explainer, run.seed)  # built once, if a measure asks
        points = []  # steps="auto": the gradient points each image took
        for lo in range(0, n, BATCH):
            part = slice(lo, min(n, lo + BATCH))
            start = time.perf_counter()
            try:
                attributions, taken = attribute_counted(explainer, images[part], targets[part],
                                                        range(part.start, part.stop), run.seed)
            except NonFiniteError as e:
                raise e.named(names[part]) from None
            seconds = (time.perf_counter() - start) / (part.stop - part.start)
            if keep is not None:
                keep(method, range(part.start, part.stop), attributions)
            points.extend(taken)
            for i, steps_taken, row in zip(range(part.start, part.stop), taken,
                                           score_curves(scorer, images[part], attributions, targets[part], scored,
                                                        range(part.start, part.stop),
                                                        explain_function(explainer, run.seed),
                                                        None if masks is None else masks[part], randomized)):
                for mode in per:
                    per[mode].append(row[mode])
                evaluation.records.append({
                    "image": names[i], "method": method, "target": int(targets[i]),
                    "probability": float(probabilities[i, targets[i]]),
                    **image_record(row, scored, steps=steps_taken,
                                   attribution_seconds=round(seconds, 4))})
                if progress is not None:
                    progress(1)
        evaluation.summaries[method] = summarize(method, per, None if explainer is None else
                                                 "auto" if adaptive else explainer.steps, scored.road_fractions,
                                                 points if adaptive else None)
    return evaluation


def _mask_usage(wanted: tuple, given: bool):
    """Masks are given exactly when a localisation measure (`wanted`, by name) is asked for."""
    if wanted and not given:
        raise UsageError(f"{', '.join(wanted)} need a region mask per image: give --masks (a .npy or an image "
                         "per image, named as the image)")
    if given and not wanted:
        raise UsageError("--masks is read by the localisation measures only: add pointing_game, "
                         "relevance_mass(_accuracy) or relevance_rank_accuracy to --metrics")


def _checked_masks(masks, scored, shape, layout):
    """The region masks as [N, H, W] booleans, checked against the measures and the images."""
    _mask_usage(scored.needs_masks, masks is not None)
    if masks is None:
        return None
    hw = height_width(shape, layout)
    masks = np.asarray(masks) != 0
    if masks.shape != (shape[0], *hw):
        raise UsageError(f"the masks are shaped {list(masks.shape)}; give one [H, W] mask per image at the model "
                         f"input's size {hw[0]} x {hw[1]}")
    return masks


def find_masks(given, names, prep, hw) -> np.ndarray:
    """One region mask per image (read_mask: an .npy as it is, an image resized and cropped as the
    images are) from `given` files and folders, each matched to the image of the same file stem
    (cat.jpg: cat.npy, cat.png, ...) and checked to be hw (the model input's H, W); [N, H, W]
    booleans in the images' order."""
    found = {}
    for path in map(Path, given):
        if not path.exists():
            raise InputError(f"{path}: no such mask file or folder")
        for p in sorted(q for q in path.iterdir() if q.is_file()) if path.is_dir() else [path]:
            found.setdefault(p.stem, p)
    masks = []
    for name in names:
        stem = Path(str(name)).stem
        if stem not in found:
            raise UsageError(f"no mask for image {name}: give a file named {stem}.npy or {stem}.png in --masks")
        mask = read_mask(found[stem], prep)
        if mask.shape != tuple(hw):
            raise UsageError(f"{found[stem]}: the mask is {mask.shape[0]} x {mask.shape[1]}, the model input "
                             f"{hw[0]} x {hw[1]}; give an .npy of the input's size or an image of the photo's")
        masks.append(mask)
    return np.stack(masks)


def evaluate_to_folder(model, images, out: Path, prep, methods=ALL_METHODS, overwrite: bool = False, masks=None,
                       **options):
    """Evaluate image files; write FILES into `out`. Returns (evaluation, unreadable images, files)."""
    methods = parse_methods(methods)
    out = Path(out)
    planned = {k: out / name for k, name in FILES.items()}
    existing = [p for p in planned.values() if p.exists()]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --overwrite to replace")
    loaded, names, bad = load_all(images, prep)
    if not loaded:
        raise InputError(bad[0]["error"] if len(bad) == 1 else f"none of the {len(bad)} images could be read "
                         f"(first: {bad[0]['error']})")
    shapes = {a.shape for a in loaded}
    if len(shapes) > 1:
        raise UsageError(f"the images came out in different shapes {sorted(shapes)}; give --crop or --size H W "
                         "so that every image fits the model")
    settings = options.get("settings")
    rows = is_row_target(settings.output if settings is not None else options.get("output"))
    if not rows:  # a box or region target brings its own regions (evaluate refuses --masks there)
        _mask_usage(scoring(metrics=options.get("metrics", DEFAULT_METRICS)).needs_masks, bool(masks))
    regions = find_masks(masks, names, prep, height_width(loaded[0].shape, prep.layout)) if masks else None
    # (read and checked before anything is written)
    stems = unique_stems(names)  # the report: OUT/overlays/<stem>.png and <stem>.<method>.png, then report.html
    shown = ReportImages(out, prep.layout, options.get("reduce", "sum"))
    taken = [p for p in shown.planned(stems, methods) if p.exists()] if not rows else []
    if taken and not overwrite:
        raise UsageError(f"{taken[0]} exists (and {len(taken) - 1} more); pass --overwrite to replace")
    if rows:  # one entry per box or region (<stem>.box0, <stem>.region), known once they are found
        explained = settings.output if settings is not None else options["output"]
        ask = settings if settings is not None else Settings()
        prepared, explained = prepared_for(model, explained, ask.input, ask.output_name)
        explained.select(prepared)  # outputs that cannot hold the target: refused before anything is written
        keep = shown.row_keeper(names, [prep.to_pixels(array) for array in loaded], options.pop("labels", None))
    else:
        for stem, name, array in zip(stems, names, loaded):
            shown.image(stem, name, prep.to_pixels(array))
        keep = shown.keeper(stems)
    prepare_folder(out)
    bar = progress(len(methods) * len(loaded), "evaluate")
    options.setdefault("road_span", road.span_of(prep))  # ROAD's noise: a fraction of the pixel range
    try:
        evaluation = evaluate(model, np.concatenate(loaded), methods, black=prep.black(), layout=prep.layout,
                              bounds=prep.bounds(),
                              names=names, progress=bar.update if bar is not None else None,
                              keep=keep, masks=regions, **options)
    finally:
        if bar is not None:
            bar.close()
    taken = [p for p in shown.planned(list(shown.names), methods) if p.exists()] if rows else []
    if taken and not overwrite:  # the rows' overlays, named once the boxes were found: still before any write
        raise UsageError(f"{taken[0]} exists (and {len(taken) - 1} more); pass --overwrite to replace")
    evaluation.config["skipped"] = bad
    write_csv(evaluation, planned["csv"])
    atomic_write(planned["json"], json.dumps(evaluation.as_dict(), indent=2))
    atomic_write(planned["table"], evaluation.table() + "\n" + evaluation.recommendation() + "\n")
    plot_curves(evaluation, planned["curves"])
    shown.write()
    evaluation_page(evaluation, planned["report"], shown.results(), curves=planned["curves"],
                    total_images=len(stems), title=f"gnl-onnx evaluate: {Path(str(model)).name}")
    return evaluation, bad, planned


def evaluate_files(model, images, out: Path, prep, methods, overwrite=False, **options) -> int:
    """The `gnl-onnx evaluate` command: evaluate, print the table and the recommendation; 0 done,
    1 some images could not be read."""
    evaluation, bad, files = evaluate_to_folder(model, images, out, prep, methods, overwrite, **options)
    if evaluation.config.get("note"):  # no box above the threshold, or images whose region is empty
        print(evaluation.config["note"])
    print(evaluation.table())
    for b in bad:
        print(f"skipped {b['image']}: {b['error']}")
    for line in evaluation.agreement_lines():
        print(line)
    print(f"wrote {', '.join(str(p) for p in files.values())}")
    print(evaluation.recommendation())
    return 1 if bad else 0


__all__ = ["evaluate", "evaluate_to_folder", "evaluate_files", "Evaluation", "MethodSummary", "parse_methods",
           "parse_metrics", "find_images", "ALL_METHODS", "METRICS", "DEFAULT_METRICS", "FILES", "RANDOM"]
