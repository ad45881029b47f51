"""The gnl-onnx command line: flags become API calls, errors become one line and an exit code
(0 done, 1 the model or a check failed, 2 bad usage or input). No logic of its own."""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import warnings
from dataclasses import replace
from pathlib import Path

from .errors import GnlOnnxError, InputError, ModelError, UnsupportedModelError, UsageError
from .attribution import attribution_info, attribution_model
from .attribution_files import explain_boxes_to_folder
from .audit import audit_files
from .check import check_files, load_thresholds, parse_checks, parse_threshold_flags
from .demo import run_demo as demo, run_detection_demo as detection_demo
from .detection import prepare_detector
from .deploy import combined_model, parse_method_list, runtime_folder, write_triton, write_web
from .deploy.combine import derive_transposed_kernels
from .deploy.web import check_folder
from .evaluate import evaluate_files
from .evaluation import ALL_METHODS as EVALUATED, FILES, parse_methods, parse_metrics
from .explain import explain_files
from .images import Preprocessing, find_images, from_model_shape, is_array_file, read_mask
from .inspection import inspect_model
from .measures import forward_passes
from .methods import METHODS, get_method
from .intake import IntakeNote, prepare
from .output import atomic_write, prepare_folder
from .planning import plan_cost
from .presets import PRESETS, class_names, get_preset
from .report import image_png
from .settings import Settings
from .target_text import TARGET_HELP, class_only, parse_target

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

DESCRIPTION = """Explain what an image CNN looks at, from its ONNX file.

  gnl-onnx inspect model.onnx                       what the model is and what will be gated
  gnl-onnx explain model.onnx cat.jpg --preset imagenet --out results/
  gnl-onnx convert model.onnx -o model_gnlig.onnx   an ONNX model computing GNL-IG itself
  gnl-onnx evaluate model.onnx *.jpg --preset imagenet --out eval/   which method is most faithful
  gnl-onnx check model.onnx --images digits/ --preset mnist --reference ref.npz   CI checks (exit 1: failed)
  gnl-onnx audit model.onnx --images DIR --preset imagenet --out audit/ [--engine ray]   a whole data set
  gnl-onnx demo                                     EfficientNet-Lite0 on real photos, as HTML
  gnl-onnx demo --task detect                       a layout detector's boxes on a scanned page, each explained
"""


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers live
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main_thread else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _note  # notes (e.g. float16 computed in float32) as one line each
            return args.run(args)
    except UnsupportedModelError as e:
        print(f"gnl-onnx: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (UsageError, InputError, ModelError) as e:
        print(f"gnl-onnx: {e}", file=sys.stderr)
        return EXIT_USAGE
    except GnlOnnxError as e:
        print(f"gnl-onnx: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:
        print("gnl-onnx: " + ("terminated" if isinstance(e, Terminated) else "interrupted")
              + "; finished results are kept, nothing half-written", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
    except MemoryError:
        print("gnl-onnx: out of memory; lower --memory-budget, or explain fewer or smaller images", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # the file system refused: unwritable folder, disk full, ...
        where = f" {e.filename}" if e.filename else ""
        print(f"gnl-onnx: cannot use{where}: {e.strerror or e}; check the path, its permissions and free space "
              "(or choose another --out)", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is so that it unwinds like Ctrl-C: atomic writes remove
    their temporary files and finished results stay."""


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    raise Terminated()


def _note(message, category, filename, lineno, file=None, line=None):
    print(f"gnl-onnx: note: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}",
          file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gnl-onnx", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def model_args(p):
        p.add_argument("model", help="path of the .onnx file")
        p.add_argument("--input", help="the image input's name, when the model has several float inputs")
        p.add_argument("--output-name", help="the output to explain, when the model has several")

    def method_args(p, default="gnl_ig"):
        p.add_argument("--method", default=default, type=method_name, metavar="METHOD",
                       help=f"attribution method (default {default}): {', '.join(sorted(METHODS))}, or "
                            "smoothgrad:METHOD, SmoothGrad over any of them (see README)")
        p.add_argument("--gate", default="paper", choices=["paper", "all"],
                       help="guided methods: gate Relu/MaxPool/Clip/LeakyRelu/PRelu (paper) or every "
                            "non-linear unit (all)")
        p.add_argument("--output", default="logit", choices=["logit", "prob", "logprob"],
                       help="what is explained: the pre-softmax logit (default), the probability or "
                            "the log-probability of the target class")

    p = commands.add_parser("inspect", help="inputs, outputs, ops, gated units, unsupported ops; with --cost, "
                            "the measured seconds and memory per image of each method")
    model_args(p)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--cost", action="store_true",
                   help="also measure here: forward time, the floor (2 x steps forward passes) and each method's "
                        "seconds and memory per image, to size a run before starting it")
    p.add_argument("--methods", default="gnl_ig,ig,gradient", help="with --cost: the methods to time")
    p.add_argument("--steps", type=int, default=32, help="with --cost: integration steps (default 32)")
    p.add_argument("--threads", type=int, help="with --cost: ONNX Runtime threads (default: all cores)")
    p.add_argument("--memory-budget", default="auto",
                   help="with --cost: the budget that splits the runs (default auto)")
    p.set_defaults(run=run_inspect)

    p = commands.add_parser("convert", help="write an ONNX model that computes the attribution (a file, a web "
                            "page's folder, a Triton model repository)")
    model_args(p)
    method_args(p)
    p.add_argument("-o", "--out", help="where to write the attribution model")
    p.add_argument("--target", default=None, metavar="TARGET", help=TARGET_HELP + " (the class is fed at run time: "
                   "the input 'target'; a mask file is read at its own size and fitted to the map)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file, or write into a non-empty folder")
    p.add_argument("--methods", metavar="LIST",
                   help="several methods in one model, the weights stored once (e.g. gnl_ig,ig,gradcam): inputs and "
                        "outputs named METHOD.NAME, every input but the image with a default")
    p.add_argument("--steps", type=int, default=32, help="with --methods/--web/--triton: the integration steps "
                                                         "written as the default points (default 32)")
    p.add_argument("--compact", action="store_true",
                   help="a smaller file: the backward's transposed convolution kernels are computed from the "
                        "network's own when the model loads, not stored beside them (EfficientNet-Lite0: 32 -> 19 MB)")
    p.add_argument("--web", metavar="DIR", help="also write a static web page explaining images in the browser "
                                                "(onnxruntime-web, copied from web/node_modules)")
    p.add_argument("--ort-web", metavar="DIR", help="onnxruntime-web's dist folder (default: web/node_modules of "
                                                    "the checkout, after `npm ci --prefix web`)")
    p.add_argument("--triton", metavar="REPO", help="also write a model repository for NVIDIA Triton's ONNX Runtime "
                                                    "backend: REPO/NAME/1/model.onnx and REPO/NAME/config.pbtxt")
    p.add_argument("--triton-name", default="gnl_onnx", help="the model's name in --triton's repository")
    p.add_argument("--max-batch", type=int, default=4,
                   help="--triton: max_batch_size when the graph's batch is free (0: no batching; default 4)")
    preprocessing_args(p)
    layer_args(p)
    p.set_defaults(run=run_convert)

    p = commands.add_parser("explain", help="heatmaps for images: PNGs, raw .npy and a JSON summary")
    model_args(p)
    method_args(p)
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--out", required=True, help="output folder")
    explain_args(p)
    layer_args(p)
    p.set_defaults(run=run_explain)

    p = commands.add_parser("evaluate", help="deletion and insertion AUC of methods on images, against a "
                            "random floor: which method is most faithful to this model")
    model_args(p)
    p.add_argument("images", nargs="*", help="image files (JPEG, PNG, ...)")
    p.add_argument("--images", dest="image_dir", metavar="DIR", help="also every image file in this folder")
    p.add_argument("--dataset", choices=["photos", "documents", "mnist", "fashion-mnist"],
                   help="also a real image set that installs offline (photos: ImageNet photographs; documents: "
                        "pages rotated 0/90/180/270; mnist; fashion-mnist: Debian's dataset-fashion-mnist); its "
                        "images are saved as PNGs in OUT/dataset/ with their labels")
    p.add_argument("--limit", type=int, help="at most this many --dataset images (default 100 for mnist and "
                                             "fashion-mnist, all for the others)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per session (default: all cores)")
    p.add_argument("--methods", default=",".join(EVALUATED),
                   help=f"comma-separated methods; 'random' is the floor (default {','.join(EVALUATED)})")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--masks", nargs="+", metavar="MASK",
                   help="region masks for pointing_game, relevance_mass_accuracy, relevance_rank_accuracy: files "
                        "or folders, each named as its image (cat.jpg: cat.png or cat.npy); an image (grey > 127 "
                        "inside) is resized and cropped as the photos are, an .npy is [H, W] at the input's size")
    metric_args(p)
    explain_args(p)
    layer_args(p)
    p.set_defaults(run=run_evaluate)

    p = commands.add_parser("check", help="CI checks of a model version: gradient rules, finite differences, IG "
                            "completeness, randomization sanity, drift from a reference; exit 1 when one fails")
    model_args(p)
    method_args(p, default="ig")
    p.add_argument("--images", nargs="+", metavar="IMAGE",
                   help="image files or folders (default: seeded random inputs; drift and references need images)")
    p.add_argument("--checks", default="supported,gradient,completeness,randomization,drift",
                   help="comma-separated checks to run (default: all)")
    p.add_argument("--reference", metavar="REF", help="check drift against this reference (.npz)")
    p.add_argument("--save-reference", metavar="REF", help="also write the images' attributions as a reference")
    p.add_argument("--config", metavar="FILE",
                   help="thresholds file, TOML with a [thresholds] table (default: gnl-onnx-check.toml beside "
                        "the model)")
    p.add_argument("--threshold", action="append", metavar="NAME=VALUE",
                   help="set one threshold, e.g. gradient_max_error=0.1 (repeatable; overrides the config)")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--seed", type=seed_number, default=0, help="seed of the random inputs and directions")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads per session (default: all cores)")
    explain_args(p)
    layer_args(p)
    p.set_defaults(run=run_check)

    p = commands.add_parser("audit", help="a whole data set: every image x method, deletion/insertion, as Parquet; "
                            "locally or on Ray; a rerun resumes")
    model_args(p)
    p.add_argument("--images", required=True, metavar="DIR-or-URI",
                   help="folder of images (searched recursively) or any path Ray Data reads (s3://, gs://, ...); "
                        "an image's id is its path relative to it")
    p.add_argument("--labels", metavar="CSV",
                   help="true labels: a CSV file with the header image,label and rows like digit_0001.png,7 (the "
                        "image id or file name, the class index); adds a label column and the top-1 accuracy")
    p.add_argument("--methods", default=",".join(EVALUATED),
                   help=f"comma-separated methods; 'random' is the floor (default {','.join(EVALUATED)})")
    p.add_argument("--out", required=True, help="output folder: results.parquet, summary.json, evaluation.txt, "
                                                "evaluation_curves.png, parts/, attributions/; rerun to resume")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process; ray: Ray Data actors (pip install 'gnl-onnx[ray]')")
    p.add_argument("--address", help="Ray cluster to join: auto (a running 'ray start') or ray://HOST:10001 "
                                     "(default: start a local Ray instance)")
    p.add_argument("--workers", type=int, help="Ray actors (default: one per --gpus-per-worker GPUs, else one per "
                                               "CPU of the cluster)")
    p.add_argument("--gpus-per-worker", type=float, default=0,
                   help="GPUs per Ray actor; each then runs ONNX Runtime on CUDA (needs onnxruntime-gpu)")
    p.add_argument("--images-per-batch", type=int,
                   help="images per batch (default: what the memory budget holds, at most 64)")
    p.add_argument("--threads", type=int, help="local engine: ONNX Runtime threads per session (default: all cores)")
    metric_args(p)
    explain_args(p)
    layer_args(p)
    p.set_defaults(run=run_audit)

    p = commands.add_parser("demo", help="EfficientNet-Lite0 on real photos: GNL-IG beside IG, as HTML")
    p.add_argument("--task", choices=("classify", "detect"), default="classify",
                   help="classify: EfficientNet-Lite0 on photos (default); detect: the PP-PicoDet layout detector "
                        "on a scanned page, each of its top 3 boxes explained")
    p.add_argument("--out", default="gnl-onnx-demo", help="output folder (default gnl-onnx-demo)")
    p.add_argument("--steps", type=int, default=32, help="integration steps (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    p.set_defaults(run=run_demo)
    return parser


def layer_args(p):
    p.add_argument("--layer", action="append", metavar="NAME",
                   help="CAM methods: the target layer, an ONNX value name (repeatable: the maps are averaged; "
                        "default: the last 4-D activation with a spatial size above 1; `gnl-onnx inspect` lists them)")


def method_name(text: str) -> str:
    """--method: a registered method, or a wrapper over one (smoothgrad:ig)."""
    try:
        get_method(text)
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def steps_value(text: str):
    """--steps: a whole number, or auto."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'auto', got {text!r}") from None


def seed_number(text: str) -> int:
    """--seed: numpy's seed sequences take non-negative integers only."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def metric_args(p):
    p.add_argument("--curve-steps", type=int, default=28,
                   help="deletion/insertion steps: ceil(H*W / steps) pixels each (default 28, as RISE)")
    p.add_argument("--reduce", default="sum", choices=["sum", "abs_sum"],
                   help="per-pixel importance: signed sum over channels (default) or sum of absolute values")
    p.add_argument("--deletion-substrate", default="zeros", choices=["zeros", "black", "mean", "blur"],
                   help="what deleted pixels become (default zeros in the model's input space, as RISE)")
    p.add_argument("--insertion-substrate", default="blur", choices=["zeros", "black", "mean", "blur"],
                   help="what insertion starts from (default blur: Gaussian, kernel 11, sigma 5, as RISE)")
    p.add_argument("--metrics", "--measures", default="deletion,insertion",
                   help="deletion,insertion (default), or any set of: those, road (noisy linear imputation, a "
                        "sparse solve per point: slower), the Quantus measures faithfulness_correlation, "
                        "pixel_flipping, region_perturbation, irof, monotonicity_correlation, sufficiency, "
                        "max_sensitivity, avg_sensitivity, local_lipschitz_estimate, random_logit, smooth_mprt, "
                        "efficient_mprt, sparseness, complexity, with evaluate --masks pointing_game, "
                        "relevance_mass_accuracy, relevance_rank_accuracy, and randomization (the top 2 weighted "
                        "layers redrawn, as check does); their cost: inspect --cost. The recommendation rests on the "
                        "first of this list measured that a random map does not pass")
    p.add_argument("--road-fractions", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                   help="ROAD: the fractions of pixels removed (default 0.1,...,0.9, as the ROAD paper)")
    p.add_argument("--road-noise", type=float, default=0.01,
                   help="ROAD: noise on imputed pixels, a fraction of the pixel range 0..255 in the model's "
                        "input space (default 0.01, the ROAD paper's on [0, 1] images)")
    p.add_argument("--batch-size", type=int, default=16, help="perturbed images per ONNX Runtime call")
    p.add_argument("--seed", type=seed_number, default=0,
                   help="seed of the random floor, of SmoothGrad's noise and of ROAD's noise")
    p.add_argument("--gate", default="paper", choices=["paper", "all"], help="guided methods: which units gate")
    p.add_argument("--output", default="logit", choices=["logit", "prob", "logprob"],
                   help="what the methods explain (the curves always track the probability)")


def preprocessing_args(p):
    p.add_argument("--preset", choices=sorted(PRESETS), help="preprocessing and class names of a known model")
    p.add_argument("--size", type=int, nargs="+", help="resize: shorter side (one number) or H W")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="centre crop after resizing")
    p.add_argument("--mean", type=float, nargs="+", help="per-channel mean (in the --value-range scale)")
    p.add_argument("--std", type=float, nargs="+", help="per-channel std")
    p.add_argument("--value-range", type=float, choices=[1.0, 255.0], help="pixel 255 becomes 1.0 or 255.0")
    p.add_argument("--layout", choices=["NCHW", "NHWC"])
    p.add_argument("--channels", choices=["RGB", "BGR", "L"])


def explain_args(p):
    p.add_argument("--steps", type=steps_value, default=32,
                   help="integration steps (default 32), or auto: per image, as many as --tolerance needs, "
                        "placed where the score changes (ig, gnl_ig)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="with --steps auto: ig's completeness gap |sum(attribution) - (F(image) - F(baseline))| / "
                        "|F(image) - F(baseline)|, gnl_ig's relative change of the map when refined (default 0.01)")
    p.add_argument("--baseline", default="zeros", choices=["zeros", "black", "blur", "noise"],
                   help="what the path starts from (default zeros in the model's input space; black "
                        "is pixel value 0 after preprocessing)")
    p.add_argument("--integration", default="gausslegendre",
                   choices=["gausslegendre", "left", "right", "middle", "trapezoid"])
    p.add_argument("--target", default=None, metavar="TARGET", help=TARGET_HELP)
    p.add_argument("--memory-budget", default="auto",
                   help="memory for one run: auto (default: about 1 GB, at most a quarter of what is available; "
                        "the choice is in the summary) or a size, e.g. 2GB")
    p.add_argument("--overwrite", action="store_true", help="replace existing results")
    preprocessing_args(p)


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
    model = prepare(args.model, args.input, args.output_name)
    prep, _ = preprocessing_from(args, model, args.images)
    named = list(args.images)
    if args.dataset:
        named += save_dataset(args.dataset, args.limit, args.seed, Path(args.out) / "dataset", args.overwrite)
    elif args.limit is not None:
        raise UsageError("--limit applies to --dataset only")
    images = find_images(named, args.image_dir)
    return evaluate_files(model, images, Path(args.out), prep, methods, overwrite=args.overwrite,
                          settings=run_settings(args, prep), curve_steps=args.curve_steps, reduce=args.reduce,
                          target=class_only(args.target), deletion_substrate=args.deletion_substrate,
                          insertion_substrate=args.insertion_substrate, batch_size=args.batch_size, metrics=metrics,
                          road_fractions=args.road_fractions, road_noise=args.road_noise, masks=args.masks)


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
    model = prepare(args.model, args.input, args.output_name)
    prep, _ = preprocessing_from(args, model, [args.images])
    return audit_files(model, args.images, Path(args.out), prep, methods, engine=args.engine,
                       address=args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                       labels=args.labels, overwrite=args.overwrite, images_per_batch=args.images_per_batch,
                       settings=run_settings(args, prep), curve_steps=args.curve_steps, reduce=args.reduce,
                       target=class_only(args.target), deletion_substrate=args.deletion_substrate,
                       insertion_substrate=args.insertion_substrate, batch_size=args.batch_size,
                       metrics=args.metrics, road_fractions=args.road_fractions, road_noise=args.road_noise)


def run_demo(args) -> int:
    if args.task == "detect":
        return detection_demo(Path(args.out), args.steps, args.overwrite)
    return demo(Path(args.out), args.steps, args.overwrite)


if __name__ == "__main__":
    sys.exit(main())
