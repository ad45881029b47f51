"""Faithfulness measures as objects, in one registry (MEASURES), as the rules and methods are. A
measure sees one image, its attribution's pixel order (most important first), the explained class
and the scoring settings; it returns its curves, and from its curves the numbers of one image
(record), its columns, and the per-method summary fields. Evaluation (gnl_onnx/evaluation.py) and
the evaluate command iterate over the chosen measures and name none.

    deletion   RISE deletion: the target's probability as pixels are replaced by a substrate
    insertion  RISE insertion: the image's pixels put into a substrate
    road       ROAD (gnl_onnx/road.py): noisy linear imputation, most- and least-relevant-first

To add a measure: a class here with the same answers, and one line in MEASURES."""
from __future__ import annotations

import math

import numpy as np

import gnl_onnx.road as road

from .metrics import auc, perturbation_curve


def standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


class Perturbation:
    """Deletion or insertion: one curve of curve_steps + 1 points, its AUC (trapezoid over [0, 1])."""
    better = None  # "lower" (deletion) or "higher" (insertion)

    def __init__(self, name: str, better: str):
        self.name, self.better = name, better
        self.curve_names = (name,)
        self.columns = (f"{name}_auc",)

    def curves(self, scorer, image, order, target: int, key, scoring) -> dict[str, np.ndarray]:
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


class Road:
    """ROAD's most- and least-relevant-first curves over the fractions, their AUCs and the
    difference LeRF - MoRF; the noise seeded by (seed, the image's key)."""
    name = "road"
    curve_names = ("road_morf", "road_lerf")
    columns = ("road_morf_auc", "road_lerf_auc", "road_difference")

    def curves(self, scorer, image, order, target: int, key, scoring) -> dict[str, np.ndarray]:
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


MEASURES = {"deletion": Perturbation("deletion", "lower"), "insertion": Perturbation("insertion", "higher"),
            "road": Road()}

__all__ = ["MEASURES", "Perturbation", "Road", "standard_error"]
