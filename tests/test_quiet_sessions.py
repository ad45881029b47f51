"""The Python API prints none of ONNX Runtime's own warnings about the inputs it adds to a graph
(score_rows, ZBox's low/high: initializers that are also inputs, so that callers may override them),
while an error at run time still reaches the caller as a GnlOnnxError.

ONNX Runtime prints from C++ straight to the process's stderr, so the tests read file descriptor 2
(capfd), not sys.stderr."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnx_builders import make_model

from gnl_onnx import Explainer, GnlOnnxError, attribution_model
from gnl_onnx.runtime import onnxruntime

F32 = np.float32


@pytest.fixture(scope="module")
def small_cnn():
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["y"])]
    return make_model(nodes, [("x", F32, ["N", 3, 8, 8])], [("y", F32, ["N", 4])],
                      {"w": rng.standard_normal((4, 3, 3, 3)).astype(F32)})


@pytest.mark.parametrize("method", ["ig", "lrp_epsilon_gamma_box"])
def test_sessions_print_no_runtime_warnings(small_cnn, method, capfd):
    model = attribution_model(small_cnn, method=method)
    overridable = {i.name for i in model.graph.input} & {t.name for t in model.graph.initializer}
    assert overridable  # the inputs with defaults that ONNX Runtime warns about are there
    ort = onnxruntime()
    capfd.readouterr()
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert "appears in graph inputs" in capfd.readouterr().err  # a default session does warn
    images = np.random.default_rng(1).random((2, 3, 8, 8)).astype(F32)
    result = Explainer(small_cnn, method=method, steps=3).explain(images)
    assert np.isfinite(result.attributions).all()
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_runtime_errors_still_reach_the_caller(small_cnn, capfd):
    explainer = Explainer(small_cnn, method="ig", steps=2)
    images = np.zeros((2, 3, 8, 8), F32)
    wrong_baselines = np.zeros((3, 3, 8, 8), F32)  # 3 baselines for 2 images: fails inside the graph
    with pytest.raises(GnlOnnxError, match="ONNX Runtime failed while computing the attribution"):
        explainer._run(images, wrong_baselines, np.full(2, -1, np.int64), np.ones(2, F32), np.ones(2, F32), None)
