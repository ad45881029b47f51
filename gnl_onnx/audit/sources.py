"""Where the images come from: a folder or any pyarrow/Ray Data path, their ids and labels, and
the optional extras (pyarrow, Ray) that reading them needs."""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
import zlib
from pathlib import PurePosixPath

from ..errors import InputError, UsageError
from ..images import IMAGE_SUFFIXES


def need_pyarrow():
    try:
        import pyarrow
        import pyarrow.fs
        import pyarrow.parquet
    except ImportError:
        raise UsageError("the audit writes Parquet and needs pyarrow: pip install 'gnl-onnx[audit]'") from None
    return pyarrow


def need_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise UsageError("--engine ray needs Ray: pip install 'gnl-onnx[ray]' (or use --engine local)") from None
    return ray


# -- the images --------------------------------------------------------------------------------
def filesystem(source: str):
    """(pyarrow filesystem, root path inside it) of a folder or a URI."""
    pa = need_pyarrow()
    text = str(source)
    try:
        if "://" in text:
            return pa.fs.FileSystem.from_uri(text)
        return pa.fs.LocalFileSystem(), os.path.abspath(text)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
        raise UsageError(f"cannot read images from {text}: {e}; give a folder or a URI that pyarrow and Ray "
                         "read (s3://, gs://, hdfs://, ...)") from None


def list_images(source: str) -> tuple[str, list[tuple[str, str]]]:
    """Every image file under `source` (recursively, hidden files and folders skipped): (root,
    [(image id, path)]) sorted by id, the id being the path relative to the root (with '/')."""
    pa = need_pyarrow()
    fs, root = filesystem(source)
    try:
        info = fs.get_file_info(root)
        if info.type != pa.fs.FileType.Directory:
            raise UsageError(f"{source}: no such folder of images; give --images a folder or a URI of one")
        entries = fs.get_file_info(pa.fs.FileSelector(root, recursive=True))
    except OSError as e:
        raise InputError(f"cannot list {source}: {e}") from None
    found = []
    for entry in entries:
        relative = PurePosixPath(entry.path).relative_to(PurePosixPath(root))
        if (entry.type == pa.fs.FileType.File and relative.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in relative.parts)):
            found.append((relative.as_posix(), entry.path))
    if not found:
        raise InputError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or below it")
    return root, sorted(found)


def read_labels(path) -> dict[str, int]:
    """A CSV file with the header "image,label": the image's id (its path relative to --images, or
    just its file name) and its true class index (blank: unlabelled)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise InputError(f"cannot read labels file {path}: {e.strerror}") from None
    labels = {}
    for line, row in enumerate(rows, start=2):
        try:
            if row["label"].strip():
                labels[row["image"].strip()] = int(row["label"])
        except (KeyError, AttributeError, TypeError, ValueError):
            raise InputError(f"{path}, line {line}: expected a CSV with the header image,label and rows like "
                             "'cat_001.png,281' (the image's path relative to --images, its class index)") from None
    return labels


def _label(labels: dict, image_id: str):
    return labels.get(image_id, labels.get(PurePosixPath(image_id).name))


def image_key(image_id: str) -> int:
    """A stable number per image id: seeds its random floor and noise whatever batch it runs in."""
    return zlib.crc32(image_id.encode("utf-8"))


def _load_local(fs, path: str, prep, load_image):
    """One image of the audit through the preprocessing, fetched first when it is remote."""
    from pyarrow.fs import LocalFileSystem

    if fs is None or isinstance(fs, LocalFileSystem):
        return load_image(path, prep)
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, "image" + PurePosixPath(path).suffix)
        with fs.open_input_stream(path) as remote, open(local, "wb") as f:
            shutil.copyfileobj(remote, f)
        return load_image(local, prep)
