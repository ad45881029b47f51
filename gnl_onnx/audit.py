"""Audit a whole data set: every image explained by every method and scored by deletion and
insertion (as `evaluate` does), at any scale. The images are a folder or any path pyarrow and Ray
Data read (s3://, gs://, ...); the work runs in this process (engine "local") or as Ray Data
map_batches over a pool of actors, each holding one ONNX Runtime session per method and one for
scoring for its lifetime (engine "ray": one actor per CPU, or per GPU with CUDA).

Restartable: results are keyed by (image id, method). The driver writes each finished batch as
one Parquet part file in OUT/parts/ and each attribution as OUT/attributions/METHOD/ID.npy, all
atomically (temporary name, then rename), so a killed run (or worker) loses only batches in
flight; a rerun with the same OUT reads the parts and computes only the missing keys. At the end
the parts are de-duplicated into OUT/results.parquet, with the aggregate table, summary and mean
curves that `evaluate` writes.

With metrics including "road", every attribution is scored by ROAD too (gnl_onnx.road; its noise
seeded by the image id, like the random floor): more columns, same rows.

Ray and pyarrow are extras, imported on use only.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .attribution import METHODS
from .check import model_sha256
from .errors import GnlOnnxError, InputError, UsageError
from .intake import prepare
from .evaluate import (
    DEFAULT_METRICS,
    FILES,
    IMAGE_SUFFIXES,
    RANDOM,
    Evaluation,
    attribute,
    parse_methods,
    plot_curves,
    score_curves,
    scoring,
    summarize,
)
from .road import FRACTIONS as ROAD_FRACTIONS
from .road import NOISE as ROAD_NOISE
from .road import auc as road_auc
from .road import span_of
from .metrics import BATCH_SIZE, CURVE_STEPS, DELETION_SUBSTRATE, INSERTION_SUBSTRATE, auc
from .report import OVERLAYS

RESULTS, SETTINGS, SUMMARY, PARTS, ATTRIBUTIONS = ("results.parquet", "audit.json", "summary.json", "parts",
                                                   "attributions")
MAX_BATCH = 64  # images per batch at most: a killed worker loses at most this much work
# Test hook: the path of a file holding one image id. The worker whose batch holds that image
# claims the file (deletes it) and exits the process before returning the batch, once.
CRASH_ENV = "GNL_ONNX_AUDIT_CRASH_ON"
# What changes results: an OUT audited with other values cannot be resumed.
IDENTITY = ("model_sha256", "preprocessing", "steps", "baseline", "integration", "gate", "output", "target",
            "seed", "input", "output_name", "curve_steps", "reduce", "deletion_substrate", "insertion_substrate",
            "metrics", "road_fractions", "road_noise")  # the last three only with ROAD: older OUTs resume


def need_pyarrow():
    try:
        import pyarrow
        import pyarrow.fs
        import pyarrow.parquet
    except ImportError:
        raise UsageError("the audit writes Parquet and needs pyarrow: pip install 'gnl-onnx[audit]'") from None
    return pyarrow


def need_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'gnl-onnx[ray]' (or use --engine local)") from None
    return ray


# -- the images --------------------------------------------------------------------------------
def filesystem(source: str):
    """(pyarrow filesystem, root path inside it) of a folder or a URI."""
    pa = need_pyarrow()
    text = str(source)
    try:
        if "://" in text:
            return pa.fs.FileSystem.from_uri(text)
        return pa.fs.LocalFileSystem(), os.path.abspath(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise UsageError(f"cannot read images from {text}: {e}; give a folder or a URI that pyarrow and Ray "
                         "read (s3://, gs://, hdfs://, ...)") from None


def list_images(source: str) -> tuple[str, list[tuple[str, str]]]:
    """Every image file under `source` (recursively, hidden files and folders skipped): (root,
    [(image id, path)]) sorted by id, the id being the path relative to the root (with '/')."""
    pa = need_pyarrow()
    fs, root = filesystem(source)
    try:
        info = fs.get_file_info(root)
        if info.type != pa.fs.FileType.Directory:
            raise UsageError(f"{source}: no such folder of images; give --images a folder or a URI of one")
        entries = fs.get_file_info(pa.fs.FileSelector(root, recursive=True))
    except OSError as e:
        raise InputError(f"cannot list {source}: {e}") from None
    found = []
    for entry in entries:
        relative = PurePosixPath(entry.path).relative_to(PurePosixPath(root))
        if (entry.type == pa.fs.FileType.File and relative.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in relative.parts)):
            found.append((relative.as_posix(), entry.path))
    if not found:
        raise InputError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or below it")
    return root, sorted(found)


def read_labels(path) -> dict[str, int]:
    """A CSV file with the header "image,label": the image's id (its path relative to --images, or
    just its file name) and its true class index (blank: unlabelled)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise InputError(f"cannot read labels file {path}: {e.strerror}") from None
    labels = {}
    for line, row in enumerate(rows, start=2):
        try:
            if row["label"].strip():
                labels[row["image"].strip()] = int(row["label"])
        except (KeyError, AttributeError, TypeError, ValueError):
            raise InputError(f"{path}, line {line}: expected a CSV with the header image,label and rows like "
                             "'cat_001.png,281' (the image's path relative to --images, its class index)") from None
    return labels


def _label(labels: dict, image_id: str):
    return labels.get(image_id, labels.get(PurePosixPath(image_id).name))


def image_key(image_id: str) -> int:
    """A stable number per image id: seeds its random floor and noise whatever batch it runs in."""
    return zlib.crc32(image_id.encode("utf-8"))


# -- the worker --------------------------------------------------------------------------------
class AuditWorker:
    """Holds one Scorer and one Explainer per method for its lifetime (a Ray actor, or the local
    engine's single instance). Called with a batch {"image", "path", "methods"} (methods: the
    comma-separated ones still to do for that image), it returns one row per (image, method)."""

    def __init__(self, settings: dict, source: str, providers=None, threads: int | None = None):
        from .explain import Explainer
        from .metrics import Scorer

        s = self.settings = settings
        self.fs, _ = filesystem(source)
        self.scoring = scoring(s["curve_steps"], s["reduce"], s["prep"].layout, s["batch_size"],
                               s["deletion_substrate"], s["insertion_substrate"], s["prep"].black(),
                               s.get("metrics", DEFAULT_METRICS), s.get("road_fractions", ROAD_FRACTIONS),
                               s.get("road_noise", ROAD_NOISE), span_of(s["prep"]), s["seed"])
        self.scorer = Scorer(s["model"], input=s["input"], output_name=s["output_name"], providers=providers,
                             threads=threads)
        self.explainers = {m: None if m == RANDOM else Explainer(
            s["model"], method=m, steps=s["steps"], baseline=s["baseline"], integration=s["integration"],
            memory_budget=s["memory_budget"], gate=s["gate"], output=s["output"], input=s["input"],
            black=s["prep"].black(), layout=s["prep"].layout, output_name=s["output_name"], seed=s["seed"],
            bounds=s["prep"].bounds(), providers=providers, threads=threads,
            layer=s.get("layer") if METHODS[m].cam else None) for m in s["methods"]}

    def _load(self, path: str) -> np.ndarray:
        from pyarrow.fs import LocalFileSystem

        from .images import load_image

        if isinstance(self.fs, LocalFileSystem):
            return load_image(path, self.settings["prep"])
        with tempfile.TemporaryDirectory() as folder:  # load_image reads files: fetch a copy
            local = os.path.join(folder, "image" + PurePosixPath(path).suffix)
            try:
                with self.fs.open_input_stream(path) as remote, open(local, "wb") as f:
                    shutil.copyfileobj(remote, f)
                return load_image(local, self.settings["prep"])
            except OSError as e:
                raise InputError(f"{path}: cannot read ({e})") from None
            except InputError as e:
                raise InputError(str(e).replace(local, path)) from None

    def _attributions(self, method: str, images, targets, ids) -> np.ndarray:
        explainer = self.explainers[method]
        keys = [image_key(i) for i in ids]
        if explainer is not None and (explainer.spec.path == "noise" or (
                explainer.spec.path == "line" and explainer.baseline == "noise")):
            # SmoothGrad's noise and the noise baseline are drawn per call: one image per call,
            # seeded by its id, so the result does not depend on which batch the image is in
            results = []
            for k, key in enumerate(keys):
                explainer.seed = int(self.settings["seed"]) * 2 ** 32 + key
                results.append(explainer.explain(images[k:k + 1], targets[k:k + 1]).attributions)
            explainer.seed = self.settings["seed"]
            return np.concatenate(results)
        return attribute(explainer, images, targets, keys, self.settings["seed"])

    def __call__(self, batch: dict) -> dict:
        s = self.settings
        rows = _Rows(s["curve_steps"], len(self.scoring.road_fractions) if self.scoring.road else 0)
        ids, loaded, todo = [], [], []
        for image_id, path, methods in zip(batch["image"], batch["path"], batch["methods"]):
            image_id, methods = str(image_id), str(methods).split(",")
            try:
                loaded.append(self._load(str(path)))
            except InputError as e:
                for method in methods:
                    rows.failed(image_id, method, str(e))
                continue
            ids.append(image_id)
            todo.append(set(methods))
        if loaded:
            shapes = {a.shape for a in loaded}
            if len(shapes) > 1:
                raise UsageError(f"the images came out in different shapes {sorted(shapes)}; give --crop or "
                                 "--size H W so that every image fits the model")
            images = np.concatenate(loaded)
            probabilities = self.scorer.probabilities(images, s["batch_size"])
            targets = (probabilities.argmax(axis=1) if s["target"] is None
                       else np.full(len(images), s["target"], np.int64))
            if np.any((targets < 0) | (targets >= probabilities.shape[1])):
                raise UsageError(f"target {s['target']} is out of range: the model has {probabilities.shape[1]} "
                                 "classes")
            for method in s["methods"]:
                which = [k for k in range(len(ids)) if method in todo[k]]
                if not which:
                    continue
                start = time.perf_counter()
                attributions = self._attributions(method, images[which], targets[which], [ids[k] for k in which])
                seconds = (time.perf_counter() - start) / len(which)
                curves = score_curves(self.scorer, images[which], attributions, targets[which], self.scoring,
                                      [image_key(ids[k]) for k in which])  # ROAD's noise: seeded by the id
                explainer = self.explainers[method]
                for k, attribution, curve in zip(which, attributions, curves):
                    rows.add(ids[k], method, int(targets[k]), float(probabilities[k, targets[k]]), curve,
                             None if explainer is None else explainer.steps, seconds, self.scorer.provider,
                             attribution)
        self._maybe_crash(list(map(str, batch["image"])))
        return rows.columns()

    def _maybe_crash(self, ids):
        marker = self.settings.get("crash_marker")
        if not marker:
            return
        try:
            with open(marker, encoding="utf-8") as f:
                victim = f.read().strip()
            if victim in ids:
                os.remove(marker)  # only one process can claim it
                os._exit(17)
        except OSError:
            pass


class _Rows:
    """Columns of a worker's output: one row per (image, method), a failed image with its error
    and no numbers."""

    def __init__(self, curve_steps: int, road_points: int = 0):
        self.n = curve_steps + 1
        self.road_points = road_points  # ROAD fractions; 0: ROAD not measured, no road columns
        self.data = {k: [] for k in ("image", "method", "target", "score", "steps", "attribution_seconds",
                                     "provider", "deletion_curve", "insertion_curve", "npy", "error")}
        if road_points:
            self.data.update(road_morf_curve=[], road_lerf_curve=[])

    def add(self, image, method, target, score, curves, steps, seconds, provider, attribution):
        from io import BytesIO

        buffer = BytesIO()
        np.save(buffer, attribution[None])  # [1, ...]: the model's input layout, as `explain` saves it
        for k, v in (("image", image), ("method", method), ("target", target), ("score", score),
                     ("steps", -1 if steps is None else steps), ("attribution_seconds", seconds),
                     ("provider", provider), ("deletion_curve", curves["deletion"]),
                     ("insertion_curve", curves["insertion"]), ("npy", buffer.getvalue()), ("error", "")):
            self.data[k].append(v)
        if self.road_points:
            self.data["road_morf_curve"].append(curves["road_morf"])
            self.data["road_lerf_curve"].append(curves["road_lerf"])

    def failed(self, image, method, error):
        nan = {"deletion": np.full(self.n, np.nan), "insertion": np.full(self.n, np.nan),
               "road_morf": np.full(self.road_points, np.nan), "road_lerf": np.full(self.road_points, np.nan)}
        self.add(image, method, -1, math.nan, nan, None, 0.0, "", np.zeros(0))
        self.data["npy"][-1], self.data["error"][-1] = b"", error

    def columns(self) -> dict:
        d = self.data
        out = {k: np.array(d[k], dtype=object) for k in ("image", "method", "provider", "npy", "error")}
        out.update(target=np.array(d["target"], np.int64), score=np.array(d["score"], np.float64),
                   steps=np.array(d["steps"], np.int64),
                   attribution_seconds=np.array(d["attribution_seconds"], np.float64))
        for k in ("deletion_curve", "insertion_curve"):
            out[k] = np.array(d[k], np.float64).reshape(len(d[k]), self.n)
        if self.road_points:
            for k in ("road_morf_curve", "road_lerf_curve"):
                out[k] = np.array(d[k], np.float64).reshape(len(d[k]), self.road_points)
        return out


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

    def write(self, batch: dict):
        """One finished batch: its attributions, then its part file (so a part never names a
        missing .npy); keys done already (a retried batch) are dropped."""
        from .report import atomic_write

        pa = need_pyarrow()
        keep = []
        for i, (image, method, error) in enumerate(zip(batch["image"], batch["method"], batch["error"])):
            key = (str(image), str(method))
            if error:
                self.errors[key] = str(error)
            elif key not in self.done:
                self.done.add(key)
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
        table = pa.table({
            "image": pa.array([str(batch["image"][i]) for i in keep], pa.string()),
            "method": pa.array([str(batch["method"][i]) for i in keep], pa.string()),
            "target": pa.array(batch["target"][keep], pa.int64()),
            "score": pa.array(batch["score"][keep], pa.float64()),
            "deletion_auc": pa.array([auc(c) for c in batch["deletion_curve"][keep]], pa.float64()),
            "insertion_auc": pa.array([auc(c) for c in batch["insertion_curve"][keep]], pa.float64()),
            "steps": pa.array([None if s < 0 else s for s in steps], pa.int64()),
            "attribution_seconds": pa.array(batch["attribution_seconds"][keep], pa.float64()),
            "provider": pa.array([str(batch["provider"][i]) for i in keep], pa.string()),
            "attribution": pa.array(paths, pa.string()),
            "deletion_curve": pa.array([c.tolist() for c in batch["deletion_curve"][keep]], pa.list_(pa.float64())),
            "insertion_curve": pa.array([c.tolist() for c in batch["insertion_curve"][keep]],
                                        pa.list_(pa.float64()))})
        if "road_morf_curve" in batch:  # ROAD: its AUCs beside deletion's, its curves at the end
            morf = [road_auc(c, self.road_fractions) for c in batch["road_morf_curve"][keep]]
            lerf = [road_auc(c, self.road_fractions) for c in batch["road_lerf_curve"][keep]]
            at = table.schema.get_field_index("steps")
            for name, values in (("road_difference", np.subtract(lerf, morf)), ("road_lerf_auc", lerf),
                                 ("road_morf_auc", morf)):
                table = table.add_column(at, name, pa.array(values, pa.float64()))
            for k in ("road_morf_curve", "road_lerf_curve"):
                table = table.append_column(k, pa.array([c.tolist() for c in batch[k][keep]], pa.list_(pa.float64())))
        atomic_write(self.parts / f"part-{uuid.uuid4().hex}.parquet", lambda tmp: pa.parquet.write_table(table, tmp))
        self.written += len(keep)
        return len(keep)


def _prepare_out(out: Path, identity: dict, overwrite: bool):
    """Check that OUT is new or holds an audit with the same settings (else --overwrite clears it)."""
    from .pipeline import prepare_folder
    from .report import atomic_write

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


# -- engines -----------------------------------------------------------------------------------
def _batches(rows: list[dict], size: int):
    for lo in range(0, len(rows), size):
        part = rows[lo:lo + size]
        yield {k: np.array([r[k] for r in part], dtype=object) for k in ("image", "path", "methods")}


def _run_local(rows, settings, source, images_per_batch, threads, write):
    worker = AuditWorker(settings, source, settings["providers"], threads)
    row_bytes = max((e.row_bytes for e in worker.explainers.values() if e is not None), default=None)
    for batch in _batches(rows, images_per_batch or batch_images(row_bytes, settings, len(rows), 1)):
        write(worker(batch))


def _run_ray(rows, settings, source, batch_size, workers, gpus_per_worker, cpus_per_worker, write):
    ray = need_ray()
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False  # the audit shows its own
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # failures come back as one line, below
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / batch_size)))
    # CUDA named explicitly on GPU workers: without onnxruntime-gpu this fails instead of running on the CPU
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpus_per_worker else settings["providers"]
    with warnings.catch_warnings():
        # Ray Data restarts a dead actor and retries its batches, by default forever; 3 retries
        # end a run whose batch kills every worker. Ray 2.60 has no named parameter for it.
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        results = dataset.map_batches(
            AuditWorker, batch_size=batch_size, batch_format="numpy",
            fn_constructor_kwargs={"settings": settings, "source": source, "providers": providers,
                                   "threads": max(1, int(cpus_per_worker))},
            # two batches in flight per actor: it never idles, and a killed actor loses at most these
            compute=ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
            num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None, max_task_retries=3)
    # streaming: batches arrive as they finish, with back-pressure up the pipeline, and are
    # written before the next is taken, so nothing has to fit in memory at once
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        write(batch)


def _worker_count(ray, workers, gpus_per_worker, cpus_per_worker) -> int:
    if workers:
        return int(workers)
    resources = ray.cluster_resources()
    if gpus_per_worker:
        count = int(resources.get("GPU", 0) // gpus_per_worker)
        if count < 1:
            raise UsageError(f"the Ray cluster has {resources.get('GPU', 0)} GPUs, too few for one worker of "
                             f"{gpus_per_worker}; drop --gpus-per-worker or connect to a cluster with GPUs")
        return count
    return max(1, int(resources.get("CPU", 1) // cpus_per_worker))


def row_bytes(model, settings) -> int | None:
    """Memory of one image at one step in an attribution run (None when only random is asked)."""
    from .attribution import attribution_info, attribution_model

    method = next((m for m in settings["methods"] if m != RANDOM), None)
    if method is None:
        return None
    return attribution_info(attribution_model(model, method=method, gate=settings["gate"], output=settings["output"],
                                              input=settings["input"], output_name=settings["output_name"]))[
        "bytes_per_row"]


def batch_images(row_bytes: int | None, settings, pending: int, workers: int) -> int:
    """Images per batch: as many as one ONNX Runtime run of all steps holds within the memory
    budget, at most MAX_BATCH, and small enough that every worker gets about 4 batches."""
    from .explain import parse_bytes

    fit = MAX_BATCH
    if row_bytes:
        fit = max(1, parse_bytes(settings["memory_budget"]) // row_bytes // (settings["steps"] + 1))
    return int(max(1, min(fit, MAX_BATCH, math.ceil(pending / (4 * workers)))))


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
          output: str = "logit", memory_budget="2GB", input: str | None = None, output_name: str | None = None,
          deletion_substrate=DELETION_SUBSTRATE, insertion_substrate=INSERTION_SUBSTRATE,
          batch_size: int = BATCH_SIZE, seed: int = 0, providers=None, threads: int | None = None,
          progress: bool = True, metrics=DEFAULT_METRICS, road_fractions=ROAD_FRACTIONS,
          road_noise: float = ROAD_NOISE, layer=None) -> AuditResult:
    """Audit every image under `images` (a folder or URI) with `methods`; write OUT as the module
    docstring says and return what happened. Resumes an earlier audit in OUT with the same settings.
    metrics: "deletion,insertion" or "deletion,insertion,road" (ROAD's noise: road_noise of the
    preprocessing's pixel range, seeded by (seed, the image id))."""
    from .explain import MAX_STEPS

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
    if not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise UsageError(f"steps must be an integer from 1 to {MAX_STEPS} (got {steps!r})")
    for name, value in (("workers", workers), ("images per batch", images_per_batch)):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
            raise UsageError(f"{name} must be a positive integer (got {value!r})")
    checked = scoring(curve_steps, reduce, prep.layout, batch_size, deletion_substrate, insertion_substrate,
                      prep.black(), metrics, road_fractions, road_noise, span_of(prep),
                      seed)  # fails early on bad settings
    # read, normalized and its batch made usable once: every worker (Ray actors too) gets this
    prepared = prepare(model, input, output_name).for_rows
    model = prepared
    true_labels = read_labels(labels) if labels else {}
    root, found = list_images(images)
    identity = {"model": str(model), "model_sha256": model_sha256(model), "images": str(images),
                "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(prep).items()},
                "steps": int(steps), "baseline": baseline, "integration": integration, "gate": gate,
                "output": output, "target": target, "seed": int(seed), "input": input, "output_name": output_name,
                **checked.config(), **({"layer": list(layer)} if layer else {})}  # no key without: old runs resume
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
    settings = {"model": prepared, "prep": prep, "methods": methods, "steps": int(steps), "baseline": baseline,
                "integration": integration, "gate": gate, "output": output, "target": target, "seed": int(seed),
                "input": input, "output_name": output_name, "memory_budget": memory_budget,
                "providers": providers, "batch_size": int(batch_size), **checked.config(),
                "crash_marker": os.environ.get(CRASH_ENV), "layer": list(layer) if layer else None}
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


def _run_ray_started(ray, address, rows, settings, root, model, workers, gpus_per_worker,
                     cpus_per_worker, images_per_batch, write):
    """Connect to (or start) Ray, run, and stop Ray again if this call started it."""
    # the actors get the prepared model itself through the object store: only the images need to
    # be reachable from every node
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"cannot connect to Ray at {address or 'a new local instance'}: {e}; start one "
                             "with 'ray start --head' or pass --address of a running cluster") from None
    try:
        count = _worker_count(ray, workers, gpus_per_worker, cpus_per_worker)
        size = images_per_batch or batch_images(row_bytes(settings["model"], settings), settings, len(rows), count)
        try:
            _run_ray(rows, settings, root, size, count, gpus_per_worker, cpus_per_worker, write)
        except GnlOnnxError:
            raise
        except Exception as e:  # noqa: BLE001 - Ray wraps worker failures in its own classes
            ours = _our_error(e)
            if ours is not None:
                raise ours from None
            raise GnlOnnxError(f"the Ray run failed: {str(e).strip().splitlines()[-1][:300]}; finished "
                               "batches are kept: rerun the same command to resume") from None
    finally:
        if started:
            ray.shutdown()


def _our_error(error: BaseException):
    """The GnlOnnxError a worker raised, rebuilt from Ray's wrapper (which keeps only the worker's
    traceback as text); None when it was something else."""
    from . import errors

    found = re.findall(r"gnl_onnx\.errors\.(\w+): (.+)", str(error))
    kind = getattr(errors, found[-1][0], None) if found else None
    if not (isinstance(kind, type) and issubclass(kind, GnlOnnxError)) or kind is errors.UnsupportedModelError:
        return GnlOnnxError(found[-1][1]) if found else None
    return kind(found[-1][1])


def _progress(total: int):
    from .pipeline import progress

    bar = progress(total, "audit")
    if bar is not None:
        bar.unit = "result"
    return bar


def finalize(out: Path, found, methods, labels: dict, identity: dict, store: _Store, prep=None, source=None):
    """De-duplicate the parts into results.parquet (the images found, the methods asked for, in
    method then image order, with the true labels), and write the aggregate table, summary and
    curves, and with the preprocessing `prep` the report (write_report). Returns (evaluation or
    None when nothing is done, top-1 accuracy or None)."""
    from .report import atomic_write

    pa = need_pyarrow()
    table = store.read()
    if table is None:
        return None, None
    ids = [image_id for image_id, _ in found]
    wanted = {(i, m) for i in ids for m in methods}
    first: dict[tuple[str, str], int] = {}
    for row, key in enumerate(zip(table.column("image").to_pylist(), table.column("method").to_pylist())):
        if key in wanted:
            first.setdefault(key, row)
    order = {m: k for k, m in enumerate(methods)}
    chosen = sorted(first, key=lambda key: (order[key[1]], key[0]))
    table = table.take(pa.array([first[key] for key in chosen], pa.int64()))
    true = [_label(labels, i) for i in table.column("image").to_pylist()]
    table = table.add_column(1, "label", pa.array(true, pa.int64()))
    atomic_write(out / RESULTS, lambda tmp: pa.parquet.write_table(table, tmp))
    if not len(table):
        return None, None
    config = {**identity, "methods": methods, "provider": ", ".join(sorted(set(table.column("provider").to_pylist())))}
    evaluation = Evaluation(config)
    modes = ("deletion", "insertion") + (("road_morf", "road_lerf") if "road_morf_curve" in table.column_names else ())
    columns = {k: table.column(k).to_pylist() for k in ("method", "steps") + tuple(f"{m}_curve" for m in modes)}
    for method in methods:
        rows = [k for k, m in enumerate(columns["method"]) if m == method]
        if rows:
            per = {mode: [np.asarray(columns[f"{mode}_curve"][k]) for k in rows] for mode in modes}
            evaluation.summaries[method] = summarize(method, per, columns["steps"][rows[0]],
                                                     identity.get("road_fractions", ROAD_FRACTIONS))
    # the model's top-1 accuracy on labelled images (every method explains the same target)
    per_image = dict(zip(table.column("image").to_pylist(), zip(table.column("target").to_pylist(), true)))
    labelled = [t == y for t, y in per_image.values() if y is not None]
    # with --target the target is the forced class, not the model's top-1: no accuracy to report
    accuracy = float(np.mean(labelled)) if labelled and identity.get("target") is None else None
    summary = {"config": config, "summary": [s.as_dict() for s in evaluation.summaries.values()],
               "recommendation": evaluation.recommendation(), "images": len(ids), "results": len(table),
               "complete": len(table) == len(wanted), "labelled": len(labelled), "accuracy": accuracy,
               "failed": [{"image": i, "method": m, "error": e} for (i, m), e in sorted(store.errors.items())]}
    atomic_write(out / SUMMARY, json.dumps(summary, indent=2))
    atomic_write(out / FILES["table"], evaluation.table() + "\n" + evaluation.recommendation() + "\n")
    plot_curves(evaluation, out / FILES["curves"])
    if prep is not None:
        write_report(out, evaluation, table, found, prep, source)
    return evaluation, accuracy


def write_report(out: Path, evaluation: Evaluation, table, found, prep, source) -> Path:
    """OUT/report.html and, for the images it shows, OUT/overlays/: the images where the methods
    disagree most (lowest mean rank correlation of their per-pixel maps, read back from
    OUT/attributions/), at most REPORT_IMAGES of them."""
    from .images import load_image
    from .pipeline import _stems
    from .report import REPORT_IMAGES, ReportImages, agreement, evaluation_page

    pa = need_pyarrow()
    columns = [f.name for f in table.schema if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)]
    data = {k: table.column(k).to_pylist() for k in ("image", "method", "attribution", *columns)}
    records = [{k: data[k][i] for k in ("image", "method", *columns)} for i in range(len(table))]
    for r in records:
        r["probability"] = r.pop("score", None)
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
    fs, _ = filesystem(source) if source is not None else (None, None)
    paths = dict(found)
    for image in ranked[:REPORT_IMAGES]:
        maps(image)
        shown.image(stems[image], image, prep.to_pixels(_load_local(fs, paths[image], prep, load_image)))
    shown.write()
    return evaluation_page(evaluation, out / FILES["report"], shown.results(), curves=out / FILES["curves"],
                           records=records, total_images=len(files),
                           title=f"gnl-onnx audit: {PurePosixPath(str(evaluation.config.get('model', ''))).name}")


def _load_local(fs, path: str, prep, load_image):
    """One image of the audit through the preprocessing, fetched first when it is remote."""
    from pyarrow.fs import LocalFileSystem

    if fs is None or isinstance(fs, LocalFileSystem):
        return load_image(path, prep)
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, "image" + PurePosixPath(path).suffix)
        with fs.open_input_stream(path) as remote, open(local, "wb") as f:
            shutil.copyfileobj(remote, f)
        return load_image(local, prep)


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
        print(result.evaluation.recommendation())
    return 1 if result.failed else 0


__all__ = ["AuditResult", "AuditWorker", "audit", "audit_files", "list_images", "read_labels"]
