"""Ultralytics YOLOv8n, built from its configuration (random weights) and written by Ultralytics's
own ONNX export (issue 21 item 5). Its pretrained weights download at run time, which this project
never does; `YOLO("yolov8n.yaml")` builds the network offline.

The graph: "images" [1, 3, S, S] -> "output0" [1, 4 + 80, A], per anchor the decoded box (cx, cy,
w, h in input pixels) and the 80 class probabilities (sigmoid), before NMS (gnl_onnx reads it as
the "yolov8" box layout). The export fuses BatchNorm into the convolutions.

Weights: Ultralytics's own initialisation gives every class of every anchor the same probability
(its head biases), so the kept boxes would be decided by ties; here every Conv is redrawn with
variance 1/fan-in and its bias, and BatchNorm statistics as torchvision_zoo's, seeded.

Ultralytics runs only in a child process (`python -m models.ultralytics_yolo ...`): importing it
patches PIL.Image.open for the whole process (on an unreadable image it tries to pip-install a HEIF
plugin instead of raising PIL's error), which would change what every later test in that process
sees. The parent gets the exported file and, for the tests, the float64 torch gradients."""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np

from .cache import exclusive, exports_root

CONFIG = "yolov8n.yaml"
SIZE = 160  # a multiple of the largest stride (32); 525 anchors
CLASSES = 80
SEED = 0
RECIPE = 1  # bump when the weights _randomised() draws change
OPSET = 17


def installed_version() -> str | None:
    """Ultralytics's version, read from its metadata without importing it (None: not installed)."""
    from importlib import metadata

    try:
        return metadata.version("ultralytics")
    except metadata.PackageNotFoundError:
        return None


def export_path(cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> pathlib.Path:
    from importlib import metadata

    tag = re.sub(r"[^A-Za-z0-9.]", "_", f"ultralytics{installed_version()}-torch{metadata.version('torch')}")
    return exports_root(cache_dir) / f"yolov8n-{SIZE}px-seed{seed}-r{RECIPE}-{tag}.onnx"


def export(cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> pathlib.Path:
    """The ONNX file Ultralytics's export writes for the seeded model (fixed 1 x 3 x SIZE x SIZE:
    its dynamic export leaves the spatial sizes unknown, which the backward needs), written once
    into the cache by a child process."""
    path = export_path(cache_dir, seed)
    if path.is_file():
        return path
    with exclusive(path):  # written once across processes (cache.exclusive)
        if not path.is_file():
            _child("export", str(path), str(seed))
    return path


def reference_gradients(images: np.ndarray, indices, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(values [K], gradients [K, 3, S, S]): for each flat box index k (anchor x CLASSES + class,
    as gnl_onnx's yolov8 layout numbers them) of images[k], output0[4 + class, anchor] of the torch
    module the export computes (BatchNorm fused) and its input gradient, by torch autograd in float64."""
    with tempfile.TemporaryDirectory() as folder:
        given, found = os.path.join(folder, "given.npz"), os.path.join(folder, "found.npz")
        np.savez(given, images=np.asarray(images, np.float32), indices=np.asarray(indices, np.int64))
        _child("gradients", given, found, str(seed))
        with np.load(found) as out:
            return out["values"], out["gradients"]


CHILD_SECONDS = 600  # an export takes seconds; a hung one must not stall the caller


def _child(*args: str) -> None:
    package = pathlib.Path(__file__).resolve().parent
    try:
        done = subprocess.run([sys.executable, "-m", f"{package.name}.{pathlib.Path(__file__).stem}", *args],
                              cwd=package.parent, capture_output=True, text=True, timeout=CHILD_SECONDS)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the Ultralytics child ({args[0]}) did not finish in {CHILD_SECONDS} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the Ultralytics child ({args[0]}) failed: {last}")


# -- in the child only -------------------------------------------------------------------------------


@contextlib.contextmanager
def _offline_in(folder: str):
    """Ultralytics writes its settings under YOLO_CONFIG_DIR and its export into the working
    directory, and checks for updates unless offline: all kept inside `folder`."""
    # without YOLO_AUTOINSTALL=False its export's requirement checks may pip-install its own pins
    # (onnx, onnxslim) into the venv where a network is reachable
    os.environ.update(YOLO_CONFIG_DIR=folder, YOLO_OFFLINE="True", YOLO_AUTOINSTALL="False", YOLO_VERBOSE="False")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)


def _randomised(seed: int):
    """The Ultralytics YOLO object of CONFIG with seeded random weights (not yet fused)."""
    import torch
    from ultralytics import YOLO

    from .torchvision_zoo import _randomise_batchnorm

    torch.manual_seed(seed)
    yolo = YOLO(CONFIG)
    draw = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in yolo.model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear", generator=draw)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.5, generator=draw)
    _randomise_batchnorm(yolo.model, torch.Generator().manual_seed(seed + 2))
    return yolo


def _write_export(path: str, seed: int) -> None:
    target = pathlib.Path(path)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder, _offline_in(folder):
        written = _randomised(seed).export(format="onnx", imgsz=SIZE, opset=OPSET, dynamic=False, simplify=False)
        os.replace(written, target)


def _write_gradients(given: str, found: str, seed: int) -> None:
    import torch

    with np.load(given) as inputs:
        images, indices = inputs["images"], inputs["indices"]
    with tempfile.TemporaryDirectory() as folder, _offline_in(folder):
        net = _randomised(seed).model.fuse(verbose=False).eval()
    for module in net.modules():  # the Detect head in its export form: output0 as the ONNX graph has it
        if type(module).__name__ == "Detect":
            module.export, module.format = True, "onnx"
    net = net.double()
    values, gradients = [], []
    for image, index in zip(images, indices):
        anchor, label = divmod(int(index), CLASSES)
        x = torch.from_numpy(image[None]).double().requires_grad_()
        value = net(x)[0, 4 + label, anchor]
        value.backward()
        values.append(float(value))
        gradients.append(x.grad.numpy()[0])
    np.savez(found, values=np.array(values), gradients=np.stack(gradients))


if __name__ == "__main__":  # the child: export PATH SEED | gradients GIVEN FOUND SEED
    if sys.argv[1] == "export":
        _write_export(sys.argv[2], int(sys.argv[3]))
    else:
        _write_gradients(sys.argv[2], sys.argv[3], int(sys.argv[4]))
