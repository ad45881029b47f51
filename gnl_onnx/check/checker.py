"""The checks themselves: ModelChecker runs each named check on one prepared model, and the
float64 copy the gradient check uses where ONNX Runtime can run it."""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..methods import LRP_METHODS, get_method
from ..errors import GnlOnnxError, InputError, UnsupportedModelError, UsageError
from ..explainer import Explainer
from ..graph import graph_inputs
from ..inspection import inspect_model
from ..intake import model_sha256, prepare
from ..measures import MEASURES
from ..pixels import ranking, spearman
from ..pixels import reduce_to_pixels as pixel_map
from ..runtime import make_session
from ..settings import Settings
from ..targets import selected
from ..vjp import vjp_model, vjp_report
from .reference import Reference, array_sha256, load_reference
from .results import CheckReport, CheckResult, Measure, _judged, _plain, _show
from .settings import (CHECKS, FD_BATCH, FD_STEPS, JITTER, MEASURE_CHECKS, REFERENCE_FORMAT, REFERENCE_SETTINGS,
                       Thresholds, parse_checks)


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
                 memory_budget="auto", seed: int = 0, providers=None, threads: int | None = None,
                 config: str | None = None, layer=None, settings: Settings | None = None):
        """`settings`: the run's Settings (gnl_onnx/settings.py); with it, the keywords it holds
        (method ... layer) are not read."""
        if settings is None:
            settings = Settings(method=method, steps=steps, baseline=baseline, integration=integration, gate=gate,
                                output=output, input=input, output_name=output_name, memory_budget=memory_budget,
                                seed=seed, providers=providers, threads=threads, layer=layer)
        self.run_settings = settings
        method, steps, baseline, integration = settings.method, settings.steps, settings.baseline, settings.integration
        gate, output, seed, layer = settings.gate, settings.output, settings.seed, settings.layer
        self.source = prepare(model, settings.input, settings.output_name)  # read and normalized once for every check
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
        self.layer = layer  # the CAM methods' target layer(s); None: the default
        self._explanations: dict = {}
        self._random_inputs = None

    # shared pieces
    def settings(self) -> dict:
        steps = self.steps if self.steps == "auto" else get_method(self.method).steps_run(self.steps)  # as the
        # Explainer runs it (deeplift: 2; "auto": each image's points are in its result)
        return {"method": self.method, "steps": steps, "baseline": self.baseline,
                "integration": self.integration, "gate": self.gate, "output": self.output, "target": self.target,
                "seed": self.seed, "preprocessing": None if self.prep is None else _plain(asdict(self.prep))}

    def _explainer(self, method: str, model=None):
        key = ("explainer", method)
        if model is not None or key not in self._explanations:
            explainer = Explainer(self.source if model is None else model, settings=self.run_settings.for_method(
                method).replace(input=self.input_name, output_name=self.output_name, layout=self._layout(),
                                black=None if self.prep is None else self.prep.black(),
                                bounds=None if self.prep is None else self.prep.bounds()))
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
        report = inspect_model(self.source, self.input_name, self.output_name)
        gated = ", ".join(f"{op} {n}" for op, n in report["gated_paper"].items()) or "none"
        details = {"gated_paper": report["gated_paper"], "gated_all_extra": report["gated_all_extra"],
                   "unsupported": report["unsupported"]}
        measure = Measure("ops without a gradient rule", float(len(report["unsupported"])), "<=", 0)
        if report["unsupported"]:
            ops = "; ".join(f"{op} (e.g. node '{nodes[0]}')" for op, nodes in report["unsupported"].items())
            return _judged("supported", [measure], f"no gradient rule for {ops}; without a backward these methods "
                           f"still run (forward passes only): {', '.join(report['forward_methods'])}", details)
        return _judged("supported", [measure], f"gated (gate=paper): {gated}", details)

    def check_gradient(self) -> CheckResult:
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
        return {"providers": self.run_settings.providers, "threads": self.run_settings.threads}

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

        t = self.thresholds
        inputs, described = self._inputs()
        method = self.method if self.method in LRP_METHODS else "lrp_epsilon_plus_flat"
        result = self._explain(method, inputs)
        sums = result.attributions.astype(np.float64).reshape(len(inputs), -1).sum(axis=1)
        error = np.abs(sums - 1.0)
        return _judged("conservation", [Measure("worst |sum of input relevance - 1|", float(error.max()), "<=",
                                                t.conservation_max_error)], f"{method}, {described}",
                       {"sums": sums.tolist()})

    def check_measure(self, measure) -> CheckResult:
        """A check that is a measure (one with a `threshold`, measures.py: the model randomization):
        the measure explains what it changes with the chosen method and judges the result."""
        inputs, described = self._inputs()

        def explain(model):
            original = self._explain(self.method, inputs)
            if model is None:
                return original.attributions
            return self._explainer(self.method, model).explain(inputs, original.target).attributions

        found = measure.check(self.source, explain, self._layout(), self.seed, self.thresholds)
        if isinstance(found, str):
            return CheckResult(measure.name, "skip", found)
        return _judged(measure.name, [Measure(found["label"], found["value"], found["op"], found["limit"])],
                       f"{self.method}, {found['note']}, {described}", found["details"])

    def __getattr__(self, name):
        """check_<name> of a measure that is a check (check_randomization): run() asks for each check so."""
        measure = MEASURES.get(name[len("check_"):]) if name.startswith("check_") else None
        if measure is None or measure.name not in MEASURE_CHECKS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return lambda: self.check_measure(measure)

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
