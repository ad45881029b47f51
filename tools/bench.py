"""Time GNL-IG and IG against the floor of 2 x steps x one forward pass, on one machine, in one run.

    python tools/bench.py --model efficientnet-lite0 --batch 1 --steps 32
    python tools/bench.py --model resnet50 --batch 1 --steps 32      (torchvision, random weights)
    python tools/bench.py --model path/to/model.onnx --size 224

Prints seconds per image for each method, ONNX Runtime's forward time per image (at the batch the
attribution runs, steps x images), and the ratio to the floor; --json FILE writes the same figures.
Times are medians over --repeat runs after one warm-up."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def model_path(name: str, size: int) -> pathlib.Path:
    if pathlib.Path(name).is_file():
        return pathlib.Path(name)
    from models import registry

    if name in registry.MODELS:
        return registry.get_model(name)
    from models import torchvision_zoo

    return torchvision_zoo.export(name, "legacy", size=size)


def median_seconds(function, repeat: int) -> float:
    function()  # warm-up: session arenas, first-run allocations
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--size", type=int, default=224, help="image size for torchvision models")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--memory-budget", default="4GB")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)

    import onnx

    from gnl_onnx import Explainer
    from gnl_onnx.runtime import make_session

    path = model_path(args.model, args.size)
    forward_model = onnx.load(str(path))
    session, provider = make_session(forward_model, threads=args.threads)
    dims = session.get_inputs()[0].shape[1:]
    if not all(isinstance(d, int) for d in dims):
        raise SystemExit(f"the model's image size is not fixed ({dims}); export it with a fixed size")
    shape = [args.batch] + dims
    images = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    rows = args.batch * args.steps
    big = np.repeat(images, args.steps, axis=0)
    name = session.get_inputs()[0].name
    forward = median_seconds(lambda: session.run(None, {name: big}), args.repeat) / rows
    floor = 2 * args.steps * forward
    results = {"model": str(args.model), "batch": args.batch, "steps": args.steps, "provider": provider,
               "threads": args.threads, "forward_s_per_image": forward, "floor_s_per_image": floor,
               "machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version()}
    print(f"{args.model}: batch {args.batch}, {args.steps} steps, {provider}")
    print(f"  forward            {forward * 1e3:9.2f} ms/image   (at batch {rows})")
    print(f"  floor 2*steps*fwd  {floor:9.3f} s/image")
    for method in ("gnl_ig", "ig"):
        explainer = Explainer(path, method=method, steps=args.steps, memory_budget=args.memory_budget,
                              threads=args.threads)
        seconds = median_seconds(lambda e=explainer: e.explain(images), args.repeat) / args.batch
        results[method] = {"s_per_image": seconds, "ratio_to_floor": seconds / floor,
                           "chunks": list(explainer.chunks(args.batch))}
        print(f"  {method:<18} {seconds:9.3f} s/image   {seconds / floor:5.2f} x floor   "
              f"(images, steps per run: {explainer.chunks(args.batch)})")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
