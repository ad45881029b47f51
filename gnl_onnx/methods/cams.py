"""The class activation maps as methods (the maps themselves are graph parts in gnl_onnx/cam/):
each takes its target layer(s), seeds the images' score rows so the layer's gradient is read
there, and finishes the attribution with the upsampled map, alone or times its gradient part
(guided_gradcam, gnl_gradcam). Definitions follow pytorch-grad-cam 1.5.7 (see gnl_onnx/cam/)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..cam import cam_attribution, locate, scorecam_chunk
from .base import Method, PathMethod
from .registry import register


@dataclass(frozen=True)
class Cam(Method):
    """A map at the target layer(s), at the image."""
    kind: str = "gradcam"          # the map (gnl_onnx/cam/maps.py)
    times_gradient: bool = False   # the attribution is the gradient part times the map (else the map alone)

    takes_layer: ClassVar[bool] = True
    prunes: ClassVar[bool] = True  # map-only graphs need no input gradient

    @property
    def rescores_classes(self) -> bool:
        return self.kind == "scorecam"

    def layers(self, proto, x, y, names):
        return locate(proto, x, y, names)

    def seeds_image_rows(self) -> bool:
        return True

    def finish(self, g, weighted, factor, rows):
        gradient_part = g.op("Mul", weighted, factor) if factor else weighted
        return cam_attribution(g, self.kind, self.times_gradient, rows["layers"], rows["image_axis"], rows["rows"],
                               rows["x"], gradient_part, rows["points"], rows["scores_all"], rows["renamed"]), None

    def row_bytes(self, row_bytes, layers):
        if self.kind != "scorecam":
            return row_bytes
        # Score-CAM's masked images of one loop step, forward only (half a row each)
        return row_bytes + row_bytes * scorecam_chunk(max(a.channels for a in layers)) // 2


@dataclass(frozen=True)
class PathCam(Cam, PathMethod):
    """A map times a path method's attribution (gnl_gradcam: GNL-IG times Grad-CAM)."""


CAM_METHODS = {
    "gradcam": Cam("gradcam", "Grad-CAM (Selvaraju et al.): the target layer's channels weighted by their mean "
                   "gradient, ReLU, upsampled", kind="gradcam"),
    "gradcam_pp": Cam("gradcam_pp", "Grad-CAM++ (Chattopadhyay et al.): channel weights from positive gradients and "
                      "second/third-order alphas", kind="gradcam_pp"),
    "hirescam": Cam("hirescam", "HiResCAM (Draelos and Carin): the sum over channels of gradient times activation, "
                    "per position", kind="hirescam"),
    "xgradcam": Cam("xgradcam", "XGradCAM (Fu et al.): channels weighted by the activation-normalized sum of "
                    "gradient times activation", kind="xgradcam"),
    "layercam": Cam("layercam", "LayerCAM (Jiang et al.): the sum over channels of the positive gradient times "
                    "activation", kind="layercam"),
    "eigencam": Cam("eigencam", "Eigen-CAM (Muhammad and Yeasin): the layer's first principal component (no "
                    "gradient; power iteration in the graph)", kind="eigencam"),
    "scorecam": Cam("scorecam", "Score-CAM (Wang et al.): channels weighted by the softmax of the scores of the "
                    "image masked by each upsampled channel (forward passes only)", kind="scorecam"),
    "guided_gradcam": Cam("guided_gradcam", "Guided Grad-CAM: guided backprop times the upsampled Grad-CAM map",
                          rule="guided", kind="gradcam", times_gradient=True),
    "gnl_gradcam": PathCam("gnl_gradcam", "GNL-IG times the upsampled Grad-CAM map", rule="guided", factor="delta",
                           kind="gradcam", times_gradient=True),
}
register(*CAM_METHODS.values())
