"""Time to the first attribution and whole-process peak memory, as a user meets them: one fresh
process per tool that imports it, loads the network, builds what it needs and explains one image
with 32 steps; gnl-onnx's process beside Captum's, alternately, in the same run.

    python tools/bench_process.py                                  # 4 models x 3 rounds (about 6 min)
    python tools/bench_process.py --models vgg16 --rounds 1 --memory-budget 2GB

gnl-onnx: `import gnl_onnx`, `Explainer(model.onnx, "gnl_ig", steps=32)` (reading, normalizing and
converting the model and starting the ONNX Runtime session), `explain(image)`. Captum: `import
torch, torchvision, captum`, the torchvision module built and its weights loaded from a state-dict
file written beforehand (EfficientNet-Lite0: its package's from_pretrained), then
IntegratedGradients with internal_batch_size 8 (the best batch in tools/bench.py's runs). Both at
--threads threads. Reported per process: seconds in each stage, the process's whole wall time
(from the parent: interpreter start to exit) and its peak RSS (the kernel's ru_maxrss of that
child). Medians over --rounds rounds; the order of the two flips every round.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("resnet50", "vgg16", "mobilenet_v2", "efficientnet-lite0")

OURS = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from gnl_onnx import Explainer
t1 = time.perf_counter()
path, threads, budget = sys.argv[1], int(sys.argv[2]), sys.argv[3]
explainer = Explainer(path, method="gnl_ig", steps=32, threads=threads, memory_budget=budget)
t2 = time.perf_counter()
image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
result = explainer.explain(image)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "setup": t2 - t1, "attribution": t3 - t2,
                  "chunks": list(explainer.chunks(1)), "score": float(result.score[0])}))
"""

CAPTUM = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import torch
from captum.attr import IntegratedGradients
t1 = time.perf_counter()
name, weights, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
if name == "efficientnet-lite0":
    sys.path.insert(0, sys.argv[4])
    from models.export import _load_efficientnet_lite
    module = _load_efficientnet_lite(0)
else:
    import torchvision
    module = getattr(torchvision.models, name)(weights=None)
    module.load_state_dict(torch.load(weights))
    module.eval()
t2 = time.perf_counter()
image = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32))
with torch.no_grad():
    target = module(image).argmax(1)
IntegratedGradients(module).attribute(image, baselines=image * 0, target=target, n_steps=32,
                                      internal_batch_size=8)
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "setup": t2 - t1, "attribution": t3 - t2}))
"""


def child(code: str, args: list[str], threads: int) -> dict:
    """Run one process; its stage times, wall time from spawn to exit, and peak RSS. Its output
    goes to files, not pipes: a full pipe would stall the child while this process waits."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, env=env, cwd=ROOT,
                                   text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if status != 0:
        raise RuntimeError(f"child failed ({status}): {stderr.strip().splitlines()[-1] if stderr.strip() else stdout}")
    row = json.loads(stdout.strip().splitlines()[-1])
    row.update(wall=wall, peak_rss_mb=usage.ru_maxrss / 1024)  # Linux: ru_maxrss is in KB
    return row


PREPARE = r"""
import json, pathlib, sys
sys.path.insert(0, sys.argv[3])
name, folder = sys.argv[1], pathlib.Path(sys.argv[2])
if name == "efficientnet-lite0":
    from models.registry import get_model
    print(json.dumps([str(get_model(name)), None]))
else:
    import torch
    from models import torchvision_zoo
    path = torchvision_zoo.export(name, "legacy", size=224)
    weights = folder / f"{name}.pt"
    torch.save(torchvision_zoo.build(name).state_dict(), weights)
    print(json.dumps([str(path), str(weights)]))
"""


def prepare(name: str, folder: pathlib.Path) -> tuple[str, str | None]:
    """The ONNX file and, for torchvision networks, a state dict of the very same module. Made in
    a child of its own: this process must stay small, since a child's peak RSS (ru_maxrss) counts
    the parent's resident memory at the fork."""
    done = subprocess.run([sys.executable, "-c", PREPARE, name, str(folder), str(ROOT)], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    path, weights = json.loads(done.stdout.strip().splitlines()[-1])
    return path, weights


def median_row(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0] if isinstance(rows[0][k], (int, float))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-budget", default="auto", help="gnl-onnx's --memory-budget (default auto)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path, weights = prepare(name, pathlib.Path(tmp))
            ours, peer = [], []
            ours_args = [str(path), str(args.threads), args.memory_budget]
            peer_args = [name, str(weights), str(args.threads), str(ROOT)]
            for r in range(args.rounds):  # alternate which goes first
                for code, argv, rows in ((OURS, ours_args, ours), (CAPTUM, peer_args, peer))[::1 if r % 2 == 0 else -1]:
                    rows.append(child(code, argv, args.threads))
            row = {"model": name, "gnl_onnx": median_row(ours), "captum": median_row(peer),
                   "chunks": ours[0]["chunks"], "rounds": args.rounds}
            a, b = row["gnl_onnx"], row["captum"]
            row["setup_over_attribution"] = a["setup"] / a["attribution"]
            row["wall_speedup"] = b["wall"] / a["wall"]
            row["rss_ratio"] = a["peak_rss_mb"] / b["peak_rss_mb"]
            results.append(row)
            print(f"{name}: gnl-onnx import {a['import']:.2f} + setup {a['setup']:.2f} + attribution "
                  f"{a['attribution']:.2f} s, process {a['wall']:.2f} s, peak {a['peak_rss_mb']:.0f} MB "
                  f"(chunks {row['chunks']}) | Captum import {b['import']:.2f} + setup {b['setup']:.2f} + "
                  f"attribution {b['attribution']:.2f} s, process {b['wall']:.2f} s, peak {b['peak_rss_mb']:.0f} MB"
                  f" | setup/attribution {row['setup_over_attribution']:.2f}, process {row['wall_speedup']:.2f}x "
                  f"faster, RSS {row['rss_ratio']:.2f}x Captum's", flush=True)
    print("\n| model | gnl-onnx setup / attribution | process s, gnl-onnx / Captum | speed-up | peak RSS MB, "
          "gnl-onnx / Captum |\n|---|---|---|---|---|")
    for row in results:
        a, b = row["gnl_onnx"], row["captum"]
        print(f"| {row['model']} | {a['setup']:.2f} / {a['attribution']:.2f} s ({row['setup_over_attribution']:.2f}) "
              f"| {a['wall']:.2f} / {b['wall']:.2f} | {row['wall_speedup']:.2f}x | {a['peak_rss_mb']:.0f} / "
              f"{b['peak_rss_mb']:.0f} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
