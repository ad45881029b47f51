"""What the commands write and show: files written atomically (a reader, or a crash, never sees a
half-written file), the output folder, file stems unique among a run's images, a progress bar."""
from __future__ import annotations

import os
import pathlib
import re
import tempfile
from pathlib import Path
from typing import Callable, Union

from .errors import UsageError

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, data: bytes | str | Callable[[pathlib.Path], object]) -> pathlib.Path:
    """Write `data` (bytes, text as UTF-8, or a callback given a temporary path to write to) and
    move it over `path` only once complete. If anything fails, an existing `path` is untouched
    and the temporary file is removed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so os.replace is an atomic rename; same suffix, so format-by-extension writers
    # (Pillow, matplotlib) behave as for the real name.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix,
                                    dir=path.parent)
    tmp = pathlib.Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(payload)
        with open(tmp, "rb+") as f:  # data on disk before the rename makes it visible
            os.fsync(f.fileno())
        # mkstemp makes 0600 files; give reports the usual permissions (or keep the old file's).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if tmp.exists():
            tmp.unlink()
    return path


def progress(total: int, description: str):
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a comfort, not a requirement
        return None
    return tqdm(total=total, desc=description, unit="image", leave=False, disable=None)


def prepare_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output folder {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"output folder {out} is not writable")


def unique_stems(paths: list[str]) -> list[str]:
    """File stems, made unique when two images share a name."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        batch_item = re.fullmatch(r"(.*)\.npy\[(\d+)\]", str(p), flags=re.IGNORECASE)  # "a.npy[3]" -> "a-3"
        stem = f"{Path(batch_item[1]).stem}-{batch_item[2]}" if batch_item else Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems
