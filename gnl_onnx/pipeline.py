"""Files in, files out: explain image files with a model and write heatmaps, overlays, raw
attributions and a JSON summary; and the demo on a bundled real model. Every file is written
atomically, and nothing that exists is replaced without overwrite."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .errors import GnlOnnxError, InputError, NonFiniteError, UsageError

BATCH = 8  # images per Explainer call: the Explainer still splits steps to the memory budget


def progress(total: int, description: str):
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a comfort, not a requirement
        return None
    return tqdm(total=total, desc=description, unit="image", leave=False, disable=None)


def prepare_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"output folder {out} is not writable")


def _stems(paths: list[str]) -> list[str]:
    """File stems, made unique when two images share a name."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        batch_item = re.fullmatch(r"(.*)\.npy\[(\d+)\]", str(p), flags=re.IGNORECASE)  # "a.npy[3]" -> "a-3"
        stem = f"{Path(batch_item[1]).stem}-{batch_item[2]}" if batch_item else Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def explain_files(model, images: list[str], out: Path, prep, preset, args) -> int:
    records, bad = explain_to_folder(model, images, out, prep, preset, method=args.method, steps=args.steps,
                                     baseline=args.baseline, integration=args.integration, target=args.target,
                                     gate=args.gate, output=args.output, memory_budget=args.memory_budget,
                                     overwrite=args.overwrite, input=args.input, output_name=args.output_name,
                                     layer=getattr(args, "layer", None))
    for r in records:
        label = f" ({r['label']})" if r.get("label") else ""
        print(f"{r['image']}: class {r['target']}{label}, {r['method']} -> {r['files']['overlay']}")
    for b in bad:
        print(f"skipped {b['image']}: {b['error']}")
    if records and records[0].get("runs"):
        runs = records[0]["runs"]
        print(f"runs: {runs['images_per_run']} image(s) x {runs['steps_per_run']} step(s) each, "
              f"{runs['memory_per_run']} (memory budget {runs['memory_budget']})")
    print(f"summary: {out / 'summary.json'}")
    return 1 if bad else 0


def explain_to_folder(model, images, out: Path, prep, preset, method="gnl_ig", steps=32, baseline="zeros",
                      integration="gausslegendre", target=None, gate="paper", output="logit",
                      memory_budget="auto", overwrite=False, input=None, output_name=None,
                      summary_name="summary.json", layer=None):
    """Explain image files (and .npy arrays, one or a batch each); returns (records of the
    explained images, the images that failed: unreadable, or non-finite in the model)."""
    from .explain import Explainer
    from .images import load_all
    from .presets import class_names
    from .report import atomic_write, heatmap_png, overlay_png, reduce_channels

    prepare_folder(out)
    arrays, names, bad = load_all(images, prep)
    if not arrays:  # nothing to explain: write nothing
        raise InputError(bad[0]["error"] if len(bad) == 1 else f"none of the {len(bad)} images could be read "
                         f"(first: {bad[0]['error']})")
    planned = [{kind: out / f"{stem}.{method}.{kind}" for kind in ("heatmap.png", "overlay.png", "npy")}
               for stem in _stems(names)]
    existing = [p for files in planned for p in files.values() if p.exists()]
    if (out / summary_name).exists():
        existing.append(out / summary_name)
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --overwrite to replace")
    explainer = Explainer(model, method=method, steps=steps, baseline=baseline, integration=integration,
                          memory_budget=memory_budget, gate=gate, output=output, input=input,
                          black=prep.black(), layout=prep.layout, output_name=output_name, layer=layer,
                          bounds=prep.bounds())
    labels = class_names(preset) if preset else None
    records, failed_names = [], []
    bar = progress(len(arrays), method)
    for lo in range(0, len(arrays), BATCH):
        batch = list(range(lo, min(lo + BATCH, len(arrays))))
        failed = set()
        try:
            result = explainer.explain(np.concatenate([arrays[i] for i in batch]), target)
        except NonFiniteError as e:  # keep the finite images of the batch, name the others
            for j, stage in zip(e.indices, e.stages):
                failed.add(batch[j])
                failed_names.append((names[batch[j]], stage))
                bad.append({"image": names[batch[j]], "error": e.REASONS[stage]})
            result = e.partial
        for j, i in enumerate(batch):
            if i in failed:
                continue
            attribution = result.attributions[j:j + 1]
            files = planned[i]
            atomic_write(files["npy"], lambda tmp, a=attribution: np.save(tmp, a))
            per_pixel = reduce_channels(attribution, prep.layout, "sum")
            heatmap_png(per_pixel, files["heatmap.png"])
            overlay_png(prep.to_pixels(arrays[i]), per_pixel, files["overlay.png"])
            record = result.summary(j)
            record.update(image=names[i], files={k.split(".")[0]: str(v) for k, v in files.items()})
            record["label"] = labels[record["target"]] if labels and record["target"] < len(labels) else None
            record["probability"] = float(_softmax(result.scores[j])[record["target"]])
            records.append(record)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    if failed_names and not records:  # no image came out finite: an error, and nothing written
        raise NonFiniteError(range(len(failed_names)), [s for _, s in failed_names],
                             names=[n for n, _ in failed_names])
    summary = {"model": str(model), "method": method, "explained": records, "skipped": bad}
    atomic_write(out / summary_name, json.dumps(summary, indent=2))
    return records, bad


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _registry():
    """The bundled-model registry (installed as gnl_onnx_models; `models` in a source checkout).
    Exporting its torch models needs the demo extra."""
    for name in ("gnl_onnx_models.registry", "models.registry"):
        try:
            import importlib

            return importlib.import_module(name)
        except ImportError:
            continue
    raise GnlOnnxError("the bundled model registry is not installed: pip install -e '.[demo]' from a checkout")


def demo_photos(folder: Path) -> list[str]:
    """Real photographs that ship inside scikit-image, matplotlib and scikit-learn."""
    from .report import image_png

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


def run_demo(out: Path, steps: int = 32, overwrite: bool = False) -> int:
    """EfficientNet-Lite0 (real ImageNet weights) on real photos: GNL-IG beside IG and Grad-CAM, one
    HTML page."""
    from .presets import get_preset
    from .report import Panel, Row, html_page

    registry = _registry()
    model = registry.get_model("efficientnet-lite0")
    preset = get_preset(registry.preset_name("efficientnet-lite0"))
    prepare_folder(out)
    page = out / "index.html"
    if page.exists() and not overwrite:
        raise UsageError(f"{page} exists; pass --overwrite to replace the demo's results")
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
