"""Relevance propagation: backward rules that are not the chain rule, beside the chain-rule rules
of ../rules, and the rule sets that choose them (LRP composites, DeepLIFT).

    linear.py      LRP rules of linear layers (Conv, Gemm, MatMul): Epsilon, ZPlus, AlphaBeta,
                   Gamma, Flat, WSquare, ZBox (Zennit's definitions)
    split.py       Pass, the proportional (Norm) split, products of two path values
    composites.py  the LRP composites as rule sets
    deeplift.py    DeepLIFT (Rescale) as a rule set

Every rule is written in standard ONNX ops and reuses the chain rule's own constructions (the
transposed convolution of a Conv, the products of a Gemm) with modified weights."""
from __future__ import annotations

from ..rulesets import RULE_SETS  # noqa: F401 - where the rule sets below register
from . import composites, deeplift  # noqa: F401 - they register
