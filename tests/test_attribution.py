"""attribution_model: the single ONNX model computing an attribution, against independent
references.

- every method against a step-by-step numpy loop over vjp_model (plain or guided, per the
  method's published definition, written out here and not read from METHODS);
- output="logit"/"prob"/"logprob" against torch autograd of softmax / log_softmax;
- IG and GNL-IG on a torchvision ResNet-18 (MaxPool) against torch autograd and the guided
  torch reference of tests/torch_reference.py;
- the model's own values may carry the public input/output names;
- path_points' quadrature rules against exact integrals of polynomials.
"""
from __future__ import annotations

import copy
import itertools
import warnings
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from onnx import helper
from onnx_builders import keras_style_cnn, make_model, ort_session

import gnl_onnx
from gnl_onnx import METHODS, attribution_model
from gnl_onnx.attribution import attribution_info, path_points
from gnl_onnx.errors import GnlOnnxError, UsageError

F32 = np.float32
node = helper.make_node

# The methods as the literature defines them, independent of gnl_onnx.attribution.METHODS:
# (gradient rule, what the weighted sum of gradients is multiplied by).
EXPECTED = {
    "gradient": ("plain", "none"),            # Simonyan et al.
    "input_x_gradient": ("plain", "image"),   # Shrikumar et al.
    "guided_backprop": ("guided", "none"),    # Springenberg et al.
    "ig": ("plain", "delta"),                 # Sundararajan et al.: (x - x') * mean gradient
    "gnl_ig": ("guided", "delta"),            # Kwon et al.: IG with guided gradients
    "smoothgrad": ("plain", "none"),          # Smilkov et al.: mean gradient at noisy points
}


def rel_err(got, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


# ------------------------------------------------------------------------ a small CNN in two forms
def tiny_params(seed=0, classes=5, hw=8):
    rng = np.random.default_rng(seed)
    return {"w1": (rng.normal(size=(6, 3, 3, 3)) * 0.5).astype(F32), "b1": (rng.normal(size=6) * 0.1).astype(F32),
            "w2": (rng.normal(size=(8, 6, 3, 3)) * 0.4).astype(F32), "b2": (rng.normal(size=8) * 0.3 + 0.5).astype(F32),
            "w3": (rng.normal(size=(classes, 8)) * 0.5).astype(F32), "b3": (rng.normal(size=classes) * 0.1).astype(F32)}


def tiny_cnn(p, hw=8, ending=None, names=None, input_name="x", output_name="y"):
    """Conv-Relu-MaxPool-Conv-Clip(0,6)-GlobalAveragePool-Flatten-Gemm, NCHW, dynamic batch;
    `ending` appends Softmax or LogSoftmax; `names` renames internal values and weights."""
    names = names or {}

    def v(k):
        return names.get(k, k)

    classes = p["w3"].shape[0]
    logits = output_name if ending is None else v("logits")
    nodes = [node("Conv", [input_name, v("w1"), v("b1")], [v("c1")], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", [v("c1")], [v("r1")]),
             node("MaxPool", [v("r1")], [v("p1")], kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", [v("p1"), v("w2"), v("b2")], [v("c2")], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Clip", [v("c2"), v("lo"), v("hi")], [v("r2")]),
             node("GlobalAveragePool", [v("r2")], [v("g")]),
             node("Flatten", [v("g")], [v("f")]),
             node("Gemm", [v("f"), v("w3"), v("b3")], [logits], transB=1)]
    if ending:
        nodes.append(node(ending, [logits], [output_name], axis=-1))
    inits = {v(k): a for k, a in p.items()}
    inits.update({v("lo"): np.array(0, F32), v("hi"): np.array(6, F32)})
    return make_model(nodes, [(input_name, F32, ["N", 3, hw, hw])], [(output_name, F32, ["N", classes])], inits)


def tiny_torch_logits(p, x):
    """The same network in torch (float64)."""
    t = {k: torch.from_numpy(a).double() for k, a in p.items()}
    h = TF.relu(TF.conv2d(x, t["w1"], t["b1"], padding=1))
    h = TF.max_pool2d(h, 2)
    h = torch.clamp(TF.conv2d(h, t["w2"], t["b2"], padding=1), 0, 6)
    return TF.linear(h.mean(dim=(2, 3)), t["w3"], t["b3"])


def keras_logits_model(model):
    """keras_style_cnn without its final Softmax: what output='logit' must differentiate."""
    m = copy.deepcopy(model)
    assert m.graph.node[-1].op_type == "Softmax"
    logits = m.graph.node[-1].input[0]
    del m.graph.node[-1]
    m.graph.output[0].name = logits
    return m


# ------------------------------------------------------------------------ running and references
def run_attribution(model, image, baseline, target, alphas, weights, noise):
    sess = ort_session(model)
    x_name = attribution_info(model)["input"]
    return sess.run(["attribution", "scores", "target_used"],
                    {x_name: image, "baseline": baseline, "target": target, "alphas": alphas,
                     "weights": weights, "noise": noise})


def forward(model, x):
    sess = ort_session(model)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def stepwise_reference(model, rule, factor, image, baseline, target, alphas, weights, noise):
    """factor * sum_s weights[s] * d F_target / d x at baseline + alphas[s] (image - baseline) +
    noise[s], one vjp_model run per step, accumulated in float64."""
    scores = forward(model, image)
    used = np.where(target < 0, scores.argmax(axis=1), target)
    vjp = gnl_onnx.vjp_model(model, rule=rule)
    rep = gnl_onnx.vjp_report(vjp)
    sess = ort_session(vjp)
    seed = np.eye(scores.shape[1], dtype=F32)[used]
    noise = np.broadcast_to(noise, (len(alphas),) + image.shape)
    base = np.broadcast_to(baseline, image.shape).astype(np.float64)
    total = np.zeros(image.shape, np.float64)
    for a, w, eps in zip(alphas, weights, noise):
        points = (base + np.float64(a) * (image - base) + eps).astype(F32)
        (g,) = sess.run([f"{rep['input']}_grad"], {rep["input"]: points, f"{rep['output']}_grad": seed})
        total += np.float64(w) * g
    total *= {"none": 1.0, "image": image.astype(np.float64), "delta": image - base}[factor]
    return total, scores, used


def test_every_method_has_a_reference():
    from gnl_onnx.attribution import LRP_METHODS  # checked against Zennit in tests/test_relevance.py
    from gnl_onnx.methods import CAM_METHODS  # checked against pytorch-grad-cam in tests/test_cam.py

    from gnl_onnx.methods import FORWARD_METHODS  # against Captum, pytorch-grad-cam in tests/test_perturbation.py

    relevance = set(LRP_METHODS) | {"deeplift"}  # deeplift: against Captum in tests/test_relevance.py
    assert set(METHODS) - set(CAM_METHODS) - relevance - set(FORWARD_METHODS) == set(EXPECTED)


@pytest.mark.parametrize("method", sorted(EXPECTED))
@pytest.mark.parametrize("net", ["tiny-nchw", "keras-nhwc"])
@pytest.mark.parametrize("baseline_kind", ["full", "per-channel"])
def test_attribution_model_matches_stepwise_vjp(method, net, baseline_kind):
    rng = np.random.default_rng(zlib.crc32(f"{method}-{net}-{baseline_kind}".encode()))
    if net == "tiny-nchw":
        model = reference_model = tiny_cnn(tiny_params())
        shape, channel_shape = (2, 3, 8, 8), (1, 3, 1, 1)
    else:  # tf2onnx-style: NHWC input, ends in Softmax; output="logit" explains the logits
        model, _ = keras_style_cnn(np.random.default_rng(3))
        reference_model = keras_logits_model(model)
        shape, channel_shape = (2, 8, 8, 3), (1, 1, 1, 3)
    image = rng.standard_normal(shape).astype(F32)
    baseline = (rng.standard_normal(shape if baseline_kind == "full" else channel_shape) * 0.5).astype(F32)
    steps = 3
    alphas = rng.uniform(0, 1, steps).astype(F32)
    weights = rng.uniform(0.1, 1, steps).astype(F32)
    noise = (rng.standard_normal((steps,) + shape) * 0.3).astype(F32)
    target = np.array([2, -1], np.int64)  # one explicit class, one top-1

    rule, factor = EXPECTED[method]
    attribution, scores, used = run_attribution(attribution_model(model, method), image, baseline, target,
                                                alphas, weights, noise)
    want, want_scores, want_used = stepwise_reference(reference_model, rule, factor, image, baseline, target,
                                                      alphas, weights, noise)
    assert attribution.shape == image.shape and attribution.dtype == F32
    np.testing.assert_array_equal(used, want_used)
    assert used[0] == 2 and used[1] == want_scores[1].argmax()
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    assert rel_err(attribution, want) < 1e-5


def test_guided_and_plain_differ_where_expected():
    """Precondition of the test above: on this network the guided gradient is not the plain one,
    so a method wired to the wrong rule cannot pass by accident."""
    p = tiny_params()
    image = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(F32)
    common = (image, np.zeros((1, 1, 1, 1), F32), np.array([-1, -1], np.int64), np.ones(1, F32),
              np.ones(1, F32), np.zeros((1,) * 5, F32))
    plain = run_attribution(attribution_model(tiny_cnn(p), "gradient"), *common)[0]
    guided = run_attribution(attribution_model(tiny_cnn(p), "guided_backprop"), *common)[0]
    assert rel_err(guided, plain) > 0.1


def test_target_used_is_argmax_for_negative_targets():
    p = tiny_params(classes=7)
    model = tiny_cnn(p)
    image = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(F32)
    target = np.array([-1, 6, -3, 0, -1], np.int64)
    _, scores, used = run_attribution(attribution_model(model, "gradient"), image, np.zeros((1, 1, 1, 1), F32),
                                      target, np.ones(1, F32), np.ones(1, F32), np.zeros((1,) * 5, F32))
    np.testing.assert_allclose(scores, forward(model, image), rtol=1e-6, atol=1e-7)
    top1 = forward(model, image).argmax(axis=1)
    np.testing.assert_array_equal(used, np.where(target < 0, top1, target))


# ------------------------------------------------------------------------ logit / prob / logprob
@pytest.mark.parametrize("ending", [None, "Softmax", "LogSoftmax"])
@pytest.mark.parametrize("kind", ["logit", "prob", "logprob"])
def test_output_kind_matches_torch(ending, kind):
    p = tiny_params(seed=2)
    model = tiny_cnn(p, ending=ending)
    image = np.random.default_rng(4).standard_normal((3, 3, 8, 8)).astype(F32)
    target = np.array([1, -1, 4], np.int64)

    attribution, scores, used = run_attribution(attribution_model(model, "gradient", output=kind), image,
                                                np.zeros((1, 1, 1, 1), F32), target, np.ones(1, F32),
                                                np.ones(1, F32), np.zeros((1,) * 5, F32))
    x = torch.from_numpy(image).double().requires_grad_(True)
    z = tiny_torch_logits(p, x)
    value = {"logit": z, "prob": torch.softmax(z, dim=1), "logprob": torch.log_softmax(z, dim=1)}[kind]
    want_used = np.where(target < 0, z.detach().numpy().argmax(axis=1), target)
    (grad,) = torch.autograd.grad(value[torch.arange(3), torch.from_numpy(want_used)].sum(), x)

    np.testing.assert_array_equal(used, want_used)
    np.testing.assert_allclose(scores, value.detach().numpy(), rtol=1e-4, atol=1e-6)
    assert rel_err(attribution, grad.numpy()) < 1e-4
    if ending == {"prob": "Softmax", "logprob": "LogSoftmax"}.get(kind):
        # the explained value is the model's own output
        np.testing.assert_allclose(scores, forward(model, image), rtol=1e-6, atol=1e-7)


def test_unknown_output_kind():
    with pytest.raises(UsageError, match="probability|prob"):
        attribution_model(tiny_cnn(tiny_params()), "gradient", output="probability")


# ------------------------------------------------------------------------ torchvision + torch reference
@pytest.fixture(scope="module")
def resnet18():
    pytest.importorskip("torchvision")
    from models import torchvision_zoo as zoo

    return zoo.build("resnet18"), zoo.export("resnet18", "legacy")


@pytest.mark.parametrize("method,guided", [("gnl_ig", True), ("ig", False)])
def test_integrated_gradients_match_torch_on_resnet18(resnet18, method, guided):
    """(G)IG from one ONNX model against (x - x') * sum_s w_s * grad_s, the gradients from torch
    autograd (guided: tests/torch_reference.py) on the same ResNet-18 (Relu, MaxPool)."""
    from torch_reference import input_gradient

    module, path = resnet18
    rng = np.random.default_rng(18)
    n, steps = 2, 8
    image = rng.standard_normal((n, 3, 64, 64)).astype(F32)
    baseline = (rng.standard_normal((1, 3, 1, 1)) * 0.5).astype(F32)
    nodes, w = np.polynomial.legendre.leggauss(steps)
    alphas, weights = ((nodes + 1) / 2).astype(F32), (w / 2).astype(F32)
    with torch.no_grad():
        logits64 = copy.deepcopy(module).double()(torch.from_numpy(image).double()).numpy()
    target = np.array([-1, 7], np.int64)
    want_used = np.array([logits64[0].argmax(), 7])

    attribution, scores, used = run_attribution(attribution_model(str(path), method), image, baseline, target,
                                                alphas, weights, np.zeros((1,) * 5, F32))
    np.testing.assert_array_equal(used, want_used)
    assert rel_err(scores, logits64) < 1e-4

    base = np.broadcast_to(baseline, image.shape)
    points = np.concatenate([base + a * (image - base) for a in alphas]).astype(F32)  # step-major, as S x N
    seed = np.tile(np.eye(logits64.shape[1], dtype=F32)[want_used], (steps, 1))

    def ig(dtype, onednn=True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flags() warns about TF32 on Intel GPUs
            with torch.backends.mkldnn.flags(enabled=onednn):
                g = input_gradient(module, points, seed, guided=guided, dtype=dtype).astype(np.float64)
        return (image - base) * np.tensordot(weights.astype(np.float64), g.reshape((steps,) + image.shape), axes=1)

    ref64 = ig(torch.float64)
    # Tolerance rule of tests/test_architectures.py: gates within float32 rounding of their kink
    # flip between float32 and float64, so hold the engine to 3x torch's own float32-vs-float64
    # error (worst of torch's two CPU convolution paths), and never below 1e-4.
    e_torch = max(rel_err(ig(torch.float32), ref64), rel_err(ig(torch.float32, onednn=False), ref64))
    tol = max(1e-4, 3 * e_torch)
    err = rel_err(attribution, ref64)
    print(f"\n{method} resnet18: rel err {err:.2e}, tol {tol:.2e} (torch float32 {e_torch:.2e})")
    assert err <= tol, f"{method}: rel err {err:.3g} > tol {tol:.3g} (torch float32 {e_torch:.3g})"


# ------------------------------------------------------------------------ reserved names
INTERNAL_RENAMES = {"c1": "weights", "r1": "target", "p1": "alphas", "c2": "baseline", "r2": "noise",
                    "g": "scores", "f": "attribution", "w1": "target_used", "b2": "weights_1", "b1": "score_rows"}


def test_internal_values_with_public_names():
    """Values named like the attribution model's inputs/outputs are renamed, not confused with
    them: the result equals that of the same network with ordinary names."""
    p = tiny_params(seed=6)
    rng = np.random.default_rng(6)
    feeds = (rng.standard_normal((2, 3, 8, 8)).astype(F32), (rng.standard_normal((1, 3, 1, 1)) * 0.3).astype(F32),
             np.array([3, -1], np.int64), np.array([0.3, 0.9], F32), np.array([0.5, 0.5], F32),
             np.zeros((1,) * 5, F32))
    clash = attribution_model(tiny_cnn(p, names=INTERNAL_RENAMES), "gnl_ig")
    assert [i.name for i in clash.graph.input] == ["x", "baseline", "target", "alphas", "weights", "noise",
                                                   "score_rows"]
    assert [o.name for o in clash.graph.output] == ["attribution", "scores", "target_used"]
    got = run_attribution(clash, *feeds)
    want = run_attribution(attribution_model(tiny_cnn(p), "gnl_ig"), *feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name", ["scores", "target"])
def test_model_output_with_a_public_name(name):
    """A classifier whose output is called 'scores' (common) converts and computes the same
    attribution as under any other name."""
    p = tiny_params(seed=7)
    rng = np.random.default_rng(7)
    feeds = (rng.standard_normal((2, 3, 8, 8)).astype(F32), np.zeros((1, 1, 1, 1), F32),
             np.array([-1, 1], np.int64), np.array([0.5], F32), np.array([1.0], F32), np.zeros((1,) * 5, F32))
    got = run_attribution(attribution_model(tiny_cnn(p, output_name=name), "ig"), *feeds)
    want = run_attribution(attribution_model(tiny_cnn(p), "ig"), *feeds)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name", ["baseline", "weights"])
def test_image_input_with_a_public_name(name):
    """An image input called like one of the added inputs cannot keep its name: either a clear
    package error, or a working model whose image input is found via attribution_info."""
    p = tiny_params(seed=8)
    try:
        model = attribution_model(tiny_cnn(p, input_name=name), "gradient")
    except GnlOnnxError as e:
        assert name in str(e)
        return
    image = np.random.default_rng(8).standard_normal((2, 3, 8, 8)).astype(F32)
    assert len({i.name for i in model.graph.input}) == 6
    got = run_attribution(model, image, np.zeros((1, 1, 1, 1), F32), np.array([-1, -1], np.int64),
                          np.ones(1, F32), np.ones(1, F32), np.zeros((1,) * 5, F32))
    want = run_attribution(attribution_model(tiny_cnn(p), "gradient"), image, np.zeros((1, 1, 1, 1), F32),
                           np.array([-1, -1], np.int64), np.ones(1, F32), np.ones(1, F32), np.zeros((1,) * 5, F32))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_unknown_method():
    with pytest.raises(UsageError, match="gnl_ig"):
        attribution_model(tiny_cnn(tiny_params()), "integrated_gradients")


# ------------------------------------------------------------------------ path_points
RULES = ["gausslegendre", "left", "right", "middle", "trapezoid"]


def integrate(rule, steps, f):
    alphas, weights = path_points(steps, rule)
    assert alphas.shape == weights.shape == (steps,)
    return float(np.sum(weights.astype(np.float64) * f(alphas.astype(np.float64))))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("steps", [2, 3, 7, 32])
def test_points_are_a_quadrature_of_the_unit_interval(rule, steps):
    alphas, weights = path_points(steps, rule)
    assert alphas.dtype == weights.dtype == F32
    assert np.all((alphas >= 0) & (alphas <= 1)) and np.all(weights > 0)
    assert abs(float(weights.astype(np.float64).sum()) - 1.0) < 1e-6  # constants integrate exactly
    assert np.all(np.diff(alphas) > 0)


@pytest.mark.parametrize("steps", range(1, 11))
def test_gauss_legendre_is_exact_to_degree_2s_minus_1(steps):
    for k in range(2 * steps):
        assert abs(integrate("gausslegendre", steps, lambda a, k=k: a ** k) - 1 / (k + 1)) < 2e-6, k
    if steps <= 3:  # and no further: degree 2S is not integrated exactly (error 1/12, 1/180, 1/2800)
        assert abs(integrate("gausslegendre", steps, lambda a: a ** (2 * steps)) - 1 / (2 * steps + 1)) > 1e-4


@pytest.mark.parametrize("steps", [4, 16, 64])
def test_riemann_and_trapezoid_errors(steps):
    """Their exact errors on low-degree polynomials: left/right are first order (error -+1/(2S) on
    a), midpoint and trapezoid second order (-1/(12 S^2) and +1/(6 (S-1)^2) on a^2)."""
    lin, sq = (lambda a: a), (lambda a: a ** 2)
    assert integrate("left", steps, lin) - 0.5 == pytest.approx(-1 / (2 * steps), abs=1e-6)
    assert integrate("right", steps, lin) - 0.5 == pytest.approx(1 / (2 * steps), abs=1e-6)
    assert integrate("middle", steps, lin) == pytest.approx(0.5, abs=1e-6)
    assert integrate("trapezoid", steps, lin) == pytest.approx(0.5, abs=1e-6)
    assert integrate("middle", steps, sq) - 1 / 3 == pytest.approx(-1 / (12 * steps ** 2), abs=1e-6)
    assert integrate("trapezoid", steps, sq) - 1 / 3 == pytest.approx(1 / (6 * (steps - 1) ** 2), abs=1e-6)


@pytest.mark.parametrize("rule,order", [("left", 1), ("right", 1), ("middle", 2), ("trapezoid", 2)])
def test_convergence_order_on_a_smooth_integrand(rule, order):
    exact = np.e - 1
    errors = [abs(integrate(rule, s, np.exp) - exact) for s in (8, 16, 32)]
    for coarse, fine in itertools.pairwise(errors):
        assert 2 ** order * 0.8 < coarse / fine < 2 ** order * 1.25
    assert abs(integrate("gausslegendre", 8, np.exp) - exact) < 1e-6


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("steps", [0, -1])
def test_too_few_steps(rule, steps):
    with pytest.raises(UsageError, match="steps"):
        path_points(steps, rule)


def test_trapezoid_needs_two_points_and_unknown_rules_fail():
    with pytest.raises(UsageError, match="2"):
        path_points(1, "trapezoid")
    with pytest.raises(UsageError, match="simpson"):
        path_points(8, "simpson")


def test_score_rows_skips_the_score_rows_of_later_runs():
    """Splitting a path into runs, the runs after the first score nothing (score_rows = 0, the
    targets given): the attributions still sum to the one-run result, those runs' scores are
    empty, and an image left unscored keeps its given target while a scored one takes its top-1."""
    model = attribution_model(tiny_cnn(tiny_params(seed=7)), "ig")
    session = ort_session(model)
    rng = np.random.default_rng(7)
    image = rng.standard_normal((2, 3, 8, 8)).astype(F32)
    alphas, weights = path_points(6)
    feed = {"x": image, "baseline": np.zeros((1, 3, 1, 1), F32), "noise": np.zeros((1,) * 5, F32)}
    outputs = ["attribution", "scores", "target_used"]
    whole, scores, chosen = session.run(outputs, {**feed, "target": np.array([-1, -1]), "alphas": alphas,
                                                  "weights": weights})
    first = session.run(outputs, {**feed, "target": np.array([-1, -1]), "alphas": alphas[:3],
                                  "weights": weights[:3]})
    later = session.run(outputs, {**feed, "target": first[2], "alphas": alphas[3:], "weights": weights[3:],
                                  "score_rows": np.array([0], np.int64)})
    np.testing.assert_allclose(first[0] + later[0], whole, rtol=1e-5, atol=1e-6 * np.abs(whole).max())
    np.testing.assert_array_equal(first[1], scores)
    assert later[1].shape == (0, scores.shape[1])
    np.testing.assert_array_equal(later[2], chosen)
    other = int(np.argsort(scores[1])[0])  # not image 1's top-1: it must stay as given
    _, part_scores, used = session.run(outputs, {**feed, "target": np.array([-1, other]), "alphas": alphas,
                                                 "weights": weights, "score_rows": np.array([1], np.int64)})
    np.testing.assert_array_equal(part_scores, scores[:1])
    assert used.tolist() == [int(scores[0].argmax()), other]
