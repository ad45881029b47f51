"""The runtime of forward-only methods (gnl_onnx/methods/perturbation.py): the model's forward
graph only, no backward, so they run on models whose backward cannot be built. The perturbed
copies of every image go through ONNX Runtime in as few runs as the memory budget holds (copies
of several images and many masks in one batch); the method combines their scores.

A method that perturbs a layer (ablation_cam) runs two graphs: the model with the layer as a
second output (its activations and the clean scores), and the model's part after the layer, fed
the ablated activations (plus the image where a branch around the layer still reads it)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .attribution import bytes_per_row
from .baselines import spatial_axes
from .budget import Budget, human_size
from .errors import GnlOnnxError, ModelError, UsageError
from .graph import GraphBuilder, prune
from .intake import PreparedModel, prepare
from .runtime import choose_providers, make_session
from .targets import get_target


DRISE = ("D-RISE (Petsiuk et al. 2021): the mean of random upsampled masks that keep the pixel, each weighted by "
         "how well the masked image's best detection matches the box (IoU x class cosine x objectness; forward "
         "passes only; seeded)")


class ForwardRunner:
    """Scores a forward-only method's perturbed copies in runs that fit the memory budget."""

    def __init__(self, model, spec, settings):
        s = settings
        self.spec, self.seed = spec, s.seed
        target = get_target(s.output)
        prepared = prepare(model, s.input, s.output_name).for_rows
        # D-RISE: the masked copies' detections are read from all the model's outputs, not the class scores
        self.detector = target if spec.weighs_detections and target.matches_detections else None
        chosen = target.select(prepared, in_place=not isinstance(model, PreparedModel) and self.detector is None)
        if chosen.batch == "fixed":
            raise ModelError(chosen.notes[0])
        self.one_per_run = chosen.one_per_run
        x, y = chosen.input, chosen.output
        builder = GraphBuilder(chosen.proto)
        layers, _ = spec.layers(chosen.proto, x, y, s.layer)
        if len(layers) > 1:
            raise UsageError(f"{spec.name} takes one layer (--layer once), got {len(layers)}")
        self.layer = layers[0] if layers else None
        head = chosen.proto if self.detector is None else prepared.proto
        if self.layer is not None:  # the activations beside the scores, and the model after the layer
            head.graph.output.append(helper.make_tensor_value_info(self.layer.name, onnx.TensorProto.FLOAT, None))
            tail, self.tail_reads_image = after_value(head, self.layer.name, y, x)
        else:
            tail, self.tail_reads_image = head, False
        classes = (builder.shape(y) or [None])[-1]
        image = next(i for i in head.graph.input if i.name == x).type.tensor_type
        self.value = self.layer.name if self.layer is not None else x
        self.row_bytes = bytes_per_row(tail, self.value, any_lead_is_batch=True) + (
            bytes_per_row(head, x, any_lead_is_batch=True) if self.tail_reads_image else 0)
        self.info = {"method": spec.name, "rule": "none (forward only)", "gate": s.gate, "output": s.output,
                     "input": x, "layers": [self.layer.name] if self.layer is not None else [], "gated": [],
                     "summary": DRISE if self.detector is not None else spec.summary,
                     "bytes_per_row": self.row_bytes, "rules": {},
                     "classes": classes if isinstance(classes, int) else None,
                     "image_shape": [d.dim_value if d.HasField("dim_value") else None for d in image.shape.dim]}
        budget = Budget.resolve(s.memory_budget, choose_providers(s.providers)[0]).fit(2 * self.row_bytes,
                                                                                        s.memory_budget)
        self.budget, self.budget_note = budget.bytes, budget.note
        self.x, self.y, self.passes = x, y, None
        self.outputs = [o.name for o in head.graph.output] if self.detector is not None else [y]
        self.head, self.provider = make_session(head, s.providers, s.threads)
        self.tail = self.head if tail is head else make_session(tail, s.providers, s.threads)[0]

    def rows_per_run(self) -> int:
        return 1 if self.one_per_run else max(1, self.budget // self.row_bytes)

    def plan(self, n_images: int) -> dict:
        """How attribute() splits n images: images and copies per run, and the passes per image
        (known once the image size is: after a run, or from a fixed input shape)."""
        passes = self.passes
        if passes is None and None not in self.info["image_shape"][1:] and len(self.info["image_shape"]) == 4:
            shape = self.info["image_shape"]
            height, width = shape[1:3] if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4) else shape[2:]
            passes = self.spec.passes(height, width, self.layer.channels if self.layer is not None else None)
        rows = self.rows_per_run()
        images = max(1, min(n_images, rows))
        copies = max(1, min(passes or rows, rows // images))
        return {"images_per_run": images, "steps_per_run": copies, "forward_passes_per_image": passes,
                "memory_per_run": human_size(images * copies * self.row_bytes), "memory_budget": self.budget_note}

    def _run(self, session, outputs, feed):
        try:
            if not self.one_per_run:
                return session.run(outputs, feed)
            rows = [session.run(outputs, {k: v[i:i + 1] for k, v in feed.items()}) for i in range(len(next(iter(
                feed.values()))))]
            return [np.concatenate(parts) for parts in zip(*rows)]
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own unrelated classes
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise GnlOnnxError(f"ONNX Runtime failed while running the model on perturbed copies ({first}); "
                               "give a smaller memory budget (--memory-budget) if it ran out of memory") from None

    def attribute(self, images, targets, baselines, layout):
        """(attributions shaped like the images, scores [N, classes], targets used, None, baselines)."""
        if images.ndim != 4:
            raise UsageError(f"{self.spec.name} perturbs image batches of rank 4 (NCHW or NHWC), got rank "
                             f"{images.ndim}")
        n = len(images)
        height_axis, width_axis = spatial_axes(images.shape, layout)
        channel_axis = 3 if height_axis == 1 else 1
        height, width = images.shape[height_axis], images.shape[width_axis]
        per_run = self.rows_per_run()
        outputs = self.outputs + ([self.value] if self.layer is not None else [])
        scores, activations, found = [], [], []
        for lo in range(0, n, per_run):
            result = self._run(self.head, outputs, {self.x: images[lo:lo + per_run]})
            if self.detector is not None:  # the scores DetectionBox.select would give: decode's, flattened
                named = dict(zip(self.outputs, result))
                found += self.detector.detections(named, (height, width))
                result = [np.stack([s for _, s in self.detector.decode(named, (height, width))])]
            scores.append(np.asarray(result[0], np.float32).reshape(len(result[0]), -1))
            if self.layer is not None:
                activations.append(result[-1])
        scores = np.concatenate(scores)
        targets = np.where(targets < 0, scores.argmax(axis=1), targets)
        clean = scores[np.arange(n), targets]
        references = [self.detector.reference(d, int(t)) for d, t in zip(found, targets)] if found else None
        copies = self.spec.perturbations(height, width, channel_axis, self.seed)
        values = images
        if self.layer is not None:
            values = np.concatenate(activations)
            if self.layer.channel_axis == 3:
                values = values.transpose(0, 3, 1, 2)
            copies.start(values)
        self.passes = copies.count
        images_per_run = max(1, min(n, per_run))
        copies_per_run = max(1, min(copies.count, per_run // images_per_run))
        for lo in range(0, copies.count, copies_per_run):
            hi = min(copies.count, lo + copies_per_run)
            chosen = np.zeros((n, hi - lo))
            for first in range(0, n, images_per_run):
                part = slice(first, min(n, first + images_per_run))
                rows = copies.rows(values[part], baselines[part], lo, hi)
                batch = rows.reshape((-1,) + rows.shape[2:]).astype(np.float32, copy=False)
                if self.layer is not None and self.layer.channel_axis == 3:
                    batch = batch.transpose(0, 2, 3, 1)
                feed = {self.value: np.ascontiguousarray(batch)}
                if self.tail_reads_image:
                    feed[self.x] = np.repeat(images[part], hi - lo, axis=0)
                result = self._run(self.tail, self.outputs, feed)
                if self.detector is not None:
                    masked = self.detector.detections(dict(zip(self.outputs, result)), (height, width))
                    chosen[part] = np.reshape([self.detector.similarity(references[first + k // (hi - lo)], d)
                                               for k, d in enumerate(masked)], (-1, hi - lo))
                    continue
                out = np.asarray(result[0], np.float64).reshape(part.stop - part.start, hi - lo, -1)
                chosen[part] = np.take_along_axis(out, targets[part, None, None], axis=2)[..., 0]
            copies.add(lo, hi, chosen)
        maps = np.expand_dims(copies.result(clean), channel_axis)
        return np.ascontiguousarray(np.broadcast_to(maps, images.shape), np.float32), scores, targets, None, baselines


def after_value(model: onnx.ModelProto, value: str, y: str, x: str) -> tuple[onnx.ModelProto, bool]:
    """The part of the model computing `y` from `value` (which becomes an input), and whether it
    still reads the image `x` (a branch around the value)."""
    tail = onnx.ModelProto()
    tail.CopyFrom(model)
    builder = GraphBuilder(tail)
    shape = builder.shape(value)
    graph = tail.graph
    producer = next(n for n in graph.node if value in n.output)
    producer.output[list(producer.output).index(value)] = builder.fresh(f"{value}_unused")
    explained = [o for o in graph.output if o.name == y]
    del graph.output[:]
    graph.output.extend(explained)
    dims = ["N"] + [d if isinstance(d, int) else None for d in (shape or [None] * 4)[1:]]
    graph.input.append(helper.make_tensor_value_info(value, onnx.TensorProto.FLOAT, dims))
    prune(graph)
    reads_image = any(x in n.input for n in graph.node)
    if not reads_image:
        kept = [i for i in graph.input if i.name != x]
        del graph.input[:]
        graph.input.extend(kept)
    del graph.value_info[:]
    return tail, reads_image
