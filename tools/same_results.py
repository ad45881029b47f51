"""Results of every method on the demo photos, saved or compared: a refactoring check.

    python tools/same_results.py save before.npz [--steps 4 --photos 2]
    python tools/same_results.py compare before.npz

Per method it keeps the attribution, targets and scores of the demo model (EfficientNet-Lite0,
real weights) on the first --photos demo photos, and a SHA-256 of the attribution model's graph
(its nodes, inputs, outputs and initializers, serialized deterministically). `compare` rebuilds
everything with the code checked out now and prints, per method, whether the graph is the same and
the largest absolute difference of each array (0.0: bit for bit). Exit status 1 when an array
differs where the graph did not. Runs with PYTHONHASHSEED=0: the order of some graph nodes
follows Python's set order, which changes with the hash seed of each process."""
from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def graph_hash(model) -> str:
    graph = model.graph
    digest = hashlib.sha256()
    for part in (graph.node, graph.input, graph.output, graph.initializer):
        for item in part:
            digest.update(item.SerializeToString(deterministic=True))
    return digest.hexdigest()


def collect(steps: int, photos: int, methods=None) -> dict[str, np.ndarray]:
    import gnl_onnx
    from gnl_onnx.images import load_all
    from gnl_onnx.presets import get_preset
    from models import registry

    try:
        from gnl_onnx.demo import demo_photos
    except ImportError:  # before the commands moved (gnl_onnx/demo.py)
        from gnl_onnx.pipeline import demo_photos

    model = registry.get_model("efficientnet-lite0")
    preset = get_preset(registry.preset_name("efficientnet-lite0"))
    folder = pathlib.Path(tempfile.mkdtemp(prefix="gnl-same-"))
    paths = demo_photos(folder)[:photos]
    images = np.concatenate(load_all(paths, preset.preprocessing, strict=True)[0])
    out = {}
    for method in methods or gnl_onnx.METHODS:
        try:
            attribution = gnl_onnx.attribution_model(str(model), method=method, bounds=preset.preprocessing.bounds())
            digest = graph_hash(attribution)
        except gnl_onnx.UsageError:  # a method that builds no single graph (ablation_cam): its arrays only
            digest = "none"
        out[f"{method}/graph"] = np.frombuffer(digest.encode(), np.uint8)
        explainer = gnl_onnx.Explainer(str(model), method=method, steps=steps, threads=2,
                                       bounds=preset.preprocessing.bounds())
        result = explainer.explain(images)
        out[f"{method}/attributions"] = result.attributions
        out[f"{method}/target"] = result.target
        out[f"{method}/scores"] = result.scores
        if result.delta is not None:
            out[f"{method}/delta"] = result.delta
        print(method, "done", flush=True)
    return out


def main() -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":  # the same graph bytes for the same code
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("save", "compare"))
    parser.add_argument("file")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--photos", type=int, default=2)
    args = parser.parse_args()
    before = dict(np.load(args.file)) if args.action == "compare" else {}
    # compare: the methods the saved checkout had (methods added since have nothing to compare with)
    now = collect(args.steps, args.photos, sorted({k.split("/")[0] for k in before}) or None)
    if args.action == "save":
        np.savez(args.file, **now)
        print(f"saved {len(now)} arrays to {args.file}")
        return 0
    status = 0
    for method in sorted({k.split("/")[0] for k in before}):
        same_graph = bytes(before[f"{method}/graph"]) == bytes(now.get(f"{method}/graph", b""))
        diffs = []
        for key in sorted(k for k in before if k.startswith(f"{method}/") and not k.endswith("/graph")):
            if key not in now or before[key].shape != now[key].shape:
                diffs.append(f"{key.split('/')[1]}: missing or reshaped")
                status = 1
                continue
            largest = float(np.max(np.abs(before[key].astype(np.float64) - now[key].astype(np.float64)), initial=0))
            diffs.append(f"{key.split('/')[1]} {largest:.3g}")
            if same_graph and largest != 0.0:
                status = 1
        print(f"{method:<32} graph {'same' if same_graph else 'CHANGED'}; " + ", ".join(diffs))
    return status


if __name__ == "__main__":
    sys.exit(main())
