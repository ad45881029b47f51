"""Whatever measures a run chooses drive its recommendation, its table's order and its plot, and
the model randomization is one of those measures (a measure of the model: evaluate, audit and
check run it through the registry). The numbers are computed here independently: the Gini index
of |map| by its mean-difference form, Spearman correlations by scipy, the randomized model's maps
by a fresh Explainer."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx_builders import relu_cnn
from onnx_builders import run_cli as cli
from PIL import Image

from gnl_onnx import Explainer
from gnl_onnx.check import ModelChecker
from gnl_onnx.evaluate import evaluate
from gnl_onnx.evaluation import Evaluation, MethodSummary, curve_panels, plot_curves, write_csv
from gnl_onnx.randomize import randomize_layers

METHODS = ["gradient", "input_x_gradient", "ig", "random"]


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """The small CNN, four 12 x 12 photos as PNGs and as the model's input (pixel / 255)."""
    d = tmp_path_factory.mktemp("choice")
    model = relu_cnn(seed=3, hw=12, classes=4)
    onnx.save(model, d / "cnn.onnx")
    pixels = np.random.default_rng(7).integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    (d / "photos").mkdir()
    for k, photo in enumerate(pixels):
        Image.fromarray(photo).save(d / "photos" / f"{k}.png")
    images = (pixels.transpose(0, 3, 1, 2) / 255).astype(np.float32)
    return model, images, d


def gini(attribution) -> float:
    """Gini index of |values|: mean absolute difference of all pairs over twice the mean."""
    a = np.abs(np.asarray(attribution, np.float64)).ravel()
    return float(np.abs(a[:, None] - a[None, :]).mean() / (2 * a.mean()))


def test_a_measure_set_without_deletion_recommends_and_plots(problem, tmp_path):
    model, images, _ = problem
    found = evaluate(model, images, METHODS, steps=2, metrics="sparseness,complexity", threads=1)
    targets = np.array([r["target"] for r in found.records if r["method"] == "gradient"])
    means = {}
    for method in METHODS[:-1]:
        maps = Explainer(model, method=method, steps=2, threads=1).explain(images, targets).attributions
        means[method] = np.mean([gini(a) for a in maps])
        assert found.summaries[method].scores["sparseness"][0] == pytest.approx(means[method], rel=1e-4)
    best = max(means, key=means.get)
    line = found.recommendation()
    assert line.startswith(f"recommendation: {best} is the most concise method")
    assert float(line.split("highest mean sparseness ")[1].split(")")[0]) == pytest.approx(means[best], abs=1e-4)
    rows = [r.split()[0] for r in found.table().splitlines()[2:]]
    assert [m for m in rows if m != "random"] == sorted(means, key=means.get, reverse=True)
    assert "deletion" not in found.table() and "deletion_auc_mean" not in found.summaries[best].as_dict()
    assert "deletion_auc" not in write_csv(found, tmp_path / "e.csv").read_text().splitlines()[0]

    panels = curve_panels(found)
    assert [p.title.split(" ")[0] for p in panels] == ["sparseness", "complexity"]
    for panel, name in zip(panels, ("sparseness", "complexity")):
        assert panel.kind == "bar" and {m: v for m, v, _ in panel.series} == {
            m: s.scores[name][0] for m, s in found.summaries.items()}
    with Image.open(plot_curves(found, tmp_path / "curves.png")) as im:
        assert im.size[0] == 1100 and np.asarray(im.convert("L")).std() > 10  # two panels, drawn


def test_model_randomization_is_a_measure_of_evaluate_audit_and_check(problem, tmp_path, capfd):
    from scipy.stats import spearmanr

    model, images, d = problem
    found = evaluate(model, images, ["gradient", "input_x_gradient", "random"], metrics="randomization", threads=1)
    targets = np.array([r["target"] for r in found.records if r["method"] == "gradient"])
    randomized = randomize_layers(model, ["fc", "conv2"], seed=0)  # the top two weighted layers, output side first
    rho = {}
    for method in ("gradient", "input_x_gradient"):
        before = Explainer(model, method=method, threads=1).explain(images, targets).attributions.sum(axis=1)
        after = Explainer(randomized, method=method, threads=1).explain(images, targets).attributions.sum(axis=1)
        rho[method] = [spearmanr(a.ravel(), b.ravel())[0] for a, b in zip(before, after)]
        mine = [r["randomization"] for r in found.records if r["method"] == method]
        np.testing.assert_allclose(mine, rho[method], atol=1e-6)
    best = min(rho, key=lambda m: np.mean(rho[m]))
    assert found.recommendation().startswith(f"recommendation: {best} is the most weight-sensitive method")
    assert abs(found.summaries["random"].scores["randomization"][0]) < 0.3  # unrelated random maps

    # check: the same measure, the worst image held to its threshold
    result = ModelChecker(model, images, method="gradient", threads=1).run(["randomization"]).results[0]
    assert result.name == "randomization" and result.measures[0].value == pytest.approx(max(rho["gradient"]), abs=1e-6)
    assert result.details["layers"] == ["fc", "conv2"]

    # audit: a column of its Parquet rows and its summary, the same numbers for the same images
    pq = pytest.importorskip("pyarrow.parquet")
    code, _, err = cli(capfd, "audit", d / "cnn.onnx", "--images", d / "photos", "--out", tmp_path / "audit",
                       "--methods", "gradient,random", "--metrics", "randomization", "--size", "12", "12",
                       "--threads", "1")
    assert code == 0, err
    rows = {r["image"].split("/")[-1]: r for r in pq.read_table(tmp_path / "audit" / "results.parquet").to_pylist()
            if r["method"] == "gradient"}
    np.testing.assert_allclose([rows[f"{k}.png"]["randomization"] for k in range(4)], rho["gradient"], atol=1e-5)
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert "randomization_mean" in summary["summary"][0] and "weight-sensitive" in summary["recommendation"]



def test_a_sanity_check_a_random_map_passes_does_not_lead(problem):
    """With a faithfulness measure beside it, the randomization does not choose the method; alone,
    it does, and the line says what it can and cannot tell."""
    model, images, _ = problem
    both = evaluate(model, images, ["gradient", "input_x_gradient"], metrics="randomization,sparseness", threads=1)
    by_gini = max(both.summaries.values(), key=lambda s: s.scores["sparseness"][0]).method
    assert both.lead().name == "sparseness" and both.recommendation().startswith(f"recommendation: {by_gini} ")
    assert "crown" not in both.recommendation()
    alone = Evaluation(both.config, summaries={m: MethodSummary(m, 4, 1, scores={"randomization": v})
                                               for m, v in (("gradient", (0.3, 0.01)), ("ig", (0.1, 0.01)))})
    line = alone.recommendation()
    assert line.startswith("recommendation: ig is the most weight-sensitive method") and "not crown one" in line
