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
    return {"net": net, "scorer": scorer, "x": images, "y": targets, "a": attributions, "explainer": explainer,
            "path": str(path)}


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


def torch_input_x_gradient(model, inputs, targets, **kwargs):
    """Input x gradient of the logit by torch's autograd: Quantus's explain_func, so that its side of
    the randomisation measures runs in torch alone."""
    x = torch.tensor(np.asarray(inputs), dtype=torch.float32, requires_grad=True)
    model(x)[torch.arange(len(x)), torch.as_tensor(np.asarray(targets), dtype=torch.long)].sum().backward()
    return (x * x.grad).detach().numpy()


def test_irof_equals_quantus(setup):
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    def every_channel(arr, mask, **kwargs):  # Quantus 0.6.0 gives a [N, 1, H, W] mask for [N, 3, H, W] images and
        # its perturbation asserts equal shapes, so it runs on grey images only; IROF removes a superpixel's colour
        return baseline_replacement_by_mask(arr=arr, mask=np.broadcast_to(mask, arr.shape), **kwargs)
    metric = quantus.IROF(normalise_func_kwargs=PER_SAMPLE, perturb_func=every_channel, return_aggregate=False,
                          disable_warnings=True)
    # batch_size=1: Quantus's "mean" baseline is the mean of the whole batch it perturbs; here of each image.
    # Its AUC calls np.trapz, gone in numpy 2.4.
    with mock.patch.object(np, "trapz", np.trapezoid, create=True):
        theirs = np.asarray(metric(model=setup["net"], x_batch=setup["x"], y_batch=setup["y"], a_batch=setup["a"],
                                   device="cpu", channel_first=True, batch_size=1), np.float64)
    ours = scores.irof(forward(setup, True), setup["x"], setup["a"], setup["y"])
    segments = [len(np.unique(scores.superpixels(x))) for x in setup["x"]]
    assert min(segments) > 10 and np.ptp(theirs) > 1  # SLIC's superpixels, and AOCs that differ per image
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)  # ~40 probability ratios summed


def test_sufficiency_equals_quantus(setup):
    from quantus.functions.normalise_func import normalise_by_max

    def per_sample(a, **kwargs):  # the maps by their own maximum; Quantus also divides the distances by this
        return normalise_by_max(a, normalise_axes=tuple(range(1, a.ndim)) if a.ndim == 4 else None)
    x = setup["x"].copy()  # images 1 and 2 are near copies of image 0: their maps are close
    x[1] = np.clip(x[0] + 0.02 * (x[1] - 0.5), 0, 1)
    x[2] = np.clip(x[0] + 0.04 * (x[2] - 0.5), 0, 1)
    y = setup["scorer"].probabilities(x).argmax(axis=1)
    a = setup["explainer"].explain(x, y).attributions
    found = []
    for threshold in (0.3, 0.6, 1.0):  # 1.0: every other image is near (the largest distance is 1)
        metric = quantus.Sufficiency(threshold=threshold, normalise_func=per_sample, disable_warnings=True)
        theirs = run_quantus(metric, {**setup, "x": x, "y": y}, a=a)
        ours = scores.sufficiency(a, setup["scorer"].probabilities(x).argmax(axis=1), threshold=threshold)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9)
        found.append(ours)
    assert len({tuple(f) for f in found}) > 1  # the threshold matters
    assert len(set(y[:3])) == 1 and y[3] != y[0] and 0 < found[-1][0] < 1  # 2 of 3 near images share its class


def test_random_logit_equals_quantus(setup):
    called = []

    def explain(model, inputs, targets, **kwargs):
        called.append(np.asarray(targets).copy())
        return torch_input_x_gradient(model, inputs, targets)
    metric = quantus.RandomLogit(num_classes=5, normalise_func_kwargs=PER_SAMPLE, disable_warnings=True)
    theirs = run_quantus(metric, setup, explain_func=explain)
    explainer = setup["explainer"]
    # Quantus seeds numpy's global generator with 42 and draws an index into the other classes: the same draw
    ours = scores.random_logit(lambda images, t: explainer.explain(images, t).attributions, setup["x"], setup["a"],
                               setup["y"], 5, rng=np.random.RandomState(42))
    assert (called[-1] != setup["y"]).all() and np.ptp(theirs) > 0.01
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_smooth_and_efficient_mprt_equal_quantus(setup):
    """Quantus randomises the torch module (reset_parameters under torch's generator); its last,
    fully randomised module is caught and its weights put into the ONNX export, so both sides explain
    the same random model; its smoothing noise is read back from the inputs it explains. That our own
    randomisation (randomize.reset_model, numpy's generator) draws from the same distribution is
    checked on the weights: a two-sample Kolmogorov-Smirnov test per tensor, and the bound."""
    import onnx
    from onnx import numpy_helper
    from scipy.stats import ks_2samp

    from gnl_onnx.randomize import reset_model

    seen = []

    def explain(model, inputs, targets, **kwargs):
        seen.append((model, np.asarray(inputs, np.float64)))
        return torch_input_x_gradient(model, inputs, targets)
    metric = quantus.SmoothMPRT(nr_samples=4, skip_layers=True, return_last_correlation=True, disable_warnings=True)
    with mock.patch.object(quantus, "explain", explain):  # SmoothMPRT smooths through quantus.explain itself
        smooth = run_quantus(metric, setup, explain_func=explain)
    random_net = seen[-1][0]
    noise = np.stack([inputs - setup["x"] for model, inputs in seen if model is random_net], axis=1)
    weights = {k: v.detach().numpy() for k, v in random_net.state_dict().items()}
    seen.clear()
    efficient = run_quantus(quantus.EfficientMPRT(disable_warnings=True), setup, explain_func=explain)
    assert all(np.array_equal(weights[k], v.detach().numpy()) for k, v in seen[-1][0].state_dict().items())

    proto = onnx.load(setup["path"])
    for tensor in proto.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name], tensor.name))
    randomized = Explainer(proto, method="input_x_gradient", threads=1)
    explain_random = lambda images, t: randomized.explain(images, t).attributions  # noqa: E731
    ours = scores.smooth_mprt(explain_random, setup["x"], setup["a"], setup["y"], nr_samples=4,
                              noise=noise.reshape(4, 4, -1))
    assert noise.shape[1] == 4 and not noise[:, -1].any() and np.ptp(smooth) > 0.01
    np.testing.assert_allclose(ours, smooth, rtol=1e-4, atol=1e-6)
    ours = scores.efficient_mprt(explain_random, setup["x"], setup["a"], setup["y"])
    assert np.ptp(efficient) > 0.01
    np.testing.assert_allclose(ours, efficient, rtol=1e-4, atol=1e-6)

    mine = {t.name: numpy_helper.to_array(t) for t in reset_model(setup["path"], seed=0).graph.initializer}
    for name, fan_in in (("features.0.weight", 27), ("features.2.weight", 72), ("head.weight", 512)):
        assert ks_2samp(mine[name].ravel(), weights[name].ravel()).pvalue > 0.01, name
        assert np.abs(mine[name]).max() <= 1 / np.sqrt(fan_in) and not np.allclose(mine[name], weights[name])
    for name in ("features.0.bias", "head.bias"):  # a bias is bound by its layer's fan_in
        assert np.abs(mine[name]).max() <= 1 / np.sqrt(27 if name.startswith("features") else 512)
