"""A converted model's bytes do not depend on Python's string hashing (PYTHONHASHSEED): the same
model converted in two processes with different hash seeds gives the same file. Constant folding
once wrote the folded weights in set order, which differed from process to process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
from onnx import helper
from onnx_builders import relu_cnn

import gnl_onnx


def _weights_as_constant_nodes():
    """The small CNN with every weight a Constant node, as some exporters write them: folding turns
    them back into initializers (six of them, so two hash seeds all but surely order them apart)."""
    model = relu_cnn(seed=3, hw=12, classes=4)
    weights = list(model.graph.initializer)
    del model.graph.initializer[:]
    for tensor in weights:
        model.graph.node.insert(0, helper.make_node("Constant", [], [tensor.name], value=tensor))
    return model


def test_converted_model_bytes_do_not_depend_on_the_hash_seed(tmp_path):
    source = tmp_path / "cnn.onnx"
    onnx.save(_weights_as_constant_nodes(), source)
    root = str(Path(gnl_onnx.__file__).resolve().parents[1])
    written = []
    for seed in ("1", "2"):
        out = tmp_path / f"ig.{seed}.onnx"
        env = {**os.environ, "PYTHONHASHSEED": seed,
               "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        run = subprocess.run([sys.executable, "-c", "import sys; from gnl_onnx.cli import main; "
                              "sys.exit(main(sys.argv[1:]))", "convert", str(source), "-o", str(out),
                              "--method", "ig"], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        written.append(out.read_bytes())
    assert len(written[0]) > 1000 and written[0] == written[1]
    folded = [t.name for t in onnx.load_from_string(written[0]).graph.initializer][:6]
    assert folded == ["w1", "b1", "w2", "b2", "w3", "b3"]  # in order of first use
