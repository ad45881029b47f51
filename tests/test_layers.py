"""The shape of the package stays: every import inside gnl_onnx/ and models/ (module level and
inside functions) is read from the source, and

- there is no import circle (a package's __init__ counts as a module: a submodule importing its
  own package is a circle when the package imports it back);
- no module imports one of a higher layer (LAYERS, bottom first; within a layer anything goes
  as long as there is no circle);
- no command imports another command (they stand side by side over the layers below);
- no module imports another of the package inside a function (such imports hide circles and
  layers); only optional dependencies (third-party ones, and the bundled models' package) are
  imported on use.

docs/architecture.md describes the layers."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Bottom first. A module belongs to the first layer naming it or a package above it.
LAYERS = [
    ("foundation", ["gnl_onnx.errors", "gnl_onnx.graph", "gnl_onnx.output", "gnl_onnx.runtime",
                    "gnl_onnx.budget"]),
    ("intake", ["gnl_onnx.loading", "gnl_onnx.dequantize", "gnl_onnx.normalize", "gnl_onnx.batch",
                "gnl_onnx.intake"]),
    ("autodiff", ["gnl_onnx.autodiff"]),
    ("graphs", ["gnl_onnx.vjp", "gnl_onnx.targets", "gnl_onnx.box_targets", "gnl_onnx.target_text", "gnl_onnx.cam",
                "gnl_onnx.methods", "gnl_onnx.attribution", "gnl_onnx.inspection", "gnl_onnx.randomize"]),
    ("inputs", ["gnl_onnx.baselines", "gnl_onnx.images", "gnl_onnx.presets", "gnl_onnx.settings"]),
    ("runtime", ["gnl_onnx.forward", "gnl_onnx.explainer", "gnl_onnx.planning", "gnl_onnx.detection",
                 "gnl_onnx.adaptive"]),
    ("measures", ["gnl_onnx.pixels", "gnl_onnx.scorer", "gnl_onnx.road", "gnl_onnx.metrics", "gnl_onnx.scores",
                  "gnl_onnx.measures", "gnl_onnx.localisation",
                  "gnl_onnx.evaluation", "gnl_onnx.target_evaluation", "gnl_onnx.report", "gnl_onnx.attribution_files"]),
    ("commands", ["gnl_onnx.explain", "gnl_onnx.demo", "gnl_onnx.evaluate", "gnl_onnx.check", "gnl_onnx.audit",
                  "gnl_onnx.deploy"]),
    ("models", ["models"]),  # the bundled real models (installed as gnl_onnx_models): an extra
    ("edge", ["gnl_onnx.cli_commands", "gnl_onnx.cli", "gnl_onnx.pipeline", "gnl_onnx"]),
]
OPTIONAL = ("models",)  # may be imported inside a function: an extra that may be missing
COMMANDS = ["gnl_onnx.explain", "gnl_onnx.demo", "gnl_onnx.evaluate", "gnl_onnx.check", "gnl_onnx.audit",
            "gnl_onnx.deploy"]


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in ("gnl_onnx", "models"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(name: str, path: pathlib.Path, known) -> list[tuple[str, bool]]:
    """(module imported, inside a function) for each import of a module in `known`. A name
    imported from a module counts as the module (a submodule counts as itself)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                stem = ".".join(parts + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            if stem == "gnl_onnx_models" or stem.startswith("gnl_onnx_models."):  # installed name of models/
                stem = "models" + stem[len("gnl_onnx_models"):]
            subs = [f"{stem}.{a.name}" for a in node.names if f"{stem}.{a.name}" in known]
            targets = subs if len(subs) == len(node.names) else [stem] + subs
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.append((t, id(node) in inside))
    return out


def layer_of(name: str) -> int:
    best = None
    for index, (_, members) in enumerate(LAYERS):
        for m in members:
            if name == m or name.startswith(m + "."):
                if best is None or len(m) > best[1]:
                    best = (index, len(m))
    assert best is not None, f"{name} is in no layer: add it to LAYERS in tests/test_layers.py"
    return best[0]


def command_of(name: str) -> str | None:
    return next((c for c in COMMANDS if name == c or name.startswith(c + ".")), None)


GRAPH = None


def graph():
    global GRAPH
    if GRAPH is None:
        known = modules()
        GRAPH = {name: imports(name, path, known) for name, path in known.items()}
    return GRAPH


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for name in graph():
        layer_of(name)


def test_no_import_circles():
    edges = {name: {t for t, _ in found} for name, found in graph().items()}
    assert circles(edges) == []


def test_no_import_against_the_layers():
    upward = [f"{name} ({LAYERS[layer_of(name)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for name, found in graph().items() for t, _ in found
              if layer_of(t) > layer_of(name) and not (name.startswith("models") and t.startswith("models"))]
    assert upward == []


def test_commands_stand_side_by_side():
    crossing = [f"{name} imports {t}" for name, found in graph().items() for t, _ in found
                if command_of(name) and command_of(t) and command_of(t) != command_of(name)]
    assert crossing == []


def test_no_package_imports_inside_functions():
    hidden = [f"{name} imports {t} inside a function" for name, found in graph().items()
              for t, in_function in found if in_function and not t.startswith(OPTIONAL)]
    assert hidden == []


def test_the_checker_sees_imports():
    """The walk itself: a circle and a function-level import are found where they are."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]
    found = dict(graph()["gnl_onnx.explainer"])
    assert "gnl_onnx.attribution" in found and found["gnl_onnx.attribution"] is False
