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
