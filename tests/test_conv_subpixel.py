"""The sub-pixel input gradient of strided convolutions (rules/conv.py subpixel_spread): s*s
stride-1 Convs, one per output phase, interleaved by DepthToSpace. Checked on many geometries
against central finite differences (float64) and against the ConvTranspose path it replaces
(float32, onnxruntime), and on which geometries it is taken at all."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnx_builders import Runner, fd_gradient, make_model, max_rel_err

import gnl_onnx
from gnl_onnx.autodiff.rules import conv as conv_rules


def _conv_model(x_shape, w, dtype, **attrs):
    node = helper.make_node("Conv", ["X", "W"], ["Y"], **attrs)
    draft = make_model([node], [("X", dtype, list(x_shape))], [("Y", dtype, None)], {"W": w.astype(dtype)},
                       check=False)
    y = Runner(draft)({"X": np.zeros(x_shape, dtype)})[0]
    return make_model([node], [("X", dtype, list(x_shape))], [("Y", dtype, list(y.shape))],
                      {"W": w.astype(dtype)})


def _vjp(model, subpixel: bool):
    saved = conv_rules.SUBPIXEL
    conv_rules.SUBPIXEL = subpixel
    try:
        return gnl_onnx.vjp_model(model, rule="plain")
    finally:
        conv_rules.SUBPIXEL = saved


def _ops(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


# (id, input shape, weight shape, group, Conv attributes, the sub-pixel path applies)
GEOMETRIES = [
    ("dw_k3_s2_p1_even", (1, 3, 8, 8), (3, 1, 3, 3), 3, dict(strides=[2, 2], pads=[1, 1, 1, 1]), True),
    ("dw_k3_s2_p1_odd", (1, 3, 7, 9), (3, 1, 3, 3), 3, dict(strides=[2, 2], pads=[1, 1, 1, 1]), True),
    ("dw_k5_s2_p2_even", (1, 2, 10, 10), (2, 1, 5, 5), 2, dict(strides=[2, 2], pads=[2, 2, 2, 2]), True),
    ("dw_k5_s2_p2_odd", (1, 2, 9, 11), (2, 1, 5, 5), 2, dict(strides=[2, 2], pads=[2, 2, 2, 2]), True),
    ("dw_k3_s2_p0", (2, 3, 9, 8), (3, 1, 3, 3), 3, dict(strides=[2, 2]), True),
    ("dw_k5_s2_p0", (1, 2, 11, 12), (2, 1, 5, 5), 2, dict(strides=[2, 2]), True),
    ("dw_k3_s2_asym_pads", (1, 3, 8, 7), (3, 1, 3, 3), 3, dict(strides=[2, 2], pads=[0, 1, 1, 0]), True),
    ("dw_k5_s2_asym_pads", (1, 2, 9, 10), (2, 1, 5, 5), 2, dict(strides=[2, 2], pads=[1, 2, 2, 1]), True),
    ("dw_k3_s2_same_upper", (1, 3, 8, 9), (3, 1, 3, 3), 3, dict(strides=[2, 2], auto_pad="SAME_UPPER"), True),
    ("dw_k5_s2_same_lower", (1, 2, 9, 8), (2, 1, 5, 5), 2, dict(strides=[2, 2], auto_pad="SAME_LOWER"), True),
    ("dw_k3_s2_rect_kernel", (1, 3, 8, 9), (3, 1, 3, 5), 3, dict(strides=[2, 2], pads=[1, 2, 1, 2]), True),
    ("dw_k3_s3_p0", (1, 2, 10, 9), (2, 1, 3, 3), 2, dict(strides=[3, 3]), True),
    ("dw_k4_s2_p1", (1, 2, 8, 8), (2, 1, 4, 4), 2, dict(strides=[2, 2], pads=[1, 1, 1, 1]), True),
    ("dense_k3_s2_p1", (1, 3, 9, 8), (4, 3, 3, 3), 1, dict(strides=[2, 2], pads=[1, 1, 1, 1]), True),
    ("dense_k2_s2", (1, 3, 8, 8), (4, 3, 2, 2), 1, dict(strides=[2, 2]), True),
    ("dense_k7_s2_p3", (1, 3, 13, 12), (4, 3, 7, 7), 1, dict(strides=[2, 2], pads=[3, 3, 3, 3]), True),
    ("grouped_k3_s2_p1", (1, 4, 8, 9), (6, 2, 3, 3), 2, dict(strides=[2, 2], pads=[1, 1, 1, 1]), True),
    ("dw_mult2_k3_s2_p1", (1, 2, 8, 8), (4, 1, 3, 3), 2, dict(strides=[2, 2], pads=[1, 1, 1, 1]), True),
    # not covered: ConvTranspose path
    ("dense_k1_s2", (1, 3, 8, 8), (4, 3, 1, 1), 1, dict(strides=[2, 2]), False),   # phases without taps
    ("dw_k3_s2_dil2", (1, 2, 9, 9), (2, 1, 3, 3), 2, dict(strides=[2, 2], dilations=[2, 2], pads=[2, 2, 2, 2]),
     False),
    ("dw_k3_s21", (1, 2, 8, 8), (2, 1, 3, 3), 2, dict(strides=[2, 1], pads=[1, 1, 1, 1]), False),
    ("dw_k3_s2_p3", (1, 2, 9, 9), (2, 1, 3, 3), 2, dict(strides=[2, 2], pads=[3, 3, 3, 3]), False),
    # a phase would need a negative pad
    ("dw_k3_s3_p1", (1, 2, 10, 9), (2, 1, 3, 3), 2, dict(strides=[3, 3], pads=[1, 1, 1, 1]), False),
]


@pytest.mark.parametrize("gid,x_shape,w_shape,group,attrs,applies", GEOMETRIES, ids=[g[0] for g in GEOMETRIES])
def test_subpixel_gradient_matches_finite_differences_and_conv_transpose(gid, x_shape, w_shape, group, attrs,
                                                                         applies):
    rng = np.random.default_rng(abs(hash(gid)) % 2**32)
    w = rng.normal(size=w_shape)
    x = rng.normal(size=x_shape)
    attrs = dict(attrs, group=group)

    # float64: the new graph against finite differences
    model64 = _conv_model(x_shape, w, np.float64, **attrs)
    run = Runner(model64)
    y = run({"X": x})[0]
    seed = rng.normal(size=y.shape)
    g_fd = fd_gradient(lambda xx: run({"X": xx})[0], x, seed, 1e-6)
    new64 = _vjp(model64, subpixel=True)
    assert ("DepthToSpace" in _ops(new64)) == applies
    assert ("ConvTranspose" in _ops(new64)) != applies
    got = Runner(new64)({"X": x, "Y_grad": seed}, ["X_grad"])[0]
    assert got.shape == x.shape
    assert max_rel_err(got, g_fd) < 1e-6

    # float32 in onnxruntime: the new graph against the ConvTranspose path
    model32 = _conv_model(x_shape, w, np.float32, **attrs)
    feeds = {"X": x.astype(np.float32), "Y_grad": seed.astype(np.float32)}
    new = Runner(_vjp(model32, subpixel=True), allow_reference=False)(feeds, ["X_grad"])[0]
    old_vjp = _vjp(model32, subpixel=False)
    assert "DepthToSpace" not in _ops(old_vjp)
    old = Runner(old_vjp, allow_reference=False)(feeds, ["X_grad"])[0]
    assert max_rel_err(new, old) < 1e-5
    assert max_rel_err(new, g_fd) < 2e-5


def test_plan_phases_cover_every_tap_once():
    """Per axis, the phases' taps partition the kernel: every tap is used by exactly one phase."""
    for k in range(2, 8):
        for s in (2, 3):
            if k < s:
                continue
            for b in range(0, k):
                size = 4 * s + 1
                out = (size + 2 * b - k) // s + 1
                plan = conv_rules.subpixel_plan([size, size], [out, out], [k, k], [s, s], [1, 1], [b, b])
                if plan is None:
                    continue
                taps = sorted(p + t * s for p, n, _, _ in plan[0] for t in range(n))
                assert taps == list(range(k)), (k, s, b, plan[0])
