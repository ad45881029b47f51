"""What is explained: a target picks the model's explained output, chooses what each image's score
is (the class: top-1 or given), builds the seed of the backward pass, and reads the score from the
outputs. Methods never ask which target they explain: every attribution graph takes the seed and
scores a target builds (gnl_onnx/attribution.py).

ClassScore: a classifier's class logit (the default), probability or log-probability, of the top-1
class or a given one; the seed is the one-hot of the class. select_output / selected: the explained
output as [N, classes], the logits in front of a final Softmax/LogSoftmax, their softmax or their
log-softmax.

MapRegion (SegmentRegion, DenseRegion): the explained output is a map [N, C, H, W] (a segmenter's
class logits, DBNet's text probability map) and the score is a channel summed over a region (the
class's predicted mask, the map above a threshold, a given mask or box). The region is read from
the outputs at the images and seeds the backward pass (the one-hot of the channel times the
region), so it stays fixed along a path, as pytorch-grad-cam's SemanticSegmentationTarget holds its
mask. OutputSlice: a named output indexed and summed into one score [N, 1].

output_kinds / outputs_line: what each output of a model looks like and the --target that explains
it. A detector's box is another Target (box_targets.py); target_text.py reads --target."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper

from .errors import UsageError
from .graph import GraphBuilder, prune
from .intake import PreparedModel, prepare


OUTPUT_KINDS = ("logit", "prob", "logprob")


def select_output(model, kind: str = "logit", name: str | None = None) -> onnx.ModelProto:
    """A copy of the model whose only output is the value to explain, as [N, classes]: the logits
    in front of a final Softmax/LogSoftmax (or the output itself when there is none), their
    softmax, or their log-softmax. Heads shaped [N, classes, 1, 1] are flattened first."""
    return selected(prepare(model, output=name), kind).proto


def selected(prepared: PreparedModel, kind: str = "logit", in_place: bool = False) -> PreparedModel:
    """select_output on a prepared model, keeping it prepared (nothing is read or normalized
    again). in_place: the caller prepared it for this alone, so its proto is changed, not copied."""
    if kind not in OUTPUT_KINDS:
        raise UsageError(f"unknown output '{kind}'; choose one of {', '.join(OUTPUT_KINDS)}")
    model = prepared.proto if in_place else prepared.copy()
    graph = model.graph
    y = prepared.output
    producer = next((n for n in graph.node if y in n.output), None)
    ending = producer.op_type if producer is not None and producer.op_type in ("Softmax", "LogSoftmax") else None
    logits = producer.input[0] if ending else y
    axis = next((a.i for a in producer.attribute if a.name == "axis"), -1) if ending else -1
    builder = GraphBuilder(model)
    source_outputs = list(graph.output)
    declared = next(o for o in source_outputs if o.name == y).type.tensor_type
    shape = builder.shape(logits)
    if shape is not None and len(shape) < 2:
        raise UsageError(f"output '{y}' has shape {list(shape)}; attribution explains a class score, so it "
                         "needs outputs of shape [N, classes] (or [N, classes, 1, 1])")
    if shape is not None and len(shape) != 2:  # e.g. a 1x1-conv head: classes are all non-batch values
        logits, ending, axis = builder.op("Flatten", logits, axis=1, name="class_scores"), None, -1
        classes = int(np.prod(shape[1:])) if all(isinstance(d, int) for d in shape[1:]) else None
        shape = (shape[0], classes)
    if kind == "logit":
        chosen = logits
    elif kind == ("prob" if ending == "Softmax" else "logprob") and ending:
        chosen = y
    elif kind == "prob" and ending == "LogSoftmax":
        chosen = builder.op("Exp", y, name="probabilities")
    else:
        chosen = builder.op("Softmax" if kind == "prob" else "LogSoftmax", logits, axis=axis,
                            name="probabilities" if kind == "prob" else "log_probabilities")
    del graph.output[:]
    if shape is None:  # unknown to shape inference: keep the declared output's type
        graph.output.append(helper.make_value_info(chosen, next(o for o in source_outputs if o.name == y).type))
    else:
        graph.output.append(helper.make_tensor_value_info(chosen, declared.elem_type, list(shape)))
    prune(graph)
    return replace(prepared, proto=model, output=chosen)


class Target:
    """What every target answers (see the module docstring); ClassScore is the default one."""
    output_name: str | None = None  # the model output it reads (None: the one the settings name, or the only one)
    reads_image_rows: bool = False  # its seed reads the images' own outputs (a predicted mask): every run
    # of a path then scores its images (no score_rows of 0)
    matches_detections: bool = False  # a detector's box: rise weighs masks by D-RISE's similarity (box_targets)

    def region_at(self, scores: np.ndarray, chosen: int):
        """The pixels explained for one image ([H, W] booleans on the output map), from its outputs
        (without the batch dim) and its class; None for a target without a region (a class score)."""
        return None


@dataclass(frozen=True)
class ClassScore(Target):
    """One class score per image, as `output` says ("logit", "prob" or "logprob"); the class is the
    given target, or the top-1 where the target is negative."""
    output: str = "logit"

    def __post_init__(self):
        if self.output not in OUTPUT_KINDS:
            raise UsageError(f"unknown output '{self.output}'; choose one of {', '.join(OUTPUT_KINDS)}")

    def describe(self) -> str:
        return self.output

    def select(self, prepared: PreparedModel, in_place: bool = False) -> PreparedModel:
        """The prepared model with its explained output, [N, classes]."""
        return selected(prepared, self.output, in_place=in_place)

    def classes(self, shape) -> int | None:
        """The number of classes a target may name, from the explained output's shape."""
        n = (shape or [None])[-1]
        return n if isinstance(n, int) else None

    def choose(self, g: GraphBuilder, scores: str, given: str, n: str | None = None, out: str = "") -> str:
        """In the graph: the class explained per image (`given`, or the top-1 of `scores` where it is
        negative). n: the number of images, when fewer have score rows (the others keep `given`)."""
        top1 = g.op("ArgMax", scores, axis=1, keepdims=0)
        if n is not None:
            unscored = g.op("Sub", n, g.op("Shape", scores, end=1))
            top1 = g.op("Pad", top1, g.op("Concat", g.ints([0]), unscored, axis=0))
        return g.op("Where", g.op("Less", given, g.ints(0)), top1, given, out=out)

    def seed(self, g: GraphBuilder, scores: str, chosen: str) -> str:
        """In the graph: the seed of the backward pass for each image, the one-hot of its class."""
        classes = g.op("Slice", g.op("Shape", scores), g.ints([1]), g.ints([2]))
        return g.op("OneHot", chosen, classes, g.const([0.0, 1.0]), axis=-1)

    def score(self, scores: np.ndarray, chosen: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
        """The explained score of each image, from the outputs [N, classes]. at: the outputs at the
        images when `scores` are another point's (a baseline's); a class score does not need them."""
        return scores[np.arange(len(chosen)), chosen]


DBNET_THRESHOLD = 0.3  # DBNet's (PaddleOCR's) text-pixel threshold on its probability map


@dataclass(frozen=True, eq=False)
class MapRegion(Target):
    """The explained output as a map [N, C, H, W] (an output [N, H, W] gets C = 1), and a region of
    it: score[n, c] = the sum of map[n, c] over the region. The class (channel) is the given target
    or the one of highest region score. The region is the intersection of what is given:
    `mask` (an [h, w] array, nonzero inside; resized to the map by nearest pixel), `box`
    (x0, y0, x1, y1: columns x0..x1-1 and rows y0..y1-1 of the map) and `threshold` (the pixels
    whose value is above it); with none given, the subclass's default region. The region is read at
    the image (the images' own outputs) and held fixed along every path, as pytorch-grad-cam's
    SemanticSegmentationTarget holds its mask."""
    mask: np.ndarray | None = None
    box: tuple | None = None
    threshold: float | None = None
    output_name: str | None = None
    reads_image_rows = True
    kind = "map"

    def __post_init__(self):
        if self.mask is not None:
            mask = np.asarray(self.mask)
            mask = mask[0, 0] if mask.ndim == 4 and mask.shape[:2] == (1, 1) else mask
            if mask.ndim != 2 or 0 in mask.shape:
                raise UsageError(f"a region mask is an [H, W] array (nonzero inside), got shape {list(np.shape(self.mask))}")
            if not np.any(mask):
                raise UsageError("the region mask is empty (no nonzero pixel): nothing to explain")
            object.__setattr__(self, "mask", (mask != 0).astype(np.float32))
        if self.box is not None:
            box = tuple(int(round(float(v))) for v in self.box)
            if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1] or min(box) < 0:
                raise UsageError(f"a box is x0,y0,x1,y1 with 0 <= x0 < x1 and 0 <= y0 < y1 (map pixels), got {self.box}")
            object.__setattr__(self, "box", box)
        if self.threshold is not None:
            object.__setattr__(self, "threshold", float(self.threshold))

    def describe(self) -> str:
        parts = [f"{self.kind}"]
        if self.output_name:
            parts.append(f" of '{self.output_name}'")
        region = [f"box {list(self.box)}"] if self.box else []
        region += ["a given mask"] if self.mask is not None else []
        region += [f"values above {self.threshold:g}"] if self.threshold is not None else []
        return "".join(parts) + (" over " + " and ".join(region) if region else " over its " + self.default_region)

    default_region = "whole map"

    def select(self, prepared: PreparedModel, in_place: bool = False) -> PreparedModel:
        """The prepared model with its explained output as a map [N, C, H, W]."""
        prepared = prepare(prepared, output=self.output_name)
        model = prepared.proto if in_place else prepared.copy()
        builder = GraphBuilder(model)
        y = prepared.output
        shape = builder.shape(y)
        if shape is None or len(shape) not in (3, 4):
            shown = "unknown" if shape is None else _shown(shape)
            raise UsageError(f"output '{y}' has shape {shown}, not a map [N, C, H, W] or [N, H, W] that --target "
                             f"{self.kind} reads; the outputs: {outputs_line(model)}")
        chosen = y if len(shape) == 4 else builder.op("Unsqueeze", y, builder.ints([1]), name="map")
        shape = list(shape) if len(shape) == 4 else [shape[0], 1, *shape[1:]]
        declared = next(o for o in model.graph.output if o.name == y).type.tensor_type.elem_type
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(chosen, declared, shape))
        prune(model.graph)
        return replace(prepared, proto=model, output=chosen)

    def classes(self, shape) -> int | None:
        n = (shape or [None, None])[1]
        return n if isinstance(n, int) else None

    # -- the region, in the graph and in numpy (the same pixels) -------------------------------
    def _default_region(self, g: GraphBuilder, scores: str) -> str | None:
        return None

    def region(self, g: GraphBuilder, scores: str) -> str:
        """In the graph: the region as floats 0/1, broadcastable to scores [N, C, H, W]."""
        parts = []
        shape = g.op("Shape", scores)
        height, width = (g.op("Squeeze", g.op("Slice", shape, g.ints([a]), g.ints([a + 1])), g.ints([0]))
                         for a in (2, 3))
        if self.mask is not None:
            h, w = self.mask.shape
            rows = g.op("Div", g.op("Mul", g.op("Range", g.ints(0), height, g.ints(1)), g.ints(h)), height)
            cols = g.op("Div", g.op("Mul", g.op("Range", g.ints(0), width, g.ints(1)), g.ints(w)), width)
            mask = g.const(self.mask[None, None].astype(np.float32))
            parts.append(g.op("Gather", g.op("Gather", mask, rows, axis=2), cols, axis=3))
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            rows = g.op("Reshape", g.op("Range", g.ints(0), height, g.ints(1)), g.ints([1, 1, -1, 1]))
            cols = g.op("Reshape", g.op("Range", g.ints(0), width, g.ints(1)), g.ints([1, 1, 1, -1]))
            inside = g.op("And", g.op("And", g.op("GreaterOrEqual", rows, g.ints(y0)), g.op("Less", rows, g.ints(y1))),
                          g.op("And", g.op("GreaterOrEqual", cols, g.ints(x0)), g.op("Less", cols, g.ints(x1))))
            parts.append(g.op("Cast", inside, to=g.float_type))
        if self.threshold is not None:
            parts.append(g.op("Cast", g.op("Greater", scores, g.const(np.float32(self.threshold))), to=g.float_type))
        if not parts:
            default = self._default_region(g, scores)
            parts.append(default if default is not None else g.const(np.ones((1, 1, 1, 1), np.float32)))
        region = parts[0]
        for part in parts[1:]:
            region = g.op("Mul", region, part)
        return region

    def _default_region_np(self, at: np.ndarray) -> np.ndarray:
        return np.ones((1, 1) + at.shape[2:], np.float32)

    def region_at(self, scores: np.ndarray, chosen: int) -> np.ndarray:
        region = self.region_np(scores[None] if scores.ndim == 3 else scores[None, None])[0]
        return region[min(int(chosen), len(region) - 1)] != 0

    def region_np(self, at: np.ndarray) -> np.ndarray:
        """The region of `region` in numpy, from the outputs at the images [N, C, H, W]."""
        height, width = at.shape[2:]
        parts = []
        if self.mask is not None:
            h, w = self.mask.shape
            rows, cols = np.arange(height) * h // height, np.arange(width) * w // width
            parts.append(self.mask[rows][:, cols][None, None])
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            inside = np.zeros((1, 1, height, width), np.float32)
            inside[..., y0:y1, x0:x1] = 1
            parts.append(inside)
        if self.threshold is not None:
            parts.append((at > np.float32(self.threshold)).astype(np.float32))
        if not parts:
            parts.append(self._default_region_np(at))
        region = parts[0]
        for part in parts[1:]:
            region = region * part
        return region

    # -- what the attribution graph asks -------------------------------------------------------
    def region_scores(self, g: GraphBuilder, scores: str) -> str:
        """[N, C]: each class's map summed over its region."""
        return g.op("ReduceSum", g.op("Mul", scores, self.region(g, scores)), g.ints([2, 3]), keepdims=0)

    def choose(self, g: GraphBuilder, scores: str, given: str, n: str | None = None, out: str = "") -> str:
        """The channel explained per image: `given`, or the one of highest region score."""
        return ClassScore.choose(self, g, self.region_scores(g, scores), given, n, out)

    def seed(self, g: GraphBuilder, scores: str, chosen: str) -> str:
        """The one-hot of the channel times the region: d(region score)/d(map)."""
        one_hot = ClassScore.seed(self, g, scores, chosen)
        return g.op("Mul", g.op("Unsqueeze", one_hot, g.ints([2, 3])), self.region(g, scores))

    def score(self, scores: np.ndarray, chosen: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
        """The region score of each image's channel; `at`: the outputs at the images, whose region
        it is (default: `scores` themselves)."""
        region = np.broadcast_to(self.region_np(scores if at is None else at), scores.shape)
        rows = np.arange(len(chosen))
        return (scores[rows, chosen] * region[rows, chosen]).sum(axis=(1, 2), dtype=np.float64).astype(np.float32)


@dataclass(frozen=True, eq=False)
class SegmentRegion(MapRegion):
    """A segmenter's class logits [N, classes, H, W] summed over a region: by default the class's
    predicted mask (the pixels whose argmax over the class axis is that class), else the mask, box or
    threshold given. The class is the given target, or the one whose predicted region scores
    highest (usually the background on a photo: name the class)."""
    kind = "segment"
    default_region = "predicted mask (argmax over classes)"

    def _default_region(self, g, scores):
        top = g.op("ArgMax", scores, axis=1, keepdims=1)  # [N, 1, H, W]
        classes = g.op("Slice", g.op("Shape", scores), g.ints([1]), g.ints([2]))
        each = g.op("Reshape", g.op("Range", g.ints(0), g.op("Squeeze", classes, g.ints([0])), g.ints(1)),
                    g.ints([1, -1, 1, 1]))
        return g.op("Cast", g.op("Equal", top, each), to=g.float_type)

    def _default_region_np(self, at):
        top = at.argmax(axis=1)[:, None]
        return (top == np.arange(at.shape[1])[None, :, None, None]).astype(np.float32)


@dataclass(frozen=True, eq=False)
class DenseRegion(MapRegion):
    """A dense probability map (DBNet's text map [N, 1, H, W]) summed over a region: by default its
    pixels above DBNet's threshold 0.3, else the mask, box or threshold given."""
    kind = "dense"
    default_region = f"pixels above {DBNET_THRESHOLD}"

    def _default_region(self, g, scores):
        return g.op("Cast", g.op("Greater", scores, g.const(np.float32(DBNET_THRESHOLD))), to=g.float_type)

    def _default_region_np(self, at):
        return (at > np.float32(DBNET_THRESHOLD)).astype(np.float32)


@dataclass(frozen=True)
class OutputSlice(ClassScore):
    """A user's choice: the named output, indexed (the index over its dims after the batch: ints
    and slices, as numpy's, e.g. (3, slice(10, 20))), summed per image into one score [N, 1]."""
    output_name: str | None = None
    index: tuple = ()

    def __post_init__(self):
        super().__post_init__()
        if not self.output_name:
            raise UsageError("--target output:NAME[...] needs the output's name")
        index = self.index if isinstance(self.index, tuple) else (self.index,)
        for i in index:
            if not isinstance(i, (int, np.integer, slice)) or isinstance(i, bool):
                raise UsageError(f"an output index holds ints and slices, got {i!r}")
            if isinstance(i, slice) and i.step is not None and i.step <= 0:
                raise UsageError(f"slice steps must be positive, got {i.step}")
        object.__setattr__(self, "index", index)

    def describe(self) -> str:
        shown = ",".join(str(i) if not isinstance(i, slice) else
                         ":".join("" if v is None else str(v) for v in (i.start, i.stop)) +
                         (f":{i.step}" if i.step is not None else "") for i in self.index)
        return f"output:{self.output_name}[{shown}]" if self.index else f"output:{self.output_name}"

    def select(self, prepared: PreparedModel, in_place: bool = False) -> PreparedModel:
        """The prepared model with its explained output: the slice summed, [N, 1]."""
        prepared = prepare(prepared, output=self.output_name)
        model = prepared.proto if in_place else prepared.copy()
        builder = GraphBuilder(model)
        y = prepared.output
        shape = builder.shape(y)
        if shape is not None and len(self.index) > len(shape) - 1:
            raise UsageError(f"{self.describe()}: the index has {len(self.index)} entries, but '{y}' {_shown(shape)} "
                             f"has {len(shape) - 1} dims after the batch")
        starts, ends, axes, steps = [], [], [], []
        for axis, i in enumerate(self.index, start=1):
            size = shape[axis] if shape is not None and isinstance(shape[axis], int) else None
            if isinstance(i, slice):
                start, stop = i.start, i.stop
            else:
                if size is not None and not -size <= i < size:
                    raise UsageError(f"{self.describe()}: index {i} is out of range for dim {axis} of '{y}' "
                                     f"{_shown(shape)}")
                start, stop = i, (i + 1 if i != -1 else None)
            starts.append(0 if start is None else start)
            ends.append(np.iinfo(np.int64).max if stop is None else stop)
            axes.append(axis)
            steps.append(1 if not isinstance(i, slice) or i.step is None else i.step)
        value = y
        if axes:
            value = builder.op("Slice", y, builder.ints(starts), builder.ints(ends), builder.ints(axes),
                               builder.ints(steps), name="output_slice")
        summed = builder.op("ReduceSum", builder.op("Flatten", value, axis=1), builder.ints([1]), keepdims=1,
                            name="slice_sum")
        declared = next(o for o in model.graph.output if o.name == y).type.tensor_type.elem_type
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(summed, declared, [(shape or ["N"])[0], 1]))
        prune(model.graph)
        return replace(prepared, proto=model, output=summed)


def get_target(output) -> Target:
    """The target explained: a Target is returned as it is, an output kind becomes a ClassScore."""
    return output if isinstance(output, Target) else ClassScore(output)


# -- what the outputs look like, and the --target that picks each ---------------------------------
def _shown(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def output_kinds(model) -> list[dict]:
    """Each output of a model (a ModelProto or a PreparedModel): its name, its shape (from shape
    inference), what it looks like and the --target that explains it."""
    proto = model.proto if isinstance(model, PreparedModel) else model
    builder = GraphBuilder(proto)
    several = len(proto.graph.output) > 1
    found = []
    for o in proto.graph.output:
        shape = builder.shape(o.name)
        named = f" --output-name {o.name}" if several else ""
        rank = None if shape is None else len(shape)
        if rank == 2 or (rank == 4 and shape[2:] == (1, 1)):
            kind, target = "class scores [N, classes]", f"--target class{named}"
        elif rank == 4 and shape[1] == 1 or rank == 3:
            kind, target = "a dense map [N, 1, H, W]", f"--target dense{named}"
        elif rank == 4:
            kind, target = "segmentation logits [N, classes, H, W]", f"--target segment:CLASS{named}"
        else:
            kind, target = "values", f"--target output:{o.name}[INDEX]"
        found.append({"name": o.name, "shape": None if shape is None else list(shape), "kind": kind,
                      "target": target})
    return found


def outputs_line(model) -> str:
    """The outputs in one line: name, shape and the --target for each."""
    return "; ".join(f"{o['name']} {'?' if o['shape'] is None else _shown(o['shape'])} ({o['target']})"
                     for o in output_kinds(model))
