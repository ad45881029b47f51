"""DeepLIFT as Captum 0.9 computes it where every MaxPool follows a ReLU (VGG, most CNNs), as the
rule set "deeplift_captum", registered from the test side: it reproduces another library's
behaviour for comparisons and is not part of the product.

Captum's ReLU reads its output gradient with a tensor hook that runs before the MaxPool's hook on
that same tensor rewrites it, so the ReLU's multiplier takes the plain gradient through the MaxPool
and the MaxPool's rule is lost (measured: equal to Captum to 2e-7; Captum misses F(x) - F(x0) by up
to 1e-2 on a small CNN). Here MaxPool keeps the chain rule. The `deeplift` method uses the complete
rule, which equals Captum where a new tensor separates the ReLU from the MaxPool."""
from __future__ import annotations

from gnl_onnx.autodiff.relevance.deeplift import DeepLift
from gnl_onnx.autodiff.rulesets import register_rule_set


@register_rule_set("deeplift_captum")
class DeepLiftAsCaptumRuns(DeepLift):
    name = "deeplift_captum"
    rescale_maxpool = False
