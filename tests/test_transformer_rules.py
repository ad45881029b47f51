"""Gradient rules and shape handling that vision transformers need, against central finite
differences (same harness and tolerances as tests/test_rules_fd.py), on tiny graphs whose batch
dimension is dynamic ("N"), as the torch exporters write them:

- concat_class_token: a ViT's class token, Expand-ed to the batch through Where(shape == -1, 1,
  shape) (the legacy exporter's expand(n, -1, -1)), so shape inference cannot size it: the Concat
  rule reads the split sizes at run time;
- concat_runtime_last_axis: the same along axis -1 (Shape(start=-1) has no end);
- windows_in_batch: Swin's window partition folds windows into the batch axis (2N rows); the
  probed shape must call that dim "2*N", not "N" (ONNX Runtime trusts equal symbols: with "N" it
  re-used buffers and folded shapes wrongly, and swin_t's legacy export failed in a Reshape).
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from onnx_builders import Runner, fd_gradient, make_model, max_rel_err, ort_session

import gnl_onnx

EPS64, RTOL64, RTOL32 = 1e-6, 1e-6, 2e-5


def w(*shape):
    """Weights: the same on every call (the float64 and float32 models share them)."""
    return np.random.default_rng(sum(shape) + 20261130).normal(size=shape)


def node(op, inputs, outputs=("Y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def i64(*v):
    return np.array(v, dtype=np.int64)


def concat_class_token():
    """The legacy exporter's class_token.expand(n, -1, -1): Expand(token, Where(s == -1, 1, s)),
    s = [N, -1, -1]."""
    nodes = [node("Shape", ["X"], ["n"], end=1),
             node("Concat", ["n", "mm"], ["s"], axis=0),
             node("Equal", ["s", "m1"], ["is_m1"]),
             node("Where", ["is_m1", "ones", "s"], ["s2"]),
             node("Expand", ["cls", "s2"], ["E"]),
             node("Concat", ["E", "X"], ["T"], axis=1),
             node("Mul", ["T", "W"])]
    inits = {"mm": i64(-1, -1), "m1": i64(-1, -1, -1), "ones": i64(1, 1, 1), "cls": w(1, 1, 3),
             "W": w(5, 3)}
    return nodes, inits, (2, 4, 3), (5, 3)


def concat_runtime_last_axis():
    nodes = [node("Shape", ["X"], ["sx"]),
             node("Equal", ["sx", "m"], ["hit"]),
             node("Where", ["hit", "ones", "sx"], ["s2"]),  # [N, 2, 3] -> [N, 2, 1]
             node("Expand", ["tok", "s2"], ["E"]),
             node("Concat", ["X", "E"], ["T"], axis=-1),
             node("Mul", ["T", "W"])]
    inits = {"m": i64(-9, -9, 3), "ones": i64(1, 1, 1), "tok": w(1, 1, 1),
             "W": w(2, 4)}
    return nodes, inits, (2, 2, 3), (2, 4)


def windows_in_batch():
    nodes = [node("Reshape", ["X", "win"], ["windows"]),  # [N, 4, 3] -> [2N, 2, 3]
             node("Softmax", ["windows"], ["p"], axis=-1),
             node("Mul", ["p", "W"], ["q"]),
             node("Shape", ["X"], ["sx"]),
             node("Reshape", ["q", "sx"])]
    return nodes, {"win": i64(-1, 2, 3), "W": w(2, 3)}, (2, 4, 3), (4, 3)


CASES = {f.__name__: f for f in (concat_class_token, concat_runtime_last_axis, windows_in_batch)}


def _model(case_id, dtype):
    nodes, inits, x_shape, y_tail = CASES[case_id]()
    inits = {k: (v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in inits.items()}
    return make_model(nodes, [("X", dtype, ["N", *x_shape[1:]])], [("Y", dtype, ["N", *y_tail])], inits)


def _x(case_id, dtype):
    shape = CASES[case_id]()[2]
    return np.random.default_rng(len(case_id)).normal(size=shape).astype(dtype)


@pytest.mark.parametrize("case_id", list(CASES))
def test_plain_vjp_matches_finite_differences(case_id):
    model = _model(case_id, np.float64)
    run = Runner(model)
    x = _x(case_id, np.float64)
    y = run({"X": x})[0]
    seed = np.random.default_rng(7).normal(size=y.shape)
    g_fd = fd_gradient(lambda xx: run({"X": xx})[0], x, seed, EPS64)
    vjp = gnl_onnx.vjp_model(model, rule="plain")
    g = Runner(vjp)({"X": x, "Y_grad": seed}, ["X_grad"])[0]
    assert max_rel_err(g, g_fd) <= RTOL64

    # float32 in onnxruntime, with another batch size than the probes' (1 and 2)
    vjp32 = gnl_onnx.vjp_model(_model(case_id, np.float32), rule="plain")
    x3 = np.concatenate([x, x[:1] * 0.5]).astype(np.float32)
    seed3 = np.concatenate([seed, seed[:1]]).astype(np.float32)
    g3 = ort_session(vjp32).run(["X_grad"], {"X": x3, "Y_grad": seed3})[0]
    assert max_rel_err(g3[:2], g_fd) <= RTOL32
    g_fd3 = fd_gradient(lambda xx: run({"X": xx})[0], x[:1] * 0.5, seed[:1], EPS64)
    assert max_rel_err(g3[2:], g_fd3) <= RTOL32


def test_windows_folded_into_the_batch_get_their_own_symbol():
    vjp = gnl_onnx.vjp_model(_model("windows_in_batch", np.float32), rule="plain")
    info = {v.name: v for v in vjp.graph.value_info}["windows"].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in info] == ["2*N", 2, 3]
