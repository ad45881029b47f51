"""Class activation maps (gnl_onnx/cam/) against the anchor, pytorch-grad-cam 1.5.7 (PyPI
`grad-cam`), on torch exports of torchvision CNNs (random weights, both exporters), plus the
layer locator, NHWC graphs and bad layer names.

The anchor's raw per-layer map is `get_cam_image` (before its min-max normalization); the anchor
then applies ReLU and cv2.resize (INTER_LINEAR), which is what the ONNX graph computes. The error
is max |ours - anchor| / max |anchor| per image."""
from __future__ import annotations

import collections
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import gnl_onnx
from gnl_onnx.errors import UsageError

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("pytorch_grad_cam")
import pytorch_grad_cam as anchor  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

from models import torchvision_zoo as zoo  # noqa: E402

TOLERANCE = 1e-4
ANCHORS = {"gradcam": anchor.GradCAM, "gradcam_pp": anchor.GradCAMPlusPlus, "hirescam": anchor.HiResCAM,
           "xgradcam": anchor.XGradCAM, "layercam": anchor.LayerCAM, "eigencam": anchor.EigenCAM,
           "scorecam": anchor.ScoreCAM}
GRADIENT_CAMS = ("gradcam", "gradcam_pp", "hirescam", "xgradcam", "layercam")
RESULTS: dict = collections.defaultdict(dict)  # per case: method -> max relative error (printed at the end)


class DenseNetTail(torch.nn.Module):
    """densenet121's forward with its functional ReLU as a module, so that the anchor can hook the
    value gnl-onnx picks (the ReLU after features.norm5); same function, same weights."""

    def __init__(self, net):
        super().__init__()
        self.features, self.relu, self.classifier = net.features, torch.nn.ReLU(), net.classifier

    def forward(self, x):
        return self.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.relu(self.features(x)),
                                                                                     (1, 1)), 1))


def torch_and_layer(arch):
    """The torch network and the module whose output is the layer gnl-onnx finds by default."""
    net = zoo.build(arch)
    if arch.startswith("resnet"):
        return net, net.layer4
    if arch == "densenet121":
        tail = DenseNetTail(net).eval()
        return tail, tail.relu
    return net, net.features[-1]  # vgg16, mobilenet_v2, efficientnet_b0, convnext_tiny


def anchor_maps(cls, net, layers, x, targets):
    """The anchor's raw maps, ReLU and cv2-resized, per layer: [layers, N, H, W]."""
    images = torch.from_numpy(x)
    with cls(model=net, target_layers=layers) as cam:
        if isinstance(cam, anchor.ScoreCAM):
            cam.batch_size = 64
        outputs = cam.activations_and_grads(images)
        chosen = [ClassifierOutputTarget(int(t)) for t in targets]
        if cam.uses_gradients:
            net.zero_grad()
            sum(t(o) for t, o in zip(chosen, outputs)).backward(retain_graph=True)
        maps = []
        for i, layer in enumerate(layers):
            a = cam.activations_and_grads.activations[i].numpy()
            g = cam.activations_and_grads.gradients[i].numpy() if cam.uses_gradients else None
            raw = np.maximum(cam.get_cam_image(images, layer, chosen, a, g, False), 0)
            maps.append(np.stack([cv2.resize(np.float32(r), (x.shape[3], x.shape[2])) for r in raw]))
    return np.stack(maps)


def run_attribution(model, x, steps=1):
    import onnxruntime as ort

    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ones = np.ones(steps, np.float32)
    feed = {s.get_inputs()[0].name: x, "baseline": np.zeros((1,) * x.ndim, np.float32),
            "target": np.full(len(x), -1, np.int64), "alphas": ones, "weights": ones / steps,
            "noise": np.zeros((1,) * (x.ndim + 1), np.float32)}
    return s.run(None, feed)


def rel_err(got, ref):
    return max(float(np.abs(g - r).max() / np.abs(r).max()) for g, r in zip(got, ref))


def inputs(arch, n=2):
    size = zoo.default_size(arch)
    return np.random.default_rng(7).standard_normal((n, 3, size, size)).astype(np.float32)


def default_layer_of(path):
    from gnl_onnx.cam import candidates_report

    return candidates_report(path)["cam_default"]


def layer_value(path, name, x):
    """The ONNX value `name` and its gradient, from vjp_model(layers=[name]) at x (seed: top-1 one-hot)."""
    import onnxruntime as ort

    vjp = gnl_onnx.vjp_model(gnl_onnx.attribution.select_output(path), layers=[name])
    report = gnl_onnx.vjp_report(vjp)
    s = ort.InferenceSession(vjp.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = s.run([report["output"]], {report["input"]: x, report["seed"]: np.zeros((len(x), 1000), np.float32)})[0]
    seed = np.eye(logits.shape[1], dtype=np.float32)[logits.argmax(1)]
    return s.run([name, f"{name}_grad"], {report["input"]: x, report["seed"]: seed})


# ---- the networks: the default layer is the anchor's recommended one, and each CAM matches it

CASES = [("resnet18", "legacy"), ("resnet18", "dynamo"), ("resnet50", "legacy"), ("mobilenet_v2", "legacy"),
         ("mobilenet_v2", "dynamo"), ("efficientnet_b0", "legacy"), ("efficientnet_b0", "dynamo"),
         ("densenet121", "legacy"), ("densenet121", "dynamo"), ("convnext_tiny", "legacy"),
         ("convnext_tiny", "dynamo")]  # resnet50's dynamo graph names its blocks as resnet18's does
SCORECAM_CASES = {("resnet18", "legacy"), ("mobilenet_v2", "legacy")}  # C forward passes per image: two suffice


@pytest.mark.parametrize("arch,exporter", CASES, ids=[f"{a}-{e}" for a, e in CASES])
def test_cams_match_anchor(arch, exporter):
    path = str(zoo.export(arch, exporter))
    net, module = torch_and_layer(arch)
    x = inputs(arch)
    # the default layer is the value of the anchor's recommended module, and the engine's
    # gradient there is torch's
    name = default_layer_of(path)
    value, grad = layer_value(path, name, x)
    seen = {}
    hook = module.register_forward_hook(lambda m, i, o: seen.update(a=o))
    images = torch.from_numpy(x)
    out = net(images)
    seen["a"].retain_grad()
    out[torch.arange(len(x)), out.argmax(1)].sum().backward()
    hook.remove()
    assert rel_err(value, seen["a"].detach().numpy()) < TOLERANCE, name
    assert rel_err(grad, seen["a"].grad.numpy()) < 1e-3, name
    methods = GRADIENT_CAMS + ("eigencam",) + (("scorecam",) if (arch, exporter) in SCORECAM_CASES else ())
    for method in methods:
        t0 = time.perf_counter()
        attribution, scores, target = run_attribution(gnl_onnx.attribution_model(path, method=method), x)
        ours = attribution[:, 0]
        assert np.all(attribution == attribution[:, :1]), "every channel holds the map"
        ref = anchor_maps(ANCHORS[method], net, [module], x, target)[0]
        assert ref.max() > 0, f"{method}: the anchor's map is all zero (a degenerate case)"
        if method == "eigencam":  # the principal component's sign is arbitrary (see gnl_onnx/cam/)
            flipped = anchor_maps_flipped(net, module, x)
            err = max(min(rel_err([o], [r]), rel_err([o], [f])) for o, r, f in zip(ours, ref, flipped))
        else:
            err = rel_err(ours, ref)
        RESULTS[f"{arch}-{exporter}"][method] = (err, round(time.perf_counter() - t0, 2))
        assert err < TOLERANCE, f"{arch}-{exporter} {method}: {err}"


def anchor_maps_flipped(net, module, x):
    """EigenCAM with the opposite sign of the principal component."""
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    seen = {}
    hook = module.register_forward_hook(lambda m, i, o: seen.update(a=o.detach().numpy()))
    with torch.no_grad():
        net(torch.from_numpy(x))
    hook.remove()
    raw = np.maximum(-get_2d_projection(seen["a"]), 0)
    return np.stack([cv2.resize(np.float32(r), (x.shape[3], x.shape[2])) for r in raw])


def test_vgg16_default_layer_is_features_output():
    """vgg16's features[-1] (the last MaxPool) is found, not the adaptive average pool after it
    (a 7x7 -> 7x7 pool at 224 px, which the anchor's README also skips); Grad-CAM there matches."""
    path = str(zoo.export("vgg16", "legacy"))
    net, module = torch_and_layer("vgg16")
    x = inputs("vgg16", 1)
    name = default_layer_of(path)
    value, _ = layer_value(path, name, x)
    seen = {}
    hook = module.register_forward_hook(lambda m, i, o: seen.update(a=o.detach().numpy()))
    with torch.no_grad():
        net(torch.from_numpy(x))
    hook.remove()
    assert rel_err(value, seen["a"]) < TOLERANCE, name
    attribution, _, target = run_attribution(gnl_onnx.attribution_model(path, method="gradcam"), x)
    ref = anchor_maps(anchor.GradCAM, net, [module], x, target)[0]
    err = rel_err(attribution[:, 0], ref)
    RESULTS["vgg16-legacy"]["gradcam"] = (err, None)
    assert err < TOLERANCE


def test_several_layers_average_as_the_anchor():
    path = str(zoo.export("resnet18", "legacy"))
    net, _ = torch_and_layer("resnet18")
    x = inputs("resnet18")
    names = [c.split(" ")[0] for c in gnl_onnx.cam.candidates_report(path)["cam_layers"]]
    layer3 = next(n for n in names if n.startswith("/layer3/layer3.1/relu_1"))
    model = gnl_onnx.attribution_model(path, method="gradcam", layer=[default_layer_of(path), layer3])
    attribution, _, target = run_attribution(model, x)
    with anchor.GradCAM(model=net, target_layers=[net.layer4, net.layer3]) as cam:
        ref = cam(torch.from_numpy(x), [ClassifierOutputTarget(int(t)) for t in target])
    ours = attribution[:, 0]
    lo = ours.min(axis=(1, 2), keepdims=True)
    ours = (ours - lo) / (1e-7 + (ours - lo).max(axis=(1, 2), keepdims=True))
    assert rel_err(ours, ref) < 1e-4


def test_guided_and_gnl_gradcam_are_products():
    path = str(zoo.export("resnet18", "legacy"))
    x = inputs("resnet18")
    cam = run_attribution(gnl_onnx.attribution_model(path, method="gradcam"), x)[0]
    guided = run_attribution(gnl_onnx.attribution_model(path, method="guided_backprop"), x)[0]
    both = run_attribution(gnl_onnx.attribution_model(path, method="guided_gradcam"), x)[0]
    np.testing.assert_allclose(both, guided * cam, rtol=1e-4, atol=1e-6 * np.abs(both).max())
    explained = gnl_onnx.Explainer(path, method="gnl_gradcam", steps=4).explain(x)
    gnl = gnl_onnx.Explainer(path, method="gnl_ig", steps=4).explain(x)
    np.testing.assert_allclose(explained.attributions, gnl.attributions * cam, rtol=1e-3,
                               atol=1e-5 * np.abs(explained.attributions).max())


# ---- layers named by the user, NHWC graphs

def test_bad_layer_names_fail_in_one_line():
    path = str(zoo.export("resnet18", "legacy"))
    with pytest.raises(UsageError) as e:
        gnl_onnx.attribution_model(path, method="gradcam", layer="no_such_value")
    message = str(e.value)
    assert "\n" not in message and "candidates:" in message and "/layer4/layer4.1/relu_1/Relu_output_0" in message
    with pytest.raises(UsageError, match="not a 4-D float value"):  # 2-D: the logits' input
        gnl_onnx.attribution_model(path, method="gradcam", layer="/Flatten_output_0")


def nhwc_model(seed=0):
    """A tf2onnx-style graph: NHWC input, Transpose to NCHW, Conv, Relu, Transpose back to NHWC,
    Relu (the CAM layer, NHWC), ReduceMean over H and W, MatMul + Add."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "w")
    m = numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "m")
    b = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b")
    axes = numpy_helper.from_array(np.array([1, 2], np.int64), "axes")
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Transpose", ["conv"], ["conv_nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["conv_nhwc"], ["features"]),
             helper.make_node("ReduceMean", ["features", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "m"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"])]
    graph = helper.make_graph(nodes, "nhwc",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 12, 10, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], [w, m, b, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_nhwc_graph():
    model = nhwc_model()
    from gnl_onnx.cam import candidates_report

    report = candidates_report(model)
    assert report["cam_default"] == "features"
    assert any(c.startswith("features [N, 6, 5, 8] NHWC") for c in report["cam_layers"])
    x = np.random.default_rng(1).standard_normal((2, 12, 10, 3)).astype(np.float32)
    attribution, scores, target = run_attribution(gnl_onnx.attribution_model(model, method="gradcam"), x)
    assert attribution.shape == x.shape
    # the reference in numpy: activations and gradients of the layer (the engine's, checked
    # against torch above), Grad-CAM, ReLU, cv2 resize
    vjp = gnl_onnx.vjp_model(model, layers=["features"])
    import onnxruntime as ort

    s = ort.InferenceSession(vjp.SerializeToString(), providers=["CPUExecutionProvider"])
    a, g = s.run(["features", "features_grad"], {"image": x, "logits_grad": np.eye(5, dtype=np.float32)[target]})
    raw = np.maximum((g.mean(axis=(1, 2), keepdims=True) * a).sum(axis=3), 0)
    ref = np.stack([cv2.resize(r, (10, 12)) for r in raw])
    assert rel_err(attribution[..., 0], ref) < TOLERANCE
    # a layer given by name, and the image's layout kept for Score-CAM and Eigen-CAM too
    for method in ("scorecam", "eigencam", "layercam"):
        out = run_attribution(gnl_onnx.attribution_model(model, method=method, layer="features"), x)[0]
        assert out.shape == x.shape and np.all(np.isfinite(out))


def test_results_table():
    """Printed with -s: the per-network maximum relative error and time of each method."""
    for case, row in RESULTS.items():
        print(case, {m: f"{e:.1e}" for m, (e, _) in row.items()})


def test_cli_inspect_lists_layers_and_convert_refuses_bad_ones(tmp_path, capsys):
    from gnl_onnx.cli import main

    path = str(zoo.export("resnet18", "legacy"))
    assert main(["inspect", path]) == 0
    shown = capsys.readouterr().out
    assert "/layer4/layer4.1/relu_1/Relu_output_0 [N, 512, 2, 2] NCHW  <- default" in shown
    assert main(["convert", path, "-o", str(tmp_path / "cam.onnx"), "--method", "gradcam", "--layer", "nope"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "layer 'nope' is not a 4-D float value" in error
    assert main(["convert", path, "-o", str(tmp_path / "cam.onnx"), "--method", "scorecam",
                 "--layer", "/layer4/layer4.0/relu_1/Relu_output_0"]) == 0
    info = gnl_onnx.attribution.attribution_info(onnx.load(str(tmp_path / "cam.onnx")))
    assert info["layers"] == ["/layer4/layer4.0/relu_1/Relu_output_0"] and info["method"] == "scorecam"


def test_evaluate_and_check_take_cam_methods_by_name():
    """No branch on the method: evaluate ranks the upsampled map, check runs its checks on it."""
    from gnl_onnx.evaluate import evaluate

    path = str(zoo.export("resnet18", "legacy"))
    x = inputs("resnet18")
    result = evaluate(path, x, methods=["gradcam", "eigencam", "random"], curve_steps=4, threads=1)
    assert set(result.summaries) == {"gradcam", "eigencam", "random"}
    assert all(np.isfinite(s.deletion) and np.isfinite(s.insertion) for s in result.summaries.values())
