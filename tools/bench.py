"""Speed and memory of gnl-onnx's ig and gnl_ig beside Captum and Zennit on the same network, images
and step count, in one process and one run, with ONNX Runtime's plain forward pass as the floor.

    python tools/bench.py                                   # the default plan (about 30 min, 2 cores)
    python tools/bench.py --models resnet50 --batches 1 --steps 32 --repeat 1
    python tools/bench.py --device cuda --json out/bench_cuda.json   (onnxruntime-gpu + torch CUDA)

Per (model, images, steps) it prints seconds per image, images per second, peak memory while the
method ran (process RSS; on CUDA also the device memory the method allocated), the ratio of
gnl-onnx to the best Captum setting and to Zennit, and the ratio to the floor 2 x steps x one
forward pass (ONNX Runtime, measured at the batch the attribution runs). Captum's
IntegratedGradients uses its default Gauss-Legendre rule with internal_batch_size tuned (8, 16, 32:
the fastest is kept); Zennit is IntegratedGradients over its GuidedBackprop composite (the nearest
peer of GNL-IG; it gates nn.ReLU only). Models: torchvision resnet50, vgg16 and mobilenet_v2 with
random weights (the ONNX files are exports of exactly those modules) and the real EfficientNet-Lite0,
all at their native 224 x 224 (Lite0: 224). Times are medians over --repeat runs after a warm-up.

    python tools/bench.py --relevance --threads 1 --repeat 5 --json out/bench_relevance.json

--relevance times the relevance methods instead: each LRP composite beside Zennit's same composite
(Gradient attributor, one-hot seed, its ResNet/VGG canonizers; mobilenet_v2: BatchNorm merging only)
and deeplift beside Captum's DeepLift (baseline zeros; it refuses ReLU modules used twice, as in
ResNets, and leaves mobilenet_v2's ReLU6 unhooked, so there it is not DeepLIFT), on resnet50, vgg16
and mobilenet_v2 by default. Each pair is built once, warmed, then timed alternately (the order
flips every round), so a loaded machine slows both alike; the ratio is the median of the per-round
ratios peer / gnl-onnx (above 1: gnl-onnx faster).

    python tools/bench.py --perturbation --threads 2 --repeat 1 --json out/bench_perturbation.json

--perturbation times the forward-only methods the same way (interleaved, median of per-round
ratios): occlusion beside Captum's Occlusion (window 56, stride 28 at 224 px: 49 positions),
kernelshap beside Captum's KernelShap (200 samples on an 8 x 8 grid, one image per call as Captum
takes them), both peers batching --peer-batch perturbations per forward pass; and rise (4000 masks,
7 x 7 cells) beside the same masks run through the torch module in batches of --peer-batch, as
Petsiuk et al.'s code does. Each is also put against its floor: its number of forward passes run
by ONNX Runtime at the batch of the floor (--forward-rows), on resnet50 and mobilenet_v2 by default.
No warm-up round here: a run is hundreds of passes, the set-up of the first is noise.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("resnet50", "vgg16", "mobilenet_v2", "efficientnet-lite0")
CAPTUM_BATCHES = (8, 16, 32)
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- memory ----------------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakMemory:
    """Samples the process RSS every 2 ms while a method runs (and resets torch's CUDA peak):
    peak is the highest RSS seen, added the growth over the RSS at the start."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda

    def __enter__(self):
        gc.collect()
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.cuda_start = torch.cuda.memory_allocated()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.cuda_peak = None
        if self.cuda:
            import torch

            self.cuda_peak = torch.cuda.max_memory_allocated() - self.cuda_start
        return False


def gpu_used_bytes() -> int | None:
    """Device memory in use on GPU 0 (nvidia-smi), for ONNX Runtime's CUDA arena, which torch cannot see."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout
        return int(out.strip().splitlines()[0]) << 20
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def timed(function, repeat: int, warmup) -> list[float]:
    warmup()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


# -- the networks ----------------------------------------------------------------------------------
def networks(name: str):
    """(ONNX path, the same network as a torch module in eval mode)."""
    if name == "efficientnet-lite0":
        from models.export import _load_efficientnet_lite
        from models.registry import get_model

        return get_model(name), _load_efficientnet_lite(0)
    from models import torchvision_zoo

    return torchvision_zoo.export(name, "legacy", size=224), torchvision_zoo.build(name).eval()


# -- methods ---------------------------------------------------------------------------------------
def bench_config(name, path, module, images, steps, args, providers, device) -> dict:
    import torch

    from gnl_onnx import Explainer
    from gnl_onnx.runtime import make_session

    n = len(images)
    rows = {}

    def record(label, run, warmup, **extra):
        with PeakMemory(cuda=device == "cuda") as memory:
            try:
                times = timed(run, args.repeat, warmup)
            except Exception as e:  # noqa: BLE001 - a peer failing is a result, not a crash
                rows[label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                print(f"    {label:<26} failed: {rows[label]['error']}", flush=True)
                return None
        seconds = statistics.median(times) / n
        rows[label] = {"s_per_image": seconds, "images_per_s": 1 / seconds,
                       "peak_rss_mb": memory.peak / 2**20, "rss_growth_mb": (memory.peak - memory.start) / 2**20,
                       **extra}
        if memory.cuda_peak is not None:
            rows[label]["cuda_peak_mb"] = memory.cuda_peak / 2**20
        print(f"    {label:<26} {seconds:9.3f} s/image {1 / seconds:8.2f} images/s   peak RSS "
              f"{memory.peak / 2**20:7.0f} MB", flush=True)
        return seconds

    # the floor: ONNX Runtime's forward pass over the rows one attribution runs (images x steps)
    session, provider = make_session(__import__("onnx").load(str(path)), providers, args.threads)
    x_name = session.get_inputs()[0].name
    chunk = images[:1].repeat(min(n * steps, args.forward_rows), axis=0)
    forward = statistics.median(timed(lambda: session.run(None, {x_name: chunk}), args.repeat,
                                      lambda: session.run(None, {x_name: chunk}))) / len(chunk)
    session = None  # free the forward session before the attributions run
    floor = 2 * steps * forward
    result = {"model": name, "images": n, "steps": steps, "provider": provider, "forward_s_per_image": forward,
              "floor_s_per_image": floor, "methods": rows}
    print(f"  {name}: {n} image(s), {steps} steps, {provider}; forward {forward * 1e3:.2f} ms/image, "
          f"floor {floor:.3f} s/image", flush=True)

    for method in ("gnl_ig", "ig"):
        explainer = Explainer(path, method=method, steps=steps, memory_budget=args.memory_budget,
                              threads=args.threads, providers=providers)
        seconds = record(f"gnl-onnx {method}", lambda e=explainer: e.explain(images),
                         lambda e=explainer: e.explain(images[:1]), chunks=list(explainer.chunks(n)))
        if seconds:
            rows[f"gnl-onnx {method}"]["ratio_to_floor"] = seconds / floor
            if device == "cuda":
                rows[f"gnl-onnx {method}"]["gpu_used_mb"] = (gpu_used_bytes() or 0) / 2**20
        del explainer
        gc.collect()

    torch_device = torch.device(device)
    module = module.to(torch_device)
    inputs = torch.from_numpy(images).to(torch_device)
    with torch.no_grad():
        targets = module(inputs).argmax(1)

    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(module)
    best = None
    for batch in args.captum_batches:
        def run(b=batch):
            ig.attribute(inputs, baselines=inputs * 0, target=targets, n_steps=steps, internal_batch_size=b)
            if device == "cuda":
                torch.cuda.synchronize()

        def warm(b=batch):
            ig.attribute(inputs[:1], baselines=inputs[:1] * 0, target=targets[:1], n_steps=min(steps, b),
                         internal_batch_size=b)

        seconds = record(f"captum ig (batch {batch})", run, warm)
        if seconds and (best is None or seconds < rows[best]["s_per_image"]):
            best = f"captum ig (batch {batch})"
    result["captum_best"] = best

    try:
        from zennit.attribution import IntegratedGradients as ZennitIG
        from zennit.composites import GuidedBackprop

        def zennit_run(k=inputs, t=targets, s=steps):
            one_hot = torch.nn.functional.one_hot(t, num_classes=1000).to(k.dtype)
            with ZennitIG(module, composite=GuidedBackprop(), n_iter=s) as attributor:
                attributor(k, one_hot)
            if device == "cuda":
                torch.cuda.synchronize()

        record("zennit ig+guided", zennit_run, lambda: zennit_run(inputs[:1], targets[:1], 2))
    except ImportError:
        rows["zennit ig+guided"] = {"error": "zennit is not installed (pip install zennit)"}

    for method in ("gnl-onnx gnl_ig", "gnl-onnx ig"):
        ours = rows.get(method, {}).get("s_per_image")
        if ours is None:
            continue
        if best:
            rows[method]["speedup_vs_captum_best"] = rows[best]["s_per_image"] / ours
            rows[method]["rss_vs_captum_best"] = rows[method]["peak_rss_mb"] / rows[best]["peak_rss_mb"]
        zennit = rows.get("zennit ig+guided", {}).get("s_per_image")
        if zennit:
            rows[method]["speedup_vs_zennit"] = zennit / ours
    module.to("cpu")
    return result


# -- relevance methods ------------------------------------------------------------------------------
COMPOSITES = {"lrp_epsilon_plus_flat": "EpsilonPlusFlat", "lrp_epsilon_gamma_box": "EpsilonGammaBox",
              "lrp_epsilon_alpha2_beta1_flat": "EpsilonAlpha2Beta1Flat"}
RELEVANCE_MODELS = ("resnet50", "vgg16", "mobilenet_v2")
BOUNDS = (-2.2, 2.7)  # ZBox: about ImageNet's normalized range, scalars for both tools


def zennit_canonizers(name: str):
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if name.startswith("resnet"):
        return [ResNetCanonizer()]
    if name.startswith("vgg"):
        return [VGGCanonizer()]
    return [SequentialMergeBatchNorm()]


def interleaved(ours, peer, repeat: int, warm: bool = True) -> tuple[list[float], list[float]]:
    """Times of ours and peer, alternating (ours first in even rounds), after one warm-up each
    (warm=False: none, for runs of hundreds of passes where the first pass's set-up is noise)."""
    if warm:
        ours(), peer()
    times = ([], [])
    for r in range(repeat):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            start = time.perf_counter()
            (ours, peer)[k]()
            times[k].append(time.perf_counter() - start)
    return times


def bench_relevance(name, path, module, images, args, providers) -> dict:
    import torch

    from gnl_onnx import Explainer

    n = len(images)
    inputs = torch.from_numpy(images)
    with torch.no_grad():
        targets = module(inputs).argmax(1)
    one_hot = torch.nn.functional.one_hot(targets, num_classes=1000).to(inputs.dtype)
    rows = {}
    print(f"  {name}: {n} image(s), {args.threads} thread(s), {args.repeat} interleaved rounds", flush=True)
    pairs = [(m, f"zennit {c}") for m, c in COMPOSITES.items()] + [("deeplift", "captum DeepLift")]
    for method, peer_name in pairs:
        opened = contextlib.ExitStack()
        explainer = Explainer(path, method=method, memory_budget=args.memory_budget, threads=args.threads,
                              providers=providers, bounds=BOUNDS)
        if method == "deeplift":
            from captum.attr import DeepLift

            for m in module.modules():  # Captum needs its hooks' inputs intact
                if isinstance(m, torch.nn.ReLU):
                    m.inplace = False
            deeplift = DeepLift(module)

            def peer():
                deeplift.attribute(inputs, baselines=inputs * 0, target=targets)  # noqa: B023 - timed in this iteration
        else:
            import zennit.composites

            kwargs = {"low": BOUNDS[0], "high": BOUNDS[1]} if method == "lrp_epsilon_gamma_box" else {}
            from zennit.attribution import Gradient

            composite = getattr(zennit.composites, COMPOSITES[method])(canonizers=zennit_canonizers(name), **kwargs)
            attributor = opened.enter_context(Gradient(module, composite))  # hooks registered once, as in a loop

            def peer():
                attributor(inputs, one_hot)  # noqa: B023 - timed in this iteration
        row = {"peer": peer_name}
        def ours(e=explainer):
            e.explain(images)

        try:
            ours_t, peer_t = interleaved(ours, peer, args.repeat)
        except Exception as e:  # noqa: BLE001 - a peer refusing a network is a result
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
            ours_t = timed(ours, args.repeat, ours)
            peer_t = None
        opened.close()
        row.update(ours_s_per_image=statistics.median(ours_t) / n, ours_times=ours_t)
        if peer_t:
            ratios = [p / o for o, p in zip(ours_t, peer_t)]
            row.update(peer_s_per_image=statistics.median(peer_t) / n, peer_times=peer_t,
                       speedup=statistics.median(ratios), speedup_range=[min(ratios), max(ratios)])
        rows[method] = row
        print(f"    {method:<30} {row['ours_s_per_image']:7.3f} s/image   {peer_name:<30} "
              + (f"{row['peer_s_per_image']:7.3f} s/image   x{row['speedup']:.2f} "
                 f"({row['speedup_range'][0]:.2f}-{row['speedup_range'][1]:.2f})" if peer_t else
                 f"failed: {row['error']}"), flush=True)
        del explainer
        gc.collect()
    return {"model": name, "images": n, "threads": args.threads, "methods": rows}


def relevance_table(results: list[dict]) -> str:
    lines = ["| model | method | gnl-onnx s/image | peer | peer s/image | peer / gnl-onnx (median, range) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for method, m in r["methods"].items():
            peer = (f"{m['peer_s_per_image']:.3f} | {m['speedup']:.2f}x ({m['speedup_range'][0]:.2f}-"
                    f"{m['speedup_range'][1]:.2f})") if "speedup" in m else f"failed: {m['error']} |"
            lines.append(f"| {r['model']} | {method} | {m['ours_s_per_image']:.3f} | {m['peer']} | {peer} |")
    return "\n".join(lines)


PERTURBATION_MODELS = ("resnet50", "mobilenet_v2")


def torch_rise(module, inputs, targets, masks, batch: int):
    """RISE in torch as Petsiuk et al.'s code runs it: the masked images in batches through the
    module, the saliency summed as score x mask (masks from gnl-onnx's generator: the same ones)."""
    import torch

    out = []
    with torch.no_grad():
        for image, target in zip(inputs, targets):
            saliency = torch.zeros(image.shape[1:])
            for lo in range(0, masks.count, batch):
                m = torch.from_numpy(masks.keep(lo, min(masks.count, lo + batch)))
                scores = module(image[None] * m[:, None])[:, int(target)]
                saliency += torch.einsum("k,khw->hw", scores, m)
            out.append(saliency / masks.count)
    return out


def bench_perturbation(name, path, module, images, args, providers) -> dict:
    import torch
    from captum.attr import KernelShap, Occlusion

    from gnl_onnx import Explainer
    from gnl_onnx.methods import get_method

    n, size = len(images), images.shape[-1]
    inputs = torch.from_numpy(images)
    with torch.no_grad():
        targets = module(inputs).argmax(1)
    window, stride, samples, grid, masks = args.occlusion_window, args.occlusion_stride, args.kernelshap_samples, 8, \
        args.rise_masks
    occlusion, kernelshap = Occlusion(module), KernelShap(module)
    features = torch.from_numpy(get_method(f"kernelshap:grid={grid}").features(size, size)[None, None])
    rise = get_method(f"rise:masks={masks},cells=7")

    def occlusion_peer():
        with torch.no_grad():
            occlusion.attribute(inputs, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                baselines=0.0, target=targets, perturbations_per_eval=args.peer_batch)

    def kernelshap_peer():
        with torch.no_grad():
            for i in range(n):
                kernelshap.attribute(inputs[i:i + 1], target=int(targets[i]), n_samples=samples,
                                     feature_mask=features, baselines=0.0, perturbations_per_eval=args.peer_batch)

    def rise_peer():
        torch_rise(module, inputs, targets, rise.perturbations(size, size, 1, 0), args.peer_batch)

    pairs = [(f"occlusion:window={window},stride={stride}", "captum Occlusion", occlusion_peer),
             (f"kernelshap:samples={samples},grid={grid}", "captum KernelShap", kernelshap_peer),
             (rise.name, "torch RISE (Petsiuk's loop)", rise_peer)]
    floor_session = make_floor_session(path, args.threads, providers)
    rows = {}
    print(f"  {name}: {n} image(s), {args.threads} thread(s), {args.repeat} interleaved round(s)", flush=True)
    for method, peer_name, peer in pairs:
        explainer = Explainer(path, method=method, memory_budget=args.memory_budget, threads=args.threads,
                              providers=providers)

        def ours(e=explainer):
            e.explain(images)

        ours_t, peer_t = interleaved(ours, peer, args.repeat, warm=False)
        passes = explainer.plan(n)["forward_passes_per_image"]
        floor = forward_seconds(floor_session, images[:1], args.forward_rows) * passes  # per image
        ratios = [p / o for o, p in zip(ours_t, peer_t)]
        rows[method] = {"peer": peer_name, "passes_per_image": passes,
                        "ours_s_per_image": statistics.median(ours_t) / n, "peer_s_per_image": statistics.median(peer_t) / n, "ours_times": ours_t, "peer_times": peer_t,
                        "speedup": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)],
                        "floor_s_per_image": floor, "x_floor": statistics.median(ours_t) / n / floor,
                        "runs": explainer.plan(n)}
        r = rows[method]
        print(f"    {method:<34} {r['ours_s_per_image']:7.2f} s/image ({r['x_floor']:.2f}x floor)   {peer_name:<28} "
              f"{r['peer_s_per_image']:7.2f} s/image   x{r['speedup']:.2f} ({r['speedup_range'][0]:.2f}-"
              f"{r['speedup_range'][1]:.2f})", flush=True)
        del explainer
        gc.collect()
    return {"model": name, "images": n, "threads": args.threads, "methods": rows}


def make_floor_session(path, threads, providers):
    from gnl_onnx.runtime import make_session

    import onnx

    return make_session(onnx.load(str(path)), providers, threads)[0]


def forward_seconds(session, image, rows: int) -> float:
    """Seconds of one forward pass of one image, run `rows` at a time by ONNX Runtime (median of 3)."""
    name = session.get_inputs()[0].name
    batch = np.repeat(image, rows, axis=0)
    session.run(None, {name: batch})
    return statistics.median(timed(lambda: session.run(None, {name: batch}), 3, lambda: None)) / rows


def perturbation_table(results: list[dict]) -> str:
    lines = ["| model | method | passes/image | gnl-onnx s/image | x floor | peer | peer s/image | "
             "peer / gnl-onnx (median, range) |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for method, m in r["methods"].items():
            lines.append(f"| {r['model']} | {method} | {m['passes_per_image']} | {m['ours_s_per_image']:.2f} | "
                         f"{m['x_floor']:.2f} | {m['peer']} | {m['peer_s_per_image']:.2f} | {m['speedup']:.2f}x "
                         f"({m['speedup_range'][0]:.2f}-{m['speedup_range'][1]:.2f}) |")
    return "\n".join(lines)


# -- report ----------------------------------------------------------------------------------------
def table(results: list[dict]) -> str:
    lines = ["| model | images | steps | method | s/image | images/s | x floor | vs best Captum | vs Zennit "
             "| peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for label, m in r["methods"].items():
            if "error" in m:
                lines.append(f"| {r['model']} | {r['images']} | {r['steps']} | {label} | failed: {m['error']} "
                             "| | | | | |")
                continue
            best = " (best)" if label == r.get("captum_best") else ""
            lines.append(
                f"| {r['model']} | {r['images']} | {r['steps']} | {label}{best} | {m['s_per_image']:.3f} | "
                f"{m['images_per_s']:.2f} | {_f(m.get('ratio_to_floor'))} | {_f(m.get('speedup_vs_captum_best'))}"
                f" | {_f(m.get('speedup_vs_zennit'))} | {m['peak_rss_mb']:.0f} |")
    return "\n".join(lines)


def _f(v):
    return "" if v is None else f"{v:.2f}x"


def summary(results: list[dict]) -> dict:
    """Geometric mean over models of gnl_ig's speed-up on Captum's best, per (images, steps)."""
    out = {}
    for r in results:
        m = r["methods"].get("gnl-onnx gnl_ig", {})
        if "speedup_vs_captum_best" in m:
            out.setdefault(f"{r['images']} image(s), {r['steps']} steps", []).append(m["speedup_vs_captum_best"])
    return {k: {"geomean_speedup": float(np.exp(np.mean(np.log(v)))), "min": min(v), "models": len(v)}
            for k, v in out.items()}


def versions() -> dict:
    import importlib.metadata as md

    found = {}
    for dist in ("onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "torch", "torchvision", "captum", "zennit"):
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--to-tolerance" in argv:  # time to a converged attribution: tools/bench_tolerance.py takes the rest
        import bench_tolerance

        return bench_tolerance.main([a for a in argv if a != "--to-tolerance"])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default="1,8", help="images per call (comma-separated)")
    p.add_argument("--steps", default="32,128", help="integration steps (comma-separated)")
    p.add_argument("--skip", default="vgg16:8:128,vgg16:1:128,vgg16:8:32,resnet50:8:128,mobilenet_v2:8:128,"
                                     "efficientnet-lite0:8:128",
                   help="model:images:steps configurations left out (the slowest; default keeps the run "
                        "near 30 minutes on 2 cores); '' for none")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime and torch threads (default 2)")
    p.add_argument("--captum-batches", default=",".join(map(str, CAPTUM_BATCHES)))
    p.add_argument("--memory-budget", default="auto",
                   help="gnl-onnx's budget (default auto); it picks the step chunk itself")
    p.add_argument("--forward-rows", type=int, default=32, help="batch of the floor's forward measurement")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--relevance", action="store_true",
                   help="time the LRP composites and deeplift beside Zennit and Captum instead (see above)")
    p.add_argument("--relevance-batch", type=int, default=2, help="images per call with --relevance")
    p.add_argument("--perturbation", action="store_true",
                   help="time occlusion, kernelshap and rise beside Captum and a torch RISE instead (see above)")
    p.add_argument("--perturbation-batch", type=int, default=2, help="images per call with --perturbation")
    p.add_argument("--peer-batch", type=int, default=32, help="--perturbation: the peers' perturbations per pass")
    p.add_argument("--occlusion-window", type=int, default=56)
    p.add_argument("--occlusion-stride", type=int, default=28)
    p.add_argument("--kernelshap-samples", type=int, default=200)
    p.add_argument("--rise-masks", type=int, default=4000)
    args = p.parse_args(argv)
    args.captum_batches = [int(b) for b in args.captum_batches.split(",")]

    import torch

    torch.set_num_threads(args.threads)
    providers = ["CUDAExecutionProvider"] if args.device == "cuda" else ["CPUExecutionProvider"]
    skip = {tuple(s.split(":")) for s in args.skip.split(",") if s}
    started = time.perf_counter()
    results = []
    if args.relevance or args.perturbation:
        defaults = RELEVANCE_MODELS if args.relevance else PERTURBATION_MODELS
        models = args.models if args.models != ",".join(MODELS) else ",".join(defaults)
        for name in [m.strip() for m in models.split(",") if m.strip()]:
            path, module = networks(name)
            batch = args.relevance_batch if args.relevance else args.perturbation_batch
            images = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            run = bench_relevance if args.relevance else bench_perturbation
            results.append(run(name, path, module, images, args, providers))
            del module
            gc.collect()
        print(relevance_table(results) if args.relevance else perturbation_table(results))
        if args.json:
            from gnl_onnx.report import atomic_write

            atomic_write(args.json, json.dumps({"results": results, "versions": versions(), "threads": args.threads,
                                                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                            "load_average": os.getloadavg()},
                                                "command": "python tools/bench.py " + " ".join(
                                                    sys.argv[1:] if argv is None else argv),
                                                "seconds": round(time.perf_counter() - started, 1)}, indent=1))
        return 0
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        path, module = networks(name)
        for batch in [int(b) for b in args.batches.split(",")]:
            images = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            for steps in [int(s) for s in args.steps.split(",")]:
                if (name, str(batch), str(steps)) in skip:
                    continue
                results.append(bench_config(name, path, module, images, steps, args, providers, args.device))
    report = {"results": results, "summary": summary(results), "versions": versions(),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": args.device,
                          "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None},
              "threads": args.threads, "command": "python tools/bench.py " + " ".join(sys.argv[1:] if argv is None
                                                                                    else argv),
              "seconds": round(time.perf_counter() - started, 1)}
    print(table(results))
    for k, v in report["summary"].items():
        print(f"gnl_ig vs best Captum IG, {k}: geometric mean {v['geomean_speedup']:.2f}x over {v['models']} "
              f"models (lowest {v['min']:.2f}x)")
    if args.json:
        from gnl_onnx.report import atomic_write

        atomic_write(args.json, json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
