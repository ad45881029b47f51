"""What is explained: the model's output chosen and reduced to one class score per image.

select_output / selected: the explained output as [N, classes], the logits in front of a final
Softmax/LogSoftmax (the default), their softmax or their log-softmax."""
from __future__ import annotations

from dataclasses import replace

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
