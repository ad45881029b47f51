"""One audit run: settings checked, the images listed, the work handed to an engine, the results
finalized (see the package docstring)."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..adaptive import FIXED_STEPS
from ..errors import UsageError
from ..evaluation import DEFAULT_METRICS, FILES, Evaluation, parse_methods, scoring
from ..intake import model_sha256, prepare
from ..output import progress as progress_bar
from ..metrics import BATCH_SIZE, CURVE_STEPS, DELETION_SUBSTRATE, INSERTION_SUBSTRATE
from ..road import FRACTIONS as ROAD_FRACTIONS
from ..road import NOISE as ROAD_NOISE
from ..road import span_of
from ..settings import Settings
from ..target_evaluation import is_row_target, prepared_for, target_metrics
from .engines import _run_local, _run_ray_started
from .layout import CRASH_ENV, RESULTS, SUMMARY
from .sources import list_images, need_pyarrow, need_ray, read_labels
from .store import _prepare_out, _Store, finalize



# -- the audit ---------------------------------------------------------------------------------
@dataclass
class AuditResult:
    out: Path
    evaluation: Evaluation | None
    images: int                   # images found
    keys: int                     # (image, method) pairs asked for
    computed: int                 # pairs computed by this run
    reused: int                   # pairs found done by an earlier run
    failed: dict = field(default_factory=dict)  # image id -> error (unreadable images)
    accuracy: float | None = None  # top-1 accuracy on the labelled images
    seconds: float = 0.0


def audit(model, images: str, out, prep, methods, engine: str = "local", address: str | None = None,
          workers: int | None = None, gpus_per_worker: float = 0, cpus_per_worker: float = 1, labels=None,
          overwrite: bool = False, images_per_batch: int | None = None, steps: int = 32,
          curve_steps: int = CURVE_STEPS, reduce: str = "sum", baseline: str = "zeros",
          integration: str = "gausslegendre", target: int | None = None, gate: str = "paper",
          output: str = "logit", memory_budget="auto", input: str | None = None, output_name: str | None = None,
          deletion_substrate=DELETION_SUBSTRATE, insertion_substrate=INSERTION_SUBSTRATE,
          batch_size: int = BATCH_SIZE, seed: int = 0, providers=None, threads: int | None = None,
          progress: bool = True, metrics=DEFAULT_METRICS, road_fractions=ROAD_FRACTIONS,
          road_noise: float = ROAD_NOISE, layer=None, settings: Settings | None = None) -> AuditResult:
    """Audit every image under `images` (a folder or URI) with `methods`; write OUT as the module
    docstring says and return what happened. Resumes an earlier audit in OUT with the same settings.
    metrics: "deletion,insertion" or "deletion,insertion,road" (ROAD's noise: road_noise of the
    preprocessing's pixel range, seeded by (seed, the image id))."""
    start = time.perf_counter()
    methods = parse_methods(methods)
    if engine not in ("local", "ray"):
        raise UsageError(f"engine must be 'local' or 'ray', got {engine!r}")
    need_pyarrow()
    ray = need_ray() if engine == "ray" else None
    if engine != "ray":
        given = [flag for flag, value in (("--address", address), ("--workers", workers),
                                          ("--gpus-per-worker", gpus_per_worker)) if value]
        if given:
            raise UsageError(f"{', '.join(given)} are for --engine ray; add --engine ray (the local engine uses "
                             "CUDA by itself when onnxruntime-gpu sees a GPU)")
    if settings is None:  # the run's settings, checked here, before any worker starts
        settings = Settings(steps=steps, baseline=baseline, integration=integration, gate=gate, output=output,
                            input=input, output_name=output_name, layer=layer, seed=seed, threads=threads,
                            providers=providers, memory_budget=memory_budget)
    run = settings.replace(black=prep.black(), layout=prep.layout, bounds=prep.bounds())
    steps, baseline, integration, gate, output = run.steps, run.baseline, run.integration, run.gate, run.output
    input, output_name, layer, seed, threads = run.input, run.output_name, run.layer, run.seed, run.threads
    providers, memory_budget = run.providers, run.memory_budget
    for name, value in (("workers", workers), ("images per batch", images_per_batch)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise UsageError(f"{name} must be a positive integer (got {value!r})")
    explained = run.output if is_row_target(run.output) else None  # a box or region target: one row each
    if explained is not None:
        metrics = target_metrics(metrics)
    checked = scoring(curve_steps, reduce, prep.layout, batch_size, deletion_substrate, insertion_substrate,
                      prep.black(), metrics, road_fractions, road_noise, span_of(prep),
                      seed)  # fails early on bad settings
    if checked.needs_masks and explained is None:
        raise UsageError(f"{', '.join(checked.needs_masks)} need a region mask per image, which evaluate reads "
                         "(--masks); audit takes none")
    # read, normalized and its batch made usable once: every worker (Ray actors too) gets this
    if explained is not None:  # the target reads the outputs it needs; the prepared model is every worker's
        prepared, explained = prepared_for(model, explained, input, output_name)
        explained.select(prepared)  # outputs that cannot hold the target: refused before anything is written
        run, output = run.replace(output=explained), explained.describe()
    else:
        prepared = prepare(model, input, output_name).for_rows
    model = prepared
    true_labels = read_labels(labels) if labels else {}
    root, found = list_images(images)
    identity = {"model": str(model), "model_sha256": model_sha256(model), "images": str(images),
                "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(prep).items()},
                "steps": steps if steps == "auto" else int(steps), "baseline": baseline, "integration": integration,
                "gate": gate, "output": output, "target": target, "seed": int(seed), "input": input,
                "output_name": output_name, **checked.config(), **({"layer": list(layer)} if layer else {}),
                **({"tolerance": run.tolerance} if steps == "auto" else {})}  # no key without: old runs resume
    out = Path(out)
    _prepare_out(out, identity, overwrite)
    store = _Store(out, checked.road_fractions if checked.road else None)
    store.load_done()
    rows = []
    for image_id, path in found:
        missing = [m for m in methods if (image_id, m) not in store.done]
        if missing:
            rows.append({"image": image_id, "path": path, "methods": ",".join(missing)})
    keys = len(found) * len(methods)
    pending = sum(r["methods"].count(",") + 1 for r in rows)
    # steps="auto": each image's points are its own (stored per row); batches are sized for FIXED_STEPS
    settings = {"model": prepared, "prep": prep, "methods": methods,
                "steps": FIXED_STEPS if steps == "auto" else int(steps), "baseline": baseline,
                "integration": integration, "gate": gate, "output": output, "target": target, "seed": int(seed),
                "input": input, "output_name": output_name, "memory_budget": memory_budget,
                "providers": providers, "batch_size": int(batch_size), **checked.config(),
                "crash_marker": os.environ.get(CRASH_ENV), "layer": list(layer) if layer else None,
                "run": run}  # the Settings (the keys above: the identity and engines' sizing read them)
    if rows:
        bar = _progress(pending) if progress else None

        def write(batch):
            n = store.write(batch)
            if bar is not None:
                bar.update(n + sum(1 for e in batch["error"] if e))

        try:
            if engine == "local":
                _run_local(rows, settings, root, images_per_batch, threads, write)
            else:
                _run_ray_started(ray, address, rows, settings, root, model, workers, gpus_per_worker,
                                 cpus_per_worker, images_per_batch, write)
        finally:
            if bar is not None:
                bar.close()
    evaluation, accuracy = finalize(out, found, methods, true_labels, identity, store, prep, images)
    failed = {}
    for (image_id, _), error in sorted(store.errors.items()):
        failed.setdefault(image_id, error)
    return AuditResult(out, evaluation, len(found), keys, store.written, keys - pending, failed, accuracy,
                       time.perf_counter() - start)


def _progress(total: int):
    bar = progress_bar(total, "audit")
    if bar is not None:
        bar.unit = "result"
    return bar


def audit_files(model, images, out, prep, methods, **options) -> int:
    """The `gnl-onnx audit` command: audit, print the table and what was done; 0 done, 1 some
    images could not be read."""
    result = audit(model, images, out, prep, methods, **options)
    if result.evaluation is not None:
        print(result.evaluation.table())
    for image_id, error in result.failed.items():
        print(f"skipped {image_id}: {error}")
    if result.accuracy is not None:
        print(f"top-1 accuracy on the labelled images: {result.accuracy:.4f}")
    print(f"{result.images} images x {len(parse_methods(methods))} methods: {result.computed} results computed now, "
          f"{result.reused} reused from earlier runs, in {result.seconds:.1f} s")
    print(f"wrote {result.out / RESULTS}, {result.out / SUMMARY}, {result.out / FILES['table']}, "
          f"{result.out / FILES['curves']}, {result.out / FILES['report']}")
    if result.evaluation is not None:
        for line in result.evaluation.agreement_lines():
            print(line)
        print(result.evaluation.recommendation())
    return 1 if result.failed else 0


__all__ = ["AuditResult", "audit", "audit_files"]
