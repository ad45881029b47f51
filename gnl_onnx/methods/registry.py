"""The registry of methods: name -> Method. Each family module registers its methods here; a name
"smoothgrad:<method>" is SmoothGrad over that method (see smoothgrad.py), made on request."""
from __future__ import annotations

from ..errors import UsageError
from .base import Method

METHODS: dict[str, Method] = {}
WRAPPERS: dict[str, type] = {}  # "smoothgrad" -> the wrapper class, filled by smoothgrad.py


def register(*methods: Method) -> None:
    for method in methods:
        METHODS[method.name] = method


def get_method(name) -> Method:
    """The method called `name` (a Method is returned as it is)."""
    if isinstance(name, Method):
        return name
    if name in METHODS:
        return METHODS[name]
    wrapper, _, inner = str(name).partition(":")
    if inner and wrapper in METHODS and hasattr(METHODS[wrapper], "configured"):
        return METHODS[wrapper].configured(inner)  # a method's options: "rise:masks=8000,cells=7"
    if inner and wrapper in WRAPPERS and get_method(inner).forward_only:
        raise UsageError(f"{wrapper} wraps methods with a backward graph, not the forward-only {inner}")
    if inner and wrapper in WRAPPERS and inner in METHODS:
        return WRAPPERS[wrapper](METHODS[inner])
    raise UsageError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}, or smoothgrad:<method> "
                     "(SmoothGrad over any of them), or rise:masks=8000 (a forward-only method's options)")


def split_method_list(text: str) -> list[str]:
    """'gradient,rise:masks=200,cells=3,occlusion' -> ['gradient', 'rise:masks=200,cells=3',
    'occlusion']: a piece "key=value" continues the options of the method before it."""
    names: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if names and "=" in piece and ":" not in piece and ":" in names[-1]:
            names[-1] += f",{piece}"
        else:
            names.append(piece)
    return names
