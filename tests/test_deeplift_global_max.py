"""DeepLIFT through GlobalMaxPool where the maximum ties: a zero baseline gives every position of a
channel the same activation, and each tied position once took the whole difference, so the
attribution no longer summed to F(x) - F(x0) (delta 0.74 on this model)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx_builders import relu_cnn

from gnl_onnx import Explainer


@pytest.mark.parametrize("baseline", ["zeros", "noise"])
def test_deeplift_through_global_max_pool_is_complete(baseline):
    model = relu_cnn(0, 16, 5)
    for node in model.graph.node:
        if node.op_type == "GlobalAveragePool":
            node.op_type = "GlobalMaxPool"
    images = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    images[3] = 0  # the image ties everywhere too
    result = Explainer(model, method="deeplift", baseline=baseline).explain(images)
    gap = np.abs(result.attributions.reshape(4, -1).sum(axis=1) - result.delta)  # = |F(x) - F(x0)|
    assert np.all(np.abs(result.delta) <= 1e-4 * np.maximum(gap, 1.0)), result.delta
