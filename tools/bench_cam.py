"""Speed of gnl-onnx's class activation maps beside the anchor, pytorch-grad-cam 1.5.7, on the same
random-weight torchvision network, images and target layer, in one process and one run.

    python tools/bench_cam.py                                     # resnet50 and mobilenet_v2, 224 px
    python tools/bench_cam.py --models resnet50 --methods gradcam,eigencam --batches 1,8 --repeat 3

Per (model, method, images) it prints seconds per image for gnl-onnx (the Explainer: the whole
attribution graph in ONNX Runtime, the session built once) and for pytorch-grad-cam (its CAM object
built once; torch eager, forward and backward hooks), and their ratio. Both use --threads threads.
Times are medians over --repeat runs after one warm-up; these machines are noisy, so compare ratios
within one run.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANCHOR_CLASSES = {"gradcam": "GradCAM", "gradcam_pp": "GradCAMPlusPlus", "hirescam": "HiResCAM",
                  "xgradcam": "XGradCAM", "layercam": "LayerCAM", "eigencam": "EigenCAM", "scorecam": "ScoreCAM"}


def layer_of(arch, net):
    return net.layer4 if arch.startswith("resnet") else net.features[-1]


def median_seconds(function, repeat: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--methods", default="gradcam,gradcam_pp,layercam,eigencam")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    import torch
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import gnl_onnx
    from models import torchvision_zoo as zoo

    torch.set_num_threads(args.threads)
    rows = []
    for arch in args.models.split(","):
        path = str(zoo.export(arch, "legacy", size=args.size))
        net = zoo.build(arch)
        for method in args.methods.split(","):
            explainer = gnl_onnx.Explainer(path, method=method, threads=args.threads, memory_budget="4GB")
            cam = getattr(pytorch_grad_cam, ANCHOR_CLASSES[method])(model=net, target_layers=[layer_of(arch, net)])
            for batch in map(int, args.batches.split(",")):
                x = np.random.default_rng(0).standard_normal((batch, 3, args.size, args.size)).astype(np.float32)
                targets = explainer.explain(x).target
                chosen = [ClassifierOutputTarget(int(t)) for t in targets]
                # the lambdas run here, in this iteration
                ours = median_seconds(lambda: explainer.explain(x, targets), args.repeat) / batch  # noqa: B023
                theirs = median_seconds(lambda: cam(torch.from_numpy(x), chosen), args.repeat) / batch  # noqa: B023
                row = {"model": arch, "method": method, "images": batch, "size": args.size,
                       "gnl_onnx_s_per_image": round(ours, 4), "pytorch_grad_cam_s_per_image": round(theirs, 4),
                       "ratio": round(ours / theirs, 2)}
                rows.append(row)
                print(f"{arch:<14}{method:<12}{batch:>4} images  gnl-onnx {ours:8.4f} s/image  "
                      f"pytorch-grad-cam {theirs:8.4f} s/image  ratio {ours / theirs:5.2f}", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"threads": args.threads, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
