"""The model, scored: one ONNX Runtime session of the model that gives softmax probabilities of
images, which every faithfulness measure (deletion, insertion, ROAD) reads; or, for a box or region
target, one session of the model cut to that target's explained output (TargetScorer), whose
scalar score the same measures track."""
from __future__ import annotations

import numpy as np

from .errors import UsageError
from .graph import graph_inputs
from .intake import prepare
from .runtime import make_session
from .targets import selected

BATCH_SIZE = 16  # images per scoring run


_NUMPY_OF_ORT = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


class Scorer:
    """One ONNX Runtime session of the model, scoring images by softmax probabilities: a graph
    ending in Softmax is used as it is, one ending in LogSoftmax is exponentiated
    (targets.select_output(model, "prob")); any other output is taken as logits and softmaxed
    here, in float64, over all its non-batch values (so [N, classes, 1, 1] heads work too)."""

    def __init__(self, model, input: str | None = None, output_name: str | None = None, providers=None,
                 threads: int | None = None):
        source = prepare(model, input, output_name).for_rows  # a fixed batch freed where it can be
        self.input_name, y = source.input, source.output
        ending = next((n.op_type for n in source.proto.graph.node if y in n.output), None)
        self.softmax_here = ending not in ("Softmax", "LogSoftmax")
        self._open(selected(source, "logit" if self.softmax_here else "prob").proto, providers, threads)

    def _open(self, proto, providers, threads) -> None:
        """The session of `proto`, whose only input is the image (self.input_name)."""
        others = [i.name for i in graph_inputs(proto.graph) if i.name != self.input_name]
        if others:
            raise UsageError(f"the model needs inputs besides the image ({', '.join(others)}); the metrics "
                             "feed only the image")
        dims = next(i for i in proto.graph.input if i.name == self.input_name).type.tensor_type.shape.dim
        self.image_shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        # a model exported with batch 1 fixed runs one image at a time
        self.max_batch = 1 if self.image_shape and self.image_shape[0] == 1 else None
        self.session, self.provider = make_session(proto, providers, threads)
        kind = next(i.type for i in self.session.get_inputs() if i.name == self.input_name)
        self.dtype = _NUMPY_OF_ORT.get(kind, np.float32)

    def _runs(self, images, batch_size: int):
        """The session's output for the images, batch_size at a time (one where the batch is fixed at
        1), each part as float64."""
        images = np.asarray(images)
        step = max(1, int(batch_size) if self.max_batch is None else self.max_batch)
        for lo in range(0, len(images), step):
            yield np.asarray(self.session.run(None, {self.input_name: images[lo:lo + step].astype(
                self.dtype, copy=False)})[0], np.float64)

    def probabilities(self, images, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """[N, classes] float64 probabilities of N images, run batch_size at a time."""
        parts = []
        for out in self._runs(images, batch_size):
            out = out.reshape(len(out), -1)
            if self.softmax_here:
                out = np.exp(out - out.max(axis=1, keepdims=True))
                out /= out.sum(axis=1, keepdims=True)
            parts.append(out)
        return np.concatenate(parts)

    def outputs(self, images, softmax: bool, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """[N, classes] float64: probabilities (softmax), or the model's own output as a Quantus
        measure with softmax=False reads it (logits; probabilities when the graph ends in Softmax)."""
        if softmax or not self.softmax_here:
            return self.probabilities(images, batch_size)
        return np.concatenate([out.reshape(len(out), -1) for out in self._runs(images, batch_size)])

    def __call__(self, images, target, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """[N] probability of class `target` for each image."""
        p = self.probabilities(images, batch_size)
        if not 0 <= int(target) < p.shape[1]:
            raise UsageError(f"target {target} is out of range: the model has {p.shape[1]} classes")
        return p[:, int(target)]


class TargetScorer(Scorer):
    """A target's scalar score of images, for the faithfulness measures of a box or a region: one
    session of the model cut to the target's own explained output (target.select: the graph every
    method explains), read by the target's own score(). Called as a Scorer, scorer(images, chosen)
    -> [N] float64, chosen being the output's column (DetectionBox: anchor * classes + label) or
    channel (a MapRegion's class). What a perturbed image's score is, is what the target defines:

    - DetectionBox: the same candidate's class score in the raw head (the same anchor and label),
      whether or not NMS would still keep a box there: a raw head has a score for every candidate,
      so the curve never loses its box (the anchor stays put; its box may shrink or move).
    - a MapRegion (segment, dense): the channel summed over the region read at the unperturbed
      image (at(reference)), held fixed as the explanation held it, as pytorch-grad-cam's
      SemanticSegmentationTarget holds its mask.
    - BoxScoreMatch (post-processing in the graph): pytorch-grad-cam's FasterRCNNBoxScoreTarget as
      the graph computes it: for each given box, IoU + score of the best-IoU output box of the same
      label where that IoU is above the threshold, else 0; a box the perturbed image no longer
      detects adds 0.
    """

    def __init__(self, prepared, target, providers=None, threads: int | None = None, reference=None):
        source = target.select(prepared.for_rows)  # names the outputs in one line where they cannot hold it
        self.target, self.reference, self.softmax_here = target, reference, False
        self.input_name = source.input
        self._open(source.proto, providers, threads)

    def explained(self, images, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """The target's explained output of N images (float64, e.g. [N, anchors * classes] or a map)."""
        return np.concatenate(list(self._runs(images, batch_size)))

    def at(self, reference) -> "TargetScorer":
        """This scorer with the explained output at the unperturbed image (without the batch dim),
        where a region target reads its region; the session is shared."""
        bound = object.__new__(TargetScorer)
        bound.__dict__.update(self.__dict__, reference=reference)
        return bound

    def probabilities(self, images, batch_size: int = BATCH_SIZE) -> np.ndarray:
        raise UsageError("a box or region target has a score, not class probabilities: these measures "
                         "take class targets only")

    def outputs(self, images, softmax: bool, batch_size: int = BATCH_SIZE) -> np.ndarray:
        return self.probabilities(images, batch_size)

    def __call__(self, images, target, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """[N] the target's score of each image for column or channel `target`."""
        values = self.explained(images, batch_size)
        at = None if self.reference is None else np.asarray(self.reference, np.float64)[None]
        chosen = np.full(len(values), int(target), np.int64)
        return np.asarray(self.target.score(values, chosen, at=at), np.float64)


def as_scorer(model_or_scorer) -> Scorer:
    return model_or_scorer if isinstance(model_or_scorer, Scorer) else Scorer(model_or_scorer)
