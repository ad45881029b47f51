"""vjp_model's refusals: what it cannot differentiate (UnsupportedModelError naming every op type
and a node for each), what the caller got wrong (UsageError saying which argument to give) and what
is not a model (ModelError). Every error must come from vjp_model itself, before any runtime sees
the model: onnxruntime and the reference evaluator are made to fail the test if started."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import gnl_onnx
from gnl_onnx.errors import GnlOnnxError, ModelError, UnsupportedModelError, UsageError
from onnx_builders import make_model

F32 = np.float32
n = helper.make_node


@pytest.fixture(autouse=True)
def no_runtime(monkeypatch):
    def started(*args, **kwargs):
        raise AssertionError("a runtime was started: errors must be raised before anything runs")

    monkeypatch.setattr(ort.InferenceSession, "__init__", started)
    monkeypatch.setattr(ReferenceEvaluator, "__init__", started)


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


# ---------------------------------------------------------------- graphs with unsupported ops
def custom_op():
    return make_model([n("Relu", ["X"], ["a"], name="relu"),
                       n("Foo", ["a"], ["Y"], domain="com.example", name="custom_foo")],
                      [("X", F32, [1, 6])], [("Y", F32, [1, 6])], extra_opsets={"com.example": 1})


def det():
    # a standard op without a gradient rule (TopK was the example until it got one)
    return make_model([n("Relu", ["X"], ["a"]), n("Det", ["a"], ["Y"], name="det3")],
                      [("X", F32, [2, 3, 3])], [("Y", F32, [2])])


def nms():
    # The only way from X to Y goes through NonMaxSuppression's int64 indices.
    return make_model([n("NonMaxSuppression", ["X", "S", "max_out"], ["sel"], name="nms"),
                       n("Cast", ["sel"], ["self"], to=TensorProto.FLOAT),
                       n("ReduceSum", ["self"], ["Y"], keepdims=0)],
                      [("X", F32, [1, 4, 4])], [("Y", F32, [])],
                      {"S": np.linspace(0.1, 0.9, 4, dtype=F32).reshape(1, 1, 4),
                       "max_out": np.array([2], np.int64)})


def if_direct():
    # Branches read `a` from the outer scope; Y also uses `a` directly. The condition is decided at
    # run time (an If with a constant condition is replaced by its branch: tests/test_rules_detection.py)
    then_g = helper.make_graph([n("Mul", ["a", "a"], ["t"])], "then", [], [vi("t", [1, 6])])
    else_g = helper.make_graph([n("Neg", ["a"], ["e"])], "else", [], [vi("e", [1, 6])])
    return make_model([n("Relu", ["X"], ["a"]), n("ReduceSum", ["X"], ["s"], keepdims=0), n("Greater", ["s", "z"], ["c"]),
                       n("If", ["c"], ["b"], then_branch=then_g, else_branch=else_g, name="branch"),
                       n("Add", ["a", "b"], ["Y"])],
                      [("X", F32, [1, 6])], [("Y", F32, [1, 6])], {"z": np.array(0.0, F32)})


def if_outer_scope_only():
    # Y depends on X only through the If's branches (an implicit, outer-scope input).
    then_g = helper.make_graph([n("Mul", ["X", "X"], ["t"])], "then", [], [vi("t", [1, 6])])
    else_g = helper.make_graph([n("Neg", ["X"], ["e"])], "else", [], [vi("e", [1, 6])])
    return make_model([n("ReduceSum", ["X"], ["s"], keepdims=0), n("Greater", ["s", "z"], ["c"]),
                       n("If", ["c"], ["Y"], then_branch=then_g, else_branch=else_g, name="branch")],
                      [("X", F32, [1, 6])], [("Y", F32, [1, 6])], {"z": np.array(0.0, F32)})


def loop():
    body = helper.make_graph(
        [n("Identity", ["cond_in"], ["cond_out"]), n("Mul", ["v_in", "w"], ["v_out"])], "body",
        [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("v_in", [1, 6])],
        [vi("cond_out", [], TensorProto.BOOL), vi("v_out", [1, 6])])
    return make_model([n("Loop", ["trips", "", "X"], ["Y"], body=body, name="repeat")],
                      [("X", F32, [1, 6])], [("Y", F32, [1, 6])],
                      {"trips": np.array(3, np.int64), "w": np.full((1, 6), 0.5, F32)})


def scan():
    body = helper.make_graph([n("Add", ["s_in", "x_t"], ["s_out"])], "body",
                             [vi("s_in", [6]), vi("x_t", [6])], [vi("s_out", [6])])
    return make_model([n("Scan", ["init", "X"], ["Y"], body=body, num_scan_inputs=1, name="cumsum")],
                      [("X", F32, [4, 6])], [("Y", F32, [6])], {"init": np.zeros(6, F32)})


def _key(unsupported: dict, op: str) -> str:
    """The entry for `op`; a custom op may be keyed with its domain (com.example.Foo)."""
    keys = [k for k in unsupported if k == op or k.endswith("." + op) or k.endswith(":" + op)]
    assert len(keys) == 1, (op, unsupported)
    return keys[0]


@pytest.mark.parametrize("build, op, node_name", [
    (custom_op, "Foo", "custom_foo"),
    (det, "Det", "det3"),
    (nms, "NonMaxSuppression", "nms"),
    (if_direct, "If", "branch"),
    (if_outer_scope_only, "If", "branch"),
    (loop, "Loop", "repeat"),
    (scan, "Scan", "cumsum"),
], ids=["custom_domain", "det", "nms", "if", "if_outer_scope_only", "loop", "scan"])
def test_unsupported_op_on_the_path(build, op, node_name):
    with pytest.raises(UnsupportedModelError) as info:
        gnl_onnx.vjp_model(build())
    err = info.value
    assert isinstance(err, ModelError) and isinstance(err, GnlOnnxError)
    assert err.unsupported[_key(err.unsupported, op)] == [node_name]
    assert op in str(err) and node_name in str(err)


def test_every_unsupported_op_type_is_listed_with_its_nodes():
    """Two different unsupported types (one custom-domain, one standard, used twice): all of them
    in .unsupported with all their nodes, and each type with a node name in the message."""
    model = make_model(
        [n("Relu", ["X"], ["a"], name="relu"),
         n("Foo", ["a"], ["b"], domain="com.example", name="custom_foo"),
         n("Det", ["b"], ["c"], name="det_first"),
         n("Det", ["c"], ["Y"], name="det_second")],
        [("X", F32, [2, 2, 2, 2])], [("Y", F32, [2])], extra_opsets={"com.example": 1})
    with pytest.raises(UnsupportedModelError) as info:
        gnl_onnx.vjp_model(model, rule="guided")
    err = info.value
    assert set(err.unsupported) == {_key(err.unsupported, "Foo"), "Det"}
    assert err.unsupported[_key(err.unsupported, "Foo")] == ["custom_foo"]
    assert sorted(err.unsupported["Det"]) == ["det_first", "det_second"]
    message = str(err)
    assert "Foo" in message and "custom_foo" in message
    assert "Det" in message and ("det_first" in message or "det_second" in message)
    assert "Relu" not in err.unsupported


def test_unsupported_op_off_the_path_is_not_an_error(monkeypatch):
    """A custom op feeding another output does not stop explaining an output that avoids it."""
    model = make_model([n("Relu", ["X"], ["Y"]), n("Foo", ["X"], ["Z"], domain="com.example", name="custom_foo")],
                       [("X", F32, [1, 6])], [("Y", F32, [1, 6]), ("Z", F32, [1, 6])],
                       extra_opsets={"com.example": 1})
    vjp = gnl_onnx.vjp_model(model, output="Y")
    assert "X_grad" in [o.name for o in vjp.graph.output]
    with pytest.raises(UnsupportedModelError) as info:
        gnl_onnx.vjp_model(model, output="Z")
    assert list(info.value.unsupported.values()) == [["custom_foo"]]


# ---------------------------------------------------------------- usage errors
def two_inputs():
    return make_model([n("Mul", ["image", "mask"], ["Y"])],
                      [("image", F32, [1, 3, 4, 4]), ("mask", F32, [1, 3, 4, 4])], [("Y", F32, [1, 3, 4, 4])])


def two_outputs():
    return make_model([n("Relu", ["X"], ["logits"]), n("Softmax", ["logits"], ["prob"], axis=-1)],
                      [("X", F32, [1, 5])], [("logits", F32, [1, 5]), ("prob", F32, [1, 5])])


def test_two_float_inputs_need_input():
    with pytest.raises(UsageError, match="input=") as info:
        gnl_onnx.vjp_model(two_inputs())
    assert "image" in str(info.value) and "mask" in str(info.value)
    vjp = gnl_onnx.vjp_model(two_inputs(), input="mask")  # naming one is enough
    assert gnl_onnx.vjp_report(vjp)["input"] == "mask"


def test_int_inputs_do_not_count_as_candidates():
    """Only float inputs can be the image: an extra int64 input does not make the choice ambiguous."""
    model = make_model([n("Cast", ["ids"], ["f"], to=TensorProto.FLOAT), n("Mul", ["X", "f"], ["Y"])],
                       [("X", F32, [1, 4]), ("ids", np.int64, [1, 4])], [("Y", F32, [1, 4])])
    assert gnl_onnx.vjp_report(gnl_onnx.vjp_model(model))["input"] == "X"


def test_two_outputs_need_output():
    with pytest.raises(UsageError, match="output=") as info:
        gnl_onnx.vjp_model(two_outputs())
    assert "logits" in str(info.value) and "prob" in str(info.value)
    assert gnl_onnx.vjp_report(gnl_onnx.vjp_model(two_outputs(), output="logits"))["output"] == "logits"


@pytest.mark.parametrize("kwargs, bad", [
    ({"rule": "smooth"}, "smooth"),
    ({"rule": "Guided"}, "Guided"),
    ({"rule": "guided", "gate": "everything"}, "everything"),
    ({"gate": "none"}, "none"),
])
def test_unknown_rule_or_gate(kwargs, bad):
    with pytest.raises(UsageError) as info:
        gnl_onnx.vjp_model(two_outputs(), output="prob", **kwargs)
    assert bad in str(info.value)


@pytest.mark.parametrize("kwargs, bad", [({"input": "pixels"}, "pixels"), ({"output": "scores"}, "scores"),
                                         ({"input": "logits"}, "logits")])
def test_names_not_in_the_graph(kwargs, bad):
    """'pixels' and 'scores' exist nowhere; 'logits' is an output, not an input."""
    with pytest.raises(UsageError) as info:
        gnl_onnx.vjp_model(two_outputs(), **{"output": "prob", **kwargs})
    assert bad in str(info.value)


# ---------------------------------------------------------------- not a model
def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "model.onnx"
    with pytest.raises(ModelError) as info:
        gnl_onnx.vjp_model(str(path))
    assert isinstance(info.value, GnlOnnxError) and not isinstance(info.value, UnsupportedModelError)
    assert "model.onnx" in str(info.value)


@pytest.mark.parametrize("content", [b"this is not an onnx model\n", bytes(range(256)) * 8, b""],
                         ids=["text", "binary_garbage", "empty"])
def test_file_that_is_not_onnx(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError) as info:
        gnl_onnx.vjp_model(path)
    assert not isinstance(info.value, UnsupportedModelError)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ModelError):
        gnl_onnx.vjp_model(tmp_path)


def test_invalid_graph_is_a_model_error():
    """A node reading a value nothing defines: not valid ONNX."""
    model = make_model([n("Add", ["X", "ghost"], ["Y"])], [("X", F32, [1, 4])], [("Y", F32, [1, 4])], check=False)
    with pytest.raises(ModelError):
        gnl_onnx.vjp_model(model)


def test_runtime_guard_is_active():
    """The autouse guard really stops a session from starting (else the tests above prove nothing
    about 'before anything runs')."""
    with pytest.raises(AssertionError, match="runtime was started"):
        ort.InferenceSession(two_inputs().SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(AssertionError, match="runtime was started"):
        ReferenceEvaluator(two_inputs())


def test_mixed_float_precision_on_the_path_is_refused_clearly():
    # A float32 model computing a Sigmoid in double: refused by name (rules build constants in the
    # image's precision), rather than producing a gradient graph with type errors.
    m = make_model([n("Cast", ["X"], ["a"], to=TensorProto.DOUBLE), n("Sigmoid", ["a"], ["b"]),
                    n("Cast", ["b"], ["Y"], to=TensorProto.FLOAT)],
                   [("X", F32, [2, 3])], [("Y", F32, [2, 3])])
    with pytest.raises(ModelError, match="mixes float precisions.*'a' is DOUBLE"):
        gnl_onnx.vjp_model(m)
