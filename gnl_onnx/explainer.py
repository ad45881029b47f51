"""The runtime of attribution: the Explainer runs an attribution model over images, steps split
into chunks that fit a memory budget, and reports what ran."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .adaptive import FIXED_STEPS, AdaptiveSteps, adapts
from .attribution import attribution_info, attribution_model
from .baselines import make_baseline
from .budget import Budget, human_size
from .errors import GnlOnnxError, NonFiniteError, UsageError
from .forward import ForwardRunner
from .methods import METHODS, get_method
from .runtime import choose_providers, detach_weights, make_session, release_freed_memory
from .settings import MAX_STEPS, Settings  # noqa: F401 - MAX_STEPS: imported from here
from .targets import get_target



@dataclass
class Explanation:
    attributions: np.ndarray  # shaped like the images
    target: np.ndarray        # int64 [N]: the explained class of each image
    score: np.ndarray         # [N]: the explained output (logit by default) for that class (a region's sum)
    scores: np.ndarray        # [N, classes]: the explained output for all classes ([N, C, H, W]: a map)
    method: str
    baseline: str
    steps: int
    integration: str
    provider: str
    seconds: float
    delta: np.ndarray | None = None  # ig, deeplift (complete methods): sum(attribution) - (F(image) - F(baseline))
    gated: list = field(default_factory=list)
    runs: dict = field(default_factory=dict)  # how the work was split: images and steps per run, and why
    # steps="auto" (gnl_onnx/adaptive.py): gradient points per image, the tolerance asked, the measure
    # reached per image (ig: a bound on the completeness gap; gnl_ig: the map's change), each image's points
    points: np.ndarray | None = None
    tolerance: float | None = None
    reached: np.ndarray | None = None
    quadrature: list | None = field(default=None, repr=False)

    def summary(self, i: int = 0) -> dict:
        row = {"method": self.method, "baseline": self.baseline, "steps": self.steps,
               "integration": self.integration, "target": int(self.target[i]),
               "score": float(self.score[i]), "provider": self.provider, "seconds": round(self.seconds, 3),
               "gated_units": len(self.gated)}
        if self.runs:
            row["runs"] = self.runs
        if self.delta is not None:
            row["convergence_delta"] = float(self.delta[i])
        if self.points is not None:
            row.update(steps="auto", points=int(self.points[i]), tolerance=self.tolerance,
                       tolerance_reached=float(self.reached[i]))
        return row


class Explainer:
    """Explainer(model, method="gnl_ig", steps=32, baseline="zeros").explain(images, target=None)."""

    def __init__(self, model, method: str = "gnl_ig", steps: int = 32, baseline="zeros",
                 integration: str = "gausslegendre", providers=None, memory_budget="auto",
                 gate: str = "paper", output: str = "logit", input: str | None = None,
                 output_name: str | None = None, black=None, layout: str | None = None, noise_level: float = 0.15,
                 seed: int = 0,
                 threads: int | None = None, layer=None, bounds=None, settings: Settings | None = None):
        """`settings`: the run's Settings (gnl_onnx/settings.py); without it, the keywords make one
        (validated there). With it, the keywords are not read."""
        if settings is None:
            settings = Settings(method=method, steps=steps, baseline=baseline, integration=integration,
                                providers=providers, memory_budget=memory_budget, gate=gate, output=output,
                                input=input, output_name=output_name, black=black, layout=layout,
                                noise_level=noise_level, seed=seed, threads=threads, layer=layer, bounds=bounds)
        self.settings = s = settings
        self.spec = get_method(s.method)
        self.target = get_target(s.output)  # what is explained (the graph's seed and score come from it)
        self.method, self.integration = s.method, s.integration
        # steps="auto": what a method that cannot adapt runs, and the panels' nodes of one that can
        self.adaptive = AdaptiveSteps(model, s, self.spec) if adapts(self.spec, s) else None
        self.steps = self.spec.steps_run(FIXED_STEPS if s.steps == "auto" else int(s.steps))  # what it really
        # runs (deeplift: 2, one-point methods: 1)
        self.alphas, self.weights = self.spec.points(self.steps, s.integration)
        self.baseline, self.black, self.layout = s.baseline, s.black, s.layout
        self.noise_level, self.seed = s.noise_level, s.seed
        if self.spec.forward_only:  # perturbed copies through the forward graph only (gnl_onnx/forward.py)
            self.forward = f = ForwardRunner(model, self.spec, s)
            self.info, self.row_bytes, self.provider, self.input_name = f.info, f.row_bytes, f.provider, f.info["input"]
            self.budget, self.budget_note, self.session, self.scores_once = f.budget, f.budget_note, None, False
            return
        providers, threads, memory_budget = s.providers, s.threads, s.memory_budget
        budget = Budget.resolve(memory_budget, choose_providers(providers)[0])
        # The attribution model is not kept: the session holds its own copy of the weights.
        attribution = attribution_model(model, method=s.method, gate=s.gate, output=s.output, input=s.input,
                                        output_name=s.output_name, layer=s.layer, bounds=s.bounds)
        self.info = attribution_info(attribution)
        self.row_bytes = self.info["bytes_per_row"]
        budget = budget.fit(2 * self.row_bytes, memory_budget)  # one step of one image and its score
        self.budget, self.budget_note = budget.bytes, budget.note
        light, weights = detach_weights(attribution)
        del attribution  # the weights are now held once (as arrays) until the session has its own copy
        self.session, self.provider = make_session(light, providers, threads, memory_pattern=False,
                                                   weights=weights, prepack=False)
        del light, weights
        release_freed_memory()  # the setup's copies of the weights, which the C heap would keep
        self.input_name = self.info["input"]
        self.outputs = ["attribution", "scores", "target_used", *self.spec.wrapped().extra_outputs]  # deeplift:
        # baseline_scores, F(baseline)
        # a run after the first of an image's path scores nothing again (no extra rows): see chunks()
        self.scores_once = any(i.name == "score_rows" for i in self.session.get_overridable_initializers()) \
            and not self.target.reads_image_rows  # a region read at the images needs them in every run

    def chunks(self, n_images: int, steps: int | None = None) -> tuple[int, int]:
        """(images, steps) per run, as many rows as the memory budget holds. The first run of a
        path also carries one row per image for its scores (later runs of the same images skip
        them), so whole paths come first: all steps for as many images as fit, else one image and
        as many steps as fit (8 images x 1 step would spend half of every run on score rows)."""
        total = self.steps if steps is None else steps  # (another step count: what it would be)
        rows = self.budget // self.row_bytes
        images = max(1, min(n_images, rows // (total + 1)))
        if self.spec.pairs_rows:  # the image and its reference must share a run
            return images, total
        per_run = max(1, min(total, rows // images - 1))
        return images, -(-total // -(-total // per_run))  # runs of equal size: 128 = 43+43+42

    def plan(self, n_images: int, steps: int | None = None) -> dict:
        """How explain() splits n images: images and steps per run, memory per run, and why."""
        if self.spec.forward_only:
            return self.forward.plan(n_images)
        images, steps = self.chunks(n_images, steps)
        rows = images * (steps + int(self.scores_once))  # (LRP and deeplift runs have no score rows)
        return {"images_per_run": images, "steps_per_run": steps, "memory_per_run": human_size(rows * self.row_bytes),
                "memory_budget": self.budget_note}

    def explain(self, images, target=None) -> Explanation:
        start = time.perf_counter()
        images = np.ascontiguousarray(images, dtype=np.float32)
        if not np.all(np.isfinite(images)):
            bad = int(np.count_nonzero(~np.isfinite(images)))
            raise UsageError(f"the images contain {bad} NaN or infinite values; give finite pixel values")
        self._check_shape(images)
        n = images.shape[0]
        targets = np.full(n, -1, np.int64) if target is None else np.broadcast_to(
            np.asarray(target, np.int64), (n,)).copy()
        classes = self.info["classes"]
        if classes and np.any(targets >= classes):
            raise UsageError(f"target {int(targets.max())} is out of range: the model has {classes} classes "
                             f"(0 to {classes - 1}); a negative target means the top-1 class")
        if self.adaptive is not None:
            return self._adaptive(images, targets, start)
        if self.spec.forward_only:
            attributions, scores, targets, reference, baselines = self.forward.attribute(
                images, targets, self._baselines(images), self.layout)
        elif self.spec.noisy_copies:
            attributions, scores, targets, reference, baselines = self._noisy_copies(images, targets)
        else:
            attributions, scores, targets, reference, baselines = self._attribute(images, targets)
        score = self.target.score(scores, targets)
        forward_bad = ~np.isfinite(scores.reshape(n, -1)).all(axis=1)
        backward_bad = ~np.isfinite(attributions.reshape(n, -1)).all(axis=1) & ~forward_bad
        delta = None
        if self.spec.complete and reference is None:
            per_run, _ = self.chunks(n)
            reference = np.zeros_like(score)
            for lo in range(0, n, per_run):
                part = slice(lo, min(n, lo + per_run))
                _, base_scores, _ = self._run(baselines[part], baselines[part], targets[part],
                                              np.ones(1, np.float32), np.zeros(1, np.float32), None)
                reference[part] = self.target.score(base_scores, targets[part], at=scores[part])
        if self.spec.complete:
            axes = tuple(range(1, images.ndim))
            delta = attributions.sum(axis=axes) - (score - reference)
        baseline_name = self.baseline if isinstance(self.baseline, str) else "array"
        result = Explanation(attributions, targets, score, scores, self.method,
                             baseline_name if self.spec.uses_baseline else "none", self.steps,
                             self.integration if self.spec.uses_integration else "none", self.provider,
                             time.perf_counter() - start, delta, self.info["gated"], self.plan(n))
        bad = np.flatnonzero(forward_bad | backward_bad)
        if bad.size:  # never hand out NaN maps as if they meant something
            raise NonFiniteError(bad, ["forward" if forward_bad[i] else "backward" for i in bad], partial=result)
        return result

    def _adaptive(self, images, targets, start) -> Explanation:
        attributions, scores, targets, reference, points, reached, quadrature = self.adaptive.explain(
            self, images, targets, self._baselines(images))
        score = self.target.score(scores, targets)
        delta = attributions.sum(axis=tuple(range(1, images.ndim))) - (score - reference) if self.spec.complete else None
        baseline_name = self.baseline if isinstance(self.baseline, str) else "array"
        result = Explanation(attributions, targets, score, scores, self.method, baseline_name, int(points.max()),
                             "adaptive", self.provider, time.perf_counter() - start, delta, self.info["gated"],
                             {}, points, self.adaptive.tolerance, reached, quadrature)
        bad = np.flatnonzero(~np.isfinite(attributions.reshape(len(images), -1)).all(axis=1))
        if bad.size:
            raise NonFiniteError(bad, ["backward"] * bad.size, partial=result)
        return result

    def path_integral(self, images, baselines, targets, alphas, weights) -> np.ndarray:
        """The method's attribution of each image from its own baseline at these points and
        weights, for given classes (>= 0), in runs that fit the memory budget, with no score rows
        (gnl_onnx/adaptive.py integrates a path panel by panel with it)."""
        per_run, steps_per_run = self.chunks(len(images), len(alphas))
        total = np.zeros_like(images)
        for lo in range(0, len(images), per_run):
            part = slice(lo, lo + per_run)
            for s in range(0, len(alphas), steps_per_run):
                total[part] += self._run(images[part], baselines[part], targets[part], alphas[s:s + steps_per_run],
                                         weights[s:s + steps_per_run], None, score_rows=0)[0]
        return total

    def _baselines(self, images):
        baselines = make_baseline(self.baseline if self.spec.uses_baseline else "zeros", images,
                                  black=self.black, layout=self.layout, seed=self.seed)
        if not np.all(np.isfinite(baselines)):
            raise UsageError("the baseline contains NaN or infinite values; give a finite baseline")
        return baselines

    def _attribute(self, images, targets):
        """(attributions, scores [N, classes], targets used, scores at the baselines or None, the
        baselines): the method's graph over the images, in runs that fit the memory budget."""
        n = len(images)
        baselines = self._baselines(images)
        per_run, steps_per_run = self.chunks(n)
        attributions = np.zeros_like(images)
        scores = reference = None
        for lo in range(0, n, per_run):
            part = slice(lo, min(n, lo + per_run))
            for s in range(0, self.steps, steps_per_run):
                steps = slice(s, min(self.steps, s + steps_per_run))
                alphas, weights = self.alphas[steps], self.weights[steps]
                short = steps_per_run - len(alphas)
                if short:  # same shape as the other runs (zero-weight points): one memory plan for all
                    alphas = np.concatenate([alphas, np.repeat(alphas[-1:], short)])
                    weights = np.concatenate([weights, np.zeros(short, weights.dtype)])
                noise = self._noise(images[part], lo, slice(s, s + steps_per_run))
                later = s > 0 and self.scores_once  # the targets are known now: skip the score rows
                attribution, part_scores, used, *at_baseline = self._run(images[part], baselines[part],
                                                                         targets[part], alphas, weights, noise,
                                                                         score_rows=0 if later else None)
                attributions[part] += attribution
                targets[part] = used  # later chunks explain the class the first one chose
                if scores is None:
                    scores = np.zeros((n, *part_scores.shape[1:]), np.float32)
                if not later:
                    scores[part] = part_scores
                if at_baseline:
                    reference = np.zeros(n, np.float32) if reference is None else reference
                    reference[part] = self.target.score(at_baseline[0], used, at=part_scores)
        return attributions, scores, targets, reference, baselines

    def _noisy_copies(self, images, targets):
        """SmoothGrad over a method that runs its own graph (gnl_onnx/methods/smoothgrad.py): the
        class is chosen at the clean images (one point of weight 0 through the method's graph), then
        the method explains that class at each noisy copy, and the attributions are averaged."""
        n = len(images)
        per_run, _ = self.chunks(n, 1)
        baselines = self._baselines(images)
        scores = None
        for lo in range(0, n, per_run):
            part = slice(lo, min(n, lo + per_run))
            _, part_scores, used, *_ = self._run(images[part], baselines[part], targets[part],
                                                 np.ones(1, np.float32), np.zeros(1, np.float32), None)
            scores = np.zeros((n, *part_scores.shape[1:]), np.float32) if scores is None else scores
            scores[part], targets[part] = part_scores, used
        total = np.zeros(images.shape, np.float64)
        for copy in range(self.spec.copies):
            noisy = images + self._draw_noise(images, 0, slice(copy, copy + 1))[0]
            total += self._attribute(noisy, targets.copy())[0]
        return (total / self.spec.copies).astype(np.float32), scores, targets, None, baselines

    def _check_shape(self, images):
        expected = self.info["image_shape"]
        mismatch = any(e is not None and e != d for e, d in zip(expected[1:], images.shape[1:]))
        if images.ndim != len(expected) or mismatch:
            shown = ", ".join("?" if d is None else str(d) for d in expected[1:])
            if len(expected) != 4:  # image files always become [1, C, H, W] or [1, H, W, C]
                hint = (f"its input has rank {len(expected)}, not the 4 of an image batch; give it arrays "
                        "of that shape through the Python API")
            else:
                hint = ("resize/crop them to fit (or use a preset), and match its channels (3 for RGB/BGR, "
                        "1 for L) and layout (NCHW or NHWC)")
            raise UsageError(f"the model takes images of shape (N, {shown}), got {tuple(images.shape)}; {hint}")

    def _noise(self, images, first_image, steps: slice):
        """SmoothGrad's noise for these images and steps; each (image, step) draws from its own
        seeded stream, so results do not depend on how the work is chunked."""
        if not self.spec.draws_noise:
            return None
        return self._draw_noise(images, first_image, steps)

    def _draw_noise(self, images, first_image, steps: slice):
        noise = np.empty((steps.stop - steps.start,) + images.shape, np.float32)
        for i, image in enumerate(images):
            spread = float(image.max() - image.min())
            for k, step in enumerate(range(steps.start, steps.stop)):
                rng = np.random.default_rng([self.seed, first_image + i, step])
                noise[k, i] = rng.standard_normal(image.shape) * (self.noise_level * spread)
        return noise

    def _run(self, images, baselines, targets, alphas, weights, noise, score_rows=None):
        if noise is None:
            noise = np.zeros((1,) * (images.ndim + 1), np.float32)
        feed = {self.input_name: images, "baseline": baselines, "target": targets, "alphas": alphas,
                "weights": weights, "noise": noise}
        if score_rows is not None:
            feed["score_rows"] = np.array([score_rows], np.int64)
        try:
            return self.session.run(self.outputs, feed)
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own unrelated classes
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            if "allocate" in first.lower():
                raise GnlOnnxError(f"ONNX Runtime ran out of memory ({first}); give a smaller memory budget "
                                   "(--memory-budget) or fewer images per call") from None
            raise GnlOnnxError(f"ONNX Runtime failed while computing the attribution ({first}); if the model "
                               "runs on its own, please report this with the model") from None


__all__ = ["Explainer", "Explanation", "METHODS"]
