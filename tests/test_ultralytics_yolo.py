"""Ultralytics YOLOv8n (issue 21 item 5): the package's own ONNX export of a model built from its
configuration with seeded random weights (models/ultralytics_yolo.py), its raw head [1, 84, A] read
as the "yolov8" box layout, NMS outside the graph. Each kept box's score (a class probability of
one anchor) explained by the plain gradient through the engine, against torch autograd of the same
value of the torch module in float64; the other method families run on its boxes. Ultralytics
itself runs in a child process only (it patches PIL.Image.open in any process that imports it)."""
from __future__ import annotations

import numpy as np
import pytest

from gnl_onnx.box_targets import DetectionBox
from gnl_onnx.detection import explain_boxes

from models import ultralytics_yolo as zoo

pytestmark = pytest.mark.skipif(zoo.installed_version() is None, reason="ultralytics is not installed (test extra)")
REL_TOL = 1e-4  # as tests/test_architectures.py: max |ours - float64 reference| / max |reference|


@pytest.fixture(scope="module")
def yolo():
    skimage = pytest.importorskip("skimage.data")
    from PIL import Image

    photo = Image.fromarray(skimage.astronaut()).resize((zoo.SIZE, zoo.SIZE), Image.BILINEAR)
    x = (np.asarray(photo, np.float32) / 255).transpose(2, 0, 1)[None].copy()  # YOLO's input: RGB in [0, 1]
    return zoo.export(), x


def test_box_score_gradient_matches_torch(yolo):
    path, x = yolo
    result = explain_boxes(str(path), x, DetectionBox(top=3), method="gradient", threads=1)
    assert len(result.boxes) == 3
    values, references = zoo.reference_gradients(np.repeat(x, 3, axis=0), [b.index for b in result.boxes])
    for box, attribution, score, value, reference in zip(result.boxes, result.attributions, result.scores, values,
                                                         references):
        assert value == pytest.approx(score, rel=1e-5)  # the box is the anchor's class probability
        assert np.abs(attribution - reference).max() / np.abs(reference).max() < REL_TOL, box


@pytest.mark.parametrize("method", ["gnl_ig", "gradcam", "eigencam", "lrp_epsilon_plus_flat"])
def test_methods_explain_its_boxes(yolo, method):
    """Each family gives a finite, non-zero map per kept box on the real export (the CAMs at the
    neck's pyramid levels, detection.pyramid_layers)."""
    path, x = yolo
    result = explain_boxes(str(path), x, DetectionBox(top=2), method=method, steps=8, threads=1)
    assert len(result.boxes) == 2 and result.attributions.shape[0] == 2
    maps = np.asarray(result.attributions)
    assert np.isfinite(maps).all() and all(np.abs(m).max() > 0 for m in maps)
