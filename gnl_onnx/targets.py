"""What is explained: a target picks the model's explained output, chooses what each image's score
is (the class: top-1 or given), builds the seed of the backward pass (the one-hot of that class),
and reads the score from the outputs. Methods never ask which target they explain: every attribution
graph takes the seed and scores a target builds (gnl_onnx/attribution.py).

ClassScore: a classifier's class logit (the default), probability or log-probability, of the top-1
class or a given one. select_output / selected: the explained output as [N, classes], the logits in
front of a final Softmax/LogSoftmax, their softmax or their log-softmax.

A detector's box or a segmenter's mask is another Target: its own explained output, its own seed
(the box's score, the mask's pixels) and score; the methods and the runtime stay as they are."""
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


@dataclass(frozen=True)
class ClassScore:
    """One class score per image, as `output` says ("logit", "prob" or "logprob"); the class is the
    given target, or the top-1 where the target is negative."""
    output: str = "logit"

    def __post_init__(self):
        if self.output not in OUTPUT_KINDS:
            raise UsageError(f"unknown output '{self.output}'; choose one of {', '.join(OUTPUT_KINDS)}")

    def select(self, prepared: PreparedModel, in_place: bool = False) -> PreparedModel:
        """The prepared model with its explained output, [N, classes]."""
        return selected(prepared, self.output, in_place=in_place)

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

    def score(self, scores: np.ndarray, chosen: np.ndarray) -> np.ndarray:
        """The explained score of each image, from the outputs [N, classes]."""
        return scores[np.arange(len(chosen)), chosen]


def get_target(output) -> ClassScore:
    """The target explained: a Target is returned as it is, an output kind becomes a ClassScore."""
    return output if isinstance(output, ClassScore) else ClassScore(output)
