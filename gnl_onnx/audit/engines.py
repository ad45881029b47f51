"""The engines that run the workers: this process (local) or Ray Data actors, and how many images
go into one batch."""
from __future__ import annotations

import logging
import math
import re
import warnings

import numpy as np

import gnl_onnx.errors as errors

from ..attribution import attribution_info, attribution_model
from ..budget import planned_run_bytes
from ..errors import GnlOnnxError, UsageError
from ..methods import get_method
from ..evaluation import (
    RANDOM,
)
from .layout import MAX_BATCH
from .sources import need_ray
from .worker import AuditWorker


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
    """Memory of one image at one step in an attribution run (None when only random or forward-only
    methods are asked: those split their own runs)."""
    method = next((m for m in settings["methods"] if m != RANDOM and not get_method(m).forward_only), None)
    if method is None:
        return None
    output = settings["run"].output if "run" in settings else settings["output"]  # a box or region: its Target
    return attribution_info(attribution_model(model, method=method, gate=settings["gate"], output=output,
                                              input=settings["input"], output_name=settings["output_name"]))[
        "bytes_per_row"]


def batch_images(row_bytes: int | None, settings, pending: int, workers: int) -> int:
    """Images per batch: as many as one ONNX Runtime run of all steps holds within the memory
    budget, at most MAX_BATCH, and small enough that every worker gets about 4 batches."""
    fit = MAX_BATCH
    if row_bytes:  # auto: sized for a worker's usual run (each worker then splits steps to its own memory)
        budget = planned_run_bytes(settings["memory_budget"])
        fit = max(1, budget // row_bytes // (settings["steps"] + 1))
    return int(max(1, min(fit, MAX_BATCH, math.ceil(pending / (4 * workers)))))


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
    found = re.findall(r"gnl_onnx\.errors\.(\w+): (.+)", str(error))
    kind = getattr(errors, found[-1][0], None) if found else None
    if not (isinstance(kind, type) and issubclass(kind, GnlOnnxError)) or kind is errors.UnsupportedModelError:
        return GnlOnnxError(found[-1][1]) if found else None
    return kind(found[-1][1])
