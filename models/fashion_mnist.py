"""A small VGG-style CNN (3x3 Conv + ReLU pairs, MaxPool, two Gemm layers) trained here on
Fashion-MNIST, for the paper-style table: no pretrained Fashion-MNIST CNN with MaxPool ships on
PyPI, and the data does (Debian's dataset-fashion-mnist). Training is seeded and takes a few CPU
minutes; the registry trains it on first use and caches the ONNX export like the other models.

    python tools/train_fashion_mnist.py              # train, export, print the test accuracy
"""
from __future__ import annotations

import json
import pathlib
import time

import numpy as np

from .datasets import fashion_mnist_split
from .export import _torch_export

MEAN, STD = 0.2860, 0.3530  # the training split's pixel mean and std (/255), used by the preset
EPOCHS, BATCH, LR, SEED = 3, 128, 2e-3, 0


def build():
    import torch.nn as nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2)]

    return nn.Sequential(*block(1, 32), *block(32, 64), nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def _tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None])


def accuracy(model, images: np.ndarray, labels: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        predicted = torch.cat([model(_tensor(images[i:i + 1000])).argmax(1) for i in range(0, len(images), 1000)])
    return float((predicted.numpy() == labels).mean())


def train(epochs: int = EPOCHS, limit: int | None = None, log=print):
    """The trained module (eval mode) and {train/test accuracy, seconds, settings}."""
    import torch

    torch.manual_seed(SEED)
    train_x, train_y = fashion_mnist_split("train")
    test_x, test_y = fashion_mnist_split("t10k")
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LR, total_steps=epochs * -(-len(train_x) // BATCH))
    order = np.random.default_rng(SEED)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = order.permutation(len(train_x))
        for lo in range(0, len(perm), BATCH):
            idx = perm[lo:lo + BATCH]
            loss = torch.nn.functional.cross_entropy(model(_tensor(train_x[idx])), torch.from_numpy(train_y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        log(f"epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}, "
            f"{time.perf_counter() - start:.0f} s")
    info = {"test_accuracy": accuracy(model, test_x, test_y), "train_images": len(train_x), "epochs": epochs,
            "seconds": round(time.perf_counter() - start, 1), "seed": SEED, "mean": MEAN, "std": STD}
    return model, info


def export(path: pathlib.Path, epochs: int = EPOCHS, limit: int | None = None, log=print) -> dict:
    """Train, export to ONNX at `path` (input "input" [N,1,28,28], output "logits"), and record the
    training figures in the model's metadata (key gnl_onnx.training)."""
    import onnx
    import torch

    model, info = train(epochs, limit, log)
    _torch_export(model, torch.zeros(1, 1, 28, 28), path)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"gnl_onnx.training": json.dumps(info)})
    onnx.save(proto, str(path))
    return info


__all__ = ["MEAN", "STD", "accuracy", "build", "export", "train"]
