"""Time to a converged attribution (issue 26): steps="auto" against fixed step counts that reach
the same tolerance, per image, in one process and one run.

    python tools/bench.py --to-tolerance                          (all four networks, 8 photos)
    python tools/bench_tolerance.py --models resnet50,mobilenet_v2 --photos 8 --threads 2 --json out/tol.json

IG: for each tolerance (default 5% and 1%) and photo, gnl-onnx's ig with steps="auto" (timed; its
points and gap recorded) against Captum's IntegratedGradients (Gauss-Legendre, internal batch 32)
at the fewest steps of 4, 8, 16, ... (doubling, up to --max-steps) whose completeness gap
|sum(attribution) - (F(x) - F(b))| / |F(x) - F(b)| is within the tolerance on that photo. GNL-IG:
ours with steps="auto" against our own fixed-step gnl_ig at the fewest doubling steps s whose map
moves less than the tolerance from s to 2s (||A_s - A_2s||_1 / ||A_2s||_1). One doubling per photo
serves every tolerance. Two ratios, fixed / adaptive time per photo (above 1: adaptive faster),
each summarized by its geometric mean:
- "best count": the fixed rule timed at that step count alone, as if it were known in advance;
- "doubling": every run of the doubling up to it (GNL-IG: up to 2s, where its change is seen),
  what a user who must find the step count pays.
IG's rows also give the fixed rule's gap at twice its step count: a gap met by cancelling errors
(Lite0's espresso: 0.34% at 16 Gauss-Legendre steps, 14% at 64) is not met again there.
vgg16 gets seeded random biases and mobilenet_v2 BatchNorm statistics measured on the photos
(path_networks: with plain random weights neither is a test of a path method). Photos whose
score does not change along the path (|F(x) - F(b)| under 1e-4 of the score: no
relative gap exists) are listed and left out. Otherwise models as tools/bench.py (torchvision with
random weights, the real EfficientNet-Lite0), photos from scikit-image, matplotlib and scikit-learn
(bundled, no download), resized to 224 x 224. The JSON is rewritten after every photo.
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


def path_networks(name: str, images: np.ndarray, folder: pathlib.Path):
    """(ONNX path, torch module) of tools/bench.py's network, made a test of a path method where
    random weights are not: vgg16 (no BatchNorm, zero biases) is positively homogeneous, so F along
    the path from a zero baseline is a straight line (every rule is exact at 4 steps; it gets
    seeded biases, N(0, 0.1^2)); random mobilenet_v2 saturates its ReLU6 gates and scores every
    photo alike (its BatchNorm statistics are measured on the photos). Written to `folder`."""
    import torch

    from bench import networks

    if name not in ("vgg16", "mobilenet_v2"):
        return networks(name)
    from models.torchvision_zoo import build

    module = build(name)
    with torch.no_grad():
        if name == "vgg16":
            generator = torch.Generator().manual_seed(7)
            for layer in module.modules():
                if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                    layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))
        else:
            for layer in module.modules():
                if isinstance(layer, torch.nn.BatchNorm2d):
                    layer.reset_running_stats()
                    layer.momentum = None  # a plain average over the batch
            module.train()
            module(torch.from_numpy(images))
            module.eval()
    path = folder / f"{name}-tolerance-bench.onnx"
    torch.onnx.export(module, (torch.from_numpy(images[:1]),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path, module


def timed(function):
    start = time.perf_counter()
    out = function()
    return out, time.perf_counter() - start


def geomean(values) -> float | None:
    values = [v for v in values if v]
    return float(np.exp(np.mean(np.log(values)))) if values else None


def doubling(run, reached, largest, setup=lambda steps: None):
    """Run the fixed rule at 4, 8, 16, ... steps up to largest, until reached(step count, result,
    the previous result) is met: [(steps, seconds, result)]. setup(steps) runs untimed first."""
    done = []
    for steps in (4, 8, 16, 32, 64, 128, 256, 512, 1024):
        if steps > largest:
            break
        setup(steps)
        result, seconds = timed(lambda s=steps: run(s))
        done.append((steps, seconds, result))
        if reached(steps, result, done[-2][2] if len(done) > 1 else None):
            break
    return done


def bench_model(name, args, result, write) -> None:
    """Fill result (rows, then the summary) for one network; write() after every photo."""
    import tempfile

    import torch
    from captum.attr import IntegratedGradients

    from gnl_onnx import Explainer, Settings

    images = prepared(name, photos(args.photos))
    folder = tempfile.TemporaryDirectory(prefix="gnl-onnx-tolerance-")
    path, module = path_networks(name, images, pathlib.Path(folder.name))
    inputs = torch.from_numpy(images)
    with torch.no_grad():
        at_images, at_zero = module(inputs).double(), module(inputs * 0).double()
    targets = at_images.argmax(1)
    rows_of = torch.arange(len(images))
    change = (at_images - at_zero)[rows_of, targets].numpy()
    size = torch.maximum(at_images[rows_of, targets].abs(), at_zero[rows_of, targets].abs()).numpy()
    # F(x) = F(baseline) to float32 noise: no relative gap is defined (a random mobilenet_v2 scores
    # every photo alike), so the photo is listed and left out of the ratios
    flat = np.abs(change) < 1e-4 * size
    base = dict(memory_budget=args.memory_budget, threads=args.threads)
    tolerances = sorted(args.tolerances, reverse=True)
    rows = result["rows"]
    result.update(photos=len(images), flat_paths=[int(i) for i in np.flatnonzero(flat)])
    captum = IntegratedGradients(module)

    def captum_run(i, steps):
        return captum.attribute(inputs[i:i + 1], baselines=inputs[i:i + 1] * 0, target=int(targets[i]), n_steps=steps,
                                method="gausslegendre", internal_batch_size=min(steps, 32))

    captum_run(0, 4)  # warm-up
    ours = {(m, t): Explainer(path, settings=Settings(method=m, steps="auto", tolerance=t, **base))
            for m in ("ig",) + (() if args.skip_gnl else ("gnl_ig",)) for t in tolerances}
    fixed = {}
    for explainer in ours.values():
        explainer.explain(images[:1])  # warm-up
    for i in np.flatnonzero(~flat):
        x, t = images[i:i + 1], int(targets[i])
        gap = lambda total: abs(float(total) - change[i]) / abs(change[i])  # noqa: E731
        runs = doubling(lambda s: captum_run(i, s), lambda s, a, _: gap(a.sum()) <= tolerances[-1], args.max_steps)
        if 2 * runs[-1][0] <= args.max_steps:  # a gap met by cancellation shows at twice the steps
            runs.append((2 * runs[-1][0], None, captum_run(i, 2 * runs[-1][0])))
        for tolerance in tolerances:
            mine, mine_s = timed(lambda: ours["ig", tolerance].explain(x, target=t))
            row = {"method": "ig", "tolerance": tolerance, "photo": int(i), "ours_s": mine_s,
                   "ours_points": int(mine.points[0]), "ours_gap": gap(mine.attributions.sum()),
                   "fixed_steps": None, "fixed_s": None, "fixed_gap": None, "found_s": None}
            for k, (steps, seconds, attribution) in enumerate(runs):
                if seconds is not None and gap(attribution.sum()) <= tolerance:
                    row.update(fixed_steps=steps, fixed_s=seconds, fixed_gap=gap(attribution.sum()),
                               found_s=sum(r[1] for r in runs[:k + 1]),
                               fixed_gap_at_twice=gap(runs[k + 1][2].sum()) if k + 1 < len(runs) else None)
                    break
            rows.append(ratios(row))
            report(name, row)
        if args.skip_gnl:
            write()
            continue

        def gnl_setup(steps):  # an Explainer and its warm-up per step count, untimed
            if steps not in fixed:
                fixed[steps] = Explainer(path, method="gnl_ig", steps=steps, **base)
                fixed[steps].explain(x, target=t)

        def moved(now, before):
            return float(np.abs(before - now).sum() / np.abs(now).sum())

        runs = doubling(lambda s: fixed[s].explain(x, target=t).attributions,
                        lambda s, a, b: b is not None and moved(a, b) <= tolerances[-1], 2 * args.gnl_max_steps,
                        setup=gnl_setup)
        for tolerance in tolerances:
            mine, mine_s = timed(lambda: ours["gnl_ig", tolerance].explain(x, target=t))
            row = {"method": "gnl_ig", "tolerance": tolerance, "photo": int(i), "ours_s": mine_s,
                   "ours_points": int(mine.points[0]), "ours_change": float(mine.reached[0]),
                   "fixed_steps": None, "fixed_s": None, "fixed_change": None, "found_s": None}
            for k in range(1, len(runs)):
                if moved(runs[k][2], runs[k - 1][2]) <= tolerance:  # s = runs[k - 1] is stable: known at 2s
                    row.update(fixed_steps=runs[k - 1][0], fixed_s=runs[k - 1][1],
                               fixed_change=moved(runs[k][2], runs[k - 1][2]), found_s=sum(r[1] for r in runs[:k + 1]))
                    break
            rows.append(ratios(row))
            report(name, row)
        write()
    result["summary"] = {f"{m} {tol:g}": summary([r for r in rows if r["method"] == m and r["tolerance"] == tol])
                         for m in ("ig", "gnl_ig") for tol in tolerances}


def ratios(row) -> dict:
    """fixed / ours: against the fixed rule at its best step count (known in advance), and against
    the doubling a user runs to find it (every run up to it; for GNL-IG up to 2s, where the change
    is seen)."""
    row["ratio"] = row["fixed_s"] / row["ours_s"] if row["fixed_s"] else None
    row["ratio_found"] = row["found_s"] / row["ours_s"] if row["found_s"] else None
    return row


def report(name, row):
    fixed = "not reached" if row["fixed_steps"] is None else \
        f"{row['fixed_steps']} steps {row['fixed_s']:.2f} s (found by doubling: {row['found_s']:.2f} s)"
    if row.get("fixed_gap_at_twice") is not None:
        fixed += f", gap {row['fixed_gap']:.4f} there and {row['fixed_gap_at_twice']:.4f} at twice the steps"
    print(f"  {name} {row['method']} tol {row['tolerance']:g} photo {row['photo']}: ours {row['ours_points']} points "
          f"{row['ours_s']:.2f} s; fixed {fixed}", flush=True)


def summary(rows) -> dict:
    return {"geomean_ratio": geomean(r["ratio"] for r in rows), "geomean_ratio_found": geomean(r["ratio_found"] for r in rows),
            "photos": len(rows), "unreached_fixed": sum(r["fixed_steps"] is None for r in rows),
            "ours_points": [r["ours_points"] for r in rows], "fixed_steps": [r["fixed_steps"] for r in rows]}


def table(results) -> str:
    lines = ["| model | method | tolerance | photos | adaptive points (mean) | fixed steps that reach it (mean) "
             "| fixed at its best count / adaptive | doubling to find it / adaptive | fixed rule missed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for key, s in r.get("summary", {}).items():
            method, tol = key.split()
            if not s["photos"]:
                continue
            reached = [v for v in s["fixed_steps"] if v]
            cell = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
            lines.append(f"| {r['model']} | {method} | {float(tol):.0%} | {s['photos']} | {np.mean(s['ours_points']):.1f} "
                         f"| {np.mean(reached) if reached else float('nan'):.1f} | {cell(s['geomean_ratio'])} "
                         f"| {cell(s['geomean_ratio_found'])} | {s['unreached_fixed']} |")
    every = [r for result in results for r in result["rows"]]
    for method in ("ig", "gnl_ig"):
        for tol in sorted({r["tolerance"] for r in every}, reverse=True):
            pick = [r for r in every if r["method"] == method and r["tolerance"] == tol]
            if pick:
                s = summary(pick)
                lines.append(f"| all | {method} | {tol:.0%} | {s['photos']} | | | {s['geomean_ratio'] or 0:.2f}x "
                             f"| {s['geomean_ratio_found'] or 0:.2f}x | {s['unreached_fixed']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--photos", type=int, default=8)
    p.add_argument("--tolerances", default="0.05,0.01")
    p.add_argument("--max-steps", type=int, default=512, help="Captum's largest step count")
    p.add_argument("--gnl-max-steps", type=int, default=128,
                   help="fixed GNL-IG's largest step count (run up to twice that, to see its change)")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime and torch threads")
    p.add_argument("--memory-budget", default="auto")
    p.add_argument("--skip-gnl", action="store_true", help="IG against Captum only")
    p.add_argument("--json")
    args = p.parse_args(argv)
    args.tolerances = [float(t) for t in args.tolerances.split(",")]

    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    results = []
    loads = []

    def write():  # after every photo: a long run that is stopped keeps what it measured
        loads.append(os.getloadavg()[0])
        if args.json:
            from gnl_onnx.output import atomic_write

            atomic_write(args.json, json.dumps({"results": results, "threads": args.threads,
                                                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                            "load_average_1min": [min(loads), max(loads)]},
                                                "command": "python tools/bench_tolerance.py " + " ".join(
                                                    sys.argv[1:] if argv is None else argv),
                                                "seconds": round(time.perf_counter() - started, 1)}, indent=1))

    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        results.append({"model": name, "rows": []})
        bench_model(name, args, results[-1], write)
        write()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
