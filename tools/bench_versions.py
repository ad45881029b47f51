"""Two checkouts of gnl-onnx timed against each other on the same machine: ig and gnl_ig through the
Explainer (setup, then explain) on torchvision exports, one fresh process per (checkout, model,
method), the checkouts alternating round by round so a loaded machine slows both alike.

    python tools/bench_versions.py /path/to/before /path/to/after --models resnet50,mobilenet_v2

Prints per model and method the median setup and explain seconds of each checkout and their ratio
(after / before; above 1: slower)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from models import torchvision_zoo
from gnl_onnx import Explainer
path = torchvision_zoo.export(sys.argv[2], "legacy", size=224)
image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
start = time.perf_counter()
explainer = Explainer(str(path), method=sys.argv[3], steps=int(sys.argv[4]), threads=int(sys.argv[5]))
setup = time.perf_counter() - start
explainer.explain(image)  # warm-up
times = []
for _ in range(int(sys.argv[6])):
    start = time.perf_counter()
    explainer.explain(image)
    times.append(time.perf_counter() - start)
print(json.dumps({"setup": setup, "explain": min(times)}))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--models", default="resnet50,mobilenet_v2")
    p.add_argument("--methods", default="ig,gnl_ig")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=2, help="explain calls timed per process (the fastest kept)")
    args = p.parse_args()
    found: dict = {}
    for r in range(args.rounds):
        order = (args.before, args.after) if r % 2 == 0 else (args.after, args.before)
        for model in args.models.split(","):
            for method in args.methods.split(","):
                for root in order:
                    out = subprocess.run([sys.executable, "-c", CHILD, root, model, method, str(args.steps),
                                          str(args.threads), str(args.repeat)], capture_output=True, text=True,
                                         env={**os.environ, "PYTHONHASHSEED": "0"}, cwd=root, check=True)
                    found.setdefault((model, method, root), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'model':<14}{'method':<8}{'setup before':>13}{'after':>8}{'explain before':>15}{'after':>8}{'ratio':>7}")
    for model in args.models.split(","):
        for method in args.methods.split(","):
            b = found[(model, method, args.before)]
            a = found[(model, method, args.after)]
            med = {k: (statistics.median(x[k] for x in b), statistics.median(x[k] for x in a)) for k in ("setup", "explain")}
            print(f"{model:<14}{method:<8}{med['setup'][0]:>13.2f}{med['setup'][1]:>8.2f}{med['explain'][0]:>15.3f}"
                  f"{med['explain'][1]:>8.3f}{med['explain'][1] / med['explain'][0]:>7.3f}   explain s, each round: "
                  f"before {' '.join('%.2f' % x['explain'] for x in b)}, after {' '.join('%.2f' % x['explain'] for x in a)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
