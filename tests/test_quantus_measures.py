"""The Quantus measures of gnl_onnx/scores.py against Quantus 0.6.0 itself: the same small torch CNN
(Quantus runs it in torch, we run its ONNX export in ONNX Runtime), the same images, attributions
and settings. Where a measure draws random perturbations, Quantus's own draws are recorded by
wrapping its perturbation function and given to ours (`indices`, `fills`, `noise`), so the numbers
must agree one for one. Tolerances: torch and ONNX Runtime compute the float32 outputs in different
orders (differences ~1e-6 of a logit), which correlations and norms carry through."""
from __future__ import annotations

import importlib.util
import warnings
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _without_tensorflow(find_spec=importlib.util.find_spec):
    """Quantus imports TensorFlow whenever it is installed (30 s here, and it must load after
    triton's libraries); these tests use its torch path only, so it is shown as absent."""
    def find(name, *args, **kwargs):
        return None if name.split(".")[0] == "tensorflow" else find_spec(name, *args, **kwargs)
    return find


with mock.patch("importlib.util.find_spec", _without_tensorflow()):
    quantus = pytest.importorskip("quantus")
from quantus.functions import perturb_func as quantus_perturb  # noqa: E402
import quantus.helpers.utils  # noqa: E402

# its model wrapper asks `isinstance(model, tf.keras.Model)` at run time: no model is one
quantus.helpers.utils.tf = SimpleNamespace(keras=SimpleNamespace(Model=type("NoKerasModel", (), {})))

from gnl_onnx import scores  # noqa: E402
from gnl_onnx.explainer import Explainer  # noqa: E402
from gnl_onnx.scorer import Scorer  # noqa: E402

SHAPE = (3, 16, 16)
PER_SAMPLE = {"normalise_axes": (1, 2, 3)}  # Quantus normalises by the batch's maximum unless told per image


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 8, 3, padding=1, stride=2), torch.nn.ReLU())
        self.head = torch.nn.Linear(8 * 8 * 8, 5)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = SmallNet().eval()
    with torch.no_grad():
        net.head.weight *= 30  # a confident net: the probabilities move when features are removed
    path = tmp_path_factory.mktemp("quantus") / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, *SHAPE),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
    images = np.random.RandomState(0).uniform(0, 1, size=(4, *SHAPE)).astype(np.float32)
    scorer = Scorer(str(path), threads=1)
    targets = scorer.probabilities(images).argmax(axis=1)
    explainer = Explainer(str(path), method="input_x_gradient", threads=1)
    attributions = explainer.explain(images, targets).attributions
    return {"net": net, "scorer": scorer, "x": images, "y": targets, "a": attributions, "explainer": explainer}


def forward(setup, softmax):
    return lambda images: setup["scorer"].outputs(images, softmax)


def run_quantus(metric, setup, a=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(model=setup["net"], x_batch=setup["x"], y_batch=setup["y"],
                                 a_batch=setup["a"] if a is None else a, device="cpu", channel_first=True,
                                 batch_size=len(setup["x"]), **kwargs), np.float64)


def recording(base, record):
    """Quantus's perturbation function, its inputs and outputs handed to `record`."""
    def perturb(arr, indices, **kwargs):
        out = base(arr=arr, indices=indices, **kwargs)
        record(arr, indices, out)
        return out
    return perturb


def test_faithfulness_correlation_equals_quantus(setup):
    drawn = []
    metric = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=32, normalise_func_kwargs=PER_SAMPLE,
                                             perturb_func=recording(
                                                 quantus_perturb.batch_baseline_replacement_by_indices,
                                                 lambda arr, idx, out: drawn.append(idx.copy())),
                                             return_aggregate=False, disable_warnings=True)
    theirs = run_quantus(metric, setup)
    ours = scores.faithfulness_correlation(forward(setup, False), setup["x"], setup["a"], setup["y"], nr_runs=20,
                                           subset_size=32, indices=np.stack(drawn, axis=1))
    assert np.isfinite(theirs).all() and np.ptp(theirs) > 0.01  # real correlations, not all the same
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_pixel_flipping_equals_quantus(setup):
    metric = quantus.PixelFlipping(features_in_step=16, normalise_func_kwargs=PER_SAMPLE, disable_warnings=True)
    theirs = run_quantus(metric, setup)  # [N, 48] curves (Quantus 0.6.0's AUC needs np.trapz, gone in numpy 2.4)
    ours = scores.pixel_flipping_curves(forward(setup, True), setup["x"], setup["a"], setup["y"], features_in_step=16)
    assert theirs.shape == (4, 48) and np.ptp(theirs) > 0.05
    np.testing.assert_allclose(np.stack(ours), theirs, rtol=1e-5, atol=1e-6)
    areas = scores.pixel_flipping(forward(setup, True), setup["x"], setup["a"], setup["y"], features_in_step=16)
    np.testing.assert_allclose(areas, np.trapezoid(theirs, dx=1.0, axis=1), rtol=1e-5, atol=1e-6)


def test_region_perturbation_equals_quantus(setup):
    metric = quantus.RegionPerturbation(patch_size=4, regions_evaluation=10, normalise_func_kwargs=PER_SAMPLE,
                                        disable_warnings=True)
    theirs = run_quantus(metric, setup)
    ours = scores.region_perturbation_curves(forward(setup, True), setup["x"], setup["a"], setup["y"], patch_size=4,
                                             regions_evaluation=10)
    assert theirs.shape == (4, 10) and np.ptp(theirs) > 0.01
    np.testing.assert_allclose(np.stack(ours), theirs, rtol=1e-5, atol=1e-6)
    aopc = scores.region_perturbation(forward(setup, True), setup["x"], setup["a"], setup["y"], patch_size=4,
                                      regions_evaluation=10)
    np.testing.assert_allclose(aopc, theirs.mean(axis=1), rtol=1e-5, atol=1e-6)
    # 16 is not a multiple of 5: both pad the image (edges) and the attributions (zeros) to 20 x 20
    metric = quantus.RegionPerturbation(patch_size=5, regions_evaluation=6, order="lerf",
                                        normalise_func_kwargs=PER_SAMPLE, disable_warnings=True)
    theirs = run_quantus(metric, setup)
    ours = scores.region_perturbation_curves(forward(setup, True), setup["x"], setup["a"], setup["y"], patch_size=5,
                                             regions_evaluation=6, order="lerf")
    np.testing.assert_allclose(np.stack(ours), theirs, rtol=1e-5, atol=1e-6)


def test_monotonicity_correlation_equals_quantus(setup):
    fills = []  # one uniform value per image per call: read back from a perturbed feature

    def record(arr, indices, out):
        fills.append(out[np.arange(len(out)), indices[:, 0]])
    metric = quantus.MonotonicityCorrelation(nr_samples=5, features_in_step=16, normalise_func_kwargs=PER_SAMPLE,
                                             perturb_func=recording(
                                                 quantus_perturb.batch_baseline_replacement_by_indices, record),
                                             disable_warnings=True)
    theirs = run_quantus(metric, setup)
    given = np.stack(fills).reshape(48, 5, 4).transpose(2, 0, 1)  # calls: per group, per sample -> [N, groups, samples]
    ours = scores.monotonicity_correlation(forward(setup, True), setup["x"], setup["a"], setup["y"], nr_samples=5,
                                           features_in_step=16, fills=given)
    assert np.isfinite(theirs).all() and np.ptp(theirs) > 0.01
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["MaxSensitivity", "AvgSensitivity"])
def test_sensitivity_equals_quantus(setup, name):
    noise = []
    explainer = setup["explainer"]

    def explain(model, inputs, targets, **kwargs):
        return explainer.explain(np.asarray(inputs, np.float32), np.asarray(targets)).attributions
    metric = getattr(quantus, name)(nr_samples=4, perturb_func=recording(
        quantus_perturb.batch_uniform_noise, lambda arr, idx, out: noise.append(out - arr)), disable_warnings=True)
    theirs = run_quantus(metric, setup, explain_func=explain)
    given = np.stack(noise, axis=1)  # [N, samples, features]
    ours = scores.sensitivity(lambda images, targets: explainer.explain(images, targets).attributions, setup["x"],
                              setup["a"], setup["y"], nr_samples=4, noise=given,
                              reduce="max" if name == "MaxSensitivity" else "mean")
    assert np.isfinite(theirs).all() and (theirs > 0).all()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_complexity_measures_equal_quantus(setup):
    a = setup["a"]
    for metric, ours in ((quantus.Sparseness, scores.sparseness), (quantus.Complexity, scores.complexity)):
        theirs = run_quantus(metric(normalise_func_kwargs=PER_SAMPLE, disable_warnings=True), setup, a=a.copy())
        np.testing.assert_allclose(ours(a), theirs, rtol=1e-5, atol=1e-7)
    # a map with all relevance on one feature is sparser and simpler than the model's maps
    peak = np.zeros_like(a[:1])
    peak[0, 0, 3, 3] = 1.0
    assert scores.sparseness(peak)[0] > scores.sparseness(a).max()
    assert scores.complexity(peak)[0] < scores.complexity(a).min()


def test_localisation_measures_equal_quantus(setup):
    a = setup["a"].sum(axis=1, keepdims=True)  # [N, 1, H, W]: masks are per pixel
    masks = np.zeros_like(a)
    for i, (top, left) in enumerate(((0, 0), (4, 6), (8, 2), (10, 10))):
        masks[i, 0, top:top + 6, left:left + 5] = 1
    peak = np.unravel_index(a[1, 0].argmax(), a.shape[2:])
    masks[1, 0, peak[0], peak[1]] = 1  # a hit for the pointing game
    masks[3] = 0  # an empty mask: NaN here; Quantus 0.6.0's PointingGame writes NaN into a bool array (True)
    pairs = ((quantus.PointingGame, scores.pointing_game), (quantus.RelevanceMassAccuracy,
             scores.relevance_mass_accuracy), (quantus.RelevanceRankAccuracy, scores.relevance_rank_accuracy))
    for metric, ours in pairs:
        theirs = run_quantus(metric(normalise_func_kwargs=PER_SAMPLE, disable_warnings=True), setup, a=a.copy(),
                             s_batch=masks)
        mine = ours(a, masks)
        np.testing.assert_allclose(mine[:3], theirs[:3], rtol=1e-6, atol=1e-9)
        assert np.isnan(mine[3]) and np.isfinite(theirs[:3]).all()
        assert len(set(np.round(mine[:3], 6))) > 1  # the images differ: not a constant


def test_local_lipschitz_estimate_equals_quantus(setup):
    noise = []
    explainer = setup["explainer"]

    def explain(model, inputs, targets, **kwargs):
        return explainer.explain(np.asarray(inputs, np.float32), np.asarray(targets)).attributions
    metric = quantus.LocalLipschitzEstimate(nr_samples=4, normalise_func_kwargs=PER_SAMPLE, perturb_func=recording(
        quantus_perturb.batch_gaussian_noise, lambda arr, idx, out: noise.append(out - arr)), disable_warnings=True)
    theirs = run_quantus(metric, setup, explain_func=explain)
    ours = scores.local_lipschitz_estimate(lambda images, targets: explainer.explain(images, targets).attributions,
                                           setup["x"], setup["a"], setup["y"], nr_samples=4,
                                           noise=np.stack(noise, axis=1))
    assert np.isfinite(theirs).all() and (theirs > 0).all()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
