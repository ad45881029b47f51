"""int8 copies of ONNX models, written by ONNX Runtime's own quantizer (quantize_static) and kept
in the export cache beside their float source: the tests and tools/quantized_agreement.py share
them. The calibration images are part of the cache key."""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile

from .cache import exports_root

FORMATS = ("qdq", "qoperator")


def quantize(source: str | os.PathLike, calibration, quant_format: str = "qdq", per_channel: bool = False,
             cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """The path of `source` quantized statically (uint8 activations, int8 weights; `quant_format`
    "qdq" or "qoperator"; weights per output channel when `per_channel`), calibrated (MinMax) on
    `calibration`, float32 images [N, ...] fed one at a time. Written once; reused after."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if quant_format not in FORMATS:
        raise ValueError(f"unknown format {quant_format!r}; use one of {FORMATS}")
    source = pathlib.Path(source)
    images = np.ascontiguousarray(calibration, dtype=np.float32)
    key = hashlib.sha256(images.tobytes() + str(images.shape).encode()).hexdigest()[:12]
    name = (f"{source.stem}-{quant_format}-{'per_channel' if per_channel else 'per_tensor'}-cal{key}"
            f"-ort{onnxruntime.__version__}.onnx")
    path = exports_root(cache_dir) / name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    input_name = onnx.load(str(source), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(images[i:i + 1] for i in range(len(images)))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {input_name: row}

    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        quantize_static(str(source), tmp, Reader(),
                        quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def export_measured_batchnorm(arch: str, size: int = 64, seed: int = 0,
                              cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """torchvision_zoo.build(arch, seed) with its BatchNorm statistics measured on 8 seeded random
    images, exported like torchvision_zoo.export (legacy, "input" -> "logits", dynamic batch).
    Random BatchNorm statistics leave mobilenet_v2 without a gradient at 64 px (|d logit / d x|
    below 1e-10: the signal dies in the inverted residuals); measured ones keep it near 1, and a
    quantized copy then has activations worth calibrating."""
    import warnings

    import torch

    from . import torchvision_zoo

    tv = torch.__version__.replace("+", "_")
    path = exports_root(cache_dir) / f"{arch}-measured-bn-{size}px-seed{seed}-torch{tv}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model = torchvision_zoo.build(arch, seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # the plain average over the batch
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(seed + 5)))
    model.eval()
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(2, 3, size, size),), tmp, dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
