"""Adaptive steps (`steps="auto"`): per image, as many path points as a stated tolerance needs,
placed where the score changes, for the path methods (ig, gnl_ig).

The path [0, 1] from the baseline to the image is cut into panels. A panel starts with the NODES
Gauss-Legendre nodes; its first refinement adds the NODES + 1 Kronrod nodes, which with the Gauss
nodes make a 2 NODES + 1 point rule exact to degree 3 NODES + 1 (Gauss-Kronrod: the refinement
reuses every gradient the panel has, where halving would drop them); its next refinement halves
it into two Gauss panels. Each gradient point is one row of one batch of the method's own graph,
at any point of any image's path (explain_points), so all the refinements of all images of a
round run together.

1. IG is complete: a panel's map sums to F(b) - F(a) when it is integrated exactly, and both are
   known from forward passes, so each panel's error is measured, not estimated. Until the
   completeness gap |sum(attribution) - (F(image) - F(baseline))| / |F(image) - F(baseline)| is
   within the tolerance, the panels with the largest errors are refined (a forward pass at the
   middle of a panel that is halved gives its halves' errors), so points gather where the score
   changes.
2. GNL-IG is not complete: a panel's error is the change of its map at its last refinement,
   d = new map - old map (the halves of a halved panel each inherit d / 2). Every first panel is
   refined once, then the panels whose last refinement changed most (||d||_1), until the map's
   change ||sum of d||_1 / ||attribution||_1 is within the tolerance: the signed change of the
   whole map, as the fixed rule's doubling test ||A_s - A_2s||_1 / ||A_2s||_1 measures it. No
   forward pass is needed.
Images stop separately; none runs more than MAX_POINTS gradient points, whatever it has reached.
"""
from __future__ import annotations

import numpy as np

from .intake import prepare
from .runtime import make_session
from .targets import OUTPUT_KINDS, selected

# The first panel is the whole path: 8 forward probes placing 4 first panels of 2 or 3 nodes took
# more passes to the same gap on the MNIST model and a random resnet18 (64 px) than halving from
# one panel of 4 nodes; the probes stay, for paths known to be steep.
PROBES = 1             # forward intervals along the path that place the first panels
FIRST_PANELS = 1       # panels before any refinement
NODES = 4              # Gauss-Legendre nodes per panel
MAX_POINTS = 512       # gradient points per image, at most
IMAGES_AT_ONCE = 8     # images refined together (their rows share the runs)
FIXED_STEPS = 32       # what a method that cannot adapt (smoothgrad:ig) runs under steps="auto"


def adapts(spec, settings) -> bool:
    """Whether these settings ask for adaptive steps and the method can take them."""
    return settings.steps == "auto" and spec.uses_integration and not spec.draws_noise \
        and not spec.noisy_copies and settings.output in OUTPUT_KINDS


def gauss_kronrod(nodes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """On [0, 1]: the Gauss-Legendre nodes and weights, and the Kronrod extension's weights at
    those nodes, its added nodes (nodes + 1) and their weights. The added nodes are the zeros of
    the Stieltjes polynomial (monic, degree nodes + 1, orthogonal to P_nodes x^k for k <= nodes);
    the weights make the combined rule exact to degree 2 nodes, which makes it exact to 3 nodes + 1."""
    from numpy.polynomial import legendre, polynomial

    def integral(coefficients):  # over [-1, 1]
        antiderivative = polynomial.polyint(coefficients)
        return polynomial.polyval(1.0, antiderivative) - polynomial.polyval(-1.0, antiderivative)

    gauss, gauss_weights = legendre.leggauss(nodes)
    p_n = legendre.leg2poly([0] * nodes + [1])
    moments = np.array([[integral(polynomial.polymul(p_n, [0] * (k + j) + [1])) for j in range(nodes + 2)]
                        for k in range(nodes + 1)])
    # a square system; by parity the coefficients of the wrong parity come out zero
    coefficients = np.linalg.lstsq(moments[:, :-1], -moments[:, -1], rcond=None)[0]
    added = np.sort(np.roots(np.concatenate([coefficients, [1.0]])[::-1]).real)
    every = np.concatenate([gauss, added])
    weights = np.linalg.solve(np.vander(every, 2 * nodes + 1, increasing=True).T,
                              [integral([0] * k + [1]) for k in range(2 * nodes + 1)])
    return (gauss + 1) / 2, gauss_weights / 2, weights[:nodes] / 2, (added + 1) / 2, weights[nodes:] / 2


class Panel:
    """One stretch [a, b] of one image's path, F at its ends (IG), and its current estimate."""
    __slots__ = ("a", "b", "fa", "fb", "kronrod", "map", "units", "error", "change")

    def __init__(self, a, b, fa, fb):
        self.a, self.b, self.fa, self.fb = float(a), float(b), float(fa), float(fb)
        self.kronrod = False   # the 2 NODES + 1 point rule (else the NODES Gauss nodes)
        self.map = None        # this panel's share of the attribution
        self.units = None      # Gauss stage: each node's (image - baseline) * gradient, for the extension
        self.error = np.inf    # IG: |sum(map) - (fb - fa)|; GNL-IG: ||change||_1 (unknown before a refinement)
        self.change = None     # GNL-IG: the signed change of its map at its last refinement

    @property
    def refine_points(self) -> int:
        return 2 * NODES if self.kronrod else NODES + 1


class AdaptiveSteps:
    """The forward session and the refinement loop of one Explainer (see the module docstring)."""

    def __init__(self, model, settings, spec):
        self.tolerance = float(settings.tolerance)
        self.complete = spec.complete
        forward = selected(prepare(model, settings.input, settings.output_name).for_rows, settings.output)
        self.input_name = forward.input
        self.session, _ = make_session(forward.proto, settings.providers, settings.threads)
        self.gauss, self.gauss_weights, self.kronrod_at_gauss, self.added, self.added_weights = gauss_kronrod(NODES)
        self.kronrod = np.concatenate([self.gauss, self.added])  # a Kronrod panel's nodes and weights
        self.kronrod_weights = np.concatenate([self.kronrod_at_gauss, self.added_weights])

    # -- the two kinds of passes ----------------------------------------------------------------
    def _forward(self, explainer, points) -> np.ndarray:
        """[rows, classes] the explained output at these points (forward passes only)."""
        rows = max(4, 2 * (explainer.budget // explainer.row_bytes))
        parts = [self.session.run(None, {self.input_name: np.ascontiguousarray(points[lo:lo + rows], np.float32)})[0]
                 for lo in range(0, len(points), rows)]
        return np.concatenate(parts).reshape(len(points), -1).astype(np.float64)

    def _along(self, images, baselines, which, alphas) -> np.ndarray:
        shape = (-1,) + (1,) * (images.ndim - 1)
        return baselines[which] + alphas.reshape(shape).astype(np.float32) * (images[which] - baselines[which])

    def _units(self, explainer, images, baselines, targets, which, alphas) -> np.ndarray:
        """(image - baseline) * the method's gradient at each point baseline + alpha (image - baseline)
        of images[which[k]]: its graph's one-point rule at weight 1 on a path from point - delta to
        the point, one row each."""
        rows = max(1, explainer.budget // explainer.row_bytes)  # points built a slice at a time, not all at once
        parts = []
        shape = (-1,) + (1,) * (images.ndim - 1)
        for lo in range(0, len(which), rows):
            part = which[lo:lo + rows]
            delta = images[part] - baselines[part]
            points = baselines[part] + alphas[lo:lo + rows].reshape(shape).astype(np.float32) * delta
            parts.append(explainer.path_integral(points, points - delta, targets[part], np.ones(1, np.float32),
                                                 np.ones(1, np.float32)))
        return np.concatenate(parts)

    def _scores_at(self, explainer, images, baselines, which, alphas) -> np.ndarray:
        return self._forward(explainer, self._along(images, baselines, which, alphas))

    # -- the loop ----------------------------------------------------------------------------------
    def explain(self, explainer, images, targets, baselines):
        """(attributions, scores [N, classes] at the images, targets used, F at the baselines,
        gradient points per image, the tolerance measure reached per image, each image's
        (alphas, weights)), IMAGES_AT_ONCE images at a time: each keeps its panels' maps until
        it stops (up to MAX_POINTS / NODES panels), so a folder's worth at once could fill the memory."""
        groups = [self._explain(explainer, images[lo:lo + IMAGES_AT_ONCE], targets[lo:lo + IMAGES_AT_ONCE],
                                baselines[lo:lo + IMAGES_AT_ONCE]) for lo in range(0, len(images), IMAGES_AT_ONCE)]
        joined = [np.concatenate([g[k] for g in groups]) for k in range(6)]
        return (*joined, [rule for g in groups for rule in g[6]])

    def _explain(self, explainer, images, targets, baselines):
        n = len(images)
        probes = np.linspace(0.0, 1.0, PROBES + 1)
        # F at the image itself (not b + 1 (x - b)); at the baseline only where it is used: IG's gap
        # and panel errors, or probes placing the first panels (GNL-IG's errors come from its maps)
        at_baseline = self.complete or PROBES > 1
        ends = self._forward(explainer, np.concatenate([baselines, images]) if at_baseline else images)
        along = np.full((n, PROBES + 1, ends.shape[1]), np.nan)
        along[:, -1] = ends[-n:]
        if at_baseline:
            along[:, 0] = ends[:n]
        if PROBES > 1:
            inner = np.tile(probes[1:-1], n)
            along[:, 1:-1] = self._scores_at(explainer, images, baselines, np.repeat(np.arange(n), PROBES - 1),
                                             inner).reshape(n, PROBES - 1, -1)
        scores = along[:, -1]
        targets = np.where(targets < 0, scores.argmax(axis=1), targets)
        f = along[np.arange(n), :, targets]  # [N, PROBES + 1]: the explained score along each path
        panels = [self._first_panels(probes, f[i]) for i in range(n)]
        change = np.abs(f[:, -1] - f[:, 0])
        # IG's |F(x) - F(b)|, at least 1e-4 of the score's size: below that the float32 sums are noise
        # (a random-weight mobilenet_v2 scores every photo alike; its gap could never be met)
        scale = np.maximum(change, 1e-4 * np.abs(f).max(axis=1) + 1e-30)
        reached = np.full(n, np.inf)
        points = np.zeros(n, int)
        self._refine(explainer, images, baselines, targets, {i: panels[i] for i in range(n)}, points, first=True)
        pending = list(range(n))
        while pending:
            chosen = {}
            for i in pending:
                if self.complete:
                    signed = [p.map.sum(dtype=np.float64) - (p.fb - p.fa) for p in panels[i]]
                    for p, e in zip(panels[i], signed):
                        p.error = abs(e)
                    reached[i] = abs(sum(signed)) / scale[i]  # the completeness gap itself
                    allowed = self.tolerance * scale[i]
                elif any(p.change is None for p in panels[i]):  # the first panels: refine each once
                    chosen[i] = list(panels[i])
                    continue
                else:
                    size = np.abs(sum(p.map for p in panels[i])).sum(dtype=np.float64)
                    reached[i] = np.abs(sum(p.change for p in panels[i])).sum(dtype=np.float64) / max(size, 1e-30)
                    allowed = self.tolerance * size
                if reached[i] > self.tolerance:
                    chosen[i] = self._worst(panels[i], allowed, MAX_POINTS - points[i])
            pending = [i for i in chosen if chosen[i]]  # (none: the next refinement would pass MAX_POINTS)
            if pending:
                self._refine(explainer, images, baselines, targets, chosen, points, panels=panels)
        attributions = np.stack([sum(p.map for p in panels[i]) for i in range(n)]).astype(np.float32)
        quadrature = [self._rule(panels[i]) for i in range(n)]
        return attributions, scores.astype(np.float32), targets.astype(np.int64), f[:, 0].astype(np.float32), \
            points, reached, quadrature

    def _first_panels(self, probes, f) -> list:
        """FIRST_PANELS panels cut at probes, each holding an equal share of the score's change."""
        steps = np.abs(np.diff(f))
        steps = steps + 0.1 * steps.mean() + 1e-12  # a flat stretch still counts a little
        share = np.concatenate([[0.0], np.cumsum(steps)]) / steps.sum()
        cuts = sorted({0, PROBES, *np.searchsorted(share, np.arange(1, FIRST_PANELS) / FIRST_PANELS).tolist()})
        return [Panel(probes[a], probes[b], f[a], f[b]) for a, b in zip(cuts[:-1], cuts[1:])]

    @staticmethod
    def _worst(panels, allowed, points_left) -> list:
        """The panels to refine: the largest errors, until what is left unrefined is within half the
        allowed error (so that the refined ones have the other half), within the points left."""
        order = sorted(panels, key=lambda p: -p.error)
        left = sum(p.error for p in order) - np.cumsum([p.error for p in order])
        count = max(1, int(np.searchsorted(-left, -0.5 * allowed)) + 1)
        chosen, cost = [], 0
        for p in order[:count]:
            if cost + p.refine_points > points_left:
                continue  # a cheaper refinement further down may still fit
            chosen.append(p)
            cost += p.refine_points
        return chosen

    def _refine(self, explainer, images, baselines, targets, chosen, points, first=False, panels=None):
        """One round for every image: a new panel gets its Gauss nodes (first), a Gauss panel its
        Kronrod nodes, a Kronrod panel is halved into two Gauss panels (IG: F at the middle)."""
        jobs = []  # (image, panel, kind, its alphas)
        for i, todo in chosen.items():
            for p in todo:
                if first:
                    jobs.append((i, p, "gauss", p.a + (p.b - p.a) * self.gauss))
                elif not p.kronrod:
                    jobs.append((i, p, "kronrod", p.a + (p.b - p.a) * self.added))
                else:
                    middle = (p.a + p.b) / 2
                    jobs.append((i, p, "halve", np.concatenate([p.a + (middle - p.a) * self.gauss,
                                                                middle + (p.b - middle) * self.gauss])))
        halved = [(i, p) for i, p, kind, _ in jobs if kind == "halve"]
        f_mid = {}
        if halved and self.complete:
            which = np.array([i for i, _ in halved])
            middles = np.array([(p.a + p.b) / 2 for _, p in halved])
            values = self._scores_at(explainer, images, baselines, which, middles)[np.arange(len(which)), targets[which]]
            f_mid = {id(p): v for (_, p), v in zip(halved, values)}
        which = np.concatenate([np.full(len(alphas), i) for i, _, _, alphas in jobs])
        units = self._units(explainer, images, baselines, targets, which, np.concatenate([a for *_, a in jobs]))
        at = 0
        for i, p, kind, alphas in jobs:
            got = units[at:at + len(alphas)]
            at += len(alphas)
            points[i] += len(alphas)
            width = p.b - p.a
            if kind == "gauss":
                p.units, p.map = got, self._weighted(width, self.gauss_weights, got)
            elif kind == "kronrod":
                new = self._weighted(width, self.kronrod_at_gauss, p.units) + self._weighted(width, self.added_weights, got)
                p.change, p.map, p.units, p.kronrod = new - p.map, new, None, True
                p.error = np.abs(p.change).sum(dtype=np.float64)
            else:
                middle = (p.a + p.b) / 2
                fm = f_mid.get(id(p), np.nan)
                halves = [Panel(p.a, middle, p.fa, fm), Panel(middle, p.b, fm, p.fb)]
                for h, part in zip(halves, (got[:NODES], got[NODES:])):
                    h.units, h.map = part, self._weighted(width / 2, self.gauss_weights, part)
                d = halves[0].map + halves[1].map - p.map
                shared = d / 2  # each half inherits half the change (module docstring): one array for both
                for h in halves:
                    h.change, h.error = shared, np.abs(d).sum(dtype=np.float64) / 2
                own = panels[i]
                own[own.index(p):own.index(p) + 1] = halves

    @staticmethod
    def _weighted(width, weights, units) -> np.ndarray:
        """width * sum_k weights[k] units[k], in float32 like the fixed rule's sums (a panel keeps it)."""
        return np.tensordot((width * weights).astype(np.float32), units, axes=1)

    def _rule(self, panels) -> tuple[np.ndarray, np.ndarray]:
        """(alphas, weights) on [0, 1] of the panels' nodes: the same attribution as a fixed rule
        with these points."""
        alphas, weights = [], []
        for p in sorted(panels, key=lambda p: p.a):
            width = p.b - p.a
            nodes, node_weights = (self.kronrod, self.kronrod_weights) if p.kronrod else (self.gauss, self.gauss_weights)
            alphas.append(p.a + width * nodes)
            weights.append(width * node_weights)
        alphas, weights = np.concatenate(alphas), np.concatenate(weights)
        order = np.argsort(alphas)
        return alphas[order].astype(np.float32), weights[order].astype(np.float32)


__all__ = ["AdaptiveSteps", "adapts", "gauss_kronrod", "FIXED_STEPS", "MAX_POINTS"]
