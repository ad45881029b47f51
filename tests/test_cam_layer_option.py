"""--layer reaches the CAM methods of evaluate, check and audit (explain and convert: tests/test_cam.py),
and leaves the other methods alone."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx_builders import relu_cnn
from onnx_builders import run_cli as cli
from PIL import Image

from gnl_onnx.check import ModelChecker
from gnl_onnx.evaluate import evaluate


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layer")
    onnx.save(relu_cnn(0, 16, 5), folder / "m.onnx")
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"{k}.png")
    return folder


def test_evaluate_takes_the_layer_for_cam_methods_only(files):
    images = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    model = str(files / "m.onnx")
    kept = {}

    def keep(method, indices, attributions):  # each batch's attributions, as the report gets them
        kept.update({(method, i): a for i, a in zip(indices, attributions)})

    default = evaluate(model, images, ["gradcam", "gradient"], curve_steps=4, keep=keep)
    first = dict(kept)
    kept.clear()
    chosen = evaluate(model, images, ["gradcam", "gradient"], curve_steps=4, keep=keep, layer=["r1"])
    assert chosen.config["layer"] == ["r1"] and "layer" not in default.config
    assert not np.allclose(first[("gradcam", 0)], kept[("gradcam", 0)])  # another layer, another map
    np.testing.assert_array_equal(first[("gradient", 0)], kept[("gradient", 0)])  # untouched


def test_check_and_audit_take_the_layer(files, capfd):
    checker = ModelChecker(str(files / "m.onnx"), method="gradcam", layer=["r1"])
    assert checker._explainer("gradcam").info["layers"] == ["r1"]
    pytest.importorskip("pyarrow")
    out = files / "audit"
    code, _, err = cli(capfd, "audit", files / "m.onnx", "--images", files / "images", "--methods", "gradcam",
                       "--layer", "r1", "--curve-steps", "4", "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert "r1" in json.dumps(summary)
