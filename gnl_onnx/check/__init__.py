"""Attribution checks a CI pipeline runs on every new model version (`gnl-onnx check`).

Five named checks, each pass/fail with what it measured and the threshold it was held to:

- supported: every op between the image and the output has a gradient rule (lists the gated units);
- gradient: the plain backward graph's directional derivatives <grad, v> agree with central finite
  differences (f(x+hv) - f(x-hv)) / 2h of the explained logit, at several inputs and directions;
- completeness: plain IG's convergence delta, relative to F(x) - F(baseline), at the configured steps;
- randomization: the chosen method's attributions change when the top weighted layers are randomized
  (the sanity check of Adebayo et al. 2018);
- drift: against a reference saved earlier (save_reference), each image's attribution keeps its rank
  correlation and top-k overlap and its predicted class.

Thresholds have defaults (Thresholds), a TOML file `gnl-onnx-check.toml` beside the model (or any
file) with a [thresholds] table, and overrides; unknown names are usage errors.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..images import find_images, load_all
from ..intake import model_sha256
from ..output import atomic_write
from .checker import ModelChecker, as_float64
from .randomization import CascadingRandomization, cascading_randomization, randomize_layers, weighted_layers
from .reference import Reference, array_sha256, load_reference
from .results import CheckReport, CheckResult, Measure
from .settings import (CHECKS, KNOWN_CHECKS, OPTIONAL_CHECKS, Thresholds, load_thresholds, parse_checks,
                       parse_threshold_flags)

# the parts, one job each: settings (check names, thresholds, config), results (measures, the report),
# reference (saved attributions for drift), checker (the checks themselves)


def check_model(model, checks=CHECKS, reference=None, **options) -> CheckReport:
    """ModelChecker(model, **options).run(checks, reference)."""
    return ModelChecker(model, **options).run(checks, reference)


def load_image_files(paths, prep) -> tuple[np.ndarray, list[str]]:
    """Image files (folders: every image in them, sorted) -> (float32 [N, ...], file names). An
    unreadable image is an InputError: a check must not quietly run on fewer images."""
    files = [f for p in paths for f in (find_images([], p) if Path(p).is_dir() else [str(p)])]
    loaded, files, _ = load_all(files, prep, strict=True)
    shapes = sorted({a.shape for a in loaded})
    if len(shapes) > 1:
        raise UsageError(f"the images came out in different shapes {shapes}; give --crop or --size H W so that "
                         "every image fits the model")
    return np.concatenate(loaded), files


def check_files(model, image_paths=None, prep=None, checks=CHECKS, reference=None, save_reference=None,
                junit=None, json_path=None, overwrite: bool = False, thresholds: Thresholds | None = None,
                config=None, **options) -> int:
    """The `gnl-onnx check` command: run the checks, print the summary, write the JUnit, JSON and
    reference files (atomically, never over existing ones unless overwrite). 0 all selected checks
    passed, 1 one failed."""
    checks = parse_checks(checks)
    existing = [p for p in (junit, json_path, save_reference) if p and Path(p).exists()]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists; pass --overwrite to replace it")
    if save_reference and not image_paths:
        raise UsageError("--save-reference needs the images to explain: give --images")
    images = names = None
    if image_paths:
        images, names = load_image_files(image_paths, prep)
    checker = ModelChecker(model, images, names, prep, thresholds=thresholds,
                           config=None if config is None else str(config), **options)
    report = checker.run(checks, reference)
    print(report.text())
    if junit:
        atomic_write(junit, report.junit_xml())
    if json_path:
        atomic_write(json_path, json.dumps(report.as_dict(), indent=2))
    if save_reference:
        checker.reference().save(save_reference, overwrite=True)
        print(f"wrote reference {save_reference} ({len(names)} image(s), {checker.method})")
    return 0 if report.passed else 1


__all__ = ["CHECKS", "CheckReport", "CheckResult", "Measure", "ModelChecker", "Reference", "Thresholds",
           "array_sha256", "as_float64", "check_files", "check_model", "load_reference", "load_thresholds",
           "parse_checks",
           "parse_threshold_flags", "model_sha256", "load_image_files", "KNOWN_CHECKS", "OPTIONAL_CHECKS",
           "CascadingRandomization", "cascading_randomization", "randomize_layers", "weighted_layers"]
