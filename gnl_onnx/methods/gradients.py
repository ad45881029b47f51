"""The gradient family: the plain or guided gradient at the image, times the image or not; and
integrated gradients along the straight path, plain (IG) or guided (GNL-IG, the paper)."""
from __future__ import annotations

from .base import Method, PathMethod
from .registry import register

register(
    Method("gradient", "the plain gradient of the score at the image"),
    Method("input_x_gradient", "image times its plain gradient", factor="image"),
    Method("guided_backprop", "the guided gradient at the image (Springenberg et al.): only positive gradients "
           "through active units", rule="guided"),
    PathMethod("ig", "integrated gradients (Sundararajan et al.): (image - baseline) times the mean plain gradient "
               "along the straight path", factor="delta", complete=True),
    PathMethod("gnl_ig", "integrated gradients with guided non-linearity (Kwon et al., ICPR 2020): as ig, with "
               "guided gradients", rule="guided", factor="delta"),
)
