"""A detector's box as a Target: DetectionBox reads the boxes from the model's raw head (YOLOv8/v5,
GFL/PicoDet or SSD-style boxes and scores), keeps them by class-aware NMS in numpy, and explains each
kept box by its class score (ClassScore's seed over the flattened candidates' scores); rise weighs
its masks by D-RISE's similarity of the masked image's detections to the box instead."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper

from .errors import UsageError
from .graph import GraphBuilder, prune
from .intake import PreparedModel
from .targets import ClassScore

BOX_LAYOUTS = ("yolov8", "yolov5", "gfl", "boxes")
BOX_LAYOUT_HELP = ("yolov8: one output [N, 4+C, A] (cx, cy, w, h, then C class scores per anchor); yolov5: one "
                   "output [N, A, 5+C] (cx, cy, w, h, objectness, C class scores; the score is objectness x class); "
                   "gfl (PP-PicoDet, GFL): per level L scores [N, A_L, C] then per level box distributions "
                   "[N, A_L, 4 (reg_max + 1)], strides found from the image size; boxes (SSD, RetinaNet with the "
                   "boxes decoded in the graph): boxes [N, A, 4] as x0, y0, x1, y1 and scores [N, A, C]")


@dataclass(frozen=True)
class Box:
    """One kept box of one image: `index` is its column in DetectionBox's explained output
    (anchor * classes + label), the value its explanation targets."""
    image: int
    index: int
    label: int
    score: float
    xyxy: tuple  # x0, y0, x1, y1 in the model input's pixels


@dataclass(frozen=True)
class DetectionBox(ClassScore):
    """A detector's box, explained by its class score: the explained output is every candidate's
    class scores, [N, anchors * classes] (anchor-major), read from a raw head (BOX_LAYOUT_HELP);
    the class index of a box is anchor * classes + label, so every method explains it as a class.
    Boxes are found outside the graph (find: decode, then class-aware NMS in numpy): the `top` K by
    score, or all above `threshold` (at most `top` where both are given); neither: the top box.
    Scores are the head's own values (probabilities for YOLOv8 and PicoDet; logits where the head
    gives logits)."""
    layout: str = "auto"
    top: int | None = None
    threshold: float | None = None
    iou: float = 0.5
    output_name: str | None = None  # any output of the model (the head is read from all of them)
    reads_image_rows = False

    def __post_init__(self):
        super().__post_init__()
        if self.layout not in ("auto", *BOX_LAYOUTS):
            raise UsageError(f"unknown box layout '{self.layout}'; choose auto or one of {', '.join(BOX_LAYOUTS)}")
        if self.top is not None and int(self.top) < 1:
            raise UsageError(f"box:K needs K >= 1, got {self.top}")
        if not 0 < float(self.iou) <= 1:
            raise UsageError(f"the NMS IoU threshold is in (0, 1], got {self.iou}")

    def describe(self) -> str:
        return "box" + (f":{self.top}" if self.top else "") + (f"@{self.threshold:g}" if self.threshold is not None
                                                                else "")

    def classes(self, shape) -> int | None:
        n = (shape or [None])[-1]
        return n if isinstance(n, int) else None

    # -- which outputs hold what ----------------------------------------------------------------
    def roles(self, names: list[str], shapes: dict) -> tuple[str, dict]:
        """(layout, {role: output name or names}) from the outputs' shapes (inferred or run-time)."""
        shapes = {n: (None if shapes.get(n) is None else tuple(shapes[n])) for n in names}
        ranks3 = [n for n in names if shapes[n] is not None and len(shapes[n]) == 3]
        layout = self.layout
        if layout == "auto":
            if len(names) == 1 and ranks3:
                d1, d2 = shapes[names[0]][1:]
                layout = "yolov8" if isinstance(d1, int) and isinstance(d2, int) and d1 < d2 else "yolov5"
            elif len(names) == 2 and len(ranks3) == 2 and 4 in (shapes[names[0]][2], shapes[names[1]][2]):
                layout = "boxes"
            elif len(names) % 2 == 0 and len(ranks3) == len(names):
                layout = "gfl"
            else:
                raise UsageError(self._unreadable(names, shapes))
        try:
            if layout in ("yolov8", "yolov5"):
                (head,) = [n for n in names if n in ranks3][:1] or [None]
                if head is None:
                    raise ValueError
                return layout, {"head": head}
            if layout == "boxes":
                boxes = next(n for n in ranks3 if shapes[n][2] == 4)
                scores = next(n for n in ranks3 if n != boxes)
                return layout, {"boxes": boxes, "scores": scores}
            half = len(names) // 2
            scores, distributions = names[:half], names[half:]
            if not half or any(n not in ranks3 for n in names) or any(shapes[d][2] % 4 for d in distributions):
                raise ValueError
            return layout, {"scores": scores, "distributions": distributions}
        except (ValueError, StopIteration, TypeError):
            raise UsageError(self._unreadable(names, shapes, layout)) from None

    @staticmethod
    def _unreadable(names, shapes, layout="auto") -> str:
        shown = "; ".join(f"{n} {'?' if shapes[n] is None else _box_shape(shapes[n])}" for n in names)
        wanted = f"as the {layout} layout" if layout != "auto" else "as boxes (layouts: " + ", ".join(BOX_LAYOUTS) + ")"
        return (f"the outputs cannot be read {wanted}: {shown}; name the layout (box_layout=, --box-layout) or "
                "explain one output with --target output:NAME[INDEX]")

    # -- the explained output -------------------------------------------------------------------
    def select(self, prepared: PreparedModel, in_place: bool = False) -> PreparedModel:
        """The prepared model with its explained output: every candidate's class scores, flattened
        to [N, anchors * classes]."""
        model = prepared.proto if in_place else prepared.copy()
        builder = GraphBuilder(model)
        names = [o.name for o in model.graph.output]
        layout, roles = self.roles(names, {n: builder.shape(n) for n in names})
        if layout == "yolov8":  # [N, 4+C, A] -> [N, A, C]
            head = roles["head"]
            classes = builder.op("Slice", head, builder.ints([4]), builder.ints([2**62]), builder.ints([1]))
            scores = builder.op("Transpose", classes, perm=[0, 2, 1])
        elif layout == "yolov5":  # objectness x class score, [N, A, C]
            head = roles["head"]
            objectness = builder.op("Slice", head, builder.ints([4]), builder.ints([5]), builder.ints([2]))
            classes = builder.op("Slice", head, builder.ints([5]), builder.ints([2**62]), builder.ints([2]))
            scores = builder.op("Mul", objectness, classes)
        elif layout == "gfl":
            scores = builder.op("Concat", *roles["scores"], axis=1) if len(roles["scores"]) > 1 else roles["scores"][0]
        else:
            scores = roles["scores"]
        flat = builder.op("Flatten", scores, axis=1, name="box_class_scores")
        declared = model.graph.output[0].type.tensor_type.elem_type
        shape = builder.shape(scores)
        width = int(np.prod(shape[1:])) if shape and all(isinstance(d, int) for d in shape[1:]) else None
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(flat, declared, [(shape or ["N"])[0], width]))
        prune(model.graph)
        return replace(prepared, proto=model, output=flat)

    # -- the boxes, in numpy ---------------------------------------------------------------------
    def decode(self, outputs: dict, image_size) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each image's candidates: (boxes [A, 4] x0, y0, x1, y1 in input pixels, scores [A, C]),
        anchors in the explained output's order. outputs: name -> array (all the model's outputs)."""
        return [(boxes, classes if objectness is None else objectness[:, None] * classes)
                for boxes, objectness, classes in self.detections(outputs, image_size)]

    def detections(self, outputs: dict, image_size) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """Each image's candidates as detection vectors: (boxes [A, 4], objectness [A] where the
        head has it (yolov5) else None, class scores [A, C]); decode's scores are their product."""
        names = list(outputs)
        layout, roles = self.roles(names, {n: outputs[n].shape for n in names})
        found = []
        if layout in ("yolov8", "yolov5"):
            head = np.asarray(outputs[roles["head"]], np.float64)
            for image in head:
                rows = image.T if layout == "yolov8" else image
                cx, cy, w, h = rows[:, :4].T
                boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
                found.append((boxes, None, rows[:, 4:]) if layout == "yolov8" else (boxes, rows[:, 4], rows[:, 5:]))
            return found
        if layout == "boxes":
            return [(np.asarray(b, np.float64), None, np.asarray(s, np.float64))
                    for b, s in zip(outputs[roles["boxes"]], outputs[roles["scores"]])]
        height, width = image_size
        levels = [(outputs[s], outputs[d]) for s, d in zip(roles["scores"], roles["distributions"])]
        for n in range(len(levels[0][0])):
            boxes, scores = [], []
            for level_scores, distribution in levels:
                count = level_scores.shape[1]
                stride = next((s for s in (4, 8, 16, 32, 64, 128, 256)
                               if -(-height // s) * -(-width // s) == count), None)
                if stride is None:
                    raise UsageError(f"a GFL level has {count} anchors, which no stride (4 to 256) gives for a "
                                     f"{height}x{width} image; give boxes decoded in the graph (layout boxes)")
                rows, cols = np.meshgrid(np.arange(-(-height // stride)), np.arange(-(-width // stride)), indexing="ij")
                cx, cy = (cols.ravel() + 0.5) * stride, (rows.ravel() + 0.5) * stride
                bins = distribution.shape[2] // 4
                logits = np.asarray(distribution[n], np.float64).reshape(-1, 4, bins)
                weights = np.exp(logits - logits.max(axis=2, keepdims=True))
                distance = (weights / weights.sum(axis=2, keepdims=True) * np.arange(bins)).sum(axis=2) * stride
                boxes.append(np.stack([cx - distance[:, 0], cy - distance[:, 1], cx + distance[:, 2],
                                       cy + distance[:, 3]], axis=1))
                scores.append(np.asarray(level_scores[n], np.float64))
            found.append((np.concatenate(boxes), None, np.concatenate(scores)))
        return found

    # -- D-RISE (Petsiuk et al. 2021): how well a masked image's detections match the explained box --
    matches_detections = True  # rise weighs its masks by similarity() instead of the box's class score

    @staticmethod
    def reference(detections: tuple, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The explained box's detection vector, from its image's candidates (detections()) and its
        column in the explained output: (its box [4], its anchor's class scores [C])."""
        boxes, _, classes = detections
        anchor = index // classes.shape[1]
        return boxes[anchor], classes[anchor]

    @staticmethod
    def similarity(reference: tuple, detections: tuple) -> float:
        """D-RISE's weight of a masked image: the largest, over its candidates j, of
        IoU(box, box_j) x cosine(classes, classes_j) (x objectness_j where the head has it)."""
        box, classes = reference
        boxes, objectness, scores = detections
        low, high = np.maximum(boxes[:, :2], box[:2]), np.minimum(boxes[:, 2:], box[2:])
        inter = np.prod(np.clip(high - low, 0, None), axis=1)
        area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731 - degenerate: 0
        union = area(boxes) + area(box) - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        norms = np.linalg.norm(scores, axis=1) * np.linalg.norm(classes)
        cosine = np.divide(scores @ classes, norms, out=np.zeros_like(norms), where=norms > 0)
        weight = iou * cosine * (1.0 if objectness is None else objectness)
        return float(weight.max()) if len(weight) else 0.0

    def keep(self, boxes: np.ndarray, scores: np.ndarray, image: int = 0) -> list[Box]:
        """Class-aware NMS over one image's candidates: the top K, or those above the threshold."""
        limit = self.top if self.top else (None if self.threshold is not None else 1)
        flat = scores.ravel()
        order = np.argsort(-flat, kind="stable")
        if self.threshold is not None:
            order = order[flat[order] > self.threshold]
        order = order[:max(1000, 50 * (limit or 0))]  # as detectors' pre-NMS top-k: bounds the work
        classes = scores.shape[1]
        kept: list[Box] = []
        for index in order:
            anchor, label = divmod(int(index), classes)
            box = boxes[anchor]
            if any(k.label == label and _iou(box, k.xyxy) > self.iou for k in kept):
                continue
            kept.append(Box(image, int(index), label, float(flat[index]), tuple(float(v) for v in box)))
            if limit is not None and len(kept) >= limit:
                break
        return kept


def _iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _box_shape(shape) -> str:
    return "[" + ", ".join("?" if not isinstance(d, int) else str(d) for d in shape) + "]"


TIE = 1e-5  # box coordinates closer than this (relative) are equal for BoxScoreMatch's IoU


@dataclass(frozen=True, eq=False)
class BoxScoreMatch(ClassScore):
    """pytorch-grad-cam's FasterRCNNBoxScoreTarget on a detector's post-processed outputs (boxes
    [N, K, 4] x0, y0, x1, y1, scores [N, K], integer labels [N, K]; K may be decided at run time):
    for each given box and label, the output box of highest IoU with it; where that IoU is above
    `iou` and the label is the given one, IoU + that box's score. The explained output is their
    sum, [N, 1], built in the graph (class 0), so it follows the boxes wherever the input goes.
    At the image, the given boxes being the model's own detections, each matches itself: IoU 1,
    whose gradient is 0 there with torch's ties (max and min split the gradient in half, as
    written here through Abs), so the gradient is that of the sum of the boxes' scores."""
    boxes: tuple = ()
    labels: tuple = ()
    iou: float = 0.5
    names: tuple = ("boxes", "scores", "labels")  # the outputs holding them

    def __post_init__(self):
        super().__post_init__()
        boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4) if len(self.boxes) else np.zeros((0, 4))
        if not len(boxes) or len(boxes) != len(self.labels):
            raise UsageError(f"a box-score target needs boxes and one label per box, got {len(boxes)} boxes and "
                             f"{len(self.labels)} labels")
        object.__setattr__(self, "boxes", tuple(map(tuple, boxes.tolist())))
        object.__setattr__(self, "labels", tuple(int(v) for v in self.labels))

    def describe(self) -> str:
        return f"box score of {len(self.boxes)} given box(es) (IoU > {self.iou:g}, same label)"

    def select(self, prepared: PreparedModel, in_place: bool = False) -> PreparedModel:
        model = prepared.proto if in_place else prepared.copy()
        outputs = {o.name for o in model.graph.output}
        missing = [n for n in self.names if n not in outputs]
        if missing:
            raise UsageError(f"a box-score target reads the outputs {', '.join(self.names)}; the model has "
                             f"{', '.join(sorted(outputs))} (name them with names=(boxes, scores, labels))")
        g = GraphBuilder(model)
        boxes, scores, labels = self.names
        given = np.asarray(self.boxes, np.float32)

        def coordinate(i):  # an output box coordinate [N, 1, K] and the given boxes' [1, G, 1]
            out = g.op("Unsqueeze", g.op("Gather", boxes, g.ints(i), axis=2), g.ints([1]))
            return out, g.const(given[:, i].reshape(1, -1, 1))

        def most(a, b, sign):  # max (sign 1) or min (-1) as (a + b +- |a - b|) / 2: ties split in half
            both, apart = g.op("Add", a, b), g.op("Sub", a, b)
            # a tie up to float32 rounding (TIE of the coordinates): the attribution graph recomputes
            # the boxes, and another fusion of its sums moves them by ~1e-5 px from the boxes found
            # at the image; a one-sided derivative there would add |dIoU/dbox| ~ 1/side, not 0
            band = g.op("Mul", g.op("Max", g.op("Abs", a), g.op("Abs", b), g.const(1.0)), g.const(TIE))
            apart = g.op("Where", g.op("Less", g.op("Abs", apart), band), g.const(0.0), apart)
            return g.op("Mul", g.op("Add" if sign > 0 else "Sub", both, g.op("Abs", apart)), g.const(0.5))

        (x0, gx0), (y0, gy0), (x1, gx1), (y1, gy1) = (coordinate(i) for i in range(4))
        width = g.op("Relu", g.op("Sub", most(x1, gx1, -1), most(x0, gx0, 1)))
        height = g.op("Relu", g.op("Sub", most(y1, gy1, -1), most(y0, gy0, 1)))
        inter = g.op("Mul", width, height)
        area = g.op("Mul", g.op("Sub", x1, x0), g.op("Sub", y1, y0))
        given_area = g.const(((given[:, 2] - given[:, 0]) * (given[:, 3] - given[:, 1])).reshape(1, -1, 1))
        iou = g.op("Div", inter, g.op("Sub", g.op("Add", area, given_area), inter))  # [N, G, K]
        # one more column that never matches (IoU -1, score 0, label -1): ArgMax needs one where K is 0
        size = g.op("Shape", iou)
        column = g.op("Concat", g.op("Slice", size, g.ints([0]), g.ints([2])), g.ints([1]), axis=0)
        iou = g.op("Concat", iou, g.op("Expand", g.const(-1.0), column), axis=2)
        best = g.op("ArgMax", iou, axis=2, keepdims=1)  # the first of equal IoUs, as torch's argmax

        def at_best(values, fill):  # [N, K] -> the value at each given box's best match, [N, G, 1]
            rows = g.op("Unsqueeze", values, g.ints([1]))
            rows = g.op("Concat", rows, g.op("Expand", fill, g.op("Concat", g.op("Slice", g.op("Shape", rows), g.ints([0]),
                                                                                g.ints([2])), g.ints([1]), axis=0)), axis=2)
            return g.op("GatherElements", g.op("Expand", rows, g.op("Shape", iou)), best, axis=2)

        best_iou = g.op("GatherElements", iou, best, axis=2)
        best_score = at_best(scores, g.const(0.0))
        label_type = helper.tensor_dtype_to_np_dtype(g.elem_type(labels) or onnx.TensorProto.INT64)
        best_label = at_best(labels, g.const(np.array(-1), dtype=label_type))
        given_labels = g.const(np.array(self.labels).reshape(1, -1, 1), dtype=label_type)
        matched = g.op("And", g.op("Greater", best_iou, g.const(float(self.iou))), g.op("Equal", best_label, given_labels))
        each = g.op("Where", matched, g.op("Add", best_iou, best_score), g.const(0.0))
        total = g.op("ReduceSum", g.op("Reshape", each, g.ints([0, -1])), g.ints([1]), keepdims=1, name="box_score")
        declared = next(o for o in model.graph.output if o.name == scores).type.tensor_type.elem_type
        batch = (g.shape(scores) or ["N"])[0]
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(total, declared, [batch, 1]))
        prune(model.graph)
        return replace(prepared, proto=model, output=total)

    def classes(self, shape) -> int | None:
        return 1
