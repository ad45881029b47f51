"""Whole hand-built graphs in the shape two exporters write them (see onnx_builders): a tf2onnx /
Keras CNN (NHWC, opset 13, run-time computed Reshape shape, MatMul + Add, Softmax) and a Caffe-era
export (opset 8, IR 3, initializers listed as inputs, unfused BatchNormalization, LRN, AveragePool
with count_include_pad=1, Sum, Concat, Flatten, Dropout, Gemm, Softmax).

Checked in float32 on onnxruntime, as users run them:
- the plain VJP against central finite differences along random directions;
- the VJP model's forward output against the original model's;
- the batch dim stays dynamic (batch 1 and 3, per-sample results agree);
- plain and guided VJPs against an independent float64 numpy implementation of both networks and
  of guided backpropagation (Relu and MaxPool pass only positive gradients);
- a model saved with external data gives the same VJP by path as in memory.
"""
from __future__ import annotations


import numpy as np
import onnx
import pytest

import gnl_onnx
from onnx_builders import (caffe_style_cnn, fd_directional, keras_style_cnn, kink_probe, ort_session)

CLASSES = 5


# ---------------------------------------------------------------- numpy references (float64)
def conv2d(x, w, b, stride, pads):
    """Cross-correlation, NCHW, pads = (top, left, bottom, right). Returns (y, cache)."""
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    m, _, kh, kw = w.shape
    oh = (xp.shape[2] - kh) // stride + 1
    ow = (xp.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], m, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = np.einsum("nchw,mchw->nm", patch, w)
    return y + (0 if b is None else b.reshape(1, -1, 1, 1)), (x.shape, xp.shape, w, stride, pads)


def conv2d_back(dy, cache):
    """Adjoint of conv2d with respect to its input, scattered window by window."""
    xshape, xpshape, w, stride, pads = cache
    _, _, kh, kw = w.shape
    dxp = np.zeros(xpshape)
    for i in range(dy.shape[2]):
        for j in range(dy.shape[3]):
            dxp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
                "nm,mchw->nchw", dy[:, :, i, j], w)
    return dxp[:, :, pads[0]:pads[0] + xshape[2], pads[1]:pads[1] + xshape[3]]


def same_upper_pads(size, k, s):
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def maxpool2(x):
    """2x2 stride 2 max pooling; returns (y, one-hot of the selected element per window)."""
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    sel = np.zeros_like(win)
    np.put_along_axis(sel, np.argmax(win, axis=-1)[..., None], 1.0, axis=-1)
    return win.max(axis=-1), sel


def maxpool2_back(dy, sel):
    n, c, h2, w2, _ = sel.shape
    d = sel * dy[..., None]
    return d.reshape(n, c, h2, w2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, 2 * h2, 2 * w2)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_back(p, dp):
    return p * (dp - np.sum(dp * p, axis=-1, keepdims=True))


def gate(g, guided):
    """Guided backpropagation: a gated unit passes only the positive part of its gradient."""
    return np.maximum(g, 0) if guided else g


def keras_reference(p, x, seed=None, guided=False):
    """Forward (softmax probabilities) and, with a seed, the input gradient of the Keras model."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    x = x.astype(np.float64)
    t0 = x.transpose(0, 3, 1, 2)
    pa = same_upper_pads(t0.shape[2], 3, 1)
    z1, c1 = conv2d(t0, p["conv1/W"], p["conv1/b"], 1, (pa[0], pa[0], pa[1], pa[1]))
    r1 = np.maximum(z1, 0)
    m1, sel = maxpool2(r1)
    pb = same_upper_pads(m1.shape[2], 3, 2)
    z2, c2 = conv2d(m1, p["conv2/W"], p["conv2/b"], 2, (pb[0], pb[0], pb[1], pb[1]))
    r2 = np.maximum(z2, 0)
    f = r2.transpose(0, 2, 3, 1).reshape(x.shape[0], -1)
    prob = softmax(f @ p["dense/W"] + p["dense/b"])
    if seed is None:
        return prob
    dz = softmax_back(prob, seed.astype(np.float64))
    df = (dz @ p["dense/W"].T).reshape(r2.transpose(0, 2, 3, 1).shape).transpose(0, 3, 1, 2)
    dm1 = conv2d_back(gate(df, guided) * (z2 > 0), c2)
    dr1 = maxpool2_back(gate(dm1, guided), sel)
    dt0 = conv2d_back(gate(dr1, guided) * (z1 > 0), c1)
    return prob, dt0.transpose(0, 2, 3, 1)


def lrn(x, size, alpha, beta, bias):
    """LRN across channels (ONNX spec window) and what its backward needs."""
    c = x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = np.zeros_like(x)
    for k in range(c):
        sq[:, k] = np.sum(x[:, max(0, k - lo):min(c, k + hi + 1)] ** 2, axis=1)
    d = bias + alpha / size * sq
    return x * d ** -beta, (x, d, size, alpha, beta, lo, hi)


def lrn_back(dy, cache):
    """y_k = x_k d_k^-b, d_k = bias + a/n sum_{j in win(k)} x_j^2:
    dx_j = dy_j d_j^-b - (2 a b / n) x_j sum_{k: j in win(k)} dy_k x_k d_k^(-b-1)."""
    x, d, size, alpha, beta, lo, hi = cache
    c = x.shape[1]
    t = dy * x * d ** (-beta - 1)
    dx = dy * d ** -beta
    for j in range(c):
        ks = [k for k in range(c) if k - lo <= j <= k + hi]
        dx[:, j] -= 2 * alpha * beta / size * x[:, j] * np.sum(t[:, ks], axis=1)
    return dx


def caffe_reference(p, x, seed=None, guided=False):
    p = {k: v.astype(np.float64) for k, v in p.items()}
    x = x.astype(np.float64)
    z1, c1 = conv2d(x, p["conv1_w"], p["conv1_b"], 1, (1, 1, 1, 1))
    bn_scale = (p["bn1_scale"] / np.sqrt(p["bn1_var"] + 1e-5)).reshape(1, -1, 1, 1)
    b1 = (z1 - p["bn1_mean"].reshape(1, -1, 1, 1)) * bn_scale + p["bn1_bias"].reshape(1, -1, 1, 1)
    r1 = np.maximum(b1, 0)
    n1, cl = lrn(r1, 3, 0.3, 0.75, 1.0)
    # AveragePool 3x3 s2 pads 1 with count_include_pad=1: a depthwise conv with constant 1/9 taps
    # over zero padding.
    channels = n1.shape[1]
    avg_w = np.einsum("mc,hw->mchw", np.eye(channels), np.full((3, 3), 1 / 9))
    pool, cp = conv2d(n1, avg_w, None, 2, (1, 1, 1, 1))
    z2a, c2a = conv2d(pool, p["conv2a_w"], p["conv2a_b"], 1, (0, 0, 0, 0))
    z2b, c2b = conv2d(pool, p["conv2b_w"], p["conv2b_b"], 1, (1, 1, 1, 1))
    s = np.maximum(z2a, 0) + np.maximum(z2b, 0)
    cat = np.concatenate([s, pool], axis=1)
    flat = cat.reshape(x.shape[0], -1)
    prob = softmax(flat @ p["fc_w"].T + p["fc_b"])
    if seed is None:
        return prob
    dfc = softmax_back(prob, seed.astype(np.float64))
    dcat = (dfc @ p["fc_w"]).reshape(cat.shape)
    ds, dpool = dcat[:, :channels], dcat[:, channels:].copy()
    dpool += conv2d_back(gate(ds, guided) * (z2a > 0), c2a)
    dpool += conv2d_back(gate(ds, guided) * (z2b > 0), c2b)
    dn1 = conv2d_back(dpool, cp)
    dr1 = lrn_back(dn1, cl)
    db1 = gate(dr1, guided) * (b1 > 0)
    return prob, conv2d_back(db1 * bn_scale, c1)


# ---------------------------------------------------------------- fixtures
FRAMEWORKS = {
    # name: (builder, numpy reference, input shape for a batch of n, expected gated op counts)
    "keras_tf2onnx": (keras_style_cnn, keras_reference, lambda n: (n, 8, 8, 3), {"Relu": 2, "MaxPool": 1}),
    "caffe_opset8": (caffe_style_cnn, caffe_reference, lambda n: (n, 3, 8, 8), {"Relu": 3}),
}


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def fw(request):
    builder, reference, shape, gated = FRAMEWORKS[request.param]
    model, weights = builder(np.random.default_rng(11))
    x_name, y_name = model.graph.input[0].name, model.graph.output[0].name
    plain = gnl_onnx.vjp_model(model, rule="plain")
    guided = gnl_onnx.vjp_model(model, rule="guided")
    rng = np.random.default_rng(12)
    x3 = rng.normal(size=shape(3)).astype(np.float32)
    seed3 = rng.normal(size=(3, CLASSES)).astype(np.float32)
    return dict(name=request.param, model=model, weights=weights, reference=reference, gated=gated,
                x_name=x_name, y_name=y_name, plain=ort_session(plain), guided=ort_session(guided),
                plain_model=plain, guided_model=guided, forward=ort_session(model), x3=x3, seed3=seed3)


def _vjp(fw, sess, x, seed):
    y, g = sess.run([fw["y_name"], fw["x_name"] + "_grad"], {fw["x_name"]: x, fw["y_name"] + "_grad": seed})
    return y, g


# ---------------------------------------------------------------- tests
def test_numpy_references_are_correct(fw):
    """The references' plain gradients match float64 finite differences of their own forward
    passes (eps 1e-6: far from every Relu/MaxPool kink for random inputs), so the comparisons
    below test the engine against something independently checked."""
    rng = np.random.default_rng(5)
    x = fw["x3"][:1].astype(np.float64)
    seed = fw["seed3"][:1].astype(np.float64)
    ref, p = fw["reference"], fw["weights"]
    _, g = ref(p, x, seed)
    for _ in range(3):
        v = rng.normal(size=x.shape)
        fd = fd_directional(lambda xx: ref(p, xx), x, seed, v, 1e-6)
        assert abs(fd - np.sum(g * v)) <= 1e-6 * np.linalg.norm(g) * np.linalg.norm(v)


def test_forward_output_of_vjp_model_equals_original(fw):
    want = fw["forward"].run(None, {fw["x_name"]: fw["x3"]})[0]
    for sess in (fw["plain"], fw["guided"]):
        y, _ = _vjp(fw, sess, fw["x3"], fw["seed3"])
        # BatchNorm folding / Dropout removal may reorder float32 arithmetic: float32-level tolerance.
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-7)


def test_plain_vjp_matches_float32_finite_differences(fw):
    """Directional derivatives seed.J.v against (L(x + eps v) - L(x - eps v)) / 2 eps in float32 on
    onnxruntime, L = sum(seed * F).

    Step size: a float32 forward pass carries rounding noise of ~1e-7 |L| in L, which a central
    difference divides by 2 eps; eps >= 1e-3 keeps that below ~1e-4 of a typical directional
    derivative (measured 2e-4 at worst at 1e-3, 5e-4 at 3e-4, 2e-3 at 1e-4). Truncation
    (eps^2 L'''/6) stays under 1e-4 up to eps = 3e-3. Larger steps cross Relu / MaxPool kinks, where
    a finite difference is not a derivative: each direction takes the largest eps in (3e-3, 1e-3)
    whose segment x +- eps v keeps every Relu input's sign and every MaxPool's selection (checked on
    a probe copy of the model); directions without such a step are skipped.

    Error measure: |fd - g.v| / max(|g.v|, ||g||), v with unit RMS, so ||g|| is the typical size of
    g.v over random v; dividing by |g.v| alone would blow up on a direction where g.v cancels to ~0.
    Threshold 1e-3 (float32), about 6x the worst error measured (1.6e-4)."""
    probe, relu_inputs, indices = kink_probe(fw["model"])
    probe_sess = ort_session(probe)
    n_relu = len(relu_inputs)
    x, seed, name = fw["x3"][:2], fw["seed3"][:2], fw["x_name"]
    _, g = _vjp(fw, fw["plain"], x, seed)
    g = g.astype(np.float64)

    def kink_free(v, eps):
        runs = [probe_sess.run(None, {name: (x + t * eps * v).astype(np.float32)})[1:] for t in (-1, 0, 1)]
        same_signs = all(np.array_equal(np.sign(runs[0][i]), np.sign(r[i])) for i in range(n_relu) for r in runs[1:])
        same_picks = all(np.array_equal(runs[0][i], r[i]) for i in range(n_relu, n_relu + len(indices))
                         for r in runs[1:])
        return same_signs and same_picks

    forward = fw["forward"]
    rng = np.random.default_rng(21)
    checked, errors = 0, []
    for _ in range(40):
        v = rng.normal(size=x.shape)
        v /= np.sqrt(np.mean(v ** 2))
        eps = next((e for e in (3e-3, 1e-3) if kink_free(v, e)), None)
        if eps is None:
            continue
        fd = fd_directional(lambda xx: forward.run(None, {name: xx})[0], x, seed, v, eps)
        an = float(np.sum(g * v))
        errors.append(abs(fd - an) / max(abs(an), float(np.linalg.norm(g))))
        checked += 1
        if checked == 6:
            break
    assert checked >= 4, f"only {checked} kink-free directions; the test needs another input draw"
    assert max(errors) < 1e-3, errors


@pytest.mark.parametrize("rule", ["plain", "guided"])
def test_vjp_matches_numpy_reference(fw, rule):
    """float32 engine vs float64 numpy. float32 rounding through ~10 layers: measured 4e-7 of
    max |g|; 1e-5 leaves 25x room and still catches a wrong rule or a missing gate (O(1))."""
    _, g = _vjp(fw, fw[rule], fw["x3"], fw["seed3"])
    prob, want = fw["reference"](fw["weights"], fw["x3"], fw["seed3"], guided=rule == "guided")
    err = np.max(np.abs(g - want)) / np.max(np.abs(want))
    assert err < 1e-5, err


def test_guided_differs_from_plain_and_reports_its_gates(fw):
    _, plain = _vjp(fw, fw["plain"], fw["x3"], fw["seed3"])
    _, guided = _vjp(fw, fw["guided"], fw["x3"], fw["seed3"])
    assert np.max(np.abs(guided - plain)) > 0.1 * np.max(np.abs(plain))
    report = gnl_onnx.vjp_report(fw["guided_model"])
    counts = {}
    for entry in report["gated"]:
        counts[entry["op"]] = counts.get(entry["op"], 0) + 1
    assert counts == fw["gated"]
    assert report["input"] == fw["x_name"] and report["output"] == fw["y_name"] and report["rule"] == "guided"
    assert gnl_onnx.vjp_report(fw["plain_model"])["gated"] == []


def test_batch_dim_stays_dynamic(fw):
    graph = fw["plain_model"].graph
    seed = next(i for i in graph.input if i.name == fw["y_name"] + "_grad")
    grad = next(o for o in graph.output if o.name == fw["x_name"] + "_grad")
    dims = [graph.input[0].type.tensor_type.shape.dim[0], seed.type.tensor_type.shape.dim[0],
            grad.type.tensor_type.shape.dim[0]]
    assert all(not d.HasField("dim_value") for d in dims), dims
    for sess in (fw["plain"], fw["guided"]):
        y3, g3 = _vjp(fw, sess, fw["x3"], fw["seed3"])
        assert g3.shape == fw["x3"].shape and y3.shape == (3, CLASSES)
        for i in range(3):  # samples are independent: batch 1 gives the same rows
            y1, g1 = _vjp(fw, sess, fw["x3"][i:i + 1], fw["seed3"][i:i + 1])
            assert g1.shape == (1,) + fw["x3"].shape[1:]
            np.testing.assert_allclose(g1[0], g3[i], rtol=1e-5, atol=1e-6 * np.max(np.abs(g3)))
            np.testing.assert_allclose(y1[0], y3[i], rtol=1e-5, atol=1e-7)


def test_external_data_model_loads_by_path(fw, tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save_model(fw["model"], str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    assert (tmp_path / "model.onnx.data").stat().st_size > 0
    assert path.stat().st_size < 4 * 1024  # the weights really live outside the .onnx file
    from_path = ort_session(gnl_onnx.vjp_model(str(path), rule="guided"))
    for sess in (from_path,):
        y, g = _vjp(fw, sess, fw["x3"], fw["seed3"])
        y_mem, g_mem = _vjp(fw, fw["guided"], fw["x3"], fw["seed3"])
        np.testing.assert_array_equal(y, y_mem)
        np.testing.assert_array_equal(g, g_mem)
    # vjp_model accepts os.PathLike too.
    assert gnl_onnx.vjp_report(gnl_onnx.vjp_model(path))["input"] == fw["x_name"]
