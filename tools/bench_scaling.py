"""How the cost of gnl_ig grows with steps, images and resolution, beside the forward-pass floor,
and a plot of it (docs/performance_scaling.png).

    python tools/bench_scaling.py --model mobilenet_v2 --json out/scaling.json --png docs/performance_scaling.png

One axis varies at a time from the base point (1 image, 32 steps, 224 x 224); each point is the
median of --repeat runs after a warm-up; the floor is 2 x steps x ONNX Runtime's forward time per
image (measured at the batch the attribution runs).
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

AXES = {"steps": [8, 16, 32, 64, 128], "images": [1, 2, 4, 8], "size": [112, 160, 224, 320]}
BASE = {"steps": 32, "images": 1, "size": 224}


def median_time(function, repeat: int) -> float:
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def point(model: str, steps: int, images: int, size: int, args) -> dict:
    import onnx

    from gnl_onnx import Explainer
    from gnl_onnx.runtime import make_session
    from models import torchvision_zoo

    path = torchvision_zoo.export(model, "legacy", size=size)
    x = np.random.default_rng(0).standard_normal((images, 3, size, size)).astype(np.float32)
    explainer = Explainer(path, method="gnl_ig", steps=steps, threads=args.threads, memory_budget=args.memory_budget)
    seconds = median_time(lambda: explainer.explain(x), args.repeat)
    session, _ = make_session(onnx.load(str(path)), threads=args.threads)
    rows = np.repeat(x[:1], min(images * steps, 32), axis=0)
    name = session.get_inputs()[0].name
    forward = median_time(lambda: session.run(None, {name: rows}), args.repeat) / len(rows)
    row = {"steps": steps, "images": images, "size": size, "seconds": seconds,
           "floor_seconds": 2 * steps * images * forward, "chunks": list(explainer.chunks(images))}
    print(f"  steps {steps:4d} images {images:2d} size {size:4d}: {seconds:7.3f} s "
          f"({seconds / row['floor_seconds']:.2f} x floor {row['floor_seconds']:.3f} s)", flush=True)
    return row


def plot(results: dict, model: str, path: pathlib.Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gnl_onnx.report import atomic_write

    figure = Figure(figsize=(13, 4))
    FigureCanvasAgg(figure)
    for k, (axis, rows) in enumerate(results.items()):
        ax = figure.add_subplot(1, 3, k + 1)
        xs = [r[axis] ** 2 if axis == "size" else r[axis] for r in rows]
        ax.plot(xs, [r["seconds"] for r in rows], "o-", label="gnl_ig")
        ax.plot(xs, [r["floor_seconds"] for r in rows], "s--", color="grey", label="floor: 2 x steps x forward")
        ax.set_xlabel("pixels (size²)" if axis == "size" else axis)
        ax.set_ylabel("seconds per call")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        others = ", ".join(f"{a} {v}" for a, v in BASE.items() if a != axis)
        ax.set_title(f"{model}: vary {axis} ({others})", fontsize=9)
        ax.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2", help="a torchvision architecture (random weights)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--memory-budget", default="auto")
    p.add_argument("--json")
    p.add_argument("--png", default=str(ROOT / "docs" / "performance_scaling.png"))
    args = p.parse_args(argv)
    results = {}
    for axis, values in AXES.items():
        print(f"{args.model}: varying {axis}", flush=True)
        results[axis] = [point(args.model, **dict(BASE, **{axis: v}), args=args) for v in values]
    plot(results, args.model, pathlib.Path(args.png))
    if args.json:
        from gnl_onnx.report import atomic_write

        atomic_write(args.json, json.dumps({"model": args.model, "threads": args.threads, "results": results},
                                           indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
