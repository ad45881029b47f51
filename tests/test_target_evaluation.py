"""evaluate with a box or region target (issue 21, item 4): each kept box, or each image's region,
is one row; deletion, insertion and ROAD track that row's score on the perturbed images, and the
localisation measures read its box or region. The references here are written apart from the
code under test: the model run by a bare ONNX Runtime session, the pixels deleted or inserted in
numpy, the box's score read from the raw head and the region's summed in numpy, Quantus for the
localisation measures."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from test_detection import _tiny_detector, picodet  # noqa: F401 - picodet: the fixture, shared

from gnl_onnx.box_targets import DetectionBox
from gnl_onnx.errors import UsageError
from gnl_onnx.evaluate import evaluate
from gnl_onnx.localisation import box_region, pointing_game, relevance_mass
from gnl_onnx.targets import SegmentRegion

STEPS = 4


def _session(model):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _perturbed(image, per_pixel, steps, mode):
    """The deletion (pixels set to 0) or insertion (pixels put into zeros) images of one [C, H, W]
    image, ranked by the per-pixel map (most first, ties in row-major order), as RISE steps them."""
    h, w = per_pixel.shape
    order = np.argsort(-per_pixel.ravel(), kind="stable")
    chunk = -(-h * w // steps)
    out = []
    for k in range(steps + 1):
        changed = np.zeros(h * w, bool)
        changed[order[:min(k * chunk, h * w)]] = True
        changed = changed.reshape(h, w)
        out.append(np.where(changed, 0, image) if mode == "deletion" else np.where(changed, image, 0))
    return np.stack(out).astype(np.float32)


def _kept(evaluation_call, **kwargs):
    """evaluate(...) with the attributions each row got, as keep sees them: (evaluation, {(method, row): map})."""
    maps = {}

    def keep(method, rows, attributions):
        for row, a in zip(rows, attributions):
            maps[(method, f"{row.image} {row.name}")] = np.asarray(a)
    return evaluation_call(keep=keep, **kwargs), maps


@pytest.mark.quick
def test_box_curves_track_the_boxs_class_score_in_the_raw_head():
    """Each image's top box: the deletion and insertion curves are, point by point, that box's
    class score in the raw head (head[4 + label, anchor]) of the images with the ranked pixels set to
    0 (or put back into zeros), the first deletion point the score at the image; the box and label are
    the head's best candidate; the localisation measures are those of the box's pixels."""
    model = _tiny_detector("yolov8")
    x = np.random.default_rng(4).uniform(0, 1, size=(2, 3, 16, 16)).astype(np.float32)
    evaluation, maps = _kept(lambda **k: evaluate(model, x, ["gradient", "random"], output=DetectionBox(top=1),
                                                  curve_steps=STEPS, insertion_substrate="zeros", threads=1, **k))
    session = _session(model)
    head = session.run(None, {"image": x})[0]  # [N, 4 + 3, 64]
    assert len(evaluation.records) == 4 and {s for s in evaluation.summaries} == {"gradient", "random"}
    for record in evaluation.records:
        i = int(record["image"])
        scores = head[i, 4:]
        label, anchor = np.unravel_index(int(np.argmax(scores)), scores.shape)
        cx, cy, w, h = head[i, :4, anchor]
        assert record["target"] == label and record["score"] == pytest.approx(scores[label, anchor], rel=1e-6)
        np.testing.assert_allclose(record["box"], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=0.01)
        per_pixel = maps[(record["method"], record["row"])].sum(axis=0)
        for mode in ("deletion", "insertion"):
            images = _perturbed(x[i], per_pixel, STEPS, mode)
            want = session.run(None, {"image": images})[0][:, 4 + label, anchor]
            np.testing.assert_allclose(record[f"{mode}_curve"], want, rtol=1e-5, atol=1e-6)
        assert record["deletion_curve"][0] == pytest.approx(scores[label, anchor], rel=1e-6)
        region = box_region(record["box"], (16, 16))
        assert record["region_pixels"] == int(region.sum()) > 0
        assert bool(record["pointing_game"]) == pointing_game(per_pixel, region)
        positive = np.maximum(per_pixel, 0)
        assert record["relevance_mass"] == pytest.approx((positive * region).sum() / positive.sum(), rel=1e-6)
        assert record["relevance_mass"] == pytest.approx(relevance_mass(per_pixel, region), rel=1e-6)


@pytest.mark.quick
def test_box_road_scores_the_imputed_images_by_the_boxs_score():
    """ROAD of a box: its curves are the box's score of the images ROAD imputes (the same
    imputation as for a class, seeded by the row), read from the raw head."""
    import gnl_onnx.road as road
    from gnl_onnx.pixels import ranking
    from gnl_onnx.scorer import Scorer

    model = _tiny_detector("yolov5")
    x = np.random.default_rng(5).uniform(0, 1, size=(1, 3, 16, 16)).astype(np.float32)
    evaluation, maps = _kept(lambda **k: evaluate(model, x, ["gradient"], output=DetectionBox(top=2),
                                                  metrics="road", threads=1, **k))
    session = _session(model)
    rows = session.run(None, {"image": x})[0][0]  # [64, 4 + 1 + 3]
    scores = rows[:, 4:5] * rows[:, 5:]

    class Recorded(Scorer):  # ROAD's imputed images, scored by the box's score in numpy
        def __init__(self, anchor, label):
            self.anchor, self.label = anchor, label

        def __call__(self, images, target, batch_size=16):
            out = session.run(None, {"image": np.asarray(images, np.float32)})[0]
            return out[:, self.anchor, 4] * out[:, self.anchor, 5 + self.label]

    assert [r["row"] for r in evaluation.records] == ["0 box0", "0 box1"]
    for key, record in enumerate(evaluation.records):
        label = record["target"]
        anchor = int(np.argmin(np.abs(scores[:, label] - record["score"])))
        assert scores[anchor, label] == pytest.approx(record["score"], rel=1e-6)
        order = ranking(maps[("gradient", record["row"])].sum(axis=0))
        for which in road.ORDERS:
            want = road.road_curve(Recorded(anchor, label), x, order, road.FRACTIONS, which, road.NOISE, 1.0, 0, key,
                                   label)
            np.testing.assert_allclose(record[f"road_{which}_curve"], want, rtol=1e-5, atol=1e-6)
        assert {"pointing_game", "relevance_mass"} <= set(record)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from test_segmentation import TinySegmenter

    net = TinySegmenter().eval()
    path = tmp_path_factory.mktemp("segmenter") / "tiny_segmenter.onnx"
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 3, 16, 16), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["out"],
                          dynamic_axes={"image": {0: "N"}, "out": {0: "N"}})
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    return path, x


def test_region_curves_sum_the_class_over_the_region_held_fixed(segmenter):
    """segment:1: each image's row sums class 1's logits over its predicted mask at the image; the
    deletion curve is that sum, the mask held, over the perturbed images' logits; pointing game and
    relevance mass (its positive part's share, and Quantus's signed one when asked) are Quantus's on the mask."""
    quantus = pytest.importorskip("quantus")
    path, x = segmenter
    evaluation, maps = _kept(lambda **k: evaluate(path, x, ["gradient"], output=SegmentRegion(), target=1,
                                                  curve_steps=STEPS, metrics="deletion,relevance_mass_accuracy",
                                                  threads=1, **k))
    session = _session(path)
    logits = session.run(None, {"image": x})[0]
    assert [r["row"] for r in evaluation.records] == ["0 region", "1 region"]
    for record in evaluation.records:
        i = int(record["image"])
        region = logits[i].argmax(axis=0) == 1
        assert record["target"] == 1 and record["region_pixels"] == int(region.sum()) > 0
        assert record["score"] == pytest.approx(float(logits[i, 1][region].sum()), rel=1e-5)
        per_pixel = maps[("gradient", record["row"])].sum(axis=0)
        images = _perturbed(x[i], per_pixel, STEPS, "deletion")
        want = (session.run(None, {"image": images})[0][:, 1] * region).sum(axis=(1, 2))
        np.testing.assert_allclose(record["deletion_curve"], want, rtol=1e-5, atol=1e-5)
        a, s = per_pixel[None, None], region[None, None]
        mass = quantus.RelevanceMassAccuracy(disable_warnings=True).evaluate_batch(a_batch=a, s_batch=s)
        positive = quantus.RelevanceMassAccuracy(abs=False, normalise=False, disable_warnings=True).evaluate_batch(
            a_batch=np.maximum(a, 0), s_batch=s)
        hit = quantus.PointingGame(disable_warnings=True).evaluate_batch(a_batch=a, s_batch=s)
        assert record["relevance_mass_accuracy"] == pytest.approx(float(mass[0]), rel=1e-6)
        assert record["relevance_mass"] == pytest.approx(float(positive[0]), rel=1e-6)
        assert bool(record["pointing_game"]) == bool(hit[0])


def test_picodet_box_deletion_starts_at_the_heads_score(picodet):
    """The real PP-PicoDet layout detector: its top box's deletion curve starts at the box's score
    in the head's own outputs and the random floor deletes it no faster than the gradient."""
    prepared, target, x, boxes, box_score = picodet
    evaluation = evaluate(prepared, x, ["gradient"], output=DetectionBox(top=1), curve_steps=STEPS, threads=1)
    (record,) = evaluation.records
    assert record["deletion_curve"][0] == pytest.approx(box_score(x, boxes[0].index), rel=1e-5)
    assert record["score"] == pytest.approx(boxes[0].score, rel=1e-6)


@pytest.mark.quick
def test_bad_box_and_region_targets_are_refused_in_one_line():
    from onnx_builders import relu_cnn

    x = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(UsageError) as e:
        evaluate(relu_cnn(), x, ["gradient"], output=DetectionBox(), threads=1)
    assert "cannot be read as boxes" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UsageError) as e:
        evaluate(relu_cnn(), x, ["gradient"], output=SegmentRegion(), threads=1)
    assert "not a map" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UsageError, match="a box or region target is scored by"):
        evaluate(_tiny_detector("yolov8"), x, ["gradient"], output=DetectionBox(), metrics="faithfulness_correlation")


@pytest.mark.quick
def test_cli_evaluates_each_box_with_the_box_drawn(tmp_path, capfd):
    """gnl-onnx evaluate --target box:2: one row per box in the CSV, JSON and report, each with its
    overlays (the box drawn, green); no box above the threshold: the note, no rows, exit 0; a model
    without boxes: one line naming its outputs, exit 2, nothing written."""
    from PIL import Image
    from onnx_builders import relu_cnn, run_cli

    model = tmp_path / "detector.onnx"
    onnx.save(_tiny_detector("yolov8"), model)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, size=(16, 16, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "boxes"
    code, stdout, err = run_cli(capfd, "evaluate", model, image, "--target", "box:2", "--methods", "gradient,random",
                                "--curve-steps", STEPS, "--out", out)
    assert code == 0, err
    found = json.loads((out / "evaluation.json").read_text())
    assert [r["row"] for r in found["images"] if r["method"] == "gradient"] == [f"{image} box0", f"{image} box1"]
    summary = {s["method"]: s for s in found["summary"]}
    assert found["config"]["target"] == "box:2" and "pointing_game_mean" in summary["gradient"]
    header = (out / "evaluation.csv").read_text().splitlines()[0].split(",")
    assert header[:6] == ["image", "row", "method", "target", "score", "box"] and "relevance_mass" in header
    page = (out / "report.html").read_text()
    assert "photo.png box1" in page and "pointing_game" in page and "score = " in page
    for name in ("photo.box0.png", "photo.box0.gradient.png", "photo.box1.random.png"):
        picture = np.asarray(Image.open(out / "overlays" / name).convert("RGB"))
        assert (picture == (0, 255, 0)).all(axis=2).any(), name  # the box is drawn
    code, stdout, err = run_cli(capfd, "evaluate", model, image, "--target", "box@1e9", "--methods", "gradient",
                                "--out", tmp_path / "none")
    assert code == 0 and "no box scores above 1e+09" in stdout
    assert json.loads((tmp_path / "none" / "evaluation.json").read_text())["images"] == []
    classifier = tmp_path / "classifier.onnx"
    onnx.save(relu_cnn(), classifier)
    code, stdout, err = run_cli(capfd, "evaluate", classifier, image, "--target", "box", "--methods", "gradient",
                                "--out", tmp_path / "bad")
    (line,) = [text for text in err.splitlines() if "cannot be read as boxes" in text]
    assert code == 2 and "logits [?, 5]" in line
    assert not (tmp_path / "bad").exists()


@pytest.mark.quick
def test_cli_evaluates_a_region_with_its_outline_drawn(segmenter, tmp_path, capfd):
    from PIL import Image
    from onnx_builders import run_cli

    path, x = segmenter
    np.save(tmp_path / "image.npy", x[:1])
    out = tmp_path / "region"
    code, stdout, err = run_cli(capfd, "evaluate", path, tmp_path / "image.npy", "--target", "segment:1",
                                "--methods", "gradient", "--curve-steps", STEPS, "--out", out)
    assert code == 0, err
    (record,) = json.loads((out / "evaluation.json").read_text())["images"]
    assert record["row"].endswith(" region") and record["target"] == 1 and 0 <= record["pointing_game"] <= 1
    picture = np.asarray(Image.open(out / "overlays" / "image.region.gradient.png").convert("RGB"))
    assert (picture == (0, 255, 255)).all(axis=2).any()  # the region's outline


def test_audit_carries_each_boxs_metrics(tmp_path):
    """audit with a box target: one result per kept box and method, keyed "<image id>#box<k>",
    with the same numbers as evaluate gives that box; a second run finds them done."""
    pq = pytest.importorskip("pyarrow.parquet")
    from PIL import Image

    from gnl_onnx.audit import audit
    from gnl_onnx.audit.layout import RESULTS
    from gnl_onnx.images import Preprocessing, load_image

    model = tmp_path / "detector.onnx"
    onnx.save(_tiny_detector("yolov8"), model)
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, size=(16, 16, 3), dtype=np.uint8)).save(
            folder / f"p{k}.png")
    prep = Preprocessing(size=(16, 16), fit="exact")
    options = dict(output=DetectionBox(top=2), curve_steps=STEPS, threads=1, progress=False, steps=8)
    result = audit(str(model), str(folder), tmp_path / "out", prep, ["gradient", "random"], **options)
    table = {(r["image"], r["method"]): r for r in pq.read_table(tmp_path / "out" / RESULTS).to_pylist()}
    assert sorted(i for i, m in table if m == "gradient") == ["p0.png#box0", "p0.png#box1", "p1.png#box0",
                                                              "p1.png#box1"]
    x = np.concatenate([load_image(str(folder / f"p{k}.png"), prep) for k in range(2)])
    want = evaluate(str(model), x, ["gradient"], output=DetectionBox(top=2), curve_steps=STEPS, threads=1, steps=8)
    for record in want.records:
        got = table[(f"p{record['image']}.png#{record['row'].split()[-1]}", "gradient")]
        for name in ("deletion_auc", "insertion_auc", "pointing_game", "relevance_mass"):
            assert got[name] == pytest.approx(record[name], rel=1e-6, nan_ok=True), name
        assert got["target"] == record["target"] and got["score"] == pytest.approx(record["score"], rel=1e-6)
    assert result.evaluation.summaries["gradient"].images == 4 and result.accuracy is None
    np.testing.assert_allclose(table[("p0.png#box0", "gradient")]["box"], want.records[0]["box"], atol=0.01)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "p1.png#box1" in page and "score = " in page
    pictures = sorted((tmp_path / "out" / "overlays").glob("*gradient.png"))
    assert len(pictures) == 4 and all((np.asarray(Image.open(p).convert("RGB")) == (0, 255, 0)).all(axis=2).any()
                                      for p in pictures)  # each box drawn
    again = audit(str(model), str(folder), tmp_path / "out", prep, ["gradient", "random"], **options)
    assert again.computed == 0 and again.reused == 4


def _post_processed(seed=0):
    """_tiny_detector's head with its post-processing in the graph: boxes [N, 64, 4] (x0, y0, x1, y1),
    best_scores [N, 64] (the best class's) and labels [N, 64] (int64), as exported detectors give them."""
    from onnx import helper

    model = _tiny_detector("yolov8", seed)
    g = model.graph
    g.initializer.extend([onnx.numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                          (("s0", [0]), ("s2", [2]), ("s4", [4]), ("s7", [7]), ("ax2", [2]))])
    g.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    g.node.extend([helper.make_node("Transpose", ["head"], ["rows"], perm=[0, 2, 1]),
                   helper.make_node("Slice", ["rows", "s0", "s2", "ax2"], ["centre"]),
                   helper.make_node("Slice", ["rows", "s2", "s4", "ax2"], ["size"]),
                   helper.make_node("Slice", ["rows", "s4", "s7", "ax2"], ["classes"]),
                   helper.make_node("Mul", ["size", "half"], ["half_size"]),
                   helper.make_node("Sub", ["centre", "half_size"], ["low"]),
                   helper.make_node("Add", ["centre", "half_size"], ["high"]),
                   helper.make_node("Concat", ["low", "high"], ["boxes"], axis=2),
                   helper.make_node("ReduceMax", ["classes", "ax2"], ["best_scores"], keepdims=0),
                   helper.make_node("ArgMax", ["classes"], ["labels"], axis=2, keepdims=0)])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, ["N", 64, 4]),
                     helper.make_tensor_value_info("best_scores", onnx.TensorProto.FLOAT, ["N", 64]),
                     helper.make_tensor_value_info("labels", onnx.TensorProto.INT64, ["N", 64])])
    return model


def _match_score(boxes, scores, labels, given, label, threshold=0.5) -> float:
    """FasterRCNNBoxScoreTarget written from pytorch-grad-cam: the best-IoU output box; IoU + its
    score where the IoU is above the threshold and the label is the given one, else 0."""
    low, high = np.maximum(boxes[:, :2], given[:2]), np.minimum(boxes[:, 2:], given[2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    iou = inter / (area + np.prod(given[2:] - given[:2]) - inter)
    best = int(np.argmax(iou))
    return float(iou[best] + scores[best]) if iou[best] > threshold and labels[best] == label else 0.0


@pytest.mark.quick
def test_post_processed_box_tracks_its_best_match_and_zero_once_lost():
    """BoxScoreMatch (post-processing inside the graph): the deletion curve is, per perturbed image,
    IoU + score of the best-IoU output box where it matches (IoU > 0.5, same label), else 0 (the box
    lost), computed in numpy from a bare ONNX Runtime run; the region is the given box."""
    from gnl_onnx.box_targets import BoxScoreMatch

    model = _post_processed()
    x = np.random.default_rng(6).uniform(0, 1, size=(1, 3, 16, 16)).astype(np.float32)
    session = _session(model)
    boxes, scores, labels = session.run(None, {"image": x})
    best = int(np.argmax(scores[0]))
    target = BoxScoreMatch(boxes=[boxes[0, best]], labels=[int(labels[0, best])],
                           names=("boxes", "best_scores", "labels"))
    evaluation, maps = _kept(lambda **k: evaluate(model, x, ["gradient", "random"], output=target, curve_steps=64,
                                                  threads=1, **k))
    given = boxes[0, best].astype(np.float64)
    points = []
    for record in evaluation.records:
        assert record["score"] == pytest.approx(1 + scores[0, best], rel=1e-5)  # IoU 1 with itself
        images = _perturbed(x[0], maps[(record["method"], record["row"])].sum(axis=0), 64, "deletion")
        outputs = session.run(None, {"image": images})
        want = [_match_score(*(np.asarray(o[k], np.float64) for o in outputs), given, labels[0, best])
                for k in range(65)]
        np.testing.assert_allclose(record["deletion_curve"], want, rtol=1e-5, atol=1e-6)
        points += want
    # both cases are met: a moved match (IoU below 1) and the box lost (0)
    assert any(1 < p < 1 + scores[0, best] - 1e-3 for p in points) and 0 in points
    assert record["region_pixels"] == int(box_region(given, (16, 16)).sum())
