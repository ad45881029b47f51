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

import hashlib
import io
import json
import math
import os
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import GnlOnnxError, InputError, UnsupportedModelError, UsageError
from .metrics import randomize_layers, ranking, spearman, weighted_layers
from .metrics import reduce_to_pixels as pixel_map

CHECKS = ("supported", "gradient", "completeness", "randomization", "drift")  # the default set
OPTIONAL_CHECKS = ("conservation",)  # run when named in --checks (LRP models)
KNOWN_CHECKS = ("supported", "gradient", "completeness", "conservation", "randomization", "drift")
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


# -- results -------------------------------------------------------------------------------------
@dataclass
class Measure:
    name: str
    value: float | None
    op: str  # "<=" or ">=": how value must compare to limit
    limit: float

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return bool(self.value <= self.limit if self.op == "<=" else self.value >= self.limit)

    def text(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.4g}"
        verdict = self.op if self.passed else {"<=": ">", ">=": "<"}[self.op]
        return f"{self.name} {shown} {verdict} {self.limit:.4g}"


@dataclass
class CheckResult:
    name: str
    status: str  # "pass", "fail" or "skip"
    summary: str  # one line
    measures: list[Measure] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "summary": self.summary,
                "measures": [{**asdict(m), "value": _finite(m.value), "passed": m.passed} for m in self.measures],
                "details": _jsonable(self.details), "seconds": round(self.seconds, 3)}


def _judged(name: str, measures: list[Measure], note: str, details: dict) -> CheckResult:
    status = "pass" if all(m.passed for m in measures) else "fail"
    return CheckResult(name, status, "; ".join([m.text() for m in measures] + ([note] if note else [])),
                       measures, details)


def _finite(v):
    return float(v) if v is not None and math.isfinite(v) else None


def _jsonable(value):
    """Plain JSON data: numpy scalars and arrays unwrapped, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _finite(float(value))
    return value


@dataclass
class CheckReport:
    model: str
    model_sha256: str
    results: list[CheckResult]
    thresholds: Thresholds
    settings: dict
    config: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    def counts(self) -> dict:
        return {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}

    def as_dict(self) -> dict:
        return {"model": self.model, "model_sha256": self.model_sha256, "passed": self.passed,
                "counts": self.counts(), "checks": [r.as_dict() for r in self.results],
                "thresholds": asdict(self.thresholds), "config": self.config, "settings": self.settings}

    def text(self) -> str:
        lines = [f"gnl-onnx check {self.model} (sha256 {self.model_sha256[:12]})"]
        lines += [f"{r.status.upper():<5}{r.name:<15}{r.summary}" for r in self.results]
        c = self.counts()
        lines.append(f"{c['pass']} passed, {c['fail']} failed, {c['skip']} skipped")
        return "\n".join(lines)

    def junit_xml(self) -> str:
        """One <testsuite name="gnl-onnx check">, one <testcase> per check: <failure> for failed
        checks, <skipped> for those that did not apply."""
        c = self.counts()
        total = f"{sum(r.seconds for r in self.results):.3f}"
        suites = ET.Element("testsuites", name="gnl-onnx check", tests=str(len(self.results)),
                            failures=str(c["fail"]), errors="0", skipped=str(c["skip"]), time=total)
        suite = ET.SubElement(suites, "testsuite", name="gnl-onnx check", tests=str(len(self.results)),
                              failures=str(c["fail"]), errors="0", skipped=str(c["skip"]), time=total)
        properties = ET.SubElement(suite, "properties")
        for name, value in (("model", self.model), ("model_sha256", self.model_sha256),
                            ("config", self.config or "")):
            ET.SubElement(properties, "property", name=name, value=value)
        stem = Path(self.model).stem
        for r in self.results:
            case = ET.SubElement(suite, "testcase", name=r.name, classname=f"gnl-onnx check.{stem}",
                                 time=f"{r.seconds:.3f}")
            if r.status == "fail":
                ET.SubElement(case, "failure", message=r.summary, type="CheckFailed").text = \
                    json.dumps(r.as_dict(), indent=2)
            elif r.status == "skip":
                ET.SubElement(case, "skipped", message=r.summary)
            else:
                ET.SubElement(case, "system-out").text = r.summary
        ET.indent(suites)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# -- the reference ---------------------------------------------------------------------------------
@dataclass
class Reference:
    """What drift compares against: `header` (plain data: the model's sha256, the images' sha256s,
    the settings, the explained and predicted classes) and the attributions [N, ...]."""
    header: dict
    attributions: np.ndarray

    def save(self, path, overwrite: bool = False) -> Path:
        """One portable .npz (no pickles): a JSON header string beside the attributions."""
        from .report import atomic_write

        path = Path(path)
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace the reference")
        buffer = io.BytesIO()
        np.savez_compressed(buffer, header=np.array(json.dumps(self.header)), attributions=self.attributions)
        return atomic_write(path, buffer.getvalue())


def load_reference(path) -> Reference:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            attributions = np.asarray(data["attributions"])
    except FileNotFoundError:
        raise InputError(f"{path}: no such reference; save one with gnl-onnx check --save-reference") from None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a gnl-onnx check reference ({e.__class__.__name__}); save one with "
                         "gnl-onnx check --save-reference") from None
    if not isinstance(header, dict) or header.get("format") != REFERENCE_FORMAT:
        raise InputError(f"{path}: not a {REFERENCE_FORMAT} reference; save a new one with --save-reference")
    return Reference(header, attributions)


def array_sha256(array: np.ndarray) -> str:
    """sha256 of a preprocessed image: its float32 values, C order, with the shape."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def model_sha256(model) -> str:
    """Of the file as given (or of the model's bytes when it came from memory)."""
    from .intake import PreparedModel

    if isinstance(model, PreparedModel):
        model = model.path or model.proto
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    digest = hashlib.sha256()
    with open(model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the checks ------------------------------------------------------------------------------------
class ModelChecker:
    """Runs the checks on one model. images: float32 [N, ...] already preprocessed (names: for
    messages), or None: gradient, completeness and randomization then use seeded random inputs of
    the model's input shape (N(0, 1) in its input space), drift and references need images.
    Attributions of the chosen method are computed once and shared by randomization, drift and
    the reference."""

    def __init__(self, model, images=None, names=None, preprocessing=None, method: str = "ig",
                 steps: int = 32, baseline: str = "zeros", integration: str = "gausslegendre",
                 gate: str = "paper", output: str = "logit", target: int | None = None,
                 input: str | None = None, output_name: str | None = None, thresholds: Thresholds | None = None,
                 memory_budget="2GB", seed: int = 0, providers=None, threads: int | None = None,
                 config: str | None = None, layer=None):
        from .attribution import get_method
        from .intake import prepare

        get_method(method)
        self.source = prepare(model, input, output_name)  # read and normalized once for every check
        self.path = None if self.source.path is None else Path(self.source.path)
        self.model_sha256 = model_sha256(model)
        self.input_name, self.output_name = self.source.input, self.source.output
        self.images = None if images is None else np.ascontiguousarray(images, dtype=np.float32)
        if self.images is not None and (self.images.ndim < 2 or len(self.images) == 0):
            raise UsageError(f"expected a batch of images [N, ...], got shape {self.images.shape}")
        self.names = list(names) if names is not None else (
            None if self.images is None else [str(i) for i in range(len(self.images))])
        self.prep = preprocessing
        self.method, self.steps, self.baseline, self.integration = method, steps, baseline, integration
        self.gate, self.output, self.target, self.seed = gate, output, target, seed
        self.thresholds = thresholds or Thresholds()
        self.config = config
        self.runtime = {"memory_budget": memory_budget, "providers": providers, "threads": threads}
        self.layer = layer  # the CAM methods' target layer(s); None: the default
        self._explanations: dict = {}
        self._random_inputs = None

    # shared pieces
    def settings(self) -> dict:
        from .attribution import get_method

        steps = 1 if get_method(self.method).path == "image" else int(self.steps)  # as the Explainer runs it
        return {"method": self.method, "steps": steps, "baseline": self.baseline,
                "integration": self.integration, "gate": self.gate, "output": self.output, "target": self.target,
                "seed": self.seed, "preprocessing": None if self.prep is None else _plain(asdict(self.prep))}

    def _explainer(self, method: str, model=None):
        from .attribution import get_method
        from .explain import Explainer

        key = ("explainer", method)
        if model is not None or key not in self._explanations:
            explainer = Explainer(
                self.source if model is None else model, method=method, steps=self.steps, baseline=self.baseline,
                integration=self.integration, gate=self.gate, output=self.output, input=self.input_name,
                output_name=self.output_name, black=None if self.prep is None else self.prep.black(),
                bounds=None if self.prep is None else self.prep.bounds(),
                layout=self._layout(), seed=self.seed, layer=self.layer if get_method(method).cam else None,
                **self.runtime)
            if model is not None:
                return explainer  # a changed copy of the model: not kept
            self._explanations[key] = explainer
        return self._explanations[key]

    def _explain(self, method: str, inputs: np.ndarray, targets=None):
        key = (method, inputs.ctypes.data, inputs.shape, None if targets is None else tuple(np.ravel(targets)))
        default = self._explanations.get(key[:3] + (None,))
        if default is not None and self.target is None and np.array_equal(default.target, targets):
            return default  # the top-1 classes are the ones asked for: nothing new to explain
        if key not in self._explanations:
            chosen = self.target if targets is None else targets
            self._explanations[key] = self._explainer(method).explain(inputs, chosen)
        return self._explanations[key]

    def _inputs(self) -> tuple[np.ndarray, str]:
        """The images, or seeded random inputs of the model's input shape."""
        if self.images is not None:
            return self.images, f"{len(self.images)} image(s)"
        if self._random_inputs is None:
            from .loading import graph_inputs

            image_input = next(i for i in graph_inputs(self.source.proto.graph) if i.name == self.input_name)
            dims = image_input.type.tensor_type.shape.dim
            shape = [d.dim_value if d.HasField("dim_value") else None for d in dims][1:]
            if not shape or any(d is None for d in shape):
                raise UsageError("the model's input shape is not fixed, so random inputs cannot be made; "
                                 "give --images")
            rng = np.random.default_rng([self.seed, 1])
            self._random_inputs = rng.standard_normal([self.thresholds.gradient_inputs] + shape).astype(np.float32)
        return self._random_inputs, f"{len(self._random_inputs)} seeded random input(s)"

    def _layout(self):
        return None if self.prep is None else self.prep.layout

    # the checks
    def run(self, checks=CHECKS, reference: Reference | str | os.PathLike | None = None) -> CheckReport:
        checks = parse_checks(checks)
        if reference is not None and not isinstance(reference, Reference):
            reference = load_reference(reference)
        if "drift" in checks and reference is not None:
            self._check_reference(reference)  # refuse mismatched settings before anything runs
        results = []
        differentiable = None
        for name in checks:
            start = time.perf_counter()
            if name != "supported" and differentiable is not None and not differentiable:
                result = CheckResult(name, "skip", "the model cannot be differentiated (see supported)")
            elif name == "drift" and reference is None:
                result = CheckResult(name, "skip", "no reference given; save one from a signed-off model with "
                                                   "--save-reference REF, then check with --reference REF")
            else:
                try:
                    result = getattr(self, f"check_{name}")(reference) if name == "drift" else \
                        getattr(self, f"check_{name}")()
                except UnsupportedModelError as e:
                    result = CheckResult(name, "fail", str(e))
                if name == "supported":
                    differentiable = result.status == "pass"
            result.seconds = time.perf_counter() - start
            results.append(result)
        return CheckReport(str(self.path) if self.path else "(in memory)", self.model_sha256, results,
                           self.thresholds, self.settings(), self.config)

    def check_supported(self) -> CheckResult:
        from .inspection import inspect_model

        report = inspect_model(self.source, self.input_name, self.output_name)
        gated = ", ".join(f"{op} {n}" for op, n in report["gated_paper"].items()) or "none"
        details = {"gated_paper": report["gated_paper"], "gated_all_extra": report["gated_all_extra"],
                   "unsupported": report["unsupported"]}
        measure = Measure("ops without a gradient rule", float(len(report["unsupported"])), "<=", 0)
        if report["unsupported"]:
            ops = "; ".join(f"{op} (e.g. node '{nodes[0]}')" for op, nodes in report["unsupported"].items())
            return _judged("supported", [measure], f"no gradient rule for {ops}", details)
        return _judged("supported", [measure], f"gated (gate=paper): {gated}", details)

    def check_gradient(self) -> CheckResult:
        from .attribution import selected
        from .vjp import vjp_model, vjp_report

        t = self.thresholds
        chosen = selected(self.source, self.output)
        vjp = vjp_model(chosen, rule="plain")
        names = vjp_report(vjp)
        forward, backward, precision, why = self._fd_sessions(chosen.proto, vjp)
        dtype = np.float64 if precision == "float64" else np.float32
        inputs, described = self._inputs()
        inputs = inputs[:t.gradient_inputs]
        rng = np.random.default_rng([self.seed, 2])
        worst, per_input = 0.0, []
        for x in inputs.astype(np.float64):
            spread = float(x.std()) or 1.0
            x = (x + rng.standard_normal(x.shape) * JITTER * spread)[None]  # off exact MaxPool ties
            raw = forward.run(None, {self.input_name: x.astype(dtype)})[0]
            scores = raw.reshape(1, -1)
            target = int(np.argmax(scores)) if self.target is None else int(self.target)
            if not 0 <= target < scores.shape[1]:
                raise UsageError(f"target {target} is out of range: the model has {scores.shape[1]} classes")
            seed = np.zeros(scores.shape, dtype)
            seed[0, target] = 1
            feed = {self.input_name: x.astype(dtype), names["seed"]: seed.reshape(raw.shape)}
            grad = backward.run([names["gradient"]], feed)[0].astype(np.float64)
            directions = rng.standard_normal((t.gradient_directions,) + x.shape[1:]) * spread
            steps = FD_STEPS[precision]
            points = np.concatenate([x + s * h * v[None] for h in steps for v in directions for s in (1, -1)])
            points = points.astype(dtype)
            # <grad, x+ - x-> along the step really taken after rounding to the model's precision
            taken = points[0::2].astype(np.float64) - points[1::2]
            analytic = (taken.reshape(len(taken), -1) @ grad[0].ravel()).reshape(len(steps), len(directions))
            values = self._scores(forward, points, target).reshape(len(steps), len(directions), 2)
            twice_h = 2 * np.asarray(steps)[:, None]
            numeric, analytic = (values[..., 0] - values[..., 1]) / twice_h, analytic / twice_h
            scale = float(np.sqrt(np.mean(numeric[len(steps) // 2] ** 2)))
            gap = np.min(np.abs(numeric - analytic), axis=0).max()
            error = gap / scale if scale > 0 else (0.0 if gap == 0 else math.inf)
            per_input.append(error)
            worst = max(worst, error)
        note = (f"{precision} finite differences at {len(inputs)} input(s) x {t.gradient_directions} directions"
                + (f" ({why})" if why else ""))
        return _judged("gradient", [Measure("worst relative error", worst, "<=", t.gradient_max_error)], note,
                       {"precision": precision, "why": why, "steps": list(FD_STEPS[precision]),
                        "per_input": per_input, "inputs": described})

    def _fd_sessions(self, forward_model, vjp):
        """Sessions in float64 when ONNX Runtime runs a float64 copy, else float32 (its CPU Conv has
        no float64 kernel): (forward, backward, precision, why not float64)."""
        from .runtime import make_session

        try:
            forward, _ = make_session(as_float64(forward_model), **self._session_options())
            backward, _ = make_session(as_float64(vjp), **self._session_options())
            return forward, backward, "float64", ""
        except GnlOnnxError as e:
            missing = re.search(r"implementation for (\w+)", str(e))
            why = f"ONNX Runtime has no float64 {missing.group(1)} kernel" if missing else str(e)[:160]
        forward, _ = make_session(forward_model, **self._session_options())
        backward, _ = make_session(vjp, **self._session_options())
        return forward, backward, "float32", why

    def _session_options(self):
        return {"providers": self.runtime["providers"], "threads": self.runtime["threads"]}

    def _scores(self, session, points, target: int) -> np.ndarray:
        fixed = session.get_inputs()[0].shape[0] == 1
        step = 1 if fixed else FD_BATCH
        out = [session.run(None, {self.input_name: points[i:i + step]})[0].reshape(len(points[i:i + step]), -1)
               for i in range(0, len(points), step)]
        return np.concatenate(out)[:, target].astype(np.float64)

    def check_completeness(self) -> CheckResult:
        t = self.thresholds
        inputs, described = self._inputs()
        result = self._explain("ig", inputs)
        axes = tuple(range(1, inputs.ndim))
        difference = result.attributions.astype(np.float64).sum(axis=axes) - result.delta  # F(x) - F(baseline)
        relative = np.abs(result.delta) / np.maximum(np.abs(difference), 1e-6)
        note = f"plain IG, {result.steps} {result.integration} steps, baseline {result.baseline}, {described}"
        return _judged("completeness", [Measure("worst |delta| / |F(x) - F(baseline)|", float(relative.max()),
                                                "<=", t.completeness_max_delta)], note,
                       {"delta": result.delta.tolist(), "difference": difference.tolist(),
                        "relative": relative.tolist()})

    def check_conservation(self) -> CheckResult:
        """LRP: the relevance at the input sums to the relevance put at the output, the one-hot of
        the target (1), as in Zennit; biases and stabilizers absorb the rest. Uses the chosen
        method when it is an LRP composite, else lrp_epsilon_plus_flat."""
        from .attribution import LRP_METHODS

        t = self.thresholds
        inputs, described = self._inputs()
        method = self.method if self.method in LRP_METHODS else "lrp_epsilon_plus_flat"
        result = self._explain(method, inputs)
        sums = result.attributions.astype(np.float64).reshape(len(inputs), -1).sum(axis=1)
        error = np.abs(sums - 1.0)
        return _judged("conservation", [Measure("worst |sum of input relevance - 1|", float(error.max()), "<=",
                                                t.conservation_max_error)], f"{method}, {described}",
                       {"sums": sums.tolist()})

    def check_randomization(self) -> CheckResult:
        t = self.thresholds
        layers = [layer["name"] for layer in weighted_layers(self.source)][:t.randomized_layers]
        if not layers:
            return CheckResult("randomization", "skip", "no Conv/Gemm/MatMul with constant weights to randomize")
        inputs, described = self._inputs()
        original = self._explain(self.method, inputs)
        randomized = self._explainer(self.method, randomize_layers(self.source, layers, self.seed))
        after = randomized.explain(inputs, original.target).attributions
        correlations = {"sum": [], "abs_sum": []}
        for a, b in zip(original.attributions, after):
            for how, values in correlations.items():
                rho = spearman(pixel_map(a[None], self._layout(), how), pixel_map(b[None], self._layout(), how))
                values.append(0.0 if math.isnan(rho) else rho)  # a map turned constant: it changed
        note = f"{self.method}, randomized {', '.join(layers)}, signed maps, {described}"
        return _judged("randomization", [Measure("worst Spearman with the original", max(correlations["sum"]),
                                                 "<=", t.randomization_max_spearman)], note,
                       {"layers": layers, "spearman": correlations["sum"], "spearman_abs": correlations["abs_sum"]})

    def check_drift(self, reference: Reference) -> CheckResult:
        t = self.thresholds
        self._check_reference(reference)
        header = reference.header
        targets = np.asarray(header["targets"], np.int64)
        current = self._explain(self.method, self.images, targets)
        predicted = current.scores.argmax(axis=1)
        rows, correlations, overlaps = [], [], []
        for i, name in enumerate(self.names):
            before = pixel_map(reference.attributions[i:i + 1], self._layout(), "sum")
            after = pixel_map(current.attributions[i:i + 1], self._layout(), "sum")
            rho = spearman(before, after)
            rho = (1.0 if np.array_equal(before, after) else 0.0) if math.isnan(rho) else rho
            k = max(1, math.ceil(t.drift_top_k * before.size))
            overlap = len(np.intersect1d(ranking(before)[:k], ranking(after)[:k])) / k
            correlations.append(rho)
            overlaps.append(overlap)
            rows.append({"image": name, "spearman": rho, "top_k_overlap": overlap,
                         "predicted_before": int(header["predicted"][i]), "predicted_now": int(predicted[i])})
        changed = [r for r in rows if r["predicted_before"] != r["predicted_now"]]
        measures = [Measure("worst Spearman", min(correlations), ">=", t.drift_min_spearman),
                    Measure(f"worst top-{t.drift_top_k:.0%} overlap", min(overlaps), ">=", t.drift_min_top_k_overlap),
                    Measure("predicted classes changed", float(len(changed)), "<=", 0)]
        same_model = header["model_sha256"] == self.model_sha256
        note = (f"{len(rows)} image(s) against the reference of "
                f"{'this same model' if same_model else 'model ' + header['model_sha256'][:12]}")
        if changed:
            note += "; changed: " + ", ".join(f"{r['image']} {r['predicted_before']}->{r['predicted_now']}"
                                              for r in changed[:3])
        return _judged("drift", measures, note, {"images": rows, "reference_model_sha256": header["model_sha256"]})

    def _check_reference(self, reference: Reference) -> None:
        header = reference.header
        if self.images is None:
            raise UsageError("drift needs the images the reference was made with: give --images")
        mine = self.settings()
        for key in REFERENCE_SETTINGS:
            if header.get(key) != mine[key]:
                raise UsageError(f"the reference was made with {key}={_show(header.get(key))}, this check uses "
                                 f"{key}={_show(mine[key])}; check with the reference's settings or save a new "
                                 "reference with --save-reference")
        hashes = header.get("image_sha256", [])
        if len(hashes) != len(self.images):
            raise UsageError(f"the reference holds {len(hashes)} image(s), this check has {len(self.images)}; give "
                             f"the reference's images: {', '.join(header.get('image_names', []))}")
        for i, (want, name) in enumerate(zip(hashes, self.names)):
            if array_sha256(self.images[i]) != want:
                raise UsageError(f"image {i + 1} ({name}) is not the reference's "
                                 f"({header['image_names'][i]}): the sha256 of the preprocessed pixels differs; "
                                 "give the same images in the same order")
        if reference.attributions.shape != self.images.shape:
            raise InputError(f"the reference's attributions have shape {reference.attributions.shape}, the "
                             f"images {self.images.shape}; save a new reference")

    def reference(self) -> Reference:
        """The attributions of the chosen method for the images, with what drift needs to compare."""
        if self.images is None:
            raise UsageError("a reference needs images: give --images")
        result = self._explain(self.method, self.images)
        header = {"format": REFERENCE_FORMAT, "model_sha256": self.model_sha256,
                  "model": str(self.path) if self.path else "(in memory)",
                  "image_sha256": [array_sha256(a) for a in self.images],
                  "image_hash_of": "preprocessed float32 pixels",
                  "image_names": self.names, **self.settings(), "targets": result.target.tolist(),
                  "predicted": result.scores.argmax(axis=1).tolist(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                               time.gmtime())}
        return Reference(header, result.attributions.astype(np.float32))


def check_model(model, checks=CHECKS, reference=None, **options) -> CheckReport:
    """ModelChecker(model, **options).run(checks, reference)."""
    return ModelChecker(model, **options).run(checks, reference)


def load_image_files(paths, prep) -> tuple[np.ndarray, list[str]]:
    """Image files (folders: every image in them, sorted) -> (float32 [N, ...], file names). An
    unreadable image is an InputError: a check must not quietly run on fewer images."""
    from .evaluate import find_images
    from .images import load_all

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
    from .report import atomic_write

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


def _plain(value):
    """JSON-comparable: tuples become lists (a reference's header goes through JSON)."""
    return json.loads(json.dumps(value))


def _show(value) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


# -- float64 copies ----------------------------------------------------------------------------------
def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy computing in float64: float32 initializers, Constant values, Cast targets and
    declared types become double. ONNX Runtime may still lack a float64 kernel (its CPU Conv has
    none); the session then fails to load."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph = m.graph

    def widen(tensor: TensorProto):
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))

    for tensor in graph.initializer:
        widen(tensor)
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                widen(a.t)
            elif a.name == "to" and node.op_type == "Cast" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
    return m


__all__ = ["CHECKS", "CheckReport", "CheckResult", "Measure", "ModelChecker", "Reference", "Thresholds",
           "array_sha256", "as_float64", "check_files", "check_model", "load_reference", "load_thresholds",
           "parse_checks",
           "parse_threshold_flags"]
