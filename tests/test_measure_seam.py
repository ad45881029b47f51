"""The measure seam: a measure named in --metrics reaches the records, the CSV, the summaries, the
text table, the audit's Parquet rows and summary, and the report without any of them naming it;
the agreement of the measures (each method's rank under each, their rank correlations, the pairs
that disagree). The numbers themselves are held equal to Quantus in tests/test_quantus_measures.py."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from onnx_builders import relu_cnn
from onnx_builders import run_cli as cli
from PIL import Image

from gnl_onnx import scores
from gnl_onnx.errors import UsageError
from gnl_onnx.evaluation import Evaluation, MethodSummary, parse_metrics
from gnl_onnx.measures import MEASURES

EXTRA = "deletion,insertion,faithfulness_correlation,max_sensitivity,sparseness,efficient_mprt"
ARGS = ["--metrics", EXTRA, "--curve-steps", "4", "--steps", "2", "--threads", "1", "--mean", "0.5", "0.4", "0.3",
        "--std", "0.2", "0.25", "0.5"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import onnx

    d = tmp_path_factory.mktemp("seam-inputs")
    onnx.save(relu_cnn(seed=3, hw=12, classes=4), d / "cnn.onnx")
    rng = np.random.default_rng(5)
    (d / "photos").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / "photos" / f"{name}.png")
    return d


def test_evaluate_and_audit_carry_a_named_measure_everywhere(photos, tmp_path, capfd):
    out = tmp_path / "eval"
    code, stdout, err = cli(capfd, "evaluate", photos / "cnn.onnx", "--images", photos / "photos", "--out", out,
                            "--methods", "gradient,input_x_gradient,random", *ARGS)
    assert code == 0, err
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert len(rows) == 9
    report = json.loads((out / "evaluation.json").read_text())
    for s in report["summary"]:  # the summary is the mean of the per-image numbers
        mine = [float(r["sparseness"]) for r in rows if r["method"] == s["method"]]
        assert s["sparseness_mean"] == pytest.approx(np.mean(mine))
        assert s["sparseness_se"] == pytest.approx(np.std(mine, ddof=1) / np.sqrt(3))
        assert np.isfinite(s["faithfulness_correlation_mean"]) and s["max_sensitivity_mean"] > 0
    header = stdout.splitlines()[1]
    assert "faithfulness correlation" in header and "max sensitivity" in header and "sparseness" in header
    ranks = report["agreement"]["ranks"]
    assert set(ranks) == {"deletion", "insertion", "faithfulness_correlation", "max_sensitivity", "sparseness",
                          "efficient_mprt"}
    assert all(sorted(r.values()) == [1, 2, 3] for r in ranks.values())
    assert "ranks by measure" in stdout
    page = (out / "report.html").read_text()
    assert 'id="ranks"' in page and "faithfulness_correlation" in page and "do not flag random" in page

    # the audit: the same measure as a Parquet column and in its summary, no code naming it
    pq = pytest.importorskip("pyarrow.parquet")
    audited = tmp_path / "audit"
    code, stdout, err = cli(capfd, "audit", photos / "cnn.onnx", "--images", photos / "photos", "--out", audited,
                            "--methods", "gradient,input_x_gradient,random", *ARGS)
    assert code == 0, err
    table = pq.read_table(audited / "results.parquet").to_pylist()
    by_key = {(r["method"], r["image"].split("/")[-1].split(".")[0]): r for r in table}
    for r in rows:  # same images: the audit's deterministic numbers are evaluate's (the random draws are
        # seeded by the image's position in evaluate and by its id in an audit, as ROAD's noise)
        a = by_key[(r["method"], r["image"].split("/")[-1].split(".")[0])]
        for k in ("sparseness", "deletion_auc", "efficient_mprt") if r["method"] != "random" else ():  # random
            # maps: seeded alike
            assert a[k] == pytest.approx(float(r[k]), rel=1e-6, abs=1e-9), k
        assert np.isfinite(a["faithfulness_correlation"]) and a["max_sensitivity"] > 0
    summary = json.loads((audited / "summary.json").read_text())
    assert summary["agreement"]["ranks"]["sparseness"] == ranks["sparseness"]  # deterministic for the methods
    assert set(summary["agreement"]["ranks"]) == set(ranks)
    assert "ranks by measure" in (audited / "evaluation.txt").read_text()


def test_default_measures_keep_their_output(photos, tmp_path, capfd):
    out = tmp_path / "eval"
    code, stdout, err = cli(capfd, "evaluate", photos / "cnn.onnx", "--images", photos / "photos", "--out", out,
                            "--methods", "gradient,random", *ARGS[2:])
    assert code == 0, err
    report = json.loads((out / "evaluation.json").read_text())
    assert "agreement" not in report and "ranks by measure" not in stdout
    assert list(csv.DictReader((out / "evaluation.csv").open()))[0].keys() >= {"deletion_auc", "insertion_auc"}
    assert "sparseness" not in (out / "evaluation.csv").read_text()


def test_agreement_names_the_measures_that_disagree():
    def summary(method, deletion, sparse, faithful):
        return MethodSummary(method, 4, 1, deletion, 0.01, 0.5, 0.01, np.zeros(3), np.zeros(3),
                             scores={"sparseness": (sparse, 0.0), "faithfulness_correlation": (faithful, 0.0)})
    ev = Evaluation({"curve_steps": 2, "reduce": "sum", "baseline": "zeros", "deletion_substrate": "zeros",
                     "insertion_substrate": "blur"})
    # deletion (lower better): a > b > c; sparseness (higher better): c > b > a; faithfulness: a > b > c
    for s in (summary("a", 0.1, 0.2, 0.9), summary("b", 0.2, 0.5, 0.5), summary("c", 0.3, 0.8, 0.1)):
        ev.summaries[s.method] = s
    found = ev.agreement()
    assert found["ranks"]["deletion"] == {"a": 1, "b": 2, "c": 3}
    assert found["ranks"]["sparseness"] == {"c": 1, "b": 2, "a": 3}
    assert found["correlations"]["deletion ~ sparseness"] == pytest.approx(-1.0)
    assert found["correlations"]["deletion ~ faithfulness_correlation"] == pytest.approx(1.0)
    assert ["deletion", "sparseness"] in found["disagree"]
    assert ["deletion", "faithfulness_correlation"] not in found["disagree"]
    assert "deletion vs sparseness (-1.00)" in ev.agreement_lines()[-1]


def test_measures_are_opt_in_by_name_and_checked():
    assert parse_metrics("deletion,insertion,sparseness,complexity") == ("deletion", "insertion", "sparseness",
                                                                          "complexity")
    with pytest.raises(UsageError, match="unknown metric 'gini'"):
        parse_metrics("deletion,insertion,gini")
    # every registered measure answers the seam's questions
    for m in MEASURES.values():
        assert m.curve_names and m.columns and callable(m.legend) and callable(m.rank_key)


def test_spearman_and_pearson_match_their_definitions():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(size=20)
    b[:5] = b[5]  # ties: average ranks
    assert scores.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    ranks = lambda v: np.array([np.mean(np.flatnonzero(np.sort(v) == x)) + 1 for x in v])  # noqa: E731
    assert scores.spearman(a, b) == pytest.approx(np.corrcoef(ranks(a), ranks(b))[0, 1])
    assert np.isnan(scores.pearson(a, np.ones(20)))


class CountingScorer:
    """A Scorer that counts the images it runs (each one forward pass)."""

    def __init__(self, scorer):
        self.scorer, self.images = scorer, 0

    def outputs(self, images, softmax, batch_size=16):
        self.images += len(images)
        return self.scorer.outputs(images, softmax, batch_size)


def test_forward_passes_per_image_are_what_the_measures_run(photos):
    from gnl_onnx.measures import forward_passes
    from gnl_onnx.scorer import Scorer

    images = np.random.default_rng(0).uniform(size=(1, 3, 12, 12)).astype(np.float32)
    counting = CountingScorer(Scorer(str(photos / "cnn.onnx"), threads=1))
    explained = []

    def explain(x, targets):  # a one-step method: each noisy copy costs one forward and one backward
        explained.append(len(x))
        return np.ones_like(x)
    cost = forward_passes(steps=1, features=images.size)
    for name in ("faithfulness_correlation", "pixel_flipping", "monotonicity_correlation", "max_sensitivity",
                 "random_logit", "smooth_mprt", "efficient_mprt", "irof"):
        counting.images, explained[:] = 0, []
        context = {"scorer": counting, "image": images, "attribution": images, "target": 0,
                   "rng": np.random.RandomState(0), "explain": explain, "batch_size": 16, "layout": "NCHW",
                   "randomized": lambda: explain}
        MEASURES[name].compute(context)
        if name == "irof":  # one pass per SLIC superpixel and the clean image: about what inspect --cost says
            assert counting.images == len(np.unique(scores.superpixels(images[0]))) + 1
            assert cost[name] / 2 < counting.images < cost[name] * 2
        else:
            assert counting.images + 2 * sum(explained) == cost[name], name
    counting.images = 0  # sufficiency: the predicted class of each image of the set
    MEASURES["sufficiency"].compute({"scorer": counting, "images": np.repeat(images, 3, 0), "batch_size": 16,
                                     "attributions": np.repeat(images, 3, 0), "targets": [0, 0, 0]})
    assert counting.images == 3 * cost["sufficiency"]


def test_inspect_cost_lists_the_measures(photos, capfd):
    code, out, err = cli(capfd, "inspect", photos / "cnn.onnx", "--cost", "--methods", "gradient", "--steps", "4",
                         "--threads", "1")
    assert code == 0, err
    assert "forward passes per image" in out and "faithfulness_correlation" in out
    code, out, err = cli(capfd, "inspect", photos / "cnn.onnx", "--cost", "--methods", "gradient", "--steps", "4",
                         "--threads", "1", "--json")
    cost = json.loads(out)["measure_cost"]
    assert cost["max_sensitivity"] == 10 * 2 * 4 and cost["pixel_flipping"] == 62  # 432 features, 7 a group


LOCAL = "deletion,insertion,pointing_game,relevance_mass_accuracy,relevance_rank_accuracy"


def test_masks_reach_the_localisation_measures(photos, tmp_path, capfd):
    masks = tmp_path / "masks"
    masks.mkdir()
    np.save(masks / "a.npy", np.ones((12, 12)))  # the whole image: every localisation measure gives 1
    half = np.zeros((12, 12), np.uint8)
    half[:, :6] = 255
    Image.fromarray(half).save(masks / "b.png")  # an image mask, matched by the image's stem
    np.save(masks / "c.npy", half > 0)
    out = tmp_path / "eval"
    common = ["evaluate", photos / "cnn.onnx", "--images", photos / "photos", "--methods", "gradient,random",
              *ARGS[2:]]
    code, stdout, err = cli(capfd, *common, "--out", out, "--metrics", LOCAL, "--masks", masks)
    assert code == 0, err
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    for r in rows:
        values = [float(r[k]) for k in ("pointing_game", "relevance_mass_accuracy", "relevance_rank_accuracy")]
        if r["image"].endswith("a.png"):
            assert values == pytest.approx([1.0, 1.0, 1.0])
        else:
            assert values[0] in (0.0, 1.0) and 0 <= values[2] <= 1
    assert "pointing game" in stdout and "ranks by measure" in stdout

    # one clear line and nothing written: a mask of the wrong size, masks without a measure reading them, a
    # localisation measure without masks, and the audit, which takes no masks
    np.save(masks / "c.npy", np.ones((10, 12)))
    for extra, message in ((["--metrics", LOCAL, "--masks", masks], "c.npy: the mask is 10 x 12, the model input "
                                                                    "12 x 12"),
                           (["--masks", masks], "--masks is read by the localisation measures only"),
                           (["--metrics", LOCAL], "need a region mask per image: give --masks")):
        code, stdout, err = cli(capfd, *common, "--out", tmp_path / "not", *extra)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "not").exists()
    pytest.importorskip("pyarrow")
    code, stdout, err = cli(capfd, "audit", photos / "cnn.onnx", "--images", photos / "photos", "--out",
                            tmp_path / "audit", *ARGS[2:], "--metrics", LOCAL)
    assert code != 0 and "audit takes none" in err and not (tmp_path / "audit").exists()


def test_localisation_and_randomisation_measures_in_evaluate(photos):
    """Through evaluate's plumbing each image gets its own mask, the per-pixel map (--reduce), the
    images scored together (sufficiency), and the method on the model randomised by reset_model with
    the run's seed (efficient MPRT): the numbers are the scores.py functions' on what the run kept."""
    from gnl_onnx.evaluate import evaluate
    from gnl_onnx.explainer import Explainer
    from gnl_onnx.pixels import reduce_to_pixels
    from gnl_onnx.randomize import reset_model

    model = str(photos / "cnn.onnx")
    images = np.random.default_rng(1).uniform(size=(3, 3, 12, 12)).astype(np.float32)
    region = np.zeros((3, 12, 12), bool)
    region[0, 2:8, 3:9], region[1, 6:], region[2, :, :4] = True, True, True
    kept = {}
    ev = evaluate(model, images, ["input_x_gradient", "random"], steps=2, curve_steps=2, threads=1, masks=region,
                  metrics=LOCAL + ",sufficiency,efficient_mprt,smooth_mprt,random_logit,irof", seed=3,
                  keep=lambda method, which, a: kept.update({(method, i): a[k] for k, i in enumerate(which)}))
    records = {(r["method"], int(r["image"])): r for r in ev.records}
    again = Explainer(reset_model(model, seed=3), method="input_x_gradient", threads=1)
    predicted = np.array([records[("random", i)]["target"] for i in range(3)])
    for method in ("input_x_gradient", "random"):
        maps = np.stack([kept[(method, i)] for i in range(3)])
        np.testing.assert_allclose([records[(method, i)]["sufficiency"] for i in range(3)],
                                   scores.sufficiency(maps, predicted))
        for i in range(3):
            r = records[(method, i)]
            pixels = reduce_to_pixels(maps[i:i + 1], "NCHW", "sum")[None, None]
            assert r["relevance_mass_accuracy"] == pytest.approx(
                scores.relevance_mass_accuracy(pixels, region[i][None, None])[0])
            assert r["relevance_rank_accuracy"] == pytest.approx(
                scores.relevance_rank_accuracy(pixels, region[i][None, None])[0])
            assert all(np.isfinite(r[k]) for k in ("smooth_mprt", "random_logit", "irof"))
    efficient = scores.efficient_mprt(lambda x, t: again.explain(x, t).attributions, images,
                                      np.stack([kept[("input_x_gradient", i)] for i in range(3)]), predicted)
    np.testing.assert_allclose([records[("input_x_gradient", i)]["efficient_mprt"] for i in range(3)], efficient,
                               rtol=1e-6)
    assert set(ev.agreement()["ranks"]) >= {"pointing_game", "smooth_mprt", "sufficiency"}
