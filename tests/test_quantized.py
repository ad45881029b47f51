"""Quantized models (ONNX Runtime's quantize_static, QDQ and QOperator formats, per-tensor and
per-channel weights) from resnet18, resnet50 and mobilenet_v2: the engine's gradient against a float64 torch
reference of the same quantized graph with the straight-through estimator, and the attribution
methods on the int8 model beside the float model's.

The reference (`reference_gradient`) is an interpreter of the quantized ONNX file written here in
torch, independent of gnl_onnx's rewrite and rules: every quantization (QuantizeLinear, and the
requantization inside QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm) is a fake quant
whose forward value is the code and whose backward is the STE, dq/dv = 1/s where
qmin <= round(v / s) + z <= qmax, else 0; DequantizeLinear is (q - z) * s. A quantization of a
Conv/Gemm/Add output whose lowest code is 0.0 is the quantizer's fused ReLU, so its v is rectified
first (as PyTorch's fused ConvReLU2d does in quantization-aware training). The codes are the ones
the engine's forward pass computed, and the gates (the STE's range test, the fused ReLU's sign)
are decided by the engine's float32 values (the same point: float32 and float64 round a value
within rounding of a half step differently; the interpreter recomputes the codes and allows one
step there).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
F = torch.nn.functional
pytest.importorskip("onnxruntime.quantization")

import onnxruntime as ort  # noqa: E402

from gnl_onnx import Explainer  # noqa: E402
from gnl_onnx.intake import prepare  # noqa: E402
from gnl_onnx.vjp import build_vjp, vjp_model  # noqa: E402
from gnl_onnx_models import quantized as quantized_models  # noqa: E402
from gnl_onnx_models import torchvision_zoo  # noqa: E402

SIZE = 64
CLASSES = 1000
# (arch, format, per_channel): each arch in both formats, each format with both weight granularities
VARIANTS = [("resnet18", "qdq", True), ("resnet18", "qoperator", False),
            ("mobilenet_v2", "qdq", False), ("mobilenet_v2", "qoperator", True),
            ("resnet50", "qdq", False), ("resnet50", "qoperator", True)]
LINEAR_QUANTIZED = {"Conv", "Gemm", "Add", "QLinearConv", "QGemm", "QLinearAdd", "QLinearMatMul", "MatMul"}


def images(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def models():
    """Float export and its quantized variants; the explained images are part of the calibration
    set, so their logits are inside the calibrated output range (a saturated logit has no STE
    gradient)."""
    torch.set_num_threads(1)
    calibration = np.concatenate([images(2, 0), images(1, 1)])
    out = {}
    for arch in ("resnet18", "mobilenet_v2", "resnet50"):
        # mobilenet_v2's random BatchNorm statistics leave it without a gradient (see the export)
        source = quantized_models.export_measured_batchnorm(arch, SIZE) if arch == "mobilenet_v2" else \
            torchvision_zoo.export(arch, "legacy", SIZE)
        out[arch] = source
        for a, fmt, per_channel in VARIANTS:
            if a == arch:
                out[(a, fmt, per_channel)] = quantized_models.quantize(source, calibration, fmt, per_channel)
    return out


# ---- the float64 torch reference of the quantized graph

def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _per_axis(value, rank, axis):
    if value.dim() == 1 and value.numel() > 1:
        shape = [1] * rank
        shape[axis % rank] = -1
        return value.reshape(shape)
    return value.reshape(())


class _Quantize(torch.autograd.Function):
    """Forward: the given codes. Backward: the STE, grad / scale where `kept`, else 0."""

    @staticmethod
    def forward(ctx, v, scale, kept, codes):
        ctx.save_for_backward(kept, scale)
        return codes

    @staticmethod
    def backward(ctx, grad):
        kept, scale = ctx.saved_tensors
        return grad * kept / scale, None, None, None


def reference_gradient(path, x, target, point):
    """d logits[target] / d x of the quantized ONNX file at x, in float64 (see the module doc);
    `point` (engine_point) holds the codes and the values that decide the gates."""
    model = onnx.load(str(path))
    values = {t.name: torch.from_numpy(numpy_helper.to_array(t).astype(np.float64)) for t in model.graph.initializer}
    dtypes = {t.name: numpy_helper.to_array(t).dtype for t in model.graph.initializer}
    image = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    values[model.graph.input[0].name] = image
    producers = {}
    steps = [0, 0.0]  # codes where the reference rounds otherwise, the largest difference

    def dq(q, s, z, axis=1):
        q, s = values[q], values[s]
        z = values[z] if z else torch.zeros(())
        return (q - _per_axis(z, q.dim(), axis)) * _per_axis(s, q.dim(), axis)

    def fake_quant(v, s, z, name, producer):
        scale, zero = values[s], values[z] if z else torch.zeros(())
        kind = dtypes.get(z, np.dtype(np.uint8))
        low, high = float(np.iinfo(kind).min), float(np.iinfo(kind).max)
        gates = point[name]  # the engine's float32 values that decide the gates (see the module doc)
        if producer in LINEAR_QUANTIZED and float(zero) == low:
            v = v * torch.from_numpy(gates["before_relu"] > 0)  # the ReLU the quantizer fused into the range
        with torch.no_grad():
            mine = torch.clamp(torch.round(v / scale) + zero, low, high)
            unclamped = torch.round(torch.from_numpy(gates["quantized"].astype(np.float64)) / scale) + zero
        got = torch.from_numpy(gates["codes"].astype(np.float64))
        steps[0] += int((mine != got).sum())
        steps[1] = max(steps[1], float((mine - got).abs().max()))
        return _Quantize.apply(v, scale, ((unclamped >= low) & (unclamped <= high)).double(), got)

    for node in model.graph.node:
        op, i, a = node.op_type, list(node.input) + [""] * 9, _attrs(node)
        if op == "Constant":
            values[node.output[0]] = torch.from_numpy(numpy_helper.to_array(a["value"]).astype(np.float64))
            continue
        if op == "QuantizeLinear":
            y = fake_quant(values[i[0]], i[1], i[2], node.output[0], producers.get(i[0]))
        elif op == "DequantizeLinear":
            y = dq(i[0], i[1], i[2], a.get("axis", 1))
        elif op in ("Conv", "QLinearConv"):
            if op == "Conv":
                xf, w = values[i[0]], values[i[1]]
                b = values[i[2]] if i[2] else None
            else:
                xf, w = dq(i[0], i[1], i[2]), dq(i[3], i[4], i[5], 0)
                b = values[i[8]] * values[i[1]] * values[i[4]] if i[8] else None
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[:2] == pads[2:], "the reference takes symmetric pads"
            y = F.conv2d(xf, w, b, a.get("strides", [1, 1]), pads[:2], a.get("dilations", [1, 1]), a.get("group", 1))
            if op == "QLinearConv":
                y = fake_quant(y, i[6], i[7], node.output[0], op)
        elif op in ("Add", "QLinearAdd"):
            y = values[i[0]] + values[i[1]] if op == "Add" else dq(i[0], i[1], i[2]) + dq(i[3], i[4], i[5])
            if op == "QLinearAdd":
                y = fake_quant(y, i[6], i[7], node.output[0], op)
        elif op == "MaxPool":
            pads = a.get("pads", [0, 0, 0, 0])
            y = F.max_pool2d(values[i[0]], a["kernel_shape"], a.get("strides"), pads[:2])
        elif op in ("GlobalAveragePool", "QLinearGlobalAveragePool"):
            y = values[i[0]] if op == "GlobalAveragePool" else dq(i[0], i[1], i[2])
            y = y.mean(dim=(2, 3), keepdim=True)
            if op != "GlobalAveragePool":
                y = fake_quant(y, i[3], i[4], node.output[0], op)
        elif op == "Flatten":
            y = values[i[0]].flatten(a.get("axis", 1))
        elif op in ("Gemm", "QGemm"):
            if op == "Gemm":
                xf, w, b = values[i[0]], values[i[1]], values[i[2]] if i[2] else 0.0
            else:
                xf, w = dq(i[0], i[1], i[2]), dq(i[3], i[4], i[5], 0)
                b = values[i[6]] * values[i[1]] * _per_axis(values[i[4]], 1, 0) if i[6] else 0.0
            assert a.get("transB", 0) == 1 and not a.get("transA", 0)
            y = a.get("alpha", 1.0) * xf @ w.T + b
            if op == "QGemm":
                y = fake_quant(y, i[7], i[8], node.output[0], op)
        else:
            raise AssertionError(f"the reference has no {op}")
        values[node.output[0]] = y
        producers[node.output[0]] = op
    logits = values[model.graph.output[0].name]
    logits[0, target].backward()
    return image.grad.numpy(), logits.detach().numpy(), steps


def literal():
    """Session options that run QuantizeLinear/DequantizeLinear as written: ONNX Runtime's graph
    optimizations fuse DequantizeLinear -> Conv -> QuantizeLinear into its integer kernels, whose
    codes differ (on AVX2 without VNNI its u8s8 products saturate: up to 27 codes at resnet18's
    first Conv here), and a fused forward is not the point the reference can evaluate."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return options


def engine_point(prepared, x):
    """Per quantization (by the name of its codes) in the engine's forward pass (the prepared,
    rewritten graph): the codes, the value quantized, and where a rectifier was recovered, the
    value before it."""
    proto = prepared.copy()
    producers = {o: n for n in proto.graph.node for o in n.output}
    wanted = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear":
            relu = producers.get(node.input[0])
            before = relu.input[0] if relu is not None and relu.op_type == "Relu" else node.input[0]
            wanted[node.output[0]] = {"codes": node.output[0], "quantized": node.input[0], "before_relu": before}
    names = sorted({v for entry in wanted.values() for v in entry.values()} - {proto.graph.input[0].name})
    del proto.graph.output[:]  # declared again below, with the logits
    names = sorted(set(names) | {"logits"})
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(proto.SerializeToString(), literal(), providers=["CPUExecutionProvider"])
    got = dict(zip(names, session.run(names, {proto.graph.input[0].name: x})))
    got[proto.graph.input[0].name] = x
    point = {q: {k: got[v] for k, v in entry.items()} for q, entry in wanted.items()}
    point["logits"] = got["logits"]
    return point


def engine_gradient(prepared, x, target, classes=CLASSES):
    model = build_vjp(prepared.copy(), prepared.input, prepared.output)
    session = ort.InferenceSession(model.SerializeToString(), literal(), providers=["CPUExecutionProvider"])
    seed = np.zeros((len(x), classes), np.float32)
    seed[:, target] = 1
    logits, grad = session.run(["logits", "input_grad"], {"input": x, "logits_grad": seed})
    return grad, logits


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v)))
def test_gradient_equals_straight_through_reference(models, variant):
    path = models[variant]
    x = images(1, 1)
    prepared = prepare(str(path))  # read and normalized once for both
    point = engine_point(prepared, x)
    target = int(np.argmax(point["logits"]))
    grad, logits = engine_gradient(prepared, x, target)
    want, ref_logits, (differing, largest) = reference_gradient(path, x, target, point)
    print(variant, "codes the float64 reference rounds otherwise:", differing, "largest difference", largest)
    assert largest <= 1  # the reference computes the engine's codes, up to a half-step rounding
    assert np.allclose(logits, ref_logits, atol=1e-6)
    err = np.abs(grad - want).max() / np.abs(want).max()
    print(variant, "max relative error", err)
    assert np.abs(want).max() > 0
    assert err < 1e-3, err


# ---- the gradient against central finite differences of the dequantized graph

def small_float_model(path):
    """Conv(3->4, stride 2) -> Relu -> Conv(4->4) -> Relu -> GlobalAveragePool -> Gemm(4->4) on
    6 x 6 images, seeded random weights: few gates (72 Relus), and few inputs to difference."""
    from onnx import helper
    rng = np.random.default_rng(3)
    inits = {"w1": rng.normal(0, 0.4, (4, 3, 3, 3)), "b1": rng.normal(0, 0.2, 4),
             "w2": rng.normal(0, 0.3, (4, 4, 3, 3)), "b2": rng.normal(0, 0.2, 4),
             "w3": rng.normal(0, 0.8, (4, 4)), "b3": rng.normal(0, 0.2, 4)}
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def dequantized_graph(path):
    """The QDQ file as the function the straight-through estimator differentiates, in float64:
    weights and biases dequantized ((q - z) * s), every activation QuantizeLinear ->
    DequantizeLinear pair written as Clip to its code range, (lo - z) * s .. (hi - z) * s (no
    rounding). Returns the model, and per gate (the input of each Clip and Relu): its kinks and
    the quantization step that measures a distance to them."""
    from onnx import helper
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    quantizers = {n.output[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    consts, nodes, gates = {}, [], {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            continue
        if node.op_type != "DequantizeLinear":
            nodes.append(node)
            continue
        q, s, z = (list(node.input) + [""])[:3]
        if q in inits:  # a weight or a bias
            axis = _attrs(node).get("axis", 1)
            rank = inits[q].ndim
            zero = _per_axis(torch.from_numpy(inits[z].astype(np.float64)), rank, axis).numpy() if z else 0.0
            scale = _per_axis(torch.from_numpy(inits[s].astype(np.float64)), rank, axis).numpy()
            consts[node.output[0]] = (inits[q].astype(np.float64) - zero) * scale
            continue
        quantizer = quantizers[q]
        scale = float(inits[quantizer.input[1]])
        zero_name = quantizer.input[2]
        info = np.iinfo(inits[zero_name].dtype)
        zero = float(inits[zero_name])
        low, high = (info.min - zero) * scale, (info.max - zero) * scale
        consts[node.output[0] + "_low"], consts[node.output[0] + "_high"] = np.float64(low), np.float64(high)
        nodes.append(helper.make_node("Clip", [quantizer.input[0], node.output[0] + "_low", node.output[0] + "_high"],
                                      [node.output[0]]))
        gates[quantizer.input[0]] = ((low, high), scale)
    for node in nodes:
        if node.op_type == "Relu":
            step = next(g[1] for n in nodes if n.op_type == "Clip" and n.input[0] == node.output[0]
                        for g in [gates[n.input[0]]])
            gates[node.input[0]] = ((0.0,), step)
    for name, value in inits.items():  # the float initializers the nodes still read (the Gemm's bias)
        if value.dtype == np.float32 and any(name in n.input for n in nodes):
            consts.setdefault(name, value.astype(np.float64))
    double = onnx.TensorProto.DOUBLE
    graph = helper.make_graph(
        nodes, "dequantized", [helper.make_tensor_value_info(model.graph.input[0].name, double, None)],
        [helper.make_tensor_value_info(model.graph.output[0].name, double, None)]
        + [helper.make_tensor_value_info(g, double, None) for g in gates],
        [numpy_helper.from_array(np.asarray(v, np.float64), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), gates


@pytest.mark.parametrize("fmt,per_channel", [("qdq", False), ("qoperator", True)])
def test_gradient_equals_finite_differences_of_dequantized_graph(fmt, per_channel, tmp_path):
    """The engine's gradient of a quantize_static file against central differences (every input,
    float64, onnx's reference evaluator) of the dequantized graph of the QDQ file of the same
    calibration. That graph is piecewise affine: its kinks are the Relu signs and the clip edges.
    The point is the first seeded image at which every gate input (each Relu's, each clip's) of the
    dequantized graph is farther from its kink than the int8 forward's value of it (the QDQ file run
    as written, with its rounding) by more than half a quantization step: both forwards then take
    every gate alike, so the STE's gradient is this graph's derivative, and a difference of
    h = 1e-3 (a few hundredths of a step) crosses no kink, which the test checks at every
    neighbour. The calibration images have twice the amplitude of the explained one, so no value
    meets a clip edge; the Relu signs are what the seed has to clear (1.5 to 3 steps of int8
    deviation at the second convolution)."""
    from onnx.reference import ReferenceEvaluator
    source = small_float_model(tmp_path / "small.onnx")
    calibration = 2 * np.random.default_rng(0).standard_normal((8, 3, 6, 6)).astype(np.float32)
    qdq = quantized_models.quantize(source, calibration, "qdq", per_channel, cache_dir=tmp_path)
    explained = quantized_models.quantize(source, calibration, fmt, per_channel, cache_dir=tmp_path)
    surrogate, gates = dequantized_graph(qdq)
    evaluator = ReferenceEvaluator(surrogate)
    names = ["logits"] + list(gates)
    probe = onnx.load(str(qdq))
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(g) for g in gates)
    int8 = ort.InferenceSession(probe.SerializeToString(), literal(), providers=["CPUExecutionProvider"])

    def forward(x):
        return dict(zip(names, evaluator.run(names, {"input": x})))

    def pattern(values):  # which side of each kink every gate input is on
        return {g: np.stack([values[g] > k for k in gates[g][0]]) for g in gates}

    def clearance(values, int8_values):  # in quantization steps, the least over the gate inputs
        return min(float(np.min(np.abs(values[g][None] - np.reshape(kinks, (-1,) + (1,) * values[g].ndim))
                                - np.abs(values[g] - int8_values[g]))) / step
                   for g, (kinks, step) in gates.items())

    for seed in range(100):
        x = np.random.default_rng(seed).standard_normal((1, 3, 6, 6))
        at_x = forward(x)
        if clearance(at_x, dict(zip(names, int8.run(names, {"input": x.astype(np.float32)})))) > 0.5:
            break
    else:
        raise AssertionError("no seed clears the gates")
    want_pattern = pattern(at_x)
    target = int(np.argmax(at_x["logits"]))
    h = 1e-3
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        values_up, values_down = forward(up), forward(down)
        for values in (values_up, values_down):  # no gate flips inside the difference
            assert all(np.array_equal(want_pattern[g], p) for g, p in pattern(values).items()), i
        numeric[i] = (values_up["logits"][0, target] - values_down["logits"][0, target]) / (2 * h)
    grad, _ = engine_gradient(prepare(str(explained)), x.astype(np.float32), target, classes=4)
    err = np.abs(grad - numeric).max() / np.abs(numeric).max()
    print(fmt, per_channel, "seed", seed, "max relative error", err)
    assert np.abs(numeric).max() > 0 and err < 1e-5, err


def spearman(a, b):
    ra = np.argsort(np.argsort(a.ravel())).astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel())).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


# each method on one int8 variant (every variant once), beside the float model it was quantized from
# (the plain gradient and Grad-CAM of the random-weight mobilenet_v2 move with its quantization:
# Spearman 0.03-0.65 in docs/models.md, where its int8 top-1 agrees with the float model's on 50 %)
METHOD_VARIANTS = [("gradient", VARIANTS[1]), ("gnl_ig", VARIANTS[2]), ("gradcam", VARIANTS[0]),
                   ("lrp_epsilon_plus_flat", VARIANTS[3]), ("guided_backprop", VARIANTS[4])]


@pytest.mark.parametrize("method,variant", METHOD_VARIANTS, ids=[m for m, _ in METHOD_VARIANTS])
def test_methods_run_on_int8_and_agree_with_float(models, method, variant, capsys):
    x = images(1, 1)
    floats = Explainer(str(models[variant[0]]), method=method, steps=4).explain(x)
    explanation = Explainer(str(models[variant]), method=method, steps=4).explain(x, target=floats.target)
    maps = explanation.attributions
    assert maps.shape == x.shape and np.all(np.isfinite(maps)) and np.abs(maps).max() > 0
    rho = spearman(maps.sum(axis=1), floats.attributions.sum(axis=1))
    with capsys.disabled():
        print(f"\n{'-'.join(map(str, variant))} {method}: Spearman with the float model {rho:.3f}")
    assert rho > 0.5  # measured 0.85 to 1.0 for these


# ---- small graphs: the opset forms of QuantizeLinear/DequantizeLinear, and dynamic quantization

def _gradient(model, x, target):
    """d Y[:, target] / d X by the engine on a small graph (input X, output Y)."""
    vjp = vjp_model(model)
    session = ort.InferenceSession(vjp.SerializeToString(), literal(), providers=["CPUExecutionProvider"])
    seed = np.zeros((len(x), vjp.graph.output[0].type.tensor_type.shape.dim[1].dim_value or 4), np.float32)
    seed[:, target] = 1
    return session.run(["X_grad"], {"X": x, "Y_grad": seed})[0]


QDQ_FORMS = {  # opset: (code type, scale per channel?, Q attributes)
    10: (onnx.TensorProto.UINT8, False, {}),
    13: (onnx.TensorProto.INT8, True, {"axis": 1}),
    19: (onnx.TensorProto.UINT8, True, {"axis": 1, "saturate": 1}),
    21: (onnx.TensorProto.INT8, True, {"axis": 1, "output_dtype": onnx.TensorProto.INT8}),
}


@pytest.mark.parametrize("opset", sorted(QDQ_FORMS))
def test_quantize_dequantize_pair_is_the_clipped_identity(opset):
    """X -> QuantizeLinear -> DequantizeLinear -> GlobalAveragePool: the gradient of channel c is
    1/36 where round(x / s_c) + z_c stays in the code range, else 0 (per tensor before opset 13)."""
    from onnx import helper
    code, per_channel, attrs = QDQ_FORMS[opset]
    kind = onnx.helper.tensor_dtype_to_np_dtype(code)
    scales = np.array([0.02, 0.05, 0.1, 0.03], np.float32) if per_channel else np.array(0.04, np.float32)
    zeros = (np.array([3, -5, 0, 7]) if per_channel else np.array(2)).astype(kind)
    if kind == np.uint8:
        zeros = zeros + np.uint8(120)
    q_inputs = ["X", "s"] + ([] if opset == 21 else ["z"])  # opset 21: the type from output_dtype, zero point 0
    dq_attrs = {"axis": 1} if per_channel else {}
    nodes = [helper.make_node("QuantizeLinear", q_inputs, ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s"] + ([] if opset == 21 else ["z"]), ["d"], **dq_attrs),
             helper.make_node("GlobalAveragePool", ["d"], ["g"]), helper.make_node("Flatten", ["g"], ["Y"])]
    inits = [numpy_helper.from_array(scales, "s")] + ([] if opset == 21 else [numpy_helper.from_array(zeros, "z")])
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    x = np.random.default_rng(opset).normal(0, 4, (1, 4, 6, 6)).astype(np.float32)
    zero = np.zeros(4) if opset == 21 else np.broadcast_to(zeros.astype(np.float64), (4,))
    scale = np.broadcast_to(scales.astype(np.float64), (4,))
    low, high = np.iinfo(kind).min, np.iinfo(kind).max
    for c in (0, 3):
        codes = np.round(x[0, c] / scale[c]) + zero[c]
        want = np.zeros(x.shape)
        want[0, c] = ((codes >= low) & (codes <= high)) / 36
        assert 0 < want[0, c].sum() * 36 < 36  # some values are clipped
        np.testing.assert_allclose(_gradient(model, x, c), want, atol=1e-7)


@pytest.mark.parametrize("op", ["Conv", "MatMul"])
def test_dynamic_quantization_is_the_float_op_with_dequantized_weights(op, tmp_path):
    """quantize_dynamic writes DynamicQuantizeLinear -> ConvInteger / MatMulInteger -> Cast -> Mul:
    with the STE (the range DynamicQuantizeLinear computes holds every value) the gradient is the
    float op's with the dequantized weights, here from torch in float64."""
    from onnx import helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    rng = np.random.default_rng(0)
    if op == "Conv":
        w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
        nodes = [helper.make_node("Conv", ["X", "W"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["g"]),
                 helper.make_node("Flatten", ["g"], ["Y"])]
        shape = [1, 3, 6, 6]
    else:
        w = rng.normal(0, 0.3, (12, 4)).astype(np.float32)
        nodes = [helper.make_node("Flatten", ["X"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["Y"])]
        shape = [1, 3, 2, 2]
    graph = helper.make_graph(nodes, "dynamic", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), op_types_to_quantize=[op],
                     weight_type=QuantType.QUInt8 if op == "Conv" else QuantType.QInt8)
    quantized = onnx.load(str(tmp_path / "q.onnx"))
    assert f"{op}Integer" in {n.op_type for n in quantized.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    codes = next(v for k, v in inits.items() if v.shape == w.shape and v.dtype != np.float32)
    scale = next(v for k, v in inits.items() if k.endswith("_scale") and v.size == 1)
    zero = next(v for k, v in inits.items() if k.endswith("_zero_point") and v.dtype == codes.dtype)
    w_f = torch.tensor((codes.astype(np.float64) - zero.astype(np.float64)) * float(scale))
    x = rng.normal(0, 1, shape).astype(np.float32)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = F.conv2d(xt, w_f).mean(dim=(2, 3)) if op == "Conv" else xt.flatten(1) @ w_f
    y[0, 2].backward()
    got = _gradient(quantized, x, 2)
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-5, atol=1e-6 * float(xt.grad.abs().max()))
