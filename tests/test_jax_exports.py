"""A Flax (nnx) CNN exported with jax2onnx: gnl_onnx.vjp_model against JAX's own gradients.

models/jax_zoo.py's SmallCNN (Conv + BatchNorm + relu, max pooling, leaky_relu, average pooling,
depthwise Conv + relu6, SAME max pooling, Linear; random seeded parameters) is exported with
jax2onnx.to_onnx as its users call it (dynamic batch "B", jax2onnx's default opset 23). The input
gradient of sum(seed * logits) from the ONNX VJP model (onnxruntime CPU, float32) is compared with
jax.grad in float64: rule="plain" against the ordinary gradient, rule="guided" (gate="paper")
against jax_zoo's guided reference (nnx.relu, relu6, leaky_relu and max_pool patched with
custom_vjp wrappers that pass max(g, 0) to the unit's own VJP). Tolerance: max(1e-4, 3 x JAX's own
float32-vs-float64 error), as tests/test_keras_exports.py.

jax2onnx writes relu6 as Max(x, 0) then Min(., 6), not Clip, and gnl_onnx gates neither Max nor
Min: so the engine gates one unit fewer than the JAX reference. In this network the relu6 feeds a
max pooling whose guided backward already passes only max(g, 0), so that missing gate changes no
value here; the count difference is asserted as it is, to notice when either side changes.

Needs jax, flax and jax2onnx (`pip install -e ".[jax]"`); skipped, with the reason, without them.
Results go to tests/.results/jax_exports.json.
"""

from __future__ import annotations

import collections
import datetime
import importlib.util
import json
import pathlib
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import gnl_onnx

_MISSING = [m for m in ("jax", "flax", "jax2onnx") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed "
                                "(pip install -e '.[jax]')")

BATCH = 2
MIN_TOL = 1e-4
FACTOR = 3.0
RESULTS_FILE = pathlib.Path(__file__).parent / ".results" / "jax_exports.json"
# Units the JAX reference gates that the engine does not find in jax2onnx's graph (see above).
NOT_GATED_BY_ENGINE = collections.Counter({"Clip": 1})


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:'.value' access is now deprecated:DeprecationWarning")  # jax2onnx 0.17.1's
def test_vjp_matches_jax():
    from importlib.metadata import version

    from models import jax_zoo as zoo  # imports jax and flax

    t0 = time.perf_counter()
    model = zoo.build()
    path = str(zoo.export(model=model))
    row = {"size": zoo.SIZE, "batch": BATCH, "export_s": time.perf_counter() - t0,
           "opset": max(o.version for o in onnx.load(path).opset_import if o.domain in ("", "ai.onnx")),
           "jax": version("jax"), "flax": version("flax"), "jax2onnx": version("jax2onnx"),
           "onnxruntime": ort.__version__,
           "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    rng = np.random.default_rng(0)
    x = zoo.sample_input(BATCH, rng)
    logits64 = zoo.logits(model, x, np.float64)
    seed = rng.standard_normal(logits64.shape).astype(np.float32)
    failures, refs = [], {}
    for rule in ("plain", "guided"):
        guided = rule == "guided"
        calls = collections.Counter()
        ref32 = zoo.input_gradient(model, x, seed, guided)
        ref64 = refs[rule] = zoo.input_gradient(model, x, seed, guided, np.float64, calls)
        vjp = gnl_onnx.vjp_model(path, rule=rule, gate="paper")
        rep = gnl_onnx.vjp_report(vjp)
        gated = collections.Counter(u["op"] for u in rep["gated"])
        sess = ort.InferenceSession(vjp.SerializeToString(), providers=["CPUExecutionProvider"])
        y, grad = sess.run([rep["output"], rep["input"] + "_grad"],
                           {rep["input"]: x, rep["output"] + "_grad": seed})
        tol = max(MIN_TOL, FACTOR * rel_err(ref32, ref64))
        err = rel_err(grad, ref64)
        row[rule] = {"rel_err": err, "tol": tol, "jax_f32_rel_err": rel_err(ref32, ref64),
                     "forward_rel_err": rel_err(y, logits64), "gated": dict(gated),
                     "jax_gated": dict(calls)}
        if not err <= tol:
            failures.append(f"{rule}: rel err {err:.3g} > {tol:.3g}")
        want = calls - NOT_GATED_BY_ENGINE if guided else collections.Counter()
        if gated != want:
            failures.append(f"{rule}: gated {dict(gated)} != expected {dict(want)}")
    row["guided_vs_plain"] = rel_err(refs["guided"], refs["plain"])
    if not row["guided_vs_plain"] > 1e-2:
        failures.append(f"guided reference equals the plain gradient ({row['guided_vs_plain']:.3g})")
    if not row["plain"]["forward_rel_err"] <= MIN_TOL:
        failures.append(f"forward rel err {row['plain']['forward_rel_err']:.3g} > {MIN_TOL}")
    row["status"] = "failed: " + "; ".join(failures) if failures else "ok"
    RESULTS_FILE.parent.mkdir(exist_ok=True)
    (RESULTS_FILE.parent / ".gitignore").write_text("*\n")
    RESULTS_FILE.write_text(json.dumps({"jax2onnx-SmallCNN": row}, indent=1) + "\n")
    print(f"\njax2onnx SmallCNN (opset {row['opset']}): plain {row['plain']['rel_err']:.1e} "
          f"guided {row['guided']['rel_err']:.1e} gated {row['guided']['gated']}")
    assert not failures, "; ".join(failures)
