"""The CUDA path on a real GPU: every method's attribution with ONNX Runtime's CUDA provider beside
the CPU's on the same inputs, on torchvision resnet50 and mobilenet_v2 (random seeded weights, the
exports of models/torchvision_zoo.py at 224 px) and a small ReLU CNN, with the provider the session
really used (onnxruntime falls back to the CPU silently when the CUDA provider fails to load).

    python tools/gpu_check.py --json out/gpu_check.json [--models resnet50,mobilenet_v2] [--steps 16]

Per (model, method) it records the largest difference from the CPU relative to the CPU map's
largest magnitude, whether the chosen classes agree, and the seconds per image on each provider
(the second call, after a warm-up). Exits non-zero if a session did not run on CUDA or a map
differs by more than 1e-3 of its scale (float32 kernels differ in summation order; gated methods
can flip units near zero, which the record shows per method). Needs onnxruntime-gpu and torch
(imported first so its CUDA libraries are loaded for ONNX Runtime).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
METHODS = ("gradient", "guided_backprop", "ig", "gnl_ig", "smoothgrad", "gradcam", "gradcam_pp", "scorecam",
           "lrp_epsilon_gamma_box", "lrp_epsilon_plus_flat", "deeplift")
REL_TOL = 1e-3


def explain_timed(explainer, images) -> tuple:
    explainer.explain(images)  # warm-up: CUDA kernels and the arena
    t0 = time.perf_counter()
    out = explainer.explain(images)
    return out, (time.perf_counter() - t0) / len(images)


def check_model(name: str, model, images: np.ndarray, steps: int, methods, device: str) -> list[dict]:
    from gnl_onnx import Explainer
    from gnl_onnx.methods import METHODS as REGISTERED

    rows = []
    for method in methods:
        if method not in REGISTERED:
            continue
        row = {"model": name, "method": method, "images": len(images), "steps": steps}
        try:
            cpu, cpu_s = explain_timed(Explainer(model, method=method, steps=steps, providers=[CPU]), images)
            gpu, gpu_s = explain_timed(Explainer(model, method=method, steps=steps, providers=[device]), images)
        except Exception as e:  # noqa: BLE001 - a record per method, the run goes on
            row["error"] = f"{type(e).__name__}: {e}"[:400]
            rows.append(row)
            print(f"  {name} {method}: ERROR {row['error']}", flush=True)
            continue
        scale = float(np.abs(cpu.attributions).max()) or 1.0
        row.update(provider=gpu.provider, rel_diff=float(np.abs(gpu.attributions - cpu.attributions).max() / scale),
                   same_target=bool(np.array_equal(gpu.target, cpu.target)), cpu_s_per_image=cpu_s,
                   cuda_s_per_image=gpu_s, speedup=cpu_s / gpu_s if gpu_s else None)
        row["ok"] = row["provider"] == device and row["same_target"] and row["rel_diff"] <= REL_TOL
        rows.append(row)
        print(f"  {name} {method}: {row['provider']} rel diff {row['rel_diff']:.2e}, cpu {cpu_s:.3f} s/img, "
              f"cuda {gpu_s:.4f} s/img ({row['speedup']:.1f}x){'' if row['ok'] else '  <-- NOT OK'}", flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="relu_cnn,resnet50,mobilenet_v2")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--json", required=True)
    p.add_argument("--provider", default=CUDA, help="the provider held against the CPU (a dry run here: "
                                                    "CPUExecutionProvider)")
    args = p.parse_args()
    try:
        import torch  # noqa: F401 - loads the CUDA 13 / cuDNN libraries ONNX Runtime links against
    except ImportError:
        pass
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    info = {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers()}
    print(info, flush=True)
    rows: list[dict] = []
    rng = np.random.default_rng(0)
    methods = args.methods.split(",")
    for name in args.models.split(","):
        if name == "relu_cnn":
            from onnx_builders import relu_cnn

            model, images = relu_cnn(), rng.standard_normal((args.images, 3, 16, 16)).astype(np.float32)
        else:
            from models import torchvision_zoo as zoo

            size = 224
            model = str(zoo.export(name, "legacy", size=size))
            images = rng.standard_normal((args.images, 3, size, size)).astype(np.float32)
        rows += check_model(name, model, images, args.steps, methods, args.provider)
    ok = bool(rows) and all(r.get("ok") for r in rows)
    out = pathlib.Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "rel_tol": REL_TOL, "ok": ok, "rows": rows}, indent=1))
    print(f"all on {args.provider} and equal to the CPU" if ok else "SOME CHECKS FAILED (see the rows)", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
