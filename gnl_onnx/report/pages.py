"""HTML pages: the demo's and explain's page of overlays (html_page), and the evaluation report
of `evaluate` and `audit` (evaluation_page). Self-contained: inline CSS and a small inline script,
no network; PNGs linked relative to the page (or embedded)."""
from __future__ import annotations

import base64
import html
import json
import math
import os
import pathlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from ..errors import InputError
from .pictures import PathLike, atomic_write


@dataclass
class Panel:
    """One attribution picture and what produced it."""
    png: PathLike
    method: str
    baseline: str | None = None
    note: str = ""  # e.g. "deletion AUC 0.081" or "delta 2e-3"


@dataclass
class Row:
    """One input image: its picture, the explained class and the methods' panels."""
    image: PathLike | None
    label: str  # class name (and index)
    score: float | None = None  # the explained output (logit or probability)
    panels: list[Panel] = field(default_factory=list)
    title: str = ""  # e.g. the file name


def _row(r: Row | Mapping) -> Row:
    if isinstance(r, Row):
        return r
    d = dict(r)
    d["panels"] = [p if isinstance(p, Panel) else Panel(**p) for p in d.get("panels", [])]
    return Row(**d)


_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td{vertical-align:top;padding:6px;text-align:center}
tr{border-top:1px solid #ddd}img{width:224px;height:auto;image-rendering:pixelated}
.cap{font-size:12px;max-width:224px;margin:auto}.cap b{font-size:13px}"""


def _source(png: PathLike, base: pathlib.Path, embed: bool) -> str:
    p = pathlib.Path(png)
    if embed:
        try:
            data = p.read_bytes()
        except OSError as e:
            raise InputError(f"{p}: cannot read PNG to embed ({e.strerror})") from None
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    rel = os.path.relpath(p.resolve(), base)
    return html.escape(pathlib.PurePath(rel).as_posix(), quote=True)


def html_page(rows: Iterable[Row | Mapping], path: PathLike, title: str = "gnl-onnx attributions",
              embed: bool = False, notes: Sequence[str] = ()) -> pathlib.Path:
    """One page, one table row per image: the image, then each method's panel with a caption
    naming class, score, method and baseline. PNGs are linked relative to the page (keep them
    next to it) or, with embed=True, inlined as base64 so the page travels alone."""
    path = pathlib.Path(path)
    base = path.parent.resolve()

    def cell(png: PathLike | None, lines: list[str], alt: str) -> str:
        img = f'<img src="{_source(png, base, embed)}" alt="{html.escape(alt, quote=True)}">' if png else ""
        cap = "<br>".join(lines)
        return f'<td>{img}<div class="cap">{cap}</div></td>'

    esc = html.escape
    body = []
    for r in map(_row, rows):
        score = "" if r.score is None else f" score {r.score:.4g}"
        head = f"<b>{esc(r.title)}</b>" if r.title else "input"
        cells = [cell(r.image, [head, esc(r.label) + esc(score)], r.title or "input")]
        for p in r.panels:
            lines = [f"<b>{esc(p.method)}</b>", esc(r.label) + esc(score)]
            lines.append(f"baseline: {esc(p.baseline)}" if p.baseline else "baseline: n/a")
            if p.note:
                lines.append(esc(p.note))
            cells.append(cell(p.png, lines, f"{p.method}: {r.label}"))
        body.append("<tr>" + "".join(cells) + "</tr>")
    notes_html = "".join(f"<p>{esc(n)}</p>" for n in notes)
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>{notes_html}"
            f"<table>{''.join(body)}</table></body></html>\n")
    return atomic_write(path, page)


# -- the evaluation report ---------------------------------------------------------------------
@dataclass
class ImageResult:
    """One image of an evaluation or audit as the report shows it."""
    name: str                    # the image's name (evaluate) or id (audit), as in the records
    photo: PathLike | None       # the image as the model sees it (PNG)
    overlays: dict[str, PathLike] = field(default_factory=dict)  # method -> overlay PNG
    agreement: float | None = None  # mean pairwise Spearman of the methods' per-pixel maps
    label: str | None = None     # the explained class's name, when known


# Record fields that describe a result rather than score it: not sortable metrics.
NOT_METRICS = frozenset({"target", "probability", "score", "steps", "attribution_seconds", "label", "region_pixels"})


def metric_names(records: Sequence[Mapping]) -> list[str]:
    """The per-image metrics of the records, in their order: every finite-or-NaN scalar number
    that is not a description (NOT_METRICS), e.g. deletion_auc, insertion_auc and whatever an
    evaluation adds."""
    names: dict[str, None] = {}
    for r in records:
        for k, v in r.items():
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                names.setdefault(k, None)
    return list(names)


def summary_columns(summaries: Mapping) -> list[str]:
    """The summarized metrics, from MethodSummary.as_dict(): each scalar "<name>_mean" (with its
    "<name>_se" when present) -> <name>, in their order."""
    names: dict[str, None] = {}
    for s in summaries.values():
        for k, v in s.as_dict().items():
            if k.endswith("_mean") and (v is None or isinstance(v, (int, float))):
                names.setdefault(k[:-len("_mean")], None)
    return list(names)


def _number(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(v, digits: int = 4) -> str:
    v = _number(v)
    return "n/a" if v is None else f"{v:.{digits}f}"


def _data(v) -> str:
    """A sort key for a data- attribute: the number, or empty (sorted last)."""
    v = _number(v)
    return "" if v is None else repr(v)


_REPORT_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1800px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{padding:4px 8px;vertical-align:top}
#summary td,#summary th{border-bottom:1px solid #ddd;text-align:right}#summary td:first-child{text-align:left}
th.sortable{cursor:pointer;text-decoration:underline dotted}th.sorted-asc::after{content:" \\25B2"}
th.sorted-desc::after{content:" \\25BC"}
.rec{font-weight:600;background:#f4f6ff;padding:0.6em;border-left:4px solid #36c}
#images td{text-align:center;border-top:1px solid #ddd}#images img{width:192px;height:auto;display:block;margin:auto}
.cap{font-size:12px;max-width:200px;margin:auto}.cap b{font-size:13px}.scores{font-size:12px;color:#333}
.agree{font-size:12px;color:#555}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;font-size:13px}
dt{font-weight:600}dd{margin:0;font-family:monospace;white-space:pre-wrap}"""

# Sorting: the summary table by a click on a column header; the images by the chosen metric.
_REPORT_JS = r"""
(function () {
  function key(el, name) {
    var v = el.getAttribute(name);
    return v === null || v === "" ? NaN : parseFloat(v);
  }
  function order(rows, get, descending) {
    rows.sort(function (a, b) {
      var x = get(a), y = get(b);
      if (isNaN(x) && isNaN(y)) return 0;
      if (isNaN(x)) return 1;               // missing values last, either way
      if (isNaN(y)) return -1;
      return descending ? y - x : x - y;
    });
    return rows;
  }
  var summary = document.getElementById("summary");
  if (summary) {
    var heads = summary.querySelectorAll("th.sortable");
    Array.prototype.forEach.call(heads, function (th) {
      th.addEventListener("click", function () {
        var column = th.cellIndex, descending = th.classList.contains("sorted-asc");
        var body = summary.tBodies[0];
        var rows = order(Array.prototype.slice.call(body.rows), function (r) {
          return key(r.cells[column], "data-value");
        }, descending);
        rows.forEach(function (r) { body.appendChild(r); });
        Array.prototype.forEach.call(heads, function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
        th.classList.add(descending ? "sorted-desc" : "sorted-asc");
      });
    });
  }
  var images = document.getElementById("images"), select = document.getElementById("sort-key"),
      direction = document.getElementById("sort-direction");
  function sortImages() {
    var body = images.tBodies[0], attribute = "data-" + select.value;
    order(Array.prototype.slice.call(body.rows), function (r) { return key(r, attribute); },
          direction.value === "desc").forEach(function (r) { body.appendChild(r); });
  }
  if (images && select && direction) {
    select.addEventListener("change", sortImages);
    direction.addEventListener("change", sortImages);
  }
})();
"""


def _attr(name: str) -> str:
    """A data- attribute name for a sort key (lower case letters, digits and dashes)."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def evaluation_page(evaluation, path: PathLike, images: Sequence[ImageResult] = (),
                    curves: PathLike | None = None, records: Sequence[Mapping] | None = None,
                    title: str = "gnl-onnx evaluation", notes: Sequence[str] = (),
                    total_images: int | None = None) -> pathlib.Path:
    """The report of an evaluation (gnl_onnx.evaluate.Evaluation, from `evaluate` or `audit`):
    the recommendation, the summary table (mean +- standard error of every summarized metric, one
    row per method, sortable), the mean curves, then per image the photo and each method's overlay
    with its scores (the methods' rank agreement beside), the images where the methods disagree
    most (lowest agreement) first, sortable by any metric; last, the settings. `records` default
    to evaluation.records (one dict per image and method); the columns come from the data, so new
    metrics appear without changes here. Written atomically."""
    path = pathlib.Path(path)
    base = path.parent.resolve()
    esc = html.escape
    records = list(evaluation.records if records is None else records)
    summaries = evaluation.summaries
    methods = list(summaries) or list(dict.fromkeys(r["method"] for r in records))
    columns = summary_columns(summaries)
    metrics = metric_names(records)
    by_key = {(str(r.get("row", r["image"])), r["method"]): r for r in records}  # a box's or region's row

    parts = [f"<h1>{esc(title)}</h1>"]
    parts.append(f'<p class="rec" id="recommendation">{esc(evaluation.recommendation())}</p>')
    legend = evaluation.table().splitlines()[0] if summaries else ""
    for line in ([legend] if legend else []) + list(notes):
        parts.append(f"<p>{esc(line)}</p>")

    # the summary: one row per method
    head = ['<th class="sortable">method</th>'] + [f'<th class="sortable">{esc(c)}</th>' for c in columns]
    head += ['<th class="sortable">images</th>', '<th class="sortable">steps</th>']
    rows = []
    for position, method in enumerate(methods):
        s = summaries.get(method)
        d = s.as_dict() if s is not None else {}
        cells = [f'<td data-value="{position}">{esc(method)}</td>']
        for c in columns:
            mean, se = d.get(f"{c}_mean"), d.get(f"{c}_se")
            text = _fmt(mean) + (" ± " + _fmt(se) if f"{c}_se" in d else "")
            cells.append(f'<td data-value="{_data(mean)}">{esc(text)}</td>')
        cells.append(f'<td data-value="{_data(d.get("images"))}">{esc(str(d.get("images", "")))}</td>')
        steps = d["points"]["mean"] if d.get("points") else d.get("steps")  # "auto": the points per image
        shown = s.steps_text() if hasattr(s, "steps_text") else "-" if steps is None else str(steps)
        cells.append(f'<td data-value="{_data(steps)}">{esc(shown)}</td>')
        rows.append(f'<tr data-method="{esc(method, quote=True)}">{"".join(cells)}</tr>')
    parts.append(f'<h2>Methods</h2><table id="summary"><thead><tr>{"".join(head)}</tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table>')
    agreement = evaluation.agreement_lines() if hasattr(evaluation, "agreement_lines") else []
    if agreement:  # measures beyond deletion and insertion: how each ranks the methods, and where they disagree
        found = evaluation.agreement()
        names = list(found["ranks"])
        head = "<th>method</th>" + "".join(f"<th>{esc(n)}</th>" for n in names)
        body = "".join(f'<tr><td>{esc(m)}</td>' + "".join(f'<td>{found["ranks"][n].get(m, "-")}</td>' for n in names)
                       + "</tr>" for m in methods)
        pairs = "".join(f"<tr><td>{esc(k)}</td><td>{_fmt(v, 2)}</td></tr>" for k, v in found["correlations"].items())
        parts.append(f'<h2>Agreement of the measures</h2><p id="agreement">{esc(agreement[-1])}</p>'
                     f'<p>Rank of each method under each measure (1 best):</p><table id="ranks"><thead><tr>{head}'
                     f'</tr></thead><tbody>{body}</tbody></table><p>Rank correlation (Spearman) between measures, '
                     f'over the methods:</p><table id="rank-correlations"><tbody>{pairs}</tbody></table>'
                     "<p>Max- and average sensitivity do not flag random explanations: a random map changes a lot "
                     "under noise, but so may a good method's on a model with sharp gradients, and a constant map "
                     "scores a perfect 0 (Hedstrom et al. 2023, Quantus). Random logit, smooth and efficient MPRT "
                     "and randomization ask whether a map changes with the class or the model: a random map always "
                     "does, so they can fail a method but not crown one.</p>")
    if curves is not None:
        parts.append(f'<h2>Mean curves</h2><img id="curves" src="{_source(curves, base, False)}" '
                     f'alt="mean curves per method" style="max-width:100%">')

    # per image
    if images:
        keys = [("agreement", "agreement of the methods (Spearman)")]
        keys += [(_attr(f"{m}--{k}"), f"{m}: {k}") for m in methods for k in metrics]
        options = "".join(f'<option value="{esc(k, quote=True)}">{esc(text)}</option>' for k, text in keys)
        shown = len(images)
        total = total_images if total_images is not None else shown
        count = (f"{shown} images" if shown == total else
                 f"the {shown} of {total} images where the methods disagree most")
        parts.append(
            f"<h2>Images</h2><p>{esc(count)}, those where the methods disagree most (lowest mean rank correlation "
            "between their per-pixel maps, random excluded) first. Overlays: where the attribution's magnitude "
            "is, over a dimmed grey copy of the image. "
            f'<label>sort by <select id="sort-key">{options}</select></label> '
            '<label><select id="sort-direction"><option value="asc">ascending</option>'
            '<option value="desc">descending</option></select></label></p>')
        head = ["<th>image</th>"] + [f"<th>{esc(m)}</th>" for m in methods]
        body = []
        for item in images:
            name = str(item.name)
            data = [f'data-agreement="{_data(item.agreement)}"', f'data-image="{esc(name, quote=True)}"']
            first = next((by_key[(name, m)] for m in methods if (name, m) in by_key), {})
            caption = [f"<b>{esc(pathlib.PurePath(name).name)}</b>"]
            target = first.get("target")
            if target is not None:
                caption.append(esc(f"class {item.label} ({target})" if item.label else f"class {target}"))
            probability = first.get("probability", first.get("score"))
            if _number(probability) is not None:  # a box's or region's row: its score, not a probability
                caption.append(esc(f"{'score' if 'row' in first else 'p'} = {float(probability):.3f}"))
            caption.append(f'<span class="agree">agreement ρ = {esc(_fmt(item.agreement, 3))}</span>')
            photo = (f'<img src="{_source(item.photo, base, False)}" alt="{esc(name, quote=True)}">'
                     if item.photo else "")
            cells = [f'<td>{photo}<div class="cap">{"<br>".join(caption)}</div></td>']
            for m in methods:
                r = by_key.get((name, m), {})
                for k in metrics:
                    data.append(f'data-{_attr(f"{m}--{k}")}="{_data(r.get(k))}"')
                png = item.overlays.get(m)
                img = (f'<img src="{_source(png, base, False)}" alt="{esc(f"{m}: {name}", quote=True)}">'
                       if png else "")
                scores = "<br>".join(f"{esc(k)} {esc(_fmt(r.get(k)))}" for k in metrics if k in r)
                cells.append(f'<td>{img}<div class="cap"><b>{esc(m)}</b><div class="scores">{scores}</div></div></td>')
            body.append(f'<tr {" ".join(data)}>{"".join(cells)}</tr>')
        parts.append(f'<table id="images"><thead><tr>{"".join(head)}</tr></thead>'
                     f'<tbody>{"".join(body)}</tbody></table>')

    # the settings
    settings = "".join(f"<dt>{esc(str(k))}</dt><dd>{esc(v if isinstance(v, str) else json.dumps(v, default=str))}</dd>"
                       for k, v in evaluation.config.items())
    parts.append(f'<h2>Settings</h2><dl id="settings">{settings}</dl>')
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<style>{_REPORT_CSS}</style></head><body>{''.join(parts)}"
            f"<script>{_REPORT_JS}</script></body></html>\n")
    return atomic_write(path, page)


__all__ = ["ImageResult", "Panel", "Row", "evaluation_page", "html_page", "metric_names", "summary_columns"]
