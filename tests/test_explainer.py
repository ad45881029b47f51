"""The Explainer runtime: completeness of plain IG on a real trained network, chunking to a memory
budget, refusals, baselines, and what each Explanation reports about its own run."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper
from onnx_builders import make_model, ort_session

from gnl_onnx import Explainer
from gnl_onnx.baselines import make_baseline
from gnl_onnx.errors import GnlOnnxError, UsageError
from gnl_onnx.images import Preprocessing
from gnl_onnx.presets import IMAGENET_MEAN, IMAGENET_STD

F32 = np.float32
HW, CLASSES = 16, 6
node = helper.make_node


def small_cnn(seed=0, hw=HW):
    """Conv-Relu-MaxPool-Conv-Clip-GlobalAveragePool-Gemm on 3 x hw x hw NCHW images, dynamic batch."""
    rng = np.random.default_rng(seed)
    p = {"w1": rng.normal(size=(6, 3, 3, 3)) * 0.5, "b1": rng.normal(size=6) * 0.1,
         "w2": rng.normal(size=(8, 6, 3, 3)) * 0.4, "b2": rng.normal(size=8) * 0.3 + 0.5,
         "w3": rng.normal(size=(CLASSES, 8)) * 0.5, "b3": rng.normal(size=CLASSES) * 0.1,
         "lo": np.array(0.0), "hi": np.array(6.0)}
    p = {k: np.asarray(v, F32) for k, v in p.items()}
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"]),
             node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Clip", ["c2", "lo", "hi"], ["r2"]),
             node("GlobalAveragePool", ["r2"], ["g"]),
             node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1)]
    return make_model(nodes, [("x", F32, ["N", 3, hw, hw])], [("logits", F32, ["N", CLASSES])], p)


@pytest.fixture(scope="module")
def model():
    return small_cnn()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).standard_normal((3, 3, HW, HW)).astype(F32)


def logits(model, x):
    return ort_session(model).run(None, {"x": np.ascontiguousarray(x, F32)})[0]


# ------------------------------------------------------------------------ completeness, real model
@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["zeros", "black"])
def test_ig_completeness_on_efficientnet_lite0(baseline):
    """Plain IG is complete: sum(attribution) = F(x) - F(x'). With 256 Gauss-Legendre steps the
    gap must be within 1% of F(x) - F(x') on the real EfficientNet-Lite0 and a real photo; F is
    evaluated here by the untouched model, not by the attribution graph."""
    skdata = pytest.importorskip("skimage.data")
    from gnl_onnx.presets import get_preset
    from models.registry import get_model

    prep = get_preset("efficientnet-lite0").preprocessing
    path = get_model("efficientnet-lite0")
    x = prep.to_input(skdata.chelsea())
    explainer = Explainer(str(path), method="ig", steps=256, baseline=baseline, black=prep.black())
    result = explainer.explain(x)

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x_base = np.broadcast_to(prep.black(), x.shape) if baseline == "black" else np.zeros_like(x)
    if baseline == "black":  # black is the preprocessed black photo, not 0
        np.testing.assert_allclose(x_base, prep.to_input(np.zeros((300, 300, 3), np.uint8)), atol=1e-6)
    f_x = sess.run(None, {name: x})[0][0]
    f_base = sess.run(None, {name: np.ascontiguousarray(x_base, F32)})[0][0]
    t = int(result.target[0])
    assert t == int(f_x.argmax())
    gap = float(f_x[t] - f_base[t])
    delta = float(result.attributions.astype(np.float64).sum()) - gap
    print(f"\nIG completeness, baseline {baseline}: F(x)-F(x') = {gap:.4f}, delta = {delta:.4g} "
          f"({abs(delta) / abs(gap):.2%})")
    assert abs(delta) <= 0.01 * abs(gap)
    # the reported delta is the same quantity
    assert result.delta is not None and abs(float(result.delta[0]) - delta) <= 1e-3 * abs(gap)
    assert result.baseline == baseline and result.steps == 256 and result.integration == "gausslegendre"


# ------------------------------------------------------------------------ chunking
@pytest.fixture(scope="module")
def resnet18():
    pytest.importorskip("torchvision")
    from models import torchvision_zoo as zoo

    # not mobilenet_v2: with random weights its logits barely depend on the image (gradients ~1e-10)
    return str(zoo.export("resnet18", "legacy"))


@pytest.mark.parametrize("method", ["ig", "gnl_ig", "smoothgrad", "input_x_gradient"])
def test_chunked_equals_unchunked(resnet18, method):
    """Splitting images and steps to fit a memory budget changes nothing but the run count
    (torchvision ResNet-18, random weights, 64x64)."""
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(F32)
    whole = Explainer(resnet18, method=method, steps=5, memory_budget="8GB")
    assert whole.chunks(3) == (3, whole.steps)  # precondition: one run
    row = whole.row_bytes
    want = whole.explain(x)
    # per run: 1 image x 1 step; 1 image x 3 steps (3 + 2, the second padded with a zero-weight
    # point to the same shape); 1 image x 5 steps (methods with a single point: images only)
    expected = {2: (1, 1), 4: (1, 3), 9: (1, 5)}
    for rows in expected if whole.steps > 1 else (2,):
        small = Explainer(resnet18, method=method, steps=5, memory_budget=rows * row)
        assert small.chunks(3) == (expected[rows] if whole.steps > 1 else (1, 1))  # precondition: really split
        got = small.explain(x)
        np.testing.assert_array_equal(got.target, want.target)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
        scale = np.abs(want.attributions).max()
        np.testing.assert_allclose(got.attributions, want.attributions, rtol=0, atol=1e-5 * scale)
        if want.delta is not None:
            gap = want.attributions.sum(axis=(1, 2, 3)) - want.delta  # F(x) - F(x')
            np.testing.assert_allclose(got.delta, want.delta, rtol=0, atol=1e-4 * np.abs(gap).max())


@pytest.mark.parametrize("hw", [8, 12, 16, 20, 28, 36])  # the named size is rounded: try several
def test_memory_budget_too_small_names_one_that_works(hw):
    model = small_cnn(hw=hw)
    need = Explainer(model, method="ig", steps=4).row_bytes
    with pytest.raises(UsageError) as info:
        Explainer(model, method="ig", steps=4, memory_budget=need)  # a single row cannot also hold its score
    named = re.search(r"smallest that works is (\S+)", str(info.value))
    assert named, str(info.value)
    Explainer(model, method="ig", steps=4, memory_budget=named.group(1))  # must not raise


def test_unreadable_memory_budget(model):
    with pytest.raises(UsageError, match="memory budget"):
        Explainer(model, method="ig", memory_budget="lots")


# ------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("steps", [0, -3, 100_001, 2.5])
def test_bad_step_counts(model, steps):
    with pytest.raises(UsageError, match="steps"):
        Explainer(model, method="ig", steps=steps)


def test_largest_step_count_is_accepted(model):
    assert Explainer(model, method="ig", steps=100_000, integration="middle").steps == 100_000


def test_largest_step_count_with_gauss_legendre(model, tmp_path):
    """steps=100000 with the default rule either works or is refused with a UsageError, never a
    raw MemoryError. Run in a child limited to 6 GB of address space (CPU provider: CUDA would
    reserve more) so that a quadratic-memory node computation fails fast instead of swapping."""
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
        from gnl_onnx import Explainer
        from gnl_onnx.errors import UsageError
        try:
            Explainer({str(path)!r}, method="ig", steps=100_000, providers=["CPUExecutionProvider"])
        except UsageError as e:
            print("usage error:", e)
        except BaseException as e:
            print(type(e).__name__, str(e)[:200])
            sys.exit(3)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


@pytest.mark.parametrize("target", [CLASSES, [0, 1, CLASSES + 5]])
def test_target_out_of_range(model, images, target):
    with pytest.raises(UsageError, match="out of range"):
        Explainer(model, method="gradient").explain(images, target=target)


@pytest.mark.parametrize("shape", [(1, 3, HW - 1, HW), (1, HW, HW, 3), (3, HW, HW), (1, 1, HW, HW)])
def test_wrong_image_shape(model, shape):
    with pytest.raises(UsageError, match="shape"):
        Explainer(model, method="gradient").explain(np.zeros(shape, F32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_images(model, images, bad):
    x = images.copy()
    x[1, 2, 3, 4] = bad
    with pytest.raises(GnlOnnxError, match="NaN|infinite"):
        Explainer(model, method="ig").explain(x)


def test_explicit_and_top1_targets(model, images):
    top1 = logits(model, images).argmax(axis=1)
    result = Explainer(model, method="gradient").explain(images, target=[-1, 2, 0])
    np.testing.assert_array_equal(result.target, [top1[0], 2, 0])
    np.testing.assert_allclose(result.score, logits(model, images)[[0, 1, 2], result.target], rtol=1e-6)


# ------------------------------------------------------------------------ baselines
PREP = Preprocessing(size=HW, crop=(HW, HW), mean=IMAGENET_MEAN, std=IMAGENET_STD)


def test_black_baseline_is_the_preprocessed_black_photo(model, images):
    black_photo = PREP.to_input(np.zeros((40, 30, 3), np.uint8))
    got = Explainer(model, method="ig", steps=8, baseline="black", black=PREP.black()).explain(images)
    want = Explainer(model, method="ig", steps=8, baseline=black_photo).explain(images)
    np.testing.assert_allclose(got.attributions, want.attributions, rtol=0,
                               atol=1e-6 * np.abs(want.attributions).max())
    zeros = Explainer(model, method="ig", steps=8, baseline="zeros").explain(images)
    assert np.abs(got.attributions - zeros.attributions).max() > 0.1 * np.abs(zeros.attributions).max()
    # the reported delta measures against F(black photo)
    f_x, f_black = logits(model, images), logits(model, np.repeat(black_photo, 3, axis=0))
    t = got.target
    gap = f_x[np.arange(3), t] - f_black[np.arange(3), t]
    np.testing.assert_allclose(got.delta, got.attributions.sum(axis=(1, 2, 3)) - gap, atol=1e-4)
    assert got.baseline == "black"


def test_black_baseline_needs_the_preprocessing(model, images):
    with pytest.raises(UsageError, match="black"):
        Explainer(model, method="ig", baseline="black").explain(images)


@pytest.mark.parametrize("layout,shape", [("NCHW", (2, 3, 20, 24)), ("NHWC", (2, 20, 24, 3))])
def test_blur_baseline(layout, shape):
    x = np.random.default_rng(3).uniform(0, 1, shape).astype(F32)
    blurred = make_baseline("blur", x, layout=layout)
    assert blurred.shape == x.shape and blurred.dtype == F32 and np.all(np.isfinite(blurred))
    spatial = (2, 3) if layout == "NCHW" else (1, 2)
    channel = 1 if layout == "NCHW" else 3

    def roughness(a):  # mean squared difference of neighbouring pixels
        return sum(float(np.mean(np.diff(a, axis=ax) ** 2)) for ax in spatial)

    assert roughness(blurred) < 0.2 * roughness(x)
    # channels and images are blurred separately: a constant image stays itself
    const = np.ones(shape, F32) * np.arange(shape[channel], dtype=F32).reshape(
        [-1 if i == channel else 1 for i in range(4)])
    np.testing.assert_allclose(make_baseline("blur", const, layout=layout), const, atol=1e-5)


def test_noise_baseline(images):
    a = make_baseline("noise", images, seed=0)
    assert a.shape == images.shape and a.dtype == F32
    lo = images.min(axis=(1, 2, 3), keepdims=True)
    hi = images.max(axis=(1, 2, 3), keepdims=True)
    assert np.all((a >= lo) & (a <= hi))
    np.testing.assert_array_equal(a, make_baseline("noise", images, seed=0))
    assert not np.array_equal(a, make_baseline("noise", images, seed=1))


def test_unknown_baseline(images):
    with pytest.raises(UsageError, match="baseline"):
        make_baseline("grey", images)
    with pytest.raises(UsageError, match="broadcast"):
        make_baseline(np.zeros((2, 2), F32), images)


@pytest.mark.parametrize("baseline", ["zeros", "black", "blur", "noise", "array"])
def test_explanation_names_its_baseline(model, images, baseline):
    given = np.full((1, 3, 1, 1), 0.25, F32) if baseline == "array" else baseline
    result = Explainer(model, method="ig", steps=4, baseline=given, black=PREP.black()).explain(images)
    assert result.baseline == baseline and result.summary(0)["baseline"] == baseline
    # and the delta was measured against that baseline
    x_base = given if baseline == "array" else make_baseline(baseline, images, black=PREP.black())
    f_x, f_b = logits(model, images), logits(model, np.broadcast_to(x_base, images.shape))
    gap = f_x[np.arange(3), result.target] - f_b[np.arange(3), result.target]
    np.testing.assert_allclose(result.delta, result.attributions.sum(axis=(1, 2, 3)) - gap, atol=1e-4)


@pytest.mark.parametrize("method", ["gradient", "guided_backprop", "smoothgrad", "input_x_gradient"])
def test_methods_without_a_path_claim_no_baseline(model, images, method):
    result = Explainer(model, method=method, steps=3, baseline="black", black=PREP.black()).explain(images)
    assert result.baseline == "none" and result.delta is None


def test_smoothgrad_without_noise_is_the_gradient(model, images):
    gradient = Explainer(model, method="gradient").explain(images)
    smooth = Explainer(model, method="smoothgrad", steps=4, noise_level=0.0).explain(images)
    np.testing.assert_allclose(smooth.attributions, gradient.attributions, rtol=0,
                               atol=1e-6 * np.abs(gradient.attributions).max())
    noisy = Explainer(model, method="smoothgrad", steps=4, noise_level=0.3).explain(images)
    assert np.abs(noisy.attributions - gradient.attributions).max() > 0.01 * np.abs(gradient.attributions).max()


# ------------------------------------------------------------------------ provider
def test_provider_is_the_sessions_real_one(model, images):
    explainer = Explainer(model, method="gradient")
    result = explainer.explain(images)
    assert result.provider == explainer.session.get_providers()[0]
    assert result.provider in ort.get_available_providers()
    assert result.summary(0)["provider"] == result.provider
    cpu = Explainer(model, method="gradient", providers=["CPUExecutionProvider"]).explain(images)
    assert cpu.provider == "CPUExecutionProvider"


def test_unavailable_provider(model):
    with pytest.raises(UsageError, match="NoSuchExecutionProvider"):
        Explainer(model, method="gradient", providers=["NoSuchExecutionProvider"])
