"""Methods as objects (gnl_onnx/methods/): what each answers, the registry, SmoothGrad as a wrapper
over any method, and the step count that check reports as the Explainer runs it."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import gnl_onnx
from gnl_onnx.check import ModelChecker
from gnl_onnx.methods import METHODS, SmoothGrad, get_method
from onnx_builders import relu_cnn


@pytest.fixture(scope="module")
def model():
    return relu_cnn(seed=3, hw=12, classes=4)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(5).uniform(0, 1, (2, 3, 12, 12)).astype(np.float32)


def test_every_method_answers_what_the_runtime_asks():
    for name, method in METHODS.items():
        assert method.name == name and method.summary
        alphas, weights = method.points(8)
        assert len(alphas) == len(weights) == method.steps_run(8)
        assert method.steps_run(8) == (8 if method.follows_steps else 2 if name == "deeplift" else 1)
        assert method.rule in gnl_onnx.autodiff.rulesets.RULE_SETS
    assert get_method("deeplift").pairs_rows and get_method("deeplift").uses_baseline
    assert [m for m, spec in METHODS.items() if spec.takes_layer and not spec.forward_only][-1] == "gnl_gradcam"
    assert all(METHODS[m].forward_only for m in ("occlusion", "rise", "kernelshap", "ablation_cam"))


def test_unknown_names_are_refused_in_one_line():
    for name in ("nope", "smoothgrad:nope", "nope:ig"):
        with pytest.raises(gnl_onnx.UsageError, match="unknown method"):
            get_method(name)


def test_the_table_fields_still_answer_with_a_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert METHODS["ig"].path == "line" and METHODS["deeplift"].path == "reference"
        assert METHODS["smoothgrad"].path == "noise" and METHODS["gradient"].path == "image"
        assert METHODS["gradcam"].cam == "gradcam" and METHODS["gnl_gradcam"].cam_times
    assert caught and all(issubclass(w.category, DeprecationWarning) for w in caught)


def test_check_reports_the_steps_the_explainer_runs(model):
    """deeplift runs the image and its baseline (2 points) whatever --steps says; check said 32."""
    for method, steps in (("deeplift", 2), ("ig", 32), ("gradient", 1), ("smoothgrad", 32)):
        assert ModelChecker(model, method=method, steps=32).settings()["steps"] == steps
    assert gnl_onnx.Explainer(model, method="deeplift", steps=32).steps == 2


def test_plain_smoothgrad_is_the_wrapper_over_the_gradient_in_one_graph():
    plain = METHODS["smoothgrad"]
    assert isinstance(plain, SmoothGrad) and plain.inner is METHODS["gradient"] and plain.in_graph
    assert get_method("smoothgrad:guided_backprop").in_graph
    assert not get_method("smoothgrad:ig").in_graph and get_method("smoothgrad:ig").noisy_copies


@pytest.mark.parametrize("inner", ["ig", "gnl_ig", "gradcam"])
def test_smoothgrad_over_any_method_is_the_mean_over_noisy_copies(model, images, inner):
    """smoothgrad:<method> = the mean of <method>'s attributions at noisy copies of each image,
    all for the class chosen at the clean image (Captum's NoiseTunnel, nt_type smoothgrad)."""
    wrapped = gnl_onnx.Explainer(model, method=f"smoothgrad:{inner}", steps=4, seed=7)
    result = wrapped.explain(images)
    plain = gnl_onnx.Explainer(model, method=inner, steps=4)
    clean = plain.explain(images)
    np.testing.assert_array_equal(result.target, clean.target)
    spread = (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))[:, None, None, None]
    want = np.zeros(images.shape, np.float64)
    copies = get_method(f"smoothgrad:{inner}").copies
    for k in range(copies):
        noise = np.stack([np.random.default_rng([7, i, k]).standard_normal(images.shape[1:]) for i in range(len(images))])
        noisy = (images + (noise * (0.15 * spread)).astype(np.float32)).astype(np.float32)
        want += plain.explain(noisy, clean.target).attributions
    np.testing.assert_allclose(result.attributions, want / copies, rtol=1e-5, atol=1e-6)
    assert result.method == f"smoothgrad:{inner}" and result.delta is None
    np.testing.assert_array_equal(result.score, clean.score)
