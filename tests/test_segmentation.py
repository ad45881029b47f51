"""Region targets (gnl_onnx/targets.py) on segmenters and a dense text map.

torchvision's LRASPP (mobilenet_v3_large), DeepLabV3 (mobilenet_v3_large) and FCN (resnet50), random
weights (seeded), legacy export at 64 px: the gradient of SegmentRegion's scalar (a class's logits
summed over its predicted mask) against torch autograd in float64 with the ReLU/MaxPool decisions
taken from the ONNX Runtime run (tests/test_architectures.py says why), and Grad-CAM against
pytorch-grad-cam's GradCAM with its SemanticSegmentationTarget (same mask, same layer). The other
methods on the LRASPP export: DeepLIFT and IG complete against the region score at the fixed mask,
LRP's relevance equal to the one its own backward gives from the seed the target builds.
The PP-OCRv4 DBNet text detector (rapidocr-onnxruntime 1.4.4) on skimage's page(): the gradient of
the text map over its pixels above 0.3 against central finite differences, Grad-CAM runs."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

import gnl_onnx
from gnl_onnx.errors import InputError, UsageError
from gnl_onnx.explainer import Explainer
from gnl_onnx.target_text import parse_target
from gnl_onnx.targets import DenseRegion, OutputSlice, SegmentRegion

torch = pytest.importorskip("torch")
segmentation = pytest.importorskip("torchvision.models.segmentation")
from torch_reference import input_gradient  # noqa: E402

SIZE, CLASSES = 64, 5
REL_TOL = 1e-4  # as tests/test_architectures.py: max |ours - float64 reference| / max |reference|


class MapOnly(torch.nn.Module):
    """torchvision's segmenters return {"out": ...}: the map alone, for the exporter and the anchor."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)["out"]


def build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MapOnly(getattr(segmentation, arch)(weights=None, weights_backbone=None, num_classes=CLASSES)).eval()


@pytest.fixture(scope="module")
def segmenters(tmp_path_factory):
    """arch -> (torch module, path of its legacy ONNX export), exported once on first use."""
    folder, made = tmp_path_factory.mktemp("segmenters"), {}

    def get(arch, exporter="legacy"):
        if (arch, exporter) not in made:
            net = build(arch)
            path = str(folder / f"{arch}-{exporter}.onnx")
            with torch.no_grad():
                if exporter == "dynamo":
                    torch.onnx.export(net, (torch.zeros(1, 3, SIZE, SIZE),), path, dynamo=True, opset_version=18,
                                      input_names=["image"], output_names=["out"],
                                      dynamic_shapes=({0: torch.export.Dim("N")},))
                else:
                    torch.onnx.export(net, torch.zeros(1, 3, SIZE, SIZE), path, dynamo=False, opset_version=17,
                                      input_names=["image"], output_names=["out"],
                                      dynamic_axes={"image": {0: "N"}, "out": {0: "N"}})
            made[arch, exporter] = net, path
        return made[arch, exporter]
    return get


def images(n=2):
    return np.random.default_rng(7).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def rel_err(got, ref):
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def region_seed(scores, chosen):
    """d(region score)/d(map), from the map at the images in numpy: one-hot class x its predicted mask."""
    mask = scores.argmax(axis=1) == chosen[:, None, None]
    seed = np.zeros_like(scores)
    seed[np.arange(len(chosen)), chosen] = mask
    return seed


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_segment_region_gradient_matches_torch(segmenters, exporter):
    """LRASPP from both exporters: the engine's gradient of the region score against torch autograd
    in float64 (no ReLU input of this net lies within float32 rounding of 0 at these inputs:
    measured 3e-7, dynamo 3.4e-7). Measured outside the suite (44 s, over the test-time budget):
    FCN-ResNet50 within 1e-4 with the gates taken from the ONNX Runtime run (tests/gates.py), 8.1e-7
    from the dynamo export; DeepLabV3-MobileNetV3 at 7e-7 (dynamo 6.6e-7)."""
    arch = "lraspp_mobilenet_v3_large"
    net, path = segmenters(arch, exporter)
    x = images()
    result = Explainer(path, method="gradient", output=SegmentRegion(), threads=1).explain(x)
    scores = result.scores
    with torch.no_grad():
        torch_map = net.double()(torch.from_numpy(x).double()).numpy()
    net.float()
    assert scores.shape == (2, CLASSES, SIZE, SIZE) and rel_err(scores, torch_map) < REL_TOL
    assert np.mean(scores.argmax(1) == torch_map.argmax(1)) > 0.999  # the predicted masks agree
    # the class explained by default: the one whose predicted region sums highest
    region_scores = np.stack([(torch_map[:, c] * (scores.argmax(1) == c)).sum(axis=(1, 2)) for c in range(CLASSES)], 1)
    assert np.array_equal(result.target, region_scores.argmax(1))
    seed = region_seed(scores, result.target)
    np.testing.assert_allclose(result.score, (seed * torch_map).sum(axis=(1, 2, 3)), rtol=1e-5)
    reference = input_gradient(net, x, seed, dtype=torch.float64)  # d sum(seed * map) / dx
    assert rel_err(result.attributions, reference) < REL_TOL


def test_gradcam_matches_the_anchor_on_a_segmenter(segmenters):
    """pytorch-grad-cam's GradCAM with SemanticSegmentationTarget(class, its predicted mask) at
    LRASPP's backbone output ("high", 1/16 of the image); the anchor's raw map, ReLU and
    cv2-resized, as tests/test_cam.py does for classifiers."""
    cv2 = pytest.importorskip("cv2")
    anchor = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    net, path = segmenters("lraspp_mobilenet_v3_large")
    x = images()
    module = list(net.net.backbone.children())[-1]  # the backbone's last block: its "high" features
    layer = _value_of(path, net, module, x)
    result = Explainer(path, method="gradcam", output=SegmentRegion(), layer=layer, threads=1).explain(x)
    masks = result.scores.argmax(1) == result.target[:, None, None]  # each image's class and its predicted mask
    targets = [SemanticSegmentationTarget(int(c), m.astype(np.float32)) for c, m in zip(result.target, masks)]
    images_t = torch.from_numpy(x)
    with anchor.GradCAM(model=net, target_layers=[module]) as cam:
        outputs = cam.activations_and_grads(images_t)
        net.zero_grad()
        sum(t(o) for t, o in zip(targets, outputs)).backward(retain_graph=True)
        a = cam.activations_and_grads.activations[0].numpy()
        g = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(images_t, module, targets, a, g, False), 0)
    ref = np.stack([cv2.resize(np.float32(r), (SIZE, SIZE)) for r in raw])
    assert ref.max() > 0
    assert rel_err(result.attributions[:, 0], ref) < REL_TOL


def _value_of(path, net, module, x):
    """The ONNX value holding `module`'s output, found by its values."""
    import onnxruntime as ort

    seen = {}
    hook = module.register_forward_hook(lambda m, i, o: seen.update(a=o))
    with torch.no_grad():
        net(torch.from_numpy(x))
    hook.remove()
    want = seen["a"].numpy()
    model = onnx.load(path)
    names = [o for n in model.graph.node for o in n.output if n.op_type not in ("Constant", "Shape")]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = s.run(names, {"image": x})
    found = [n for n, v in zip(names, values) if v.shape == want.shape and rel_err(v, want) < 1e-5]
    assert found, "the backbone's output is a value of the graph"
    return found[-1]


class TinySegmenter(torch.nn.Module):
    """Conv, ReLU, MaxPool, a class head and a bilinear upsample back to the image: the shape of a
    segmenter, small enough to build a graph per method in a fraction of a second."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.MaxPool2d(2), torch.nn.Conv2d(8, 8, 3, padding=1),
                                            torch.nn.ReLU())
        self.head = torch.nn.Conv2d(8, CLASSES, 1)

    def forward(self, x):
        return torch.nn.functional.interpolate(self.head(self.features(x)), size=x.shape[-2:], mode="bilinear",
                                               align_corners=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    net = TinySegmenter().eval()
    path = str(tmp_path_factory.mktemp("tiny") / "tiny_segmenter.onnx")
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 3, 16, 16), path, dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["out"], dynamic_axes={"image": {0: "N"}, "out": {0: "N"}})
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    return net, path, x


def test_every_method_takes_a_segment_target(tiny):
    import onnxruntime as ort

    net, path, x = tiny
    target = SegmentRegion()
    gradient = Explainer(path, method="gradient", output=target, threads=1).explain(x)
    chosen = gradient.target  # the class of highest predicted-region score
    assert (gradient.scores.argmax(1) == chosen[:, None, None]).any(axis=(1, 2)).all()
    seed = region_seed(gradient.scores, gradient.target)
    xt = torch.from_numpy(x).double().requires_grad_()
    (net.double()(xt) * torch.from_numpy(seed).double()).sum().backward()
    net.float()
    assert rel_err(gradient.attributions, xt.grad.numpy()) < REL_TOL
    # complete methods add up to the region score at the image minus that at the baseline, the
    # region held at the image's predicted mask (a mask read again at each point would not)
    with torch.no_grad():
        at_baseline = (net(torch.zeros(1, 3, 16, 16)).numpy() * seed).sum(axis=(1, 2, 3))
    for method, steps, tolerance in (("ig", 128, 2e-2), ("deeplift", 1, 1e-4)):
        result = Explainer(path, method=method, steps=steps, output=target, threads=1).explain(x, target=chosen)
        np.testing.assert_allclose(result.attributions.sum(axis=(1, 2, 3)), result.score - at_baseline,
                                   rtol=tolerance, atol=tolerance * np.abs(result.score).max())
        np.testing.assert_allclose(result.delta, result.attributions.sum(axis=(1, 2, 3)) - (result.score - at_baseline),
                                   atol=1e-4 * np.abs(result.score).max())
    # LRP: the relevance its rule set propagates from the seed the target builds (one-hot x mask)
    lrp = Explainer(path, method="lrp_epsilon_plus_flat", output=target, threads=1).explain(x, target=chosen)
    vjp = gnl_onnx.vjp_model(path, rule="lrp_epsilon_plus_flat")
    rep = gnl_onnx.vjp_report(vjp)
    s = ort.InferenceSession(vjp.SerializeToString(), providers=["CPUExecutionProvider"])
    relevance = s.run([rep["gradient"]], {rep["input"]: x, rep["seed"]: seed})[0]
    assert np.abs(relevance).max() > 0 and rel_err(lrp.attributions, relevance) < 1e-5
    # Grad-CAM's default layer on a map output lies before the class head (not the class maps)
    cam = Explainer(path, method="gradcam", output=target, threads=1)
    layer_shape = gnl_onnx.graph.GraphBuilder(onnx.load(path)).shape(cam.info["layers"][0])
    assert layer_shape[1] == 8 and cam.explain(x, target=chosen).attributions.max() > 0
    for method in ("smoothgrad", "gnl_ig", "smoothgrad:ig", "guided_backprop"):
        result = Explainer(path, method=method, steps=4, output=target, threads=1).explain(x, target=chosen)
        assert np.isfinite(result.attributions).all() and np.abs(result.attributions).max() > 0, method


def test_given_regions_and_output_slices_match_torch(tiny):
    """A given mask, a box and an output slice: the gradient of the same scalar in torch."""
    net, path, x = tiny
    mask = np.zeros((8, 8))
    mask[1:5, 2:7] = 1  # given at half the map's size: nearest-pixel resized
    cases = [(SegmentRegion(mask=mask), 3, lambda out: (out[:, 3] * torch.from_numpy(np.kron(mask, np.ones((2, 2))))).sum()),
             (DenseRegion(box=(5, 2, 12, 9)), 1, lambda out: out[:, 1, 2:9, 5:12].sum()),
             (OutputSlice(output_name="out", index=(4, slice(2, 15, 3), -1)), 0, lambda out: out[:, 4, 2:15:3, -1].sum())]
    for target, chosen, scalar in cases:
        result = Explainer(path, method="gradient", output=target, threads=1).explain(x, target=chosen)
        xt = torch.from_numpy(x).double().requires_grad_()
        value = scalar(net.double()(xt))
        value.backward()
        net.float()
        assert abs(float(result.score.sum()) - float(value)) < 1e-4 * abs(float(value)), target.describe()
        assert rel_err(result.attributions, xt.grad.numpy()) < REL_TOL, target.describe()


def test_bad_targets_are_refused_in_one_line(tiny, tmp_path):
    _, path, _ = tiny
    for text in ("segment:x", "dense@", "output:out[1,a]", "output:", "nonsense:3", "class:two"):
        with pytest.raises(UsageError):
            parse_target(text)
    assert parse_target("7") == (None, 7) and parse_target("class") == (None, None)
    target, chosen = parse_target("segment:3@1,2,30,40@0.5")
    assert chosen == 3 and target.box == (1, 2, 30, 40) and target.threshold == 0.5
    # an output that cannot be read as a map: one line naming the outputs, shapes and --target
    flat = str(tmp_path / "flat.onnx")
    model = onnx.load(path)
    node = onnx.helper.make_node("ReduceMean", ["out"], ["pooled"], axes=[2, 3], keepdims=0)
    model.graph.node.append(node)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, ["N", CLASSES]))
    onnx.save(model, flat)
    with pytest.raises(UsageError) as e:
        Explainer(flat, method="gradient", output=SegmentRegion(), threads=1)
    line = str(e.value)
    assert "\n" not in line and "pooled [N, 5]" in line and "--target class" in line
    with pytest.raises(UsageError, match="scores masked copies"):
        Explainer(path, method="scorecam", output=SegmentRegion(), threads=1)


def test_a_path_that_is_not_a_regular_file_is_refused(tmp_path):
    from gnl_onnx.cli import main
    from gnl_onnx.images import Preprocessing, load_inputs

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path, "/dev/null"):
        with pytest.raises(InputError, match="not an image file"):
            load_inputs(path, Preprocessing(size=8))  # would block forever on the FIFO if it opened it
    assert main(["explain", "any.onnx", str(fifo), "--size", "8", "8", "--out", str(tmp_path / "o")]) != 0


# -- a real dense predictor: PP-OCRv4's DBNet text detector -------------------------------------------
@pytest.fixture(scope="module")
def dbnet_page():
    pytest.importorskip("rapidocr_onnxruntime")
    data = pytest.importorskip("skimage.data")
    from gnl_onnx.intake import at_image_size
    from gnl_onnx.presets import get_preset
    from gnl_onnx_models.registry import get_model

    path = str(get_model("ocr-det"))
    x = get_preset("ocr-det").preprocessing.to_input(data.page())  # 191 x 384 -> 192 x 384 (multiples of 32)
    return path, at_image_size(path, x.shape), x


def test_dbnet_text_map_gradient_matches_finite_differences(dbnet_page):
    import onnxruntime as ort

    path, model, x = dbnet_page
    assert x.shape == (1, 3, 192, 384)
    result = Explainer(model, method="gradient", output=DenseRegion(), threads=1).explain(x)
    region = result.scores > 0.3
    assert 0.05 < region.mean() < 0.5, "the page's text lines are found"
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def text_score(image):  # the same scalar, its region held at the image's
        return float((s.run(None, {"x": image})[0].astype(np.float64) * region).sum())

    assert abs(text_score(x) - float(result.score[0])) < 1e-4 * float(result.score[0])
    g = result.attributions
    eps = 3e-3  # in the input's units (pixels scaled to -1..1)
    for flat in np.argsort(-np.abs(g).ravel())[:3]:
        at = np.unravel_index(flat, g.shape)
        plus, minus = x.copy(), x.copy()
        plus[at] += eps
        minus[at] -= eps
        # central differences of a float32 forward: measured within 1% on these pixels
        np.testing.assert_allclose(g[at], (text_score(plus) - text_score(minus)) / (2 * eps), rtol=3e-2)


def test_dbnet_gradcam_runs_over_a_box(dbnet_page):
    _, model, x = dbnet_page
    result = Explainer(model, method="gradcam", output=DenseRegion(box=(40, 20, 200, 80)), threads=1).explain(x)
    assert np.isfinite(result.attributions).all() and result.attributions.max() > 0
    assert result.score[0] == pytest.approx(float(result.scores[0, 0, 20:80, 40:200].sum()), rel=1e-5)


def test_localisation_measures_match_quantus():
    quantus = pytest.importorskip("quantus")
    from gnl_onnx.localisation import pointing_game, region_outline, relevance_mass

    rng = np.random.default_rng(5)
    maps = rng.standard_normal((6, 12, 12))
    regions = np.zeros((6, 12, 12), bool)
    for k, (r, c) in enumerate(rng.integers(0, 8, size=(6, 2))):
        regions[k, r:r + 4, c:c + 3] = True
    maps[0][regions[0]] += 10  # one map whose maximum lies inside its region, one outside
    maps[1][~regions[1]] += 10
    # Quantus 0.6.0's own per-batch evaluation, on the positive part (what relevance_mass shares out)
    positive = np.maximum(maps, 0)[:, None]
    mass = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True).evaluate_batch(
        a_batch=positive, s_batch=regions[:, None])
    hits = quantus.PointingGame(abs=False, normalise=False, disable_warnings=True).evaluate_batch(
        a_batch=maps[:, None], s_batch=regions[:, None])
    np.testing.assert_allclose(relevance_mass(maps, regions), mass, rtol=1e-12)
    assert np.array_equal(pointing_game(maps, regions), np.asarray(hits, bool))
    assert pointing_game(maps[0], regions[0]) and not pointing_game(maps[1], regions[1])
    # a region given at half the size is fitted by nearest pixel
    assert relevance_mass(maps[2], regions[2][::2, ::2].repeat(2, 0).repeat(2, 1)) == relevance_mass(
        maps[2], regions[2][::2, ::2])
    outline = region_outline(regions[3])
    assert outline.sum() == 2 * 4 + 2 * 3 - 4 and not (outline & ~regions[3]).any()
    with pytest.raises(UsageError, match="region is empty"):
        relevance_mass(maps[0], np.zeros((12, 12)))


def test_explain_draws_the_region_and_reports_its_localisation(tiny, tmp_path):
    import json

    from PIL import Image

    from gnl_onnx.cli import main
    from gnl_onnx.localisation import pointing_game, relevance_mass
    from gnl_onnx.report import reduce_channels

    _, path, x = tiny
    np.save(tmp_path / "image.npy", x[:1])
    out = tmp_path / "out"
    assert main(["explain", path, str(tmp_path / "image.npy"), "--target", "segment", "--method", "gradient",
                 "--out", str(out)]) == 0
    record = json.loads((out / "summary.json").read_text())["explained"][0]
    assert record["explained"] == "segment over its predicted mask (argmax over classes)"
    assert record["input_shape"] == [1, 3, 16, 16]
    result = Explainer(path, method="gradient", output=SegmentRegion(), threads=1).explain(x[:1])
    region = result.scores[0].argmax(0) == result.target[0]
    per_pixel = reduce_channels(result.attributions, "NCHW", "sum")
    assert record["region_pixels"] == int(region.sum())
    assert record["relevance_mass"] == pytest.approx(relevance_mass(per_pixel, region))
    assert record["pointing_game"] == pointing_game(per_pixel, region)
    overlay = np.asarray(Image.open(record["files"]["overlay"]))
    assert (overlay == (0, 255, 255)).all(axis=2).any()  # the region's outline is drawn


def test_a_converted_model_explains_the_region_in_bare_onnxruntime(tiny, tmp_path, capsys):
    import onnxruntime as ort

    from gnl_onnx.cli import main

    _, path, x = tiny
    out = tmp_path / "tiny_ig.onnx"
    assert main(["convert", path, "--method", "ig", "--target", "segment", "-o", str(out)]) == 0
    assert "never feed score_rows [0]" in capsys.readouterr().out
    result = Explainer(path, method="ig", steps=8, output=SegmentRegion(), threads=1).explain(x)
    alphas, weights = np.polynomial.legendre.leggauss(8)
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    attribution, scores, used = s.run(["attribution", "scores", "target_used"], {
        "image": x, "baseline": np.zeros((1, 1, 1, 1), np.float32), "target": np.full(len(x), -1, np.int64),
        "alphas": ((alphas + 1) / 2).astype(np.float32), "weights": (weights / 2).astype(np.float32),
        "noise": np.zeros((1, 1, 1, 1, 1), np.float32)})
    assert np.array_equal(used, result.target) and scores.shape == result.scores.shape
    np.testing.assert_allclose(attribution, result.attributions, rtol=1e-5, atol=1e-6 * np.abs(attribution).max())
