"""Time to a converged attribution (issue 26): steps="auto" against fixed step counts that reach
the same tolerance, per image, in one process and one run.

    python tools/bench.py --to-tolerance                          (all four networks, 8 photos)
    python tools/bench_tolerance.py --models resnet50,mobilenet_v2 --photos 8 --threads 2 --json out/tol.json

IG: for each tolerance (default 5% and 1%) and photo, gnl-onnx's ig with steps="auto" (timed; its
points and gap recorded) against Captum's IntegratedGradients (Gauss-Legendre, internal batch 32)
at the fewest steps of 4, 8, 16, ... (doubling, up to --max-steps) whose completeness gap
|sum(attribution) - (F(x) - F(b))| / |F(x) - F(b)| is within the tolerance on that photo; Captum is
timed at that step count alone (the doubling that found it is not counted: the fixed rule is
given its best step count for free). GNL-IG: ours with steps="auto" against our own fixed-step
gnl_ig at the fewest doubling steps s whose map moves less than the tolerance from s to 2s
(||A_s - A_2s||_1 / ||A_2s||_1), timed at s. Ratios are fixed / adaptive time per photo (above 1:
adaptive faster), summarized by their geometric mean. Models as tools/bench.py (torchvision with
random weights, the real EfficientNet-Lite0), photos from scikit-image, matplotlib and
scikit-learn (bundled, no download), resized to 224 x 224.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

MODELS = ("resnet50", "vgg16", "mobilenet_v2", "efficientnet-lite0")


def photos(count: int) -> list[np.ndarray]:
    """Up to 9 real RGB photographs bundled with installed packages."""
    import matplotlib
    import skimage.data as data
    from PIL import Image
    from sklearn.datasets import load_sample_images

    found = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(), data.stereo_motorcycle()[0],
             *load_sample_images().images,
             np.asarray(Image.open(pathlib.Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")),
             data.immunohistochemistry()]
    return [np.ascontiguousarray(p[..., :3]) for p in found[:count]]


def prepared(name: str, pictures) -> np.ndarray:
    from gnl_onnx.presets import PRESETS

    preset = PRESETS["efficientnet-lite0" if name == "efficientnet-lite0" else "imagenet"].preprocessing
    return np.concatenate([preset.to_input(p) for p in pictures]).astype(np.float32)


def timed(function):
    start = time.perf_counter()
    out = function()
    return out, time.perf_counter() - start


def geomean(values) -> float | None:
    values = [v for v in values if v]
    return float(np.exp(np.mean(np.log(values)))) if values else None


def bench_model(name, args) -> dict:
    import torch
    from captum.attr import IntegratedGradients

    from bench import networks
    from gnl_onnx import Explainer, Settings

    path, module = networks(name)
    images = prepared(name, photos(args.photos))
    inputs = torch.from_numpy(images)
    with torch.no_grad():
        targets = module(inputs).argmax(1)
        change = (module(inputs) - module(inputs * 0))[torch.arange(len(images)), targets].double().numpy()
    captum = IntegratedGradients(module)
    doubling = [s for s in (4, 8, 16, 32, 64, 128, 256, 512, 1024) if s <= args.max_steps]
    rows = []
    result = {"model": name, "photos": len(images), "rows": rows}
    base = dict(memory_budget=args.memory_budget, threads=args.threads)
    for tolerance in args.tolerances:
        adaptive = Explainer(path, settings=Settings(method="ig", steps="auto", tolerance=tolerance, **base))
        adaptive.explain(images[:1])  # warm-up
        for i in range(len(images)):
            x, t = images[i:i + 1], targets[i:i + 1]
            ours, ours_s = timed(lambda: adaptive.explain(x, target=int(t)))
            ours_gap = abs(float(ours.attributions.sum()) - change[i]) / abs(change[i])
            row = {"method": "ig", "tolerance": tolerance, "photo": i, "ours_s": ours_s, "ours_points": int(ours.points[0]),
                   "ours_gap": ours_gap, "fixed_steps": None, "fixed_s": None, "fixed_gap": None}
            for steps in doubling:
                attribution, seconds = timed(lambda s=steps: captum.attribute(
                    inputs[i:i + 1], baselines=inputs[i:i + 1] * 0, target=t, n_steps=s, method="gausslegendre",
                    internal_batch_size=min(s, 32)))
                fixed_gap = abs(float(attribution.sum()) - change[i]) / abs(change[i])
                if fixed_gap <= tolerance:
                    row.update(fixed_steps=steps, fixed_s=seconds, fixed_gap=fixed_gap)
                    break
            row["ratio"] = row["fixed_s"] / ours_s if row["fixed_s"] else None
            rows.append(row)
            print(f"  {name} ig tol {tolerance:g} photo {i}: ours {ours.points[0]} points {ours_s:.2f} s (gap "
                  f"{ours_gap:.4f}); captum {row['fixed_steps']} steps {row['fixed_s'] or float('nan'):.2f} s",
                  flush=True)
        del adaptive
        if args.skip_gnl:
            continue
        adaptive = Explainer(path, settings=Settings(method="gnl_ig", steps="auto", tolerance=tolerance, **base))
        fixed = {}
        for i in range(len(images)):
            x, t = images[i:i + 1], int(targets[i])
            ours, ours_s = timed(lambda: adaptive.explain(x, target=t))
            row = {"method": "gnl_ig", "tolerance": tolerance, "photo": i, "ours_s": ours_s,
                   "ours_points": int(ours.points[0]), "ours_change": float(ours.reached[0]), "fixed_steps": None,
                   "fixed_s": None}
            previous = None
            for steps in doubling:
                explainer = fixed.setdefault(steps, Explainer(path, method="gnl_ig", steps=steps, **base))
                current, seconds = timed(lambda e=explainer: e.explain(x, target=t))
                if previous is not None:
                    moved = np.abs(previous[0].attributions - current.attributions).sum() / \
                        np.abs(current.attributions).sum()
                    if moved <= tolerance:
                        row.update(fixed_steps=steps // 2, fixed_s=previous[1], fixed_change=float(moved))
                        break
                previous = (current, seconds)
            row["ratio"] = row["fixed_s"] / ours_s if row["fixed_s"] else None
            rows.append(row)
            print(f"  {name} gnl_ig tol {tolerance:g} photo {i}: ours {ours.points[0]} points {ours_s:.2f} s; "
                  f"fixed {row['fixed_steps']} steps {row['fixed_s'] or float('nan'):.2f} s", flush=True)
        del adaptive, fixed
    result["summary"] = {f"{m} {tol:g}": {"geomean_ratio": geomean(r["ratio"] for r in rows
                                                                   if r["method"] == m and r["tolerance"] == tol),
                                          "unreached_fixed": sum(r["fixed_steps"] is None for r in rows
                                                                 if r["method"] == m and r["tolerance"] == tol)}
                         for m in ("ig", "gnl_ig") for tol in args.tolerances}
    return result


def table(results) -> str:
    lines = ["| model | method | tolerance | geomean fixed / adaptive time | photos the fixed rule missed |",
             "|---|---|---|---|---|"]
    for r in results:
        for key, s in r["summary"].items():
            method, tol = key.split()
            ratio = "-" if s["geomean_ratio"] is None else f"{s['geomean_ratio']:.2f}x"
            lines.append(f"| {r['model']} | {method} | {tol} | {ratio} | {s['unreached_fixed']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--photos", type=int, default=8)
    p.add_argument("--tolerances", default="0.05,0.01")
    p.add_argument("--max-steps", type=int, default=512, help="the fixed rules' largest step count")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime and torch threads")
    p.add_argument("--memory-budget", default="auto")
    p.add_argument("--skip-gnl", action="store_true", help="IG against Captum only")
    p.add_argument("--json")
    args = p.parse_args(argv)
    args.tolerances = [float(t) for t in args.tolerances.split(",")]

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = [bench_model(name.strip(), args) for name in args.models.split(",") if name.strip()]
    print(table(results))
    if args.json:
        from gnl_onnx.output import atomic_write

        atomic_write(args.json, json.dumps({"results": results, "threads": args.threads,
                                            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                        "load_average": os.getloadavg()},
                                            "command": "python tools/bench_tolerance.py " + " ".join(
                                                sys.argv[1:] if argv is None else argv),
                                            "seconds": round(time.perf_counter() - started, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
