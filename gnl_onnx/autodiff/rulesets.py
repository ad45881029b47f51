"""Backward rule sets. The reverse pass asks its rule set, node by node, "which backward do you
want here?"; the answer is an override (a function with the signature of a chain-rule rule, see
rules/__init__.py) or None, and None means the node keeps its ordinary chain rule.

    plain / guided       gating.GatingPolicy: the chain rule, positive gating at rectifiers
    lrp_<composite>      relevance/composites.py: LRP rules at linear layers, pass/split elsewhere
    deeplift             relevance/deeplift.py: Rescale multipliers at non-linear units

A rule set may read values the model does not have (ZBox's bounds, DeepLIFT's reference rows):
it names them in `extra_inputs`, and the graph that holds the backward pass declares them as
inputs (with a default where the rule set gives one)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UsageError


@dataclass(frozen=True)
class Backward:
    """An override: `rule` names it in reports ("gate" for the gating policy), `fn` computes the
    node's input gradients (relevances) from its output's, as a chain-rule rule does."""
    rule: str
    fn: Callable


@dataclass(frozen=True)
class ExtraInput:
    """A graph input a rule set's backward reads: its name in the backward graph, element type
    (onnx.TensorProto enum), dims (ints, names or None) and default value (None: must be fed)."""
    name: str
    elem_type: int
    dims: tuple
    default: np.ndarray | None = None


class RuleSet:
    """The interface the reverse pass talks to. The base class is the plain chain rule."""
    name = "plain"

    def start(self, builder, path, active, x: str) -> None:
        """Called once before the reverse pass: the builder, the nodes on the path (graph order),
        the values carrying gradient and the input. Rule sets that need to know the graph (which
        layer comes first) look here."""

    @property
    def extra_inputs(self) -> tuple[ExtraInput, ...]:
        return ()

    def backward(self, node) -> Backward | None:
        """The override for this node (a graph.Node), or None for its chain rule."""
        return None


# name -> factory(gate=..., bounds=...) -> RuleSet; filled by gating.py (plain, guided) and
# relevance/ (LRP composites, deeplift) as the autodiff package is imported, and by tests
RULE_SETS: dict[str, Callable[..., RuleSet]] = {}


def register_rule_set(name: str, factory: Callable[..., RuleSet] | None = None):
    """Register `factory(gate=..., bounds=...)` under `name`; as a decorator of a RuleSet class
    whose constructor takes `bounds`, the class itself (gate is for the gating policy alone)."""
    def register(made):
        RULE_SETS[name] = made if factory is not None else (lambda gate="paper", bounds=None: made(bounds=bounds))
        return made
    if factory is not None:
        return register(factory)
    return register


def get_rule_set(rule: str, gate: str = "paper", bounds=None) -> RuleSet:
    """The rule set called `rule`: "plain", "guided", an LRP composite or "deeplift"."""
    if rule not in RULE_SETS:
        raise UsageError(f"unknown rule '{rule}'; choose one of {', '.join(RULE_SETS)}")
    return RULE_SETS[rule](gate=gate, bounds=bounds)
