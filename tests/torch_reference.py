"""Guided-gradient reference in torch, independent of gnl_onnx.

`guided_backprop()` is a context manager that, while active, swaps torch's rectifier and max-pool
functionals for autograd Functions whose backward lets only positive gradients through
(Springenberg et al.'s guided backpropagation, the "paper" gating of METHOD.md):

    relu:                 relu(g) * 1[x > 0]
    hardtanh / relu6:     relu(g) * 1[lo < x < hi]
    leaky_relu / prelu:   relu(g) * (1 if x > 0 else slope)
    max_pool2d:           torch's own max-pool gradient applied to relu(g)

nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU and nn.MaxPool2d call these functionals
at run time, so patching torch.nn.functional catches modules, functional calls and in-place
variants alike. Forward values are untouched. Only input gradients are meaningful under the patch
(PReLU's weight gets no gradient).

`patched(guided, gates=...)` is the general form: with guided=False the backward is the ordinary
one, and `gates` can impose, unit by unit in call order, the values that decide each gate (the
pre-activation, and for max-pooling optionally the selected indices). A float64 reference then
uses exactly the gates a float32 run took, so gates within rounding of their threshold cannot
flip between the two; see tests/test_architectures.py.

gate="all" (patched, guided_backprop, input_gradient) also gates GELU, as gnl_onnx's gate="all"
gates a Gelu node (tests/test_transformers.py):

    gelu (both approximations):  relu(g) * gelu'(x), gelu' from torch's own GELU backward

Only GELU: the other units gate="all" adds (Sigmoid, Tanh, HardSwish, ...) are not patched. GELU is
smooth, so it takes no imposed `gates` (nothing for float32 rounding to flip) and is counted as
calls["gelu"]. Exporters below opset 20 write GELU as Erf arithmetic, which gnl_onnx does not
gate; the caller decides whether the graph it compares with has a Gelu node.
"""

from __future__ import annotations

import collections
import contextlib
import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.utils import _pair

# The originals, captured once at import so nested or repeated patching can never recurse.
_F_HARDTANH = F.hardtanh
_F_LEAKY = F.leaky_relu
_F_PRELU = F.prelu
_F_MAXPOOL_IDX = F.max_pool2d_with_indices
_F_GELU = F.gelu
_T_RELU = torch.relu
_T_RELU_ = torch.relu_

# ONNX op type of each patched kind (what a gnl_onnx report calls the same unit).
ONNX_OP = {"relu": "Relu", "hardtanh": "Clip", "max_pool2d": "MaxPool",
           "leaky_relu": "LeakyRelu", "prelu": "PRelu", "gelu": "Gelu"}


class GateMismatch(AssertionError):
    """Imposed gate values do not line up with the units the torch forward pass runs."""


class _State:
    guided = True
    calls: collections.Counter | None = None
    gates: list[dict] | None = None
    next_gate = 0


def _count(kind: str) -> None:
    if _State.calls is not None:
        _State.calls[kind] += 1


def _decider(kind: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tensor whose values decide this unit's gate (x itself, or the imposed values), and
    imposed max-pool indices if any."""
    gates = _State.gates
    if gates is None:
        return x, None
    i = _State.next_gate
    if i >= len(gates):
        raise GateMismatch(f"torch runs more gated units than the {len(gates)} imposed")
    gate = gates[i]
    _State.next_gate += 1
    z = torch.as_tensor(np.asarray(gate["input"])).to(x.dtype)
    if gate["op"] != ONNX_OP[kind] or tuple(z.shape) != tuple(x.shape):
        raise GateMismatch(f"gated unit {i}: torch runs {kind} on {tuple(x.shape)}, imposed "
                           f"{gate['op']} on {tuple(z.shape)}")
    # The imposed values are the same activations computed elsewhere (float32, maybe with
    # BatchNorm folded): they must agree up to rounding, else the order got mixed up.
    scale = float(x.detach().abs().max())
    diff = float((z - x.detach()).abs().max())
    if diff > 1e-3 * scale + 1e-30:
        raise GateMismatch(f"gated unit {i} ({kind} {tuple(x.shape)}): imposed values differ "
                           f"from torch's by {diff:.3g} (max |x| {scale:.3g})")
    idx = gate.get("indices")
    return z, None if idx is None else torch.as_tensor(np.asarray(idx))


def _back(g: torch.Tensor) -> torch.Tensor:
    return g.clamp_min(0) if _State.guided else g


class _Relu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, inplace):
        z, _ = _decider("relu", x)
        ctx.mask = z > 0
        if inplace:
            _T_RELU_(x)
            ctx.mark_dirty(x)
            return x
        return _T_RELU(x)

    @staticmethod
    def backward(ctx, g):
        return _back(g) * ctx.mask, None


class _Hardtanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lo, hi, inplace):
        z, _ = _decider("hardtanh", x)
        ctx.mask = (z > lo) & (z < hi)
        if inplace:
            _F_HARDTANH(x, lo, hi, inplace=True)
            ctx.mark_dirty(x)
            return x
        return _F_HARDTANH(x, lo, hi)

    @staticmethod
    def backward(ctx, g):
        return _back(g) * ctx.mask, None, None, None


class _LeakyRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, slope, inplace):
        z, _ = _decider("leaky_relu", x)
        ctx.slope_map = torch.where(z > 0, torch.ones_like(x), torch.full_like(x, slope))
        if inplace:
            _F_LEAKY(x, slope, inplace=True)
            ctx.mark_dirty(x)
            return x
        return _F_LEAKY(x, slope)

    @staticmethod
    def backward(ctx, g):
        return _back(g) * ctx.slope_map, None, None


class _PRelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        z, _ = _decider("prelu", x)
        w = weight.detach()
        if w.numel() > 1 and x.dim() > 1:  # one slope per channel (dim 1)
            w = w.reshape((1, -1) + (1,) * (x.dim() - 2))
        ctx.slope_map = torch.where(z > 0, torch.ones_like(x), w.expand_as(x).to(x.dtype))
        return _F_PRELU(x, weight)

    @staticmethod
    def backward(ctx, g):
        return _back(g) * ctx.slope_map, None


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        z, imposed = _decider("max_pool2d", x)
        out, idx = _F_MAXPOOL_IDX(x, kernel_size, stride, padding, dilation, ceil_mode, True)
        if z is not x:
            _, idx = _F_MAXPOOL_IDX(z, kernel_size, stride, padding, dilation, ceil_mode, True)
        if imposed is not None:
            if tuple(imposed.shape) != tuple(idx.shape):
                raise GateMismatch(f"max-pool indices {tuple(imposed.shape)} vs output "
                                   f"{tuple(idx.shape)}")
            # ONNX MaxPool indices count over the whole N x C x H x W tensor, torch's over one
            # H x W plane.
            idx = imposed.to(torch.int64) % (x.shape[-2] * x.shape[-1])
        ctx.save_for_backward(x, idx)
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    def backward(ctx, g, _g_idx):
        x, idx = ctx.saved_tensors
        k, s, p, d, c = ctx.args
        gx = torch.ops.aten.max_pool2d_with_indices_backward(_back(g), x, k, s, p, d, c, idx)
        return gx, None, None, None, None, None


class _Gelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, approximate):
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return _F_GELU(x, approximate=approximate)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():  # torch's own GELU derivative, applied to the gated gradient
            xx = x.detach().requires_grad_(True)
            (gx,) = torch.autograd.grad(_F_GELU(xx, approximate=ctx.approximate), xx, _back(g))
        return gx, None


def _gelu(input, approximate="none"):
    _count("gelu")
    return _Gelu.apply(input, approximate)


def _relu(input, inplace=False):
    _count("relu")
    return _Relu.apply(input, inplace)


def _relu_(input):
    _count("relu")
    return _Relu.apply(input, True)


def _hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    _count("hardtanh")
    return _Hardtanh.apply(input, float(min_val), float(max_val), inplace)


def _hardtanh_(input, min_val=-1.0, max_val=1.0):
    _count("hardtanh")
    return _Hardtanh.apply(input, float(min_val), float(max_val), True)


def _relu6(input, inplace=False):
    _count("hardtanh")
    return _Hardtanh.apply(input, 0.0, 6.0, inplace)


def _leaky_relu(input, negative_slope=0.01, inplace=False):
    _count("leaky_relu")
    return _LeakyRelu.apply(input, float(negative_slope), inplace)


def _leaky_relu_(input, negative_slope=0.01):
    _count("leaky_relu")
    return _LeakyRelu.apply(input, float(negative_slope), True)


def _prelu(input, weight):
    _count("prelu")
    return _PRelu.apply(input, weight)


def _max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                return_indices=False):
    _count("max_pool2d")
    k = list(_pair(kernel_size))
    s = k if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) \
        else list(_pair(stride))
    out, idx = _MaxPool2d.apply(input, k, s, list(_pair(padding)), list(_pair(dilation)),
                                bool(ceil_mode))
    return (out, idx) if return_indices else out


def _tensor_relu(self):
    _count("relu")
    return _Relu.apply(self, False)


def _tensor_relu_(self):
    _count("relu")
    return _Relu.apply(self, True)


_PATCHES = [
    (F, "relu", _relu),
    (F, "relu_", _relu_),
    (F, "relu6", _relu6),
    (F, "hardtanh", _hardtanh),
    (F, "hardtanh_", _hardtanh_),
    (F, "leaky_relu", _leaky_relu),
    (F, "leaky_relu_", _leaky_relu_),
    (F, "prelu", _prelu),
    (F, "max_pool2d", _max_pool2d),
    (torch, "relu", _relu),
    (torch, "relu_", _relu_),
    (torch.Tensor, "relu", _tensor_relu),
    (torch.Tensor, "relu_", _tensor_relu_),
]
# Patched only with gate="all".
_ALL_PATCHES = [
    (F, "gelu", _gelu),
]
GATES = ("paper", "all")


@contextlib.contextmanager
def patched(guided: bool = True, calls: collections.Counter | None = None,
            gates: Sequence[dict] | None = None, gate: str = "paper"):
    """Route rectifiers and max-pooling through the Functions above while active.

    guided: back-propagate only positive gradients through them (else the ordinary gradient).
    calls: if given, every patched call adds 1 to calls[kind] (kind: relu, hardtanh,
        leaky_relu, prelu, max_pool2d): the gated units one forward pass went through.
    gates: if given, one dict per gated unit in call order, {"op": ONNX op type, "input":
        array deciding the gate, optional "indices": ONNX MaxPool indices}; they replace the
        unit's own input values for the gate decision only. GateMismatch if they do not line up.
    gate: "paper" (the units above) or "all" (GELU too, kind "gelu"; never takes `gates`).
    """
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, not {gate!r}")
    saved = []
    outer = (_State.guided, _State.calls, _State.gates, _State.next_gate)
    _State.guided, _State.calls = guided, calls
    _State.gates, _State.next_gate = (None if gates is None else list(gates)), 0
    try:
        for owner, name, fn in _PATCHES + (_ALL_PATCHES if gate == "all" else []):
            # Remember whether the attribute lived on this object or was inherited (Tensor methods
            # come from the C base class), so restoring leaves things exactly as they were.
            own = name in vars(owner)
            saved.append((owner, name, own, getattr(owner, name)))
            setattr(owner, name, fn)
        yield
        if _State.gates is not None and _State.next_gate != len(_State.gates):
            raise GateMismatch(f"{len(_State.gates)} gated units imposed, torch ran "
                               f"{_State.next_gate}")
    finally:
        for owner, name, own, orig in reversed(saved):
            if own:
                setattr(owner, name, orig)
            else:
                delattr(owner, name)
        _State.guided, _State.calls, _State.gates, _State.next_gate = outer


def guided_backprop(calls: collections.Counter | None = None, gate: str = "paper"):
    """While active, rectifiers and max-pooling (and GELU with gate="all") back-propagate only
    positive gradients."""
    return patched(True, calls, gate=gate)


def input_gradient(module: torch.nn.Module, x, seed, guided: bool = False,
                   dtype: torch.dtype = torch.float32,
                   calls: collections.Counter | None = None,
                   gates: Sequence[dict] | None = None, gate: str = "paper") -> np.ndarray:
    """d(sum(seed * module(x))) / dx as a numpy array, computed in `dtype`.

    The module is copied before a dtype change so the caller's weights stay as they are.
    `calls`, `gates` and `gate`: see patched(); `calls` or `gates` patch the plain gradient too.
    """
    params = list(module.parameters()) + list(module.buffers())
    if any(p.is_floating_point() and p.dtype != dtype for p in params):
        module = copy.deepcopy(module).to(dtype)
    module.eval()
    xt = torch.as_tensor(np.asarray(x)).to(dtype).requires_grad_(True)
    st = torch.as_tensor(np.asarray(seed)).to(dtype)
    if guided or calls is not None or gates is not None:
        ctx = patched(guided, calls, gates, gate)
    else:
        ctx = contextlib.nullcontext()
    with ctx, torch.enable_grad():
        # Clone so an in-place first layer can never touch the leaf.
        out = module(xt.clone())
        (gx,) = torch.autograd.grad((out * st).sum(), xt)
    return gx.detach().numpy()
