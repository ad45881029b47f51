"""Deletion / insertion metrics, Spearman and cascading randomization (gnl_onnx.metrics), and the
`gnl-onnx evaluate` command, on tiny hand-built ONNX models with known answers (no torch).

The main known answer: for a linear model whose class-0 logit is sum_i c_i (per-pixel
contributions c = w * (x - s) summed over channels, relative to the substrate s), replacing the
pixels with the largest c first leaves the smallest possible logit after every chunk, whatever the
chunk size; the probability is monotone in the logit, so the exact attribution's deletion curve
lies on or under the curve of ANY other pixel order, point by point (and insertion's on or over)."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_builders import make_model, relu_cnn
from onnx_builders import run_cli as cli
from PIL import Image

from gnl_onnx import Explainer, UsageError
from gnl_onnx.baselines import gaussian_blur
from gnl_onnx.evaluate import Evaluation, MethodSummary, evaluate
from gnl_onnx.check import cascading_randomization, randomize_layers, weighted_layers
from gnl_onnx.metrics import (Scorer, auc, chunk_size, deletion_score, insertion_score, make_substrate,
                              perturbation_curve, random_attribution, rankdata, ranking, reduce_to_pixels, spearman)

F32 = np.float32
node = helper.make_node
H = W = 8
C = 3


def linear_model(w: np.ndarray, ending: str | None = None, layout: str = "NCHW", bias: float = 0.0):
    """logits = [w . x + bias, -(w . x + bias)] on the flattened image (so class 0 and class 1 are
    explained by +-w * x exactly); optionally ending in Softmax or LogSoftmax. w: [C, H, W] (NCHW
    order); for NHWC the same weights are transposed so both models compute the same function of
    the same picture."""
    flat = w.transpose(1, 2, 0).ravel() if layout == "NHWC" else w.ravel()
    shape = ["N", C, H, W] if layout == "NCHW" else ["N", H, W, C]
    nodes = [node("Flatten", ["image"], ["flat"], name="flatten"),
             node("Gemm", ["flat", "weights", "bias"], ["logits"], transB=1, name="fc")]
    out = "logits"
    if ending:
        nodes.append(node(ending, ["logits"], ["probs"], axis=1, name="end"))
        out = "probs"
    inits = {"weights": np.stack([flat, -flat]).astype(F32), "bias": np.array([bias, -bias], F32)}
    return make_model(nodes, [("image", F32, shape)], [(out, F32, ["N", 2])], inits)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(42)
    w = rng.normal(size=(C, H, W)).astype(F32) * 0.3
    image = rng.normal(size=(1, C, H, W)).astype(F32)
    return w, image, Scorer(linear_model(w))


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------ small pieces
def test_auc_known_values():
    assert auc(np.full(29, 0.37)) == pytest.approx(0.37, abs=1e-15)  # a constant curve: the constant
    assert auc(np.linspace(0, 1, 11)) == pytest.approx(0.5, abs=1e-15)
    assert auc([1, 0, 0, 0, 0]) == pytest.approx(0.5 / 4, abs=1e-15)  # one triangle of width 1/4
    curve = np.random.default_rng(0).random(17)
    x = np.linspace(0, 1, 17)
    reference = float(np.sum((curve[1:] + curve[:-1]) / 2 * np.diff(x)))  # trapezoids, one by one
    assert auc(curve) == pytest.approx(reference, rel=1e-12)
    with pytest.raises(UsageError):
        auc([0.5])


def test_ranking_orders_by_score_and_breaks_ties_by_position():
    scores = np.array([[1.0, 3.0, 1.0], [3.0, -2.0, 1.0]])
    assert ranking(scores).tolist() == [1, 3, 0, 2, 5, 4]
    assert ranking(-scores).tolist() == [4, 0, 2, 5, 1, 3]
    with pytest.raises(UsageError):
        ranking([1.0, np.nan])


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_reduce_to_pixels(layout):
    a = np.random.default_rng(1).normal(size=(1, C, 5, 7))
    given = a if layout == "NCHW" else a.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(reduce_to_pixels(given, layout, "sum"), a[0].sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(reduce_to_pixels(given, layout, "abs_sum"), np.abs(a[0]).sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(reduce_to_pixels(given, None, "sum"), a[0].sum(axis=0), rtol=1e-12)  # guessed
    with pytest.raises(UsageError):
        reduce_to_pixels(given, layout, "max")


def test_substrates():
    image = np.random.default_rng(2).normal(size=(1, C, H, W)).astype(F32)
    assert np.all(make_substrate("zeros", image) == 0)
    mean = make_substrate("mean", image)
    np.testing.assert_allclose(mean[0, :, 3, 4], image[0].mean(axis=(1, 2)), rtol=1e-5)
    assert np.ptp(mean[0], axis=(1, 2)).max() == 0
    np.testing.assert_array_equal(make_substrate("blur", image), gaussian_blur(image))
    np.testing.assert_array_equal(make_substrate(np.full((1, C, 1, 1), 2.0), image), np.full(image.shape, 2.0, F32))
    with pytest.raises(UsageError):
        make_substrate("grey", image)


def test_random_attribution_is_seeded():
    a, b = random_attribution((1, C, H, W), 3), random_attribution((1, C, H, W), 3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, C, H, W) and not np.array_equal(a, random_attribution((1, C, H, W), 4))


@pytest.mark.parametrize("ending", [None, "Softmax", "LogSoftmax"])
def test_scorer_turns_any_ending_into_probabilities(ending):
    w = np.random.default_rng(3).normal(size=(C, H, W)).astype(F32) * 0.1
    x = np.random.default_rng(4).normal(size=(5, C, H, W)).astype(F32)
    z = np.einsum("nchw,chw->n", x.astype(np.float64), w.astype(np.float64)) + 0.25
    expected = softmax(np.stack([z, -z], axis=1))
    got = Scorer(linear_model(w, ending, bias=0.25)).probabilities(x, batch_size=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # float32 model, float64 reference


def test_scorer_with_a_convolutional_head():
    """Logits shaped [N, classes, 1, 1]: the probabilities are over the classes, not the last axis."""
    w = np.random.default_rng(18).normal(size=(4, C, 1, 1)).astype(F32)
    model = make_model([node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1], name="head")],
                       [("x", F32, ["N", C, 1, 1])], [("y", F32, ["N", 4, 1, 1])], {"w": w})
    x = np.random.default_rng(19).normal(size=(2, C, 1, 1)).astype(F32)
    expected = softmax(np.einsum("kc,nc->nk", w[:, :, 0, 0].astype(np.float64), x[:, :, 0, 0].astype(np.float64)))
    np.testing.assert_allclose(Scorer(model).probabilities(x), expected, rtol=1e-5)


# ------------------------------------------------------------------------------ curves
def test_chunks_and_end_points():
    """A counting model: w = 0.01 everywhere, image all ones, substrate zeros, so the logit
    difference is 0.02 * C * (pixels left) and the probability gives back the number of pixels left
    at each point (small logits keep p away from 1, where float32 would blur the count)."""
    scale = 0.01
    scorer = Scorer(linear_model(np.full((C, H, W), scale, F32)))
    image = np.ones((1, C, H, W), F32)
    order = np.random.default_rng(5).permutation(H * W)
    steps = 28
    chunk = chunk_size(H * W, steps)
    assert chunk == 3  # ceil(64 / 28)
    for mode in ("deletion", "insertion"):
        curve = perturbation_curve(scorer, image, order, "zeros", steps, mode, target=0)
        assert curve.shape == (steps + 1,)
        left = np.log(curve / (1 - curve)) / (2 * scale * C)
        changed = np.minimum(np.arange(steps + 1) * chunk, H * W)
        expected = H * W - changed if mode == "deletion" else changed
        np.testing.assert_array_equal(np.rint(left), expected)
        np.testing.assert_allclose(left, expected, atol=1e-3)
    assert chunk_size(224 * 224, 28) == 224 * 8  # RISE's step on ImageNet


def test_first_and_last_points(problem):
    _, image, scorer = problem
    blur = gaussian_blur(image)
    order = np.random.default_rng(6).permutation(H * W)
    deletion = perturbation_curve(scorer, image, order, "blur", 28, "deletion", target=1)
    insertion = perturbation_curve(scorer, image, order, "blur", 28, "insertion", target=1)
    p_image, p_blur = scorer(image, 1)[0], scorer(blur, 1)[0]
    assert deletion[0] == pytest.approx(p_image, rel=1e-6) and insertion[-1] == pytest.approx(p_image, rel=1e-6)
    assert deletion[-1] == pytest.approx(p_blur, rel=1e-6) and insertion[0] == pytest.approx(p_blur, rel=1e-6)
    assert p_image != pytest.approx(p_blur, rel=1e-3)  # the check above can tell them apart


def test_deletion_and_insertion_mirror_each_other(problem):
    """Deleting in order o toward S passes through the same images as inserting into S in reversed
    order, backwards, when the steps divide the pixel count (64 pixels, 16 steps)."""
    _, image, scorer = problem
    substrate = np.random.default_rng(7).normal(size=image.shape).astype(F32)
    order = np.random.default_rng(8).permutation(H * W)
    deletion = perturbation_curve(scorer, image, order, substrate, 16, "deletion", target=0)
    insertion = perturbation_curve(scorer, image, order[::-1], substrate, 16, "insertion", target=0)
    np.testing.assert_allclose(deletion, insertion[::-1], rtol=1e-6)
    assert np.ptp(deletion) > 0.1  # a curve that moves, so the mirror is not trivially flat


def test_batch_size_does_not_change_the_curve():
    model = relu_cnn()
    image = np.random.default_rng(9).normal(size=(1, 3, 16, 16)).astype(F32)
    scorer = Scorer(model)
    order = ranking(np.random.default_rng(10).normal(size=(16, 16)))
    curves = [perturbation_curve(scorer, image, order, "blur", 28, mode, batch_size=b)
              for mode in ("deletion", "insertion") for b in (1, 4, 29, 64)]
    # the same images whatever the batching; rtol 1e-6 only allows ONNX Runtime to pick another
    # kernel (summation order) for another batch size
    for k in (1, 2, 3):
        np.testing.assert_allclose(curves[k], curves[0], rtol=1e-6)
        np.testing.assert_allclose(curves[4 + k], curves[4], rtol=1e-6)


def test_layouts_give_the_same_curve(problem):
    w, image, scorer = problem
    nhwc = Scorer(linear_model(w, layout="NHWC"))
    order = np.random.default_rng(11).permutation(H * W)
    for mode, substrate in (("deletion", "zeros"), ("insertion", "blur"), ("deletion", "mean")):
        a = perturbation_curve(scorer, image, order, substrate, 28, mode)
        b = perturbation_curve(nhwc, image.transpose(0, 2, 3, 1), order, substrate, 28, mode)
        np.testing.assert_allclose(a, b, rtol=1e-5)


def test_exact_attribution_beats_its_reverse_and_random_orders(problem):
    w, image, scorer = problem
    exact = w[None] * image  # class 0 contributions against the zeros substrate
    best_auc, best = deletion_score(scorer, image, exact, "zeros", target=0)
    worst_auc, worst = deletion_score(scorer, image, -exact, "zeros", target=0)
    assert best_auc < worst_auc - 0.1
    for seed in range(20):
        other_auc, other = deletion_score(scorer, image, random_attribution(image.shape, seed), "zeros", target=0)
        assert np.all(best <= other + 1e-6) and np.all(other <= worst + 1e-6)  # pointwise, see module doc
        assert best_auc < other_auc < worst_auc
    blur = gaussian_blur(image)
    exact_in = w[None] * (image - blur)  # contributions against the blurred substrate
    best_auc, best = insertion_score(scorer, image, exact_in, "blur", target=0)
    worst_auc, worst = insertion_score(scorer, image, -exact_in, "blur", target=0)
    assert best_auc > worst_auc + 0.1
    for seed in range(20):
        other_auc, other = insertion_score(scorer, image, random_attribution(image.shape, seed), "blur", target=0)
        assert np.all(best >= other - 1e-6) and np.all(other >= worst - 1e-6)
        assert best_auc > other_auc > worst_auc


def test_scores_are_the_auc_of_the_ranked_curve(problem):
    _, image, scorer = problem
    a = random_attribution(image.shape, 12)
    for score, mode, substrate in ((deletion_score, "deletion", "zeros"), (insertion_score, "insertion", "blur")):
        value, curve = score(scorer, image, a, how="abs_sum")
        expected = perturbation_curve(scorer, image, ranking(np.abs(a[0]).sum(axis=0)), substrate, 28, mode)
        np.testing.assert_array_equal(curve, expected)
        assert value == auc(expected)


def test_explainer_input_x_gradient_is_the_optimal_deletion_order(problem):
    """End to end through the engine: on a linear model input x gradient is the exact
    contribution, so its deletion AUC is the optimum (computed from the weights)."""
    w, image, scorer = problem
    attribution = Explainer(linear_model(w), method="input_x_gradient").explain(image, 0).attributions
    np.testing.assert_allclose(attribution, w[None] * image, rtol=1e-5, atol=1e-6)
    assert deletion_score(scorer, image, attribution, target=0)[0] == pytest.approx(
        deletion_score(scorer, image, w[None] * image, target=0)[0], abs=1e-7)


def test_curve_usage_errors(problem):
    _, image, scorer = problem
    order = np.arange(H * W)
    with pytest.raises(UsageError, match="permutation"):
        perturbation_curve(scorer, image, order[:-1], "zeros")
    with pytest.raises(UsageError, match="permutation"):
        perturbation_curve(scorer, image, np.zeros(H * W, int), "zeros")
    with pytest.raises(UsageError, match="mode"):
        perturbation_curve(scorer, image, order, "zeros", mode="removal")
    with pytest.raises(UsageError, match="steps"):
        perturbation_curve(scorer, image, order, "zeros", steps=0)
    with pytest.raises(UsageError, match="out of range"):
        perturbation_curve(scorer, image, order, "zeros", target=2)


# ------------------------------------------------------------------------------ Spearman
def test_rankdata_averages_ties():
    np.testing.assert_array_equal(rankdata([10, 20, 20, 5, 20]), [2, 4, 4, 1, 4])
    np.testing.assert_array_equal(rankdata([[3.0, 1.0], [3.0, 1.0]]), [3.5, 1.5, 3.5, 1.5])


def test_spearman_known_values():
    # no ties: 1 - 6 sum d^2 / (n (n^2 - 1))
    a, b = [1, 2, 3, 4, 5], [5, 6, 7, 8, 7.5]
    d = np.array([1, 2, 3, 4, 5]) - np.array([1, 2, 3, 5, 4])
    assert spearman(a, b) == pytest.approx(1 - 6 * np.sum(d ** 2) / (5 * 24), abs=1e-12)
    # ties, by hand: ranks x = [1, 2.5, 2.5, 4], y = [3.5, 3.5, 1, 2]
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([3.5, 3.5, 1, 2])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    expected = (rx @ ry) / math.sqrt((rx @ rx) * (ry @ ry))
    assert expected == pytest.approx(-0.5, abs=1e-15)  # -2.25 / sqrt(4.5 * 4.5)
    assert spearman([1, 2, 2, 3], [4, 4, 1, 2]) == pytest.approx(expected, abs=1e-12)
    assert spearman(np.arange(10), np.exp(np.arange(10))) == pytest.approx(1.0, abs=1e-15)  # monotone
    assert spearman(np.arange(10), -np.arange(10) ** 3) == pytest.approx(-1.0, abs=1e-15)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # undefined for a constant map


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")  # an independent reference; gnl_onnx itself has no scipy
    rng = np.random.default_rng(13)
    for _ in range(5):
        a, b = rng.integers(0, 6, 200), rng.integers(0, 6, 200) + rng.integers(0, 2, 200)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


# ------------------------------------------------------------------------------ randomization
def test_weighted_layers_and_randomize_layers():
    model = relu_cnn()
    assert [(layer["name"], layer["op"]) for layer in weighted_layers(model)] == [
        ("fc", "Gemm"), ("conv2", "Conv"), ("conv1", "Conv")]
    before = {t.name: onnx.numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    randomized = randomize_layers(model, ["fc", "conv2"], seed=1)
    after = {t.name: onnx.numpy_helper.to_array(t) for t in randomized.graph.initializer}
    for name in ("w3", "b3", "w2", "b2"):
        assert after[name].shape == before[name].shape and not np.allclose(after[name], before[name])
        # the same spread, so activations keep their scale (std of the redrawn tensor, loosely)
        assert 0.3 < after[name].std() / before[name].std() < 3
    for name in ("w1", "b1"):
        np.testing.assert_array_equal(after[name], before[name])
    for t in model.graph.initializer:  # the caller's model is untouched
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(t), before[t.name])
    again = randomize_layers(model, ["fc"], seed=1)  # a layer's draw does not depend on the others
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(next(t for t in again.graph.initializer
                                                                  if t.name == "w3")), after["w3"])
    with pytest.raises(UsageError, match="conv9"):
        randomize_layers(model, ["conv9"])


def test_randomize_finds_matmul_add_bias_and_skips_activation_products():
    rng = np.random.default_rng(14)
    nodes = [node("MatMul", ["x", "w"], ["m"], name="dense"), node("Add", ["m", "b"], ["y"], name="bias"),
             node("Transpose", ["y"], ["yt"], name="t"), node("MatMul", ["y", "yt"], ["z"], name="gram")]
    model = make_model(nodes, [("x", F32, [4, 3])], [("z", F32, [4, 4])],
                       {"w": rng.normal(size=(3, 4)).astype(F32), "b": rng.normal(size=4).astype(F32)})
    layers = weighted_layers(model)
    assert [layer["name"] for layer in layers] == ["dense"]
    assert sorted(c.name for c in layers[0]["constants"]) == ["b", "w"]


def test_cascading_randomization_of_a_relu_cnn():
    model = relu_cnn()
    images = np.random.default_rng(15).normal(size=(3, 3, 16, 16)).astype(F32)
    result = cascading_randomization(model, images, "gradient", seed=0)
    assert [s.layer for s in result.steps] == [None, "fc", "conv2", "conv1"]
    assert result.steps[-1].randomized == ["fc", "conv2", "conv1"]
    # step 0 explains an unrandomized copy: the same maps exactly
    np.testing.assert_array_equal(result.steps[0].spearman_abs, 1.0)
    np.testing.assert_array_equal(result.steps[0].spearman_signed, 1.0)
    # everything randomized: the gradient no longer resembles the original (observed 0.0 to 0.2)
    assert np.all(result.steps[-1].spearman_abs < 0.5) and np.all(np.abs(result.steps[-1].spearman_signed) < 0.5)
    # the explained class is the original model's top-1 at every step
    np.testing.assert_array_equal(result.target, softmax(Scorer(model).probabilities(images)).argmax(axis=1))
    only = cascading_randomization(model, images[:1], "gradient", layers=["conv1"], keep_attributions=True)
    assert [s.layer for s in only.steps] == [None, "conv1"] and only.steps[1].attributions.shape == (1, 3, 16, 16)
    assert only.steps[1].spearman_abs[0] < 0.9


# ------------------------------------------------------------------------------ evaluate
def summary(method, deletion, se, n=10):
    flat = np.zeros(3)
    return MethodSummary(method, n, 1, deletion, se, 0.5, se, flat, flat)


def test_recommendation_line():
    e = Evaluation({}, summaries={s.method: s for s in (summary("ig", 0.20, 0.01), summary("gnl_ig", 0.10, 0.01),
                                                         summary("random", 0.30, 0.01))})
    line = e.recommendation()
    assert line.startswith("recommendation: gnl_ig") and "over ig" in line and "0.1000" in line
    assert "exceeds their combined standard errors (0.0141)" in line
    e = Evaluation({}, summaries={s.method: s for s in (summary("ig", 0.12, 0.02), summary("gnl_ig", 0.10, 0.02))})
    assert "does not exceed" in e.recommendation()
    e = Evaluation({}, summaries={s.method: s for s in (summary("ig", 0.40, 0.01), summary("random", 0.30, 0.01))})
    line = e.recommendation()
    assert "over random" in line and "margin" in line and "-0.1000" in line
    e = Evaluation({}, summaries={s.method: s for s in (summary("ig", 0.40, 0.01), summary("gnl_ig", 0.45, 0.01),
                                                         summary("random", 0.30, 0.01))})
    assert "does not beat the random floor (0.3000)" in e.recommendation()
    nan = float("nan")
    e = Evaluation({}, summaries={"ig": summary("ig", 0.1, nan, 1), "gnl_ig": summary("gnl_ig", 0.2, nan, 1)})
    assert "single image" in e.recommendation()


def test_evaluate_api_on_the_linear_model(problem):
    """input_x_gradient is the exact contribution of a linear model against the zeros substrate:
    no order deletes better, so it has the lowest deletion AUC on every image."""
    w, _, _ = problem
    images = np.random.default_rng(16).normal(size=(3, C, H, W)).astype(F32)
    result = evaluate(linear_model(w), images, ["gradient", "input_x_gradient", "random"], curve_steps=16)
    by = {(r["image"], r["method"]): r for r in result.records}
    for i in map(str, range(3)):
        others = min(by[i, m]["deletion_auc"] for m in ("gradient", "random"))
        assert by[i, "input_x_gradient"]["deletion_auc"] <= others
        assert len(by[i, "random"]["deletion_curve"]) == 17
    assert result.recommendation().startswith("recommendation: input_x_gradient")
    s = result.summaries["input_x_gradient"]
    aucs = [by[i, "input_x_gradient"]["deletion_auc"] for i in map(str, range(3))]
    assert s.deletion == pytest.approx(np.mean(aucs))
    assert s.deletion_se == pytest.approx(np.std(aucs, ddof=1) / math.sqrt(3))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate-inputs")
    w = np.random.default_rng(42).normal(size=(C, H, W)).astype(F32) * 0.3
    onnx.save(linear_model(w), d / "linear.onnx")
    rng = np.random.default_rng(17)
    (d / "photos").mkdir()
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(d / "photos" / "a.png")
    Image.fromarray(rng.integers(0, 256, (9, 8, 3), dtype=np.uint8)).save(d / "photos" / "b.png")
    return d


PREP = ["--size", str(H), str(W)]  # resize to exactly 8 x 8


def test_evaluate_command_end_to_end(files, tmp_path, capfd):
    out = tmp_path / "eval"
    args = ["evaluate", files / "linear.onnx", files / "photos" / "a.png", "--images", files / "photos", "--out", out,
            "--methods", "gradient,input_x_gradient,ig,random", "--steps", "4", "--curve-steps", "16", *PREP]
    code, stdout, err = cli(capfd, *args)
    assert code == 0, err
    names = ["evaluation.csv", "evaluation.json", "evaluation.txt", "evaluation_curves.png", "overlays", "report.html"]
    assert sorted(p.name for p in out.iterdir()) == names  # no temporary files left behind
    # the report's pictures: each image (a.png twice: a, a-2) and each method's overlay of it
    stems = ["a", "a-2", "b"]
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == sorted([f"{s}.png" for s in stems] + [f"{s}.{m}.png" for s in stems
                                                             for m in ("gradient", "input_x_gradient", "ig", "random")])
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert len(rows) == 3 * 4  # a.png named and found in the folder, b.png: 3 images x 4 methods
    report = json.loads((out / "evaluation.json").read_text())
    means = {s["method"]: s["deletion_auc_mean"] for s in report["summary"]}
    for s in report["summary"]:
        rows_of = [float(r["deletion_auc"]) for r in rows if r["method"] == s["method"]]
        assert s["images"] == 3 and s["deletion_auc_mean"] == pytest.approx(np.mean(rows_of))
        assert len(s["deletion_curve_mean"]) == 17
    best = min((m for m in means if m != "random"), key=means.get)
    # linear model, zeros substrate: input_x_gradient (and ig from a zeros baseline, the same map
    # up to quadrature) are the optimal order
    assert best in ("input_x_gradient", "ig")
    assert means["input_x_gradient"] < means["gradient"] and means["input_x_gradient"] < means["random"]
    lines = stdout.splitlines()
    assert lines[-1].startswith(f"recommendation: {best} ") and report["recommendation"] == lines[-1]
    assert any(line.startswith("random") and "±" in line for line in lines)
    assert (out / "evaluation.txt").read_text().strip().endswith(lines[-1])
    with Image.open(out / "evaluation_curves.png") as im:
        assert im.size[0] > 400 and im.size[1] > 200

    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = cli(capfd, *args)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # the overlays alone are protected too
    for p in out.iterdir():
        if p.is_file():
            p.unlink()
    code, _, err = cli(capfd, *args)
    assert code == 2 and "overlays" in err and "--overwrite" in err
    code, _, err = cli(capfd, *args, "--overwrite")
    assert code == 0, err


def test_evaluate_command_usage_errors(files, tmp_path, capfd):
    out = tmp_path / "eval"
    base = ["evaluate", files / "linear.onnx", "--images", files / "photos", "--out", out, *PREP]
    code, _, err = cli(capfd, *base, "--methods", "gradient,lime")
    assert code == 2 and "lime" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capfd, "evaluate", files / "linear.onnx", "--out", out, *PREP)
    assert code == 2 and "no images" in err
    code, _, err = cli(capfd, *base, "--methods", "gradient", "--curve-steps", "0")
    assert code == 2 and "curve steps" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


def test_evaluate_command_skips_unreadable_images(files, tmp_path, capfd):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    code, stdout, err = cli(capfd, "evaluate", files / "linear.onnx", files / "photos" / "a.png", bad,
                            "--out", tmp_path / "eval", "--methods", "gradient,random", "--curve-steps", "8", *PREP)
    assert code == 1, err
    assert "skipped" in stdout and "broken.png" in stdout
    assert "single image" in stdout.splitlines()[-1]
