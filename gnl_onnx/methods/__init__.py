"""Methods as objects: what each attribution method is (base.py), by family (gradients.py,
smoothgrad.py, cams.py, relevance.py; perturbation.py: forward passes only), in one registry
(registry.py). To add a method: write it in its family's file (or a new one imported here) and
register it there."""
from __future__ import annotations

from . import gradients, smoothgrad, cams, relevance, perturbation  # noqa: F401,I001 - they register, in this order
from .base import INTEGRATIONS, MAX_GAUSS_LEGENDRE_STEPS, Method, PathMethod, path_points
from .cams import CAM_METHODS, Cam
from .registry import METHODS, get_method, register, split_method_list
from .relevance import DeepLift, Lrp
from .perturbation import ForwardMethod
from .smoothgrad import SmoothGrad

LRP_METHODS = tuple(name for name, m in METHODS.items() if isinstance(m, Lrp))
FORWARD_METHODS = tuple(name for name, m in METHODS.items() if m.forward_only)  # run without a backward graph

__all__ = ["METHODS", "CAM_METHODS", "LRP_METHODS", "FORWARD_METHODS", "Method", "PathMethod", "Cam", "Lrp", "DeepLift",
           "SmoothGrad", "ForwardMethod", "get_method", "register", "split_method_list", "path_points", "INTEGRATIONS",
           "MAX_GAUSS_LEGENDRE_STEPS"]
