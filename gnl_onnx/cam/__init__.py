"""Class activation maps as ONNX graphs: where the target layer is (the locator), and the CAM part
of an attribution graph (weights per channel, the map, ReLU, bilinear upsampling), from standard
ONNX ops only.

Definitions follow pytorch-grad-cam 1.5.7 (PyPI `grad-cam`), with A a layer's activation
[N, K, h, w] at the image and g = dY/dA (the plain gradient of the explained score):

    gradcam      w_k = mean_ij g                         map = sum_k w_k A_k
    gradcam_pp   w_k = sum_ij relu(g) a,  a = g^2 / (2 g^2 + sum_ij(A) g^3 + 1e-6)  (0 where g = 0)
    hirescam     map = sum_k g_k * A_k
    xgradcam     w_k = sum_ij g A / (sum_ij A + 1e-7)
    layercam     map = sum_k relu(g_k) * A_k
    eigencam     map = the centred A (pixels x channels) projected on its first principal component
    scorecam     w = softmax_k(score of the image masked by the min-max scaled, upsampled A_k)

then map = resize_bilinear(relu(map)) to the image's height and width (cv2's INTER_LINEAR, i.e.
ONNX Resize linear with half_pixel coordinates). Several layers: each layer's map is min-max
scaled (x - min) / (max + 1e-7) per image before upsampling and the upsampled maps are averaged, as
the anchor aggregates; one layer: the raw map. guided_gradcam and gnl_gradcam multiply guided backprop or
GNL-IG by the Grad-CAM map.

The map [N, 1, H, W] ([N, H, W, 1] for NHWC images) is broadcast to the image's shape, so the
attribution output keeps the image's shape for every method: each channel holds the map."""
from __future__ import annotations

import importlib
import warnings

from .locate import Layer, candidates_report, default_layer, layer_candidates, locate, locate_layers
from .maps import broadcast_to_image, cam_attribution, cam_map
from .scorecam import scorecam_chunk, scorecam_rescore

__all__ = ["Layer", "locate", "locate_layers", "layer_candidates", "default_layer", "candidates_report",
           "cam_map", "cam_attribution", "broadcast_to_image", "scorecam_rescore", "scorecam_chunk"]


def __getattr__(name):
    if name == "CAM_METHODS":  # the CAM methods' table became method objects (gnl_onnx/methods/cams.py)
        warnings.warn("gnl_onnx.cam.CAM_METHODS moved to gnl_onnx.methods.CAM_METHODS", DeprecationWarning, stacklevel=2)
        return importlib.import_module("gnl_onnx.methods").CAM_METHODS
    raise AttributeError(f"module 'gnl_onnx.cam' has no attribute {name!r}")
