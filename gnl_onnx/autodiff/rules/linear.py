"""Matrix products."""
from __future__ import annotations

from ...errors import UnsupportedModelError
from . import rule


@rule("Gemm")
def gemm(g, node, dy):
    # y = alpha * op(A) @ op(B) + beta * C, op = optional transpose
    a, b = node.inputs[0], node.inputs[1]
    c = node.input(2)
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    scaled = dy if alpha == 1.0 else g.op("Mul", dy, g.const(alpha))
    da = db = dc = None
    if g.wants(a):  # d op(A) = dY @ op(B)^T
        da = (g.op("Gemm", b, scaled, transA=trans_b, transB=1) if trans_a
              else g.op("Gemm", scaled, b, transB=1 - trans_b))
    if g.wants(b):  # d op(B) = op(A)^T @ dY
        db = (g.op("Gemm", scaled, a, transA=1, transB=trans_a) if trans_b
              else g.op("Gemm", a, scaled, transA=1 - trans_a))
    if c is not None and g.wants(c):
        dc = g.unbroadcast(dy if beta == 1.0 else g.op("Mul", dy, g.const(beta)), c, node.outputs[0])
    return [da, db, dc]


def _swap_last_axes(g, value, rank):
    perm = list(range(rank))
    perm[-2:] = perm[-1], perm[-2]
    return g.op("Transpose", value, perm=perm)


@rule("MatMul")
def matmul(g, node, dy):
    a, b = node.inputs
    y = node.outputs[0]
    rank_a, rank_b, out_shape = g.rank(a), g.rank(b), g.shape(y)
    if not rank_a or not rank_b or rank_a < 2 or rank_b < 2 or out_shape is None:
        raise UnsupportedModelError({"MatMul (1-D operand or unknown rank)": [node.name]},
                                    hint="export the model with 2-D or batched matrix products")
    batch = out_shape[:-2]
    da = db = None
    if g.wants(a):  # dA = dY @ B^T, summed over the batch axes A was broadcast along
        da = g.unbroadcast(g.op("MatMul", dy, _swap_last_axes(g, b, rank_b)), a, batch + g.shape(a)[-2:])
    if g.wants(b):  # dB = A^T @ dY
        db = g.unbroadcast(g.op("MatMul", _swap_last_axes(g, a, rank_a), dy), b, batch + g.shape(b)[-2:])
    return [da, db]
