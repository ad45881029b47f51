"""Where an attribution's time goes on a provider: ONNX Runtime's own profile of the Explainer's
session, summed per op type and per execution provider (a node left on the CPU inside a CUDA graph
shows as CPUExecutionProvider, with the copies around it as MemcpyToHost / MemcpyFromHost).

    python tools/gpu_profile.py --model mobilenet_v2 --methods ig,gnl_ig --json out/profile.json

Models: torchvision exports of models/torchvision_zoo.py at 224 px (random seeded weights).
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def profile(model: str, method: str, images: np.ndarray, steps: int, provider: str, folder: str) -> dict:
    import onnxruntime as ort

    from gnl_onnx import Explainer

    base = ort.SessionOptions

    class Profiled(base):  # the Explainer's session, with ONNX Runtime's profiler on
        def __init__(self):
            super().__init__()
            self.enable_profiling = True
            self.profile_file_prefix = f"{folder}/{method}"

    ort.SessionOptions = Profiled
    try:
        explainer = Explainer(model, method=method, steps=steps, providers=[provider])
    finally:
        ort.SessionOptions = base
    explainer.explain(images)
    t0 = time.perf_counter()
    explainer.explain(images)
    seconds = time.perf_counter() - t0
    trace = json.loads(pathlib.Path(explainer.session.end_profiling()).read_text())
    by_op, by_provider, nodes = collections.Counter(), collections.Counter(), collections.Counter()
    for event in trace:
        args = event.get("args", {})
        if event.get("cat") != "Node" or "op_name" not in args or not event["name"].endswith("_kernel_time"):
            continue
        where = args.get("provider", "?")
        by_op[f"{args['op_name']} [{where}]"] += event["dur"]
        by_provider[where] += event["dur"]
        nodes[where] += 1
    top = [{"op": k, "ms": v / 1e3} for k, v in by_op.most_common(15)]
    return {"model": model, "method": method, "provider": explainer.provider, "seconds_second_call": seconds,
            "runs": explainer.runs if hasattr(explainer, "runs") else None,
            "ms_by_provider": {k: v / 1e3 for k, v in by_provider.items()}, "kernel_events_by_provider": dict(nodes),
            "top_ops": top}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--methods", default="ig,gnl_ig")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--images", type=int, default=1)
    p.add_argument("--provider", default="CUDAExecutionProvider")
    p.add_argument("--json", required=True)
    args = p.parse_args()
    try:
        import torch  # noqa: F401 - loads the CUDA libraries ONNX Runtime links against
    except ImportError:
        pass
    from models import torchvision_zoo as zoo

    path = str(zoo.export(args.model, "legacy", size=224))
    images = np.random.default_rng(0).standard_normal((args.images, 3, 224, 224)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods.split(","):
            row = profile(path, method, images, args.steps, args.provider, folder)
            rows.append(row)
            print(json.dumps(row, indent=1, default=str), flush=True)
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
