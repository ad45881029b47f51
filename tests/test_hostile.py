"""Hostile and broken input (issue 5) not covered elsewhere: damaged model files and external data,
absurd declared shapes, quantized and float16 graphs, image files at Pillow's limits, non-finite
arrays, budgets and folders that cannot work, and a run killed by a signal mid-way. Each case must
end in one package error naming the problem (one stderr line and exit 2 or 1 from the CLI), or work
and agree with an independent reference (float16: the float32 model with the same weights).
tests/test_errors.py, test_images.py, test_cli.py and test_explainer.py cover the rest; the table
of everything tried is docs/robustness.md."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx_builders import make_model, relu_cnn
from onnx_builders import run_cli as cli
from PIL import Image

import gnl_onnx
from gnl_onnx import Explainer
from gnl_onnx.errors import InputError, UsageError
from gnl_onnx.images import Preprocessing, open_image
from gnl_onnx.normalize import PrecisionNote

F32 = np.float32
HW, CLASSES = 16, 5
PREP = ["--size", str(HW), "--crop", str(HW), str(HW)]
node = helper.make_node


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gnl-onnx: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def no_runtime(monkeypatch):
    """Refusals must come before any runtime sees the model."""
    def started(*args, **kwargs):
        raise AssertionError("a runtime was started before the model was refused")

    monkeypatch.setattr(ort.InferenceSession, "__init__", started)
    monkeypatch.setattr(ReferenceEvaluator, "__init__", started)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    onnx.save(relu_cnn(0, HW, CLASSES), d / "small.onnx")
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (HW, HW, 3), dtype=np.uint8)).save(d / "photo.png")
    return d


def images(n=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, HW, HW)).astype(F32)


# ------------------------------------------------------------------------------------ model files
@pytest.mark.parametrize("cut", [0.1, 0.5, 0.97])
def test_truncated_model_file(files, tmp_path, capfd, no_runtime, cut):
    raw = (files / "small.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(raw[:int(len(raw) * cut)])
    code, _, err = cli(capfd, "inspect", path)
    assert code == 2 and "cut.onnx" in one_error_line(err)


def test_model_without_a_graph(tmp_path, capfd, no_runtime):
    path = tmp_path / "hollow.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())  # parses, but holds nothing
    code, _, err = cli(capfd, "inspect", path)
    assert code == 2 and "no ONNX graph" in one_error_line(err)


def with_input_dims(model, dims):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for dim, value in zip(m.graph.input[0].type.tensor_type.shape.dim, dims):
        dim.Clear()
        if isinstance(value, str):
            dim.dim_param = value
        else:
            dim.dim_value = value
    return m


@pytest.mark.parametrize("dims, mention", [
    (["N", 3, 0, HW], "empty or negative"),
    (["N", 3, -5, HW], "empty or negative"),
    (["N", 3, 10**12, 10**12], "not an image size"),
    ([10**12, 3, HW, HW], "not an image size"),
], ids=["zero", "negative", "absurd_hw", "absurd_batch"])
def test_impossible_declared_input_shapes(files, tmp_path, capfd, no_runtime, dims, mention):
    path = tmp_path / "dims.onnx"
    onnx.save(with_input_dims(relu_cnn(0, HW, CLASSES), dims), path)
    for command in (["inspect", path], ["explain", path, files / "photo.png", *PREP, "--out", tmp_path / "o"]):
        code, _, err = cli(capfd, *command)
        line = one_error_line(err)
        assert code == 2 and "'image'" in line and mention in line
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize("shape", [["N", 6], ["N", 3, 2, HW, HW]], ids=["rank2", "rank5"])
def test_image_files_need_a_rank_4_input(files, tmp_path, capfd, shape):
    flat = int(np.prod(shape[1:]))
    model = make_model([node("Relu", ["X"], ["a"]), node("Flatten", ["a"], ["Y"])],
                       [("X", F32, shape)], [("Y", F32, ["N", flat])])
    onnx.save(model, tmp_path / "m.onnx")
    code, _, err = cli(capfd, "explain", tmp_path / "m.onnx", files / "photo.png", *PREP, "--out", tmp_path / "o")
    assert code == 2 and f"rank {len(shape)}" in one_error_line(err)


# ------------------------------------------------------------------------------------ external data
@pytest.fixture
def external(tmp_path):
    """small.onnx with every weight in w.bin beside it, and the info to tamper with it."""
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(relu_cnn(0, HW, CLASSES), folder / "m.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    return folder


def tampered(folder, **fields):
    """A copy of m.onnx whose external-data entries have `fields` replaced."""
    model = onnx.load(folder / "m.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key in fields:
                entry.value = fields[entry.key]
    path = folder / "tampered.onnx"
    onnx.save(model, path)
    return path


def test_external_data_model_works(external, tmp_path, capfd):
    code, _, err = cli(capfd, "inspect", external / "m.onnx")
    assert code == 0, err


@pytest.mark.parametrize("fields, mention", [
    ({"location": "../../outside.bin"}, "outside the model's folder"),
    ({"location": "/etc/passwd"}, "outside the model's folder"),
    ({"location": "link.bin"}, "outside the model's folder"),  # a symlink leading out
    ({"location": "gone.bin"}, "missing"),
    ({"offset": str(10**9)}, "cannot read the external data"),
    ({"length": "7"}, "raw_data size (7 bytes) is too small"),
    ({"length": "many"}, "damaged external data length"),
], ids=["dotdot", "absolute", "symlink_out", "missing", "offset_past_end", "wrong_length", "garbled_length"])
def test_bad_external_data(external, tmp_path, capfd, no_runtime, fields, mention):
    (tmp_path / "outside.bin").write_bytes(b"\0" * 4096)
    (external / "link.bin").symlink_to(tmp_path / "outside.bin")
    code, _, err = cli(capfd, "inspect", tampered(external, **fields))
    line = one_error_line(err)
    assert code == 2 and mention in line, line


def test_model_over_2gb_is_refused_before_reading_its_data(tmp_path, capfd, no_runtime):
    # 2.5 GB of float32 weights in a sparse file: nothing is written to disk or read into memory.
    model = relu_cnn(0, HW, CLASSES)
    big = numpy_helper.from_array(np.zeros(1, F32), "huge")
    big.ClearField("raw_data")
    big.dims[:] = [625_000_000]
    big.data_location = TensorProto.EXTERNAL
    big.external_data.add(key="location", value="huge.bin")
    big.external_data.add(key="length", value=str(2_500_000_000))
    model.graph.initializer.append(big)
    onnx.save(model, tmp_path / "big.onnx")
    with open(tmp_path / "huge.bin", "wb") as f:
        f.truncate(2_500_000_000)
    code, _, err = cli(capfd, "inspect", tmp_path / "big.onnx")
    assert code == 2 and "2 GB" in one_error_line(err)


# ------------------------------------------------------------------------------------ quantized graphs
def quantized_cnn(qlinear: bool):
    """Image -> QuantizeLinear -> (QLinearConv | DequantizeLinear, Relu) -> pooled logits."""
    rng = np.random.default_rng(0)
    q = {"s": np.array(0.05, F32), "z": np.array(128, np.uint8)}
    if qlinear:
        q.update(w=rng.integers(0, 255, (4, 3, 3, 3)).astype(np.uint8), ws=np.array(0.01, F32),
                 wz=np.array(128, np.uint8))
        body = [node("QLinearConv", ["q", "s", "z", "w", "ws", "wz", "s", "z"], ["qc"], kernel_shape=[3, 3]),
                node("DequantizeLinear", ["qc", "s", "z"], ["f"])]
    else:
        body = [node("DequantizeLinear", ["q", "s", "z"], ["dq"]), node("Relu", ["dq"], ["f"])]
    nodes = [node("QuantizeLinear", ["X", "s", "z"], ["q"]), *body,
             node("GlobalAveragePool", ["f"], ["g"]), node("Flatten", ["g"], ["Y"])]
    return make_model(nodes, [("X", F32, ["N", 3, HW, HW])], [("Y", F32, ["N", 4 if qlinear else 3])], q)


@pytest.mark.parametrize("qlinear", [False, True], ids=["qdq", "qlinearconv"])
def test_small_quantized_graphs_take_the_straight_through_gradient(qlinear):
    """Once refused, now explained (tests/test_quantized.py has the real networks): the gradient
    is the straight-through estimator's, written out here in numpy. QLinearConv's uint8 weights
    with zero point 128 and its output's own clipping (codes 0..255 around 128) included."""
    x = np.random.default_rng(1).normal(0, 4, (1, 3, HW, HW)).astype(F32)  # some codes saturate
    explanation = Explainer(quantized_cnn(qlinear), method="gradient").explain(x, target=np.array([1]))
    codes = np.round(x / F32(0.05)) + 128
    inside = ((codes >= 0) & (codes <= 255)).astype(np.float64)
    x_f = (np.clip(codes, 0, 255) - 128) * 0.05
    if not qlinear:  # Y = mean(relu(dequantized x)) per channel: class 1 is channel 1
        want = np.zeros(x.shape)
        want[0, 1] = inside[0, 1] * (x_f[0, 1] > 0) / HW ** 2
    else:  # Y = mean(dequantized QLinearConv codes) per output channel
        rng = np.random.default_rng(0)
        w = (rng.integers(0, 255, (4, 3, 3, 3)).astype(np.float64) - 128) * 0.01
        out = HW - 2
        v = np.array([[np.sum(x_f[0, :, i:i + 3, j:j + 3] * w[1]) for j in range(out)] for i in range(out)])
        v_codes = np.round(v / 0.05) + 128
        g = ((v_codes >= 0) & (v_codes <= 255)) / out ** 2
        want = np.zeros(x.shape)
        for i in range(out):
            for j in range(out):
                want[0, :, i:i + 3, j:j + 3] += g[i, j] * w[1]
        want *= inside
    assert np.abs(want).max() > 0 and inside.min() == 0  # the clip range matters here
    np.testing.assert_allclose(explanation.attributions, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_weight_only_quantization_is_the_float_model():
    """int8 weights read through DequantizeLinear fold into float weights: the model differentiates
    exactly as the float model holding the dequantized weights."""
    float_model = relu_cnn(0, HW, CLASSES)
    w1 = numpy_helper.to_array(next(t for t in float_model.graph.initializer if t.name == "w1"))
    scale = float(np.abs(w1).max() / 127)
    codes = np.clip(np.rint(w1 / scale), -127, 127).astype(np.int8)
    dequantized = (codes.astype(F32) * F32(scale)).astype(F32)
    reference = onnx.ModelProto()
    reference.CopyFrom(float_model)
    next(t for t in reference.graph.initializer if t.name == "w1").CopyFrom(numpy_helper.from_array(dequantized, "w1"))
    quantized = onnx.ModelProto()
    quantized.CopyFrom(float_model)
    graph = quantized.graph
    kept = [t for t in graph.initializer if t.name != "w1"]
    del graph.initializer[:]
    graph.initializer.extend(kept + [numpy_helper.from_array(codes, "w1_q"),
                                     numpy_helper.from_array(np.array(scale, F32), "w1_s")])
    graph.node.insert(0, node("DequantizeLinear", ["w1_q", "w1_s"], ["w1"]))
    onnx.checker.check_model(quantized)
    x = images()
    got = Explainer(quantized, method="ig", steps=8).explain(x).attributions
    want = Explainer(reference, method="ig", steps=8).explain(x).attributions
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


# ------------------------------------------------------------------------------------ float16
def half_models():
    """(float32 reference with float16-representable weights, the same model in float16 throughout,
    the same in float16 behind float32 inputs and outputs with Casts)."""
    reference = relu_cnn(0, HW, CLASSES)
    for t in reference.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16).astype(F32), t.name))
    half = onnx.ModelProto()
    half.CopyFrom(reference)
    for t in half.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    for v in (*half.graph.input, *half.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(half)
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(half)
    graph = wrapped.graph
    for v in (*graph.input, *graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT
    graph.node[0].input[0] = "image_half"
    graph.node[-1].output[0] = "logits_half"
    graph.node.insert(0, node("Cast", ["image"], ["image_half"], to=TensorProto.FLOAT16))
    graph.node.append(node("Cast", ["logits_half"], ["logits"], to=TensorProto.FLOAT))
    onnx.checker.check_model(wrapped)
    return reference, half, wrapped


@pytest.mark.parametrize("which", [1, 2], ids=["float16_throughout", "float16_inside_casts"])
@pytest.mark.parametrize("method", ["ig", "gnl_ig"])
def test_float16_model_is_explained_in_float32(which, method):
    reference, *halves = half_models()
    x = images()
    with pytest.warns(PrecisionNote, match="float32"):
        got = Explainer(halves[which - 1], method=method, steps=16).explain(x)
    want = Explainer(reference, method=method, steps=16).explain(x)
    np.testing.assert_array_equal(got.target, want.target)
    np.testing.assert_allclose(got.attributions, want.attributions, rtol=1e-5,
                               atol=1e-6 * np.abs(want.attributions).max())
    if method == "ig":  # and it is a real IG of the model: complete up to the quadrature error
        assert np.all(np.abs(got.delta) < 0.05 * np.abs(got.attributions.sum(axis=(1, 2, 3))))


def test_float16_note_is_one_line_in_the_cli(files, tmp_path, capfd):
    _, half, _ = half_models()
    onnx.save(half, tmp_path / "half.onnx")
    code, _, err = cli(capfd, "convert", tmp_path / "half.onnx", "-o", tmp_path / "gnl.onnx")
    assert code == 0
    assert [line for line in err.splitlines() if line.strip()] == [
        line for line in err.splitlines() if line.startswith("gnl-onnx: note: ") and "float32" in line]
    converted = onnx.load(tmp_path / "gnl.onnx")
    assert converted.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # what to feed it


# ------------------------------------------------------------------------------------ images
def test_between_pillows_limit_and_twice_it_is_refused_too(tmp_path, monkeypatch):
    # Pillow only warns from MAX_IMAGE_PIXELS to twice that; the limit is the limit.
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(InputError, match="big.png.*MAX_IMAGE_PIXELS = 1000.*downscale"):
        open_image(tmp_path / "big.png")


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    raw = (tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(InputError, match="cut.png"):
        open_image(tmp_path / "cut.png")


def test_grayscale_preprocessing_needs_no_mean_or_std():
    p = Preprocessing(size=4, channels="L")
    assert p.mean == (0.0,) and p.std == (1.0,)
    with pytest.raises(UsageError, match="3 values for 1 channel"):
        Preprocessing(size=4, channels="L", mean=(0.1, 0.2, 0.3))


def test_channel_mismatch_says_which_channels(files, tmp_path, capfd):
    code, _, err = cli(capfd, "explain", files / "small.onnx", files / "photo.png", *PREP, "--channels", "L",
                       "--out", tmp_path / "o")
    assert code == 2 and "channels" in one_error_line(err)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_baseline_array(files, bad):
    baseline = np.zeros((1, 3, HW, HW), F32)
    baseline[0, 1, 2, 3] = bad
    explainer = Explainer(files / "small.onnx", method="ig", steps=2, baseline=baseline)
    with pytest.raises(UsageError, match="baseline.*NaN or infinite"):
        explainer.explain(images(1))


# ------------------------------------------------------------------------------------ arguments
def test_smallest_memory_budget_named_really_works(files):
    with pytest.raises(UsageError, match="smallest that works is") as info:
        Explainer(files / "small.onnx", method="ig", steps=4, memory_budget="1KB")
    smallest = str(info.value).rsplit(" ", 1)[-1]
    explainer = Explainer(files / "small.onnx", method="ig", steps=4, memory_budget=smallest)
    assert explainer.chunks(3) == (1, 1)  # one step of one image per run
    full = Explainer(files / "small.onnx", method="ig", steps=4).explain(images(3))
    np.testing.assert_allclose(explainer.explain(images(3)).attributions, full.attributions, rtol=1e-4, atol=1e-6)


def test_output_folder_under_a_file(files, tmp_path, capfd):
    (tmp_path / "plain").write_text("a file, not a folder")
    code, _, err = cli(capfd, "explain", files / "small.onnx", files / "photo.png", *PREP,
                       "--out", tmp_path / "plain" / "results")
    assert code == 2 and "plain" in one_error_line(err)
    code, _, err = cli(capfd, "convert", files / "small.onnx", "-o", tmp_path / "plain" / "m.onnx")
    assert code == 2 and "plain" in one_error_line(err)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(files, tmp_path, capfd):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, err = cli(capfd, "convert", files / "small.onnx", "-o", folder / "m.onnx")
        assert code == 2 and "ro" in one_error_line(err)
        code, _, err = cli(capfd, "explain", files / "small.onnx", files / "photo.png", *PREP, "--out", folder)
        assert code == 2 and "not writable" in one_error_line(err)
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------------------------ nothing lost
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"])
def test_killed_run_keeps_earlier_results_and_leaves_no_partial_file(files, tmp_path, sig, code):
    photos = []
    for i in range(24):  # 3 batches of 8
        photos.append(tmp_path / f"p{i:02d}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (HW, HW, 3), dtype=np.uint8)).save(photos[-1])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "gnl_onnx.cli", "explain", str(files / "small.onnx"), *map(str, photos),
               *PREP, "--out", str(out), "--method", "ig", "--integration", "middle"]
    first = subprocess.run(command + ["--steps", "2"], capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Again with many steps, killed once the first new results are in place.
    # Default signal dispositions in the child, as from a shell: earlier tests in this process (Ray's
    # driver) leave SIGINT ignored, which children inherit, and Python then keeps ignoring it.
    run = subprocess.Popen(command + ["--steps", "40000", "--overwrite"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while all((out / name).read_bytes() == data for name, data in before.items() if name.endswith(".npy")):
        assert run.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    run.send_signal(sig)
    _, err = run.communicate(timeout=60)
    assert run.returncode == code, err
    assert one_error_line(err).endswith("finished results are kept, nothing half-written")
    after = sorted(p.name for p in out.iterdir())
    assert after == sorted(before), "a temporary or extra file was left behind"
    assert (out / "summary.json").read_bytes() == before["summary.json"]  # written only at the end
    replaced = 0
    for name in after:
        if name.endswith(".npy"):
            assert np.load(out / name).shape == (1, 3, HW, HW)
            replaced += (out / name).read_bytes() != before[name]
        elif name.endswith(".png"):
            with Image.open(out / name) as im:
                im.load()
    assert 0 < replaced < 24  # killed in the middle: some results new, the others still the earlier ones


def test_summary_lists_what_it_explained(files, tmp_path, capfd):
    """A batch mixing good, truncated and non-image files: the good ones are explained, the bad
    ones named, exit 1."""
    raw = (files / "photo.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[:len(raw) // 3])
    (tmp_path / "text.jpg").write_text("hello")
    code, _, _ = cli(capfd, "explain", files / "small.onnx", files / "photo.png", tmp_path / "cut.png",
                     tmp_path / "text.jpg", *PREP, "--out", tmp_path / "o", "--steps", "2")
    assert code == 1
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert [pathlib.Path(r["image"]).name for r in summary["explained"]] == ["photo.png"]
    assert sorted(pathlib.Path(r["image"]).name for r in summary["skipped"]) == ["cut.png", "text.jpg"]
    assert np.load(summary["explained"][0]["files"]["npy"]).shape == (1, 3, HW, HW)


# ------------------------------------------------- checker-valid graphs found broken by the fuzzer
def _conv_head(extra_nodes, extra_inits=None, out="Y", out_shape=(1, 4)):
    """Conv -> [extra nodes reading 'c'] -> Y; every variant below passes onnx's checker."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(4, 3, 3, 3)).astype(F32), **(extra_inits or {})}
    nodes = [helper.make_node("Conv", ["X", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv"),
             *extra_nodes]
    return make_model(nodes, [("X", F32, [1, 3, 8, 8])], [(out, F32, list(out_shape))], inits)


def test_damaged_weight_bytes_are_a_model_error(no_runtime):
    model = _conv_head([helper.make_node("GlobalAveragePool", ["c"], ["g"]),
                        helper.make_node("Flatten", ["g"], ["Y"])])
    weight = next(t for t in model.graph.initializer if t.name == "w")
    weight.raw_data += bytes(8)  # 2 floats more than the declared shape (onnx's checker lets it pass)
    with pytest.raises(gnl_onnx.ModelError, match="initializer 'w' is damaged"):
        gnl_onnx.attribution_model(model)


def test_lrn_of_size_zero_is_a_model_error(no_runtime):
    model = _conv_head([helper.make_node("LRN", ["c"], ["l"], size=0, name="lrn0"),
                        helper.make_node("GlobalAveragePool", ["l"], ["g"]),
                        helper.make_node("Flatten", ["g"], ["Y"])])
    with pytest.raises(gnl_onnx.ModelError, match="LRN node 'lrn0'.*please report"):
        gnl_onnx.attribution_model(model)


def test_empty_intermediate_is_a_model_error(no_runtime):
    empty = [helper.make_node("Slice", ["c", "s", "e", "a"], ["z"]),  # 0 rows and columns survive
             helper.make_node("GlobalAveragePool", ["z"], ["g"]), helper.make_node("Flatten", ["g"], ["Y"])]
    ints = {"s": np.array([4, 4], np.int64), "e": np.array([4, 4], np.int64), "a": np.array([2, 3], np.int64)}
    with pytest.raises(gnl_onnx.ModelError, match="empty dimension"):
        gnl_onnx.attribution_model(_conv_head(empty, ints))


def test_no_outputs_and_scalar_outputs_are_refused(no_runtime):
    scalar = _conv_head([helper.make_node("ReduceSum", ["c"], ["Y"], keepdims=0)], out_shape=())
    with pytest.raises(UsageError, match=r"needs outputs of shape \[N, classes\]"):
        gnl_onnx.attribution_model(scalar)
    silent = _conv_head([helper.make_node("GlobalAveragePool", ["c"], ["g"]),
                         helper.make_node("Flatten", ["g"], ["Y"])])
    del silent.graph.output[:]
    with pytest.raises(gnl_onnx.ModelError, match="declares no outputs"):
        gnl_onnx.attribution_model(silent)
