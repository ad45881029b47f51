"""Deprecated: this module's parts moved side by side. explain_to_folder is in
gnl_onnx.attribution_files, explain_files in gnl_onnx.explain (the explain command), run_demo and
demo_photos in gnl_onnx.demo, and progress, prepare_folder and unique_stems in gnl_onnx.output."""
from __future__ import annotations

import warnings

import gnl_onnx.attribution_files as _files
import gnl_onnx.demo as _demo
import gnl_onnx.explain as _explain
import gnl_onnx.output as _output

_MOVED = {"explain_to_folder": _files, "BATCH": _files, "explain_files": _explain, "run_demo": _demo,
          "demo_photos": _demo, "progress": _output, "prepare_folder": _output}


def __getattr__(name):
    if name in _MOVED:
        module = _MOVED[name]
        warnings.warn(f"gnl_onnx.pipeline.{name} moved to {module.__name__}.{name}", DeprecationWarning, stacklevel=2)
        return getattr(module, name)
    raise AttributeError(f"module 'gnl_onnx.pipeline' has no attribute {name!r}")
