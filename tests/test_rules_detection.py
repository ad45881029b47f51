"""Gradient rules of the ops detection and segmentation graphs need (issue 21, item 1), each
against central finite differences in float64 (as tests/test_rules_fd.py: the whole gradient of
L(x) = sum(seed * F(x)), eps 1e-6, rtol 1e-6 of max |gradient|), the float32 VJP in onnxruntime
CPU against the same truth (rtol 2e-5), and torch autograd where torch has the op."""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_builders import Runner, distinct_values, fd_gradient, make_model, max_rel_err, ort_session

import gnl_onnx
from gnl_onnx.errors import UnsupportedModelError

EPS64, RTOL64, RTOL32 = 1e-6, 1e-6, 2e-5


def node(op, inputs, outputs=("Y",), **attrs):
    return helper.make_node(op, list(inputs), list(outputs), **attrs)


def f32(*v):
    return np.array(v, dtype=np.float32)


def i64(*v):
    return np.array(v, dtype=np.int64)


@dataclass
class Case:
    id: str
    nodes: list
    shape: tuple
    inits: dict = field(default_factory=dict)  # float64 arrays take the model's float type; others kept
    opset: int = 18
    draw: str = "normal"  # "distinct": no ties (TopK, max reductions)
    truth: str = "reference"  # "ort_linear": see _truth
    rtol: float = RTOL64
    marks: tuple = ()
    skip64: str = ""  # why the float64 VJP cannot run (no float64 kernel anywhere for its forward)

    def x(self, dtype):
        rng = np.random.default_rng(zlib.crc32(self.id.encode()))
        if self.draw == "distinct":
            value = distinct_values(rng, self.shape)
        elif self.draw == "off_grid":  # at least 0.1 from every multiple of 0.5 (Floor, Ceil, Round, Sign)
            value = rng.uniform(-3, 3, size=self.shape)
            value = np.floor(value * 2) / 2 + rng.uniform(0.1, 0.4, size=self.shape)
        elif self.draw == "positive":
            value = rng.uniform(0.5, 2.0, size=self.shape)
        else:
            value = rng.normal(size=self.shape)
        return value.astype(dtype)

    def build(self, dtype):
        inits = {k: (v.astype(dtype) if v.dtype == np.float64 else v) for k, v in self.inits.items()}
        inputs = [("X", dtype, list(self.shape))]
        if self.truth == "ort_linear":  # the shape as onnxruntime computes it, in float32
            draft = make_model(self.nodes, [("X", np.float32, list(self.shape))], [("Y", np.float32, None)],
                               {k: (v.astype(np.float32) if v.dtype == np.float64 else v)
                                for k, v in self.inits.items()},
                               opset=self.opset, check=False)
            y = ort_session(draft).run(None, {"X": self.x(np.float32)})[0]
        else:
            draft = make_model(self.nodes, inputs, [("Y", dtype, None)], inits, opset=self.opset, check=False)
            y = Runner(draft)({"X": self.x(dtype)})[0]
        return make_model(self.nodes, inputs, [("Y", dtype, list(y.shape))], inits, opset=self.opset)


CASES: dict[str, Case] = {}


def case(id, nodes, shape, inits=None, **kw):
    CASES[id] = Case(id, nodes, shape, inits or {}, **kw)


# ---------------------------------------------------------------- Resize
def resize(id, shape, *, scales=None, sizes=None, opset=18, truth="reference", rtol=RTOL64, **attrs):
    inits = {}
    inputs = ["X", "", "", ""]
    if opset == 11:  # roi is a required input before opset 13
        inits["roi"], inputs[1] = f32(), "roi"
    if scales is not None:
        inits["sc"], inputs[2] = f32(*scales), "sc"
    if sizes is not None:
        inits["sz"], inputs[3] = i64(*sizes), "sz"
    while inputs[-1] == "":
        inputs.pop()
    case(id, [node("Resize", inputs, **attrs)], shape, inits, opset=opset, truth=truth, rtol=rtol)


# onnx's reference evaluator (onnx 1.23) maps align_corners with (length_in * scale - 1) instead of
# the spec's (length_resized - 1), which differ when the scale does not give a whole length; ONNX
# Runtime follows the spec, so those cases take their truth from it (see _truth).
TRANSFORMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"]
for _t in TRANSFORMS:
    for _m in ["nearest", "linear", "cubic"]:
        resize(f"resize_{_m}_{_t}_up_scales", (1, 2, 3, 4), scales=[1, 1, 2.5, 1.75], mode=_m,
               coordinate_transformation_mode=_t,
               truth="ort_linear" if _t == "align_corners" and _m != "nearest" else "reference")
        resize(f"resize_{_m}_{_t}_down_sizes", (1, 2, 7, 6), sizes=[1, 2, 4, 3], mode=_m,
               coordinate_transformation_mode=_t)
for _n in ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]:
    resize(f"resize_nearest_{_n}_half_pixel", (1, 1, 5, 4), scales=[1, 1, 1.6, 2.0], mode="nearest",
           nearest_mode=_n)
    resize(f"resize_nearest_{_n}_asymmetric_down", (1, 1, 7, 5), scales=[1, 1, 0.55, 0.45], mode="nearest",
           nearest_mode=_n, coordinate_transformation_mode="asymmetric")
resize("resize_linear_x2_half_pixel_fpn", (2, 3, 4, 4), scales=[1, 1, 2, 2], mode="linear")
resize("resize_nearest_x2_asymmetric_floor", (2, 3, 3, 4), scales=[1, 1, 2, 2], mode="nearest",
       coordinate_transformation_mode="asymmetric", nearest_mode="floor")
resize("resize_linear_x8_align_corners", (1, 1, 2, 3), sizes=[1, 1, 16, 24], mode="linear",
       coordinate_transformation_mode="align_corners")
resize("resize_cubic_a05_exclude_outside", (1, 2, 4, 5), scales=[1, 1, 1.5, 2], mode="cubic",
       cubic_coeff_a=-0.5, exclude_outside=1)
resize("resize_cubic_down_exclude_outside", (1, 1, 7, 6), sizes=[1, 1, 3, 4], mode="cubic", exclude_outside=1)
resize("resize_linear_antialias_down", (1, 2, 9, 8), sizes=[1, 2, 4, 3], mode="linear", antialias=1)
# the runtimes compute antialias weights in float32 (onnxruntime and the reference evaluator differ from
# float64 weights by ~1e-6 here)
resize("resize_cubic_antialias_down", (1, 1, 9, 7), scales=[1, 1, 0.45, 0.6], mode="cubic", antialias=1, rtol=1e-5)
resize("resize_linear_antialias_up_is_plain", (1, 1, 3, 3), scales=[1, 1, 2, 1.5], mode="linear", antialias=1)
resize("resize_sizes_axes", (1, 2, 3, 4), sizes=[5, 7], mode="linear", axes=[2, 3])
resize("resize_scales_axes", (1, 2, 3, 4), scales=[2.0, 0.5], mode="nearest", axes=[2, 3])
resize("resize_keep_ratio_not_larger", (1, 1, 4, 6), sizes=[8, 8], mode="linear", axes=[2, 3],
       keep_aspect_ratio_policy="not_larger")
resize("resize_keep_ratio_not_smaller", (1, 1, 4, 6), sizes=[8, 8], mode="nearest", axes=[2, 3],
       keep_aspect_ratio_policy="not_smaller")
resize("resize_half_pixel_symmetric_op19", (1, 1, 3, 5), scales=[1, 1, 1.7, 0.7], mode="linear", opset=19,
       coordinate_transformation_mode="half_pixel_symmetric")
resize("resize_3d_linear_on_last_axis", (2, 3, 5), scales=[1, 1, 1.7], mode="linear")
resize("resize_op13_roi_empty", (1, 2, 3, 3), scales=[1, 1, 2, 2], mode="linear", opset=13)
resize("resize_op11_linear_align_corners", (1, 2, 3, 3), scales=[1, 1, 2, 2], mode="linear", opset=11,
       coordinate_transformation_mode="align_corners", truth="ort_linear")
# A Resize between Convs, sizes read from another value's shape at run time (torch's
# F.interpolate(size=lateral.shape[-2:]) in feature pyramids).
case("resize_sizes_from_shape_fpn", [
    node("Conv", ["X", "W1"], ["low"], strides=[2, 2], pads=[1, 1, 1, 1]),
    node("Shape", ["X"], ["shape"]),
    node("Slice", ["shape", "two", "four"], ["hw"]),
    node("Concat", ["nc", "hw"], ["sz"], axis=0),
    node("Resize", ["low", "", "", "sz"], ["up"], mode="linear"),
    node("Add", ["up", "X"], ["s"]),
    node("Conv", ["s", "W2"], ["Y"], pads=[1, 1, 1, 1])], (1, 2, 5, 6),
    {"W1": np.random.default_rng(1).normal(size=(2, 2, 3, 3)), "W2": np.random.default_rng(2).normal(size=(3, 2, 3, 3)),
     "two": i64(2), "four": i64(4), "nc": i64(1, 2)})
case("upsample_op9_nearest_x2", [node("Upsample", ["X", "sc"], mode="nearest")], (1, 2, 3, 2),
     {"sc": f32(1, 1, 2, 3)}, opset=9)
case("upsample_op9_linear", [node("Upsample", ["X", "sc"], mode="linear")], (1, 2, 3, 2), {"sc": f32(1, 1, 2, 2)},
     opset=9, marks=(pytest.mark.xfail(strict=True, reason=(
         "onnx's version converter (used by the intake's opset upgrade) turns Upsample-9 / Resize-10 into "
         "Resize-11 without coordinate_transformation_mode='asymmetric', so the upgraded model resamples "
         "with half_pixel: another function than the original")),))


# ---------------------------------------------------------------- Resize against torch autograd
TORCH_RESIZE = [  # (torch mode, align_corners, antialias) -> the ONNX attributes of the same resampling
    ("nearest", None, False, dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")),
    ("bilinear", False, False, dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel")),
    ("bilinear", True, False, dict(mode="linear", coordinate_transformation_mode="align_corners")),
    ("bicubic", False, False, dict(mode="cubic", coordinate_transformation_mode="pytorch_half_pixel")),
    ("bicubic", True, False, dict(mode="cubic", coordinate_transformation_mode="align_corners")),
]
# torch's bicubic weights come out ~1e-6 off float64 ones (torch evaluates them in float32); its
# antialias differs from ONNX's (another filter support), so antialias is checked against ONNX alone.
TORCH_RTOL = {"nearest": 1e-10, "bilinear": 1e-10, "bicubic": 1e-5}


@pytest.mark.parametrize("size", [(7, 9), (3, 2)], ids=["up", "down"])
@pytest.mark.parametrize("torch_mode, align, antialias, attrs", TORCH_RESIZE,
                         ids=["nearest", "bilinear", "bilinear_align", "bicubic", "bicubic_align"])
def test_resize_gradient_matches_torch_autograd(torch_mode, align, antialias, attrs, size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(11)
    x = rng.normal(size=(2, 3, 5, 4))
    seed = rng.normal(size=(2, 3, *size))
    xt = torch.tensor(x, requires_grad=True)
    kw = {} if align is None else {"align_corners": align}
    yt = torch.nn.functional.interpolate(xt, size=size, mode=torch_mode, antialias=antialias, **kw)
    yt.backward(torch.tensor(seed))
    model = make_model([node("Resize", ["X", "", "", "sz"], **attrs)], [("X", np.float64, list(x.shape))],
                       [("Y", np.float64, list(seed.shape))], {"sz": i64(2, 3, *size)})
    y, g = vjp_gradient(model, x, seed)
    tol = TORCH_RTOL[torch_mode]
    assert max_rel_err(y, yt.detach().numpy()) < tol
    assert max_rel_err(g, xt.grad.numpy()) < tol


# ---------------------------------------------------------------- Resize of images whose size is known at run time
DYNAMIC_FORMS = {
    "scales": lambda attrs: ([node("Resize", ["X", "", "sc"], **attrs)], {"sc": f32(1, 1, 2, 1.5)}),
    "scales_down": lambda attrs: ([node("Resize", ["X", "", "sc"], **attrs)], {"sc": f32(1, 1, 0.5, 0.75)}),
    "sizes_from_shape": lambda attrs: ([  # twice the input's height and width, read at run time
        node("Shape", ["X"], ["s"]), node("Slice", ["s", "zero", "two"], ["nc"]),
        node("Slice", ["s", "two", "four"], ["hw"]),
        node("Mul", ["hw", "twice"], ["hw2"]), node("Concat", ["nc", "hw2"], ["sz"], axis=0),
        node("Resize", ["X", "", "", "sz"], **attrs)],
        {"zero": i64(0), "two": i64(2), "four": i64(4), "twice": i64(2)}),
}
DYNAMIC_MODES = [dict(mode="nearest"), dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                            nearest_mode="floor"),
                 dict(mode="linear"), dict(mode="linear", coordinate_transformation_mode="align_corners"),
                 dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
                 dict(mode="linear", coordinate_transformation_mode="asymmetric"),
                 dict(mode="cubic"), dict(mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)]


@pytest.mark.parametrize("form", list(DYNAMIC_FORMS))
@pytest.mark.parametrize("attrs", DYNAMIC_MODES, ids=["nearest", "nearest_floor_asym", "linear", "linear_align",
                                                      "linear_pytorch", "linear_asym", "cubic", "cubic_exclude"])
def test_resize_with_dynamic_image_size_matches_finite_differences(attrs, form):
    """One VJP for images of any size (DBNet's input is N x 3 x H x W), run at two sizes: each against
    float64 finite differences of the model built at that size, and in float32 onnxruntime."""
    nodes, inits = DYNAMIC_FORMS[form](attrs)
    dynamic = make_model(nodes, [("X", np.float64, ["N", 2, "H", "W"])], [("Y", np.float64, ["N", 2, "h", "w"])], inits)
    vjp64 = gnl_onnx.vjp_model(dynamic)
    dynamic32 = make_model(nodes, [("X", np.float32, ["N", 2, "H", "W"])], [("Y", np.float32, ["N", 2, "h", "w"])],
                           {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in inits.items()})
    vjp32 = ort_session(gnl_onnx.vjp_model(dynamic32))
    rng = np.random.default_rng(21)
    for shape in [(1, 2, 4, 4), (2, 2, 5, 6)]:
        x = rng.normal(size=shape)
        run = Runner(make_model(nodes, [("X", np.float64, list(shape))], [("Y", np.float64, None)], inits, check=False))
        y = run({"X": x})[0]
        seed = rng.normal(size=y.shape)
        tol = RTOL64
        if attrs.get("coordinate_transformation_mode") == "align_corners" and form != "sizes_from_shape":
            # the reference evaluator's align_corners departs from the spec for scales (see TRANSFORMS
            # above): the truth is onnxruntime's float32 forward, a linear map, at a step of 1
            forward32 = lambda v: vjp32.run(["Y"], {"X": v.astype(np.float32),  # noqa: E731
                                                    "Y_grad": np.zeros(y.shape, np.float32)})[0]
            g_fd, tol = fd_gradient(forward32, np.zeros_like(x), seed, 1.0), RTOL32
        else:
            g_fd = fd_gradient(lambda v: run({"X": v})[0], x, seed, EPS64)
        g = Runner(vjp64)({"X": x, "Y_grad": seed}, ["X_grad"])[0]
        assert max_rel_err(g, g_fd) <= tol, (shape, max_rel_err(g, g_fd))
        g32 = vjp32.run(["X_grad"], {"X": x.astype(np.float32), "Y_grad": seed.astype(np.float32)})[0]
        assert max_rel_err(g32, g_fd) <= RTOL32, (shape, max_rel_err(g32, g_fd))


# ---------------------------------------------------------------- Resize: refusals, rule sets
def test_resize_antialias_of_dynamic_spatial_size_is_refused_in_one_line():
    model = make_model([node("Resize", ["X", "", "sc"], mode="linear", antialias=1, name="up")],
                       [("X", np.float32, ["N", 2, "H", "W"])], [("Y", np.float32, ["N", 2, None, None])],
                       {"sc": f32(1, 1, 2, 2)})
    with pytest.raises(UnsupportedModelError) as info:
        gnl_onnx.vjp_model(model)
    assert list(info.value.unsupported.values()) == [["up"]]
    assert "Resize" in str(info.value) and "fixed image size" in str(info.value)


def test_resize_keep_aspect_ratio_of_dynamic_size_is_refused_in_one_line():
    model = make_model([node("Resize", ["X", "", "", "sz"], mode="linear", axes=[2, 3], name="fit",
                             keep_aspect_ratio_policy="not_larger")],
                       [("X", np.float32, [1, 2, "H", "W"])], [("Y", np.float32, [1, 2, None, None])],
                       {"sz": i64(8, 8)})
    with pytest.raises(UnsupportedModelError, match="keep_aspect_ratio_policy") as info:
        gnl_onnx.vjp_model(model)
    assert list(info.value.unsupported.values()) == [["fit"]]


def test_resize_tf_crop_and_resize_is_refused():
    model = make_model([node("Resize", ["X", "roi", "sc"], mode="linear", name="crop",
                             coordinate_transformation_mode="tf_crop_and_resize")],
                       [("X", np.float32, [1, 1, 4, 4])], [("Y", np.float32, [1, 1, 8, 8])],
                       {"roi": f32(0, 0, 0.1, 0.1, 1, 1, 0.9, 0.9), "sc": f32(1, 1, 2, 2)})
    with pytest.raises(UnsupportedModelError, match="tf_crop_and_resize"):
        gnl_onnx.vjp_model(model)


@pytest.mark.parametrize("rule", ["guided", "lrp_epsilon_plus_flat"])
def test_resize_is_linear_under_guided_and_moves_relevance_under_lrp(rule):
    """Guided: the chain rule, never gated (Resize is linear). LRP: the relevance is moved by the
    gradient, and every interpolation row sums to 1, so the total is conserved."""
    c = CASES["resize_linear_x2_half_pixel_fpn"]
    model, x, seed, _, _ = _truth(c.id)
    model32 = c.build(np.float32)
    plain = vjp_gradient(model32, x.astype(np.float32), seed.astype(np.float32), allow_reference=False)[1]
    vjp = _vjp(model32, rule=rule)
    got = Runner(vjp, allow_reference=False)({"X": x.astype(np.float32), "Y_grad": seed.astype(np.float32)},
                                             ["X_grad"])[0]
    assert gnl_onnx.vjp_report(vjp)["gated"] == []
    np.testing.assert_allclose(got, plain, rtol=1e-6, atol=1e-6)
    assert abs(got.sum() - seed.sum()) < 1e-4 * np.abs(seed).sum()


# ---------------------------------------------------------------- ConvTranspose
_WT = np.random.default_rng(5)


def conv_transpose(id, shape, wshape, bias=True, case_kw=None, **attrs):
    inits = {"W": _WT.normal(size=wshape)}
    ins = ["X", "W"]
    if bias:
        inits["B"] = _WT.normal(size=wshape[1] * attrs.get("group", 1))
        ins.append("B")
    case(id, [node("ConvTranspose", ins, **attrs)], shape, inits, **(case_kw or {}))


conv_transpose("convT_s2_k2_unet", (1, 3, 3, 4), (3, 2, 2, 2), strides=[2, 2])
conv_transpose("convT_s2_k3_p1_outpad1", (1, 2, 3, 3), (2, 3, 3, 3), strides=[2, 2], pads=[1, 1, 1, 1],
               output_padding=[1, 1])
conv_transpose("convT_s2_k4_p1_fcn", (2, 2, 3, 3), (2, 2, 4, 4), strides=[2, 2], pads=[1, 1, 1, 1])
conv_transpose("convT_asym_pads", (1, 2, 4, 3), (2, 3, 3, 2), strides=[3, 2], pads=[0, 1, 2, 0])
conv_transpose("convT_dilated", (1, 2, 3, 3), (2, 2, 3, 3), dilations=[2, 2], pads=[1, 1, 1, 1])
conv_transpose("convT_s2_dil2_outpad", (1, 2, 3, 4), (2, 2, 3, 2), strides=[2, 3], dilations=[2, 1],
               output_padding=[1, 2])
conv_transpose("convT_grouped", (1, 4, 3, 3), (4, 3, 3, 3), group=2, strides=[2, 2], pads=[1, 1, 1, 1])
conv_transpose("convT_depthwise", (1, 3, 4, 4), (3, 1, 4, 4), group=3, strides=[2, 2], pads=[1, 1, 1, 1])
conv_transpose("convT_1d", (2, 2, 5), (2, 3, 3), strides=[2], pads=[0, 1])
conv_transpose("convT_no_bias_s1", (1, 2, 4, 4), (2, 2, 3, 3), bias=False, pads=[1, 1, 1, 1])
conv_transpose("convT_same_upper", (1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER")
conv_transpose("convT_same_lower", (1, 2, 3, 3), (2, 2, 4, 4), strides=[2, 2], auto_pad="SAME_LOWER")
conv_transpose("convT_output_shape", (1, 2, 3, 3), (2, 2, 3, 3), strides=[2, 2], output_shape=[6, 5],
               case_kw=dict(truth="ort_linear", skip64="onnx's reference ConvTranspose fails on output_shape "
                                                       "and onnxruntime has no float64 ConvTranspose"))


@pytest.mark.parametrize("stride, padding, output_padding, groups, dilation", [
    (2, 1, 1, 1, 1), (2, 0, 0, 2, 1), (3, 2, 1, 1, 2), (1, 1, 0, 4, 1)],
    ids=["outpad", "groups", "dilated", "depthwise"])
def test_conv_transpose_gradient_matches_torch_autograd(stride, padding, output_padding, groups, dilation):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    x, w, b = rng.normal(size=(2, 4, 4, 5)), rng.normal(size=(4, 6 // groups if groups != 4 else 1, 3, 3)), None
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.conv_transpose2d(xt, torch.tensor(w), stride=stride, padding=padding,
                                              output_padding=output_padding, groups=groups, dilation=dilation)
    seed = rng.normal(size=tuple(yt.shape))
    yt.backward(torch.tensor(seed))
    attrs = dict(strides=[stride] * 2, pads=[padding] * 4, output_padding=[output_padding] * 2, group=groups,
                 dilations=[dilation] * 2)
    model = make_model([node("ConvTranspose", ["X", "W"], **attrs)], [("X", np.float64, list(x.shape))],
                       [("Y", np.float64, list(seed.shape))], {"W": w})
    y, g = vjp_gradient(model, x, seed)
    assert max_rel_err(y, yt.detach().numpy()) < 1e-10
    assert max_rel_err(g, xt.grad.numpy()) < 1e-10


# ---------------------------------------------------------------- rounding, picking, placing
for _op in ["Floor", "Ceil", "Round", "Sign"]:  # zero gradient: through x * op(x), d/dx = op(x)
    case(f"{_op.lower()}_times_x", [node(_op, ["X"], ["r"]), node("Mul", ["X", "r"])], (2, 3, 4), draw="off_grid")
case("floor_alone_zero_gradient_mixed", [node("Floor", ["X"], ["r"]), node("Add", ["r", "X"])], (2, 5), draw="off_grid")
case("topk_last_axis", [node("TopK", ["X", "k"], ["Y", "i"])], (2, 3, 6), {"k": i64(3)}, draw="distinct")
case("topk_smallest_axis1", [node("TopK", ["X", "k"], ["Y", "i"], axis=1, largest=0)], (2, 5, 3), {"k": i64(2)},
     draw="distinct")
case("topk_values_squared", [node("TopK", ["X", "k"], ["v", "i"], axis=-1), node("Mul", ["v", "v"])], (3, 7),
     {"k": i64(4)}, draw="distinct")
case("gather_elements_const_dup_neg", [node("GatherElements", ["X", "idx"], axis=1)], (2, 4, 3),
     {"idx": np.array([[[0, 3, -1], [0, 0, 2]], [[-4, 1, 1], [2, 2, 2]]], np.int64)})
case("gather_elements_argmax_data_dependent", [
    node("ArgMax", ["X"], ["am"], axis=1, keepdims=1), node("GatherElements", ["X", "am"], ["best"], axis=1),
    node("Mul", ["best", "X"])], (2, 5, 3), draw="distinct")
case("gather_nd_const_slices_dup", [node("GatherND", ["X", "idx"])], (3, 4, 2),
     {"idx": np.array([[0, 1], [2, 3], [0, 1]], np.int64)})
case("gather_nd_const_elements", [node("GatherND", ["X", "idx"])], (3, 4),
     {"idx": np.array([[[0, 1], [2, 3]], [[1, 1], [0, 1]]], np.int64)})
case("gather_nd_batch_dims1", [node("GatherND", ["X", "idx"], batch_dims=1)], (2, 3, 4),
     {"idx": np.array([[[1], [2], [1]], [[0], [0], [2]]], np.int64)})
case("gather_nd_batch_dims1_elements", [node("GatherND", ["X", "idx"], batch_dims=1)], (2, 3, 4),
     {"idx": np.array([[[1, 3], [2, 0]], [[0, 0], [0, 0]]], np.int64)})
case("gather_nd_batch_dims2", [node("GatherND", ["X", "idx"], batch_dims=2)], (2, 3, 4),
     {"idx": np.array([[[1], [3], [3]], [[0], [2], [1]]], np.int64)})
case("gather_nd_nonzero_data_dependent", [
    node("Greater", ["X", "zero"], ["pos"]), node("NonZero", ["pos"], ["nz"]), node("Transpose", ["nz"], ["at"]),
    node("GatherND", ["X", "at"])], (3, 4), {"zero": np.array(0.0)}, draw="off_grid")
case("scatter_elements_x_is_data", [node("ScatterElements", ["X", "idx", "u"], axis=1)], (2, 4),
     {"idx": i64(1, 3, 0, 2).reshape(2, 2), "u": np.random.default_rng(3).normal(size=(2, 2))})
case("scatter_elements_x_is_updates", [node("ScatterElements", ["d", "idx", "X"], axis=0)], (2, 3),
     {"idx": np.array([[1, 0, 3], [2, 3, 0]], np.int64), "d": np.random.default_rng(4).normal(size=(4, 3))})
case("scatter_elements_add_both", [node("Slice", ["X", "s0", "s1", "ax"], ["u"]),
                                   node("ScatterElements", ["X", "idx", "u"], axis=1, reduction="add")], (2, 4),
     {"s0": i64(0), "s1": i64(2), "ax": i64(1), "idx": np.array([[3, 3], [0, 1]], np.int64)})
case("scatter_nd_x_is_data", [node("ScatterND", ["X", "idx", "u"])], (4, 3),
     {"idx": np.array([[1], [3]], np.int64), "u": np.random.default_rng(5).normal(size=(2, 3))})
case("scatter_nd_both_written_elements", [node("Slice", ["X", "s0", "s1", "ax"], ["u"]),
                                          node("ScatterND", ["X", "idx", "u"])], (3, 3),
     {"s0": i64(0), "s1": i64(2), "ax": i64(1), "idx": np.array([[[0, 2], [2, 0]], [[1, 1], [2, 2]], [[0, 0], [1, 0]]],
                                                                  np.int64)})
case("scatter_nd_add_x_is_updates", [node("ScatterND", ["d", "idx", "X"], reduction="add")], (3, 2),
     {"idx": np.array([[1], [1], [0]], np.int64), "d": np.random.default_rng(6).normal(size=(2, 2))})
for _ex in (0, 1):
    for _rev in (0, 1):
        case(f"cumsum_exclusive{_ex}_reverse{_rev}", [node("CumSum", ["X", "ax"], exclusive=_ex, reverse=_rev)],
             (2, 5, 3), {"ax": i64(1)})


case("gather_const_indices_rank2_dup_neg", [node("Gather", ["X", "idx"], axis=1)], (2, 4, 3),
     {"idx": np.array([[0, -1], [3, 0], [1, 1]], np.int64)})
case("gather_topk_indices_data_dependent", [  # a detector's post-processing: the boxes of the k best scores
    node("ReduceMax", ["X", "last"], ["score"], keepdims=0), node("TopK", ["score", "k"], ["best", "which"], axis=1),
    node("Gather", ["X", "which"], ["picked"], axis=1), node("Mul", ["picked", "picked"])], (2, 5, 3),
    {"last": i64(2), "k": i64(2)}, draw="distinct")
case("gather_scalar_runtime_index_axis2", [
    node("ArgMax", ["X"], ["am"], axis=2, keepdims=0), node("ReduceMin", ["am"], ["first"], keepdims=0),
    node("Gather", ["X", "first"], axis=2)], (2, 3, 4), draw="distinct")
case("gather_int32_runtime_indices", [
    node("ArgMax", ["X"], ["am"], axis=0, keepdims=0), node("Cast", ["am"], ["am32"], to=TensorProto.INT32),
    node("Gather", ["X", "am32"], axis=1)], (3, 4), draw="distinct")


# a detector's kept boxes: Slices whose ends are counted at run time, and Slices (strided, reversed)
# of a value whose size only the data decide
case("slice_runtime_ends_from_a_count", [
    node("Greater", ["X", "zero"], ["pos"]), node("NonZero", ["pos"], ["nz"]), node("Shape", ["nz"], ["sh"]),
    node("Slice", ["sh", "one", "two"], ["count"]), node("Div", ["count", "two"], ["half"]),
    node("Slice", ["X", "zero_i", "half", "one"], ["part"]), node("Mul", ["part", "part"])], (2, 6),
    {"zero": np.array(0.0), "one": i64(1), "two": i64(2), "zero_i": i64(0)})
for _id, (_s, _e, _step) in {"contiguous": (1, 2**62, 1), "reversed_strided": (-1, -100, -2)}.items():
    case(f"slice_of_a_data_sized_value_{_id}", [
        node("ReduceSum", ["X", "zero_i"], ["col"], keepdims=0), node("Greater", ["col", "zero"], ["pos"]),
        node("NonZero", ["pos"], ["nz"]), node("Squeeze", ["nz", "zero_i"], ["which"]),
        node("Gather", ["X", "which"], ["kept"], axis=1),
        node("Slice", ["kept", "s", "e", "one", "st"], ["part"]), node("Mul", ["part", "part"])], (2, 7),
        {"zero": np.array(0.0), "zero_i": i64(0), "one": i64(1), "s": i64(_s), "e": i64(_e), "st": i64(_step)})


# ---------------------------------------------------------------- RoiAlign, NonMaxSuppression
# boxes (x1, y1, x2, y2) in image coordinates: inside, crossing the border, smaller than a cell,
# on both images of the batch; spatial_scale 0.5 maps them onto the 6x7 feature map
_ROIS = np.array([[1.0, 2.0, 9.0, 8.5], [-3.0, 4.0, 6.0, 14.0], [5.2, 3.1, 5.9, 3.6], [0.0, 0.0, 13.0, 11.0],
                  [7.5, 1.0, 15.0, 6.0]])
_ROI_BATCH = i64(0, 1, 1, 0, 1)
for _mode in ["avg", "max"]:
    for _t in ["half_pixel", "output_half_pixel"]:
        for _ratio in [0, 2]:
            case(f"roi_align_{_mode}_{_t}_ratio{_ratio}",
                 [node("RoiAlign", ["X", "rois", "bi"], mode=_mode, coordinate_transformation_mode=_t,
                       output_height=3, output_width=2, sampling_ratio=_ratio, spatial_scale=0.5)],
                 (2, 3, 6, 7), {"rois": _ROIS, "bi": _ROI_BATCH}, draw="distinct" if _mode == "max" else "normal")
# a two-stage detector's shape: the boxes come from the image (a pooled score decides them), so they
# are data dependent; the gradient flows to the feature map only (as torchvision's roi_align)
case("roi_align_data_dependent_boxes_after_nms", [
    node("ReduceMean", ["X", "c12"], ["m"], keepdims=0),                      # [1, W]
    node("Slice", ["m", "s0", "s4", "s1"], ["m4"]),
    node("Reshape", ["m4", "sshape"], ["score64"]),                            # [1, 1, 4]: a score per box
    node("Cast", ["score64"], ["scores"], to=TensorProto.FLOAT),
    node("Reshape", ["cands", "cshape"], ["boxes"]),
    node("NonMaxSuppression", ["boxes", "scores", "keep", "iou"], ["sel"]),
    node("Gather", ["sel", "two"], ["which"], axis=1),                        # the kept boxes' indices
    node("Gather", ["cands", "which"], ["rois32"], axis=0),
    node("CastLike", ["rois32", "X"], ["rois"]),  # NonMaxSuppression takes float32 boxes only
    node("Cast", ["which"], ["zero_batch"], to=TensorProto.INT64),
    node("Mul", ["zero_batch", "zero"], ["bi"]),
    node("RoiAlign", ["X", "rois", "bi"], ["pooled"], output_height=2, output_width=2, sampling_ratio=2),
    node("Mul", ["pooled", "pooled"])], (1, 2, 5, 6),
    {"c12": i64(1, 2), "s0": i64(0), "s4": i64(4), "s1": i64(1), "sshape": i64(1, 1, 4), "cands": np.array([[0.0, 0.0, 3.0, 3.0], [0.5, 0.5, 3.5, 3.0],
                                                           [2.0, 1.0, 5.5, 4.5], [1.0, 2.0, 4.0, 4.8]], np.float32),
     "cshape": i64(1, 4, 4), "keep": i64(3), "iou": np.array([0.5], np.float32), "two": np.array(2, np.int64),
     "zero": i64(0)}, draw="distinct",
     skip64="NonMaxSuppression takes float32 scores only, so a float64 model would mix precisions")


# ---------------------------------------------------------------- If
def _if_node(condition, output, elem):
    """then: 3 X^2 (with a constant of the branch's own), else: -X; both read X from the outer graph."""
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", elem, [], [3.0])),
         helper.make_node("Mul", ["X", "X"], ["sq"]), helper.make_node("Mul", ["sq", "k"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", elem, None)])
    else_branch = helper.make_graph([helper.make_node("Neg", ["X"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", elem, None)])
    return node("If", [condition], [output], then_branch=then_branch, else_branch=else_branch)


# torch's exports test shapes ("any boxes?", "is the image wider than...?"): constant once shapes fold
@pytest.mark.parametrize("axis, branch", [(2, "then"), (1, "else")])
def test_if_with_a_shape_condition_follows_the_branch_taken(axis, branch):
    rng = np.random.default_rng(axis)
    x = rng.normal(size=(2, 3, 5))
    seed = rng.normal(size=x.shape)
    for dtype, elem in ((np.float64, TensorProto.DOUBLE), (np.float32, TensorProto.FLOAT)):
        model = make_model([node("Shape", ["X"], ["s"]), node("Gather", ["s", "ax"], ["d"], axis=0),
                            node("Greater", ["d", "three"], ["c"]), _if_node("c", "b", elem), node("Add", ["b", "X"])],
                           [("X", dtype, list(x.shape))], [("Y", dtype, list(x.shape))],
                           {"ax": np.array(axis, np.int64), "three": np.array(3, np.int64)})
        want = seed * (6 * x + 1 if branch == "then" else 0 * x)
        if dtype == np.float64:
            run = Runner(model)
            assert np.allclose(want, fd_gradient(lambda v: run({"X": v})[0], x, seed, EPS64), atol=1e-6)
        vjp = _vjp(model)
        assert not any(n.op_type == "If" for n in vjp.graph.node)
        y, got = ort_session(vjp).run(["Y", "X_grad"], {"X": x.astype(dtype), "Y_grad": seed.astype(dtype)})
        assert max_rel_err(got, want) < (1e-12 if dtype == np.float64 else RTOL32)


def test_if_decided_at_run_time_is_refused_in_one_line():
    model = make_model([node("ReduceSum", ["X"], ["total"], keepdims=0), node("Greater", ["total", "zero"], ["c"]),
                        _if_node("c", "b", TensorProto.FLOAT), node("Add", ["b", "X"])],
                       [("X", np.float32, [2, 3])], [("Y", np.float32, [2, 3])], {"zero": np.array(0.0, np.float32)})
    with pytest.raises(UnsupportedModelError) as e:
        gnl_onnx.vjp_model(model)
    assert list(e.value.unsupported) == ["If"]
    assert "decided at run time" in str(e.value) and "\n" not in str(e.value)


def test_if_of_indices_decided_at_run_time_carries_no_gradient():
    """torchvision's batched_nms is an If ("no boxes?") whose branches give only indices and read
    the boxes from the outer graph: no gradient passes through it, the gradient flows through what
    the indices pick. The branch reads an Identity's output and a size that folds to a constant."""
    then_branch = helper.make_graph([node("TopK", ["named", "k"], ["top", "idx"])], "then", [],
                                    [helper.make_tensor_value_info("idx", TensorProto.INT64, None)])
    else_branch = helper.make_graph([node("Constant", [], ["first"], value=onnx.numpy_helper.from_array(i64(0, 1), "first"))],
                                    "else", [], [helper.make_tensor_value_info("first", TensorProto.INT64, None)])
    nodes = [node("ReduceMax", ["X", "zero_i"], ["best"], keepdims=0), node("Identity", ["best"], ["named"]),
             node("Shape", ["X"], ["shape"]), node("Slice", ["shape", "one", "two"], ["width"]),
             node("Sub", ["width", "three"], ["k"]),  # 2: folds to a constant only the branch reads
             node("ReduceSum", ["X"], ["total"], keepdims=0), node("Greater", ["total", "zero"], ["c"]),
             node("If", ["c"], ["picked"], then_branch=then_branch, else_branch=else_branch),
             node("Gather", ["X", "picked"], ["kept"], axis=1), node("Mul", ["kept", "kept"])]
    inits = {"zero_i": i64(0), "one": i64(1), "two": i64(2), "three": i64(3), "zero": np.array(0.0, np.float32)}
    model = make_model(nodes, [("X", np.float32, [2, 5])], [("Y", np.float32, [2, 2])], inits)
    vjp = _vjp(model)
    session = ort_session(vjp)
    rng = np.random.default_rng(11)
    for sign in (1, -1):  # the then branch (top two columns), the else branch (columns 0 and 1)
        x = (sign * np.abs(distinct_values(rng, (2, 5)))).astype(np.float32)
        seed = rng.normal(size=(2, 2)).astype(np.float32)
        columns = np.argsort(-x.max(axis=0))[:2] if sign > 0 else np.array([0, 1])
        want = np.zeros_like(x)
        want[:, columns] = 2 * x[:, columns] * seed
        y, got = session.run(["Y", "X_grad"], {"X": x, "Y_grad": seed})
        np.testing.assert_allclose(y, x[:, columns] ** 2, rtol=1e-6)
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_sizes_the_data_decide_are_not_fixed_by_the_shape_probe():
    """The reverse pass measures shapes that inference cannot tell by running the model once; a size
    decided by the data (how many values pass a threshold, a detector's kept boxes) must not be
    folded into a constant from that run: here zeros of the kept values' shape, added to them."""
    nodes = [node("Greater", ["X", "zero"], ["pos"]), node("NonZero", ["pos"], ["nz"]),
             node("Gather", ["nz", "one"], ["cols"], axis=0), node("Gather", ["X", "cols"], ["kept"], axis=1),
             node("Shape", ["kept"], ["shape"]), node("ConstantOfShape", ["shape"], ["zeros"]),
             node("Mul", ["kept", "kept"], ["sq"]), node("Add", ["sq", "zeros"])]
    model = make_model(nodes, [("X", np.float32, [1, 8])], [("Y", np.float32, [1, None])],
                       {"zero": np.array(0.0, np.float32), "one": np.array(1, np.int64)})
    session = ort_session(_vjp(model))
    rng = np.random.default_rng(12)
    for positives in (8, 3, 1):  # the probe's draws have about 4
        x = -np.abs(rng.normal(size=(1, 8))).astype(np.float32) - 0.1
        x[0, :positives] *= -1
        seed = rng.normal(size=(1, positives)).astype(np.float32)
        want = np.zeros_like(x)
        want[0, :positives] = 2 * x[0, :positives] * seed[0]
        np.testing.assert_allclose(session.run(["X_grad"], {"X": x, "Y_grad": seed})[0], want, rtol=1e-6)


# ---------------------------------------------------------------- Einsum
_E = np.random.default_rng(23)
case("einsum_matmul_x_left", [node("Einsum", ["X", "W"], equation="ij,jk->ik")], (2, 3), {"W": _E.normal(size=(3, 4))})
case("einsum_matmul_x_right", [node("Einsum", ["W", "X"], equation="ij,jk->ik")], (3, 4), {"W": _E.normal(size=(2, 3))})
case("einsum_attention_scores", [node("Einsum", ["X", "K"], equation="bhqd,bhkd->bhqk")], (1, 2, 3, 4),
     {"K": _E.normal(size=(1, 2, 5, 4))})
case("einsum_x_twice_rowwise_dot", [node("Einsum", ["X", "X"], equation="ij,ij->i")], (3, 4))
case("einsum_implicit_output", [node("Einsum", ["X", "W"], equation="ij,jk")], (2, 3), {"W": _E.normal(size=(3, 2))})
case("einsum_sum_and_transpose", [node("Einsum", ["X"], equation="ijk->kj")], (2, 3, 4))
case("einsum_letter_only_in_x", [node("Einsum", ["X", "W"], equation="abc,c->c")], (2, 3, 4), {"W": _E.normal(size=4)})


def test_einsum_diagonal_is_refused_in_one_line():
    model = make_model([node("Einsum", ["X"], equation="ii->i", name="diag")], [("X", np.float32, [3, 3])],
                       [("Y", np.float32, [3])])
    with pytest.raises(UnsupportedModelError, match="diagonal") as info:
        gnl_onnx.vjp_model(model)
    assert list(info.value.unsupported.values()) == [["diag"]]


# ---------------------------------------------------------------- reductions, instance normalization
case("reducemax_axes_keepdims", [node("ReduceMax", ["X", "ax"])], (2, 3, 4), {"ax": i64(1, 2)}, draw="distinct")
case("reducemax_neg_axis_nokeep", [node("ReduceMax", ["X", "ax"], keepdims=0)], (2, 3, 4), {"ax": i64(-1)},
     draw="distinct")
case("reducemin_all_op13_attr", [node("ReduceMin", ["X"], keepdims=0)], (3, 4), draw="distinct", opset=13)
case("reducemax_attr_axes_op13", [node("ReduceMax", ["X"], axes=[0], keepdims=0)], (3, 4), draw="distinct",
     opset=13)
case("reducel2_axis1", [node("ReduceL2", ["X", "ax"])], (2, 3, 4), {"ax": i64(1)})
case("reducel2_all_nokeep", [node("ReduceL2", ["X"], keepdims=0)], (2, 3))
case("reducel1_axes", [node("ReduceL1", ["X", "ax"], keepdims=0)], (2, 3, 4), {"ax": i64(0, 2)}, draw="off_grid")
case("reducesumsquare", [node("ReduceSumSquare", ["X", "ax"])], (2, 3, 4), {"ax": i64(2)})
case("reducelogsumexp", [node("ReduceLogSumExp", ["X", "ax"], keepdims=0)], (2, 3, 4), {"ax": i64(1)})
case("reducelogsum", [node("ReduceLogSum", ["X", "ax"])], (2, 3, 4), {"ax": i64(-1)}, draw="positive")
case("reduceprod", [node("ReduceProd", ["X", "ax"], keepdims=0)], (2, 3, 4), {"ax": i64(1)}, draw="positive")
case("reduceprod_signed", [node("ReduceProd", ["X", "ax"])], (3, 4), {"ax": i64(0)}, draw="off_grid")
case("instancenorm_2d", [node("InstanceNormalization", ["X", "s", "b"], epsilon=1e-3)], (2, 3, 4, 5),
     {"s": np.random.default_rng(8).normal(size=3), "b": np.random.default_rng(9).normal(size=3)})
case("instancenorm_1d_default_eps", [node("InstanceNormalization", ["X", "s", "b"])], (2, 2, 6),
     {"s": np.random.default_rng(10).normal(size=2), "b": np.zeros(2)})


def test_reduce_max_ties_share_the_gradient_as_torch_amax():
    torch = pytest.importorskip("torch")
    x = np.array([[1.0, 3.0, 3.0, -2.0], [0.5, 0.5, 0.5, 0.5]])
    seed = np.array([[2.0], [-1.5]])
    model = make_model([node("ReduceMax", ["X", "ax"])], [("X", np.float64, [2, 4])], [("Y", np.float64, [2, 1])],
                       {"ax": i64(1)})
    xt = torch.tensor(x, requires_grad=True)
    torch.amax(xt, dim=1, keepdim=True).backward(torch.tensor(seed))
    np.testing.assert_allclose(vjp_gradient(model, x, seed)[1], xt.grad.numpy(), rtol=1e-15)
    assert xt.grad.numpy()[0, 1] == 1.0  # the check is not vacuous: a tie split in two


def test_instance_norm_gradient_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    x, s, b = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=3), rng.normal(size=3)
    seed = rng.normal(size=x.shape)
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.instance_norm(xt, weight=torch.tensor(s), bias=torch.tensor(b), eps=1e-5).backward(
        torch.tensor(seed))
    model = make_model([node("InstanceNormalization", ["X", "s", "b"], epsilon=1e-5)],
                       [("X", np.float64, list(x.shape))], [("Y", np.float64, list(x.shape))], {"s": s, "b": b})
    assert max_rel_err(vjp_gradient(model, x, seed)[1], xt.grad.numpy()) < 1e-12


# ---------------------------------------------------------------- a torch-exported segmentation-style net
def _decoder_net(torch):
    class Decoder(torch.nn.Module):
        """An encoder-decoder in miniature: a strided Conv, a ConvTranspose + InstanceNorm branch, a
        bilinear upsample to the skip's size (read from its shape) and a nearest x2 upsample."""

        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.c2 = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)
            self.up = torch.nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1)
            self.norm = torch.nn.InstanceNorm2d(4, affine=True)
            self.head = torch.nn.Conv2d(8, 2, 1)

        def forward(self, x):
            a = torch.relu(self.c1(x))
            b = torch.relu(self.c2(a))
            u = self.norm(self.up(b))
            v = torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
            n = torch.nn.functional.interpolate(b, scale_factor=2, mode="nearest")
            return self.head(torch.cat([u + n, v], 1))

    torch.manual_seed(0)
    net = Decoder().eval()
    with torch.no_grad():  # InstanceNorm's affine parameters start at 1 and 0: make them count
        net.norm.weight.uniform_(0.5, 1.5)
        net.norm.bias.uniform_(-0.5, 0.5)
    return net


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["legacy", "dynamo"])
def test_exported_decoder_matches_torch_autograd(dynamo, tmp_path):
    """Resize (sizes read from a shape, scale 2), ConvTranspose and InstanceNormalization as torch's
    two exporters write them: the float32 VJP in onnxruntime against torch's float64 gradient."""
    torch = pytest.importorskip("torch")
    import warnings

    net = _decoder_net(torch)
    x = torch.randn(2, 3, 8, 10)
    path = tmp_path / "decoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            torch.onnx.export(net, (x,), dynamo=True, opset_version=18).save(str(path))
        else:
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["X"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Resize", "ConvTranspose", "InstanceNormalization"} <= ops
    xt = x.double().requires_grad_(True)
    y = net.double()(xt)
    seed = torch.randn_like(y)
    y.backward(seed)
    vjp = gnl_onnx.vjp_model(str(path))
    report = gnl_onnx.vjp_report(vjp)
    g = ort_session(vjp).run([report["gradient"]], {report["input"]: x.numpy(),
                                                    report["seed"]: seed.float().numpy()})[0]
    assert max_rel_err(g, xt.grad.numpy()) < 1e-5


# ---------------------------------------------------------------- the new ops under LRP
@pytest.mark.parametrize("case_id", ["topk_last_axis", "gather_elements_const_dup_neg", "gather_nd_const_slices_dup",
                                     "scatter_nd_both_written_elements", "reducemax_axes_keepdims",
                                     "resize_cubic_half_pixel_up_scales", "cumsum_exclusive0_reverse0"])
def test_lrp_conserves_relevance_through_routing_ops_and_running_sums(case_id):
    """Under an LRP composite the routing ops and Resize move relevance by the gradient and CumSum
    splits it proportionally (Norm): the total arriving at X is the total leaving Y."""
    c = CASES[case_id]
    x = c.x(np.float32)
    model = c.build(np.float32)
    y = ort_session(model).run(None, {"X": x})[0]
    seed = np.random.default_rng(3).uniform(0.1, 1.0, size=y.shape).astype(np.float32)
    vjp = gnl_onnx.vjp_model(model, rule="lrp_epsilon_plus_flat")
    r = ort_session(vjp).run(["X_grad"], {"X": x, "Y_grad": seed})[0]
    assert abs(float(r.sum()) - float(seed.sum())) <= 1e-4 * float(np.abs(seed).sum())
    rules = {entry["op"]: entry["rule"] for entry in gnl_onnx.vjp_report(vjp).get("rules", [])}
    assert rules == ({"CumSum": "norm"} if c.id.startswith("cumsum") else {})


# ---------------------------------------------------------------- step functions under DeepLIFT
@pytest.mark.parametrize("op", ["Floor", "Ceil", "Round", "Sign"])
def test_deeplift_carries_the_difference_through_step_functions(op):
    """Gemm(op(3 x) + x, W): DeepLIFT's Rescale at the step keeps completeness, sum(attribution) =
    F(x) - F(x0), where the chain rule's zero derivative would drop op's share of the gap."""
    rng = np.random.default_rng(31)
    w = rng.normal(size=(6, 2)).astype(np.float32)
    model = make_model([node("Mul", ["X", "three"], ["t"]), node(op, ["t"], ["s"]), node("Add", ["s", "X"], ["u"]),
                        node("Gemm", ["u", "W"])], [("X", np.float32, ["N", 6])], [("Y", np.float32, ["N", 2])],
                       {"three": np.array(3.0, np.float32), "W": w})
    vjp = gnl_onnx.vjp_model(model, rule="deeplift")
    report = gnl_onnx.vjp_report(vjp)
    x, x0 = rng.uniform(-2, 2, size=(2, 6)).astype(np.float32), rng.uniform(-2, 2, size=(2, 6)).astype(np.float32)
    feeds = {"X": np.concatenate([x, x0]), report["extra_inputs"][0]: np.array([2, 3, 2, 3], np.int64)}
    seed = np.tile(np.array([[1.0, 0.0]], np.float32), (4, 1))
    y, multipliers = ort_session(vjp).run(["Y", "X_grad"], {**feeds, "Y_grad": seed})
    gap = y[:2, 0].astype(np.float64) - y[2:, 0]
    total = ((x - x0) * multipliers[:2]).astype(np.float64).sum(1)
    assert {e["op"]: e["rule"] for e in report["rules"]}[op] == "rescale"
    steps = {"Floor": np.floor, "Ceil": np.ceil, "Round": np.round, "Sign": np.sign}[op]
    assert np.abs(steps(3 * x) - steps(3 * x0)).sum() > 0  # the step does move between x0 and x
    np.testing.assert_allclose(total, gap, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- harness
def _vjp(model, **kw):
    return gnl_onnx.vjp_model(model, **kw)


@functools.lru_cache(maxsize=None)
def _truth(case_id):
    """(float64 model, x, seed, y, gradient). "reference": central differences in float64 (onnxruntime,
    else the reference evaluator). "ort_linear", for ops linear in X: onnxruntime's float32 kernel
    applied to +-e_i (a central difference with step 1, exact for a linear map up to float32
    rounding), held to RTOL32."""
    c = CASES[case_id]
    model = c.build(np.float64)
    x = c.x(np.float64)
    if c.truth == "ort_linear":  # affine maps too: the central difference cancels the constant
        session = ort_session(c.build(np.float32))
        forward32 = lambda v: session.run(None, {"X": v.astype(np.float32)})[0]  # noqa: E731
        y = forward32(x)
        seed = np.random.default_rng(7).normal(size=y.shape)
        return model, x, seed, y, fd_gradient(forward32, np.zeros_like(x), seed, 1.0)
    run = Runner(model)
    y = run({"X": x})[0]
    seed = np.random.default_rng(7).normal(size=y.shape)
    return model, x, seed, y, fd_gradient(lambda v: run({"X": v})[0], x, seed, EPS64)


def _tolerance(c):
    return max(RTOL32, c.rtol) if c.truth == "ort_linear" else c.rtol


def _params():
    return [pytest.param(c.id, id=c.id, marks=list(c.marks)) for c in CASES.values()]


def vjp_gradient(model, x, seed, allow_reference=True, **kw):
    run = Runner(_vjp(model, **kw), allow_reference=allow_reference)
    y, g = run({"X": x, "Y_grad": seed}, ["Y", "X_grad"])
    return y, g


@pytest.mark.parametrize("case_id", _params())
def test_vjp_matches_finite_differences_float64(case_id):
    c = CASES[case_id]
    if c.skip64:
        pytest.skip(c.skip64)
    model, x, seed, y, g_fd = _truth(case_id)
    y_v, g = vjp_gradient(model, x, seed)
    assert g.dtype == np.float64 and g.shape == x.shape
    if c.truth == "reference":
        np.testing.assert_allclose(y_v, y, rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(g_fd)) > 0
    err = max_rel_err(g, g_fd)
    assert err <= _tolerance(c), f"{case_id}: max rel err {err:.3g}\nvjp=\n{g}\nfd=\n{g_fd}"


@pytest.mark.parametrize("case_id", _params())
def test_vjp_float32_runs_in_onnxruntime(case_id):
    c = CASES[case_id]
    _, x, seed, y64, g_fd = _truth(case_id)
    vjp = _vjp(c.build(np.float32))
    y, g = ort_session(vjp).run(["Y", "X_grad"], {"X": x.astype(np.float32), "Y_grad": seed.astype(np.float32)})
    np.testing.assert_allclose(y, y64, rtol=1e-5, atol=1e-5)
    err = max_rel_err(g, g_fd)
    assert err <= max(RTOL32, c.rtol), f"{case_id}: max rel err {err:.3g}"


# ---------------------------------------------------------------- ConvTranspose under LRP, against Zennit
@pytest.mark.parametrize("composite", ["lrp_epsilon_plus_flat", "lrp_epsilon_alpha2_beta1_flat",
                                       "lrp_epsilon_gamma_box"])
def test_conv_transpose_lrp_matches_zennit(composite):
    """Conv -> Relu -> ConvTranspose (stride 2, pads, output_padding) -> Relu -> Conv: the
    ConvTranspose takes the composite's convolution rule, as Zennit's Convolution type includes
    the transposed convolutions."""
    torch = pytest.importorskip("torch")
    zennit = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient

    rng = np.random.default_rng(17)
    w1, b1 = rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3) * 0.1
    w2, b2 = rng.normal(size=(3, 4, 3, 3)), rng.normal(size=4) * 0.1
    w3, b3 = rng.normal(size=(2, 4, 3, 3)), rng.normal(size=2) * 0.1
    x = rng.uniform(0, 1, size=(2, 2, 4, 5))
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
                              torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3)).double()
    with torch.no_grad():
        for layer, (w, b) in zip((net[0], net[2], net[4]), ((w1, b1), (w2, b2), (w3, b3))):
            layer.weight.copy_(torch.tensor(w))
            layer.bias.copy_(torch.tensor(b))
    seed = rng.normal(size=tuple(net(torch.tensor(x)).shape))
    made = {"lrp_epsilon_plus_flat": lambda: zennit.EpsilonPlusFlat(),
            "lrp_epsilon_alpha2_beta1_flat": lambda: zennit.EpsilonAlpha2Beta1Flat(),
            "lrp_epsilon_gamma_box": lambda: zennit.EpsilonGammaBox(low=0.0, high=1.0)}[composite]()
    with Gradient(net, made) as attributor:
        _, want = attributor(torch.tensor(x), torch.tensor(seed))
    # the ZBox bounds are float32 inputs: that composite runs in float32 (onnxruntime), the others in float64
    dtype = np.float32 if composite == "lrp_epsilon_gamma_box" else np.float64
    model = make_model([node("Conv", ["X", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r1"]),
                        node("ConvTranspose", ["r1", "w2", "b2"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1],
                             output_padding=[1, 1]),
                        node("Relu", ["t"], ["r2"]), node("Conv", ["r2", "w3", "b3"])],
                       [("X", dtype, list(x.shape))], [("Y", dtype, list(seed.shape))],
                       {k: v.astype(dtype) for k, v in dict(w1=w1, b1=b1, w2=w2, b2=b2, w3=w3, b3=b3).items()})
    vjp = gnl_onnx.vjp_model(model, rule=composite, bounds=(0.0, 1.0))
    rules = {entry["op"]: entry["rule"] for entry in gnl_onnx.vjp_report(vjp)["rules"]}
    assert rules["ConvTranspose"] == {"lrp_epsilon_plus_flat": "zplus", "lrp_epsilon_alpha2_beta1_flat": "alpha2_beta1",
                                      "lrp_epsilon_gamma_box": "gamma"}[composite]
    got = Runner(vjp)({"X": x.astype(dtype), "Y_grad": seed.astype(dtype)}, ["X_grad"])[0]
    err = max_rel_err(got, want.numpy())
    assert err < (1e-8 if dtype == np.float64 else 1e-4), err


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_gradient_matches_torchvision_autograd(aligned):
    """torchvision.ops.roi_align (avg): aligned=True is ONNX's half_pixel, False output_half_pixel;
    the gradient of the feature map in float64, adaptive and fixed sampling."""
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(41)
    x = rng.normal(size=(2, 3, 6, 7))
    for ratio in (0, 2):
        seed = rng.normal(size=(len(_ROIS), 3, 3, 2))
        xt = torch.tensor(x, requires_grad=True)
        boxes = torch.tensor(np.concatenate([_ROI_BATCH[:, None].astype(np.float64), _ROIS], axis=1))
        ops.roi_align(xt, boxes, (3, 2), spatial_scale=0.5, sampling_ratio=ratio if ratio else -1,
                      aligned=aligned).backward(torch.tensor(seed))
        model = make_model([node("RoiAlign", ["X", "rois", "bi"], mode="avg", output_height=3, output_width=2,
                                 coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
                                 sampling_ratio=ratio, spatial_scale=0.5)],
                           [("X", np.float64, list(x.shape))], [("Y", np.float64, list(seed.shape))],
                           {"rois": _ROIS, "bi": _ROI_BATCH})
        got = vjp_gradient(model, x, seed)[1]
        assert max_rel_err(got, xt.grad.numpy()) < 1e-12
