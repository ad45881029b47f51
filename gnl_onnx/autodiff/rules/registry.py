"""The registry of chain-rule rules, op type -> rule; each family module registers its rules here
with @rule (see the package docstring for what a rule receives and returns)."""
from __future__ import annotations

from typing import Callable

RULES: dict[str, Callable] = {}
ALL_OUTPUTS: set[str] = set()
# Ops whose integer outputs are quantized codes: the gradient flows through them (in float), and
# on through ops that pass codes of the same integer type along (MaxPool, Reshape, Concat...)
CODE_OUTPUTS: set[str] = set()


def rule(*op_types: str, all_outputs: bool = False, codes: bool = False):
    def register(function: Callable) -> Callable:
        for op_type in op_types:
            RULES[op_type] = function
            if all_outputs:
                ALL_OUTPUTS.add(op_type)
            if codes:
                CODE_OUTPUTS.add(op_type)
        return function
    return register
