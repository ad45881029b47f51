"""SmoothGrad (Smilkov et al.) as a wrapper over any method, as Captum's NoiseTunnel: the mean of
the method's attributions at noisy copies of the image (Gaussian noise, noise_level of each image's
value range; each (image, copy) seeded on its own, so results do not depend on chunking).

Over a method of one point without a factor (the gradient, guided backprop) the copies are the
points of one graph (the runtime feeds the noise: `smoothgrad` is SmoothGrad over the gradient,
its step count the number of copies). Over any other method ("smoothgrad:ig", "smoothgrad:gnl_ig",
"smoothgrad:gradcam", ...) the runtime runs that method's own graph on the noisy copies, all for the
class explained at the clean image, and averages (noisy_copies)."""
from __future__ import annotations

from typing import ClassVar

from .base import Method
from .registry import METHODS, WRAPPERS, register

COPIES = 16  # noisy copies of the wrapper over a method that runs its own steps (its --steps stay its own)


class SmoothGrad(Method):
    inner: Method
    copies: int

    def __init__(self, inner: Method, name: str | None = None, summary: str | None = None):
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "copies", COPIES)
        object.__setattr__(self, "name", name or f"smoothgrad:{inner.name}")
        object.__setattr__(self, "summary", summary or f"SmoothGrad over {inner.name}: the mean of its attributions "
                                                      "at noisy copies of the image")
        object.__setattr__(self, "rule", inner.rule)
        object.__setattr__(self, "factor", inner.factor)
        object.__setattr__(self, "complete", False)  # the mean over noisy images is not complete for the clean one

    @property
    def in_graph(self) -> bool:
        """The copies are the points of one graph (a method of one point without a factor)."""
        inner = self.inner
        return (type(inner) is Method and inner.factor == "none" and not inner.takes_layer
                and not inner.scores_at_points)

    # in one graph: the points are the copies, the runtime draws their noise
    @property
    def draws_noise(self) -> bool:
        return self.in_graph

    @property
    def noisy_copies(self) -> bool:
        """The runtime runs the inner method's graph on noisy copies of the images."""
        return not self.in_graph

    @property
    def uses_baseline(self) -> bool:
        return self.inner.uses_baseline and not self.in_graph

    @property
    def uses_integration(self) -> bool:
        return self.inner.uses_integration and not self.in_graph

    @property
    def takes_layer(self) -> bool:
        return self.inner.takes_layer

    scores_at_points: ClassVar[bool] = False

    @property
    def follows_steps(self) -> bool:
        return self.in_graph or self.inner.follows_steps

    def steps_run(self, steps: int) -> int:
        return int(steps) if self.in_graph else self.inner.steps_run(steps)

    def points(self, steps, integration="gausslegendre"):
        return Method.points(self, steps, integration) if self.in_graph else self.inner.points(steps, integration)

    def wrapped(self) -> Method:
        return self if self.in_graph else self.inner

    def layers(self, proto, x, y, names):
        return self.inner.layers(proto, x, y, names)


WRAPPERS["smoothgrad"] = SmoothGrad
register(SmoothGrad(METHODS["gradient"], "smoothgrad", "SmoothGrad (Smilkov et al.): the mean plain gradient at "
                    "noisy copies of the image"))
