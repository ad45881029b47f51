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

# the parts, one job each: layout (what an audit folder holds), sources (images, ids, labels),
# worker (explain and score a batch), store (results on disk, the end of a run), engines (local, Ray),
# run (one audit, start to end)
from .layout import CRASH_ENV, RESULTS, SUMMARY
from .run import AuditResult, audit, audit_files
from .sources import image_key, list_images, read_labels
from .worker import AuditWorker

__all__ = ["audit", "audit_files", "AuditResult", "AuditWorker", "CRASH_ENV", "RESULTS", "SUMMARY", "image_key",
           "list_images", "read_labels"]
