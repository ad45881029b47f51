"""The gnl-onnx commands behind the parser of gnl_onnx/cli.py: each run_* takes the parsed
flags, calls the API and returns the exit code (EXIT_*); errors are raised for cli.main to
print as one line."""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import replace
from pathlib import Path

from .errors import UsageError
from .attribution import attribution_info, attribution_model
from .attribution_files import explain_boxes_to_folder
from .box_targets import DetectionBox
from .audit import audit_files
from .check import check_files, load_thresholds, parse_checks, parse_threshold_flags
from .demo import run_demo as demo, run_detection_demo as detection_demo
from .detection import prepare_detector
from .deploy import combined_model, parse_method_list, runtime_folder, write_triton, write_web
from .deploy.combine import derive_transposed_kernels
from .deploy.web import check_folder
from .evaluate import evaluate_files
from .evaluation import FILES, parse_methods, parse_metrics
from .explain import explain_files
from .images import Preprocessing, find_images, from_model_shape, is_array_file, read_mask
from .inspection import inspect_model
from .measures import forward_passes
from .intake import IntakeNote, prepare
from .output import atomic_write, prepare_folder
from .planning import plan_cost
from .presets import class_names, get_preset
from .report import image_png
from .settings import Settings
from .target_evaluation import is_row_target
from .target_text import class_only, parse_target

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run_inspect(args) -> int:
    report = inspect_model(args.model, args.input, args.output_name)
    if args.cost and not report["unsupported"]:

        methods = [m for m in parse_methods(args.methods) if m != "random"]
        report["cost"] = plan_cost(args.model, methods, args.steps, args.threads, input=args.input,
                                   output_name=args.output_name, memory_budget=args.memory_budget)
        shape = prepare(args.model, args.input, args.output_name).for_rows.image_shape
        report["measure_cost"] = forward_passes(args.steps, features=math.prod(shape[1:]))
    if args.json:
        if "cost" in report:
            report["cost"] = report["cost"].as_dict()
        print(json.dumps(report, indent=2))
    else:
        print(f"opset {report['opset']}")
        print("inputs:  " + "; ".join(report["inputs"]))
        print("outputs: " + "; ".join(report["outputs"]))
        for o in report.get("output_kinds", []):
            print(f"  {o['name']}: {o['kind']} -> {o['target']}")
        print("ops:     " + ", ".join(f"{op} {n}" for op, n in report["ops"].items()))
        print(f"explains {report['output']} with respect to {report['input']}")
        gated = ", ".join(f"{op} {n}" for op, n in report["gated_paper"].items()) or "none"
        print(f"gated by guided methods (gate=paper): {gated}")
        extra = ", ".join(f"{op} {n}" for op, n in report["gated_all_extra"].items())
        if extra:
            print(f"also gated with gate=all: {extra}")
        for op, nodes in report["unsupported"].items():
            print(f"UNSUPPORTED {op}: {len(nodes)} node(s), e.g. {nodes[0]}")
        print(("only these methods run on it" if report["unsupported"] else "also without a backward") +
              f" (forward passes only): {', '.join(report['forward_methods'])}")
        if report.get("cam_layers"):
            print(f"CAM layers (--layer), default {report['cam_default']}:")
            print("\n".join(f"  {c}" + ("  <- default" if c.split(" [")[0] == report["cam_default"] else "")
                            for c in report["cam_layers"]))
        if "cost" in report:
            print(report["cost"].table())
            print(f"measures (--metrics): forward passes per image, a backward counted as one; the sensitivities "
                  f"explain each noisy copy again (at {args.steps} steps); region_perturbation: at most; irof: about")
            print("\n".join(f"  {name:<26}{n:>8}" for name, n in report["measure_cost"].items()))
    return EXIT_FAILED if report["unsupported"] else EXIT_OK


def run_convert(args) -> int:
    if not (args.out or args.web or args.triton):
        raise UsageError("say where to write: -o FILE, --web DIR and/or --triton REPO")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    if not (args.methods or args.web or args.triton):  # one method, one file: its inputs as in FEEDING
        target = parse_target(args.target, read_mask)[0] if args.target else None
        model = attribution_model(args.model, method=args.method, gate=args.gate, output=target or args.output,
                                  input=args.input, output_name=args.output_name, layer=args.layer)
        if args.compact:
            derive_transposed_kernels(model.graph)
        atomic_write(out, model.SerializeToString())
        info = attribution_info(model)
        print(f"wrote {out} ({args.method}: {info['summary']}; {len(info['gated'])} units gated)")
        if "forward_passes" in info:  # a forward-only method: its masks are in the graph, no points to feed
            print(f"feed it '{info['input']}' (float32, {info['image_shape'][1:]} per image), 'baseline' (same "
                  f"rank, broadcast) and 'target' (int64 [N], -1: the top-1 class); it runs the model on "
                  f"{info['forward_passes'] + 1} copies per image (the image and its masked copies), "
                  f"{info['copies_per_step']} per loop step")
        else:
            print(FEEDING.format(image=info["input"], path=out))
        if isinstance(target, DetectionBox):  # the graph holds the head, not the NMS: the box is an index
            print(f"  (it explains a box's score on the raw head: feed 'target' the box's index, anchor x classes + "
                  f"class over the head's anchors in order, as gnl_onnx.detection.find_boxes gives it after your NMS; "
                  f"-1: the highest-scoring anchor and class)")
        if info.get("region"):
            print(f"  (it explains {info['output']}: 'scores' is the map, the region is read at the images, so "
                  "every run takes them: never feed score_rows [0])")
        return EXIT_OK
    methods = parse_method_list(args.methods) if args.methods else [args.method]
    if args.web:  # fail on a missing runtime or a full folder before the conversion's minutes
        runtime_folder(args.ort_web)
        check_folder(Path(args.web), args.overwrite)
    prepared = prepare(args.model, args.input, args.output_name)
    model = combined_model(prepared, methods, steps=args.steps, gate=args.gate, output=args.output,
                           input=args.input, output_name=args.output_name, layer=args.layer, compact=args.compact)
    size = model.ByteSize()
    if out is not None:
        atomic_write(out, model.SerializeToString())
        print(f"wrote {out} ({', '.join(methods)} in one model, {size / 1e6:.1f} MB; outputs METHOD.attribution, "
              "METHOD.scores, METHOD.target_used; feed the image alone, or override METHOD.alphas, ...)")
    if args.web:
        prep, preset = preprocessing_from(args, prepared)
        names = class_names(preset) if preset else None
        write_web(Path(args.web), model, prep, names, title=Path(args.model).stem, runtime=args.ort_web,
                  overwrite=args.overwrite)
        print(f"wrote {args.web}/ (index.html, model.onnx {size / 1e6:.1f} MB, onnxruntime-web); serve it with any "
              f"static server, e.g. python -m http.server -d {args.web}, and open it in a browser")
    if args.triton:
        folder = write_triton(Path(args.triton), model, args.triton_name, args.max_batch, overwrite=args.overwrite)
        print(f"wrote {folder}/config.pbtxt and {folder}/1/model.onnx for Triton's ONNX Runtime backend "
              f"({', '.join(methods)})")
    return EXIT_OK


FEEDING = """feed it with any ONNX Runtime (Python shown):
  import numpy as np, onnxruntime as ort
  quiet = ort.SessionOptions(); quiet.log_severity_level = 3  # no warning about score_rows, an input with a default
  s = ort.InferenceSession("{path}", quiet)
  alphas, weights = np.polynomial.legendre.leggauss(32); alphas = (alphas + 1) / 2; weights /= 2
  attribution, scores, target = s.run(["attribution", "scores", "target_used"], {{
      "{image}": images,                                  # float32, the model's own layout
      "baseline": np.zeros((1, 1, 1, 1), np.float32),    # same rank as the images, broadcast
      "target": np.full(len(images), -1, np.int64),      # -1: explain the top-1 class
      "alphas": alphas.astype(np.float32), "weights": weights.astype(np.float32),
      "noise": np.zeros((1, 1, 1, 1, 1), np.float32)}})   # SmoothGrad: [S, N, ...] Gaussian noise
  (gradient-type and LRP methods: alphas = weights = [1.0])
  (deeplift: alphas = weights = [1.0, 0.0]; its output "baseline_scores" holds the scores at the baseline)
  (steps split over runs: later runs take the first one's target_used as "target", and "score_rows": [0])"""


def preprocessing_from(args, model=None, images=()):
    """The preprocessing the flags and preset say, completed from the model's static input shape
    (a PreparedModel): its size is the default, and photos that would not come out at that size
    are centre-cropped to it."""
    preset = get_preset(args.preset) if args.preset else None
    base = preset.preprocessing if preset else None
    fields = {"size": args.size and (args.size[0] if len(args.size) == 1 else tuple(args.size[:2])),
              "crop": args.crop and tuple(args.crop), "mean": args.mean and tuple(args.mean),
              "std": args.std and tuple(args.std), "value_range": args.value_range,
              "layout": args.layout, "channels": args.channels}
    given = {k: v for k, v in fields.items() if v is not None}
    if isinstance(given.get("size"), tuple) and (base is None or base.fit == "shorter"):
        given["fit"] = "exact"  # two numbers: resize to exactly H x W
    elif isinstance(given.get("size"), int):
        given["fit"] = "shorter"
    shape = model.image_shape if model is not None else None
    implied = from_model_shape(shape, {k: v for k, v in given.items() if k == "layout"})
    if implied is not None and base is None:  # the model's own layout and channels, unless flags say otherwise
        given = {"layout": implied.layout, "channels": implied.channels, **given}
    if base is None and "size" not in given:
        derived = from_model_shape(shape, given)
        if derived is not None:
            if "mean" not in given and "std" not in given and not all(is_array_file(i) for i in images):
                warnings.warn(f"no --preset: photos are resized and centre-cropped to the model's "
                              f"{derived.crop[0]}x{derived.crop[1]}, pixels scaled to 0..1 with no mean/std; "
                              "pass --preset or --mean/--std if the model was trained otherwise", IntakeNote,
                              stacklevel=2)
            return derived, None
        if images and all(is_array_file(i) for i in images):  # arrays are fed as they are: no resize
            return Preprocessing(size=1, **{k: v for k, v in given.items() if k in ("layout", "channels")}), None
        raise UsageError("say how to prepare the images: --preset NAME, or at least --size (the model's input "
                         "size is not fixed, so it cannot be taken from the model)")
    prep = replace(base, **given) if base is not None else Preprocessing(**given)
    fixed = from_model_shape(shape, {"layout": prep.layout})
    if fixed is not None and prep.image_size is None:  # shorter-side resize alone: sizes would vary
        prep = replace(prep, crop=fixed.crop)
    return prep, preset


def run_settings(args, prep=None) -> Settings:
    """The run's settings from the flags (validated here, once), with the preprocessing's black,
    layout and input bounds."""
    given = {name: getattr(args, name) for name in ("method", "steps", "baseline", "integration", "gate", "output",
                                                    "input", "output_name", "layer", "seed", "threads",
                                                    "memory_budget", "tolerance") if getattr(args, name, None) is not None}
    if prep is not None:
        given.update(black=prep.black(), layout=prep.layout, bounds=prep.bounds())
    return Settings(**given)


def run_explain(args) -> int:
    if args.target and args.target.strip().startswith("box"):  # a detector: one explanation per kept box
        model, target = prepare_detector(args.model, parse_target(args.target)[0], args.input)
        prep, preset = preprocessing_from(args, model, args.images)
        records, _, note = explain_boxes_to_folder(model, args.images, Path(args.out), prep, preset,
                                                   run_settings(args, prep), target, overwrite=args.overwrite)
        print(note or f"{len(records)} boxes explained into {args.out}")
        return 0
    model = prepare(args.model, args.input, args.output_name)
    prep, preset = preprocessing_from(args, model, args.images)
    target, chosen = parse_target(args.target, lambda path: read_mask(path, prep)) if args.target else (None, None)
    settings = run_settings(args, prep)
    return explain_files(model, args.images, Path(args.out), prep, preset,
                         settings.replace(output=target) if target else settings, target=chosen,
                         overwrite=args.overwrite)


def run_evaluate(args) -> int:
    methods = parse_methods(args.methods)  # bad names fail before anything is loaded or written
    metrics = parse_metrics(args.metrics)
    model, prep, preset, explained, chosen = evaluated_target(args, args.images)
    named = list(args.images)
    if args.dataset:
        named += save_dataset(args.dataset, args.limit, args.seed, Path(args.out) / "dataset", args.overwrite)
    elif args.limit is not None:
        raise UsageError("--limit applies to --dataset only")
    images = find_images(named, args.image_dir)
    settings = run_settings(args, prep)
    labels = {"labels": class_names(preset)} if explained is not None and preset else {}
    return evaluate_files(model, images, Path(args.out), prep, methods, overwrite=args.overwrite,
                          settings=settings.replace(output=explained) if explained is not None else settings,
                          curve_steps=args.curve_steps, reduce=args.reduce, **labels,
                          target=chosen, deletion_substrate=args.deletion_substrate,
                          insertion_substrate=args.insertion_substrate, batch_size=args.batch_size, metrics=metrics,
                          road_fractions=args.road_fractions, road_noise=args.road_noise, masks=args.masks)


def evaluated_target(args, images):
    """(model, preprocessing, preset, the box or region target or None, the class or None) of
    evaluate's --target: a class, box[...] (the detector prepared to read all its outputs),
    segment[...] or dense[...] (their mask files read as the images are)."""
    text = (args.target or "").strip()
    if text.startswith("box"):
        model, explained = prepare_detector(args.model, parse_target(text)[0], args.input)
        prep, preset = preprocessing_from(args, model, images)
        return model, prep, preset, explained, None
    model = prepare(args.model, args.input, args.output_name)
    prep, preset = preprocessing_from(args, model, images)
    explained, chosen = parse_target(text, lambda path: read_mask(path, prep)) if text else (None, None)
    if explained is not None and not is_row_target(explained):
        raise UsageError(f"--target {text}: evaluate scores a class, a detector's boxes (box...) or a region "
                         "(segment..., dense...); explain and convert take output targets")
    return model, prep, preset, explained, chosen


def save_dataset(name: str, limit, seed: int, folder: Path, overwrite: bool) -> list[str]:
    """Write a named image set as lossless PNGs plus labels.csv into `folder`; their paths."""

    taken = [p for p in [folder / "labels.csv", *(folder.parent / f for f in FILES.values())] if p.exists()]
    if taken and not overwrite:  # checked before anything is written
        raise UsageError(f"{taken[0]} exists; pass --overwrite to replace it")
    try:
        from gnl_onnx_models.datasets import load_dataset
    except ImportError:
        raise UsageError("--dataset needs the bundled data: pip install 'gnl-onnx[demo]'") from None
    samples = load_dataset(name, limit, seed)
    prepare_folder(folder)
    paths = [image_png(s.pixels, folder / f"{s.name}.png") for s in samples]
    atomic_write(folder / "labels.csv", "image,label\n" + "".join(f"{p.name},{'' if s.label is None else s.label}\n"
                                                    for p, s in zip(paths, samples)))
    return [str(p) for p in paths]


def run_check(args) -> int:
    checks = parse_checks(args.checks)
    thresholds, config = load_thresholds(args.model, args.config, parse_threshold_flags(args.threshold))
    model = prepare(args.model, args.input, args.output_name)
    prep = preprocessing_from(args, model, args.images)[0] if args.images else None
    return check_files(model, args.images, prep, checks, reference=args.reference,
                       save_reference=args.save_reference, junit=args.junit, json_path=args.json,
                       overwrite=args.overwrite, thresholds=thresholds, config=config, target=class_only(args.target),
                       settings=run_settings(args, prep))


def run_audit(args) -> int:
    methods = parse_methods(args.methods)  # a bad name fails before anything is loaded
    model, prep, _, explained, chosen = evaluated_target(args, [args.images])
    settings = run_settings(args, prep)
    return audit_files(model, args.images, Path(args.out), prep, methods, engine=args.engine,
                       address=args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                       labels=args.labels, overwrite=args.overwrite, images_per_batch=args.images_per_batch,
                       settings=settings.replace(output=explained) if explained is not None else settings,
                       curve_steps=args.curve_steps, reduce=args.reduce, target=chosen,
                       deletion_substrate=args.deletion_substrate,
                       insertion_substrate=args.insertion_substrate, batch_size=args.batch_size,
                       metrics=args.metrics, road_fractions=args.road_fractions, road_noise=args.road_noise)


def run_demo(args) -> int:
    if args.task == "detect":
        return detection_demo(Path(args.out), args.steps, args.overwrite)
    return demo(Path(args.out), args.steps, args.overwrite)
