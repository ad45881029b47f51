"""Setup cost and memory: sessions that get their weights as arrays, the intake's cheaper checks,
the opset upgrade done in place, and the automatic memory budget.

- make_session on a detached model computes exactly what a session on the whole serialized model
  computes (weights of several types, small and large, a graph input that is also an initializer).
- a weight shorter than its shape says is refused on loading, by name.
- prepare() of an old-opset model normalizes in place and gives the same graph as the copying path.
- memory_budget="auto": about AUTO_RUN_BYTES per run, a quarter of the available memory when that is
  less, the least that works when even that is too little, and the choice in the summary.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_builders import make_model, ort_session

import gnl_onnx.budget as explain_module
from gnl_onnx import Explainer
from gnl_onnx.errors import ModelError, UsageError
from gnl_onnx.budget import AUTO_RUN_BYTES, available_memory, resolve_budget
from gnl_onnx.intake import prepare
from gnl_onnx.normalize import normalize
from gnl_onnx.runtime import BY_REFERENCE_BYTES, detach_weights, make_session

F32 = np.float32
node = helper.make_node


def mixed_model() -> onnx.ModelProto:
    """x [N, 64] -> MatMul by a float32 weight -> MatMul by a float16 one (cast) -> Gather by an
    int64 table -> times the row means of a bool table -> times a small inline scalar: the four
    large tables (64 KB and more each) of four types go by reference."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((64, 512)).astype(F32),
             "w16": (rng.standard_normal((512, 128)) / 16).astype(np.float16),
             "order": rng.integers(0, 128, 8192).astype(np.int64),
             "keep": rng.random((8192, 8)) > 0.3,
             "axes": np.array([1], np.int64),
             "small": np.array([0.5], F32)}
    nodes = [node("MatMul", ["x", "w"], ["h"]),
             node("Cast", ["w16"], ["w32"], to=TensorProto.FLOAT),
             node("MatMul", ["h", "w32"], ["h2"]),
             node("Gather", ["h2", "order"], ["g"], axis=1),
             node("Cast", ["keep"], ["k"], to=TensorProto.FLOAT),
             node("ReduceMean", ["k", "axes"], ["kept"], keepdims=0),
             node("Mul", ["g", "kept"], ["gk"]),
             node("Mul", ["gk", "small"], ["y"])]
    return make_model(nodes, [("x", F32, ["N", 64])], [("y", F32, ["N", 8192])], inits)


def test_detached_session_computes_what_the_whole_model_does():
    model = mixed_model()
    before = model.SerializeToString()
    light, weights = detach_weights(model)
    assert model.SerializeToString() == before  # the caller's model is untouched
    assert set(weights) == {"w", "w16", "order", "keep"}  # large ones by reference, small ones inline
    assert light.ByteSize() < model.ByteSize() - 4 * BY_REFERENCE_BYTES
    assert [t.name for t in model.graph.initializer] == [t.name for t in light.graph.initializer]
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(F32)
    want = ort_session(model).run(None, {"x": x})[0]
    session, _ = make_session(light, weights=weights)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], want)
    session, _ = make_session(model, prepack=False)  # detached inside
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], want)


def test_initializer_listed_as_input_still_overridable():
    """Old exports list initializers as inputs too; by reference they stay overridable."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((64, 300)).astype(F32)
    model = make_model([node("MatMul", ["x", "w"], ["y"])], [("x", F32, [1, 64])], [("y", F32, [1, 300])],
                       {"w": w}, opset=18, initializers_as_inputs=True)
    session, _ = make_session(model)
    x = rng.standard_normal((1, 64)).astype(F32)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ w, rtol=0, atol=1e-5 * np.abs(x @ w).max())
    other = rng.standard_normal((64, 300)).astype(F32) * 3
    np.testing.assert_allclose(session.run(None, {"x": x, "w": other})[0], x @ other, rtol=0,
                               atol=1e-5 * np.abs(x @ other).max())


def _damage(tensor, how):
    if how == "short":
        tensor.raw_data = tensor.raw_data[:-4]
    elif how == "long":
        tensor.raw_data = tensor.raw_data + bytes(4)
    elif how == "odd":
        tensor.raw_data = tensor.raw_data + bytes(1)
    elif how == "two fields":
        tensor.float_data.extend([1.0, 2.0])
    elif how == "unknown type":
        tensor.data_type = 999
    elif how == "no data":
        tensor.ClearField("raw_data")


@pytest.mark.parametrize("how, message", [
    ("short", r"initializer 'w' is damaged: it holds 131068 bytes, its shape and type need 131072"),
    ("long", r"initializer 'w' is damaged: it holds 131076 bytes"),
    ("odd", r"initializer 'w' is damaged: it holds 131073 bytes"),
    ("two fields", r"initializer w holds its values in more than one field \(float_data, raw_data\)"),
    ("unknown type", r"initializer w has no known data type \(999\)"),
    ("no data", r"initializer 'w' is damaged: it holds 0 values"),
])
def test_damaged_weights_are_refused_on_loading(tmp_path, how, message):
    """The checks onnx.checker made of large weights before the intake checked their skeleton:
    one ModelError line, from a file or from a ModelProto, before any session is built."""
    model = mixed_model()
    _damage(next(t for t in model.graph.initializer if t.name == "w"), how)
    onnx.save(model, tmp_path / "damaged.onnx")
    for given in (tmp_path / "damaged.onnx", model):
        with pytest.raises(ModelError, match=message):
            prepare(given)


def test_old_opset_upgraded_in_place_equals_the_copy(tmp_path):
    rng = np.random.default_rng(3)
    inits = {"w": rng.standard_normal((8, 3, 3, 3)).astype(F32), "b": rng.standard_normal(8).astype(F32),
             "fc": rng.standard_normal((10, 8)).astype(F32)}
    nodes = [node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c"], ["r"]), node("GlobalAveragePool", ["r"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "fc"], ["y"], transB=1)]
    old = make_model(nodes, [("x", F32, ["N", 3, 8, 8])], [("y", F32, ["N", 10])], inits, opset=11)
    copied = normalize(old)
    source = onnx.ModelProto()
    source.CopyFrom(old)
    in_place = normalize(source, in_place=True)
    assert in_place is source and old.opset_import[0].version == 11  # only the given proto changed
    assert in_place.opset_import[0].version == copied.opset_import[0].version >= 18
    assert [n.op_type for n in in_place.graph.node] == [n.op_type for n in copied.graph.node]
    x = rng.standard_normal((2, 3, 8, 8)).astype(F32)
    np.testing.assert_array_equal(ort_session(in_place).run(None, {"x": x})[0],
                                  ort_session(copied).run(None, {"x": x})[0])
    onnx.save(old, tmp_path / "old.onnx")
    prepared = prepare(tmp_path / "old.onnx")
    np.testing.assert_array_equal(ort_session(prepared.proto).run(None, {"x": x})[0],
                                  ort_session(copied).run(None, {"x": x})[0])


# ------------------------------------------------------------------------------ memory budget auto
def test_available_memory_is_plausible():
    available = available_memory()
    if available is None:
        pytest.skip("no /proc/meminfo here")
    with open("/proc/meminfo") as f:
        total = next(int(line.split()[1]) << 10 for line in f if line.startswith("MemTotal:"))
    assert 0 < available <= total


def test_auto_budget(monkeypatch):
    assert resolve_budget("512MB") == (512 << 20, "512.0MB (given)")
    monkeypatch.setattr(explain_module, "available_memory", lambda: 64 << 30)
    assert resolve_budget("auto")[0] == AUTO_RUN_BYTES
    monkeypatch.setattr(explain_module, "available_memory", lambda: 1 << 30)  # a quarter is less
    budget, note = resolve_budget("AUTO")
    assert budget == 256 << 20 and "quarter" in note
    monkeypatch.setattr(explain_module, "available_memory", lambda: None)
    assert resolve_budget("auto")[0] == AUTO_RUN_BYTES
    with pytest.raises(UsageError, match="write auto, or a size"):
        resolve_budget("plenty")


def test_auto_budget_splits_runs_and_says_so(monkeypatch, tmp_path):
    rng = np.random.default_rng(4)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(F32), "fc": rng.standard_normal((5, 4)).astype(F32)}
    nodes = [node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["r"]),
             node("GlobalAveragePool", ["r"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "fc"], ["y"], transB=1)]
    model = make_model(nodes, [("x", F32, ["N", 3, 16, 16])], [("y", F32, ["N", 5])], inits)
    x = rng.standard_normal((2, 3, 16, 16)).astype(F32)
    whole = Explainer(model, method="ig", steps=8)  # auto: everything in one run
    assert whole.chunks(2) == (2, 8)
    want = whole.explain(x)
    assert want.summary(0)["runs"]["memory_budget"].startswith("auto")
    row = whole.row_bytes
    lrp = Explainer(model, method="lrp_epsilon_plus_flat")  # relevance runs carry no score rows
    assert not lrp.scores_once and lrp.plan(2)["memory_per_run"] == explain_module._human(2 * lrp.row_bytes)
    monkeypatch.setattr(explain_module, "available_memory", lambda: 4 * 5 * row)  # a quarter: 5 rows
    small = Explainer(model, method="ig", steps=8)
    assert small.chunks(2) == (1, 4) and small.scores_once  # the second run of each image skips its score row
    got = small.explain(x)
    assert got.summary(1)["runs"] == {"images_per_run": 1, "steps_per_run": 4, "memory_per_run": small.plan(2)[
        "memory_per_run"], "memory_budget": small.budget_note}
    np.testing.assert_allclose(got.attributions, want.attributions, rtol=0,
                               atol=1e-5 * np.abs(want.attributions).max())
    monkeypatch.setattr(explain_module, "available_memory", lambda: row)  # too little: still one row
    least = Explainer(model, method="ig", steps=8)
    assert least.chunks(2) == (1, 1) and "least that works" in least.budget_note
    np.testing.assert_allclose(least.explain(x).attributions, want.attributions, rtol=0,
                               atol=1e-5 * np.abs(want.attributions).max())
