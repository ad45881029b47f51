"""The CUDA path: where onnxruntime-gpu sees a GPU, attributions computed with the CUDA provider
must equal the CPU's and really run on CUDA (onnxruntime silently falls back to the CPU when the
provider fails to load). Skipped elsewhere: CI has no GPU."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from gnl_onnx import Explainer
from gnl_onnx.errors import UsageError
from onnx_builders import relu_cnn

CUDA = "CUDAExecutionProvider"
needs_cuda = pytest.mark.skipif(CUDA not in ort.get_available_providers(),
                                reason="onnxruntime-gpu with a visible GPU is not installed here")


@needs_cuda
@pytest.mark.parametrize("method", ["gnl_ig", "ig", "smoothgrad"])
def test_cuda_matches_cpu(method):
    images = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    model = relu_cnn()
    cpu = Explainer(model, method=method, steps=16, providers=["CPUExecutionProvider"]).explain(images)
    gpu = Explainer(model, method=method, steps=16, providers=[CUDA]).explain(images)
    assert gpu.provider == CUDA  # no silent fallback
    np.testing.assert_array_equal(gpu.target, cpu.target)
    scale = np.abs(cpu.attributions).max()
    assert np.abs(gpu.attributions - cpu.attributions).max() <= 1e-4 * scale


@needs_cuda
def test_cuda_real_model_chunked():
    """A real CNN with its steps split into several runs by a small budget: same result as one run."""
    from gnl_onnx_models.registry import get_model

    images = np.random.default_rng(1).standard_normal((2, 1, 28, 28)).astype(np.float32)
    whole = Explainer(get_model("mnist"), steps=32, providers=[CUDA]).explain(images)
    small = Explainer(get_model("mnist"), steps=32, providers=[CUDA], memory_budget="2MB")
    assert small.chunks(2)[1] < 32
    chunked = small.explain(images)
    scale = np.abs(whole.attributions).max()
    assert np.abs(chunked.attributions - whole.attributions).max() <= 1e-5 * scale


def test_naming_cuda_without_it_is_a_clear_error():
    if CUDA in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(UsageError, match="no CUDAExecutionProvider"):
        Explainer(relu_cnn(), providers=[CUDA])
