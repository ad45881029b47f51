"""What an audit folder holds, and what identifies a run (an OUT audited with other values of
these cannot be resumed)."""
from __future__ import annotations

RESULTS, SETTINGS, SUMMARY, PARTS, ATTRIBUTIONS = ("results.parquet", "audit.json", "summary.json", "parts",
                                                   "attributions")
MAX_BATCH = 64  # images per batch at most: a killed worker loses at most this much work
# Test hook: the path of a file holding one image id. The worker whose batch holds that image
# claims the file (deletes it) and exits the process before returning the batch, once.
CRASH_ENV = "GNL_ONNX_AUDIT_CRASH_ON"
# What changes results: an OUT audited with other values cannot be resumed.
IDENTITY = ("model_sha256", "preprocessing", "steps", "baseline", "integration", "gate", "output", "target",
            "seed", "input", "output_name", "curve_steps", "reduce", "deletion_substrate", "insertion_substrate",
            "metrics", "road_fractions", "road_noise",  # these three only with ROAD: older OUTs resume
            "tolerance")  # only with steps "auto"
