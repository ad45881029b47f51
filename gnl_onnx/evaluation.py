"""Faithfulness of attributions, the service under `evaluate` and `audit`: which methods and
metrics a run asks for, the scoring settings, each attribution scored into curves and numbers by
the chosen measures (gnl_onnx/measures.py), a random attribution as the floor, summaries per
method (mean +- standard error), the recommendation, and the CSV and the plot of mean curves."""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import gnl_onnx.road as road

from .methods import METHODS, get_method, split_method_list
from .errors import UsageError
from .explainer import Explainer
from .measures import MEASURES, RANDOM, Perturbation
from .randomize import reset_model
from .scores import spearman
from .output import atomic_write
from .road import FRACTIONS as ROAD_FRACTIONS
from .road import NOISE as ROAD_NOISE
from .metrics import (BATCH_SIZE, CURVE_STEPS, DELETION_SUBSTRATE, INSERTION_SUBSTRATE, auc,
                      perturbation_curve, random_attribution, ranking, reduce_to_pixels)

ALL_METHODS = ("gradient", "input_x_gradient", "ig", "guided_backprop", "smoothgrad", "gnl_ig", RANDOM)
SUBSTRATE_NAMES = ("zeros", "black", "mean", "blur")
FILES = {"csv": "evaluation.csv", "json": "evaluation.json", "table": "evaluation.txt",
         "curves": "evaluation_curves.png", "report": "report.html"}
METRICS = tuple(MEASURES)  # deletion, insertion, road, the Quantus measures, randomization (gnl_onnx/measures.py)
DEFAULT_METRICS = ("deletion", "insertion")  # the rest cost more forward passes (or a sparse solve): asked for


def parse_metrics(text) -> tuple[str, ...]:
    """'deletion,insertion,road,...' (or a list) -> the metrics, checked, in MEASURES order (the
    recommendation rests on the first: deletion when it is measured)."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text)]
    names = [m for m in dict.fromkeys(names) if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UsageError(f"unknown metric {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
                         f"{', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


def _known(name: str) -> bool:
    try:
        get_method(name)
    except UsageError:
        return False
    return True


def parse_methods(text) -> list[str]:
    """'gnl_ig,ig,random' (or a list) -> the method names, checked, duplicates dropped; a method's
    options stay with it ('rise:masks=200,cells=3', as convert --methods reads them)."""
    names = [m.strip() for m in (split_method_list(text) if isinstance(text, str) else text)]
    names = [m for m in dict.fromkeys(names) if m]
    if not names:
        raise UsageError("no methods given; e.g. --methods gnl_ig,ig,random")
    unknown = [m for m in names if m != RANDOM and not _known(m)]
    if unknown:
        raise UsageError(f"unknown method {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(list(METHODS) + [RANDOM])} (or smoothgrad:<method>)")
    return names


@dataclass
class MethodSummary:
    method: str
    images: int
    steps: int | str | None     # attribution steps (None for random; "auto": chosen per image, see points)
    # deletion and insertion, None when not measured
    deletion: float | None = None             # mean deletion AUC (lower is better)
    deletion_se: float = math.nan             # its standard error (NaN for one image)
    insertion: float | None = None            # mean insertion AUC (higher is better)
    insertion_se: float = math.nan
    deletion_curve: np.ndarray | None = None  # mean curves, curve_steps + 1 points
    insertion_curve: np.ndarray | None = None
    # ROAD, None when not measured: mean AUCs of the most- (lower is better) and least-relevant-
    # first curves (higher is better), their difference LeRF - MoRF (higher is better), mean curves
    road_morf: float | None = None
    road_morf_se: float = math.nan
    road_lerf: float | None = None
    road_lerf_se: float = math.nan
    road_difference: float | None = None
    road_difference_se: float = math.nan
    road_morf_curve: np.ndarray | None = None  # one point per ROAD fraction
    road_lerf_curve: np.ndarray | None = None
    # the one-number measures (measures.Score): name -> (mean, standard error), in measure order
    scores: dict = field(default_factory=dict)
    points: tuple | None = None  # steps="auto": (min, mean, max) of the gradient points per image

    def steps_text(self) -> str:
        """The steps as the table shows them: '-' (random), N, or 'auto LO-HI' (points per image)."""
        if self.points is not None:
            low, _, high = self.points
            return f"auto {low}" if low == high else f"auto {low}-{high}"
        return "-" if self.steps is None else str(self.steps)

    def as_dict(self) -> dict:
        d = {"method": self.method, "images": self.images, "steps": self.steps}
        for name in ("deletion", "insertion"):
            if getattr(self, name) is not None:
                d.update({f"{name}_auc_mean": getattr(self, name),
                          f"{name}_auc_se": _finite(getattr(self, f"{name}_se"))})
        for name in ("deletion", "insertion"):
            if getattr(self, name) is not None:
                d[f"{name}_curve_mean"] = getattr(self, f"{name}_curve").tolist()
        if self.road_morf is not None:
            d.update({"road_morf_auc_mean": self.road_morf, "road_morf_auc_se": _finite(self.road_morf_se),
                      "road_lerf_auc_mean": self.road_lerf, "road_lerf_auc_se": _finite(self.road_lerf_se),
                      "road_difference_mean": self.road_difference,
                      "road_difference_se": _finite(self.road_difference_se),
                      "road_morf_curve_mean": self.road_morf_curve.tolist(),
                      "road_lerf_curve_mean": self.road_lerf_curve.tolist()})
        for name, (mean, se) in self.scores.items():
            d.update({f"{name}_mean": _finite(mean), f"{name}_se": _finite(se)})
        if self.points is not None:
            d["points"] = dict(zip(("min", "mean", "max"), self.points))  # per image
        return d


@dataclass
class Evaluation:
    config: dict
    records: list[dict] = field(default_factory=list)  # one per (image, method)
    summaries: dict[str, MethodSummary] = field(default_factory=dict)

    def measures(self) -> tuple:
        """The measures these summaries hold, in MEASURES order."""
        return tuple(m for m in MEASURES.values() if any(m.cells(s) for s in self.summaries.values()))

    def ranked(self, measure, summaries=None) -> list:
        """`summaries` (default: all) that `measure` ranks, best first (ties: in the given order)."""
        found = [s for s in (self.summaries.values() if summaries is None else summaries) if measure.rank(s)]
        return sorted(found, key=lambda s: measure.rank(s)[0] * (-1 if measure.better == "higher" else 1))

    def lead(self):
        """The measure the recommendation and the table's order rest on: the first one measured that
        ranks a method and leads (MEASURES order: deletion when measured), else the first that ranks
        one (a sanity check a random map passes, when only those were taken), or None."""
        ranking = [m for m in self.measures() if self.ranked(m)]
        return next((m for m in ranking if m.leads), ranking[0] if ranking else None)

    def table(self) -> str:
        """The legend line, then one row per method (best first by the leading measure) with every
        measure's columns: mean +- standard error."""
        c, measures = self.config, self.measures()
        legends = [m.legend(c) for m in measures]
        curves = max((k for k, m in enumerate(measures) if isinstance(m, Perturbation)), default=-1)
        legends.insert(curves + 1, f"{c['curve_steps']} curve steps; per-pixel {c['reduce']}; baseline {c['baseline']}"
                       + (f"; steps auto: points per image to tolerance {c['tolerance']:g}" if "tolerance" in c
                          else ""))
        headers = [h for m in measures for h in m.headers()]
        widths = [max(20, len(h) + 2) for h in headers]

        steps_width = max([7] + [len(s.steps_text()) + 2 for s in self.summaries.values()])

        def row(first, values, images, steps):
            return (f"{first:<18}" + "".join(f"{v:>{w}}" for v, w in zip(values[:2], widths[:2]))
                    + f"{images:>8}{steps:>{steps_width}}"
                    + "".join(f"{v:>{w}}" for v, w in zip(values[2:], widths[2:])))
        lines = ["; ".join(legends), row("method", headers, "images", "steps")]
        lead = self.lead()
        ranked = [] if lead is None else self.ranked(lead)
        for s in ranked + [s for s in self.summaries.values() if s not in ranked]:
            cells = [_pm(mean, se) for m in measures for mean, se in m.cells(s)]
            lines.append(row(s.method, cells, s.images, s.steps_text()))
        return "\n".join(lines)

    def agreement(self) -> dict:
        """How the measures rank the methods: per measure (its ranking number, see rank_key) each
        method's rank (1 best), the Spearman correlation of every two measures' ranks over the
        methods (three methods at least), and the pairs that disagree (correlation below 0)."""
        keys = {}
        for m in self.measures():
            values = {s.method: m.rank_key(s) for s in self.summaries.values()}
            values = {k: v for k, v in values.items() if v[0] is not None and math.isfinite(v[0])}
            if values:
                keys[m.name] = values
        ranks = {}
        for name, values in keys.items():
            ordered = sorted(values, key=lambda k: -values[k][0] if values[k][1] else values[k][0])
            ranks[name] = {method: position + 1 for position, method in enumerate(ordered)}
        names, correlations, disagree = list(ranks), {}, []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = [k for k in ranks[a] if k in ranks[b]]
                if len(shared) < 3:
                    continue
                rho = spearman([ranks[a][k] for k in shared], [ranks[b][k] for k in shared])
                correlations[f"{a} ~ {b}"] = None if not math.isfinite(rho) else round(rho, 4)
                if math.isfinite(rho) and rho < 0:
                    disagree.append([a, b])
        return {"ranks": ranks, "correlations": correlations, "disagree": disagree}

    def agreement_lines(self) -> list[str]:
        """The agreement as text: each measure's ranking, then the measures that disagree."""
        if {m.name for m in self.measures()} <= set(DEFAULT_METRICS):
            return []  # deletion and insertion alone: the output stays as it always was
        found = self.agreement()
        if len(found["ranks"]) < 2:
            return []
        lines = ["ranks by measure (1 best): " + "; ".join(
            f"{name}: " + " > ".join(sorted(r, key=r.get)) for name, r in found["ranks"].items())]
        if not found["correlations"]:
            return lines + ["rank correlation between measures: needs three methods or more"]
        if found["disagree"]:
            lines.append("measures that disagree (rank correlation < 0 over the methods): " + ", ".join(
                f"{a} vs {b} ({found['correlations'][f'{a} ~ {b}']:+.2f})" for a, b in found["disagree"]))
        else:
            lines.append("the measures agree: no two rank the methods in opposite directions (every rank "
                         "correlation >= 0)")
        return lines

    def recommendation(self) -> str:
        """One line: the best method by the leading measure (see lead), its margin over the next one
        and whether that margin exceeds their combined standard errors sqrt(se1^2 + se2^2); then
        the choice of every other measure taken that gives a second opinion (ROAD)."""
        floor = self.summaries.get(RANDOM)
        methods = [s for s in self.summaries.values() if s.method != RANDOM]
        lead = self.lead()
        if not self.summaries and self.config.get("note"):  # a box target with no box kept
            return f"recommendation: none: {self.config['note']}"
        if not methods:
            return "recommendation: none: only the random floor was evaluated"
        ranked = [] if lead is None else self.ranked(lead, methods)
        if not ranked:
            return "recommendation: none: no measure gave the methods a finite number"
        best = ranked[0]
        value, se = lead.rank(best)
        head = (f"recommendation: {best.method} is the most {lead.quality} method for this model and these "
                f"{best.images} image(s) ({'lowest' if lead.better == 'lower' else 'highest'} mean "
                f"{_named(lead)} {value:.4f})")
        runner = ranked[1] if len(ranked) > 1 else floor
        if runner is None or not lead.rank(runner):
            return head + "; it was the only method evaluated, so there is no margin to judge"
        other, other_se = lead.rank(runner)
        margin = _margin(lead, value, other)
        combined = math.sqrt(se ** 2 + other_se ** 2)
        if not math.isfinite(combined):
            verdict = "which cannot be weighed against standard errors from a single image"
        elif margin > combined:
            verdict = f"which exceeds their combined standard errors ({combined:.4f})"
        else:
            verdict = f"which does not exceed their combined standard errors ({combined:.4f}): not a clear winner"
        line = f"{head}; its margin over {runner.method} ({other:.4f}) is {margin:.4f}, {verdict}"
        if not lead.leads:
            line += f"; a random map passes {lead.label}: it can fail a method, not crown one"
        at_floor = None if floor is None or runner is floor or not lead.rank(floor) else lead.rank(floor)[0]
        if at_floor is not None and _margin(lead, value, at_floor) <= 0:
            line += f"; it does not beat the random floor ({at_floor:.4f})"
        return line + "".join(self._opinion(m, lead, ranked, floor) for m in self.measures()
                              if m is not lead and m.second_opinion)

    def _opinion(self, measure, lead, ranked, floor) -> str:
        """A second measure's view: the method it ranks first, whether that agrees with the leading
        measure's choice, and whether its margin exceeds the combined standard errors."""
        by = self.ranked(measure, ranked)
        if not by:
            return ""
        best = by[0]
        value, se = measure.rank(best)
        agree = "agrees" if best is ranked[0] else f"disagrees: {ranked[0].method} is {lead.label}'s choice"
        what = f"{measure.rank_what}, " if measure.rank_what else ""
        text = (f"; by {measure.label} ({what}{measure.better} is better) {best.method} ranks first ({value:.4f}), "
                f"which {agree}")
        if len(by) > 1:
            runner, runner_se = measure.rank(by[1])
            margin = _margin(measure, value, runner)
            combined = math.sqrt(se ** 2 + runner_se ** 2)
            if math.isfinite(combined):
                exceeds = "exceeds" if margin > combined else "does not exceed"
                text += (f"; its {measure.label} margin over {by[1].method} ({margin:.4f}) {exceeds} their combined "
                         f"standard errors ({combined:.4f})")
        if floor is not None and measure.rank(floor) and _margin(measure, value, measure.rank(floor)[0]) <= 0:
            text += f"; by {measure.label} it does not beat the random floor ({measure.rank(floor)[0]:.4f})"
        return text

    def as_dict(self) -> dict:
        extra = {"agreement": self.agreement()} if self.agreement_lines() else {}
        return {"config": self.config, "summary": [s.as_dict() for s in self.summaries.values()],
                "recommendation": self.recommendation(), **extra, "images": self.records}


def _named(measure) -> str:
    """The number a measure ranks by, in words: "deletion AUC", "ROAD LeRF - MoRF", "sparseness"."""
    return f"{measure.label} {measure.rank_what}".strip()


def _margin(measure, value: float, other: float) -> float:
    """How much better `value` is than `other` by `measure` (negative: worse)."""
    return value - other if measure.better == "higher" else other - value


def _finite(v):
    return float(v) if v is not None and math.isfinite(v) else None


def _pm(mean: float, se: float) -> str:
    return f"{mean:.4f} ± {se:.4f}" if math.isfinite(se) else f"{mean:.4f} ± n/a"


def _substrate(name, black):
    if isinstance(name, str) and name == "black":
        if black is None:
            raise UsageError("the black substrate needs the model's preprocessing (mean/std): give a preset "
                             "or mean/std, or use zeros")
        return np.asarray(black, np.float32)
    if isinstance(name, str) and name not in SUBSTRATE_NAMES:
        raise UsageError(f"unknown substrate '{name}'; choose one of {', '.join(SUBSTRATE_NAMES)}")
    return name


@dataclass(frozen=True)
class Scoring:
    """How every attribution is scored: shared by all methods and images of an evaluation (and of
    an audit). Substrates are names or arrays, already checked (see scoring)."""
    curve_steps: int = CURVE_STEPS
    reduce: str = "sum"
    layout: str | None = None
    batch_size: int = BATCH_SIZE
    deletion_substrate: object = DELETION_SUBSTRATE
    insertion_substrate: object = INSERTION_SUBSTRATE
    # ROAD (gnl_onnx.road): measured when road is True; its noise is road_noise * road_span (the
    # pixel range in the model's input space, per channel) and seeded by (seed, the image's key)
    road: bool = False
    road_fractions: tuple = ROAD_FRACTIONS
    road_noise: float = ROAD_NOISE
    road_span: object = 1.0
    seed: int = 0
    others: tuple = ()  # the measures asked for besides deletion, insertion and ROAD, by name
    chosen: tuple | None = None  # every measure asked for, by name (scoring() sets it); None: deletion and
    # insertion, ROAD when road, and the others

    @property
    def measures(self) -> tuple:
        """The measures every attribution is scored by (gnl_onnx/measures.py), in METRICS order."""
        if self.chosen is not None:
            return tuple(MEASURES[name] for name in METRICS if name in self.chosen)
        return tuple(MEASURES[name] for name in METRICS if name in DEFAULT_METRICS or (name == "road" and self.road)
                     or name in self.others)

    @property
    def explains_again(self) -> bool:
        """Whether a measure explains perturbed copies of the image (the sensitivities)."""
        return any(getattr(m, "needs_explain", False) for m in self.measures)

    @property
    def needs_masks(self) -> tuple:
        """The measures that read a region mask per image (the localisation measures), by name."""
        return tuple(m.name for m in self.measures if "mask" in getattr(m, "needs", ()))

    def config(self) -> dict:
        """The settings as evaluation.config states them (substrate arrays come from "black").
        ROAD's settings only when it is measured: without it the config is what it always was."""
        c = {"curve_steps": int(self.curve_steps), "reduce": self.reduce,
             "deletion_substrate": _substrate_name(self.deletion_substrate),
             "insertion_substrate": _substrate_name(self.insertion_substrate)}
        if self.road:
            c.update(metrics=[m.name for m in self.measures], road_fractions=list(self.road_fractions),
                     road_noise=self.road_noise)
        elif [m.name for m in self.measures] != list(DEFAULT_METRICS):
            c.update(metrics=[m.name for m in self.measures])
        return c


def _substrate_name(substrate) -> str:
    return substrate if isinstance(substrate, str) else "black"


def scoring(curve_steps: int = CURVE_STEPS, reduce: str = "sum", layout: str | None = None,
            batch_size: int = BATCH_SIZE, deletion_substrate=DELETION_SUBSTRATE,
            insertion_substrate=INSERTION_SUBSTRATE, black=None, metrics=DEFAULT_METRICS,
            road_fractions=road.FRACTIONS, road_noise: float = road.NOISE, road_span=None, seed: int = 0) -> Scoring:
    """Checked Scoring settings; "black" substrates become arrays (they need the preprocessing's black).
    road_span: the pixel range in the model's input space (road.span_of(preprocessing); None: 1.0)."""
    if reduce not in ("sum", "abs_sum"):
        raise UsageError(f"reduce must be 'sum' or 'abs_sum', got {reduce!r}")
    if not isinstance(curve_steps, (int, np.integer)) or curve_steps < 1:
        raise UsageError(f"curve steps must be a positive integer (got {curve_steps!r})")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UsageError(f"batch size must be a positive integer (got {batch_size!r})")
    if not (isinstance(road_noise, (int, float, np.floating)) and math.isfinite(road_noise) and road_noise >= 0):
        raise UsageError(f"ROAD noise must be a non-negative number (got {road_noise!r})")
    chosen = parse_metrics(metrics)
    return Scoring(int(curve_steps), reduce, layout, int(batch_size), _substrate(deletion_substrate, black),
                   _substrate(insertion_substrate, black), "road" in chosen,
                   road.check_fractions(road_fractions), float(road_noise),
                   1.0 if road_span is None else np.asarray(road_span, np.float32), int(seed),
                   tuple(m for m in chosen if m not in (*DEFAULT_METRICS, "road")), chosen)


def attribute(explainer, images, targets, random_keys, seed: int = 0) -> np.ndarray:
    """One method's attributions of `images` for `targets`: the Explainer's, or with explainer None
    the random floor, standard normal values seeded by (seed, key) for each image's key."""
    return attribute_counted(explainer, images, targets, random_keys, seed)[0]


def attribute_counted(explainer, images, targets, random_keys, seed: int = 0) -> tuple[np.ndarray, list]:
    """(attributions as attribute gives them, the steps each image took: the Explainer's steps, the
    gradient points it chose for that image under steps="auto", or None for the random floor)."""
    if explainer is None:
        return np.stack([random_attribution(images.shape[1:], (seed, key)) for key in random_keys]), \
            [None] * len(images)
    result = explainer.explain(images, targets)
    taken = [explainer.steps] * len(images) if result.points is None else [int(p) for p in result.points]
    return result.attributions, taken


def explain_function(explainer, seed: int = 0):
    """explain(images, targets) -> attributions of one method, for the measures that explain
    perturbed copies; the random floor draws fresh standard normal maps (seeded by `seed` and a
    running count), as a random explanation would."""
    if explainer is not None:
        return lambda images, targets: explainer.explain(images, targets).attributions
    calls = iter(range(2 ** 62))
    return lambda images, targets: np.stack([random_attribution(images.shape[1:], (seed, 2 ** 40 + next(calls)))
                                             for _ in range(len(images))])


def randomized_function(model, explainer, seed: int = 0):
    """(change=None) -> explain(images, targets) of the same method on a changed copy of `model`:
    change(model, seed) -> the copy, or None when there is nothing to change (then None); without
    it, every layer randomised as Quantus randomises it (randomize.reset_model), for smooth and
    efficient MPRT; the randomization measure redraws the top layers. Each copy is built on first
    use, then kept. The random floor's maps do not depend on the model."""
    built = {}

    def randomized(change=None):
        if change not in built:
            copy = None if explainer is None else (change or reset_model)(model, seed)
            built[change] = None if explainer is not None and copy is None else explain_function(
                None if explainer is None else Explainer(copy, settings=explainer.settings), seed)
        return built[change]
    return randomized


def score_curves(scorer, images, attributions, targets, scoring: Scoring, keys=None,
                 explain=None, masks=None, randomized=None) -> list[dict[str, np.ndarray]]:
    """The curves of each image's attribution by every measure of `scoring` (deletion and insertion;
    with scoring.road the ROAD curves "road_morf" and "road_lerf", their noise seeded by
    (scoring.seed, the image's key): keys[i] (default: i)), tracking its target's probability; a
    one-number measure's curve is its number. explain(images, targets) -> attributions: the
    method, for the measures that explain perturbed copies (the sensitivities, random_logit);
    masks: [N, H, W] region masks (the localisation measures); randomized: randomized_function's
    (the MPRTs). A measure over a set of images (sufficiency) takes these images as the set."""
    shared = {m.name: m.over_batch(scorer, images, attributions, targets, scoring)
              for m in scoring.measures if hasattr(m, "over_batch")}
    curves = []
    for i in range(len(images)):
        order = ranking(reduce_to_pixels(attributions[i:i + 1], scoring.layout, scoring.reduce))
        key = i if keys is None else keys[i]
        row = {}
        for measure in scoring.measures:
            row.update(measure.curves(scorer, images[i:i + 1], order, int(targets[i]), key, scoring,
                                      attribution=attributions[i:i + 1], explain=explain,
                                      mask=None if masks is None else masks[i], randomized=randomized,
                                      shared=shared[measure.name][i] if measure.name in shared else None))
        curves.append(row)
    return curves


def measured(curves: dict) -> tuple:
    """The measures whose curves are in `curves` (one image's, or per-method lists)."""
    return tuple(m for m in MEASURES.values() if all(curves.get(c) is not None and len(curves[c])
                                                     for c in m.curve_names))


def image_record(curves: dict, scoring: Scoring, **between) -> dict:
    """One image's record: every measure's numbers, then `between` (steps, seconds), then the curves."""
    chosen = measured(curves)
    record = {k: v for m in chosen for k, v in m.numbers(curves, scoring).items()}
    record.update(between)
    record.update({k: v for m in chosen for k, v in m.curve_fields(curves, scoring).items()})
    return record


def road_record(curves: dict, fractions) -> dict:
    """The ROAD numbers of one image's curves (empty without ROAD): AUCs, difference, curves."""
    if "road_morf" not in curves:
        return {}
    settings = Scoring(road_fractions=tuple(fractions))
    road_measure = MEASURES["road"]
    return {**road_measure.numbers(curves, settings), **road_measure.curve_fields(curves, settings)}


def summarize(method: str, per: dict, steps, road_fractions=road.FRACTIONS, points=None) -> MethodSummary:
    """Mean AUCs with standard errors and mean curves of one method, from every measure whose
    curves `per` holds ({"deletion": [curves], "insertion": [curves]} and, with ROAD, "road_morf"
    and "road_lerf" [curves] over road_fractions). points: the gradient points each image took
    when its steps were chosen per image (steps="auto")."""
    fields = {"scores": {}}
    if points is not None and len(points):
        fields["points"] = (int(min(points)), round(float(np.mean(points)), 2), int(max(points)))
    for measure in measured(per):
        found = measure.summary(per, road_fractions)
        fields["scores"].update(found.pop("scores", {}))
        fields.update(found)
    return MethodSummary(method=method, images=len(next(iter(per.values()), [])), steps=steps, **fields)


# -- files -----------------------------------------------------------------------------------------


def write_csv(evaluation: Evaluation, path: Path) -> Path:
    first = evaluation.records[0] if evaluation.records else {}
    chosen = evaluation.config.get("metrics", DEFAULT_METRICS)  # the columns of an evaluation without records
    numbers = [c for m in MEASURES.values() if (all(c in first for c in m.columns) if first else m.name in chosen)
               for c in m.columns]
    described = [k for k in ("image", "row", "method", "target", "probability", "score", "box") if k in first]
    columns = [*(described or ["image", "method", "target", "probability"]), *numbers, "steps",
               "attribution_seconds"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns + ["curve_steps", "reduce", "baseline", "deletion_substrate", "insertion_substrate"])
    c = evaluation.config
    for r in evaluation.records:
        writer.writerow([r[k] for k in columns] + [c["curve_steps"], c["reduce"], c["baseline"],
                                                    c["deletion_substrate"], c["insertion_substrate"]])
    return atomic_write(path, buffer.getvalue())


def curve_panels(evaluation: Evaluation) -> list:
    """The panels of plot_curves: each measure's (measures.Panel), in MEASURES order."""
    summaries = list(evaluation.summaries.values())
    return [p for m in evaluation.measures() for p in m.panels(summaries, evaluation.config) if p.series]


def plot_curves(evaluation: Evaluation, path: Path) -> Path:
    """Every measure's panels side by side (curve_panels): mean curves per method (deletion,
    insertion, ROAD's MoRF and LeRF), or a one-number measure's means as bars with their standard
    errors; the random floor dashed, in grey (Agg canvas: no GUI, no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = curve_panels(evaluation)
    figure = Figure(figsize=(5.5 * max(1, len(panels)), 4.2))  # 11 inches for deletion and insertion, as always
    FigureCanvasAgg(figure)
    for k, panel in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), k + 1)
        ax.set_title(panel.title)
        ax.set_ylabel(panel.ylabel)
        if panel.kind == "bar":
            names = [method for method, _, _ in panel.series]
            ax.bar(range(len(names)), [mean for _, mean, _ in panel.series],
                   yerr=[se if math.isfinite(se) else 0 for _, _, se in panel.series], capsize=3,
                   color=["grey" if method == RANDOM else f"C{i}" for i, method in enumerate(names)])
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            continue
        for method, x, y, value in panel.series:
            ax.plot(x, y, marker=panel.marker, label=f"{method} ({value:.3f})",
                    linestyle="--" if method == RANDOM else "-", color="grey" if method == RANDOM else None)
        ax.set_xlabel(panel.xlabel)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)  # probabilities: the same scale for every model
        ax.legend(fontsize=8)
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
