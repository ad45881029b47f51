"""The gnl-onnx command line: flags become API calls, errors become one line and an exit code
(0 done, 1 the model or a check failed, 2 bad usage or input). No logic of its own."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings

from .cli_commands import (EXIT_FAILED, EXIT_USAGE, run_audit, run_check, run_convert, run_demo, run_evaluate,
                           run_explain, run_inspect)
from .errors import GnlOnnxError, InputError, ModelError, UnsupportedModelError, UsageError
from .evaluation import ALL_METHODS as EVALUATED
from .methods import METHODS, get_method
from .presets import PRESETS
from .target_text import TARGET_HELP

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
                        "relevance_mass_accuracy, relevance_rank_accuracy, relevance_mass (with --target box or "
                        "segment: the box or region, no --masks), and randomization (the top 2 weighted "
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


if __name__ == "__main__":
    sys.exit(main())
