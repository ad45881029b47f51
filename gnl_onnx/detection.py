"""Explain a detector's boxes: find them (the model's outputs decoded, class-aware NMS in numpy:
targets.DetectionBox), then explain each kept box's class score with any method, every box one
row of one Explainer, so the boxes of all images share runs as the memory budget allows."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .autodiff import differentiable_path
from .cam.locate import layer_candidates
from .explainer import Explainer, Explanation
from .graph import GraphBuilder
from .intake import PreparedModel, prepare, read_model
from .methods import get_method
from .runtime import make_session
from .box_targets import Box, DetectionBox


@dataclass
class BoxExplanations:
    """boxes: the kept boxes (Box: image, index, label, score, xyxy); attributions: one map per box,
    [boxes, C, H, W], in the boxes' order; scores: each box's explained score as the attribution
    graph computed it; note: why there is no box, when there is none."""
    boxes: list[Box]
    attributions: np.ndarray
    scores: np.ndarray
    note: str = ""
    explanation: Explanation | None = None
    info: dict | None = None  # the explainer's (method, layers, ...)


def prepare_detector(model, target: DetectionBox | None = None, input: str | None = None
                     ) -> tuple[PreparedModel, DetectionBox]:
    """The model prepared once (any output named: DetectionBox reads them all) and the target with
    that output's name."""
    target = target or DetectionBox()
    if isinstance(model, PreparedModel):
        return model, replace(target, output_name=target.output_name or model.output)
    name = target.output_name or read_model(model).graph.output[0].name
    return prepare(model, input, name), replace(target, output_name=name)


def pyramid_layers(prepared: PreparedModel, target: DetectionBox) -> list[str]:
    """The CAM layers of a detector: on each level of its feature pyramid (each spatial size that
    the neck computes, after its first upsampling), the last activation that feeds a convolution
    (the head's input there, not its score maps). A box's map is their mean, each min-max scaled
    first (cam/maps.py), as pytorch-grad-cam combines layers; levels that do not reach the box's
    anchor add nothing. A model without upsampling: every spatial size above 1."""
    chosen = target.select(prepared)
    graph = chosen.proto.graph
    builder = GraphBuilder(chosen.proto)
    path, active = differentiable_path(builder, chosen.input, chosen.output)
    feeds_conv = {n.input[0] for n in graph.node if n.op_type in ("Conv", "ConvTranspose")}
    position = {o: i for i, n in enumerate(graph.node) for o in n.output}
    neck = next((i for i, n in enumerate(graph.node) if n.op_type in ("Resize", "Upsample")), -1)
    last_of_size: dict[tuple, str] = {}
    for layer in layer_candidates(builder, path, active, chosen.input):
        if layer.name in feeds_conv and max(layer.spatial) > 1:
            last_of_size[layer.spatial] = layer.name
    return [name for name in last_of_size.values() if position.get(name, 0) > neck]


def find_boxes(model, images, target: DetectionBox | None = None, providers=None, threads=None
               ) -> tuple[list[Box], str]:
    """The kept boxes of every image (image order, then score), and a note when there is none."""
    prepared, target = prepare_detector(model, target)
    images = np.ascontiguousarray(images, dtype=np.float32)
    session, _ = make_session(prepared.proto, providers, threads)
    names = [o.name for o in session.get_outputs()]
    boxes, best = [], None
    for i, image in enumerate(images):
        outputs = dict(zip(names, session.run(names, {prepared.input: image[None]})))
        for candidates, scores in target.decode(outputs, image.shape[-2:]):
            boxes += target.keep(candidates, scores, image=i)
            best = max(best if best is not None else -np.inf, float(scores.max()))
    note = "" if boxes else (f"no box scores above {target.threshold:g} (the highest candidate score is "
                             f"{best:.3g}); nothing to explain")
    return boxes, note


def explain_boxes(model, images, target: DetectionBox | None = None, boxes: list[Box] | None = None,
                  **explainer_options) -> BoxExplanations:
    """One explanation per kept box (boxes: found with find_boxes where not given). The
    explainer_options are Explainer's (method, steps, baseline, layer, memory_budget...)."""
    prepared, target = prepare_detector(model, target)
    images = np.ascontiguousarray(images, dtype=np.float32)
    note = ""
    if boxes is None:
        options = explainer_options.get("settings") or explainer_options
        get = (lambda k: getattr(options, k, None)) if not isinstance(options, dict) else options.get
        boxes, note = find_boxes(prepared, images, target, get("providers"), get("threads"))
    if not boxes:
        return BoxExplanations([], np.zeros((0, *images.shape[1:]), np.float32), np.zeros(0, np.float32), note)
    settings = explainer_options.pop("settings", None)  # a run's Settings (the CLI), else the keywords
    method = settings.method if settings is not None else explainer_options.get("method", "gnl_ig")
    layer = settings.layer if settings is not None else explainer_options.get("layer")
    if get_method(method).takes_layer and not layer:
        layer = tuple(pyramid_layers(prepared, target))
    if settings is not None:
        explainer = Explainer(prepared, settings=settings.replace(output=target, layer=layer))
    else:
        explainer = Explainer(prepared, output=target, **{**explainer_options, "layer": layer})
    rows = np.array([b.image for b in boxes])
    explanation = explainer.explain(images[rows], target=np.array([b.index for b in boxes], np.int64))
    return BoxExplanations(boxes, explanation.attributions, explanation.score, note, explanation, explainer.info)
