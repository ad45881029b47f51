"""ROAD (gnl_onnx.road): the noisy linear imputer against a dense solve of the same equations
written out pixel by pixel, known answers (constants stay constant, a linear ramp is reproduced
away from the borders, the maximum principle), the noise's statistics and seeding, the curves on a
tiny CNN against imputing and scoring by hand, and ROAD through evaluate, audit and the CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from onnx_builders import relu_cnn
from onnx_builders import run_cli as cli
from PIL import Image

from gnl_onnx import UsageError
from gnl_onnx.metrics import Scorer, ranking
from gnl_onnx.road import (FRACTIONS, NEIGHBOURS, auc, check_fractions, impute, noise_field, removal_masks,
                           road_curve, road_score, span_of)

F32 = np.float32


def dense_imputation(chw: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The definition, written out: every removed pixel equals the weighted mean of its in-image
    neighbours (1/6 direct, 1/12 diagonal, renormalized), removed neighbours being unknowns too; one
    dense system per channel, solved by numpy."""
    c, h, w = chw.shape
    unknowns = [(y, x) for y in range(h) for x in range(w) if removed[y, x]]
    index = {p: i for i, p in enumerate(unknowns)}
    out = chw.astype(np.float64).copy()
    for channel in range(c):
        a = np.zeros((len(unknowns), len(unknowns)))
        b = np.zeros(len(unknowns))
        for i, (y, x) in enumerate(unknowns):
            total = 0.0
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if (dy, dx) == (0, 0) or not (0 <= y + dy < h and 0 <= x + dx < w):
                        continue
                    weight = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
                    total += weight
                    if removed[y + dy, x + dx]:
                        a[i, index[(y + dy, x + dx)]] -= weight
                    else:
                        b[i] += weight * chw[channel, y + dy, x + dx]
            a[i, i] += total
        solution = np.linalg.solve(a, b)
        for i, (y, x) in enumerate(unknowns):
            out[channel, y, x] = solution[i]
    return out


def masks(h: int = 7, w: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    m = {name: np.zeros((h, w), bool) for name in ("one", "corners", "borders", "block", "surrounded", "all_but_one")}
    m["one"][3, 4] = True
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        m["corners"][y, x] = True
    m["borders"][0, :] = m["borders"][:, -1] = True  # a whole edge row and column
    m["block"][1:6, 2:8] = True  # a region removed whole: its inner pixels have no kept neighbour
    m["surrounded"][2:5, 3:6] = True  # the centre pixel's 8 neighbours are all removed
    m["all_but_one"][:] = True
    m["all_but_one"][h - 1, 0] = False
    m["random_30"] = rng.random((h, w)) < 0.3
    m["random_80"] = rng.random((h, w)) < 0.8
    return m


@pytest.mark.parametrize("name", list(masks()))
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_imputer_matches_a_dense_solve(name, layout):
    removed = masks()[name]
    rng = np.random.default_rng(0)
    chw = rng.normal(size=(3,) + removed.shape).astype(F32)
    image = chw[None] if layout == "NCHW" else np.moveaxis(chw, 0, -1)[None]
    got = impute(image, removed, noise=0, layout=layout)
    got = got[0] if layout == "NCHW" else np.moveaxis(got[0], -1, 0)
    want = dense_imputation(chw, removed)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(got[:, ~removed], chw[:, ~removed])  # kept pixels untouched, bit for bit


def test_the_weights():
    assert len(NEIGHBOURS) == 8
    assert sum(w for *_, w in NEIGHBOURS) == pytest.approx(1.0)
    assert sorted(w for *_, w in NEIGHBOURS) == pytest.approx([1 / 12] * 4 + [1 / 6] * 4)
    assert all(w == pytest.approx(1 / 6) for dy, dx, w in NEIGHBOURS if 0 in (dy, dx))


def test_a_single_removed_pixel_is_the_weighted_mean_of_its_neighbours():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 2, 5, 5)).astype(F32)
    removed = np.zeros((5, 5), bool)
    removed[2, 2] = removed[0, 0] = True
    got = impute(image, removed, noise=0)
    p = image[0].astype(np.float64)
    direct = p[:, 1, 2] + p[:, 3, 2] + p[:, 2, 1] + p[:, 2, 3]
    diagonal = p[:, 1, 1] + p[:, 1, 3] + p[:, 3, 1] + p[:, 3, 3]
    np.testing.assert_allclose(got[0, :, 2, 2], direct / 6 + diagonal / 12, rtol=1e-6)
    # the corner has 3 neighbours in the image: weights 1/6, 1/6, 1/12 renormalized by 5/12
    corner = (p[:, 0, 1] / 6 + p[:, 1, 0] / 6 + p[:, 1, 1] / 12) / (5 / 12)
    np.testing.assert_allclose(got[0, :, 0, 0], corner, rtol=1e-6)


@pytest.mark.parametrize("name", list(masks()))
def test_a_constant_image_stays_constant(name):
    image = np.full((1, 3, 7, 9), 0.0, F32) + np.array([0.25, -1.5, 3.0], F32)[None, :, None, None]
    np.testing.assert_allclose(impute(image, masks()[name], noise=0), image, rtol=0, atol=1e-6)


def test_a_linear_ramp_is_reproduced_where_no_removed_pixel_touches_the_border():
    """Symmetric weights: the weighted mean of a linear function's 8 neighbours is its value at the
    centre, so the ramp solves every equation of an interior pixel and, the solution being unique,
    is the imputation. At the border the neighbours are one-sided and the ramp is not reproduced."""
    h, w = 9, 11
    yy, xx = np.mgrid[:h, :w]
    ramp = np.stack([0.3 * yy - 0.7 * xx + 2, 1.1 * xx + 0.2 * yy, -yy.astype(float)]).astype(F32)[None]
    interior = np.zeros((h, w), bool)
    interior[1:-1, 1:-1] = np.random.default_rng(2).random((h - 2, w - 2)) < 0.7
    interior[2:7, 3:9] = True  # and a solid block
    np.testing.assert_allclose(impute(ramp, interior, noise=0), ramp, rtol=0, atol=2e-5)
    border = np.zeros((h, w), bool)
    border[0, 4] = True
    got = impute(ramp, border, noise=0)
    assert np.abs(got - ramp).max() > 0.05  # one-sided neighbours: the ramp's slope is lost


def test_maximum_principle():
    """Noise-free imputed values are convex combinations of kept values: within their range."""
    rng = np.random.default_rng(4)
    image = rng.normal(size=(1, 3, 16, 16)).astype(F32)
    for removed in (rng.random((16, 16)) < 0.9, masks(16, 16)["block"]):
        got = impute(image, removed, noise=0)[0]
        for c in range(3):
            kept = image[0, c][~removed]
            assert kept.min() - 1e-6 <= got[c][removed].min() and got[c][removed].max() <= kept.max() + 1e-6


def test_nothing_removed_and_everything_removed():
    image = np.random.default_rng(5).normal(size=(1, 3, 4, 4)).astype(F32)
    np.testing.assert_array_equal(impute(image, np.zeros((4, 4), bool)), image)
    with pytest.raises(UsageError, match="nothing to impute from"):
        impute(image, np.ones((4, 4), bool))
    with pytest.raises(UsageError, match="does not match"):
        impute(image, np.zeros((4, 5), bool))


def test_noise_statistics_scale_and_seeding():
    rng = np.random.default_rng(6)
    image = rng.random((1, 3, 64, 64)).astype(F32)
    removed = rng.random((64, 64)) < 0.5
    exact = impute(image, removed, noise=0)
    span = np.array([1.0, 2.0, 4.0], F32).reshape(1, 3, 1, 1)
    noisy = impute(image, removed, noise=0.01, span=span, seed=7, key=11)
    np.testing.assert_array_equal(noisy[0][:, ~removed], image[0][:, ~removed])  # only imputed pixels move
    z = (noisy - exact)[0][:, removed] / (0.01 * span.reshape(3, 1))
    assert z.shape[1] > 1500
    assert np.all(np.abs(z.mean(axis=1)) < 4 / np.sqrt(z.shape[1]))  # N(0, 1), four standard errors
    assert np.all(np.abs(z.std(axis=1) - 1) < 0.06)
    np.testing.assert_array_equal(noisy, impute(image, removed, noise=0.01, span=span, seed=7, key=11))
    assert not np.array_equal(noisy, impute(image, removed, noise=0.01, span=span, seed=7, key=12))
    assert not np.array_equal(noisy, impute(image, removed, noise=0.01, span=span, seed=8, key=11))
    # the same field whatever the mask: the noise at a pixel is (seed, key)'s field there
    field = noise_field(image.shape, 7, 11)
    np.testing.assert_allclose((noisy - exact)[0][:, removed], (0.01 * span * field)[0][:, removed], atol=1e-6)
    # the noise stream is not the random floor's (metrics.random_attribution seeds by (seed, key))
    from gnl_onnx.metrics import random_attribution

    assert np.abs(np.corrcoef(field.ravel(), random_attribution(image.shape, (7, 11)).ravel())[0, 1]) < 0.05


def test_span_of_a_preprocessing_is_the_pixel_range_in_model_space():
    from gnl_onnx.presets import PRESETS

    prep = PRESETS["imagenet"].preprocessing
    white = prep.black() + span_of(prep)  # pixel 255 in the model's space
    np.testing.assert_allclose(white.ravel(), (1 - np.array(prep.mean)) / np.array(prep.std), rtol=1e-6)


def test_removal_masks_and_fractions():
    order = ranking(np.arange(20.0)[::-1].reshape(4, 5))  # pixel 0 most relevant, 19 least
    morf = removal_masks(order, (4, 5), (0.0, 0.1, 0.5), "morf").reshape(3, -1)
    lerf = removal_masks(order, (4, 5), (0.0, 0.1, 0.5), "lerf").reshape(3, -1)
    assert morf.sum(axis=1).tolist() == lerf.sum(axis=1).tolist() == [0, 2, 10]
    assert np.flatnonzero(morf[1]).tolist() == [0, 1] and np.flatnonzero(lerf[1]).tolist() == [18, 19]
    assert check_fractions("0.1, 0.5,0.9") == (0.1, 0.5, 0.9)
    assert check_fractions(FRACTIONS) == FRACTIONS
    for bad in ("0.5,0.2", "0.1,1.0", "", "-0.1", "a,b"):
        with pytest.raises(UsageError, match="ROAD fractions"):
            check_fractions(bad)


def test_auc():
    assert auc([0.5], [0.3]) == 0.5
    assert auc([1, 1, 1], [0.1, 0.5, 0.9]) == pytest.approx(1.0)
    assert auc([0, 1], [0.1, 0.9]) == pytest.approx(0.5)
    assert auc([0, 1, 1], [0.0, 0.5, 1.0]) == pytest.approx(0.75)  # trapezoids: (0.25 + 0.5) / 1
    assert auc([0, 1, 1], [0.0, 0.1, 1.0]) == pytest.approx(0.95)  # unequal spacing
    with pytest.raises(UsageError):
        auc([1, 2], [0.1, 0.2, 0.3])


@pytest.fixture(scope="module")
def cnn():
    return Scorer(relu_cnn(seed=1, hw=12, classes=4))


def test_curves_on_a_cnn_against_imputing_and_scoring_by_hand(cnn):
    rng = np.random.default_rng(8)
    image = rng.normal(size=(1, 3, 12, 12)).astype(F32)
    attribution = rng.normal(size=(1, 3, 12, 12)).astype(F32)
    target = int(np.argmax(cnn.probabilities(image)[0]))
    fractions = (0.1, 0.4, 0.9)
    got = road_score(cnn, image, attribution, fractions, noise=0.01, span=2.0, seed=3, key=5, batch_size=2)
    order = ranking(attribution[0].sum(axis=0))
    field = noise_field(image.shape, 3, 5)
    for which in ("morf", "lerf"):
        by_hand = []
        for f in fractions:
            removed = np.zeros(144, bool)
            chosen = order[:round(f * 144)] if which == "morf" else order[::-1][:round(f * 144)]
            removed[chosen] = True
            imputed = impute(image, removed.reshape(12, 12), 0.01, 2.0, field)
            by_hand.append(cnn.probabilities(imputed)[0, target])
        np.testing.assert_allclose(got[which], by_hand, rtol=1e-5)
        assert got[which + "_auc"] == pytest.approx(auc(by_hand, fractions))
    assert got["difference"] == pytest.approx(got["lerf_auc"] - got["morf_auc"])
    # batching does not change the curve; the default target is the top-1
    np.testing.assert_allclose(road_curve(cnn, image, order, fractions, "morf", 0.01, 2.0, 3, 5, batch_size=16),
                               got["morf"], rtol=1e-6)


def test_a_faithful_attribution_scores_better_than_its_reverse():
    """A linear 'model' whose class-0 logit is w . x: pixels with large w * x are what the logit
    rests on. Removing them first (MoRF) must hurt more than removing them last."""
    from onnx import helper

    from onnx_builders import make_model

    rng = np.random.default_rng(9)
    w = rng.normal(size=(1, 3, 10, 10)).astype(F32)
    image = rng.normal(size=(1, 3, 10, 10)).astype(F32)
    flat = w.reshape(1, -1)
    weights = np.concatenate([flat, -flat]).T.astype(F32) * 0.3  # [300, 2]
    model = make_model([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])],
                       [("x", F32, ["N", 3, 10, 10])], [("y", F32, ["N", 2])], {"W": weights})
    scorer = Scorer(model)
    good = road_score(scorer, image, w * image, noise=0, target=0)
    bad = road_score(scorer, image, -(w * image), noise=0, target=0)
    assert good["morf_auc"] < bad["morf_auc"] and good["lerf_auc"] > bad["lerf_auc"]
    assert good["difference"] > 0 > bad["difference"]


# -- evaluate, audit and the CLI ---------------------------------------------------------------------
def test_evaluate_with_road_matches_road_score_and_leaves_the_default_alone(cnn):
    from gnl_onnx.evaluate import evaluate

    model = relu_cnn(seed=1, hw=12, classes=4)
    images = np.random.default_rng(10).normal(size=(3, 3, 12, 12)).astype(F32)
    fractions = (0.2, 0.5, 0.8)
    span = np.array([2.0, 3.0, 4.0], F32).reshape(1, 3, 1, 1)
    ev = evaluate(model, images, ["gradient", "random"], steps=2, curve_steps=6, metrics="deletion,insertion,road",
                  road_fractions=fractions, road_span=span, seed=4, threads=1)
    plain = evaluate(model, images, ["gradient", "random"], steps=2, curve_steps=6, seed=4, threads=1)
    assert ev.config["metrics"] == ["deletion", "insertion", "road"] and ev.config["road_fractions"] == [0.2, 0.5, 0.8]
    assert "metrics" not in plain.config and "road_morf_auc" not in plain.records[0]
    assert "ROAD" not in plain.table() and "ROAD" not in plain.recommendation()
    attributions = {"random": np.stack([np.random.default_rng((4, i)).standard_normal((3, 12, 12)) for i in range(3)])}
    for r, p in zip(ev.records, plain.records):
        assert r["deletion_auc"] == p["deletion_auc"] and r["insertion_auc"] == p["insertion_auc"]
        if r["method"] != "random":
            continue
        i = int(r["image"])  # evaluate seeds ROAD's noise by the image's position, as the random floor
        want = road_score(cnn, images[i:i + 1], attributions["random"][i:i + 1].astype(F32), fractions, 0.01, span,
                          seed=4, key=i, target=r["target"])
        np.testing.assert_allclose(r["road_morf_curve"], want["morf"], rtol=1e-6)
        np.testing.assert_allclose(r["road_lerf_curve"], want["lerf"], rtol=1e-6)
        assert r["road_difference"] == pytest.approx(want["difference"])
    s = ev.summaries["gradient"]
    rows = [r for r in ev.records if r["method"] == "gradient"]
    assert s.road_morf == pytest.approx(np.mean([r["road_morf_auc"] for r in rows]))
    assert s.road_difference == pytest.approx(np.mean([r["road_difference"] for r in rows]))
    assert s.road_difference_se == pytest.approx(np.std([r["road_difference"] for r in rows], ddof=1) / np.sqrt(3))
    assert len(s.road_lerf_curve) == 3 and "road_difference_mean" in s.as_dict()
    assert "ROAD MoRF AUC" in ev.table() and "by ROAD (LeRF - MoRF, higher is better)" in ev.recommendation()


def test_evaluate_rejects_bad_road_settings():
    from gnl_onnx.evaluate import evaluate, parse_metrics

    assert parse_metrics("road, deletion,insertion") == ("deletion", "insertion", "road")
    assert parse_metrics("road") == ("road",)  # any set: the recommendation rests on the first measured
    for bad, words in (("deletion,insertion,roads", "unknown metric"), (",", "none given")):
        with pytest.raises(UsageError, match=words):
            parse_metrics(bad)
    images = np.zeros((1, 3, 12, 12), F32)
    with pytest.raises(UsageError, match="ROAD fractions"):
        evaluate(relu_cnn(hw=12), images, ["random"], metrics="deletion,insertion,road", road_fractions=(0.5, 1.0))
    with pytest.raises(UsageError, match="ROAD noise"):
        evaluate(relu_cnn(hw=12), images, ["random"], metrics="deletion,insertion,road", road_noise=-1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import onnx

    d = tmp_path_factory.mktemp("road-inputs")
    onnx.save(relu_cnn(seed=2, hw=12, classes=4), d / "cnn.onnx")
    rng = np.random.default_rng(11)
    (d / "photos").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / "photos" / f"{name}.png")
    return d


ROAD_ARGS = ["--metrics", "deletion,insertion,road", "--road-fractions", "0.25,0.5,0.75", "--curve-steps", "4",
             "--steps", "2", "--threads", "1", "--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.25", "0.5"]


def test_evaluate_command_with_road(photos, tmp_path, capfd):
    out = tmp_path / "eval"
    code, stdout, err = cli(capfd, "evaluate", photos / "cnn.onnx", "--images", photos / "photos", "--out", out,
                            "--methods", "gradient,random", *ROAD_ARGS)
    assert code == 0, err
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert len(rows) == 6 and all(float(r["road_lerf_auc"]) - float(r["road_morf_auc"])
                                  == pytest.approx(float(r["road_difference"])) for r in rows)
    report = json.loads((out / "evaluation.json").read_text())
    assert report["config"]["road_noise"] == 0.01 and report["config"]["road_fractions"] == [0.25, 0.5, 0.75]
    assert all(len(s["road_morf_curve_mean"]) == 3 for s in report["summary"])
    assert "ROAD MoRF AUC" in stdout and "by ROAD" in stdout.splitlines()[-1]
    with Image.open(out / "evaluation_curves.png") as im:
        assert im.size[0] > 1500  # four panels
    code, _, err = cli(capfd, "evaluate", photos / "cnn.onnx", "--images", photos / "photos", "--out", tmp_path / "x",
                       "--metrics", ",")
    assert code == 2 and "none given" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capfd, "evaluate", photos / "cnn.onnx", "--images", photos / "photos", "--out", tmp_path / "x",
                       "--metrics", "deletion,insertion,road", "--road-fractions", "0.9,0.1")
    assert code == 2 and "ROAD fractions" in err and len(err.strip().splitlines()) == 1


def test_audit_with_road(photos, tmp_path, capfd):
    pq = pytest.importorskip("pyarrow.parquet")
    from gnl_onnx.audit import RESULTS, image_key
    from gnl_onnx.images import Preprocessing, load_image

    out = tmp_path / "audit"
    args = ["audit", photos / "cnn.onnx", "--images", photos / "photos", "--out", out, "--methods", "gradient,random",
            *ROAD_ARGS]
    code, stdout, err = cli(capfd, *args, "--images-per-batch", "2")
    assert code == 0, err
    table = pq.read_table(out / RESULTS)
    names = table.column_names
    assert names.index("road_morf_auc") < names.index("road_lerf_auc") < names.index("road_difference") < names.index(
        "steps") and names[-2:] == ["road_morf_curve", "road_lerf_curve"]
    saved = json.loads((out / "audit.json").read_text())["preprocessing"]
    prep = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    assert prep.std == (0.2, 0.25, 0.5)
    scorer = Scorer(photos / "cnn.onnx")
    for row in table.to_pylist():
        attribution = np.load(out / row["attribution"])
        image = load_image(photos / "photos" / row["image"], prep)
        # the audit seeds ROAD's noise by the image id, and scales it by the preprocessing's pixel range
        want = road_score(scorer, image, attribution, (0.25, 0.5, 0.75), 0.01, span_of(prep), seed=0,
                          key=image_key(row["image"]), target=row["target"])
        np.testing.assert_allclose(row["road_morf_curve"], want["morf"], rtol=1e-5)
        np.testing.assert_allclose(row["road_lerf_curve"], want["lerf"], rtol=1e-5)
        assert row["road_difference"] == pytest.approx(want["difference"], abs=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert all("road_difference_mean" in s for s in summary["summary"]) and "by ROAD" in summary["recommendation"]
    # batching does not change the numbers; a rerun reuses everything; other metrics are other settings
    again = tmp_path / "again"
    code, _, err = cli(capfd, *[a if a != out else again for a in args], "--images-per-batch", "3")
    assert code == 0, err
    assert pq.read_table(again / RESULTS).drop(["attribution_seconds"]).equals(table.drop(["attribution_seconds"]))
    code, stdout, err = cli(capfd, *args)
    assert code == 0 and "0 results computed now, 6 reused" in stdout, err
    code, _, err = cli(capfd, *args[:-len(ROAD_ARGS)], *ROAD_ARGS[2:])
    assert code == 2 and "other settings" in err and "metrics" in err
