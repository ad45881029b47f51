"""gnl_ig under graph and session variants, measured in one process (issue 16 item 1, see
docs/performance.md): per model, one Explainer per variant, timed in interleaved rounds (wall and
process CPU seconds per image, per-round ratios to the first variant), the floor (2 x steps forward
passes at the attribution's batch) and, with --profile, ONNX Runtime's op profile (kernel time
summed by op type, as shares) and the graph's op counts.

    python tools/lever_profile.py --variants old,new --models mobilenet_v2,efficientnet-lite0 \
        --threads 1 --steps 16 --floor --rounds 5 --profile

Variants: old (the defaults), new (sub-pixel strided gradients), cmask (Conv masks), static (the
session's inputs fixed to one image and `steps` points), cmask_static, and session options:
extended / basic (graph optimization level), noarena, mempattern."""

import argparse
import collections
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import numpy as np
import onnxruntime as ort
from gnl_onnx import Explainer
import gnl_onnx.autodiff.rules.conv as conv


def path_of(name):
    if name == "efficientnet-lite0":
        from models.registry import get_model

        return str(get_model(name))
    from models import torchvision_zoo

    return str(torchvision_zoo.export(name, "legacy", size=224))


VARIANTS = {}


def variant(name):
    def deco(f):
        VARIANTS[name] = f
        return f

    return deco


import gnl_onnx.autodiff.rules.activation as act  # noqa: E402 - patched after the helpers above


@variant("old")
def _old():
    conv.SUBPIXEL = False
    act.CONV_MASKS = False


@variant("new")
def _new():
    conv.SUBPIXEL = True
    act.CONV_MASKS = False


@variant("cmask")
def _cmask():
    conv.SUBPIXEL = False
    act.CONV_MASKS = True


STATIC = {"on": False}


@variant("static")
def _static():
    conv.SUBPIXEL = False
    act.CONV_MASKS = False
    STATIC["on"] = True


@variant("cmask_static")
def _cmask_static():
    conv.SUBPIXEL = False
    act.CONV_MASKS = True
    STATIC["on"] = True


import gnl_onnx.explainer as gex  # noqa: E402

_make = gex.make_session


def _patched(model, providers=None, threads=None, memory_pattern=True):
    if STATIC["on"]:
        dims = {
            "input": [1, 3, 224, 224],
            "baseline": [1, 3, 224, 224],
            "target": [1],
            "alphas": [STEPS[0]],
            "weights": [STEPS[0]],
            "noise": [1, 1, 1, 1, 1],
        }
        for i in model.graph.input:
            if i.name in dims:
                for d, v in zip(i.type.tensor_type.shape.dim, dims[i.name]):
                    d.ClearField("dim_param")
                    d.dim_value = v
        STATIC["on"] = False
    return _make(model, providers, threads, memory_pattern)


gex.make_session = _patched
STEPS = [32]
OPTS = {}


def _opts_variant(name, **o):
    def f():
        conv.SUBPIXEL = False
        act.CONV_MASKS = False
        OPTS.clear()
        OPTS.update(o)

    VARIANTS[name] = f


_opts_variant("extended", level="extended")
_opts_variant("basic", level="basic")
_opts_variant("noarena", arena=False)
_opts_variant("mempattern", mem=True)


def _opt_session(model, providers=None, threads=None, memory_pattern=True):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_mem_pattern = OPTS.get("mem", memory_pattern)
    so.enable_cpu_mem_arena = OPTS.get("arena", True)
    lv = OPTS.get("level")
    if lv:
        so.graph_optimization_level = {
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        }[lv]
    if threads:
        so.intra_op_num_threads = threads
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    OPTS.clear()
    return s, "CPUExecutionProvider"


_prev_patch = gex.make_session


def _patched2(model, providers=None, threads=None, memory_pattern=True):
    if OPTS:
        return _opt_session(model, providers, threads, memory_pattern)
    return _prev_patch(model, providers, threads, memory_pattern)


gex.make_session = _patched2


def op_profile(jsonfile):
    events = json.load(open(jsonfile))
    by = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by[e["args"]["op_name"]] += e["dur"]
    return by


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="mobilenet_v2,efficientnet-lite0")
    p.add_argument("--variants", default="old,new")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--floor", action="store_true")
    a = p.parse_args()
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    for name in a.models.split(","):
        path = path_of(name)
        ex = {}
        for v in a.variants.split(","):
            VARIANTS[v]()
            STEPS[0] = a.steps
            e = Explainer(path, method="gnl_ig", steps=a.steps, threads=a.threads)
            e.explain(image)  # warm
            ex[v] = e
        fs = None
        if a.floor:
            so = ort.SessionOptions()
            so.intra_op_num_threads = a.threads
            fs = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            xn = fs.get_inputs()[0].name
            chunk = np.repeat(image, a.steps + 1, axis=0)
            fs.run(None, {xn: chunk})
        times = collections.defaultdict(list)
        cpu = collections.defaultdict(list)
        for _ in range(a.rounds):
            for v, e in ex.items():
                t = time.perf_counter()
                c = time.process_time()
                e.explain(image)
                times[v].append(time.perf_counter() - t)
                cpu[v].append(time.process_time() - c)
            if fs is not None:
                t = time.perf_counter()
                fs.run(None, {xn: chunk})
                times["forward"].append((time.perf_counter() - t) * 2 * a.steps / (a.steps + 1))
        med = {v: statistics.median(t) for v, t in times.items()}
        print(f"== {name}: medians over {a.rounds} interleaved rounds (s/image)")
        for v, m in med.items():
            extra = f"  x floor {m / med['forward']:.2f}" if "forward" in med and v != "forward" else ""
            print(f"   {v:10s} {m:.3f}  all {['%.3f' % x for x in times[v]]}{extra}")
        base = a.variants.split(",")[0]
        for v in ex:
            print(f"   cpu s {v:12s} median {statistics.median(cpu[v]):.3f} all {['%.3f' % x for x in cpu[v]]}")
            if v != base:
                rs = [x / y for x, y in zip(cpu[v], cpu[base])]
                print(
                    f"   cpu ratio {v}/{base}: median {statistics.median(rs):.3f} per round {['%.2f' % r for r in rs]}"
                )
        # per-round ratios
        for v in ex:
            if v != base:
                rs = [x / y for x, y in zip(times[v], times[base])]
                print(f"   ratio {v}/{base}: median {statistics.median(rs):.3f} per round {['%.2f' % r for r in rs]}")
        if a.profile:
            for v, e in ex.items():
                VARIANTS[v]()
                from gnl_onnx.attribution import attribution_model

                m = attribution_model(path, method="gnl_ig")
                if STATIC["on"]:
                    _patched(m, None, 1)
                    STATIC["on"] = False
                so = ort.SessionOptions()
                so.intra_op_num_threads = a.threads
                so.enable_mem_pattern = False
                so.enable_profiling = True
                so.profile_file_prefix = f"/tmp/prof_{name}_{v}"
                s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                e.session = s
                e.explain(image)
                e.explain(image)
                f = s.end_profiling()
                by = op_profile(f)
                tot = sum(by.values())
                nodes = collections.Counter(n.op_type for n in m.graph.node)
                print(f"   profile {v}: total kernel {tot / 2e6:.3f} s per run; nodes {len(m.graph.node)}")
                print("     " + ", ".join(f"{k} {100 * d / tot:.1f}%" for k, d in by.most_common(14)))
                print("     graph ops: " + ", ".join(f"{k} {c}" for k, c in nodes.most_common(12)))
                os.remove(f)


main()
