"""Train the small VGG-style Fashion-MNIST CNN (models/fashion_mnist.py) and put its ONNX export in
the model cache, where `get_model("fashion-mnist")` and tools/reproduce_paper.py find it.

    python tools/train_fashion_mnist.py                  # 3 epochs on the 60k training images
    python tools/train_fashion_mnist.py --force          # retrain even if the cache has it

Needs torch and Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--force", action="store_true", help="retrain even when the cache holds the model")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = p.parse_args(argv)
    import onnx
    import torch

    from gnl_onnx.errors import GnlOnnxError
    from models.export import write_atomically
    from models.fashion_mnist import export
    from models.registry import cache_path

    torch.set_num_threads(args.threads)
    path = cache_path("fashion-mnist")
    try:
        if args.force or not path.is_file():
            write_atomically(path, export)
    except GnlOnnxError as e:
        print(f"train_fashion_mnist: {e}", file=sys.stderr)
        return 2
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    print(path)
    print(json.dumps(json.loads(meta.get("gnl_onnx.training", "{}")), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
