"""Keras applications exported with tf2onnx: gnl_onnx.vjp_model against TensorFlow's own gradients.

Random-weight keras.applications models (weights=None, classifier_activation=None, weights redrawn
from a seed; models/keras_zoo.py) are exported as Keras users export them (tf2onnx.convert.from_keras,
dynamic batch, opsets 13 to 18). For each, the input gradient of sum(seed * logits) from the ONNX
VJP model (onnxruntime CPU, float32) is compared with TensorFlow in float64 (the same architecture
built under Keras' float64 dtype policy, float32 weights copied in):

- rule="plain" against tf.GradientTape;
- rule="guided", gate="paper" against the guided reference of keras_zoo (a gradient override map
  on Relu, Relu6, LeakyRelu and MaxPool: max(g, 0) times the unit's own local derivative), and
  the engine must gate exactly the units that reference gated (tf2onnx writes Relu6 as Clip).
  tf2onnx merges a rectifier or max-pool applied twice to one tensor into one node (NASNetMobile
  has 60 such Relu and 4 such MaxPool pairs); guided backprop is not invariant under that merge
  (relu(g1) + relu(g2) != relu(g1 + g2): 0.83 relative difference on NASNetMobile), so the
  reference shares those units as the ONNX graph does.

Why the float64 reference takes its gate decisions from the onnxruntime run: as in
tests/test_architectures.py, a ReLU input (or a max-pool window's top two values) within float32
rounding of 0 can go either way, and each flip moves the gradient by a finite amount. Which units
flip depends on the CPU's kernels: the same DenseNet121 test read guided 3.7e-7 on one machine and
6.75e-4 on another (where TensorFlow's own float32 error was 6.8e-7), and TensorFlow's float32 run
flips a unit of DenseNet121's plain gradient (8.7e-3). So the VJP model also returns the inputs of
its gated nodes (tests/gates.py), keras_zoo.line_up matches them to TensorFlow's units (same op,
values within 1e-3 of the tensor's scale, NCHW or NHWC), and the float64 TensorFlow reference
decides each gate from them (keras_zoo.gradient_function(gates=...): the gate only; the gradient
arithmetic stays TensorFlow's, in float64). The engine is then held to REL_TOL = 1e-4 on every
model and both rules. (TensorFlow's own-gate and float32 gradients, which only informed the old
tolerance, are no longer computed: they were two thirds of the sweep's TensorFlow time. With gates
imposed the engine read 2e-7..1.7e-6 on all 12 models on 2026-12-02.)

The exports are written by one child process for all models (keras_zoo.export_all).

Needs tensorflow-cpu and tf2onnx (`pip install -e ".[tf]"`); skipped, with the reason, without
them. Per-model numbers go to tests/.results/keras_exports.json.
"""

from __future__ import annotations

import collections
import datetime
import importlib.util
import sys
import time

import numpy as np
import onnxruntime as ort
import pytest
from results_files import merge_results
from onnx import helper
from gates import run_with_gates
from onnx_builders import Runner, fd_gradient, make_model, max_rel_err

import gnl_onnx
from models import keras_zoo as zoo  # imports TensorFlow only when a test runs

_MISSING = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
needs_tf = pytest.mark.skipif(bool(_MISSING), reason=f"{' and '.join(_MISSING)} not installed "
                              "(pip install -e '.[tf]')")

BATCH = 2
# Max abs error / max abs value of the gate-matched float64 reference, as tests/test_architectures.py.
REL_TOL = 1e-4
_RESULTS: dict[str, dict] = {}


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(autouse=True)
def _free_models():
    """Drop each test's models and traced graphs: kept, they add up to ~10 GB over the sweep."""
    yield
    if "keras" in sys.modules:
        import gc

        sys.modules["keras"].backend.clear_session()
        gc.collect()


@pytest.fixture(scope="module")
def results_file():
    yield _RESULTS
    if not _RESULTS:
        return
    for arch, why in zoo.NOT_EXPORTABLE.items():  # for the table (tools/model_table.py)
        _RESULTS[arch] = {"opset": zoo.opset(arch), "status": f"skipped: {why}",
                          **{k: v for k, v in next(iter(_RESULTS.values())).items()
                             if k in ("tensorflow", "tf2onnx", "when")}}
    merge_results("keras_exports.json", _RESULTS)


@pytest.fixture(scope="module")
def exports(request):
    """The selected archs' ONNX files, the missing ones exported by one child process for all
    (keras_zoo.export_all): TensorFlow starts once instead of once per model."""
    archs = [item.callspec.params["arch"] for item in request.session.items
             if getattr(item, "originalname", "") == "test_vjp_matches_tensorflow"
             and item.callspec.params["arch"] in zoo.ARCHS]
    t0 = time.perf_counter()
    paths = zoo.export_all(archs)
    return paths, time.perf_counter() - t0


CASES = [*zoo.ARCHS, *(pytest.param(a, marks=pytest.mark.skip(reason=f"{a}: {why}"))
                      for a, why in zoo.NOT_EXPORTABLE.items())]


@needs_tf
@pytest.mark.slow
@pytest.mark.parametrize("arch", CASES)
def test_vjp_matches_tensorflow(arch, results_file, exports):
    t0 = time.perf_counter()
    model = zoo.build(arch)
    model64 = zoo.build(arch, dtype="float64", weights_from=model)
    t1 = time.perf_counter()
    path = str(exports[0][arch])
    rng = np.random.default_rng(zoo.ARCHS.index(arch))
    x = zoo.sample_input(arch, BATCH, rng)
    logits64 = zoo.logits(model64, x)
    seed = rng.standard_normal(logits64.shape).astype(np.float32)
    import tensorflow as tf
    import tf2onnx

    row = {"size": zoo.default_size(arch), "batch": BATCH, "opset": zoo.opset(arch),
           "build_s": t1 - t0, "export_all_s": exports[1], "tensorflow": tf.__version__,
           "tf2onnx": tf2onnx.__version__, "onnxruntime": ort.__version__,
           "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    results_file[arch] = row
    failures = []
    refs = {}
    gate_nodes = None
    for rule in ("guided", "plain"):  # guided first: its report names the gated nodes
        guided = rule == "guided"
        t0 = time.perf_counter()
        vjp = gnl_onnx.vjp_model(path, rule=rule, gate="paper")
        rep = gnl_onnx.vjp_report(vjp)
        gated = collections.Counter(u["op"] for u in rep["gated"])
        if guided:
            gate_nodes = [u["node"] for u in rep["gated"]]
        logits, grad, imposed = run_with_gates(vjp, gate_nodes, x, seed)
        del vjp
        t1 = time.perf_counter()
        calls = collections.Counter()
        ref = refs[rule] = zoo.input_gradient(model64, x, seed, guided=guided, calls=calls, gates=imposed)
        t2 = time.perf_counter()
        err = rel_err(grad, ref)
        row[rule] = {"rel_err": err, "tol": REL_TOL, "forward_rel_err": rel_err(logits, logits64),
                     "tf_s": t2 - t1, "gnl_ort_s": t1 - t0, "gated": dict(gated),
                     "tf_gated": dict(calls) if guided else {}}
        if grad.shape != x.shape:
            failures.append(f"{rule}: gradient shape {grad.shape} != input {x.shape}")
        elif not err <= REL_TOL:
            failures.append(f"{rule}: rel err {err:.3g} > {REL_TOL}")
        want = calls if guided else collections.Counter()
        if gated != want:
            failures.append(f"{rule}: gated nodes {dict(gated)} != TensorFlow's {dict(want)}")
    # The guided reference must really differ from the plain gradient wherever it gates anything.
    row["guided_vs_plain"] = rel_err(refs["guided"], refs["plain"])
    if row["guided"]["tf_gated"] and not row["guided_vs_plain"] > 1e-2:
        failures.append(f"guided reference equals the plain gradient ({row['guided_vs_plain']:.3g})")
    fwd = row["plain"]["forward_rel_err"]
    if not fwd <= REL_TOL:
        failures.append(f"forward logits rel err {fwd:.3g} > {REL_TOL}")
    row["status"] = "failed: " + "; ".join(failures) if failures else "ok"
    p, g = row["plain"], row["guided"]
    print(f"\n{arch} (opset {row['opset']}): plain {row['plain']['rel_err']:.1e} guided "
          f"{row['guided']['rel_err']:.1e} gated {row['guided']['gated']}")
    assert not failures, "; ".join(failures)


def test_slice_over_every_axis_with_a_dynamic_batch():
    """Rule fix found by NASNetMobile: tf2onnx writes Keras' Cropping2D (a StridedSlice) as one
    Slice over all four axes, the dynamic batch among them sliced whole (0 to INT32_MAX). The
    Slice rule used to ask for every named axis' size and refused the model. Float64 finite
    differences on that exact node, batch left symbolic."""
    end = 2**31 - 1
    inits = {"st": np.array([0, 1, 1, 0], np.int64), "en": np.array([end] * 4, np.int64),
             "ax": np.array([0, 2, 3, 1], np.int64)}
    model = make_model([helper.make_node("Slice", ["X", "st", "en", "ax"], ["Y"])],
                       [("X", np.float64, ["N", 3, 5, 4])], [("Y", np.float64, ["N", 3, 4, 3])], inits)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 5, 4))
    seed = rng.standard_normal((2, 3, 4, 3))
    vjp = gnl_onnx.vjp_model(model, rule="plain")
    y, g = Runner(vjp)({"X": x, "Y_grad": seed}, ["Y", "X_grad"])
    np.testing.assert_array_equal(y, x[:, :, 1:, 1:])
    run = Runner(model)
    want = fd_gradient(lambda xx: run({"X": xx})[0], x, seed, 1e-6)
    assert max_rel_err(g, want) <= 1e-6
    assert np.all(g[:, :, 0, :] == 0) and np.all(g[:, :, :, 0] == 0)


@needs_tf
def test_imposed_gates_decide_the_reference():
    """The gate-matched reference really takes its gates from the values it is given: its own
    values reproduce the own-gate gradient, a closed rectifier gives zero, and values that match
    no unit are refused (keras_zoo.line_up)."""
    tf, keras = zoo._tf()
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, padding="same"),
                              keras.layers.ReLU(), keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                              keras.layers.Dense(3)])
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 8, 2)).astype(np.float32)
    seed = rng.standard_normal((2, 3)).astype(np.float32)
    own = zoo.gate_inputs(model, x)
    assert [op for op, _ in own] == ["Relu", "MaxPool"]
    as_onnx = [{"op": op, "input": v.transpose(0, 3, 1, 2)} for op, v in own]  # NCHW, as onnxruntime's
    for guided in (False, True):
        np.testing.assert_allclose(zoo.input_gradient(model, x, seed, guided=guided, gates=as_onnx),
                                   zoo.input_gradient(model, x, seed, guided=guided), rtol=1e-6, atol=1e-6)
    closed = [{"op": "Relu", "input": -np.abs(as_onnx[0]["input"]) - 1}, as_onnx[1]]
    with pytest.raises(zoo.GateMismatch):  # values far from the unit's own: not that unit
        zoo.input_gradient(model, x, seed, gates=closed)
    all_closed = zoo.line_up(own, as_onnx)
    all_closed[0] = -np.abs(all_closed[0]) - 1
    fn = zoo.gradient_function(model, guided=False, gates=all_closed)
    assert not np.any(fn(tf.constant(x), tf.constant(seed)).numpy())
