"""Matrix products."""
from __future__ import annotations

from ...errors import UnsupportedModelError
from .registry import rule


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
    if rank_a is None or rank_b is None or out_shape is None:
        raise UnsupportedModelError({"MatMul (unknown rank)": [node.name]},
                                    hint="export the model with a fixed image size")
    if rank_a == 1 or rank_b == 1:
        return _matmul_with_vector(g, node, dy, rank_a, rank_b)
    batch = out_shape[:-2]
    da = db = None
    if g.wants(a):  # dA = dY @ B^T, summed over the batch axes A was broadcast along
        da = g.unbroadcast(g.op("MatMul", dy, _swap_last_axes(g, b, rank_b)), a, batch + g.shape(a)[-2:])
    if g.wants(b):  # dB = A^T @ dY
        db = g.unbroadcast(g.op("MatMul", _swap_last_axes(g, a, rank_a), dy), b, batch + g.shape(b)[-2:])
    return [da, db]


def _matmul_with_vector(g, node, dy, rank_a, rank_b):
    """numpy semantics: a 1-D operand is a row (left) or column (right) vector whose axis is dropped
    from the result; put that axis back, use the broadcast product, and sum to the operand."""
    a, b = node.inputs
    if rank_a == 1 and rank_b == 1:  # a scalar dot product
        return [g.op("Mul", dy, b), g.op("Mul", dy, a)]
    if rank_b == 1:  # y[..., i] = sum_k A[..., i, k] b[k]
        column = g.op("Unsqueeze", dy, g.ints([-1]))
        db = g.op("ReduceSum", g.op("Mul", column, a), g.ints(list(range(rank_a - 1))), keepdims=0)
        return [g.op("Mul", column, b), db]
    row = g.op("Unsqueeze", dy, g.ints([-2]))  # y[..., j] = sum_k a[k] B[..., k, j]
    da = g.op("MatMul", row, _swap_last_axes(g, b, rank_b))
    da = g.op("ReduceSum", da, g.ints(list(range(rank_b - 1))), keepdims=0)
    return [da, g.op("Mul", g.op("Unsqueeze", a, g.ints([-1])), row)]


def _einsum_terms(equation: str):
    """(input subscripts, output subscripts) of an Einsum equation; implicit outputs are the
    letters seen once, in alphabetical order."""
    equation = equation.replace(" ", "")
    inputs, _, output = equation.partition("->")
    terms = inputs.split(",")
    if "->" not in equation:
        letters = "".join(terms)
        output = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, output


@rule("Einsum")
def einsum(g, node, dy):
    # d/d operand k: the Einsum of the other operands and dy onto operand k's subscripts; a letter
    # only operand k has (summed away in the forward) comes back by broadcasting
    terms, output = _einsum_terms(node.attr("equation"))
    if "." in node.attr("equation") or any(len(set(t)) != len(t) for t in terms + [output]):
        raise UnsupportedModelError({"Einsum with an ellipsis or a repeated subscript (a diagonal)": [node.name]})
    grads = []
    for k, (name, term) in enumerate(zip(node.inputs, terms)):
        if not g.wants(name):
            grads.append(None)
            continue
        others = [(n, t) for j, (n, t) in enumerate(zip(node.inputs, terms)) if j != k]
        seen = set("".join(t for _, t in others) + output)
        kept = "".join(c for c in term if c in seen)
        equation = ",".join([t for _, t in others] + [output]) + "->" + kept
        grad = g.op("Einsum", *[n for n, _ in others], dy, equation=equation)
        if kept != term:
            grad = g.op("Unsqueeze", grad, g.ints([i for i, c in enumerate(term) if c not in seen]))
            grad = g.op("Expand", grad, g.runtime_shape(name))
        grads.append(grad)
    return grads
