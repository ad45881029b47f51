"""Which checks run and what they are held to: the check names, the thresholds with their defaults,
the TOML config beside the model and the command line's overrides."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path


from ..errors import InputError, UsageError
from ..measures import MEASURES


# the measures with a threshold (measures.py: the model randomization) are checks of their name
MEASURE_CHECKS = tuple(m.name for m in MEASURES.values() if getattr(m, "threshold", None))
CHECKS = ("supported", "gradient", "completeness", *MEASURE_CHECKS, "drift")  # the default set
OPTIONAL_CHECKS = ("conservation",)  # run when named in --checks (LRP models)
KNOWN_CHECKS = ("supported", "gradient", "completeness", "conservation", *MEASURE_CHECKS, "drift")
CONFIG_NAME = "gnl-onnx-check.toml"
REFERENCE_FORMAT = "gnl-onnx-check-reference/1"
# Settings a reference must share with the check that uses it (the model itself may differ).
REFERENCE_SETTINGS = ("method", "steps", "baseline", "integration", "gate", "output", "target", "seed",
                      "preprocessing")
# Finite-difference steps, relative to the input's standard deviation, largest first. In float32 a
# small step drowns in rounding and a large one crosses ReLU/MaxPool kinks; a correct gradient
# agrees at one of them, a wrong one at none (see README, "CI model checks").
FD_STEPS = {"float32": (1e-2, 3e-3, 1e-3, 3e-4, 1e-4), "float64": (1e-4, 1e-5, 1e-6)}
JITTER = 0.05  # noise (x the input's std) that breaks exact MaxPool ties of flat image regions
FD_BATCH = 16


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits and the few sizes the checks use (measured defaults: README)."""
    gradient_max_error: float = 0.25          # worst |FD - AD| / RMS(FD) over inputs x directions
    gradient_inputs: int = 3                   # inputs (images, or seeded random ones) checked
    gradient_directions: int = 8               # random directions per input
    completeness_max_delta: float = 0.05       # worst |delta| / |F(x) - F(baseline)|
    conservation_max_error: float = 0.25       # LRP: worst |sum of input relevance - 1| (one-hot seed)
    randomization_max_spearman: float = 0.5    # worst rank correlation after randomizing
    randomized_layers: int = 2                 # top weighted layers randomized (output side first)
    drift_min_spearman: float = 0.8            # worst rank correlation with the reference
    drift_min_top_k_overlap: float = 0.6       # worst shared fraction of the top-k pixels
    drift_top_k: float = 0.1                   # k, as a fraction of the pixels

    def updated(self, values: dict, source: str) -> Thresholds:
        """A copy with `values` (name -> number) set; unknown names and bad values are usage errors."""
        kinds = {f.name: f.type for f in fields(self)}
        changes = {}
        for name, value in values.items():
            if name not in kinds:
                raise UsageError(f"{source}: unknown threshold '{name}'; known: {', '.join(kinds)}")
            integer = kinds[name] == "int"
            if isinstance(value, str):
                try:
                    value = int(value) if integer else float(value)
                except ValueError:
                    raise UsageError(f"{source}: {name} must be {'an integer' if integer else 'a number'}, "
                                     f"got '{value}'") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and value != int(value)):
                raise UsageError(f"{source}: {name} must be {'an integer' if integer else 'a number'}, got {value!r}")
            if not math.isfinite(value) or value < 0 or (integer and value < 1):
                raise UsageError(f"{source}: {name} must be {'at least 1' if integer else 'a finite number >= 0'}, "
                                 f"got {value}")
            if name == "drift_top_k" and not 0 < value <= 1:
                raise UsageError(f"{source}: drift_top_k is a fraction of the pixels, in (0, 1]; got {value}")
            changes[name] = int(value) if integer else float(value)
        return replace(self, **changes)


def parse_threshold_flags(items) -> dict:
    """['gradient_max_error=0.1', ...] -> {name: text}."""
    values = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"--threshold takes NAME=VALUE, e.g. gradient_max_error=0.1 (got '{item}')")
        values[name.strip()] = value.strip()
    return values


def load_thresholds(model=None, config=None, overrides: dict | None = None) -> tuple[Thresholds, Path | None]:
    """Defaults, then the [thresholds] of `config` (or of gnl-onnx-check.toml beside the model
    file, when there is one), then `overrides`. Returns (thresholds, config file used or None)."""
    path = Path(config) if config is not None else None
    if path is None and isinstance(model, (str, os.PathLike)):
        beside = Path(model).parent / CONFIG_NAME
        path = beside if beside.is_file() else None
    thresholds = Thresholds()
    if path is not None:
        thresholds = thresholds.updated(_read_config(path), str(path))
    return thresholds.updated(overrides or {}, "--threshold"), path


def _read_config(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise UsageError(f"{path}: reading a config file needs Python 3.11 or newer (tomllib); give the "
                         "thresholds with --threshold NAME=VALUE instead") from None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the config file ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML ({e})") from None
    unknown = [k for k in data if k != "thresholds"]
    if unknown or not isinstance(data.get("thresholds", {}), dict):
        raise UsageError(f"{path}: a check config holds one [thresholds] table, found "
                         f"{', '.join(map(repr, unknown)) or 'thresholds = (not a table)'}")
    return data.get("thresholds", {})


def parse_checks(text) -> list[str]:
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text) if c.strip()]
    unknown = [c for c in names if c not in KNOWN_CHECKS]
    if unknown or not names:
        raise UsageError(f"unknown check {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
                         f"{', '.join(KNOWN_CHECKS)}")
    return [c for c in KNOWN_CHECKS if c in names]  # the order that lets later checks reuse earlier work
