"""The converted model where Python is not: `gnl-onnx convert --web` served by a static file server
and opened in headless Chromium (onnxruntime-web, WebAssembly), fed a real photo through the page's
file input, and web/explain-node.mjs in onnxruntime-node. Both are held to the Python Explainer on
the same input (float32 tolerance); the page's preprocessing to Python's Preprocessing (Pillow),
and its overlay to gnl_onnx.report.pictures.overlay. The bundled MNIST CNN keeps it fast; the photo
goes through the preset's resize and greyscale conversion like any photo a user picks.

Skipped, saying why, only where Chromium or web/node_modules (`npm ci --prefix web`) is missing;
.ci/run installs both."""
from __future__ import annotations

import base64
import functools
import http.server
import json
import pathlib
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from gnl_onnx import Explainer
from gnl_onnx.cli import main
from gnl_onnx.deploy import runtime_folder
from gnl_onnx.errors import UsageError
from gnl_onnx.images import load_image
from gnl_onnx.presets import get_preset
from gnl_onnx.report.pictures import overlay
from gnl_onnx.pixels import reduce_channels

from browser import Browser, find_chromium

ROOT = pathlib.Path(__file__).resolve().parents[1]
METHODS = ["gnl_ig", "ig", "gradcam"]
STEPS = 16


def _runtime_or_skip():
    try:
        runtime_folder()
    except UsageError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The MNIST CNN converted with three methods into a web folder, and a photo."""
    _runtime_or_skip()
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image
    from gnl_onnx_models.registry import get_model

    base = tmp_path_factory.mktemp("web")
    model = get_model("mnist")
    photo = base / "chelsea.png"
    Image.fromarray(skdata.chelsea()).save(photo)
    site = base / "site"
    assert main(["convert", str(model), "--methods", ",".join(METHODS), "--preset", "mnist", "--steps", str(STEPS),
                 "--web", str(site)]) == 0
    prep = get_preset("mnist").preprocessing
    image = load_image(photo, prep)
    reference = {m: Explainer(str(model), method=m, steps=STEPS, threads=1).explain(image) for m in METHODS}
    return {"site": site, "photo": photo, "prep": prep, "image": image, "reference": reference, "model": model}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript"}

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(converted):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet,
                                                                                directory=str(converted["site"])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _wait(page, expression: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not page.eval(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}: {page.eval('window.gnl && window.gnl.error')}, "
                                 f"console: {page.console_errors()}")
        time.sleep(0.05)


def _floats(b64: str, dtype=np.float32) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype)


def test_page_explains_a_photo_like_python(converted, served):
    chromium, why = find_chromium()
    if chromium is None:
        pytest.skip(why)
    with Browser(chromium, timeout=60) as browser:
        page = browser.open(served + "index.html?ep=wasm")
        _wait(page, "window.gnl && (window.gnl.ready || !!window.gnl.error)", 60)
        assert page.eval("window.gnl.error") is None, page.console_errors()
        # the user's way in: the file input, as if the photo had been picked
        document = browser.send("DOM.getDocument", session=page.session)["root"]["nodeId"]
        node = browser.send("DOM.querySelector", {"nodeId": document, "selector": "#file"},
                            session=page.session)["nodeId"]
        browser.send("DOM.setFileInputFiles", {"files": [str(converted["photo"])], "nodeId": node},
                     session=page.session)
        _wait(page, "!!(window.gnl.result || window.gnl.error)", 60)
        assert page.eval("window.gnl.error") is None, page.console_errors()
        got = json.loads(page.eval("""JSON.stringify((() => { const r = window.gnl.result; return {
            input: gnlBase64(r.input), dims: r.dims, pixels: gnlBase64(r.pixels), timings: r.timings,
            provider: r.provider, captions: [...document.querySelectorAll('figcaption')].map(c => c.textContent),
            methods: Object.fromEntries(Object.entries(r.methods).map(([k, m]) => [k, {
                attribution: gnlBase64(m.attribution), scores: gnlBase64(m.scores), target: m.target,
                score: m.score, overlay: gnlBase64(m.overlay)}]))}; })())"""))
        errors = page.console_errors()

    prep, image = converted["prep"], converted["image"]
    # the page prepared the photo as Pillow and Preprocessing do: resize, greyscale, float32 normalization
    assert got["dims"] == list(image.shape)
    page_input = _floats(got["input"]).reshape(image.shape)
    np.testing.assert_array_equal(page_input, image)
    pixels = np.frombuffer(base64.b64decode(got["pixels"]), np.uint8).reshape(image.shape[2:])
    assert got["provider"] == "wasm"
    print(f"\nweb page: model loaded in {got['timings']['load_ms']:.0f} ms, first heatmaps (3 methods, "
          f"{STEPS} steps) {got['timings']['heatmap_ms']:.0f} ms after the photo was picked")
    assert errors == []
    assert set(got["methods"]) == set(METHODS)
    for method in METHODS:
        ours, ref = got["methods"][method], converted["reference"][method]
        attribution = _floats(ours["attribution"]).reshape(image.shape)
        assert ours["target"] == int(ref.target[0])
        scores = _floats(ours["scores"])
        np.testing.assert_allclose(scores, ref.scores[0], rtol=1e-4, atol=1e-4 * np.abs(ref.scores).max())
        assert ours["score"] == pytest.approx(float(ref.score[0]), rel=1e-4)
        # float32 sums in another order (WebAssembly kernels against MLAS): relative to the map's scale
        scale = np.abs(ref.attributions).max()
        assert scale > 0
        np.testing.assert_allclose(attribution, ref.attributions, rtol=1e-3, atol=1e-4 * scale)
        # the overlay drawn is Python's overlay of the same map, up to a rounding step of a channel
        drawn = np.frombuffer(base64.b64decode(ours["overlay"]), np.uint8).reshape(*pixels.shape, 4)[..., :3]
        expected = overlay(pixels, reduce_channels(attribution, prep.layout, "sum"))
        assert np.abs(drawn.astype(int) - expected.astype(int)).max() <= 1
        assert any(c.startswith(f"{method}: {ours['target']} ({ours['target']})") for c in got["captions"]), \
            got["captions"]


def test_node_script_writes_python_s_attribution(converted, tmp_path):
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node: install Node.js (Debian's nodejs) and run `npm ci --prefix web`")
    if not (ROOT / "web" / "node_modules" / "onnxruntime-node").is_dir():
        pytest.skip("web/node_modules has no onnxruntime-node: run `npm ci --prefix web`")
    images = np.concatenate([converted["image"], -converted["image"]])  # two images: the batch axis too
    np.save(tmp_path / "images.npy", images)
    run = subprocess.run([node, str(ROOT / "web" / "explain-node.mjs"), str(converted["site"] / "model.onnx"),
                          str(tmp_path / "images.npy"), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = {r["method"]: r for r in map(json.loads, run.stdout.splitlines())}
    assert set(lines) == set(METHODS)
    for method in METHODS:
        ref = Explainer(str(converted["model"]), method=method, steps=STEPS, threads=1).explain(images)
        got = np.load(tmp_path / "out" / f"{method}.npy")
        assert got.dtype == np.float32 and got.shape == images.shape
        assert lines[method]["target"] == ref.target.tolist()
        np.testing.assert_allclose(lines[method]["score"], ref.score, rtol=1e-5)
        scale = np.abs(ref.attributions).max()
        np.testing.assert_allclose(got, ref.attributions, rtol=1e-4, atol=1e-5 * scale)
    bad = subprocess.run([node, str(ROOT / "web" / "explain-node.mjs"), str(converted["site"] / "model.onnx")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr
