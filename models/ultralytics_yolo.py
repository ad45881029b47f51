"""Ultralytics YOLOv8n, built from its configuration (random weights) and written by Ultralytics's
own ONNX export (issue 21 item 5). Its pretrained weights download at run time, which this project
never does; `YOLO("yolov8n.yaml")` builds the network offline.

The graph: "images" [1, 3, S, S] -> "output0" [1, 4 + 80, A], per anchor the decoded box (cx, cy,
w, h in input pixels) and the 80 class probabilities (sigmoid), before NMS (gnl_onnx reads it as
the "yolov8" box layout). The export fuses BatchNorm into the convolutions, and so does the torch
module it leaves behind (`build` returns that module: the same function, for the reference).

Weights: Ultralytics's own initialisation gives every class of every anchor the same probability
(its head biases), so the kept boxes would be decided by ties; here every Conv is redrawn with
variance 1/fan-in and its bias, and BatchNorm statistics as torchvision_zoo's, seeded."""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import tempfile

import torch

from .cache import exclusive, exports_root
from .torchvision_zoo import _randomise_batchnorm

CONFIG = "yolov8n.yaml"
SIZE = 160  # a multiple of the largest stride (32); 525 anchors
SEED = 0
RECIPE = 1  # bump when build() changes the weights it produces
OPSET = 17


@contextlib.contextmanager
def _quiet_offline(folder: str):
    """Ultralytics writes its settings file under YOLO_CONFIG_DIR and, unless told it is offline,
    may look for updates: both kept inside `folder`, and the export's file too (it writes to the
    working directory)."""
    saved = {k: os.environ.get(k) for k in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "YOLO_VERBOSE")}
    os.environ.update(YOLO_CONFIG_DIR=folder, YOLO_OFFLINE="1", YOLO_VERBOSE="False")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _randomised(seed: int):
    """The Ultralytics YOLO object of CONFIG with seeded random weights (not yet fused)."""
    from ultralytics import YOLO

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


def export_path(cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> pathlib.Path:
    import ultralytics

    tv = re.sub(r"[^A-Za-z0-9.]", "_", f"ultralytics{ultralytics.__version__}-torch{torch.__version__}")
    return exports_root(cache_dir) / f"yolov8n-{SIZE}px-seed{seed}-r{RECIPE}-{tv}.onnx"


def export(cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> pathlib.Path:
    """The ONNX file Ultralytics's export writes for the seeded model (fixed 1 x 3 x SIZE x SIZE:
    its dynamic export leaves the spatial sizes unknown, which the backward needs), on first use,
    moved into the cache whole."""
    path = export_path(cache_dir, seed)
    if path.is_file():
        return path
    with exclusive(path):  # written once across processes (cache.exclusive)
        if not path.is_file():
            with tempfile.TemporaryDirectory(dir=path.parent) as folder, _quiet_offline(folder):
                written = _randomised(seed).export(format="onnx", imgsz=SIZE, opset=OPSET, dynamic=False,
                                                   simplify=False)
                os.replace(written, path)
    return path


def build(seed: int = SEED) -> torch.nn.Module:
    """The torch module the export computes (BatchNorm fused, as Ultralytics fuses it to export),
    eval mode, its head in export form: module(images) -> output0 [N, 84, A]."""
    with tempfile.TemporaryDirectory() as folder, _quiet_offline(folder):
        yolo = _randomised(seed)
        net = yolo.model.fuse(verbose=False).eval()
        for module in net.modules():  # the Detect head's export form: output0 as the ONNX graph has it
            if type(module).__name__ == "Detect":
                module.export, module.format = True, "onnx"
    return net
