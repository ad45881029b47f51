"""Random-weight torchvision CNNs and their ONNX exports (legacy and dynamo exporters).

`build(arch)` gives a deterministic torch module (same seed -> same weights) so tests can compare
an exported graph against torch autograd on exactly the same network; `export(arch, ...)` writes
(or reuses) the ONNX file of that same module. No pretrained weights are ever downloaded.
"""

from __future__ import annotations

import os
import pathlib
import re
import tempfile
import warnings

import torch
import torchvision

from .cache import exclusive, exports_root as cache_root, start_child

# Per-arch input resolution: as small as the exporters allow, to keep CI fast on 2 cores.
# alexnet / vgg*: the legacy exporter fails unless the adaptive average pool divides the feature
# map evenly (224); inception_v3: 75 is the architecture's minimum, 96 leaves a margin.
SIZES: dict[str, int] = {
    "alexnet": 224,
    "vgg16": 224,
    "vgg11_bn": 224,
    "resnet18": 64,
    "resnet50": 64,
    "resnext50_32x4d": 64,
    "squeezenet1_1": 64,
    "densenet121": 64,
    "googlenet": 64,
    "inception_v3": 96,
    "mobilenet_v2": 64,
    "mobilenet_v3_small": 64,
    "shufflenet_v2_x1_0": 64,
    "mnasnet1_0": 64,
    "efficientnet_b0": 64,
    "regnet_y_400mf": 64,
    "convnext_tiny": 64,
    # Vision transformers (tests/test_transformers.py, not the CNN sweep). vit_b_16 is built for
    # 64 px (torchvision's image_size argument: 4 x 4 patches + class token, the weights do not
    # depend on it); swin_t takes any multiple of 32, and at 64 px its stages pad the feature
    # maps to whole windows, shift (16 and 8 px maps) and do not (4 and 2 px maps).
    "vit_b_16": 64,
    "swin_t": 64,
}
TRANSFORMER_ARCHS: tuple[str, ...] = ("vit_b_16", "swin_t")
ARCHS: tuple[str, ...] = tuple(a for a in SIZES if a not in TRANSFORMER_ARCHS)
EXPORTERS: tuple[str, ...] = ("legacy", "dynamo")
# The opset each exporter writes unless export(..., opset=) says otherwise. Opset 20 is the first
# with a Gelu op: the legacy exporter then writes GELU as one node instead of Erf arithmetic.
DEFAULT_OPSETS: dict[str, int] = {"legacy": 17, "dynamo": 18}

SEED = 0
# Bump when build() changes the weights it produces, so stale cached exports are not reused.
RECIPE = 1

_EXTRA_KWARGS: dict[str, dict] = {
    # No auxiliary heads (they only exist in training mode anyway) and skip the slow scipy-based
    # truncated-normal init: PyTorch's default init is random enough for gradient tests.
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
    "vit_b_16": {"image_size": SIZES["vit_b_16"]},
}


def default_size(arch: str) -> int:
    _check_arch(arch)
    return SIZES[arch]


def _check_arch(arch: str) -> None:
    if arch not in SIZES:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")


def _randomise_batchnorm(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial running stats and affine parameters.

    A freshly built BN has mean 0, var 1, weight 1, bias 0: in eval mode it is nearly the identity,
    so BN folding / differentiation bugs would go unnoticed. The ranges stay close to 1 so deep
    networks neither explode nor overflow; about half of the ReLUs stay active (resnet50).
    Not calibrated on data on purpose: running stats measured on a random batch normalise the
    activations so well that many more ReLU gates sit within float32 rounding of 0, and torch's
    own float32-vs-float64 gradient error grows from ~1e-6 to 1e-2..5e-2 on resnet50, googlenet,
    mobilenet_v2, regnet, vgg11_bn: the architecture sweep's tolerance would then be too loose to
    catch e.g. a wrong BatchNorm epsilon.
    """
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            with torch.no_grad():
                if m.running_mean is not None:
                    m.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                    m.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(c, generator=generator))
                    m.bias.copy_(0.2 * torch.randn(c, generator=generator))


def build(arch: str, seed: int = SEED) -> torch.nn.Module:
    """torchvision.models.<arch>(weights=None), eval mode, deterministic for a given seed."""
    _check_arch(arch)
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, **_EXTRA_KWARGS.get(arch, {}))
    _randomise_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    if arch == "vit_b_16":  # torchvision zero-initialises the classifier: logits and gradients would be 0
        with torch.no_grad():
            model.heads.head.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(seed + 2))
    return model.eval()




def export_path(arch: str, exporter: str = "legacy", size: int | None = None,
                cache_dir: str | os.PathLike | None = None, seed: int = SEED,
                optimize: bool = True, opset: int | None = None) -> pathlib.Path:
    _check_arch(arch)
    size = SIZES[arch] if size is None else int(size)
    tv = re.sub(r"[^A-Za-z0-9.]", "_", torch.__version__)
    raw = "" if optimize else "-raw"
    op = "" if opset in (None, DEFAULT_OPSETS.get(exporter)) else f"-opset{opset}"
    name = f"{arch}-{exporter}{raw}{op}-{size}px-seed{seed}-r{RECIPE}-torch{tv}.onnx"
    return cache_root(cache_dir) / name


def export(arch: str, exporter: str = "legacy", size: int | None = None,
           cache_dir: str | os.PathLike | None = None, seed: int = SEED,
           optimize: bool = True, opset: int | None = None) -> pathlib.Path:
    """Export build(arch, seed) to ONNX (batch dim dynamic) and return the file path.

    The file is reused when present; it is written under a temporary name and moved into place
    with os.replace, so an interrupted export never leaves a truncated file behind.
    Graph input is "input" (legacy) or "x" (dynamo: the forward argument's name); output is
    "logits" (legacy) or whatever the dynamo exporter names it.

    optimize=False keeps what both exporters otherwise fold away, as graphs from other tools
    often arrive: BatchNormalization nodes after convolutions (legacy: TrainingMode.PRESERVE
    on the eval-mode module), and for dynamo also the raw Shape/Expand/CastLike chains
    (optimize=False).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; use one of {EXPORTERS}")
    size = SIZES[arch] if size is None else int(size)
    opset = DEFAULT_OPSETS[exporter] if opset is None else int(opset)
    path = export_path(arch, exporter, size, cache_dir, seed, optimize, opset)
    if path.is_file():
        return path
    with exclusive(path):  # written once across processes (cache.exclusive)
        if not path.is_file():
            _write_export(arch, exporter, size, seed, optimize, opset, path)
    return path


def _write_export(arch: str, exporter: str, size: int, seed: int, optimize: bool, opset: int,
                  path: pathlib.Path) -> None:
    model = build(arch, seed)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "legacy":
                torch.onnx.export(
                    model, (x,), tmp, dynamo=False, opset_version=opset,
                    input_names=["input"], output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    training=(torch.onnx.TrainingMode.EVAL if optimize
                              else torch.onnx.TrainingMode.PRESERVE),
                )
            else:
                torch.onnx.export(
                    model, (x,), tmp, dynamo=True, opset_version=opset, external_data=False,
                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False,
                    optimize=optimize,
                )
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def start_exports(cases, cache_dir: str | os.PathLike | None = None) -> bool:
    """Start one child Python that writes the missing exports of `cases` ((arch, exporter, opset
    or None), in order) and return at once (True if it started). The test session calls it at
    collection so that exporting, most of which is one core of Python, overlaps the tests on a
    2-core machine. Nothing waits for it: export() reuses a file once the child has moved it into
    place, and exports it itself otherwise (both write atomically, so a race costs time only)."""
    missing = [f"{a}:{e}:{o or ''}" for a, e, o in cases if not export_path(a, e, None, cache_dir, opset=o).is_file()]
    return bool(missing) and start_child("torchvision_zoo", [str(cache_root(cache_dir)), *missing])


if __name__ == "__main__":  # start_exports: CACHE_DIR ARCH:EXPORTER:OPSET ..., in this process
    import sys

    torch.set_num_threads(1)
    for case in sys.argv[2:]:
        arch, exporter, opset = case.split(":")
        export(arch, exporter, cache_dir=sys.argv[1], opset=int(opset) if opset else None)


__all__ = [
    "start_exports",
    "ARCHS",
    "DEFAULT_OPSETS",
    "EXPORTERS",
    "SEED",
    "SIZES",
    "TRANSFORMER_ARCHS",
    "build",
    "cache_root",
    "default_size",
    "export",
    "export_path",
]
