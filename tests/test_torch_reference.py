"""The guided torch reference must really be active: checked against hand computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_reference import guided_backprop, input_gradient

RNG = np.random.default_rng(1234)


def relu(a):
    return np.maximum(a, 0.0)


# Each rectifier variant as (torch callable, numpy forward, numpy d/dx mask-or-slope).
ACTS = {
    "F.relu": (lambda t: F.relu(t), relu, lambda a: (a > 0) * 1.0),
    "F.relu_inplace": (lambda t: F.relu(t, inplace=True), relu, lambda a: (a > 0) * 1.0),
    "F.relu_": (lambda t: F.relu_(t), relu, lambda a: (a > 0) * 1.0),
    "torch.relu": (lambda t: torch.relu(t), relu, lambda a: (a > 0) * 1.0),
    "torch.relu_": (lambda t: torch.relu_(t), relu, lambda a: (a > 0) * 1.0),
    "Tensor.relu": (lambda t: t.relu(), relu, lambda a: (a > 0) * 1.0),
    "Tensor.relu_": (lambda t: t.relu_(), relu, lambda a: (a > 0) * 1.0),
    "nn.ReLU_inplace": (nn.ReLU(inplace=True), relu, lambda a: (a > 0) * 1.0),
    "nn.ReLU6": (nn.ReLU6(), lambda a: np.clip(a, 0, 6), lambda a: ((a > 0) & (a < 6)) * 1.0),
    "F.relu6_inplace": (lambda t: F.relu6(t, inplace=True), lambda a: np.clip(a, 0, 6),
                        lambda a: ((a > 0) & (a < 6)) * 1.0),
    "nn.Hardtanh": (nn.Hardtanh(-0.5, 0.7), lambda a: np.clip(a, -0.5, 0.7),
                    lambda a: ((a > -0.5) & (a < 0.7)) * 1.0),
    "F.hardtanh_": (lambda t: F.hardtanh_(t, -0.5, 0.7), lambda a: np.clip(a, -0.5, 0.7),
                    lambda a: ((a > -0.5) & (a < 0.7)) * 1.0),
    "nn.LeakyReLU": (nn.LeakyReLU(0.2), lambda a: np.where(a > 0, a, 0.2 * a),
                     lambda a: np.where(a > 0, 1.0, 0.2)),
    "F.leaky_relu_": (lambda t: F.leaky_relu_(t, 0.2), lambda a: np.where(a > 0, a, 0.2 * a),
                      lambda a: np.where(a > 0, 1.0, 0.2)),
}


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class TwoLayer(nn.Module):
    def __init__(self, w1, w2, act):
        super().__init__()
        self.l1 = nn.Linear(w1.shape[1], w1.shape[0], bias=False)
        self.l2 = nn.Linear(w2.shape[1], w2.shape[0], bias=False)
        self.double()  # the hand computation is float64; float32 weights would round
        with torch.no_grad():
            self.l1.weight.copy_(torch.from_numpy(w1))
            self.l2.weight.copy_(torch.from_numpy(w2))
        self.act = act if isinstance(act, nn.Module) else Lambda(act)

    def forward(self, x):
        return self.act(self.l2(self.act(self.l1(x))))


@pytest.mark.parametrize("name", list(ACTS))
def test_two_layer_guided_matches_hand_computation(name):
    act, fwd, dact = ACTS[name]
    rng = np.random.default_rng(list(ACTS).index(name))
    w1 = rng.normal(size=(16, 5))
    w2 = rng.normal(size=(12, 16))
    x = rng.normal(size=(4, 5)) * 2
    s = rng.normal(size=(4, 12))
    net = TwoLayer(w1, w2, act)

    a1 = x @ w1.T
    a2 = fwd(a1) @ w2.T
    plain = ((s * dact(a2)) @ w2 * dact(a1)) @ w1
    guided = (relu((relu(s) * dact(a2)) @ w2) * dact(a1)) @ w1
    # The double relu is the point: the gradient reaching the first unit is re-gated.
    assert not np.allclose(guided, ((relu(s) * dact(a2)) @ w2 * dact(a1)) @ w1)

    got_plain = input_gradient(net, x, s, guided=False, dtype=torch.float64)
    got_guided = input_gradient(net, x, s, guided=True, dtype=torch.float64)
    np.testing.assert_allclose(got_plain, plain, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_guided, guided, rtol=1e-10, atol=1e-12)
    assert not np.allclose(got_guided, got_plain)


def test_prelu_per_channel():
    slopes = np.array([0.1, 0.3, -0.2])
    m = nn.PReLU(3).double()
    with torch.no_grad():
        m.weight.copy_(torch.from_numpy(slopes))
    x = RNG.normal(size=(2, 3, 4, 4))
    s = RNG.normal(size=(2, 3, 4, 4))
    slope_map = np.where(x > 0, 1.0, slopes[None, :, None, None])
    got = input_gradient(m, x, s, guided=True, dtype=torch.float64)
    np.testing.assert_allclose(got, relu(s) * slope_map, rtol=1e-12)
    np.testing.assert_allclose(input_gradient(m, x, s, dtype=torch.float64), s * slope_map,
                               rtol=1e-12)


def _numpy_maxpool_guided(x, s, k, st, p, ceil_mode):
    """Route relu(seed) to the window maxima by brute force (first max wins, like torch)."""
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * p, w + 2 * p), -np.inf)
    xp[:, :, p:p + h, p:p + w] = x
    grad = np.zeros_like(xp)
    oh, ow = s.shape[2:]
    for i in range(oh):
        for j in range(ow):
            win = xp[:, :, i * st:i * st + k, j * st:j * st + k]
            flat = win.reshape(n, c, -1).argmax(-1)
            for b in range(n):
                for ch in range(c):
                    di, dj = divmod(flat[b, ch], win.shape[3])
                    grad[b, ch, i * st + di, j * st + dj] += relu(s[b, ch, i, j])
    return grad[:, :, p:p + h, p:p + w]


@pytest.mark.parametrize("k,st,p,ceil_mode,size", [(3, 2, 1, False, 9), (3, 2, 0, True, 8),
                                                  (2, 2, 0, False, 6)])
def test_maxpool_guided_matches_hand_computation(k, st, p, ceil_mode, size):
    pool = nn.MaxPool2d(k, st, p, ceil_mode=ceil_mode)
    x = RNG.normal(size=(2, 3, size, size))
    with torch.no_grad():
        oshape = pool(torch.from_numpy(x)).shape
    s = RNG.normal(size=tuple(oshape))
    got = input_gradient(pool, x, s, guided=True, dtype=torch.float64)
    want = _numpy_maxpool_guided(x, s, k, st, p, ceil_mode)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert (got >= 0).all() and (got > 0).any()
    plain = input_gradient(pool, x, s, dtype=torch.float64)
    assert (plain < 0).any()


class TinyNet(nn.Module):
    """Starts with a gated unit, so the guided input gradient must be >= 0 and 0 where x <= 0."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 6)

    def forward(self, x):
        x = F.relu(x, inplace=True)
        x = torch.relu(self.conv1(x))
        x = self.pool(x)
        x = self.conv2(x).relu()
        return self.fc(x.flatten(1))


def test_tiny_net_guided_is_active_and_restored():
    torch.manual_seed(0)
    net = TinyNet().eval()
    x = RNG.normal(size=(2, 3, 8, 8))
    s = RNG.normal(size=(2, 6))
    plain = input_gradient(net, x, s, dtype=torch.float64)
    guided = input_gradient(net, x, s, guided=True, dtype=torch.float64)
    assert (plain < 0).any()
    assert (guided >= 0).all() and (guided > 0).any()
    assert (guided[x <= 0] == 0).all()
    assert not np.allclose(plain, guided)

    # Forward values are unchanged under the patch.
    xt = torch.from_numpy(x).float()
    with torch.no_grad():
        ref = net(xt.clone())
        with guided_backprop():
            patched = net(xt.clone())
    torch.testing.assert_close(patched, ref, rtol=0, atol=0)

    # Everything is restored afterwards: a plain run again matches the first plain run.
    assert F.relu.__module__ == "torch.nn.functional"
    assert "relu" not in vars(torch.Tensor)
    np.testing.assert_array_equal(input_gradient(net, x, s, dtype=torch.float64), plain)


def test_call_counter_counts_each_gated_unit():
    import collections
    torch.manual_seed(0)
    net = TinyNet().eval()
    calls = collections.Counter()
    input_gradient(net, RNG.normal(size=(1, 3, 8, 8)), RNG.normal(size=(1, 6)), guided=True,
                   calls=calls)
    assert calls == {"relu": 3, "max_pool2d": 1}


def test_imposed_gates_decide_the_masks():
    """gates= replaces the values that decide each gate, in call order, plain and guided."""
    rng = np.random.default_rng(5)
    w1 = rng.normal(size=(16, 5))
    w2 = rng.normal(size=(12, 16))
    x = rng.normal(size=(1, 5))
    s = rng.normal(size=(1, 12))
    u = 3  # move x so that first-layer unit u sits just above its threshold
    x = x - ((x @ w1[u]) - 1e-9) * w1[u] / (w1[u] @ w1[u])
    net = TwoLayer(w1, w2, nn.ReLU())
    a1 = x @ w1.T
    a2 = relu(a1) @ w2.T
    # Own values imposed: the ordinary results.
    own = [{"op": "Relu", "input": a1}, {"op": "Relu", "input": a2}]
    for guided in (False, True):
        np.testing.assert_allclose(
            input_gradient(net, x, s, guided=guided, dtype=torch.float64, gates=own),
            input_gradient(net, x, s, guided=guided, dtype=torch.float64), rtol=1e-12)
    # Flip unit u by nudging it across 0 (as float32 rounding could; within the value check).
    assert 0 < a1[0, u] < 1e-8
    nudged = a1.copy()
    nudged[0, u] = -1e-9
    m1 = (nudged > 0) * 1.0
    m2 = (a2 > 0) * 1.0
    want_plain = ((s * m2) @ w2 * m1) @ w1
    want_guided = (relu((relu(s) * m2) @ w2) * m1) @ w1
    gates = [{"op": "Relu", "input": nudged}, {"op": "Relu", "input": a2}]
    got_plain = input_gradient(net, x, s, dtype=torch.float64, gates=gates)
    got_guided = input_gradient(net, x, s, guided=True, dtype=torch.float64, gates=gates)
    np.testing.assert_allclose(got_plain, want_plain, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got_guided, want_guided, rtol=1e-10, atol=1e-12)
    assert not np.allclose(got_plain, input_gradient(net, x, s, dtype=torch.float64))


def test_imposed_maxpool_indices_route_the_gradient():
    pool = nn.MaxPool2d(2)
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 3, 4, 4))
    s = np.abs(rng.normal(size=(2, 3, 2, 2))) + 0.1
    _, tidx = F.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    # ONNX-style indices over the whole tensor; move one selection to another window element.
    onnx_idx = tidx.numpy() + (np.arange(6).reshape(2, 3, 1, 1) * 16)
    n, c, i, j = 1, 2, 1, 0
    window = [(2 * i + di) * 4 + (2 * j + dj) for di in (0, 1) for dj in (0, 1)]
    other = next(w for w in window if w != tidx[n, c, i, j])
    onnx_idx[n, c, i, j] = (n * 3 + c) * 16 + other
    gates = [{"op": "MaxPool", "input": x, "indices": onnx_idx}]
    got = input_gradient(pool, x, s, dtype=torch.float64, gates=gates)
    want = np.zeros_like(x)
    flat = want.reshape(-1)
    np.add.at(flat, onnx_idx.reshape(-1), s.reshape(-1))
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("gates,match", [
    ([("Relu", "x")], "torch runs more gated units"),
    ([("MaxPool", "x"), ("Relu", "r")], "torch runs relu"),
    ([("Relu", "r"), ("Relu", "r")], "differ from torch"),
    ([("Relu", "x"), ("Relu", "r"), ("Relu", "r")], "3 gated units imposed, torch ran 2"),
])
def test_imposed_gates_must_line_up(gates, match):
    from torch_reference import GateMismatch
    net = nn.Sequential(nn.ReLU(), nn.ReLU())
    x = RNG.normal(size=(2, 3))
    vals = {"x": x, "r": relu(x)}
    # Sanity: the right gates are accepted.
    input_gradient(net, x, np.ones_like(x), dtype=torch.float64,
                   gates=[{"op": "Relu", "input": x}, {"op": "Relu", "input": relu(x)}])
    gates = [{"op": op, "input": vals[v]} for op, v in gates]
    with pytest.raises(GateMismatch, match=match):
        input_gradient(net, x, np.ones_like(x), dtype=torch.float64, gates=gates)
