"""How far the attributions of an int8 model are from those of the float model it was quantized
from: Spearman rank correlation of the channel-summed maps, per method, for resnet18, resnet50 and
mobilenet_v2 (64 px, random weights as in tests/test_quantized.py), or with --efficientnet for
EfficientNet-Lite0 (224 px, its trained weights, skimage's photos), quantized by ONNX Runtime's
quantize_static in both formats and both weight granularities. Prints the markdown table of
docs/models.md.

    OMP_NUM_THREADS=1 python tools/quantized_agreement.py --images 4 [--arch resnet50]
    OMP_NUM_THREADS=1 python tools/quantized_agreement.py --efficientnet --images 2
"""
from __future__ import annotations

import argparse
import os

import numpy as np

METHODS = ("gradient", "guided_backprop", "gnl_ig", "gradcam", "lrp_epsilon_plus_flat")
SIZE = 64
RANDOM_ARCHS = ("resnet18", "resnet50", "mobilenet_v2")
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "clock")  # skimage's, for EfficientNet-Lite0


def spearman(a, b):
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--efficientnet", action="store_true",
                        help="EfficientNet-Lite0 (trained, 224 px) on skimage's photos instead")
    parser.add_argument("--arch", action="append", choices=RANDOM_ARCHS,
                        help="only these random-weight models (repeatable; default all)")
    args = parser.parse_args()
    if args.images < 1 or (args.efficientnet and args.images > len(PHOTOS)):
        parser.error(f"--images must be 1 to {len(PHOTOS)} with --efficientnet" if args.efficientnet
                     else "--images must be at least 1")
    if args.efficientnet and args.arch:
        parser.error("--arch picks random-weight models; --efficientnet runs EfficientNet-Lite0 alone")
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
    variants = [(fmt, per_channel) for fmt in quantized.FORMATS for per_channel in (False, True)]
    if args.efficientnet:  # calibrated on six photos, explained on the first --images of them
        from gnl_onnx.presets import PRESETS
        from gnl_onnx_models.registry import get_model
        from skimage import data

        photos = [getattr(data, n)() for n in PHOTOS]
        prep = PRESETS["efficientnet-lite0"].preprocessing
        batch = np.concatenate([prep.to_input(p) for p in photos]).astype(np.float32)
        calibration, images = batch, batch[:args.images]
        sources = {"efficientnet-lite0": get_model("efficientnet-lite0")}
    else:  # mobilenet_v2's random BatchNorm statistics leave it without a gradient (see the export)
        sources = {arch: quantized.export_measured_batchnorm(arch, SIZE) if arch == "mobilenet_v2"
                   else torchvision_zoo.export(arch, "legacy", SIZE) for arch in args.arch or RANDOM_ARCHS}
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
