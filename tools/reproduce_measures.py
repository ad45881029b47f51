"""Every faithfulness, robustness, randomisation and complexity measure of gnl_onnx.evaluate
(gnl_onnx/measures.py) on the real networks of tools/reproduce_paper.py, the forward-only methods
(occlusion, rise, kernelshap, ablation_cam) included, and how the measures agree.

    python tools/reproduce_measures.py --quick                     # smoke run: MNIST, 2 images, 3 methods
    python tools/reproduce_measures.py --networks mnist,orientation --mnist 20 --documents 2
    python tools/reproduce_measures.py --exclude 'efficientnet-lite*:rise:max_sensitivity' \\
        --method-options 'efficientnet-lite*:rise:masks=1000'
    python tools/reproduce_measures.py --assemble                  # tables from what is saved, whatever finished

It loads each network and its data with reproduce_paper.py's loaders (same presets, same images
for the same --max-images/--documents/--mnist/--seed) and calls gnl_onnx.evaluate once per
(network, method), with the network's measures (--measures, less the --exclude pairs that name the
network, or the network and the method). Each call's Evaluation summary is saved at once to
OUT/<network>/<method>.pkl (with its settings: a rerun with the same settings reuses it), so a run
cut short still assembles. Methods run outer, networks inner: a partial run has the first methods
on every network. Tables (OUT/tables.md, OUT/results.json) per network: the method x measure means
with standard errors, each method's rank by each measure with the mean rank and the number of
first places, the Spearman correlation of the measures' rankings over the methods and the pairs
that disagree (Evaluation.agreement, the same code as `evaluate --metrics ...`).
"""
from __future__ import annotations

import argparse
import copy
import datetime
import fnmatch
import json
import math
import os
import pathlib
import pickle
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import reproduce_paper as paper  # noqa: E402  (its loaders, atomic_write, log, versions)

ROOT = paper.ROOT
METHODS = ("gradient", "ig", "gnl_ig", "smoothgrad", "gradcam", "eigencam", "lrp_epsilon_gamma_box", "deeplift",
           "occlusion", "rise", "kernelshap", "ablation_cam", "random")
MEASURES = ("deletion", "insertion", "road", "faithfulness_correlation", "pixel_flipping", "region_perturbation",
            "monotonicity_correlation", "irof", "sufficiency", "max_sensitivity", "avg_sensitivity",
            "local_lipschitz_estimate", "random_logit", "smooth_mprt", "efficient_mprt", "sparseness", "complexity")
FAITHFULNESS = MEASURES[:9]  # deletion ... sufficiency; then robustness, randomisation, complexity
ABBREVIATIONS = {"deletion": "del", "insertion": "ins", "road": "ROAD", "faithfulness_correlation": "FC",
                 "pixel_flipping": "PF", "region_perturbation": "RP", "monotonicity_correlation": "MC", "irof": "IROF",
                 "sufficiency": "Suf", "max_sensitivity": "MaxS", "avg_sensitivity": "AvgS",
                 "local_lipschitz_estimate": "LLE", "random_logit": "RL", "smooth_mprt": "sMPRT",
                 "efficient_mprt": "eMPRT", "sparseness": "Spa", "complexity": "Cx", "randomization": "Rand"}


def base(spec: str) -> str:
    """'rise:masks=1000' -> 'rise' (the method's label in the tables)."""
    return spec.split(":", 1)[0]


def pairs(text: str) -> list[list[list[str]]]:
    """'NET:NAME,NET:METHOD:MEASURE' -> [[[NET], [NAME]], ...]; each part may list alternatives
    with '|' (fnmatch patterns on the network and the method): 'a|b:ig|rise:irof|road'."""
    return [[part.split("|") for part in x.strip().split(":")] for x in text.split(",")
            if x.strip().count(":") in (1, 2)]


def _any(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def plan(network: str, args) -> dict:
    """method label -> (method spec, [measures]) for this network: --methods with --method-options
    applied, less the methods --exclude drops, each with --measures less the excluded measures."""
    excluded = [p for p in pairs(args.exclude) if _any(network, p[0])]
    options = {}
    for item in [x.strip() for x in args.method_options.split(";") if x.strip()]:
        pattern, spec = item.split(":", 1)
        if _any(network, pattern.split("|")):
            options[base(spec)] = spec
    out = {}
    for label in [m.strip() for m in args.methods.split(",") if m.strip()]:
        if any(len(p) == 2 and label in p[1] for p in excluded):
            continue
        measures = [m for m in args.measures.split(",") if m.strip()]
        measures = [m for m in measures if not any((len(p) == 2 and m in p[1])
                                                   or (len(p) == 3 and _any(label, p[1]) and m in p[2])
                                                   for p in excluded)]
        out[label] = (options.get(label, label), measures)
    return out


class Network:
    """A network loaded once: the model, its preprocessing, the images and their top-1 classes."""

    def __init__(self, name: str, args):
        from gnl_onnx.metrics import Scorer
        from gnl_onnx.presets import class_names, get_preset
        from models.registry import get_model, preset_name

        t0 = time.perf_counter()
        self.name, self.model = name, get_model(name)
        self.prep = get_preset(preset_name(name)).preprocessing
        self.source, items = paper.dataset(name, args)
        self.names = [n for n, _, _ in items]
        self.labels = [lab for _, _, lab in items]
        self.images = np.concatenate([self.prep.to_input(a) for _, a, _ in items])
        probs = Scorer(self.model, threads=args.threads).probabilities(self.images)
        self.targets = probs.argmax(axis=1)
        classes = class_names(get_preset(preset_name(name))) or []
        self.info = {"data": self.source, "images": self.names, "shape": list(self.images.shape[1:]),
                     "targets": [int(t) for t in self.targets],
                     "classes": [classes[t] if len(classes) > t else str(t) for t in self.targets],
                     "probabilities": [round(float(probs[i, t]), 4) for i, t in enumerate(self.targets)],
                     "correct": [None if lab is None else bool(t == lab) for t, lab in zip(self.targets, self.labels)],
                     "load_seconds": round(time.perf_counter() - t0, 1)}
        paper.log(f"{name}: {len(self.images)} images {self.images.shape[1:]}, top-1 {self.info['targets']}")


def run_one(net: Network, label: str, spec: str, measures: list[str], args) -> dict:
    from gnl_onnx.evaluate import evaluate
    from gnl_onnx.road import span_of

    t0 = time.perf_counter()
    evaluation = evaluate(net.model, net.images, methods=[spec], steps=args.steps, curve_steps=args.curve_steps,
                          baseline=args.baseline, black=net.prep.black(), layout=net.prep.layout, seed=args.seed,
                          threads=args.threads, metrics=measures, road_span=span_of(net.prep),
                          bounds=net.prep.bounds(), names=net.names, providers=["CPUExecutionProvider"])
    seconds = round(time.perf_counter() - t0, 1)
    summary = evaluation.summaries[spec]
    summary.method = label
    return {"summary": summary, "config": evaluation.config, "records": evaluation.records, "seconds": seconds}


def settings_of(network: str, label: str, spec: str, measures: list[str], args) -> dict:
    return {"network": network, "method": spec, "measures": measures, "steps": args.steps,
            "curve_steps": args.curve_steps, "baseline": args.baseline, "seed": args.seed,
            "max_images": args.max_images, "documents": args.documents, "mnist": args.mnist, "images": args.images}


def measure_all(networks: list[str], args, out: pathlib.Path) -> None:
    loaded = {}
    labels = [m.strip() for m in args.methods.split(",") if m.strip()]
    for label in labels:  # methods outer: a run cut short has the first methods on every network
        for network in networks:
            todo = plan(network, args)
            if label not in todo:
                continue
            spec, measures = todo[label]
            path = out / network / f"{label}.pkl"
            settings = settings_of(network, label, spec, measures, args)
            if path.is_file() and not args.fresh:
                if pickle.loads(path.read_bytes())["settings"] == settings:
                    paper.log(f"{network}: {label}: reusing {path}")
                    continue
            if network not in loaded:
                loaded[network] = Network(network, args)
                paper.atomic_write(out / network / "network.json", json.dumps(loaded[network].info, indent=1))
            paper.log(f"{network}: {spec} with {len(measures)} measures: {','.join(measures)}")
            try:
                result = run_one(loaded[network], label, spec, measures, args)
            except Exception as e:  # noqa: BLE001 - recorded, the run goes on
                result = {"failed": f"{type(e).__name__}: {e}"[:500], "seconds": None}
                paper.log(f"{network}: {label} FAILED: {result['failed']}")
            result["settings"] = settings
            paper.atomic_write(out / network / f"{label}.pkl", write=lambda tmp: tmp.write_bytes(pickle.dumps(result)))
            if "failed" not in result:
                paper.log(f"{network}: {label} done in {result['seconds']} s")


# -- tables ----------------------------------------------------------------------------------------
def load(out: pathlib.Path, network: str, order: list[str]) -> tuple[dict, dict]:
    """(network info, {label: saved result}) in --methods order, then any other saved method."""
    folder = out / network
    if not (folder / "network.json").is_file():
        return {}, {}
    saved = {p.stem: pickle.loads(p.read_bytes()) for p in sorted(folder.glob("*.pkl"))}
    keys = [k for k in order if k in saved] + [k for k in saved if k not in order]
    return json.loads((folder / "network.json").read_text()), {k: saved[k] for k in keys}


def fmt(mean, se, digits=3) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{mean:.{digits}f}"


def network_tables(network: str, info: dict, saved: dict) -> tuple[str, dict]:
    from gnl_onnx.evaluation import Evaluation

    done = {k: v for k, v in saved.items() if "failed" not in v}
    failed = {k: v["failed"] for k, v in saved.items() if "failed" in v}
    evaluation = Evaluation(config={})
    for label, result in done.items():
        evaluation.summaries[label] = result["summary"]
    measures = evaluation.measures()
    # A one-number measure that gives every method the same mean (sufficiency over 2 images of
    # different classes: 0 for all) cannot rank them: agreement() would order the tie by the run's
    # method order, so it is left out of the ranks and correlations (and said so).
    constant = [m.name for m in measures if m.name in _score_names(evaluation)
                and len({round(s.scores[m.name][0], 12) for s in evaluation.summaries.values()
                         if m.name in s.scores and math.isfinite(s.scores[m.name][0])}) == 1
                and sum(m.name in s.scores for s in evaluation.summaries.values()) > 1]
    ranked = Evaluation(config={})
    for label, s in evaluation.summaries.items():
        ranked.summaries[label] = copy.copy(s)
        ranked.summaries[label].scores = {k: v for k, v in s.scores.items() if k not in constant}
    agreement = ranked.agreement() if done else {"ranks": {}, "correlations": {}, "disagree": []}
    n = len(info["images"])
    correct = [c for c in info["correct"] if c is not None]
    lines = [f"### {network}", "",
             f"{n} images ({info['data']}, input {' x '.join(map(str, info['shape']))}); top-1 classes "
             f"{', '.join(info['classes'])}" + (f"; {sum(correct)}/{len(correct)} correct" if correct else "") + ".",
             ""]
    specs = {label: r["settings"]["method"] for label, r in done.items() if r["settings"]["method"] != label}
    if specs:
        lines += ["Method options: " + ", ".join(f"`{s}`" for s in specs.values()) + ".", ""]
    all_measures = sorted({m for r in saved.values() for m in r["settings"]["measures"]},
                          key=lambda m: MEASURES.index(m) if m in MEASURES else 99)
    skipped = {label: [m for m in all_measures if m not in r["settings"]["measures"]] for label, r in done.items()}
    skipped = {k: v for k, v in skipped.items() if v}
    if skipped:
        lines += ["Measures not taken (cost): " + "; ".join(f"{k}: {', '.join(v)}" for k, v in skipped.items()) + ".",
                  ""]
    if failed:
        lines += ["Failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()) + ".", ""]
    seconds = {label: r["seconds"] for label, r in done.items()}
    lines += ["Seconds per method (explaining and every measure, all images): "
              + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f"; total {sum(seconds.values()):.0f} s.", ""]
    # means with standard errors, split in two tables to keep them readable
    columns = [(m, h, k) for m in measures for k, h in enumerate(m.headers())]
    for part in (columns[:6], columns[6:12], columns[12:]):
        if not part:
            continue
        lines.append("| method | " + " | ".join(f"{h} ({'↓' if _lower(m, k) else '↑'})" for m, h, k in part) + " |")
        lines.append("|---" * (len(part) + 1) + "|")
        for label, s in evaluation.summaries.items():
            cells = []
            for m, _, k in part:
                c = m.cells(s)
                cells.append(fmt(*c[k]) if len(c) > k else "-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    # ranks
    ranks = agreement["ranks"]
    names = list(ranks)
    if names:
        # mean ranks over the measures that rank every method (the forward-only methods skip the
        # costly re-explaining measures on the larger networks): over the faithfulness measures, and
        # over all of them (robustness, randomisation and complexity included)
        common = [m for m in names if len(ranks[m]) == len(evaluation.summaries)]
        faithful = [m for m in common if m in FAITHFULNESS]
        mean_rank = {label: np.mean([ranks[m][label] for m in faithful]) if faithful else math.nan
                     for label in evaluation.summaries}
        mean_all = {label: np.mean([ranks[m][label] for m in common]) if common else math.nan
                    for label in evaluation.summaries}
        firsts = {label: sum(ranks[m].get(label) == 1 for m in names) for label in evaluation.summaries}
        lines.append("Rank of each method by each measure (1 best; ROAD ranks by LeRF - MoRF"
                     + (f"; not ranked, the same mean for every method: {', '.join(constant)}" if constant else "")
                     + f"). Mean ranks over the measures that rank every method: faithfulness "
                     f"({', '.join(ABBREVIATIONS[m] for m in faithful)}) and all ({len(common)}):")
        lines.append("")
        lines.append("| method | " + " | ".join(ABBREVIATIONS.get(m, m) for m in names)
                     + " | mean rank, faithfulness | mean rank, all | firsts |")
        lines.append("|---" * (len(names) + 4) + "|")
        for label in sorted(evaluation.summaries, key=lambda k: (mean_rank[k], mean_all[k])):
            lines.append(f"| {label} | " + " | ".join(str(ranks[m].get(label, "-")) for m in names)
                         + f" | {mean_rank[label]:.1f} | {mean_all[label]:.1f} | {firsts[label]} |")
        lines.append("")
        lines.append("First by each measure: " + "; ".join(
            f"{m}: {min(ranks[m], key=ranks[m].get)}" for m in names) + ".")
        lines.append("")
    correlations = agreement["correlations"]
    if correlations:
        lines.append("Spearman correlation of the measures' rankings over the methods:")
        lines.append("")
        lines.append("| | " + " | ".join(ABBREVIATIONS.get(m, m) for m in names) + " | mean with the others |")
        lines.append("|---" * (len(names) + 2) + "|")
        for a in names:
            row = []
            for b in names:
                rho = 1.0 if a == b else correlations.get(f"{a} ~ {b}", correlations.get(f"{b} ~ {a}"))
                row.append("-" if rho is None else f"{rho:+.2f}")
            others = [correlations.get(f"{a} ~ {b}", correlations.get(f"{b} ~ {a}")) for b in names if b != a]
            others = [r for r in others if r is not None]
            row.append(f"{np.mean(others):+.2f}" if others else "-")
            lines.append(f"| {ABBREVIATIONS.get(a, a)} | " + " | ".join(row) + " |")
        lines.append("")
        pairs_ = agreement["disagree"]
        strong = sorted(([a, b] for a, b in pairs_ if correlations[f"{a} ~ {b}"] <= -0.5),
                        key=lambda ab: correlations[f"{ab[0]} ~ {ab[1]}"])
        lines.append(f"Measures that disagree (rank correlation < 0): {len(pairs_)} of {len(correlations)} pairs"
                     + ("; the strongest (ρ ≤ -0.5): " + ", ".join(
                         f"{a} vs {b} ({correlations[f'{a} ~ {b}']:+.2f})" for a, b in strong) if strong else "")
                     + ".")
        lines.append("")
    data = {"info": info, "failed": failed, "constant": constant, "seconds": seconds, "agreement": agreement,
            "summary": {label: s.as_dict() for label, s in evaluation.summaries.items()},
            "settings": {label: r["settings"] for label, r in saved.items()}}
    for row in data["summary"].values():
        for key in [k for k in row if k.endswith("_curve_mean")]:
            row.pop(key)
    return "\n".join(lines), data


def _score_names(evaluation) -> set:
    return {k for s in evaluation.summaries.values() for k in s.scores}


def _lower(measure, k: int) -> bool:
    better = getattr(measure, "better", None)
    if measure.name == "road":
        return k == 0  # MoRF lower; LeRF and the difference higher
    return better == "lower"


def assemble(networks: list[str], args, out: pathlib.Path) -> None:
    order = [m.strip() for m in args.methods.split(",") if m.strip()]
    texts, data = [], {}
    for network in networks:
        info, saved = load(out, network, order)
        if not saved:
            paper.log(f"{network}: nothing saved in {out / network}")
            continue
        text, data[network] = network_tables(network, info, saved)
        texts.append(text)
    meta = {"command": "python tools/reproduce_measures.py " + " ".join(sys.argv[1:]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": paper.versions(), "cpus": os.cpu_count()}
    paper.atomic_write(out / "results.json", json.dumps({"meta": meta, "networks": data}, indent=1, default=float))
    paper.atomic_write(out / "tables.md", "\n".join(texts))
    paper.log(f"wrote {out / 'tables.md'} and {out / 'results.json'} ({len(data)} networks)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", default=",".join(paper.NETWORKS), help="from " + ", ".join(paper.NETWORKS))
    p.add_argument("--methods", default=",".join(METHODS), help="gnl_onnx method names and random, in run order")
    p.add_argument("--method-options", default="",
                   help="NETWORK:METHOD:OPTIONS;... e.g. 'efficientnet-lite*:rise:masks=1000' (fnmatch on the network)")
    p.add_argument("--measures", default=",".join(MEASURES), help="the measures (evaluate --metrics names)")
    p.add_argument("--exclude", default="",
                   help="NETWORK:NAME (a method or a measure) or NETWORK:METHOD:MEASURE, comma-separated, fnmatch")
    p.add_argument("--steps", type=int, default=16, help="path/noise steps (ig, gnl_ig, smoothgrad)")
    p.add_argument("--curve-steps", type=int, default=28)
    p.add_argument("--baseline", default="black", help="the path methods' baseline (black or zeros)")
    p.add_argument("--max-images", type=int, default=3, help="bundled photos per Lite model")
    p.add_argument("--images", help="an extra folder of photos for the Lite models")
    p.add_argument("--documents", type=int, default=2, help="orientation: the first N of page/text alternating")
    p.add_argument("--mnist", type=int, default=20, help="MNIST and Fashion-MNIST images (each)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "out" / "reproduce_measures"))
    p.add_argument("--assemble", action="store_true", help="measure nothing: tables from the saved results")
    p.add_argument("--fresh", action="store_true", help="measure again what is saved")
    p.add_argument("--quick", action="store_true", help="smoke run: MNIST, 2 images, gradient, occlusion, random")
    args = p.parse_args(argv)
    if args.quick:
        args.networks, args.mnist, args.steps, args.curve_steps = "mnist", 2, 4, 8
        args.methods = "gradient,occlusion,random"
        if args.out == p.get_default("out"):
            args.out += "_quick"
    networks = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in networks if n not in paper.NETWORKS]
    if unknown:
        p.error(f"unknown network(s) {unknown}; choose from {paper.NETWORKS}")
    from gnl_onnx.evaluation import parse_methods, parse_metrics

    parse_metrics(args.measures)
    parse_methods([m for m in args.methods.split(",") if m.strip()])
    if "fashion-mnist" in networks and not paper.FASHION_DIR.is_dir():
        paper.log(f"fashion-mnist skipped: {paper.FASHION_DIR} does not exist")
        networks.remove("fashion-mnist")
    out = pathlib.Path(args.out)
    if not args.assemble:
        t0 = time.perf_counter()
        measure_all(networks, args, out)
        paper.log(f"measured in {time.perf_counter() - t0:.0f} s")
    assemble(networks, args, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
