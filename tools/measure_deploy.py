"""Sizes and load times of converted models (docs/deploy.md): each method converted alone against
the methods converted together into one model (`convert --methods`, the weights kept once).

    python tools/measure_deploy.py [efficientnet-lite0] [--methods gnl_ig,ig,gradcam] [--repeat 3]

Load time: onnxruntime.InferenceSession from the file, one thread, best of --repeat."""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from gnl_onnx.attribution import attribution_model
from gnl_onnx.deploy import combined_model
from gnl_onnx.intake import prepare


def load_seconds(path: Path, repeat: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="efficientnet-lite0", help="a bundled model's name or a path")
    parser.add_argument("--methods", default="gnl_ig,ig,gradcam")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = args.model
    if not os.path.exists(path):
        from gnl_onnx_models.registry import get_model
        path = str(get_model(path))
    methods = args.methods.split(",")
    prepared = prepare(path)
    rows = [("original model", Path(path))]
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            out = Path(tmp) / f"{m}.onnx"
            out.write_bytes(attribution_model(prepared, method=m).SerializeToString())
            rows.append((f"{m} alone", out))
        out = Path(tmp) / "combined.onnx"
        out.write_bytes(combined_model(prepared, methods, steps=args.steps).SerializeToString())
        rows.append((f"{'+'.join(methods)} in one model (--methods)", out))
        out = Path(tmp) / "compact.onnx"
        out.write_bytes(combined_model(prepared, methods, steps=args.steps, compact=True).SerializeToString())
        rows.append((f"the same, --compact", out))
        print("| file | size (MB) | load (s) |\n|---|---|---|")
        alone = 0
        for name, p in rows:
            size = p.stat().st_size
            alone += size if name.endswith("alone") else 0
            print(f"| {name} | {size / 1e6:.1f} | {load_seconds(p, args.repeat):.2f} |")
        print(f"| the {len(methods)} alone, together | {alone / 1e6:.1f} | |")


if __name__ == "__main__":
    main()
