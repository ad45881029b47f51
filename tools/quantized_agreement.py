"""How far the attributions of an int8 model are from those of the float model it was quantized
from: Spearman rank correlation of the channel-summed maps, per method, for resnet18 and
mobilenet_v2 (64 px, random weights as in tests/test_quantized.py) quantized by ONNX Runtime's
quantize_static in both formats and both weight granularities. Prints the markdown table of
docs/models.md.

    OMP_NUM_THREADS=1 python tools/quantized_agreement.py [--images 4]
"""
from __future__ import annotations

import argparse
import os

import numpy as np

METHODS = ("gradient", "guided_backprop", "gnl_ig", "gradcam", "lrp_epsilon_plus_flat")
SIZE = 64


def spearman(a, b):
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--efficientnet", action="store_true",
                        help="EfficientNet-Lite0 (trained, 224 px) on skimage's photos instead")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import onnxruntime as ort
    import torch

    from gnl_onnx import Explainer
    from gnl_onnx_models import quantized, torchvision_zoo

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    images = rng.standard_normal((args.images, 3, SIZE, SIZE)).astype(np.float32)
    calibration = np.concatenate([np.random.default_rng(0).standard_normal((8, 3, SIZE, SIZE)).astype(np.float32),
                                  images])
    sources = {"resnet18": torchvision_zoo.export("resnet18", "legacy", SIZE),
               "mobilenet_v2": quantized.export_measured_batchnorm("mobilenet_v2", SIZE)}
    variants = [(fmt, per_channel) for fmt in quantized.FORMATS for per_channel in (False, True)]
    if args.efficientnet:  # calibrated on six photos, explained on four of them
        from gnl_onnx.presets import PRESETS
        from gnl_onnx_models.registry import get_model
        from skimage import data

        photos = [getattr(data, n)() for n in ("chelsea", "coffee", "astronaut", "rocket", "camera",
                                                 "clock")]
        prep = PRESETS["efficientnet-lite0"].preprocessing
        batch = np.concatenate([prep.to_input(p) for p in photos]).astype(np.float32)
        calibration, images = batch, batch[:args.images]
        sources = {"efficientnet-lite0": get_model("efficientnet-lite0")}
        variants = [("qdq", True), ("qoperator", False)]
    rows = []
    for arch, source in sources.items():
        floats = {m: Explainer(str(source), method=m, steps=16).explain(images) for m in METHODS}
        float_logits = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]
        for fmt, per_channel in variants:
            path = quantized.quantize(source, calibration, fmt, per_channel)
            int8 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]
            cells = []
            for m in METHODS:
                maps = Explainer(str(path), method=m, steps=16).explain(images, target=floats[m].target)
                rho = [spearman(a.sum(0), b.sum(0)) for a, b in zip(maps.attributions, floats[m].attributions)]
                cells.append(f"{np.mean(rho):.2f}")
            top1 = float(np.mean(int8.argmax(1) == float_logits.argmax(1)))
            rows.append(f"| {arch} | {fmt} | {'per channel' if per_channel else 'per tensor'} | "
                        f"{top1:.2f} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    print("\n| model | format | weights | top-1 as float | " + " | ".join(METHODS) + " |")
    print("|---|---|---|---|" + "---|" * len(METHODS))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
