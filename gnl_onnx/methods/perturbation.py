"""Forward-only methods: the model is run on perturbed copies of a value (the image, or a CAM
layer's activation) and the attribution is read from how the explained score changes. No backward
graph is built, so they run on every model ONNX Runtime runs, including those whose backward
cannot be built (an op without a rule). The runtime (gnl_onnx/forward.py) scores the copies in as
few runs as the memory budget holds; the method says which copies and how their scores combine:

    occlusion     Captum's Occlusion: a window (all channels) slides with a stride; each pixel gets
                  the mean over the windows covering it of F(x) - F(x with the window set to the
                  baseline). Passes: the number of window positions.
    rise          RISE (Petsiuk et al. 2018): N random cells x cells binary grids (keep probability
                  p), upsampled bilinearly to (cells + 1) x the cell size and cropped at a random
                  shift; S = sum_m F(x * m + baseline * (1 - m)) m / (N p). Passes: N.
                  The estimator is a Monte Carlo mean of N independent terms: its variance at each
                  pixel is Var[F(x_M) M] / (p^2 N), falling as 1/N (standard error as 1/sqrt(N)).
                  Of a detector's box (box_targets.DetectionBox): D-RISE (Petsiuk et al. 2021),
                  F(x_M) is the largest similarity of the masked image's candidates to the box,
                  IoU x cosine of the class scores (x objectness where the head has it).
    kernelshap    Captum's KernelShap: coalitions of features (a grid of cells, or a given feature
                  mask): all, none, then samples - 2 drawn with size k ~ (M - 1) / (k (M - k)); the
                  attribution of a feature is its coefficient in the least-squares fit (with
                  intercept; all and none weigh 1e6, the others 1) of F(coalition) on the
                  coalition's 0/1 vector. Passes: samples.
    ablation_cam  pytorch-grad-cam's AblationCAM: w_k = (F - F with channel k of the layer ablated)
                  / F, map = relu(sum_k w_k A_k) upsampled bilinearly (cv2's INTER_LINEAR). Passes:
                  the layer's channels, through the part of the model after the layer.

Options are part of the name: "rise:masks=8000,cells=7,p=0.5", "occlusion:window=16,stride=8",
"kernelshap:samples=512,grid=8" (get_method parses them; the name is kept as given). Every random
draw is seeded by the run's seed alone, so a map does not depend on how the runs are chunked."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import ClassVar

import numpy as np

from ..cam import locate
from ..errors import UsageError
from .base import Method
from .registry import register


@dataclass(frozen=True)
class ForwardMethod(Method):
    """A method computed from forward passes of perturbed copies (see the module docstring)."""
    forward_only: ClassVar[bool] = True
    uses_baseline: ClassVar[bool] = True
    options: ClassVar[tuple] = ()  # the fields a name may set ("rise:masks=8000")
    weighs_detections: ClassVar[bool] = False  # of a detector's box: a copy's score is D-RISE's similarity
    converts: ClassVar[bool] = False  # its copies are masks fixed by the image size and seed: one ONNX graph
    # holds it (gnl_onnx/attribution.py forward_attribution_model, with its Perturbations' graph_* parts)

    def layers(self, proto, x, y, names):
        """The value perturbed, when it is not the image: a CAM layer (see AblationCam)."""
        return [], None

    def passes(self, height: int, width: int, channels: int | None = None) -> int:
        """Forward passes per image."""
        raise NotImplementedError

    def steps_run(self, steps: int) -> int:
        return 1  # its own count of passes, not the step count (see passes)

    def perturbations(self, height: int, width: int, channel_axis: int, seed: int) -> Perturbations:
        raise NotImplementedError

    def configured(self, text: str) -> ForwardMethod:
        """This method with the options of "key=value,key=value" set (name: the full text)."""
        types = {f.name: f.type for f in fields(self)}
        changes = {}
        for part in filter(None, text.split(",")):
            key, _, value = part.partition("=")
            key = key.strip()
            if key not in self.options or not value:
                raise UsageError(f"unknown option '{part}' of {self.name}; its options are "
                                 f"{', '.join(f'{o}=' for o in self.options)}")
            kind = float if "float" in str(types[key]) else int
            try:
                changes[key] = kind(value)
            except ValueError:
                raise UsageError(f"{self.name} option {key} takes a number, got '{value}'") from None
        configured = replace(self, name=f"{self.name}:{text}", **changes)
        configured.validate()
        return configured

    def validate(self) -> None:
        """Refuse impossible options with one line."""


class Perturbations:
    """One method's perturbed copies of one batch of values, and how their scores combine.
    rows(values, baselines, lo, hi): the copies lo..hi of every value, [n, hi - lo, *value dims];
    add(lo, hi, scores): their explained scores [N, hi - lo] (all images); result(clean): the
    maps [N, H, W] from the scores at the unperturbed values [N]."""
    count: int

    def rows(self, values, baselines, lo, hi):
        raise NotImplementedError

    def add(self, lo, hi, scores):
        raise NotImplementedError

    def result(self, clean):
        raise NotImplementedError


class MaskedImages(Perturbations):
    """Copies of the image where a keep-mask [H, W] (1 keeps the pixel, 0 takes the baseline's)
    is applied over all channels; the masks come from keep(lo, hi), drawn once per chunk."""

    def __init__(self, count: int, channel_axis: int):
        self.count, self.channel_axis = count, channel_axis
        self._cached = (None, None, None)

    def keep(self, lo: int, hi: int) -> np.ndarray:
        raise NotImplementedError

    def masks(self, lo, hi) -> np.ndarray:
        if self._cached[:2] != (lo, hi):
            self._cached = (lo, hi, self.keep(lo, hi).astype(np.float32))
        return self._cached[2]

    def rows(self, values, baselines, lo, hi):
        keep = np.expand_dims(self.masks(lo, hi), self.channel_axis)[None]  # [1, k, 1, H, W] or [1, k, H, W, 1]
        images, base = values[:, None], np.broadcast_to(baselines, values.shape)[:, None]
        return base + keep * (images - base)

    # -- the same in an ONNX graph (converted models); g: anything with GraphBuilder's op and const --
    def graph_masks(self, g, index: str) -> str:
        """The keep-masks of the copies `index` (int64 [B]) as float32 [B, H, W]."""
        raise NotImplementedError

    def graph_maps(self, g, scores: str, masked: str, clean: str) -> str:
        """The maps, float64 [N, H * W], from the copies' scores [N, count], their sum weighted by
        the masks (scores @ masks, [N, H * W]) and the scores at the images [N] (all float64)."""
        raise NotImplementedError


# -- occlusion ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Occlusion(ForwardMethod):
    window: int = 0  # window side in pixels (0: an eighth of the shorter side, at least 1)
    stride: int = 0  # (0: half the window, at least 1)
    options: ClassVar[tuple] = ("window", "stride")
    converts: ClassVar[bool] = True

    def validate(self):
        if self.window < 0 or self.stride < 0:
            raise UsageError(f"{self.name}: window and stride must be positive")
        if self.window and self.stride > self.window:
            raise UsageError(f"{self.name}: a stride ({self.stride}) above the window ({self.window}) leaves pixels "
                             "that no window covers")

    def geometry(self, height, width):
        window = self.window or max(1, min(height, width) // 8)
        stride = self.stride or max(1, window // 2)
        if window > min(height, width):
            raise UsageError(f"{self.name}: the window ({window} px) is larger than the image ({height}x{width})")
        return window, stride

    def passes(self, height, width, channels=None):
        window, stride = self.geometry(height, width)
        return math.prod(math.ceil((side - window) / stride) + 1 for side in (height, width))

    def perturbations(self, height, width, channel_axis, seed):
        return OccludedImages(self, height, width, channel_axis)


class OccludedImages(MaskedImages):
    """Window positions as Captum counts them: ceil((side - window) / stride) + 1 per axis, the
    last one cut at the border."""

    def __init__(self, method: Occlusion, height, width, channel_axis):
        self.window, self.stride = method.geometry(height, width)
        self.shifts = [math.ceil((side - self.window) / self.stride) + 1 for side in (height, width)]
        super().__init__(math.prod(self.shifts), channel_axis)
        self.shape = (height, width)
        self.total = self.covered = None

    def keep(self, lo, hi):
        keep = np.ones((hi - lo,) + self.shape, np.float32)
        for k, index in enumerate(range(lo, hi)):
            row, col = divmod(index, self.shifts[1])
            top, left = row * self.stride, col * self.stride
            keep[k, top:top + self.window, left:left + self.window] = 0
        return keep

    def add(self, lo, hi, scores):
        occluded = 1 - self.masks(lo, hi)
        if self.total is None:
            self.total = np.zeros((len(scores),) + self.shape, np.float64)
            self.covered = np.zeros(self.shape, np.float64)
        self.total -= np.tensordot(scores, occluded, axes=(1, 0))  # F(x) is added once per window in result
        self.covered += occluded.sum(axis=0)

    def result(self, clean):
        return (self.total / self.covered + np.asarray(clean, np.float64)[:, None, None]).astype(np.float32)

    def windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Each window's occluded rows [count, H] and columns [count, W], 0/1."""
        rows, cols = (np.zeros((self.count, side), np.float32) for side in self.shape)
        for index in range(self.count):
            row, col = divmod(index, self.shifts[1])
            rows[index, row * self.stride:row * self.stride + self.window] = 1
            cols[index, col * self.stride:col * self.stride + self.window] = 1
        return rows, cols

    def graph_masks(self, g, index):
        rows, cols = (g.op("Gather", g.const(a), index) for a in self.windows())
        window = g.op("Mul", g.op("Unsqueeze", rows, g.ints([2])), g.op("Unsqueeze", cols, g.ints([1])))
        return g.op("Sub", g.const(np.float32(1)), window)

    def graph_maps(self, g, scores, masked, clean):
        """F(x) - sum over the windows covering the pixel of their scores / their count, where that sum
        is all the scores less those of the windows keeping the pixel (masked)."""
        rows, cols = self.windows()
        covered = (rows.astype(np.float64)[:, :, None] * cols[:, None, :]).sum(axis=0).ravel()
        covering = g.op("Sub", g.op("ReduceSum", scores, g.ints([1]), keepdims=1), masked)
        return g.op("Sub", g.op("Unsqueeze", clean, g.ints([1])), g.op("Div", covering, g.const(covered, np.float64)))


# -- RISE --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rise(ForwardMethod):
    masks: int = 4000  # N
    cells: int = 7     # the grid's side: the mask resolution
    p: float = 0.5     # the probability that a cell is kept
    options: ClassVar[tuple] = ("masks", "cells", "p")
    weighs_detections: ClassVar[bool] = True  # D-RISE
    converts: ClassVar[bool] = True  # (not D-RISE: its matching of boxes runs in numpy)

    def validate(self):
        if self.masks < 1 or self.cells < 1 or not 0 < self.p <= 1:
            raise UsageError(f"{self.name}: masks and cells must be at least 1 and p in (0, 1]")

    def passes(self, height, width, channels=None):
        return self.masks

    def perturbations(self, height, width, channel_axis, seed):
        return RiseMasks(self, height, width, channel_axis, seed)


def linear_resize_matrix(source: int, size: int) -> np.ndarray:
    """[size, source]: bilinear resampling along one axis with half-pixel centres and the edges
    clamped (cv2's INTER_LINEAR, ONNX Resize linear half_pixel)."""
    at = np.clip((np.arange(size) + 0.5) * source / size - 0.5, 0, source - 1)
    low = np.floor(at).astype(int)
    high = np.minimum(low + 1, source - 1)
    matrix = np.zeros((size, source))
    np.add.at(matrix, (np.arange(size), low), 1 - (at - low))
    np.add.at(matrix, (np.arange(size), high), at - low)
    return matrix


MASK_BLOCK = 256  # RISE masks drawn per seeded stream


class RiseMasks(MaskedImages):
    def __init__(self, method: Rise, height, width, channel_axis, seed):
        super().__init__(method.masks, channel_axis)
        self.method, self.seed, self.shape = method, seed, (height, width)
        self.cell = [math.ceil(side / method.cells) for side in (height, width)]
        self.up = [linear_resize_matrix(method.cells, (method.cells + 1) * c) for c in self.cell]
        self.saliency, self._block = None, (None, None)

    def keep(self, lo, hi):
        blocks = range(lo // MASK_BLOCK, (hi - 1) // MASK_BLOCK + 1)
        masks = np.concatenate([self.cached_block(b) for b in blocks])
        start = blocks[0] * MASK_BLOCK
        return masks[lo - start:hi - start]

    def cached_block(self, index: int) -> np.ndarray:
        if self._block[0] != index:  # runs smaller than a block read it several times
            self._block = (index, self.block(index))
        return self._block[1]

    def block(self, index: int) -> np.ndarray:
        """Masks index * MASK_BLOCK ... (the last block cut at N), drawn from their own seeded stream
        (so any chunking of the runs gives the same masks), as Petsiuk et al.: a binary grid, bilinear
        upsampling to (cells + 1) x the cell size, a crop at a random shift within one cell."""
        height, width = self.shape
        grids, dy, dx = self.draw(index)
        count = len(grids)
        up = np.einsum("yi,kij,xj->kyx", self.up[0].astype(np.float32), grids, self.up[1].astype(np.float32),
                       optimize=True)
        rows = (dy[:, None] + np.arange(height))[:, :, None]
        cols = (dx[:, None] + np.arange(width))[:, None, :]
        return up[np.arange(count)[:, None, None], rows, cols]

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block `index`'s binary grids [count, cells, cells] and shifts dy, dx [count]."""
        n = self.method.cells
        count = min(MASK_BLOCK, self.method.masks - index * MASK_BLOCK)
        rng = np.random.default_rng([self.seed, index])
        grids = (rng.random((count, n, n)) < self.method.p).astype(np.float32)
        dy, dx = (rng.integers(0, c, count) for c in self.cell)
        return grids, dy, dx

    def add(self, lo, hi, scores):
        part = np.tensordot(np.asarray(scores, np.float64), self.masks(lo, hi), axes=(1, 0))
        self.saliency = part if self.saliency is None else self.saliency + part

    def result(self, clean):
        return (self.saliency / (self.method.masks * self.method.p)).astype(np.float32)

    def graph_masks(self, g, index):
        """The grids stored, upsampled in the graph: mask = rows(dy) grid columns(dx)^T, rows(dy)
        being the upsampling matrix's rows dy .. dy + H - 1 (the crop)."""
        grids, dy, dx = (np.concatenate(part) for part in zip(*(self.draw(b) for b in
                                                                range(-(-self.count // MASK_BLOCK)))))
        picked = []
        for shift, up, side in ((dy, self.up[0], self.shape[0]), (dx, self.up[1], self.shape[1])):
            at = g.op("Add", g.op("Unsqueeze", g.op("Gather", g.const(shift.astype(np.int64)), index), g.ints([1])),
                      g.ints(np.arange(side)))  # [B, side]
            picked.append(g.op("Gather", g.const(up.astype(np.float32)), at))  # [B, side, cells]
        grid = g.op("Gather", g.const(grids), index)
        return g.op("MatMul", g.op("MatMul", picked[0], grid), g.op("Transpose", picked[1], perm=[0, 2, 1]))

    def graph_maps(self, g, scores, masked, clean):
        return g.op("Div", masked, g.const(self.method.masks * self.method.p, np.float64))


# -- KernelSHAP --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelShap(ForwardMethod):
    samples: int = 512  # coalitions, the first two being all features and none (as Captum counts)
    grid: int = 8       # features: grid x grid cells, unless feature_mask is given
    feature_mask: object = field(default=None, compare=False)  # [H, W] integer labels of the features
    coalitions: object = field(default=None, compare=False)    # [samples, features] 0/1 to use instead of drawing
    options: ClassVar[tuple] = ("samples", "grid")
    converts: ClassVar[bool] = True

    def validate(self):
        if self.samples < 2 or self.grid < 1:
            raise UsageError(f"{self.name}: samples must be at least 2 and grid at least 1")

    def passes(self, height, width, channels=None):
        return self.samples if self.coalitions is None else len(self.coalitions)

    def features(self, height, width) -> np.ndarray:
        """[H, W] feature index of each pixel, 0..M-1."""
        if self.feature_mask is not None:
            mask = np.asarray(self.feature_mask)
            if mask.shape != (height, width):
                raise UsageError(f"{self.name}: the feature mask is {mask.shape}, the images {height}x{width}")
            return np.unique(mask, return_inverse=True)[1].reshape(mask.shape)
        rows = np.arange(height) * self.grid // height
        cols = np.arange(width) * self.grid // width
        return rows[:, None] * self.grid + cols[None, :]

    def draw(self, features: int, seed: int) -> np.ndarray:
        """[samples, features] coalitions as Captum's KernelShap draws them."""
        if self.coalitions is not None:
            return np.asarray(self.coalitions, np.float64)
        rng = np.random.default_rng([seed])
        sizes = np.arange(features, dtype=np.float64)
        with np.errstate(divide="ignore"):
            weight = np.where(sizes > 0, (features - 1) / (sizes * (features - sizes)), 0.0)
        if weight.sum() == 0:  # one feature: nothing to draw beyond all and none
            weight[0] = 1.0
        out = np.zeros((self.samples, features))
        out[0] = 1
        for row in out[2:]:
            k = rng.choice(features, p=weight / weight.sum())
            row[rng.permutation(features)[:k]] = 1
        return out

    def perturbations(self, height, width, channel_axis, seed):
        return Coalitions(self, height, width, channel_axis, seed)


class Coalitions(MaskedImages):
    def __init__(self, method: KernelShap, height, width, channel_axis, seed):
        self.labels = method.features(height, width)
        self.drawn = method.draw(int(self.labels.max()) + 1, seed)
        super().__init__(len(self.drawn), channel_axis)
        self.scores = None

    def keep(self, lo, hi):
        return self.drawn[lo:hi][:, self.labels]

    def add(self, lo, hi, scores):
        if self.scores is None:
            self.scores = np.zeros((len(scores), self.count))
        self.scores[:, lo:hi] = scores

    def result(self, clean):
        """Weighted least squares with an intercept, as Captum fits its interpretable model (a
        scikit-learn LinearRegression): the kernel is in how sizes are drawn, so every coalition
        weighs 1 except all and none, which weigh 1e6 (they pin the fit to F(x) and F(baseline));
        the minimum-norm solution where the samples do not fix every coefficient."""
        size = self.drawn.sum(axis=1)
        weight = np.where((size == 0) | (size == self.drawn.shape[1]), 1e6, 1.0)
        mean = lambda a: (weight @ a) / weight.sum()  # noqa: E731
        root = np.sqrt(weight)[:, None]
        z = (self.drawn - mean(self.drawn)) * root
        y = (self.scores.T - mean(self.scores.T)) * root
        coefficients = np.linalg.lstsq(z, y, rcond=None)[0]  # [features, N]
        return coefficients.T[:, self.labels].astype(np.float32)

    def graph_masks(self, g, index):
        return g.op("Gather", g.op("Gather", g.const(self.drawn.astype(np.float32)), index),
                    g.const(self.labels.astype(np.int64)), axis=1)

    def graph_maps(self, g, scores, masked, clean):
        """result()'s fit with the coalitions fixed is a fixed linear map of the scores: the
        coefficients are Q s, Q = pinv(z) diag(sqrt(w)), with the cut-off on small singular values
        that lstsq applies (the scores' centring drops out: z's columns are orthogonal to sqrt(w));
        stored as Q^T [count, features]."""
        size = self.drawn.sum(axis=1)
        weight = np.where((size == 0) | (size == self.drawn.shape[1]), 1e6, 1.0)
        root = np.sqrt(weight)
        z = (self.drawn - (weight @ self.drawn) / weight.sum()) * root[:, None]
        linear = np.linalg.pinv(z, rcond=np.finfo(np.float64).eps * max(z.shape)) * root  # [features, count]
        coefficients = g.op("MatMul", scores, g.const(linear.T, np.float64))  # [N, features]
        return g.op("Gather", coefficients, g.const(self.labels.ravel().astype(np.int64)), axis=1)


# -- Ablation-CAM ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AblationCam(ForwardMethod):
    """The copies are of the layer's activation; the runtime scores them through the model's part
    after the layer. The ablated channel is set to 0 where the image's activation has minimum 0
    (after a ReLU), else to that minimum - 1e7 (the anchor then lowers it by 1e7 more per copy in
    a batch, an in-place side effect we do not copy)."""
    takes_layer: ClassVar[bool] = True
    uses_baseline: ClassVar[bool] = False

    def layers(self, proto, x, y, names):
        return locate(proto, x, y, names)

    def passes(self, height, width, channels=None):
        return channels or 0

    def perturbations(self, height, width, channel_axis, seed):
        return AblatedChannels((height, width))


class AblatedChannels(Perturbations):
    """values: the layer's activations [N, K, h, w] (channels first: the runtime moves NHWC
    layers' channels here and back)."""

    def __init__(self, shape):
        self.shape, self.count, self.activations, self.scores = shape, None, None, None

    def start(self, activations):
        self.activations = np.asarray(activations, np.float32)
        self.count = self.activations.shape[1]
        self.scores = np.zeros(self.activations.shape[:2])

    def rows(self, values, baselines, lo, hi):
        copies = np.repeat(values[:, None], hi - lo, axis=1)  # [n, k, K, h, w]
        low = values.reshape(len(values), -1).min(axis=1)
        ablated = np.where(low == 0, 0, low - 1e7).astype(np.float32)
        for k, channel in enumerate(range(lo, hi)):
            copies[:, k, channel] = ablated[:, None, None]
        return copies

    def add(self, lo, hi, scores):
        self.scores[:, lo:hi] = scores

    def result(self, clean):
        clean = np.asarray(clean, np.float64)[:, None]
        weights = (clean - self.scores) / clean
        cam = np.maximum(np.einsum("nk,nkhw->nhw", weights, self.activations), 0)
        rows = linear_resize_matrix(cam.shape[1], self.shape[0])
        cols = linear_resize_matrix(cam.shape[2], self.shape[1])
        return np.einsum("yh,nhw,xw->nyx", rows, cam, cols).astype(np.float32)


PERTURBATION_METHODS = {
    "occlusion": Occlusion("occlusion", "Occlusion (Zeiler and Fergus; as Captum): the mean drop of the score "
                           "when a sliding window over the pixel is set to the baseline (forward passes only)"),
    "rise": Rise("rise", "RISE (Petsiuk et al.): the score-weighted mean of random upsampled masks that keep the "
                 "pixel (forward passes only; seeded)"),
    "kernelshap": KernelShap("kernelshap", "KernelSHAP (Lundberg and Lee; as Captum): each grid cell's "
                             "coefficient in a least-squares fit of the score on sampled coalitions (forward passes "
                             "only; seeded)"),
    "ablation_cam": AblationCam("ablation_cam", "Ablation-CAM (Desai and Ramaswamy; as pytorch-grad-cam): layer "
                                "channels weighted by the score drop when each is zeroed (forward passes only)"),
}
register(*PERTURBATION_METHODS.values())
