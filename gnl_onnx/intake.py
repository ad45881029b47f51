"""One intake per run: a model is read, checked, normalized and given a usable batch dimension
once, and the prepared form is handed to every later stage (attribution graphs, the scorer, the
memory model, audit workers), which never re-read the file.

    prepared = prepare("model.onnx")          # or prepare(a ModelProto), or a PreparedModel again
    attribution_model(prepared, ...); Explainer(prepared, ...); Scorer(prepared)

Every public function that takes a model accepts a path, a ModelProto or a PreparedModel."""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field, replace
from functools import cached_property

import onnx

from .batch import make_batch_usable
from .loading import choose_input, choose_output, load_model
from .normalize import normalize


class IntakeNote(UserWarning):
    """Something the intake changed or decided about the model that the user should know."""


@dataclass(frozen=True, eq=False)
class PreparedModel:
    """A checked, normalized model with its image input and explained output chosen.

    batch (see for_rows): "dynamic" (as exported or not yet looked at), "made dynamic" (a fixed
    batch rewritten to a free one and verified), "one per run" (a batch of 1 that the graph bakes
    in: attribution graphs run their rows one at a time, inside the graph) or "fixed" (a larger
    batch baked in: the model's own gradient works, attribution graphs are refused with `notes[0]`)."""

    proto: onnx.ModelProto
    input: str
    output: str
    path: str | None  # the file it was read from (None: given in memory)
    batch: str = "dynamic"
    notes: tuple[str, ...] = field(default=())

    def copy(self) -> onnx.ModelProto:
        """A ModelProto the caller may change (the prepared one is shared)."""
        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        return proto

    @property
    def image_shape(self) -> list[int | None]:
        """Declared dims of the image input (None where free)."""
        value = next(i for i in self.proto.graph.input if i.name == self.input)
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    @property
    def one_per_run(self) -> bool:
        return self.batch == "one per run"

    @cached_property
    def for_rows(self) -> PreparedModel:
        """This model ready for runs of many rows (path points x images): a fixed batch freed where
        the graph allows (verified by running it), else marked "one per run" or "fixed". Worked
        out once per PreparedModel, on first use: the model's own gradient (vjp_model) needs none
        of it."""
        if self.batch != "dynamic" or self.image_shape[:1] == [None]:
            return self
        proto, batch, note = make_batch_usable(self.proto, self.input, self.output)
        if note and batch != "fixed":  # "fixed" is an error where it matters (attribution), not a note
            warnings.warn(note, IntakeNote, stacklevel=3)
        return replace(self, proto=proto, batch=batch, notes=(note,) if note else ())

    def __str__(self) -> str:
        return self.path or "(in memory)"


def prepare(model, input: str | None = None, output: str | None = None) -> PreparedModel:
    """Read, check and normalize a model once (a PreparedModel is returned as it is, with the
    input or output chosen anew where the caller names another)."""
    if isinstance(model, PreparedModel):
        x = model.input if input is None else choose_input(model.proto.graph, input)
        y = model.output if output is None else choose_output(model.proto.graph, output)
        return model if (x, y) == (model.input, model.output) else replace(model, input=x, output=y)
    path = None if isinstance(model, onnx.ModelProto) else os.fspath(model)
    proto = load_model(model)
    x = choose_input(proto.graph, input)
    y = choose_output(proto.graph, output)
    return PreparedModel(normalize(proto, in_place=True), x, y, path)  # load_model's proto is ours


def at_image_size(model, image_shape) -> PreparedModel:
    """The prepared model with its image input's free non-batch dims fixed to those of image_shape
    (an image batch's shape): a model whose spatial size is free (DBNet's) then has the static shapes
    that some rules need (ConvTranspose, Resize to computed sizes). As it is when they are fixed."""
    prepared = prepare(model)
    if all(d is not None for d in prepared.image_shape[1:]):
        return prepared
    proto = prepared.copy()
    value = next(i for i in proto.graph.input if i.name == prepared.input)
    for dim, size in zip(list(value.type.tensor_type.shape.dim)[1:], list(image_shape)[1:]):
        if not dim.HasField("dim_value"):
            dim.Clear()
            dim.dim_value = int(size)
    del proto.graph.value_info[:]  # inferred for the free size: inferred again
    return replace(prepared, proto=proto)


def read_model(model) -> onnx.ModelProto:
    """A ModelProto the caller may change: a PreparedModel's copy, or a path or ModelProto read and
    checked (not normalized) by load_model."""
    return model.copy() if isinstance(model, PreparedModel) else load_model(model)


def model_sha256(model) -> str:
    """Of the file as given (or of the model's bytes when it came from memory)."""
    if isinstance(model, PreparedModel):
        model = model.path or model.proto
    if isinstance(model, onnx.ModelProto):
        return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    digest = hashlib.sha256()
    with open(model, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["PreparedModel", "prepare", "read_model", "model_sha256", "IntakeNote"]
