"""Forward-only methods (gnl_onnx/methods/perturbation.py, run by gnl_onnx/forward.py) against
their anchors: occlusion and KernelSHAP equal Captum 0.9's Occlusion and KernelShap (given the
same coalitions), ablation_cam equals pytorch-grad-cam 1.5.7's AblationCAM, on resnet18 at 64 px
(random weights, legacy export); RISE converges to its many-mask map at the rate its variance
says; and every one of them runs on a model whose backward cannot be built, whose error names
the ops in the way and these methods."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import helper

import gnl_onnx
from gnl_onnx.errors import UnsupportedModelError, UsageError
from gnl_onnx.inspection import inspect_model
from gnl_onnx.methods import FORWARD_METHODS, get_method
from onnx_builders import make_model, relu_cnn
from onnx_builders import run_cli as cli

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from models import torchvision_zoo as zoo  # noqa: E402


@pytest.fixture(scope="module")
def resnet18():
    """(ONNX path, the same torch network, a 64 px input, its top-1 class). The anchors run in torch
    one pass at a time: one image keeps them short (batching over images is test_masks_...'s)."""
    torch.set_num_threads(1)
    path = str(zoo.export("resnet18", "legacy"))
    net = zoo.build("resnet18")
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        top = net(torch.from_numpy(x)).argmax(1).numpy()
    return path, net, x, top


def scale_err(ours, ref):
    """max |ours - ref| / max |ref|."""
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_occlusion_equals_captum(resnet18):
    """Window 12, stride 10 on 64 px: 7 x 7 positions, the last cut at the border (Captum's
    ceil((64 - 12) / 10) + 1); the occluded pixels take the baseline (an array per channel)."""
    path, net, x, top = resnet18
    baseline = np.array([0.5, -0.25, 1.0], np.float32).reshape(1, 3, 1, 1)
    ours = gnl_onnx.Explainer(path, method="occlusion:window=12,stride=10", baseline=baseline).explain(x)
    assert ours.runs["forward_passes_per_image"] == 49
    np.testing.assert_array_equal(ours.target, top)
    occlusion = captum_attr.Occlusion(net)
    for i in range(len(x)):
        with torch.no_grad():  # a forward-only anchor: no autograd bookkeeping
            ref = occlusion.attribute(torch.from_numpy(x[i:i + 1]), sliding_window_shapes=(3, 12, 12),
                                      strides=(3, 10, 10),
                                      baselines=torch.from_numpy(baseline), target=int(top[i]),
                                      perturbations_per_eval=49).numpy()
        # float32 scores of two runtimes (ORT and torch) differ by about 1e-6 of the logit; a window's
        # effect is a difference of two such scores, so 1e-4 of the largest effect is float32 agreement
        assert scale_err(ours.attributions[i:i + 1], ref) < 1e-4


def test_kernelshap_equals_captum_given_the_same_coalitions(resnet18):
    """Captum's KernelShap fed our coalitions (its generator replaced) on a 4 x 4 grid of cells."""
    path, net, x, top = resnet18
    method = get_method("kernelshap:samples=32,grid=4")
    drawn = method.perturbations(64, 64, 1, seed=0).drawn
    assert drawn.shape == (32, 16) and drawn[0].all() and not drawn[1].any()
    sizes = drawn[2:].sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= 15  # k ~ (M - 1) / (k (M - k)), k in 1..M-1
    ours = gnl_onnx.Explainer(path, method=method.name).explain(x)

    class SameCoalitions(captum_attr.KernelShap):
        def kernel_shap_perturb_generator(self, original_inp, **kwargs):
            for row in drawn:
                yield torch.from_numpy(row[None].astype(np.int64))

    labels = torch.from_numpy(method.features(64, 64)[None, None])
    for i in range(len(x)):
        with torch.no_grad():
            ref = SameCoalitions(net).attribute(torch.from_numpy(x[i:i + 1]), target=int(top[i]),
                                                n_samples=len(drawn), feature_mask=labels, baselines=0.0).numpy()
        # Captum fits in float32 (scikit-learn keeps the dtype) with weights 1e6 at all/none: 1e-3
        # of the largest coefficient is that fit's precision; ours solves in float64
        assert scale_err(ours.attributions[i:i + 1], ref) < 1e-3


def test_ablation_cam_equals_pytorch_grad_cam(resnet18):
    """At layer3's output (256 channels: the anchor runs the whole network once per channel), given
    with --layer; ours runs the ablated activations through the part after the layer only."""
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("cv2")
    import pytorch_grad_cam as anchor
    from test_cam import anchor_maps

    path, net, x, top = resnet18
    layer = "/layer3/layer3.1/relu_1/Relu_output_0"
    ours = gnl_onnx.Explainer(path, method="ablation_cam", layer=layer).explain(x)
    assert ours.runs["forward_passes_per_image"] == 256
    assert np.all(ours.attributions == ours.attributions[:, :1])
    with torch.no_grad():
        ref = anchor_maps(anchor.AblationCAM, net, [net.layer3], x, ours.target)[0]
    assert ref.max() > 0
    assert max(scale_err(o, r) for o, r in zip(ours.attributions[:, 0], ref)) < 1e-4


def spotlight(hw=16):
    """logits = W flatten(image) with class 1 reading a bright square (weights 1) on a dim field
    (weights 0.05): a model whose RISE map has a clear signal to converge to."""
    weights = np.full((2, 3, hw, hw), 0.05, np.float32)
    weights[1, :, 3:8, 6:13] = 1.0
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)]
    return make_model(nodes, [("image", np.float32, ["N", 3, hw, hw])], [("logits", np.float32, ["N", 2])],
                      {"w": weights.reshape(2, -1)})


def test_rise_converges_as_its_variance_says():
    """Maps of N masks (independent seeds) against one of 16000: the correlation grows with N, and
    the pixel variance over seeds falls as 1/N (4x the masks: about a quarter of the variance)."""
    model = spotlight()
    x = np.abs(np.random.default_rng(5).standard_normal((1, 3, 16, 16))).astype(np.float32)
    explainers = {}

    def rise(masks, seed):
        key = (masks, seed)
        explainers[key] = gnl_onnx.Explainer(model, method=f"rise:masks={masks},cells=4", seed=seed)
        return explainers[key].explain(x, target=1).attributions[0, 0].ravel()

    reference = rise(16000, 100)
    maps = {n: [rise(n, seed) for seed in range(4)] for n in (250, 1000, 4000)}
    correlation = {n: np.mean([np.corrcoef(m, reference)[0, 1] for m in ms]) for n, ms in maps.items()}
    assert correlation[250] < correlation[1000] < correlation[4000]
    assert correlation[4000] > 0.9
    variance = {n: np.var(np.stack(ms), axis=0, ddof=1).mean() for n, ms in maps.items()}
    assert 2 < variance[250] / variance[1000] < 8 and 2 < variance[1000] / variance[4000] < 8


def test_masks_do_not_depend_on_the_chunking():
    model = relu_cnn(hw=16)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    for method in ("rise:masks=300", "kernelshap:samples=60,grid=4", "occlusion:window=4,stride=3", "ablation_cam"):
        small = gnl_onnx.Explainer(model, method=method, memory_budget="64KB").explain(x)
        large = gnl_onnx.Explainer(model, method=method, memory_budget="256MB").explain(x)
        if method != "ablation_cam":  # (its 8 channels fit one run of either)
            assert small.runs["steps_per_run"] < large.runs["steps_per_run"]
        np.testing.assert_allclose(small.attributions, large.attributions, rtol=1e-5,
                                   atol=1e-6 * np.abs(large.attributions).max())


def model_with_ops_without_rules():
    """relu_cnn with Shrink and LpNormalization after the pool: ONNX Runtime runs them, the
    reverse pass has no rule for them."""
    model = relu_cnn(hw=16)
    nodes = list(model.graph.node)
    at = next(i for i, n in enumerate(nodes) if n.name == "pool1")
    nodes[at].output[0] = "pooled"
    nodes[at + 1:at + 1] = [helper.make_node("Shrink", ["pooled"], ["shrunk"], lambd=0.1, name="shrink"),
                            helper.make_node("LpNormalization", ["shrunk"], ["p1"], axis=1, name="lpnorm")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def test_forward_methods_run_where_the_backward_cannot(tmp_path, capfd):
    model = model_with_ops_without_rules()
    blocking = inspect_model(model)["unsupported"]
    assert blocking  # the ops in the way (those of Shrink and LpNormalization still without a rule)
    with pytest.raises(UnsupportedModelError) as e:
        gnl_onnx.Explainer(model, method="ig")
    message = str(e.value)
    assert all(op in message for op in blocking) and all(m in message for m in FORWARD_METHODS)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    for method in ("occlusion", "rise:masks=200", "kernelshap:samples=40,grid=4", "ablation_cam"):
        result = gnl_onnx.Explainer(model, method=method).explain(x)
        assert result.method == method and np.isfinite(result.attributions).all()
        assert np.abs(result.attributions).max() > 0
    path = tmp_path / "odd.onnx"
    onnx.save(model, path)
    code, out, _ = cli(capfd, "inspect", path)
    assert code == 1 and "UNSUPPORTED" in out and "only these methods run on it" in out
    assert all(m in out for m in FORWARD_METHODS)
    np.save(tmp_path / "x.npy", x[:1])
    code, _, err = cli(capfd, "explain", path, tmp_path / "x.npy", "--out", tmp_path / "ig", "--method", "ig")
    assert code == 1 and "occlusion" in err and "no gradient rule" in err
    code, _, err = cli(capfd, "explain", path, tmp_path / "x.npy", "--out", tmp_path / "rise", "--method",
                       "rise:masks=100")
    assert code == 0, err
    assert (tmp_path / "rise" / "summary.json").exists()
    # evaluate keeps a method's options with it ("cells=4" is not a method of its own)
    code, out, err = cli(capfd, "evaluate", path, tmp_path / "x.npy", "--methods", "rise:masks=100,cells=4,occlusion",
                         "--curve-steps", "4", "--out", tmp_path / "eval")
    assert code == 0, err
    assert "rise:masks=100,cells=4" in out and "occlusion" in out


def test_options_and_refusals():
    assert get_method("rise:masks=8000,cells=9").masks == 8000
    assert get_method("occlusion:window=8,stride=4").passes(64, 64) == 15 * 15
    for bad in ("rise:masks=0", "rise:size=3", "occlusion:window=4,stride=8", "kernelshap:samples=x",
                "smoothgrad:rise"):
        with pytest.raises(UsageError):
            get_method(bad)
    with pytest.raises(UsageError, match="does not convert.*occlusion, rise, kernelshap do"):
        gnl_onnx.attribution_model(relu_cnn(), method="ablation_cam")  # (the others: tests/test_deploy.py)
    mask = np.repeat(np.arange(4), 4)[None, :].repeat(16, axis=0)  # four vertical bands
    method = dataclasses.replace(get_method("kernelshap:samples=30"), feature_mask=mask)
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    maps = gnl_onnx.Explainer(relu_cnn(), method=method).explain(x).attributions[0, 0]
    assert all(len(np.unique(maps[:, 4 * b:4 * b + 4])) == 1 for b in range(4))


def test_forward_methods_count_the_activations_of_each_copy():
    """EfficientNet-Lite0's static shapes name the batch anew after its computed Pads: counting
    only the input's batch symbol, RISE saw a copy as its image alone (0.6 MB), ran 885 copies per
    image in a 1 GB run and was killed for memory past 20 GB. A copy holds at least the first
    convolution's output and its Clip at once (2 x 32 x 112 x 112 floats), and a run fits the budget."""
    from models import registry

    explainer = gnl_onnx.Explainer(str(registry.get_model("efficientnet-lite0")), method="rise", threads=1)
    assert explainer.row_bytes >= 2 * 32 * 112 * 112 * 4
    plan = explainer.plan(2)
    assert plan["images_per_run"] * plan["steps_per_run"] * explainer.row_bytes <= explainer.budget
