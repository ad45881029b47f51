"""Faithfulness measures as objects, in one registry (MEASURES), as the rules and methods are. A
measure sees one image, its attribution's pixel order (most important first), the explained class
and the scoring settings; it returns its curves, and from its curves the numbers of one image
(record), its columns, and the per-method summary fields. Evaluation (gnl_onnx/evaluation.py) and
the evaluate command iterate over the chosen measures and name none.

    deletion   RISE deletion: the target's probability as pixels are replaced by a substrate
    insertion  RISE insertion: the image's pixels put into a substrate
    road       ROAD (gnl_onnx/road.py): noisy linear imputation, most- and least-relevant-first

and, opt-in by name, the measures Quantus 0.6.0 defines (gnl_onnx/scores.py), one number per image:
faithfulness_correlation, pixel_flipping, region_perturbation, irof, monotonicity_correlation,
sufficiency (over the images scored together), max_sensitivity, avg_sensitivity,
local_lipschitz_estimate, random_logit, smooth_mprt, efficient_mprt (the method again on a copy of
the model with every layer randomised), sparseness, complexity, and where a region mask is given per
image pointing_game, relevance_mass_accuracy, relevance_rank_accuracy (and relevance_mass, the
positive part's share, as explain reports it); and the model randomization
of Adebayo et al. (`randomization`: the map against the method's on the model with its top weighted
layers redrawn), which `check` also runs, as the check of that name.

Every measure answers: `curves` (one image's curves; a one-number measure gives a curve of one
point), `numbers` (the image's record columns), `curve_fields`, `summary` (MethodSummary fields),
`legend`, `headers` and `cells` (the text table), `rank` (the number that ranks methods and its
standard error; `rank_key`: the number and whether higher is better), `label`, `rank_what` and
`quality` (the recommendation's words), `leads` (False: a sanity check that a random map passes,
which can fail a method but not crown one), `second_opinion` (whether the recommendation also gives
its choice when another measure leads), `panels` (the plot of evaluate and audit) and
`forward_passes` (per image, for `inspect --cost`). A measure with a `threshold` is also a check.

MEASURES' order is the recommendation's priority: it rests on the first measure taken that leads
(deletion when measured; else the first taken), and the others with a second opinion add theirs.

To add a measure: a class here with the same answers, and one line in MEASURES."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

import gnl_onnx.road as road
import gnl_onnx.scores as scores

from .errors import UsageError
from .metrics import CURVE_STEPS, auc, perturbation_curve
from .pixels import image_layout, reduce_to_pixels, spearman
from .localisation import relevance_mass
from .randomize import randomize_layers, weighted_layers

RANDOM = "random"  # the random floor's method name: its series are drawn dashed, in grey


def standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


@dataclass
class Panel:
    """One panel of the plot of evaluate and audit: "line" series (method, x, y, the value in the
    legend) or "bar" series (method, mean, standard error)."""
    title: str
    kind: str = "line"
    xlabel: str = ""
    ylabel: str = "probability of the target class"
    series: list = field(default_factory=list)
    marker: str | None = None


def _ranked(mean, se):
    """A summary's (mean, standard error) as `rank` gives it: None when not measured or not finite."""
    return None if mean is None or not math.isfinite(mean) else (float(mean), float(se))


class Perturbation:
    """Deletion or insertion: one curve of curve_steps + 1 points, its AUC (trapezoid over [0, 1])."""
    better = None  # "lower" (deletion) or "higher" (insertion)
    quality, rank_what, leads, second_opinion = "faithful", "AUC", True, False

    def __init__(self, name: str, better: str, verb: str):
        self.name, self.better, self.verb = name, better, verb  # verb: what happens to the pixels
        self.label = name
        self.curve_names = (name,)
        self.columns = (f"{name}_auc",)

    def curves(self, scorer, image, order, target: int, key, scoring, **context) -> dict[str, np.ndarray]:
        substrate = getattr(scoring, f"{self.name}_substrate")
        return {self.name: perturbation_curve(scorer, image, order, substrate, scoring.curve_steps, self.name,
                                              scoring.batch_size, target, scoring.layout)}

    def numbers(self, curves, scoring) -> dict:
        return {f"{self.name}_auc": auc(curves[self.name])}

    def curve_fields(self, curves, scoring) -> dict:
        return {f"{self.name}_curve": curves[self.name].tolist()}

    def summary(self, per: dict, scoring_fractions=None) -> dict:
        """MethodSummary fields from every image's curves of one method."""
        values = np.array([auc(c) for c in per[self.name]])
        return {self.name: float(values.mean()), f"{self.name}_se": standard_error(values),
                f"{self.name}_curve": np.mean(per[self.name], axis=0)}

    def curve_length(self, scoring) -> int:
        return scoring.curve_steps + 1

    def legend(self, config) -> str:
        return f"{self.name}: substrate {config[self.name + '_substrate']} ({self.better} is better)"

    def headers(self) -> list[str]:
        return [f"{self.name} AUC"]

    def cells(self, summary) -> list[tuple[float, float]]:
        if getattr(summary, self.name) is None:  # not measured
            return []
        return [(getattr(summary, self.name), getattr(summary, f"{self.name}_se"))]

    def rank(self, summary):
        return _ranked(getattr(summary, self.name), getattr(summary, f"{self.name}_se"))

    def rank_key(self, summary):
        return getattr(summary, self.name), self.better == "higher"

    def panels(self, summaries, config) -> list[Panel]:
        series = [(s.method, np.linspace(0, 1, len(c)), c, getattr(s, self.name))
                  for s in summaries if (c := getattr(s, f"{self.name}_curve")) is not None]
        return [Panel(f"{self.name} (substrate {config[self.name + '_substrate']}; AUC, {self.better} is better)",
                      xlabel=f"fraction of pixels {self.verb}", series=series)]

    def forward_passes(self, scoring, steps_run: int = 1, features: int = 0) -> int:
        return scoring.curve_steps + 1


class Road:
    """ROAD's most- and least-relevant-first curves over the fractions, their AUCs and the
    difference LeRF - MoRF; the noise seeded by (seed, the image's key)."""
    name = "road"
    curve_names = ("road_morf", "road_lerf")
    columns = ("road_morf_auc", "road_lerf_auc", "road_difference")
    better, quality, label, rank_what, leads, second_opinion = "higher", "faithful", "ROAD", "LeRF - MoRF", True, True

    def curves(self, scorer, image, order, target: int, key, scoring, **context) -> dict[str, np.ndarray]:
        return {f"road_{which}": road.road_curve(scorer, image, order, scoring.road_fractions, which,
                                                 scoring.road_noise, scoring.road_span, scoring.seed, key, target,
                                                 scoring.batch_size, scoring.layout)
                for which in road.ORDERS}

    def numbers(self, curves, scoring) -> dict:
        r = road.summary(curves["road_morf"], curves["road_lerf"], scoring.road_fractions)
        return {"road_morf_auc": r["morf_auc"], "road_lerf_auc": r["lerf_auc"], "road_difference": r["difference"]}

    def curve_fields(self, curves, scoring) -> dict:
        return {"road_morf_curve": np.asarray(curves["road_morf"]).tolist(),
                "road_lerf_curve": np.asarray(curves["road_lerf"]).tolist()}

    def summary(self, per: dict, fractions=road.FRACTIONS) -> dict:
        morf = np.array([road.auc(c, fractions) for c in per["road_morf"]])
        lerf = np.array([road.auc(c, fractions) for c in per["road_lerf"]])
        return {"road_morf": float(morf.mean()), "road_morf_se": standard_error(morf),
                "road_lerf": float(lerf.mean()), "road_lerf_se": standard_error(lerf),
                "road_difference": float((lerf - morf).mean()), "road_difference_se": standard_error(lerf - morf),
                "road_morf_curve": np.mean(per["road_morf"], axis=0),
                "road_lerf_curve": np.mean(per["road_lerf"], axis=0)}

    def curve_length(self, scoring) -> int:
        return len(scoring.road_fractions)

    def legend(self, config) -> str:
        return (f"ROAD: noisy linear imputation, noise {config['road_noise']} of the pixel range, fractions "
                f"{', '.join(f'{f:g}' for f in config['road_fractions'])}, MoRF lower, LeRF and LeRF - MoRF higher "
                "are better")

    def headers(self) -> list[str]:
        return ["ROAD MoRF AUC", "ROAD LeRF AUC", "LeRF - MoRF"]

    def cells(self, summary) -> list[tuple[float, float]]:
        if summary.road_morf is None:
            return []
        return [(summary.road_morf, summary.road_morf_se), (summary.road_lerf, summary.road_lerf_se),
                (summary.road_difference, summary.road_difference_se)]

    def rank(self, summary):
        return _ranked(summary.road_difference, summary.road_difference_se)

    def rank_key(self, summary):
        return summary.road_difference, True

    def panels(self, summaries, config) -> list[Panel]:
        panels = []
        for which, name, first, better in (("morf", "MoRF", "most", "lower"), ("lerf", "LeRF", "least", "higher")):
            series = [(s.method, config["road_fractions"], c, getattr(s, f"road_{which}"))
                      for s in summaries if (c := getattr(s, f"road_{which}_curve")) is not None]
            panels.append(Panel(f"ROAD {name}: {first} relevant removed first (AUC, {better} is better)",
                                xlabel="fraction of pixels removed (noisy linear imputation)", series=series,
                                marker="."))
        return panels

    def forward_passes(self, scoring, steps_run: int = 1, features: int = 0) -> int:
        return 2 * len(scoring.road_fractions)


def _generator(seed: int, key) -> np.random.RandomState:
    """The random draws of one image: seeded by (the run's seed, the image's key), so an image's
    number does not depend on the batch it is in."""
    return np.random.RandomState(np.random.SeedSequence((int(seed), int(key))).generate_state(4))


class Score:
    """A measure with one number per image, computed by `compute(context)` (gnl_onnx/scores.py);
    its curve is that one number. Summarized as mean +- standard error, in MethodSummary.scores.
    needs_explain: it explains perturbed copies (the context's `explain`); needs: what else of
    the context it reads, "mask" (the image's region) or "randomized" (the method on a randomised
    model)."""
    curve_names: tuple
    columns: tuple
    rank_what, second_opinion = "", False

    def __init__(self, name: str, better: str, compute, passes, legend: str, needs_explain: bool = False,
                 needs: tuple = (), quality: str = "faithful", leads: bool = True):
        self.name, self.better, self.compute, self.passes, self.text = name, better, compute, passes, legend
        self.needs_explain, self.needs = needs_explain, tuple(needs)
        self.quality, self.label = quality, name  # "the most <quality> method", by Quantus's categories
        self.leads = leads
        self.curve_names = self.columns = (name,)

    def curves(self, scorer, image, order, target: int, key, scoring, attribution=None, explain=None,
               **given) -> dict:
        context = {"scorer": scorer, "image": image, "attribution": attribution, "target": int(target),
                   "rng": _generator(scoring.seed, key), "explain": explain, "batch_size": scoring.batch_size,
                   "layout": image_layout(np.shape(image), scoring.layout), "reduce": scoring.reduce,
                   "mask": given.get("mask"), "randomized": given.get("randomized")}
        return {self.name: np.array([float(self.compute(context))])}

    def numbers(self, curves, scoring) -> dict:
        return {self.name: float(np.asarray(curves[self.name]).reshape(-1)[0])}

    def curve_fields(self, curves, scoring) -> dict:
        return {}

    def summary(self, per: dict, scoring_fractions=None) -> dict:
        values = np.array([float(np.asarray(c).reshape(-1)[0]) for c in per[self.name]])
        finite = values[np.isfinite(values)]  # NaN: undefined for that image (a constant map)
        mean = float(finite.mean()) if len(finite) else math.nan
        return {"scores": {self.name: (mean, standard_error(finite))}}

    def curve_length(self, scoring) -> int:
        return 1

    def legend(self, config) -> str:
        return f"{self.name}: {self.text} ({self.better} is better)"

    def headers(self) -> list[str]:
        return [self.name.replace("_", " ")]

    def cells(self, summary) -> list[tuple[float, float]]:
        return [summary.scores[self.name]] if self.name in summary.scores else []

    def rank(self, summary):
        return _ranked(*summary.scores.get(self.name, (None, None)))

    def rank_key(self, summary):
        return summary.scores.get(self.name, (None,))[0], self.better == "higher"

    def panels(self, summaries, config) -> list[Panel]:
        """One number per image: the methods' means as bars, their standard errors as error bars."""
        series = [(s.method, *s.scores[self.name]) for s in summaries if self.name in s.scores]
        return [Panel(f"{self.name} (mean per image, {self.better} is better)", "bar", ylabel=self.name,
                      series=series)]

    def forward_passes(self, scoring, steps_run: int = 1, features: int = 3 * 224 * 224) -> int:
        return int(self.passes(scoring, steps_run, features))


class BatchScore(Score):
    """A Score defined over a set of images (Quantus: over each batch it is given), computed once
    for the images scored together (score_curves' images) by `compute(context)` -> [N]; each
    image's curve is its own number."""

    def over_batch(self, scorer, images, attributions, targets, scoring) -> np.ndarray:
        return np.asarray(self.compute({"scorer": scorer, "images": images, "attributions": attributions,
                                        "targets": targets, "batch_size": scoring.batch_size}), np.float64)

    def curves(self, scorer, image, order, target: int, key, scoring, shared=None, **given) -> dict:
        return {self.name: np.array([float(shared)])}


def _outputs(context, softmax: bool):
    return lambda images: context["scorer"].outputs(images, softmax, context["batch_size"])


def _explain(context):
    if context["explain"] is None:
        raise ValueError("this measure explains perturbed copies of the image and needs the method (explain)")
    return context["explain"]


def _randomized(context, change=None):
    """The method on a changed copy of the model: change(model, seed) -> the copy (None: every layer
    randomised, randomize.reset_model); None when the change finds nothing to change."""
    if context["randomized"] is None:
        raise ValueError("this measure explains the image on a randomised model and needs the method there "
                         "(randomized)")
    return context["randomized"]() if change is None else context["randomized"](change)


class ModelRandomization(Score):
    """Adebayo et al.'s model randomization, one number per image: the Spearman correlation of the
    image's signed per-pixel map with the map the same method gives for the same class once the top
    `layers` weighted layers (output side first) are redrawn (randomize.randomize_layers, as the
    cascading randomization of `check` draws them); lower is better: the map depends on what the
    model learned. A map that turns constant counts as 0 (it changed). As a check (`check`), the
    worst image is held to the Thresholds field `threshold` with `size` layers redrawn."""
    threshold, size = "randomization_max_spearman", "randomized_layers"  # check's Thresholds fields

    def __init__(self, name: str = "randomization", layers: int = 2):
        super().__init__(name, "lower", self._compute, lambda s, k, f: 2 * k,
                         f"Spearman rho of the signed map with the method's map once the top {layers} weighted "
                         "layers are redrawn (Adebayo et al.); a random map passes it", needs=("randomized",),
                         quality="weight-sensitive", leads=False)
        self.layers = layers

    def redrawn(self, model, seed: int, layers: int | None = None):
        """The model with its top `layers` (default self.layers) weighted layers redrawn, seeded by
        `seed`; None when it has no weighted layer with constant weights."""
        names = self.layer_names(model, layers)
        return randomize_layers(model, names, seed) if names else None

    def layer_names(self, model, layers: int | None = None) -> list[str]:
        return [layer["name"] for layer in weighted_layers(model)][:layers or self.layers]

    def correlations(self, original, changed, layout) -> dict[str, list[float]]:
        """Per image, the Spearman correlation of the signed ("sum") and absolute ("abs_sum")
        per-pixel maps of `original` and `changed` attributions; 0 where a map turned constant."""
        found = {"sum": [], "abs_sum": []}
        for a, b in zip(original, changed):
            for how, values in found.items():
                rho = spearman(reduce_to_pixels(a[None], layout, how), reduce_to_pixels(b[None], layout, how))
                values.append(0.0 if math.isnan(rho) else float(rho))
        return found

    def _compute(self, context) -> float:
        explain = _randomized(context, self.redrawn)
        if explain is None:
            return math.nan
        after = explain(context["image"], np.array([context["target"]]))
        return self.correlations(context["attribution"], after, context["layout"])["sum"][0]

    def check(self, source, explain, layout, seed: int, thresholds) -> dict | str:
        """`check`'s judgement: the worst image's correlation with thresholds' `size` layers
        redrawn, against its `threshold`, as {"label", "value", "op", "limit", "note", "details"};
        or why it is skipped. explain(model) -> the check's attributions by `model` (None: the
        source itself), for the classes the source explains."""
        layers = self.layer_names(source, getattr(thresholds, self.size))
        if not layers:
            return "no Conv/Gemm/MatMul with constant weights to randomize"
        found = self.correlations(explain(None), explain(randomize_layers(source, layers, seed)), layout)
        return {"label": "worst Spearman with the original", "value": max(found["sum"]), "op": "<=",
                "limit": getattr(thresholds, self.threshold), "note": f"randomized {', '.join(layers)}, signed maps",
                "details": {"layers": layers, "spearman": found["sum"], "spearman_abs": found["abs_sum"]}}


def _classes(context) -> int:
    return context["scorer"].outputs(context["image"], True, 1).shape[1]


def _localised(function):
    """A localisation measure of scores.py on the image's per-pixel map (--reduce) and its mask."""
    def compute(context):
        if context["mask"] is None:
            raise UsageError("the localisation measures need a region mask per image: give evaluate --masks")
        pixels = reduce_to_pixels(context["attribution"], context["layout"], context["reduce"])
        return function(pixels[None, None], np.asarray(context["mask"])[None, None])[0]
    return compute


# The Quantus measures with Quantus's defaults, except where an image of 224 x 224 x 3 makes them
# impractical: pixel flipping and monotonicity correlation step through the features in 64 groups
# (Quantus: one feature a step), monotonicity correlation draws 10 fillings per group (Quantus
# 100), the sensitivities and the Lipschitz estimate 10 noisy copies (Quantus 200), smooth MPRT
# 10 noisy copies (Quantus 50). The functions in scores.py take every setting; these instances are
# what `--metrics` names. IROF's superpixels: SLIC's default of about 100 (their number varies).
PIXEL_GROUPS, FILLINGS, NOISY_COPIES, SUPERPIXELS = 64, 10, 10, 100


def _group_size(features: int) -> int:
    """Features per group: ceil(features / PIXEL_GROUPS), so there are at most PIXEL_GROUPS groups."""
    return max(1, math.ceil(features / PIXEL_GROUPS))


def _group(context) -> int:
    return _group_size(np.asarray(context["image"]).size)


QUANTUS = [
    Score("faithfulness_correlation", "higher", lambda c: scores.faithfulness_correlation(
        _outputs(c, False), c["image"], c["attribution"], [c["target"]], rng=c["rng"],
        subset_size=min(224, np.asarray(c["image"]).size - 1), batch_size=c["batch_size"])[0],
        lambda s, k, f: 101, "Quantus FaithfulnessCorrelation: Pearson r of subset sums and logit drops, 100 "
        "subsets of 224 features set to the image's minimum"),
    Score("pixel_flipping", "lower", lambda c: scores.pixel_flipping(
        _outputs(c, True), c["image"], c["attribution"], [c["target"]], features_in_step=_group(c),
        batch_size=c["batch_size"])[0],
        lambda s, k, f: math.ceil(f / _group_size(f)),
        "Quantus PixelFlipping: area (dx = 1) of the probability curve as "
        f"{PIXEL_GROUPS} groups of features are set to the minimum, most relevant first"),
    Score("region_perturbation", "higher", lambda c: scores.region_perturbation(
        _outputs(c, True), c["image"], c["attribution"], [c["target"]], batch_size=c["batch_size"])[0],
        lambda s, k, f: 100 + 1, "Quantus RegionPerturbation: AOPC, 100 squares of 8 x 8 set to the minimum, most "
        "relevant first"),
    Score("irof", "higher", lambda c: scores.irof(
        _outputs(c, True), c["image"], c["attribution"], [c["target"]], layout=c["layout"],
        batch_size=c["batch_size"])[0],
        lambda s, k, f: SUPERPIXELS + 1, "Quantus IROF: area over the curve of the probability (relative to the "
        "clean image's) as SLIC superpixels are set to the image's mean, most relevant first"),
    Score("monotonicity_correlation", "higher", lambda c: scores.monotonicity_correlation(
        _outputs(c, True), c["image"], c["attribution"], [c["target"]], nr_samples=FILLINGS,
        features_in_step=_group(c), rng=c["rng"], batch_size=c["batch_size"])[0],
        lambda s, k, f: math.ceil(f / _group_size(f)) * FILLINGS + 1,
        "Quantus MonotonicityCorrelation: Spearman rho of group "
        f"relevance and output variance, {PIXEL_GROUPS} groups, {FILLINGS} uniform fillings each"),
    BatchScore("sufficiency", "higher", lambda c: scores.sufficiency(
        c["attributions"], c["scorer"].outputs(c["images"], True, c["batch_size"]).argmax(axis=1)),
        lambda s, k, f: 1, "Quantus Sufficiency: of the other images scored together whose maps lie within 0.6 "
        "(standardized Euclidean, over the largest distance), the share of the same predicted class"),
    Score("max_sensitivity", "lower", lambda c: scores.sensitivity(
        _explain(c), c["image"], c["attribution"], [c["target"]], nr_samples=NOISY_COPIES, rng=c["rng"])[0],
        lambda s, k, f: NOISY_COPIES * 2 * k, f"Quantus MaxSensitivity: largest relative change of the map over "
        f"{NOISY_COPIES} copies with uniform noise in [-0.2, 0.2]; it does not flag random maps", True,
        quality="robust", leads=False),
    Score("avg_sensitivity", "lower", lambda c: scores.sensitivity(
        _explain(c), c["image"], c["attribution"], [c["target"]], nr_samples=NOISY_COPIES, rng=c["rng"],
        reduce="mean")[0],
        lambda s, k, f: NOISY_COPIES * 2 * k, f"Quantus AvgSensitivity: mean relative change of the map over "
        f"{NOISY_COPIES} noisy copies; it does not flag random maps", True, quality="robust", leads=False),
    Score("local_lipschitz_estimate", "lower", lambda c: scores.local_lipschitz_estimate(
        _explain(c), c["image"], c["attribution"], [c["target"]], nr_samples=NOISY_COPIES, rng=c["rng"])[0],
        lambda s, k, f: NOISY_COPIES * 2 * k, f"Quantus LocalLipschitzEstimate: largest ratio of map distance to "
        f"input distance over {NOISY_COPIES} copies with Gaussian noise (std 0.1); it does not flag random maps",
        True, quality="robust", leads=False),
    Score("random_logit", "lower", lambda c: scores.random_logit(
        _explain(c), c["image"], c["attribution"], [c["target"]], _classes(c), rng=c["rng"])[0],
        lambda s, k, f: 2 * k + 1, "Quantus RandomLogit: SSIM of the map with the map of a random other class; "
        "a random map passes it", True, quality="class-sensitive", leads=False),
    Score("smooth_mprt", "lower", lambda c: scores.smooth_mprt(
        _randomized(c), c["image"], c["attribution"], [c["target"]], nr_samples=NOISY_COPIES, rng=c["rng"])[0],
        lambda s, k, f: NOISY_COPIES * 2 * k, "Quantus SmoothMPRT: Spearman rho of the map with the method's mean "
        f"map over {NOISY_COPIES} noisy copies on the model with every layer randomised; a random map passes it",
        needs=("randomized",), quality="weight-sensitive", leads=False),
    Score("efficient_mprt", "higher", lambda c: scores.efficient_mprt(
        _randomized(c), c["image"], c["attribution"], [c["target"]])[0],
        lambda s, k, f: 2 * k, "Quantus EfficientMPRT: relative rise of the map's discrete entropy (100 bins) on "
        "the model with every layer randomised; a random map passes it", needs=("randomized",),
        quality="weight-sensitive", leads=False),
    Score("sparseness", "higher", lambda c: scores.sparseness(c["attribution"])[0], lambda s, k, f: 0,
          "Quantus Sparseness: Gini index of |map|", quality="concise"),
    Score("complexity", "lower", lambda c: scores.complexity(c["attribution"])[0], lambda s, k, f: 0,
          "Quantus Complexity: entropy of |map|'s shares", quality="concise"),
    Score("pointing_game", "higher", _localised(scores.pointing_game), lambda s, k, f: 0,
          "Quantus PointingGame: the per-pixel map's maximum inside the mask", needs=("mask",), quality="localised"),
    Score("relevance_mass_accuracy", "higher", _localised(scores.relevance_mass_accuracy), lambda s, k, f: 0,
          "Quantus RelevanceMassAccuracy: the per-pixel map's share inside the mask", needs=("mask",),
          quality="localised"),
    Score("relevance_mass", "higher", _localised(lambda a, s: np.atleast_1d(relevance_mass(a[:, 0], s[:, 0]))),
          lambda s, k, f: 0, "the positive part of the per-pixel map: its share inside the mask, 0..1 (Arras et "
          "al.'s relevance mass on the positive attribution, as explain reports it)", needs=("mask",),
          quality="localised"),
    Score("relevance_rank_accuracy", "higher", _localised(scores.relevance_rank_accuracy), lambda s, k, f: 0,
          "Quantus RelevanceRankAccuracy: of the mask's size in top pixels, the share inside it", needs=("mask",),
          quality="localised"),
]


MEASURES = {"deletion": Perturbation("deletion", "lower", "removed"),
            "insertion": Perturbation("insertion", "higher", "inserted"),
            "road": Road(), **{m.name: m for m in QUANTUS}, "randomization": ModelRandomization()}

def forward_passes(steps: int = 32, scoring=None, features: int = 3 * 224 * 224) -> dict[str, int]:
    """Each measure's forward passes per image of `features` values (a backward pass counted as one
    forward, as planning.py does): the sensitivities explain every noisy copy again, 2 x steps passes
    each for a method of `steps` points (random_logit and the MPRTs explain again too); irof's
    number is about (SLIC's superpixels vary). scoring: the curve steps and ROAD fractions (default:
    the defaults)."""
    if scoring is None:
        scoring = SimpleNamespace(curve_steps=CURVE_STEPS, road_fractions=road.FRACTIONS)
    return {name: m.forward_passes(scoring, steps, features) for name, m in MEASURES.items()}


__all__ = ["MEASURES", "forward_passes", "QUANTUS", "BatchScore", "ModelRandomization", "Panel", "Perturbation",
           "Road", "Score", "standard_error"]
