"""A small random-weight Flax (nnx) CNN, its jax2onnx export, and JAX's own input gradients.

The network is what a Flax user writes for images (NHWC): Conv + BatchNorm + relu, max pooling,
Conv + leaky_relu, average pooling, depthwise Conv + relu6, flatten, Linear to logits. `export()`
writes it with jax2onnx.to_onnx (dynamic batch "B", jax2onnx's default opset) into the cache.
`input_gradient(model, x, seed, guided=...)` is jax.grad of sum(seed * model(x)); guided patches
flax.nnx's relu, relu6, leaky_relu and max_pool (what the model calls at run time) with
custom_vjp wrappers whose backward is the unit's own VJP applied to max(g, 0) (the "paper" gating
of tests/torch_reference.py). dtype="float64" runs the same parameters in float64 (x64 enabled for
the call only) for JAX's own float32-vs-float64 error. Needs jax, flax and jax2onnx.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .cache import exclusive, exports_root as cache_root, save_whole

SIZE = 32
CLASSES = 10
SEED = 0
RECIPE = 1
# nnx function -> the ONNX op jax2onnx writes for it (the units the "paper" gating gates).
GATED = {"relu": "Relu", "relu6": "Clip", "leaky_relu": "LeakyRelu", "max_pool": "MaxPool"}


class SmallCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, (3, 3), strides=(1, 1), rngs=rngs)
        self.conv3 = nnx.Conv(32, 32, (3, 3), feature_group_count=32, rngs=rngs)
        self.linear = nnx.Linear(32 * 4 * 4, CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))                  # 16 x 16
        x = nnx.leaky_relu(self.conv2(x), negative_slope=0.1)
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))                  # 8 x 8
        x = nnx.relu6(self.conv3(x))
        x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")  # 4 x 4
        return self.linear(x.reshape(x.shape[0], -1))


def build(seed: int = SEED) -> SmallCNN:
    """SmallCNN with seeded random parameters and BatchNorm statistics that are not the identity."""
    model = SmallCNN(nnx.Rngs(seed))
    rng = np.random.default_rng(seed + 1)
    bn = model.bn1
    bn.mean.set_value(jnp.asarray(0.2 * rng.standard_normal(16), jnp.float32))
    bn.var.set_value(jnp.asarray(0.5 + rng.random(16), jnp.float32))
    bn.scale.set_value(jnp.asarray(0.5 + rng.random(16), jnp.float32))
    bn.bias.set_value(jnp.asarray(0.2 * rng.standard_normal(16), jnp.float32))
    for conv in (model.conv1, model.conv2, model.conv3):
        shape = conv.bias.get_value().shape
        conv.bias.set_value(jnp.asarray(0.05 * rng.standard_normal(shape), jnp.float32))
    return model


def sample_input(batch: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((batch, SIZE, SIZE, 3)).astype(np.float32)




def export_path(cache_dir: str | os.PathLike | None = None, seed: int = SEED) -> pathlib.Path:
    import jax2onnx  # noqa: F401
    from importlib.metadata import version

    tag = re.sub(r"[^A-Za-z0-9.-]", "_", f"jax{jax.__version__}-flax{version('flax')}-jax2onnx{version('jax2onnx')}")
    return cache_root(cache_dir) / f"jax-smallcnn-{SIZE}px-seed{seed}-r{RECIPE}-{tag}.onnx"


def export(cache_dir: str | os.PathLike | None = None, seed: int = SEED,
           model: SmallCNN | None = None) -> pathlib.Path:
    """jax2onnx.to_onnx(model, [("B", SIZE, SIZE, 3)]) as users call it; reused when present,
    written atomically."""
    from jax2onnx import to_onnx

    path = export_path(cache_dir, seed)
    if path.is_file():
        return path
    with exclusive(path):  # written once across processes (cache.exclusive)
        if path.is_file():
            return path
        model = build(seed) if model is None else model
        proto = to_onnx(model, [("B", SIZE, SIZE, 3)], model_name="smallcnn",
                        input_names=["input"], output_names=["logits"])
        return save_whole(proto.SerializeToString(), path)


def _guided(fn, name: str, calls: collections.Counter | None):
    def wrapped(x, *args, **kwargs):
        if calls is not None:
            calls[GATED[name]] += 1
        unit = lambda x: fn(x, *args, **kwargs)  # noqa: E731

        @jax.custom_vjp
        def f(x):
            return unit(x)

        def fwd(x):
            return jax.vjp(unit, x)

        def bwd(vjp, g):
            return vjp(jax.nn.relu(g))

        f.defvjp(fwd, bwd)
        return f(x)

    return wrapped


@contextlib.contextmanager
def guided_units(calls: collections.Counter | None = None):
    """While active, nnx.relu / relu6 / leaky_relu / max_pool back-propagate max(g, 0)."""
    saved = {name: getattr(nnx, name) for name in GATED}
    try:
        for name, fn in saved.items():
            setattr(nnx, name, _guided(fn, name, calls))
        yield
    finally:
        for name, fn in saved.items():
            setattr(nnx, name, fn)


def input_gradient(model: SmallCNN, x: np.ndarray, seed: np.ndarray, guided: bool = False,
                   dtype=np.float32, calls: collections.Counter | None = None) -> np.ndarray:
    """d(sum(seed * model(x))) / dx in `dtype` (float64: parameters cast, x64 on for the call)."""
    with jax.enable_x64(dtype == np.float64):
        graphdef, state = nnx.split(model)
        state = jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                             state)
        m = nnx.merge(graphdef, state)
        xs, ss = jnp.asarray(x, dtype), jnp.asarray(seed, dtype)
        ctx = guided_units(calls) if guided else contextlib.nullcontext()
        with ctx:
            grad = jax.grad(lambda v: jnp.sum(m(v) * ss))(xs)
        return np.asarray(grad)


def logits(model: SmallCNN, x: np.ndarray, dtype=np.float32) -> np.ndarray:
    with jax.enable_x64(dtype == np.float64):
        graphdef, state = nnx.split(model)
        state = jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                             state)
        return np.asarray(nnx.merge(graphdef, state)(jnp.asarray(x, dtype)))
