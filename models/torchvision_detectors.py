"""Random-weight torchvision detectors exported with their post-processing inside (issue 21).

Each model is torchvision's own builder (weights=None, weights_backbone=None) at a small input,
wrapped so that the ONNX graph takes an image batch of one, [1, 3, S, S] ("image"), and gives the
kept detections with a batch dim: "boxes" [1, K, 4] (x0, y0, x1, y1 in input pixels), "scores"
[1, K], "labels" [1, K] (int64), and for Mask R-CNN "masks" [1, K, 1, S, S]; K is decided at run
time (score threshold, NMS). The *_resnet18_fpn models are the resnet50 builders' recipe
(_resnet_fpn_extractor, returned layers 2-4, LastLevelP6P7) on a ResNet-18: the same heads and
post-processing at about a third of the graph, for the fast tests.

Only the legacy exporter: torch.export (the dynamo exporter) stops at torchvision's batched_nms,
which branches on data-dependent sizes ("Could not guard on data-dependent expression
4*Min(300, u0) + ... > 4000" for SSDlite, FCOS and RetinaNet, "Eq(4*u1, 0)" for Faster R-CNN,
"4*u1 > 4000" for Mask R-CNN; torch 2.14.1, torchvision 0.29.1).
"""
from __future__ import annotations

import os
import pathlib
import re
import tempfile
import warnings

import torch
from torchvision.models import resnet18
from torchvision.models import detection
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from .cache import exclusive, exports_root, start_child
from .torchvision_zoo import _randomise_batchnorm

SIZE = 128  # min_size = max_size: the image is not resized inside (its Resize keeps the size)
CLASSES = 5  # including the background of the R-CNNs
SCORE_THRESHOLD = 0.05
SEED = 0
RECIPE = 1  # bump when build() changes the weights it produces
OPSET = 17


def _resnet18_fpn(kind):
    def make(weights=None, weights_backbone=None, num_classes=CLASSES, **kwargs):  # random weights only
        trunk = resnet18(weights=None, norm_layer=torch.nn.BatchNorm2d)
        backbone = _resnet_fpn_extractor(trunk, 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
        return kind(backbone, num_classes, **kwargs)
    return make


_ONE_STAGE = dict(min_size=SIZE, max_size=SIZE, score_thresh=SCORE_THRESHOLD)
_TWO_STAGE = dict(min_size=SIZE, max_size=SIZE, box_score_thresh=SCORE_THRESHOLD)
# name -> (builder, its keyword arguments)
DETECTORS: dict[str, tuple] = {
    "ssdlite320_mobilenet_v3_large": (detection.ssdlite320_mobilenet_v3_large, dict(score_thresh=SCORE_THRESHOLD)),
    "fcos_resnet18_fpn": (_resnet18_fpn(detection.FCOS), _ONE_STAGE),
    "retinanet_resnet18_fpn": (_resnet18_fpn(detection.RetinaNet), _ONE_STAGE),
    "fasterrcnn_mobilenet_v3_large_320_fpn": (detection.fasterrcnn_mobilenet_v3_large_320_fpn, _TWO_STAGE),
    "fcos_resnet50_fpn": (detection.fcos_resnet50_fpn, _ONE_STAGE),
    "retinanet_resnet50_fpn": (detection.retinanet_resnet50_fpn, _ONE_STAGE),
    "fasterrcnn_resnet50_fpn": (detection.fasterrcnn_resnet50_fpn, _TWO_STAGE),
    "maskrcnn_resnet50_fpn": (detection.maskrcnn_resnet50_fpn, _TWO_STAGE),
}
OUTPUTS = ("boxes", "scores", "labels")


class Detections(torch.nn.Module):
    """A torchvision detector on an image batch of one, its detections with a batch dim (what
    the ONNX graph computes); `net` is the detector itself (pytorch-grad-cam's targets read its
    list of dicts)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        found = self.net(list(x))[0]
        masks = (found["masks"][None],) if "masks" in found else ()
        return (found["boxes"][None], found["scores"][None], found["labels"][None], *masks)


def _check(name: str) -> None:
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")


def build(name: str, seed: int = SEED) -> Detections:
    """The detector, eval mode, deterministic for a seed. Weights: every Conv and Linear drawn
    with variance 1/fan-in, and random BatchNorm statistics (torchvision_zoo._randomise_batchnorm).
    torchvision's own random init does not give boxes worth explaining: MobileNetV3's depthwise
    convolutions (fan-out init) shrink the activations to 1e-14 by SSDlite's first head map, and
    heads drawn at std 0.01 give every box the same score (1/C or the prior), so the order of the
    kept boxes, decided by ties, differs between torch and ONNX Runtime."""
    _check(name)
    builder, kwargs = DETECTORS[name]
    torch.manual_seed(seed)
    net = builder(weights=None, weights_backbone=None, num_classes=CLASSES, **kwargs)
    if name.startswith("ssdlite"):  # its builder fixes 320 px; the anchors follow the feature maps
        net.transform.min_size, net.transform.max_size, net.transform.fixed_size = (SIZE,), SIZE, (SIZE, SIZE)
    draw = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="linear", generator=draw)
    _randomise_batchnorm(net, torch.Generator().manual_seed(seed + 2))
    return Detections(net).eval()


def image(seed: int = SEED) -> torch.Tensor:
    """The test image: uniform noise in [0, 1] (the detectors normalize it themselves)."""
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def export_path(name: str, cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> pathlib.Path:
    _check(name)
    tv = re.sub(r"[^A-Za-z0-9.]", "_", torch.__version__)
    return exports_root(cache_dir) / f"{name}-legacy-{SIZE}px-seed{seed}-r{RECIPE}-torch{tv}.onnx"


def export(name: str, cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> pathlib.Path:
    """The ONNX file of build(name, seed) (legacy exporter, opset 17), exported on first use and
    written whole (a temporary file moved into place)."""
    path = export_path(name, cache_dir, seed)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path):  # written once across processes (cache.exclusive)
        if not path.is_file():
            _write_export(name, seed, path)
    return path


def _write_export(name: str, seed: int, path: pathlib.Path) -> None:
    net = build(name, seed)
    outputs = [*OUTPUTS, "masks"] if name.startswith("maskrcnn") else list(OUTPUTS)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notices on the post-processing's Python branches
            torch.onnx.export(net, (image(seed),), tmp, dynamo=False, opset_version=OPSET, input_names=["image"],
                              output_names=outputs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def start_exports(names, cache_dir: str | os.PathLike | None = None) -> bool:
    """Start one child Python that writes the missing exports of `names`, in order, and return at
    once (True if it started); see torchvision_zoo.start_exports."""
    missing = [n for n in names if not export_path(n, cache_dir).is_file()]
    return bool(missing) and start_child(__name__.rpartition(".")[2], [str(exports_root(cache_dir)), *missing])


if __name__ == "__main__":  # start_exports: CACHE_DIR NAME ..., in this process
    import sys

    torch.set_num_threads(1)
    for detector in sys.argv[2:]:
        export(detector, cache_dir=sys.argv[1])


__all__ = ["CLASSES", "DETECTORS", "Detections", "OUTPUTS", "SIZE", "build", "export", "export_path", "image",
           "start_exports"]
