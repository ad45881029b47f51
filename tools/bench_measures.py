"""Time of the Quantus measures in gnl-onnx (gnl_onnx/scores.py: perturbed copies batched through
ONNX Runtime) beside Quantus 0.6.0 itself (the torch module, its own batching), on the same network,
images, attributions and settings, in one process and one run.

    python tools/bench_measures.py                       # resnet50 and mobilenet_v2, 16 images, 224 px
    python tools/bench_measures.py --size 64 --threads 2 --json out/bench_measures.json

Networks: torchvision resnet50 and mobilenet_v2 with random weights (the ONNX files are exports of
exactly those modules, models/torchvision_zoo.py). Attributions: the gradient (gnl-onnx's, given
to both). Measures and settings (Quantus's defaults where practical):
  faithfulness_correlation  nr_runs 100, subset_size 224, baseline black (logits)
  pixel_flipping            features_in_step = H x W / 64 (192 steps), baseline black (softmax)
  max_sensitivity           nr_samples 10, uniform noise 0.2; Quantus re-explains with a torch
                            gradient (autograd, batch of 16), gnl-onnx with its ONNX gradient graph
  smooth_mprt               --mprt-samples noisy copies (default 10; Quantus's default is 50), every
                            layer randomised (skip_layers, return_last_correlation); Quantus randomises
                            the torch module layer by layer and re-explains through quantus.explain
                            (patched to the torch gradient), gnl-onnx randomises the ONNX file
                            (randomize.reset_model) and builds its gradient graph: both inside the time
Both sides run the same number of forward passes, except smooth_mprt: Quantus also smooths the
original model's maps (its "original" scores, which return_last_correlation does not return), so it
runs twice the explanations for the same number. The ratio is Quantus's seconds / gnl-onnx's (above
1: gnl-onnx faster). Each pair runs once (the runs are thousands of forward passes; set-up is noise),
Quantus first, then gnl-onnx, alternating per measure."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def import_quantus():
    """Quantus with its torch path only: it imports TensorFlow whenever installed (tens of seconds;
    and it must not load before triton's libraries)."""
    import importlib.util

    find_spec = importlib.util.find_spec

    def without_tf(name, *args, **kwargs):
        return None if name.split(".")[0] == "tensorflow" else find_spec(name, *args, **kwargs)
    with mock.patch("importlib.util.find_spec", without_tf):
        import quantus
        import quantus.helpers.utils
    quantus.helpers.utils.tf = SimpleNamespace(keras=SimpleNamespace(Model=type("NoKerasModel", (), {})))
    return quantus


def torch_gradient(model, inputs, targets, **kwargs):
    """The gradient of the target logit for Quantus's re-explanations (what Captum's Saliency
    computes, without its absolute value)."""
    import torch

    x = torch.as_tensor(np.asarray(inputs, np.float32)).requires_grad_(True)
    out = model(x)
    out[torch.arange(len(x)), torch.as_tensor(np.asarray(targets))].sum().backward()
    return x.grad.detach().numpy()


def bench(name: str, size: int, images_n: int, threads: int, mprt_samples: int = 10,
          measures=None) -> list[dict]:
    import torch

    from gnl_onnx import scores
    from gnl_onnx.explainer import Explainer
    from gnl_onnx.randomize import reset_model
    from gnl_onnx.scorer import Scorer
    from models import torchvision_zoo

    quantus = import_quantus()
    torch.set_num_threads(threads)
    path = torchvision_zoo.export(name, "legacy", size=size)
    module = torchvision_zoo.build(name).eval()
    x = np.random.default_rng(0).standard_normal((images_n, 3, size, size)).astype(np.float32)
    scorer = Scorer(str(path), threads=threads)
    y = scorer.probabilities(x).argmax(axis=1)
    explainer = Explainer(str(path), method="gradient", threads=threads)
    a = explainer.explain(x, y).attributions
    step = size * size // 64  # Quantus asks features_in_step to divide H x W: 3 x 64 = 192 steps

    def explain(images, targets):
        return explainer.explain(images, targets).attributions

    def ours_smooth_mprt():
        randomized = Explainer(reset_model(str(path), seed=0), method="gradient", threads=threads)
        return scores.smooth_mprt(lambda images, t: randomized.explain(images, t).attributions, x, a, y,
                                  nr_samples=mprt_samples)

    def quantus_explain(model, inputs, targets, **kwargs):  # SmoothMPRT explains through quantus.explain
        return torch_gradient(model, inputs, targets)

    plans = {
        "faithfulness_correlation": (
            lambda: quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=224, disable_warnings=True,
                                                    return_aggregate=False),
            {},
            lambda: scores.faithfulness_correlation(lambda b: scorer.outputs(b, False, 64), x, a, y, nr_runs=100,
                                                    subset_size=224, batch_size=64)),
        "pixel_flipping": (
            lambda: quantus.PixelFlipping(features_in_step=step, disable_warnings=True),
            {},
            lambda: scores.pixel_flipping_curves(lambda b: scorer.outputs(b, True, 64), x, a, y,
                                                 features_in_step=step, batch_size=64)),
        "max_sensitivity": (
            lambda: quantus.MaxSensitivity(nr_samples=10, disable_warnings=True),
            {"explain_func": torch_gradient},
            lambda: scores.sensitivity(explain, x, a, y, nr_samples=10)),
        "smooth_mprt": (
            lambda: quantus.SmoothMPRT(nr_samples=mprt_samples, skip_layers=True, return_last_correlation=True,
                                       disable_warnings=True),
            {"explain_func": quantus_explain},
            ours_smooth_mprt),
    }
    rows = []
    for measure, (make, extra, ours) in plans.items():
        if measures is not None and measure not in measures:
            continue
        metric = make()
        with warnings.catch_warnings(), mock.patch.object(quantus, "explain", quantus_explain):
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            metric(model=module, x_batch=x, y_batch=y, a_batch=a.copy(), device="cpu", channel_first=True,
                   batch_size=images_n, **extra)
            theirs = time.perf_counter() - start
        start = time.perf_counter()
        ours()
        mine = time.perf_counter() - start
        rows.append({"model": name, "size": size, "images": images_n, "threads": threads, "measure": measure,
                     "quantus_s": round(theirs, 2), "gnl_onnx_s": round(mine, 2), "ratio": round(theirs / mine, 2)})
        print(f"{name:<14}{measure:<26}Quantus {theirs:8.2f} s   gnl-onnx {mine:8.2f} s   ratio {theirs / mine:6.2f}",
              flush=True)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--measures", default="faithfulness_correlation,pixel_flipping,max_sensitivity,smooth_mprt")
    p.add_argument("--mprt-samples", type=int, default=10, help="smooth_mprt's noisy copies per image")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        rows += bench(name.strip(), args.size, args.images, args.threads, args.mprt_samples,
                      args.measures.split(","))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
