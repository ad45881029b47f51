"""convert --methods and --triton: several methods in one ONNX model, the weights kept once, each
method's outputs equal to the Explainer's; Triton's config.pbtxt parsed (protobuf text format) and
checked against what ONNX Runtime reports of the model and returns for a batch. Triton itself is
not run here (no server in the tests): what its ONNX Runtime backend checks on loading, the
inputs without a default, the names, types and dims, is checked against ONNX Runtime directly."""
from __future__ import annotations

import hashlib
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from gnl_onnx import Explainer
from gnl_onnx.cli import main
from gnl_onnx.deploy import combined_info

METHODS = ["gnl_ig", "ig", "gradcam", "deeplift"]
STEPS = 8
NUMPY = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}


@pytest.fixture(scope="module")
def mnist():
    from gnl_onnx_models.registry import get_model

    return str(get_model("mnist"))


@pytest.fixture(scope="module")
def converted(mnist, tmp_path_factory):
    base = tmp_path_factory.mktemp("deploy")
    assert main(["convert", mnist, "--methods", ",".join(METHODS), "--steps", str(STEPS), "-o", str(base / "all.onnx"),
                 "--triton", str(base / "repo"), "--triton-name", "mnist_explain"]) == 0
    return base


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)


def session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def digests(model: onnx.ModelProto) -> list[str]:
    return [hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest() for t in model.graph.initializer
            if np.prod(t.dims) > 16]


def test_combined_model_matches_the_explainer_and_keeps_weights_once(mnist, converted, images):
    model = onnx.load(str(converted / "all.onnx"))
    info = combined_info(model)
    assert list(info["methods"]) == METHODS
    s = session(converted / "all.onnx")
    assert [i.name for i in s.get_inputs()] == [info["input"]]  # the image alone is required
    out = dict(zip([o.name for o in s.get_outputs()], s.run(None, {info["input"]: images})))
    for method in METHODS:
        ref = Explainer(mnist, method=method, steps=STEPS, threads=1).explain(images)
        np.testing.assert_allclose(out[f"{method}.attribution"], ref.attributions, rtol=1e-5,
                                   atol=1e-6 * np.abs(ref.attributions).max())
        assert out[f"{method}.target_used"].tolist() == ref.target.tolist()
    # a default is overridden by feeding it: another class, other points
    fed = s.run(["ig.attribution", "ig.target_used"], {info["input"]: images, "ig.target": np.array([3, 5]),
                                                       "ig.alphas": np.array([0.5], np.float32),
                                                       "ig.weights": np.array([1.0], np.float32)})
    ref = Explainer(mnist, method="ig", steps=1, integration="middle", threads=1).explain(images, target=[3, 5])
    assert fed[1].tolist() == [3, 5]
    np.testing.assert_allclose(fed[0], ref.attributions, rtol=1e-5, atol=1e-6 * np.abs(ref.attributions).max())
    # the network's weights once: each of its tensors is held by one initializer
    held = digests(model)
    for weight in digests(onnx.load(mnist)):
        assert held.count(weight) == 1


def parse_pbtxt(text: str):
    """Protobuf text format -> nested dicts; a field given more than once (or a [list]) is a list."""
    tokens = re.findall(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.sub(r"#[^\n]*", "", text))
    position = 0

    def value():
        nonlocal position
        token = tokens[position]
        position += 1
        if token == "{":
            return message("}")
        if token == "[":
            items = []
            while tokens[position] != "]":
                items.append(value())
                if tokens[position] == ",":
                    position += 1
            position += 1
            return items
        if token.startswith('"'):
            return token[1:-1]
        return int(token) if re.fullmatch(r"-?\d+", token) else token

    def message(end):
        nonlocal position
        fields = {}
        while position < len(tokens) and tokens[position] != end:
            name = tokens[position]
            position += 1
            if tokens[position] == ":":
                position += 1
            v = value()
            if name in fields:
                fields[name] = (fields[name] if isinstance(fields[name], list) else [fields[name]]) + \
                    (v if isinstance(v, list) else [v])
            else:
                fields[name] = v
            if position < len(tokens) and tokens[position] == ",":
                position += 1
        position += 1
        return fields

    return message(None)


def as_list(v):
    return v if isinstance(v, list) else [v]


def test_triton_config_agrees_with_the_model(converted, images):
    folder = converted / "repo" / "mnist_explain"
    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    assert config["name"] == "mnist_explain" and config["backend"] == "onnxruntime"
    assert (folder / "1" / "model.onnx").read_bytes() == (converted / "all.onnx").read_bytes()
    s = session(folder / "1" / "model.onnx")
    batch = config["max_batch_size"]
    assert batch > 0 and "dynamic_batching" in config  # the MNIST export's batch axis is free
    inputs, outputs = as_list(config["input"]), as_list(config["output"])
    # the backend requires every input without a default in the config, and nothing else
    assert [i["name"] for i in inputs] == [i.name for i in s.get_inputs()]
    assert {o["name"] for o in outputs} == {o.name for o in s.get_outputs()}
    feed = {}
    for i, declared in zip(inputs, s.get_inputs()):
        assert declared.type == {"TYPE_FP32": "tensor(float)"}[i["data_type"]]
        assert [1] + i["dims"] == [1 if d is None or isinstance(d, str) else d for d in declared.shape]
        feed[i["name"]] = images
    results = dict(zip([o.name for o in s.get_outputs()], s.run(None, feed)))
    for o in outputs:  # a batch of 2 through ONNX Runtime: the shapes Triton will see, batch first
        got = results[o["name"]]
        assert got.dtype == NUMPY[o["data_type"]]
        per_item = o["reshape"]["shape"] if "reshape" in o else o["dims"]
        assert list(got.shape) == [len(images)] + as_list(per_item), o
        assert np.prod(o["dims"]) == np.prod(as_list(per_item) or [1])


def test_convert_refuses_in_one_line(mnist, tmp_path, capfd):
    from gnl_onnx.deploy.web import RUNTIME_FILES

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    # the runtime is checked before the folder: a stand-in dist folder, so that this case does not
    # depend on `npm ci --prefix web` having run (the refusal comes before anything is copied)
    runtime = tmp_path / "dist"
    runtime.mkdir()
    for name in RUNTIME_FILES:
        (runtime / name).write_bytes(b"")
    cases = [(["convert", mnist, "--methods", "ig"], "say where to write"),
             (["convert", mnist, "--methods", "ig,smoothgrad", "-o", str(tmp_path / "a.onnx")], "draws new noise"),
             (["convert", mnist, "--web", str(full), "--preset", "mnist", "--ort-web", str(runtime)],
              "not empty; pass --overwrite"),
             (["convert", mnist, "--web", str(tmp_path / "w"), "--ort-web", str(tmp_path / "nowhere")],
              "npm ci --prefix web"),
             (["convert", mnist, "--triton", str(tmp_path / "r"), "--triton-name", "a/b"], "Triton model name")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
    assert [p.name for p in full.iterdir()] == ["keep.txt"] and not (tmp_path / "w").exists()


def test_compact_computes_the_transposed_kernels_instead_of_storing_them(mnist, converted, images, tmp_path):
    assert main(["convert", mnist, "--methods", ",".join(METHODS), "--steps", str(STEPS), "--compact",
                 "-o", str(tmp_path / "compact.onnx")]) == 0
    full, compact = onnx.load(str(converted / "all.onnx")), onnx.load(str(tmp_path / "compact.onnx"))
    stored = {t.name for t in full.graph.initializer if t.name.endswith("_transposed")}
    assert stored and not {t.name for t in compact.graph.initializer} & stored
    saved = sum(numpy_helper.to_array(t).nbytes for t in full.graph.initializer if t.name in stored)
    ops = 4096 * len(stored)  # each kernel's few ops and their int64 constants, well under 4 KB
    assert (tmp_path / "compact.onnx").stat().st_size < (converted / "all.onnx").stat().st_size - saved + ops
    name = combined_info(full)["input"]
    for a, b in zip(session(converted / "all.onnx").run(None, {name: images}),
                    session(tmp_path / "compact.onnx").run(None, {name: images})):
        np.testing.assert_array_equal(a, b)


# -- forward-only methods in one graph (issue 22): masks as initializers, the copies in a Loop ----------
@pytest.mark.parametrize("method", ["occlusion:window=4,stride=3", "rise:masks=300,cells=4",
                                    "kernelshap:samples=60,grid=4"])
def test_forward_method_converts_to_the_explainers_map(method):
    """The converted model in bare ONNX Runtime gives the Explainer's map, scores and classes for
    three images (a per-channel baseline, one class given, two top-1). Each loop step's first copy
    is the image: occlusion's 25 windows and KernelSHAP's 60 coalitions run in one step, RISE's 300
    masks in two of 151 (the last row a zero pad, dropped). KernelSHAP's least-squares fit becomes a
    fixed linear map of the scores (its pseudo-inverse, stored), against the Explainer's lstsq."""
    from onnx_builders import relu_cnn
    from gnl_onnx.attribution import attribution_info, attribution_model

    model = relu_cnn(hw=16)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    baseline = np.array([0.5, -0.25, 1.0], np.float32).reshape(1, 3, 1, 1)
    target = np.array([-1, 2, -1], np.int64)
    converted = attribution_model(model, method=method)
    info = attribution_info(converted)
    assert info["forward_passes"] == {"o": 25, "r": 300, "k": 60}[method[0]]
    assert info["copies_per_step"] == {"o": 26, "r": 151, "k": 61}[method[0]]
    got = session_of(converted).run(None, {"image": x, "baseline": baseline, "target": target})
    ref = Explainer(model, method=method, baseline=baseline, threads=1).explain(x, target=target)
    # float32 model scores in both; the map's sums in float64 in both: the residue is float32 rounding
    # of the masks (RISE's upsampling) and of the scores' difference from F(x), 1e-5 of the largest value
    np.testing.assert_allclose(got[0], ref.attributions, rtol=0, atol=1e-5 * np.abs(ref.attributions).max())
    np.testing.assert_allclose(got[1], ref.scores, rtol=1e-6)
    assert got[2].tolist() == ref.target.tolist() and got[2][1] == 2


def session_of(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_forward_methods_convert_beside_gradient_methods_nhwc(tmp_path, capfd):
    """convert --methods gradient,rise,occlusion on a tf2onnx-style NHWC model: one file, the image
    alone fed (zero baseline, top-1 class), each method's map equal to the Explainer's; a method
    that does not convert is refused in one line naming those that do."""
    from onnx_builders import keras_style_cnn, run_cli

    model, _ = keras_style_cnn(np.random.default_rng(0), hw=12)
    path = tmp_path / "nhwc.onnx"
    onnx.save(model, path)
    methods = ["gradient", "rise:masks=200,cells=3", "occlusion:window=3,stride=2"]
    code, _, err = run_cli(capfd, "convert", str(path), "--methods", ",".join(methods), "-o",
                           str(tmp_path / "all.onnx"))
    assert code == 0, err
    x = np.random.default_rng(1).standard_normal((2, 12, 12, 3)).astype(np.float32)
    out = session(tmp_path / "all.onnx")
    got = dict(zip([o.name for o in out.get_outputs()], out.run(None, {"input_1": x})))
    for method in methods:
        ref = Explainer(model, method=method, threads=1).explain(x)
        np.testing.assert_allclose(got[f"{method}.attribution"], ref.attributions, rtol=0,
                                   atol=1e-5 * np.abs(ref.attributions).max())
        assert got[f"{method}.target_used"].tolist() == ref.target.tolist()
    code, _, err = run_cli(capfd, "convert", str(path), "--method", "ablation_cam", "-o", str(tmp_path / "a.onnx"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "occlusion, rise, kernelshap" in err
    assert not (tmp_path / "a.onnx").exists()


def test_forward_conversion_refusals():
    """A free image size (the masks are fixed at conversion) and rise of a detector's box (D-RISE
    matches boxes in numpy) are refused with one line each."""
    from onnx_builders import relu_cnn
    from gnl_onnx.attribution import attribution_model
    from gnl_onnx.box_targets import DetectionBox
    from gnl_onnx.errors import UsageError

    free = relu_cnn(hw=16)
    for dim in free.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    with pytest.raises(UsageError, match="fixed height and width"):
        attribution_model(free, method="occlusion")
    with pytest.raises(UsageError, match="D-RISE"):
        attribution_model(relu_cnn(hw=16), method="rise", output=DetectionBox())
