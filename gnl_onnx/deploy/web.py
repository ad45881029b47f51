"""`gnl-onnx convert --web DIR`: a static folder that explains images in the browser. It holds the
combined model (model.onnx), config.json (the image input, the preprocessing, the methods' outputs,
the class names, the overlay's colours), the page (index.html, explain.js, from page/) and
onnxruntime-web's files, copied from the npm install of web/ (package-lock.json pins the version),
so the page needs no network: any static file server will do."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import onnx

from ..errors import UsageError
from ..images import Preprocessing
from ..output import atomic_write
from ..report.pictures import ABS_CMAP, DIM, GAMMA, MAX_ALPHA, OUTLIERS, ROUGH, SMOOTH_FRACTION
from .combine import combined_info

PAGE = Path(__file__).with_name("page")
PAGE_FILES = ("index.html", "explain.js")
# onnxruntime-web's two builds: WebAssembly only (ort.wasm.min.js, 14 MB), and WebGPU with WebAssembly
# (ort.min.js, JSEP, 28 MB), which the page loads only where the browser offers a GPU adapter
RUNTIME = {"wasm": ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"),
           "webgpu": ("ort.min.js", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")}
RUNTIME_FILES = RUNTIME["wasm"] + RUNTIME["webgpu"]
DEFAULT_RUNTIME = Path(__file__).resolve().parents[2] / "web" / "node_modules" / "onnxruntime-web" / "dist"
MODEL_FILE = "model.onnx"


def runtime_folder(given: str | os.PathLike | None = None) -> Path:
    """onnxruntime-web's dist folder, checked to hold the files the page loads."""
    folder = Path(given) if given else DEFAULT_RUNTIME
    missing = [f for f in RUNTIME_FILES if not (folder / f).is_file()]
    if missing:
        raise UsageError(f"onnxruntime-web's files are missing from {folder} ({', '.join(missing)}): run "
                         "`npm ci --prefix web` in the gnl-onnx checkout, or pass --ort-web DIR (its dist folder)")
    return folder


def check_folder(out: Path, overwrite: bool) -> None:
    """A folder to write into: new, empty, or one the user allowed to overwrite."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"{out} is not empty; pass --overwrite to write into it")


def overlay_style() -> dict:
    """What the page needs to draw gnl_onnx.report.pictures.overlay's abs view: its constants and
    the colour map as 256 RGB triples (matplotlib's, so page and reports colour alike)."""
    import matplotlib

    cmap = matplotlib.colormaps[ABS_CMAP]
    return {"outliers": OUTLIERS, "dim": DIM, "max_alpha": MAX_ALPHA, "gamma": GAMMA,
            "smooth_fraction": SMOOTH_FRACTION, "rough": ROUGH,
            "colormap": [[float(v) for v in cmap(i)[:3]] for i in range(256)]}


def page_config(model: onnx.ModelProto, prep: Preprocessing, classes: list[str] | None, title: str) -> dict:
    info = combined_info(model)
    fields = asdict(prep)
    size = fields["size"]
    if not hasattr(size, "__len__"):  # one number: the shorter side, or both sides of an exact/letterbox fit
        size = [size] if prep.fit == "shorter" else [size, size]
    fields["size"] = [int(s) for s in size]
    fields["crop"] = [int(c) for c in fields["crop"]] if fields["crop"] else None
    methods = [{"name": name, "summary": m["summary"], "steps": m["steps"], "outputs": m["outputs"]}
               for name, m in info["methods"].items()]
    return {"title": title, "model": MODEL_FILE, "input": info["input"], "preprocessing": fields,
            "classes": classes, "methods": methods, "overlay": overlay_style(),
            "runtime_files": {kind: files[0] for kind, files in RUNTIME.items()}}


def write_web(out: Path, model: onnx.ModelProto, prep: Preprocessing, classes: list[str] | None = None,
              title: str = "gnl-onnx", runtime: str | os.PathLike | None = None, overwrite: bool = False) -> dict:
    """Write the page's folder (see the module docstring); returns its config. Every file is
    written atomically; the runtime's files are checked before anything is written."""
    out = Path(out)
    source = runtime_folder(runtime)
    check_folder(out, overwrite)
    config = page_config(model, prep, classes, title)
    package = source.parent / "package.json"
    if package.is_file():
        config["runtime"] = {"onnxruntime-web": json.loads(package.read_text(encoding="utf-8")).get("version")}
    atomic_write(out / MODEL_FILE, model.SerializeToString())
    for name in RUNTIME_FILES:
        atomic_write(out / name, lambda tmp, name=name: shutil.copyfile(source / name, tmp))
    for name in PAGE_FILES:
        atomic_write(out / name, (PAGE / name).read_bytes())
    atomic_write(out / "config.json", json.dumps(config, indent=1))
    return config
