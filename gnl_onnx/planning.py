"""The numbers an auditor sizes a run with, measured on this machine: the model's forward time per
image, the floor of a path method (2 x steps forward passes: a backward costs about one forward),
each method's expected seconds per image at the chosen steps, and its memory per path point.

Each method is timed on one image at a few steps (after a warm-up run) and extrapolated linearly in
the number of rows (steps + 1 per image): the rows of one run go through the graph as one batch,
so the cost per row is what stays constant."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import UsageError
from .attribution import get_method
from .budget import resolve_budget
from .explainer import Explainer
from .intake import prepare
from .runtime import make_session
from .targets import selected

MEASURED_STEPS = 4  # steps timed per method; the plan extrapolates to the asked steps
FORWARD_BATCH = 8


@dataclass
class MethodCost:
    method: str
    steps: int             # as the method runs them (1 for single-point methods)
    seconds_per_image: float
    times_floor: float | None  # seconds per image / floor (path methods)
    bytes_per_step: int    # memory of one image at one path point
    steps_per_run: int     # what the memory budget lets one run hold (one image)
    memory_per_run: str


@dataclass
class CostPlan:
    provider: str
    threads: int | None
    forward_seconds: float  # per image, at a batch of FORWARD_BATCH
    steps: int
    methods: list[MethodCost]
    memory_budget: str = ""  # how the budget was chosen (auto by default)

    @property
    def floor_seconds(self) -> float:
        return 2 * self.steps * self.forward_seconds

    def as_dict(self) -> dict:
        return {"provider": self.provider, "threads": self.threads, "forward_seconds": self.forward_seconds,
                "steps": self.steps, "floor_seconds": self.floor_seconds, "memory_budget": self.memory_budget,
                "methods": [vars(m) for m in self.methods]}

    def table(self) -> str:
        lines = [f"forward: {self.forward_seconds * 1e3:.1f} ms per image (batch {FORWARD_BATCH}, {self.provider}"
                 f"{f', {self.threads} threads' if self.threads else ''})",
                 f"floor at {self.steps} steps (2 x steps forward passes): {self.floor_seconds:.3g} s per image",
                 f"runs per image as the memory budget splits them ({self.memory_budget})",
                 f"{'method':<24}{'steps':>6}{'s/image':>10}{'x floor':>9}{'MB/step':>9}{'steps/run':>10}"
                 f"{'per run':>10}"]
        for m in self.methods:
            ratio = f"{m.times_floor:.1f}" if m.times_floor is not None else "-"
            lines.append(f"{m.method:<24}{m.steps:>6}{m.seconds_per_image:>10.3g}{ratio:>9}"
                         f"{m.bytes_per_step / (1 << 20):>9.1f}{m.steps_per_run:>10}{m.memory_per_run:>10}")
        return "\n".join(lines)


def plan_cost(model, methods=("gnl_ig", "ig", "gradient"), steps: int = 32, threads: int | None = None,
              providers=None, input: str | None = None, output_name: str | None = None,
              memory_budget="auto") -> CostPlan:
    """Measure what `methods` at `steps` will cost per image on this machine (see the module)."""

    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise UsageError(f"steps must be a positive integer (got {steps!r})")
    for method in methods:
        get_method(method)
    prepared = prepare(model, input, output_name).for_rows
    shape = prepared.image_shape
    if any(d is None for d in shape[1:]):
        raise UsageError("the model's image size is not fixed, so its cost depends on the images: export it with "
                         "a fixed image size to plan")
    rng = np.random.default_rng(0)
    batch = 1 if prepared.one_per_run else FORWARD_BATCH
    images = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
    forward, provider = _forward_seconds(make_session(selected(prepared).proto, providers, threads), prepared.input,
                                         images)
    image = images[:1]
    costs, budget_note = [], resolve_budget(memory_budget, provider)[1]
    for method in methods:
        along_steps = get_method(method).follows_steps  # the others run a fixed set of points
        explainer = Explainer(prepared, method=method, steps=min(steps, MEASURED_STEPS), threads=threads,
                              providers=providers, memory_budget=memory_budget)
        measured = _best_of(lambda e=explainer: e.explain(image), repeats=2)
        # a path run is its steps plus one row for the scores: the cost per row is what stays constant
        seconds = measured * (steps + 1) / (explainer.steps + 1) if along_steps else measured
        runs = steps if along_steps else 1
        floor = 2 * runs * forward
        split = explainer.plan(1, runs if along_steps else None)
        costs.append(MethodCost(method, runs, seconds, seconds / floor if along_steps else None,
                                explainer.row_bytes, split["steps_per_run"], split["memory_per_run"]))
    return CostPlan(provider, threads, forward, steps, costs, budget_note)


def _forward_seconds(opened, name: str, images) -> tuple[float, str]:
    """Seconds per image of the plain model's forward pass (its session is dropped on return)."""
    session, provider = opened
    return _best_of(lambda: session.run(None, {name: images}), repeats=3) / len(images), provider


def _best_of(run, repeats: int) -> float:
    """The fastest of `repeats` timed runs after one warm-up (the first run allocates and plans)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


__all__ = ["plan_cost", "CostPlan", "MethodCost"]
