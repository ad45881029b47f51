"""Gradient rules, one short function per op type, grouped by op family.

A rule receives the builder, the forward node and the gradient arriving at the node's output (a
list, one per output, for rules registered with all_outputs=True). It returns the gradients of the
node's inputs in input order (None where no gradient flows). The reverse pass only asks for rules
of nodes on the path from the image to the explained output, and only uses the gradients of inputs
on that path, so a rule may return None for weights, shapes and other constants."""
from __future__ import annotations

# the family modules register their rules on import
from . import (activation, conv, elementwise, linear, norm, pool, quantized, reduce, resize, roi,  # noqa: F401
               select, shape)
from .registry import ALL_OUTPUTS, CODE_OUTPUTS, RULES, rule

__all__ = ["RULES", "ALL_OUTPUTS", "CODE_OUTPUTS", "rule"]
