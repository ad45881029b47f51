"""Adaptive steps (`steps="auto"`): per image, as many path points as a stated tolerance needs,
placed where the score changes, for the path methods (ig, gnl_ig).

The path [0, 1] from the baseline to the image is cut into panels, each integrated by a few
Gauss-Legendre nodes. A panel [a, b] runs through the method's own graph as the image
baseline + b (image - baseline) with the baseline baseline + a (image - baseline): its factor is
then (b - a)(image - baseline) and the graph's points are the panel's, so every panel of every
image is one row of one batch, and the attribution is the sum of the panels' maps.

1. Forward passes only (a third of a gradient point each) probe the score F at PROBES + 1 points
   of the path; the first panels are cut at probes so that each holds an equal share of the
   score's change (a flat stretch becomes one wide panel, a steep one several narrow ones).
2. IG is complete: a panel's map sums to F(b) - F(a) when it is integrated exactly, and both are
   known from forward passes, so each panel's error is measured, not estimated. Until the
   completeness gap |sum(attribution) - (F(image) - F(baseline))| / |F(image) - F(baseline)| is
   within the tolerance, the panels with the largest errors are halved (a forward pass at the
   middle decides the halves' errors), so points gather where the score changes.
3. GNL-IG is not complete: a panel's error is the change of its map when it is halved,
   d = map(a, b) - map(a, m) - map(m, b) (each half inherits d / 2). Every first panel is halved
   once, then the panels whose last halving changed most (||d||_1), until the map's change
   ||sum of d||_1 / ||attribution||_1 is within the tolerance: the signed change of the whole map,
   as the fixed rule's doubling test ||A_s - A_2s||_1 / ||A_2s||_1 measures it (summing the panels'
   ||d||_1 instead counted changes that cancel in the map, and ran 3-8x the points the doubling
   test needs for the same stability).
Images stop separately; each stops at MAX_POINTS gradient points whatever it has reached.
"""
from __future__ import annotations

import numpy as np

from .intake import prepare
from .methods import path_points
from .runtime import make_session
from .targets import OUTPUT_KINDS, selected

# The first panel is the whole path: 8 forward probes placing 4 first panels of 2 or 3 nodes took
# more passes to the same gap on the MNIST model and a random resnet18 (64 px) than halving from
# one panel of 4 nodes; the probes stay, for paths known to be steep.
PROBES = 1             # forward intervals along the path that place the first panels
FIRST_PANELS = 1       # panels before any refinement
NODES = 4              # Gauss-Legendre nodes per panel
MAX_POINTS = 512       # gradient points per image, at most
FIXED_STEPS = 32       # what a method that cannot adapt (smoothgrad:ig) runs under steps="auto"


def adapts(spec, settings) -> bool:
    """Whether these settings ask for adaptive steps and the method can take them."""
    return settings.steps == "auto" and spec.uses_integration and not spec.draws_noise \
        and not spec.noisy_copies and settings.output in OUTPUT_KINDS


class AdaptiveSteps:
    """The forward session and the refinement loop of one Explainer (see the module docstring)."""

    def __init__(self, model, settings, spec):
        self.tolerance = float(settings.tolerance)
        self.complete = spec.complete
        forward = selected(prepare(model, settings.input, settings.output_name).for_rows, settings.output)
        self.input_name = forward.input
        self.session, _ = make_session(forward.proto, settings.providers, settings.threads)
        self.nodes, self.node_weights = (a.astype(np.float64) for a in path_points(NODES, "gausslegendre"))

    # -- the two kinds of passes ----------------------------------------------------------------
    def _forward(self, explainer, points) -> np.ndarray:
        """[rows, classes] the explained output at these points (forward passes only)."""
        rows = max(4, 2 * (explainer.budget // explainer.row_bytes))
        parts = [self.session.run(None, {self.input_name: np.ascontiguousarray(points[lo:lo + rows], np.float32)})[0]
                 for lo in range(0, len(points), rows)]
        return np.concatenate(parts).reshape(len(points), -1).astype(np.float64)

    def _panels(self, explainer, images, baselines, targets, which, starts, ends) -> np.ndarray:
        """The maps of the panels [starts[k], ends[k]] of the paths of images[which[k]]."""
        delta = images[which] - baselines[which]
        shape = (-1,) + (1,) * (images.ndim - 1)
        lows = baselines[which] + starts.reshape(shape).astype(np.float32) * delta
        highs = baselines[which] + ends.reshape(shape).astype(np.float32) * delta
        return explainer.path_integral(highs, lows, targets[which], self.nodes.astype(np.float32),
                                       self.node_weights.astype(np.float32))

    def _scores_at(self, explainer, images, baselines, which, alphas) -> np.ndarray:
        shape = (-1,) + (1,) * (images.ndim - 1)
        points = baselines[which] + alphas.reshape(shape).astype(np.float32) * (images[which] - baselines[which])
        return self._forward(explainer, points)

    # -- the loop ----------------------------------------------------------------------------------
    def explain(self, explainer, images, targets, baselines):
        """(attributions, scores [N, classes] at the images, targets used, F at the baselines,
        gradient points per image, the tolerance measure reached per image, each image's
        (alphas, weights))."""
        n = len(images)
        probes = np.linspace(0.0, 1.0, PROBES + 1)
        which = np.repeat(np.arange(n), PROBES + 1)
        along = self._scores_at(explainer, images, baselines, which, np.tile(probes, n)).reshape(n, PROBES + 1, -1)
        along[:, -1] = self._forward(explainer, images)  # the image itself, not baseline + 1 * (image - baseline)
        scores = along[:, -1]
        targets = np.where(targets < 0, scores.argmax(axis=1), targets)
        f = along[np.arange(n), :, targets]  # [N, PROBES + 1]: the explained score along each path
        leaves = [self._first_panels(probes, f[i]) for i in range(n)]  # per image: [a, b, F(a), F(b)] rows
        maps = [None] * n          # per image: the map of each leaf
        errors = [None] * n        # per image: each leaf's error
        changes = [None] * n       # gnl_ig, per image: each leaf's signed map change d (module docstring)
        change = np.abs(f[:, -1] - f[:, 0])
        # IG's |F(x) - F(b)|, at least 1e-4 of the score's size: below that the float32 sums are noise
        # (a random-weight mobilenet_v2 scores every photo alike; its gap could never be met)
        scale = np.maximum(change, 1e-4 * np.abs(f).max(axis=1) + 1e-30)
        reached = np.full(n, np.inf)
        points = np.zeros(n, int)
        pending = list(range(n))
        first = [True] * n         # gnl_ig: its first panels are all halved once, to get their errors
        self._integrate(explainer, images, baselines, targets, leaves, maps, pending)
        points += [len(leaves[i]) * NODES for i in range(n)]
        while pending:
            split = {}
            for i in pending:
                if self.complete:
                    signed = maps[i].reshape(len(leaves[i]), -1).sum(axis=1, dtype=np.float64) \
                        - (leaves[i][:, 3] - leaves[i][:, 2])
                    errors[i] = np.abs(signed)
                    reached[i] = abs(signed.sum()) / scale[i]  # the completeness gap itself
                elif not first[i]:
                    reached[i] = np.abs(changes[i].sum(axis=0, dtype=np.float64)).sum() \
                        / max(np.abs(maps[i].sum(axis=0)).sum(dtype=np.float64), 1e-30)
                if first[i] and not self.complete:
                    split[i] = np.arange(len(leaves[i]))
                    first[i] = False
                elif reached[i] > self.tolerance and points[i] < MAX_POINTS:
                    split[i] = self._worst(errors[i], self.tolerance * (scale[i] if self.complete else
                                           np.abs(maps[i].sum(axis=0)).sum(dtype=np.float64)), MAX_POINTS - points[i])
            pending = [i for i in pending if i in split]
            if not pending:
                break
            self._halve(explainer, images, baselines, targets, leaves, maps, errors, changes, split)
            for i in pending:
                points[i] += len(split[i]) * 2 * NODES
        attributions = np.stack([m.sum(axis=0) for m in maps]).astype(np.float32)
        quadrature = [self._rule(leaves[i]) for i in range(n)]
        return attributions, scores.astype(np.float32), targets.astype(np.int64), f[:, 0].astype(np.float32), \
            points, reached, quadrature

    def _first_panels(self, probes, f) -> np.ndarray:
        """FIRST_PANELS panels cut at probes, each holding an equal share of the score's change."""
        steps = np.abs(np.diff(f))
        steps = steps + 0.1 * steps.mean() + 1e-12  # a flat stretch still counts a little
        share = np.concatenate([[0.0], np.cumsum(steps)]) / steps.sum()
        cuts = sorted({0, PROBES, *np.searchsorted(share, np.arange(1, FIRST_PANELS) / FIRST_PANELS).tolist()})
        return np.array([[probes[a], probes[b], f[a], f[b]] for a, b in zip(cuts[:-1], cuts[1:])])

    def _integrate(self, explainer, images, baselines, targets, leaves, maps, which_images):
        which = np.concatenate([np.full(len(leaves[i]), i) for i in which_images])
        rows = np.concatenate([leaves[i] for i in which_images])
        out = self._panels(explainer, images, baselines, targets, which, rows[:, 0], rows[:, 1])
        at = 0
        for i in which_images:
            maps[i] = out[at:at + len(leaves[i])]
            at += len(leaves[i])

    def _worst(self, errors, allowed, points_left) -> np.ndarray:
        """The panels to halve: the largest errors, until what is left unhalved is within half the
        allowed error (so that the halved ones have the other half), within the points left."""
        order = np.argsort(-errors)
        left = errors.sum() - np.cumsum(errors[order])
        count = int(np.searchsorted(-left, -0.5 * allowed)) + 1
        count = max(1, min(count, len(order), points_left // (2 * NODES)))
        return order[:count]

    def _halve(self, explainer, images, baselines, targets, leaves, maps, errors, changes, split):
        """Halve the chosen panels: a forward pass at each middle, the halves' maps, their errors."""
        which = np.concatenate([np.full(len(split[i]), i) for i in split])
        parents = np.concatenate([leaves[i][split[i]] for i in split])
        middles = (parents[:, 0] + parents[:, 1]) / 2
        f_mid = self._scores_at(explainer, images, baselines, which, middles)[np.arange(len(which)), targets[which]]
        halves = np.empty((2 * len(parents), 4))
        halves[0::2] = np.stack([parents[:, 0], middles, parents[:, 2], f_mid], axis=1)
        halves[1::2] = np.stack([middles, parents[:, 1], f_mid, parents[:, 3]], axis=1)
        out = self._panels(explainer, images, baselines, targets, np.repeat(which, 2), halves[:, 0], halves[:, 1])
        at = 0
        for i in split:
            count = len(split[i])
            new_maps = out[2 * at:2 * (at + count)]
            keep = np.setdiff1d(np.arange(len(leaves[i])), split[i])
            if not self.complete:  # the change of each halved panel's map, shared by its halves
                d = maps[i][split[i]] - new_maps[0::2] - new_maps[1::2]
                moved = np.abs(d).reshape(count, -1).sum(axis=1, dtype=np.float64)
                previous = errors[i][keep] if errors[i] is not None else np.zeros(len(keep))
                errors[i] = np.concatenate([previous, np.repeat(moved / 2, 2)])
                kept = changes[i][keep] if changes[i] is not None else np.zeros((len(keep),) + d.shape[1:], d.dtype)
                changes[i] = np.concatenate([kept, np.repeat(d / 2, 2, axis=0)])
            leaves[i] = np.concatenate([leaves[i][keep], halves[2 * at:2 * (at + count)]])
            maps[i] = np.concatenate([maps[i][keep], new_maps])
            at += count

    def _rule(self, leaves) -> tuple[np.ndarray, np.ndarray]:
        """(alphas, weights) on [0, 1] of the panels' nodes: the same attribution as a fixed rule
        with these points."""
        order = np.argsort(leaves[:, 0])
        a, b = leaves[order, 0:1], leaves[order, 1:2]
        return ((a + (b - a) * self.nodes).ravel().astype(np.float32),
                ((b - a) * self.node_weights).ravel().astype(np.float32))


__all__ = ["AdaptiveSteps", "adapts", "FIXED_STEPS", "MAX_POINTS"]
