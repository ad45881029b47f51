"""The offline image sets (models/datasets.py), `evaluate --dataset`, and the Fashion-MNIST CNN
trained here (models/fashion_mnist.py)."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from gnl_onnx.errors import InputError, UsageError
from gnl_onnx_models import datasets
from gnl_onnx_models.registry import get_model
from onnx_builders import run_cli


def idx_bytes(array: np.ndarray) -> bytes:
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(np.uint8).tobytes()


def test_read_idx_round_trip_and_refusals(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(idx_bytes(a)))
    np.testing.assert_array_equal(datasets.read_idx(good), a)
    truncated = tmp_path / "short.gz"
    truncated.write_bytes(gzip.compress(idx_bytes(a)[:-7]))
    with pytest.raises(InputError, match="truncated"):
        datasets.read_idx(truncated)
    other = tmp_path / "other.gz"
    other.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + bytes(8)))  # float IDX: not ours
    with pytest.raises(InputError, match="unsigned bytes"):
        datasets.read_idx(other)


def test_fashion_split_missing_names_the_package(tmp_path):
    with pytest.raises(UsageError, match="apt install dataset-fashion-mnist"):
        datasets.fashion_mnist_split("t10k", tmp_path)


def test_load_dataset_sizes_labels_and_refusals():
    digits = datasets.load_dataset("mnist", 7, seed=3)
    assert len(digits) == 7 and all(s.pixels.shape == (28, 28) and s.pixels.dtype == np.uint8 for s in digits)
    assert all(0 <= s.label <= 9 for s in digits)
    assert [s.name for s in digits] == [s.name for s in datasets.load_dataset("mnist", 7, seed=3)]  # seeded
    assert [s.name for s in digits] != [s.name for s in datasets.load_dataset("mnist", 7, seed=4)]
    docs = datasets.load_dataset("documents")
    assert [s.label for s in docs] == [0, 1, 2, 3] * 2
    # class k is the upright page rotated 90k degrees clockwise: rotating back recovers it
    for s in docs[:4]:
        np.testing.assert_array_equal(np.rot90(s.pixels, k=s.label), docs[0].pixels)
    photos = datasets.load_dataset("photos", 4)
    assert [s.label for s in photos] == [285, 967, 657, 665] and all(s.pixels.ndim == 3 for s in photos)
    with pytest.raises(UsageError, match="unknown dataset"):
        datasets.load_dataset("imagenet")
    with pytest.raises(UsageError, match="positive"):
        datasets.load_dataset("mnist", 0)


def test_evaluate_dataset_writes_the_images_it_scored(tmp_path, capfd):
    model = get_model("mnist")
    out = tmp_path / "eval"
    args = ["evaluate", model, "--dataset", "mnist", "--limit", "4", "--preset", "mnist", "--methods",
            "gradient,random", "--out", out, "--threads", "1"]
    code, stdout, err = run_cli(capfd, *args)
    assert code == 0, err
    samples = datasets.load_dataset("mnist", 4)
    rows = (out / "dataset" / "labels.csv").read_text().splitlines()
    assert rows == ["image,label"] + [f"{s.name}.png,{s.label}" for s in samples]
    for s in samples:  # lossless: the evaluated PNG is the dataset's pixels
        np.testing.assert_array_equal(np.asarray(Image.open(out / "dataset" / f"{s.name}.png")), s.pixels)
    evaluated = (out / "evaluation.csv").read_text()
    assert all(s.name in evaluated for s in samples) and "recommendation:" in stdout
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, _, err = run_cli(capfd, *args)  # again without --overwrite: refused, nothing touched
    assert code == 2 and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    code, _, err = run_cli(capfd, "evaluate", model, str(out / "dataset" / f"{samples[0].name}.png"), "--limit", "3",
                           "--preset", "mnist", "--out", tmp_path / "x")
    assert code == 2 and "--limit applies to --dataset only" in err


@pytest.mark.skipif(not datasets.FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_cnn_trains_exports_and_learns(tmp_path, monkeypatch):
    """The registry's first-use path, shortened to one epoch on 3000 training images: the cached
    ONNX model (checked against torch by the export itself) classifies test images far above
    chance (10%), as well as torch measured on the 10k, and records how it was trained."""
    import functools
    import json

    import onnx
    import onnxruntime as ort
    import torch

    from gnl_onnx.presets import PRESETS
    from gnl_onnx_models import fashion_mnist

    torch.set_num_threads(1)
    monkeypatch.setattr(fashion_mnist, "export", functools.partial(fashion_mnist.export, epochs=1, limit=3000,
                                                                   log=lambda *a: None))
    path = get_model("fashion-mnist", cache_dir=tmp_path)
    training = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["gnl_onnx.training"])
    assert training["epochs"] == 1 and training["train_images"] == 3000
    images, labels = datasets.fashion_mnist_split("t10k")
    assert images.shape == (10000, 28, 28) and sorted(np.bincount(labels)) == [1000] * 10
    prep = PRESETS["fashion-mnist"].preprocessing
    x = np.concatenate([prep.to_input(a) for a in images[:2000]])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    accuracy = float((session.run(None, {"input": x})[0].argmax(1) == labels[:2000]).mean())
    # one short epoch reaches about 60% (the full 3-epoch training: 92%); chance is 10%
    assert accuracy > 0.5 and abs(accuracy - training["test_accuracy"]) < 0.05, (accuracy, training)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MaxPool") == 2 and ops.count("Relu") == 5  # what GNL gates
