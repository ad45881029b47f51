"""Relevance at nodes that are not linear layers.

    pass_through   R_in = R for the operand on the path (summed back over broadcast axes): Zennit's
                   Pass (activations, BatchNorm), used for every shape-keeping unit without an LRP
                   meaning of its own (activations, Softmax, LayerNorm, scales and shifts by constants)
    norm           R_i = x_i * chain_i(R / stab(y)): Zennit's Norm, the proportional split of sums
                   (Add, Sum, Sub, Mean) and averages (AveragePool, GlobalAveragePool, ReduceMean/Sum)
    half_product   a product of two path values (SE-block Mul, attention MatMul): each operand gets
                   half, R_i = 1/2 x_i * chain_i(R / stab(y)), which conserves relevance
    numerator      a quotient of two path values: the numerator takes all (R_a = R), the divisor none"""
from __future__ import annotations

from ..rules import RULES
from .linear import divide


def on_path(g, node):
    return [i for i, name in enumerate(node.inputs) if name and g.wants(name)]


def pass_through(g, node, r):
    grads = [None] * len(node.inputs)
    for i in on_path(g, node):
        grads[i] = g.unbroadcast(r, node.inputs[i], node.outputs[0])
    return grads


def norm(g, node, r, share: float = 1.0):
    s = divide(g, r, node.outputs[0])
    chain = RULES[node.op](g, node, s)
    grads = [None] * len(node.inputs)
    for i in on_path(g, node):
        if chain[i] is not None:
            part = g.op("Mul", node.inputs[i], chain[i])
            grads[i] = part if share == 1.0 else g.op("Mul", part, g.const(share))
    return grads


def half_product(g, node, r):
    return norm(g, node, r, share=0.5)


def numerator(g, node, r):
    grads = [None] * len(node.inputs)
    grads[0] = g.unbroadcast(r, node.inputs[0], node.outputs[0])
    return grads
