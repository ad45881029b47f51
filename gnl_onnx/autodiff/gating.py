"""The gating policy of guided non-linearity, kept apart from the gradient rules: rules compute the
ordinary chain rule; the policy decides at which units the incoming gradient is first clipped to its
positive part (see the table in the README and ../shared/METHOD.md)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .rules import RULES as CHAIN_RULES
from .rulesets import Backward, RuleSet, register_rule_set

# Units the paper gates: rectifiers and max pooling ("paths of positive chain reactions").
PAPER_UNITS = frozenset({"Relu", "MaxPool", "GlobalMaxPool", "Clip", "LeakyRelu", "PRelu"})
# Other non-linear units: gated only when the user asks for gate="all".
OTHER_NONLINEAR_UNITS = frozenset({"Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Softplus",
                                   "Elu", "Selu", "Celu", "Softsign", "Mish", "ThresholdedRelu"})
RULES = ("plain", "guided")
GATES = ("paper", "all")


@dataclass(frozen=True)
class GatingPolicy(RuleSet):
    """The first rule set: the chain rule everywhere, the incoming gradient clipped to its positive
    part first at the gated units."""
    rule: str = "plain"
    gate: str = "paper"

    def __post_init__(self):
        if self.rule not in RULES:
            raise UsageError(f"unknown rule '{self.rule}'; choose one of {', '.join(RULES)}")
        if self.gate not in GATES:
            raise UsageError(f"unknown gate '{self.gate}'; choose one of {', '.join(GATES)}")

    @property
    def gated_ops(self) -> frozenset[str]:
        if self.rule == "plain":
            return frozenset()
        return PAPER_UNITS | OTHER_NONLINEAR_UNITS if self.gate == "all" else PAPER_UNITS

    def gates(self, op_type: str) -> bool:
        return op_type in self.gated_ops

    @property
    def name(self) -> str:
        return self.rule

    @staticmethod
    def apply(builder, grad: str) -> str:
        """Only positive gradients pass a gated unit."""
        return builder.op("Relu", grad, name="gate")

    def backward(self, node) -> Backward | None:
        if not self.gates(node.op):
            return None
        chain = CHAIN_RULES[node.op]

        def gated(g, node, dy):
            if isinstance(dy, list):  # rules of several outputs: the gate is on the first
                return chain(g, node, [self.apply(g, dy[0]), *dy[1:]])
            return chain(g, node, self.apply(g, dy))
        return Backward("gate", gated)


for _rule in RULES:
    register_rule_set(_rule, lambda gate="paper", bounds=None, rule=_rule: GatingPolicy(rule, gate))
