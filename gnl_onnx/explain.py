"""The explain command: explain image files with one method and print what was written where.
(The runtime it runs on is gnl_onnx.explainer; the old names of this module still import from it,
with a DeprecationWarning.)"""
from __future__ import annotations

import warnings
from pathlib import Path

import gnl_onnx.budget as _budget
import gnl_onnx.explainer as _explainer
from .attribution_files import explain_to_folder
from .settings import Settings


def explain_files(model, images: list[str], out: Path, prep, preset, settings: Settings, target=None,
                  overwrite: bool = False) -> int:
    """The `gnl-onnx explain` command: explain the image files with the run's settings, print
    what was written; 0 done, 1 some images were skipped."""
    records, bad = explain_to_folder(model, images, out, prep, preset, target=target, overwrite=overwrite,
                                     settings=settings)
    for r in records:
        label = f" ({r['label']})" if r.get("label") else ""
        size = "x".join(str(d) for d in r["input_shape"][1:])  # what the model ran at (DBNet: the image's own size)
        print(f"{r['image']}: class {r['target']}{label}, {r['explained']}, input {size}, {r['method']} -> "
              f"{r['files']['overlay']}")
    for b in bad:
        print(f"skipped {b['image']}: {b['error']}")
    if records and records[0].get("runs"):
        runs = records[0]["runs"]
        print(f"runs: {runs['images_per_run']} image(s) x {runs['steps_per_run']} step(s) each, "
              f"{runs['memory_per_run']} (memory budget {runs['memory_budget']})")
    print(f"summary: {out / 'summary.json'}")
    return 1 if bad else 0


# gnl_onnx.explain held the runtime until the commands moved side by side: its names still import
_MOVED = {**{name: (_explainer, "gnl_onnx.explainer") for name in ("Explainer", "Explanation", "MAX_STEPS", "METHODS")},
          **{name: (_budget, "gnl_onnx.budget") for name in ("AUTO_RUN_BYTES", "AUTO_SHARE_OF_AVAILABLE",
                                                             "AUTO_GPU_RUN_BYTES", "available_memory",
                                                             "parse_bytes", "resolve_budget")}}


def __getattr__(name):
    if name in _MOVED:
        module, where = _MOVED[name]
        warnings.warn(f"gnl_onnx.explain.{name} moved to {where}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(module, name)
    raise AttributeError(f"module 'gnl_onnx.explain' has no attribute {name!r}")


__all__ = ["explain_files"]
