"""Write docs/models.md: one table of every model the test suite checks against its framework,
one row per model x exporter x opset, with the measured gradient errors, the gated units and
the status. Nothing is measured here: the rows are the numbers the tests wrote.

The tests write their per-case numbers to tests/.results/ (ignored by git):

    architectures.json   tests/test_architectures.py   torchvision CNNs, torch legacy / dynamo exporters
    transformers.json    tests/test_transformers.py    vit_b_16, swin_t, legacy opset 17 and 20, dynamo 18
    keras_exports.json   tests/test_keras_exports.py   Keras models through tf2onnx (when present)
    jax_exports.json     tests/test_jax_exports.py     JAX/Flax models through jax2onnx (when present)

A rerun of part of a test file (pytest -k) updates its rows and keeps the others, so the table can
mix rows measured at different times: the "measured" column says when each row was.

Regenerate (from the repository root, with the test environment):

    .venv/bin/python -m pytest -q tests/test_transformers.py tests/test_architectures.py  # or -k ...
    .venv/bin/python tools/model_table.py                # reads tests/.results, writes docs/models.md
    .venv/bin/python tools/model_table.py --run -k resnet18   # runs those tests first (-k optional)

Columns. Errors are max |engine - reference| / max |reference| on the input gradient (float32
onnxruntime against the framework's float64 gradient: plain autograd, or the guided reference with
the same gating, see each test's docstring); "tol" is the largest tolerance the row was held to
(max(1e-4, the framework's own float32 error) for the torch tests). "gated units" counts the nodes
guided backpropagation gated, by op type, with gate="paper" and gate="all" (where measured).
The status is the test's own verdict where the test records it, else derived from the errors and
tolerances (and "failed" with what is missing when the test stopped before measuring).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tests" / ".results"
OUTPUT = ROOT / "docs" / "models.md"
KEPT = "<!-- kept by tools/model_table.py: the sections below come from other tools -->"
TORCH_OPSETS = {"legacy": 17, "dynamo": 18}  # models/torchvision_zoo.py's DEFAULT_OPSETS
FORWARD_TOL = 1e-4
# (results file, test file, how its rows are named)
SOURCES = [("architectures.json", "tests/test_architectures.py", "torchvision"),
           ("transformers.json", "tests/test_transformers.py", "transformers"),
           ("keras_exports.json", "tests/test_keras_exports.py", "tf2onnx"),
           ("jax_exports.json", "tests/test_jax_exports.py", "jax2onnx")]
VARIANTS = [("plain", "plain"), ("guided paper", "guided"), ("guided paper", "guided_paper"),
            ("guided all", "guided_all")]


def _identify(kind: str, key: str, row: dict) -> tuple[str, str, object]:
    """(model, exporter, opset) of one results row."""
    if kind == "transformers":
        return row["model"], f"torch {row['exporter']}", row["opset"]
    if kind == "torchvision":
        unfused = key.endswith("-unfused")
        model, exporter = (key[:-len("-unfused")] if unfused else key).rsplit("-", 1)
        label = f"torch {exporter}" + (" (BatchNorm kept)" if unfused else "")
        return model, label, row.get("opset", TORCH_OPSETS.get(exporter, "?"))
    prefix = f"{kind}-"
    return (key[len(prefix):] if key.startswith(prefix) else key), kind, row.get("opset", "?")


def _gated(counts: dict | None) -> str:
    if counts is None:
        return "-"
    return ", ".join(f"{op} {n}" for op, n in sorted(counts.items())) or "none"


def _status(row: dict, measured: dict) -> str:
    if "status" in row:
        return row["status"]
    if "plain" not in measured:
        return "failed: the test stopped before measuring (see its log)"
    problems = [f"{name} error {v['rel_err']:.2g} > {v['tol']:.2g}" for name, v in measured.items()
                if not v["rel_err"] <= v["tol"]]
    forward = measured["plain"].get("forward_rel_err")
    if forward is not None and not forward <= FORWARD_TOL:
        problems.append(f"forward error {forward:.2g}")
    return "failed: " + "; ".join(problems) if problems else "ok"


def collect(results_dir: pathlib.Path = RESULTS) -> tuple[list[dict], list[str]]:
    rows, read = [], []
    for order, (filename, test, kind) in enumerate(SOURCES):
        path = results_dir / filename
        if not path.is_file():
            continue
        read.append(f"`tests/.results/{filename}` ({test})")
        for key, row in json.loads(path.read_text()).items():
            model, exporter, opset = _identify(kind, key, row)
            measured = {}
            for name, field in VARIANTS:
                if isinstance(row.get(field), dict):
                    measured[name] = row[field]
            paper = measured.get("guided paper", {}).get("gated")
            everything = measured.get("guided all", {}).get("gated")
            rows.append({
                "source": order, "model": model, "exporter": exporter, "opset": opset,
                "errors": {name: measured[name]["rel_err"] for name in measured},
                "tol": max((v["tol"] for v in measured.values()), default=None),
                "gated": f"paper: {_gated(paper)}" + (f"; all: {_gated(everything)}" if "guided all" in measured
                                                      else ""),
                "status": _status(row, measured), "when": row.get("when", "?"),
                "versions": ", ".join(f"{k} {row[k]}" for k in ("torch", "tensorflow", "tf2onnx", "jax",
                                                                 "jax2onnx", "onnxruntime") if k in row),
            })
    return rows, read


def _err(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def render(rows: list[dict], read: list[str]) -> str:
    lines = [
        "# Models checked against their frameworks",
        "",
        "Generated by `tools/model_table.py` from the numbers the tests wrote; do not edit by hand.",
        "Regenerate: run the tests (`tests/test_architectures.py`, `tests/test_transformers.py`,",
        "`tests/test_keras_exports.py`, `tests/test_jax_exports.py`; `-k` to rerun a few rows), then",
        "`.venv/bin/python tools/model_table.py` (or `--run [-k EXPR]` to run the torch tests first).",
        "",
        "Each row: the input gradient of sum(seed * logits) at batch 2, from the ONNX VJP graph run by",
        "ONNX Runtime (CPU, float32), against the framework's own float64 gradient: plain autograd, or",
        "the guided reference gating the same units. Error = max |difference| / max |reference|; tol =",
        "the largest tolerance the row was held to; gated units = nodes gated by op type with",
        "`gate=\"paper\"` and, where measured, `gate=\"all\"`. Rows were measured at different times",
        "(a rerun of a few tests replaces only their rows): see \"measured\" (UTC). Only rows some test",
        "has measured appear; a model missing here was not run for this table.",
        "",
        "| model | exporter | opset | plain error | guided error (paper) | guided error (all) | tol "
        "| gated units | status | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["source"], r["model"].lower(), r["exporter"], str(r["opset"]))):
        e = r["errors"]
        lines.append(f"| {r['model']} | {r['exporter']} | {r['opset']} | {_err(e.get('plain'))} | "
                     f"{_err(e.get('guided paper'))} | {_err(e.get('guided all'))} | {_err(r['tol'])} | "
                     f"{r['gated']} | {r['status']} | {r['when'].replace('T', ' ')[:16]} |")
    versions = sorted({r["versions"] for r in rows if r["versions"]})
    lines += ["", "Notes:", "",
              "- `gate=\"all\"` gates a GELU only where the graph has a Gelu node: opset 20 and up (the torch",
              "  legacy exporter at opset 20). Below opset 20 both torch exporters write GELU as Erf arithmetic,",
              "  which is no unit (see the README), so there `gate=\"all\"` gates no GELU, and neither does the",
              "  torch reference it is compared with.",
              "- vit_b_16 and swin_t have no unit `gate=\"paper\"` gates (no Relu, Clip or MaxPool; Softmax and",
              "  LayerNormalization are never gated): their guided paper gradient is the plain one.",
              "", "Sources: " + (", ".join(read) if read else "none found") + ".",
              "Versions: " + ("; ".join(versions) if versions else "-") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true",
                        help="first run tests/test_transformers.py and tests/test_architectures.py")
    parser.add_argument("-k", default=None, help="with --run: pytest -k expression (a few rows)")
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS, help="folder of the results files")
    parser.add_argument("--output", type=pathlib.Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if args.run:
        command = [sys.executable, "-m", "pytest", "-q", "tests/test_transformers.py", "tests/test_architectures.py"]
        subprocess.run(command + (["-k", args.k] if args.k else []), cwd=ROOT, check=False)
    rows, read = collect(args.results)
    # sections other tools measured (tools/quantized_agreement.py) stay below KEPT
    kept = args.output.read_text().partition(KEPT)[2] if args.output.is_file() else ""
    args.output.write_text(render(rows, read) + (f"\n{KEPT}{kept}" if kept else ""))
    print(f"{args.output}: {len(rows)} rows from {len(read)} results files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
