"""The intake: models whose batch is fixed (torch exports without dynamic axes, tf2onnx-style
graphs with the batch baked into a Reshape, a class token concatenated to the patches, a graph
that only works at batch 1), non-finite outputs and attributions, the one-way flow (a model read
and normalized once per run), and inputs (the model's own size, aspect ratios, .npy arrays).

References are independent of the engine: finite differences of the original model run at batch
1 in ONNX Runtime, torch autograd, and IG's completeness."""
from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx_builders import add_outputs, keras_style_cnn, make_model, relu_cnn
from onnx_builders import run_cli as cli
from PIL import Image

import gnl_onnx
from gnl_onnx import Explainer, NonFiniteError, prepare
from gnl_onnx.intake import IntakeNote

F32 = np.float32
node = helper.make_node


# -- models with a fixed batch ---------------------------------------------------------------------
def fixed_keras_cnn(hw=8, classes=5):
    """keras_style_cnn with its batch fixed at 1: after folding, its Reshape target is [1, flat]."""
    model, _ = keras_style_cnn(np.random.default_rng(3), hw, classes)
    for value in (model.graph.input[0], model.graph.output[0]):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_value = 1
    return model


def class_token_model():
    """A ViT-like graph at batch 1: patches by a strided Conv, Reshape [1, C, P] (constant),
    Transpose, a constant class token Concat-ed in front, Tanh, the class token read out, Gemm."""
    rng = np.random.default_rng(4)
    p = {"patch_w": rng.normal(size=(4, 3, 4, 4)).astype(F32) * 0.3, "patch_b": np.zeros(4, F32),
         "tokens_shape": np.array([1, 4, 4], np.int64), "cls": rng.normal(size=(1, 1, 4)).astype(F32),
         "mix": rng.normal(size=(4, 4)).astype(F32), "head_w": rng.normal(size=(4, 3)).astype(F32),
         "first": np.array(0, np.int64)}
    nodes = [node("Conv", ["x", "patch_w", "patch_b"], ["patches"], kernel_shape=[4, 4], strides=[4, 4]),
             node("Reshape", ["patches", "tokens_shape"], ["t"]),
             node("Transpose", ["t"], ["tokens"], perm=[0, 2, 1]),
             node("Concat", ["cls", "tokens"], ["seq"], axis=1),
             node("MatMul", ["seq", "mix"], ["mixed"]),
             node("ReduceMean", ["mixed"], ["pooled"], axes=[1], keepdims=1),
             node("Add", ["mixed", "pooled"], ["attended"]),
             node("Tanh", ["attended"], ["act"]),
             node("Gather", ["act", "first"], ["cls_out"], axis=1),
             node("MatMul", ["cls_out", "head_w"], ["logits"])]
    return make_model(nodes, [("x", F32, [1, 3, 8, 8])], [("logits", F32, [1, 3])], p, opset=17)


def batch_baked_model():
    """Works only at batch 1: the image is flattened to 1-D and the batch put back at the end."""
    rng = np.random.default_rng(5)
    p = {"flat": np.array([48], np.int64), "w": rng.normal(size=(48, 5)).astype(F32) * 0.3,
         "axes": np.array([0], np.int64)}
    nodes = [node("Reshape", ["x", "flat"], ["v"]), node("MatMul", ["v", "w"], ["h"]),
             node("Tanh", ["h"], ["t"]), node("Unsqueeze", ["t", "axes"], ["logits"])]
    return make_model(nodes, [("x", F32, [1, 3, 4, 4])], [("logits", F32, [1, 5])], p, opset=17)


def batch_one_runner(model):
    """The original model at batch 1, returning its logits (the value in front of a final Softmax,
    which is what the methods explain)."""
    last = model.graph.node[-1]
    logits = last.input[0] if last.op_type == "Softmax" else model.graph.output[0].name
    model = add_outputs(model, [logits]) if logits != model.graph.output[0].name else model
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run([logits], {name: x[None].astype(F32)})[0][0].astype(np.float64)


def check_gradients_by_fd(model, images, explanation, h=1e-2, tolerance=2e-3):
    """Each image's gradient against central differences of the original model at batch 1,
    along two random directions; the scores against the original's outputs."""
    f = batch_one_runner(model)
    rng = np.random.default_rng(0)
    for i, image in enumerate(images):
        target = int(explanation.target[i])
        np.testing.assert_allclose(explanation.scores[i], f(image), rtol=1e-5, atol=1e-5)
        for _ in range(2):
            d = rng.standard_normal(image.shape)
            d /= np.linalg.norm(d)
            fd = (f(image + h * d)[target] - f(image - h * d)[target]) / (2 * h)
            got = float(np.sum(explanation.attributions[i].astype(np.float64) * d))
            assert abs(got - fd) <= tolerance * max(1.0, abs(fd)), (i, got, fd)


@pytest.mark.parametrize("build, expected, shape", [
    (fixed_keras_cnn, "made dynamic", (8, 8, 3)),
    (class_token_model, "made dynamic", (3, 8, 8)),
    (batch_baked_model, "one per run", (3, 4, 4)),
])
def test_fixed_batch_models_explain_any_number_of_images(build, expected, shape):
    model = build()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare(model).for_rows
    assert prepared.batch == expected
    notes = [str(w.message) for w in caught if issubclass(w.category, IntakeNote)]
    assert bool(notes) == (expected == "one per run")  # a note only where it runs slower
    if notes:
        assert "fixed at 1" in notes[0] and "one at a time" in notes[0]
    images = np.random.default_rng(1).standard_normal((3, *shape)).astype(F32)
    result = Explainer(prepared, method="gradient").explain(images)
    check_gradients_by_fd(model, images, result)
    # integrated gradients on the same model are complete: sum = F(image) - F(baseline)
    ig = Explainer(prepared, method="ig", steps=64, baseline="zeros").explain(images)
    scale = np.abs(ig.score).max()
    assert np.max(np.abs(ig.delta)) < 1e-3 * max(scale, 1.0), ig.delta


def conv_models():
    """The same small CNN twice: flattened per image (any batch), and flattened to one vector with
    the batch put back at the end (batch 1 only: runs one row at a time)."""
    rng = np.random.default_rng(8)
    p = {"cw": rng.normal(size=(4, 3, 3, 3)).astype(F32) * 0.5, "cb": rng.normal(size=4).astype(F32) * 0.1,
         "w": rng.normal(size=(4 * 6 * 6, 5)).astype(F32) * 0.2, "flat": np.array([144], np.int64),
         "axes": np.array([0], np.int64)}
    head = [node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[3, 3]), node("Relu", ["c"], ["r"])]
    baked = make_model(head + [node("Reshape", ["r", "flat"], ["v"]), node("MatMul", ["v", "w"], ["h"]),
                               node("Unsqueeze", ["h", "axes"], ["logits"])],
                       [("x", F32, [1, 3, 8, 8])], [("logits", F32, [1, 5])], p, opset=17)
    free = make_model(head + [node("Flatten", ["r"], ["v"], axis=1), node("MatMul", ["v", "w"], ["logits"])],
                      [("x", F32, ["N", 3, 8, 8])], [("logits", F32, ["N", 5])],
                      {k: v for k, v in p.items() if k not in ("flat", "axes")}, opset=17)
    return baked, free


@pytest.mark.parametrize("method", ["gnl_ig", "gradcam", "scorecam", "guided_gradcam", "lrp_epsilon_plus_flat"])
def test_one_row_at_a_time_gives_what_a_free_batch_gives(method):
    baked, free = conv_models()
    images = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(F32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IntakeNote)
        prepared = prepare(baked).for_rows
        assert prepared.batch == "one per run"
        got = Explainer(prepared, method=method, steps=8).explain(images)
    want = Explainer(free, method=method, steps=8).explain(images)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.attributions, want.attributions, rtol=1e-4, atol=1e-6)


def test_deeplift_on_a_batch_baked_at_one_is_refused_in_one_line():
    baked, _ = conv_models()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IntakeNote)
        with pytest.raises(gnl_onnx.ModelError, match="re-export it with a dynamic batch"):
            Explainer(baked, method="deeplift")


def test_layer_is_for_cam_methods_only():
    with pytest.raises(gnl_onnx.UsageError, match="CAM methods"):
        gnl_onnx.attribution_model(relu_cnn(0, 16, 5), method="gradient", layer=["r2"])


def test_a_graph_that_needs_its_batch_is_verified_not_trusted():
    """A rewrite that does not run at batch 2, and one that runs but mixes the images of a batch,
    are both caught by running them; a correct one passes."""
    from gnl_onnx.batch import _free_batch, _verify

    model = class_token_model()
    freed, changed = _free_batch(model, "x", 1)
    assert len(changed) == 2 and _verify(model, freed, "x", "logits", 1) is None
    unfreed = onnx.ModelProto()
    unfreed.CopyFrom(freed)
    concat = next(n for n in unfreed.graph.node if n.op_type == "Concat" and "tokens" in n.input)
    concat.input[0] = "cls"  # undo the class token's Expand: two images no longer fit
    problem = _verify(model, unfreed, "x", "logits", 1)
    assert isinstance(problem, str) and "Concat" in problem, problem
    # a graph that runs at any batch but mixes images (a mean over the batch axis)
    averaged = make_model([node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1), node("Add", ["x", "m"], ["s"]),
                           node("MatMul", ["s", "w"], ["logits"])],
                          [("x", F32, [1, 8])], [("logits", F32, [1, 1])], {"w": np.ones((8, 1), F32)}, opset=17)
    freed, _ = _free_batch(averaged, "x", 1)
    problem = _verify(averaged, freed, "x", "logits", 1)
    assert isinstance(problem, str) and "change each other's outputs" in problem, problem


def test_fixed_batch_above_one_that_cannot_be_freed_is_refused():
    """Both images of a batch of 2 flattened into one vector: its own gradient works at batch 2,
    attribution (many rows) is refused in one line."""
    w = np.random.default_rng(5).normal(size=(96, 10)).astype(F32)
    nodes = [node("Reshape", ["x", "flat"], ["v"]), node("MatMul", ["v", "w"], ["h"]),
             node("Reshape", ["h", "pairs"], ["logits"])]
    model = make_model(nodes, [("x", F32, [2, 3, 4, 4])], [("logits", F32, [2, 5])],
                       {"flat": np.array([96], np.int64), "w": w, "pairs": np.array([2, 5], np.int64)})
    prepared = prepare(model)
    assert prepared.for_rows.batch == "fixed"
    gnl_onnx.vjp_model(prepared)  # its own gradient, at its own batch, still works
    with pytest.raises(gnl_onnx.ModelError, match="fixed at 2"):
        gnl_onnx.attribution_model(prepared)


torch = pytest.importorskip("torch")


class FlattensByView(torch.nn.Module):
    """What users write: x.view(x.size(0), -1) (or a hard-coded batch of 1)."""

    def __init__(self, hard_coded: bool):
        super().__init__()
        torch.manual_seed(0)
        self.hard_coded = hard_coded
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(x)))
        return self.fc(h.reshape(1, -1) if self.hard_coded else h.view(h.size(0), -1))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("hard_coded", [False, True])
def test_torch_exports_without_dynamic_axes_match_autograd(tmp_path, exporter, hard_coded):
    module = FlattensByView(hard_coded).eval()
    path = tmp_path / "fixed.onnx"
    example = torch.zeros(1, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=exporter == "dynamo",
                          opset_version=18 if exporter == "dynamo" else 17, external_data=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1  # the export really fixed the batch
    # a plain view(batch, -1) is freed; a hard-coded reshape(1, -1) too (its 1 restates the batch)
    assert prepare(str(path)).for_rows.batch == "made dynamic"
    images = np.random.default_rng(2).standard_normal((3, 3, 8, 8)).astype(F32)
    result = Explainer(str(path), method="gradient").explain(images)
    for i, image in enumerate(images):
        x = torch.tensor(image[None], dtype=torch.float64, requires_grad=True)
        logits = module.double()(x)
        logits[0, int(result.target[i])].backward()
        module.float()
        np.testing.assert_allclose(result.attributions[i], x.grad[0].numpy(), rtol=1e-4, atol=1e-5)


# -- non-finite numbers ----------------------------------------------------------------------------
def test_nan_weights_fail_naming_the_image_and_the_forward_pass(tmp_path, capfd):
    model = relu_cnn(0, 16, 5)
    weights = next(t for t in model.graph.initializer if t.name == "w2")
    array = onnx.numpy_helper.to_array(weights).copy()
    array[0, 0, 0, 0] = np.nan
    weights.CopyFrom(onnx.numpy_helper.from_array(array, "w2"))
    onnx.save(model, tmp_path / "nan.onnx")
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(tmp_path / "grey.png")
    out = tmp_path / "out"
    code, _, err = cli(capfd, "explain", tmp_path / "nan.onnx", tmp_path / "grey.png", "--size", "16", "16",
                       "--out", out)
    assert code == 1
    assert "grey.png" in err and "forward pass" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())  # nothing written


def sqrt_of_square_model():
    """sqrt(x*x) = |x|: finite forward, NaN gradient (0 * inf) where a pixel is exactly 0."""
    w = np.random.default_rng(6).normal(size=(4, 3)).astype(F32)
    nodes = [node("Mul", ["x", "x"], ["sq"]), node("Sqrt", ["sq"], ["a"]), node("MatMul", ["a", "w"], ["y"])]
    return make_model(nodes, [("x", F32, ["N", 4])], [("y", F32, ["N", 3])], {"w": w})


def test_nan_attribution_is_a_backward_error_for_that_image_only():
    images = np.array([[0.5, -1.0, 2.0, 1.5], [0.5, 0.0, 2.0, 1.5]], F32)
    with pytest.raises(NonFiniteError) as caught:
        Explainer(sqrt_of_square_model(), method="gradient").explain(images)
    assert caught.value.stage == "backward" and caught.value.indices == [1]
    partial = caught.value.partial  # the other image's result is kept, and right: d|x|.w/dx = sign(x) w
    w = onnx.numpy_helper.to_array(sqrt_of_square_model().graph.initializer[0])
    np.testing.assert_allclose(partial.attributions[0], np.sign(images[0]) * w[:, partial.target[0]], rtol=1e-6)


def test_forward_and_backward_failures_in_one_batch_are_all_named():
    w = np.random.default_rng(7).normal(size=(4, 3)).astype(F32)
    model = make_model([node("Sqrt", ["x"], ["r"]), node("MatMul", ["r", "w"], ["y"])],
                       [("x", F32, ["N", 4])], [("y", F32, ["N", 3])], {"w": w})
    images = np.array([[1, -1, 1, 1], [1, 0, 1, 1], [1, 2, 3, 4]], F32)  # NaN forward, inf backward, fine
    with pytest.raises(NonFiniteError) as caught:
        Explainer(model, method="gradient").explain(images)
    assert caught.value.indices == [0, 1] and caught.value.stages == ["forward", "backward"]
    named = caught.value.named(["a.png", "b.png", "c.png"])
    assert "a.png: the model's output" in str(named) and "b.png: the attribution" in str(named)


def test_one_row_at_a_time_keeps_the_models_own_value_named_like_a_public_input():
    """The attribution graph's inputs are called weights, baseline...: a model value of the same
    name is renamed, inside the Scan body too."""
    model = batch_baked_model()
    for item in (*model.graph.initializer, *model.graph.node):
        if item.name == "w":
            item.name = "weights"
        for names in ((item.input,) if hasattr(item, "input") else ()):
            for k, name in enumerate(names):
                if name == "w":
                    names[k] = "weights"
    images = np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(F32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IntakeNote)
        result = Explainer(model, method="gradient").explain(images)
    check_gradients_by_fd(model, images, result)


def test_nhwc_model_with_size_alone_is_cropped_in_its_own_layout(tmp_path, capfd):
    onnx.save(fixed_keras_cnn(), tmp_path / "keras.onnx")
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (10, 15, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    code, _, err = cli(capfd, "explain", tmp_path / "keras.onnx", tmp_path / "p.png", "--size", "8", "--method",
                       "gradient", "--out", tmp_path / "out")
    assert code == 0, err
    assert np.load(tmp_path / "out" / "p.gradient.npy").shape == (1, 8, 8, 3)


# -- one intake ------------------------------------------------------------------------------------
def count_intake(monkeypatch):
    import gnl_onnx.intake as intake
    import gnl_onnx.loading as loading

    counts = {"read": 0, "normalize": 0}
    real_read, real_normalize = loading.onnx.load_model, intake.normalize

    def read(*args, **kwargs):
        counts["read"] += 1
        return real_read(*args, **kwargs)

    def normalize(*args, **kwargs):
        counts["normalize"] += 1
        return real_normalize(*args, **kwargs)

    monkeypatch.setattr(loading.onnx, "load_model", read)
    monkeypatch.setattr(intake, "normalize", normalize)
    return counts


def test_evaluate_reads_and_normalizes_the_model_once(tmp_path, monkeypatch):
    from gnl_onnx.evaluate import evaluate

    onnx.save(relu_cnn(0, 16, 5), tmp_path / "m.onnx")
    counts = count_intake(monkeypatch)
    images = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(F32)
    evaluate(str(tmp_path / "m.onnx"), images, ["gradient", "ig", "random"], steps=4, curve_steps=4)
    assert counts == {"read": 1, "normalize": 1}


def test_audit_reads_and_normalizes_the_model_once(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    from gnl_onnx.audit import audit_files
    from gnl_onnx.images import Preprocessing

    onnx.save(relu_cnn(0, 16, 5), tmp_path / "m.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    counts = count_intake(monkeypatch)
    audit_files(str(tmp_path / "m.onnx"), str(folder), tmp_path / "audit", Preprocessing(size=(16, 16), fit="exact"),
                ["gradient", "gnl_ig"], steps=4, curve_steps=4, progress=False)
    assert counts == {"read": 1, "normalize": 1}


# -- inputs ----------------------------------------------------------------------------------------
def static_cnn():
    model = relu_cnn(0, 16, 5)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "N"
    return model


@pytest.fixture()
def photos(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (20, 31, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(rng.integers(0, 256, (33, 18, 3), dtype=np.uint8)).save(tmp_path / "tall.png")
    return [tmp_path / "wide.png", tmp_path / "tall.png"]


def test_the_models_own_size_is_the_default(tmp_path, photos, capfd):
    onnx.save(static_cnn(), tmp_path / "m.onnx")
    code, out, err = cli(capfd, "explain", tmp_path / "m.onnx", *photos, "--method", "gradient",
                         "--out", tmp_path / "out")
    assert code == 0, err
    assert "16x16" in err and "note" in err  # says what it assumed
    saved = [np.load(tmp_path / "out" / f"{p.stem}.gradient.npy") for p in photos]
    assert all(a.shape == (1, 3, 16, 16) for a in saved)


def test_photos_of_any_aspect_ratio_with_a_shorter_side_size(tmp_path, photos, capfd):
    """--size 16 alone resizes the shorter side: a wide and a tall photo came out 16x24 and 29x16
    and ended in a numpy traceback; the model's fixed 16x16 now completes it with a centre crop."""
    onnx.save(static_cnn(), tmp_path / "static.onnx")
    code, _, err = cli(capfd, "explain", tmp_path / "static.onnx", *photos, "--size", "16", "--method", "gradient",
                       "--out", tmp_path / "static")
    assert code == 0, err
    shapes = {np.load(tmp_path / "static" / f"{p.stem}.gradient.npy").shape for p in photos}
    assert shapes == {(1, 3, 16, 16)}
    code, _, err = cli(capfd, "evaluate", tmp_path / "static.onnx", *photos, "--size", "16", "--methods",
                       "gradient", "--curve-steps", "4", "--out", tmp_path / "eval")
    assert code == 0, err
    # a crop that does not fit the model: one line naming the shapes, no traceback
    code, _, err = cli(capfd, "explain", tmp_path / "static.onnx", *photos, "--size", "16", "--crop", "16", "20",
                       "--out", tmp_path / "bad")
    assert code == 2 and "(N, 3, 16, 16)" in err and "Traceback" not in err, err


def test_npy_arrays_are_accepted_everywhere(tmp_path, capfd):
    onnx.save(static_cnn(), tmp_path / "m.onnx")
    rng = np.random.default_rng(3)
    one, batch = rng.standard_normal((3, 16, 16)).astype(F32), rng.standard_normal((2, 3, 16, 16)).astype(F32)
    np.save(tmp_path / "one.npy", one)
    np.save(tmp_path / "batch.npy", batch)
    code, _, err = cli(capfd, "explain", tmp_path / "m.onnx", tmp_path / "one.npy", tmp_path / "batch.npy",
                       "--method", "gradient", "--out", tmp_path / "out")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [r["image"] for r in summary["explained"]] == [
        str(tmp_path / "one.npy"), f"{tmp_path / 'batch.npy'}[0]", f"{tmp_path / 'batch.npy'}[1]"]
    # the arrays were fed as they are: the saved gradient is the model's at exactly that array
    expected = Explainer(static_cnn(), method="gradient").explain(np.concatenate([one[None], batch]))
    got = [np.load(tmp_path / "out" / f"{stem}.gradient.npy")[0] for stem in ("one", "batch-0", "batch-1")]
    np.testing.assert_allclose(np.stack(got), expected.attributions, rtol=1e-5, atol=1e-6)
    code, _, err = cli(capfd, "evaluate", tmp_path / "m.onnx", tmp_path / "batch.npy", "--methods", "gradient",
                       "--curve-steps", "4", "--out", tmp_path / "eval")
    assert code == 0, err
    code, _, err = cli(capfd, "check", tmp_path / "m.onnx", "--images", tmp_path / "one.npy",
                       "--checks", "completeness", "--steps", "64")
    assert code == 0, err
    pytest.importorskip("pyarrow")
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "a.npy", one)
    np.save(folder / "b.npy", batch[0])
    code, _, err = cli(capfd, "audit", tmp_path / "m.onnx", "--images", folder, "--methods", "gradient",
                       "--curve-steps", "4", "--out", tmp_path / "audit")
    assert code == 0, err


def test_bad_npy_files_fail_in_one_line(tmp_path, capfd):
    onnx.save(static_cnn(), tmp_path / "m.onnx")
    np.save(tmp_path / "nan.npy", np.full((3, 16, 16), np.nan, F32))
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    np.save(tmp_path / "wrong.npy", np.zeros((3, 16), F32))
    for name, words in (("nan.npy", "NaN"), ("text.npy", "float"), ("wrong.npy", "shape")):
        code, _, err = cli(capfd, "explain", tmp_path / "m.onnx", tmp_path / name, "--out", tmp_path / "o")
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
