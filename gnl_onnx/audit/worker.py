"""The worker: one Scorer and one Explainer per method for its lifetime (a Ray actor, or the local
engine's single instance), turning a batch of images into result rows."""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from io import BytesIO
from pathlib import PurePosixPath

import numpy as np

from ..errors import InputError, UsageError
from ..evaluation import (
    DEFAULT_METRICS,
    RANDOM,
    attribute_counted,
    explain_function,
    randomized_function,
    score_curves,
    scoring,
)
from ..road import FRACTIONS as ROAD_FRACTIONS
from ..road import NOISE as ROAD_NOISE
from ..road import span_of
import gnl_onnx.audit.sources as sources
from .sources import image_key
from ..explainer import Explainer
from ..images import load_image
from ..metrics import Scorer
from ..scorer import TargetScorer
from ..target_evaluation import find_rows, is_row_target, row_id, row_settings, score_row


# -- the worker --------------------------------------------------------------------------------
class AuditWorker:
    """Holds one Scorer and one Explainer per method for its lifetime (a Ray actor, or the local
    engine's single instance). Called with a batch {"image", "path", "methods"} (methods: the
    comma-separated ones still to do for that image), it returns one row per (image, method)."""

    def __init__(self, settings: dict, source: str, providers=None, threads: int | None = None):
        s = self.settings = settings
        self.fs, _ = sources.filesystem(source)
        self.scoring = scoring(s["curve_steps"], s["reduce"], s["prep"].layout, s["batch_size"],
                               s["deletion_substrate"], s["insertion_substrate"], s["prep"].black(),
                               s.get("metrics", DEFAULT_METRICS), s.get("road_fractions", ROAD_FRACTIONS),
                               s.get("road_noise", ROAD_NOISE), span_of(s["prep"]), s["seed"])
        run = s["run"].replace(providers=providers, threads=threads)
        self.session_options = (providers, threads)
        self.explained = run.output if is_row_target(run.output) else None  # a box or region: one row each
        if self.explained is not None:
            self.scorer = TargetScorer(s["model"], self.explained, providers, threads)
            self.explainers = {m: None if m == RANDOM else Explainer(s["model"], settings=row_settings(
                run, m, s["model"], self.explained)) for m in s["methods"]}
        else:
            self.scorer = Scorer(s["model"], input=s["input"], output_name=s["output_name"], providers=providers,
                                 threads=threads)
            self.explainers = {m: None if m == RANDOM else Explainer(s["model"], settings=run.for_method(m))
                               for m in s["methods"]}
        # each method on a randomised copy of the model (smooth and efficient MPRT): built on first use
        self.randomized = {m: randomized_function(s["model"], e, s["seed"]) for m, e in self.explainers.items()}

    def _load(self, path: str) -> np.ndarray:
        from pyarrow.fs import LocalFileSystem


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

    def _attributions(self, method: str, images, targets, ids) -> tuple[np.ndarray, list]:
        """(attributions, the steps each image took: its own gradient points under steps="auto")."""
        explainer = self.explainers[method]
        keys = [image_key(i) for i in ids]
        if explainer is not None and (explainer.spec.draws_noise or explainer.spec.noisy_copies or (
                explainer.spec.uses_baseline and explainer.baseline == "noise")):
            # SmoothGrad's noise and the noise baseline are drawn per call: one image per call,
            # seeded by its id, so the result does not depend on which batch the image is in
            results = []
            for k, key in enumerate(keys):
                explainer.seed = int(self.settings["seed"]) * 2 ** 32 + key
                results.append(explainer.explain(images[k:k + 1], targets[k:k + 1]).attributions)
            explainer.seed = self.settings["seed"]
            return np.concatenate(results), [explainer.steps] * len(images)
        return attribute_counted(explainer, images, targets, keys, self.settings["seed"])

    def __call__(self, batch: dict) -> dict:
        s = self.settings
        rows = _Rows({name: m.curve_length(self.scoring) for m in self.scoring.measures for name in m.curve_names})
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
            if self.explained is not None:
                self._rows(images, ids, todo, rows)
                self._maybe_crash(list(map(str, batch["image"])))
                return rows.columns()
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
                attributions, taken = self._attributions(method, images[which], targets[which],
                                                         [ids[k] for k in which])
                seconds = (time.perf_counter() - start) / len(which)
                explainer = self.explainers[method]
                curves = score_curves(self.scorer, images[which], attributions, targets[which], self.scoring,
                                      [image_key(ids[k]) for k in which],  # ROAD's noise: seeded by the id
                                      explain_function(explainer, s["seed"]), randomized=self.randomized[method])
                for k, attribution, curve, steps in zip(which, attributions, curves, taken):
                    rows.add(ids[k], method, int(targets[k]), float(probabilities[k, targets[k]]), curve,
                             steps, seconds, self.scorer.provider, attribution)
        self._maybe_crash(list(map(str, batch["image"])))
        return rows.columns()

    def _rows(self, images, ids, todo, rows):
        """A box or region target: every kept box (or region) of the images is one row, its id
        "<image id>#box0" (target_evaluation.row_id), scored as evaluate scores it; an image
        without one adds no row (a resumed audit looks at it again)."""
        s = self.settings
        found, _ = find_rows(self.scorer, s["model"], images, self.explained, s["target"], s["prep"].layout,
                             *self.session_options)
        for method in s["methods"]:
            part = [r for r in found if method in todo[r.image]]
            if not part:
                continue
            keys = [row_id(ids[r.image], r) for r in part]
            x = images[[r.image for r in part]]
            start = time.perf_counter()
            attributions, taken = self._attributions(method, x, np.array([r.chosen for r in part], np.int64), keys)
            seconds = (time.perf_counter() - start) / len(part)
            for k, (key, row) in enumerate(zip(keys, part)):
                curves = score_row(self.scorer, x[k:k + 1], attributions[k:k + 1], row, self.scoring, image_key(key))
                rows.add(key, method, row.label, row.score, curves, taken[k], seconds, self.scorer.provider,
                         attributions[k], row.box)

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
    and no numbers; one "<curve>_curve" column per curve of the measures taken."""

    def __init__(self, lengths: dict[str, int]):
        self.lengths = lengths  # curve name -> points per curve (a one-number measure: 1)
        self.data = {k: [] for k in ("image", "method", "target", "score", "steps", "attribution_seconds",
                                     "provider", *(f"{c}_curve" for c in lengths), "npy", "error", "box")}

    def add(self, image, method, target, score, curves, steps, seconds, provider, attribution, box=None):
        """One result; box: a detector's box (x0, y0, x1, y1) where the row is one."""
        self.data["box"].append([math.nan] * 4 if box is None else [float(v) for v in box])
        buffer = BytesIO()
        np.save(buffer, attribution[None])  # [1, ...]: the model's input layout, as `explain` saves it
        for k, v in (("image", image), ("method", method), ("target", target), ("score", score),
                     ("steps", -1 if steps is None else steps), ("attribution_seconds", seconds),
                     ("provider", provider), *((f"{c}_curve", curves[c]) for c in self.lengths),
                     ("npy", buffer.getvalue()), ("error", "")):
            self.data[k].append(v)

    def failed(self, image, method, error):
        nan = {c: np.full(n, np.nan) for c, n in self.lengths.items()}
        self.add(image, method, -1, math.nan, nan, None, 0.0, "", np.zeros(0))
        self.data["npy"][-1], self.data["error"][-1] = b"", error

    def columns(self) -> dict:
        d = self.data
        out = {k: np.array(d[k], dtype=object) for k in ("image", "method", "provider", "npy", "error")}
        out.update(target=np.array(d["target"], np.int64), score=np.array(d["score"], np.float64),
                   steps=np.array(d["steps"], np.int64),
                   attribution_seconds=np.array(d["attribution_seconds"], np.float64),
                   box=np.array(d["box"], np.float64).reshape(len(d["box"]), 4))
        for c, n in self.lengths.items():
            out[f"{c}_curve"] = np.array(d[f"{c}_curve"], np.float64).reshape(len(d[f"{c}_curve"]), n)
        return out
