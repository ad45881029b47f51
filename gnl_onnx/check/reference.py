"""References for the drift check: attributions saved by an earlier run, and the hashes that tie
them to their images and model."""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, UsageError
from ..output import atomic_write
from .settings import REFERENCE_FORMAT


# -- the reference ---------------------------------------------------------------------------------
@dataclass
class Reference:
    """What drift compares against: `header` (plain data: the model's sha256, the images' sha256s,
    the settings, the explained and predicted classes) and the attributions [N, ...]."""
    header: dict
    attributions: np.ndarray

    def save(self, path, overwrite: bool = False) -> Path:
        """One portable .npz (no pickles): a JSON header string beside the attributions."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace the reference")
        buffer = io.BytesIO()
        np.savez_compressed(buffer, header=np.array(json.dumps(self.header)), attributions=self.attributions)
        return atomic_write(path, buffer.getvalue())


def load_reference(path) -> Reference:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            attributions = np.asarray(data["attributions"])
    except FileNotFoundError:
        raise InputError(f"{path}: no such reference; save one with gnl-onnx check --save-reference") from None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a gnl-onnx check reference ({e.__class__.__name__}); save one with "
                         "gnl-onnx check --save-reference") from None
    if not isinstance(header, dict) or header.get("format") != REFERENCE_FORMAT:
        raise InputError(f"{path}: not a {REFERENCE_FORMAT} reference; save a new one with --save-reference")
    return Reference(header, attributions)


def array_sha256(array: np.ndarray) -> str:
    """sha256 of a preprocessed image: its float32 values, C order, with the shape."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


