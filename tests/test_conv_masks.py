"""Relu/Clip masks as 1x1 depthwise Convs (rules/activation.py conv_mask, behind CONV_MASKS): the
float mask must equal the comparison mask exactly, at the bounds and one ulp inside them."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnx_builders import Runner, make_model

import gnl_onnx
from gnl_onnx.autodiff.rules import activation


def _model(unit: str, x_shape):
    nodes = [helper.make_node("Relu", ["X"], ["Y"])] if unit == "relu" else \
        [helper.make_node("Clip", ["X", "lo", "hi"], ["Y"])]
    inits = {} if unit == "relu" else {"lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)}
    return make_model(nodes, [("X", np.float32, list(x_shape))], [("Y", np.float32, list(x_shape))], inits)


def _grad(model, conv_masks: bool, x, seed, rule="plain"):
    saved = activation.CONV_MASKS
    activation.CONV_MASKS = conv_masks
    try:
        vjp = gnl_onnx.vjp_model(model, rule=rule)
    finally:
        activation.CONV_MASKS = saved
    ops = {n.op_type for n in vjp.graph.node}
    return Runner(vjp, allow_reference=False)({"X": x, "Y_grad": seed}, ["X_grad"])[0], ops


@pytest.mark.parametrize("unit", ["relu", "clip6"])
@pytest.mark.parametrize("rule", ["plain", "guided"])
def test_conv_mask_equals_the_comparison_mask(unit, rule):
    rng = np.random.default_rng(5)
    x = rng.normal(scale=4.0, size=(2, 3, 5, 6)).astype(np.float32)
    six = np.float32(6.0)
    special = [0.0, -0.0, 6.0, 7.0, np.nextafter(six, np.float32(0)), np.nextafter(six, np.float32(10)),
               np.finfo(np.float32).tiny, -np.finfo(np.float32).tiny, 1e-30, 5.99, 1e30, -1e30]
    x.reshape(-1)[:len(special)] = np.array(special, np.float32)
    seed = rng.normal(size=x.shape).astype(np.float32)
    model = _model("relu" if unit == "relu" else "clip", x.shape)
    new, new_ops = _grad(model, True, x, seed, rule)
    old, old_ops = _grad(model, False, x, seed, rule)
    assert "Greater" not in new_ops and "Greater" in old_ops
    np.testing.assert_array_equal(new, old)
    inside = (x > 0) & ((x < 6) if unit == "clip6" else True)
    expected = np.where(inside, np.maximum(seed, 0) if rule == "guided" else seed, 0)
    np.testing.assert_array_equal(new, expected)


def test_conv_mask_only_for_4d_values_with_known_channels():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], [("X", np.float32, [3, 4])],
                       [("Y", np.float32, [3, 4])])
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    got, ops = _grad(model, True, x, np.ones_like(x))
    assert "Greater" in ops
    np.testing.assert_array_equal(got, (x > 0).astype(np.float32))
