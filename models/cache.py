"""Where exported test and benchmark models live, and how they get there: one folder outside the
repository ($GNL_ONNX_CACHE, else ~/.cache/gnl-onnx/exports), files written whole or not at all."""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile

try:
    import fcntl
except ImportError:  # Windows: no lock; a race between two processes then costs time only
    fcntl = None


def exports_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """`cache_dir` when given, else $GNL_ONNX_CACHE, else ~/.cache/gnl-onnx/exports."""
    if cache_dir is not None:
        return pathlib.Path(cache_dir)
    env = os.environ.get("GNL_ONNX_CACHE")
    if env:
        return pathlib.Path(env)
    return pathlib.Path.home() / ".cache" / "gnl-onnx" / "exports"


def save_whole(data: bytes, path: pathlib.Path) -> pathlib.Path:
    """Write `data` to a temporary file beside `path`, then rename it into place: an interrupted
    export never leaves a truncated model that a later run would trust."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp.onnx", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def exclusive(path: pathlib.Path):
    """Hold an exclusive lock named after `path` (`path.lock`, beside it) for the block: the
    exporters check for the file again inside it, so processes that want the same export (the
    background exporter, a test, two pytest-xdist workers) write it once and the others wait for
    it instead of exporting it again. The lock dies with its holder, so a killed exporter leaves
    no stale lock behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lower_priority() -> None:
    """For a background exporter child (preexec_fn): the lowest CPU priority, so that it uses only
    what the tests leave idle. At the same priority two exporters took 80% of a 2-core machine and
    the test process, which is what the run waits for, got 17%. Not under pytest-xdist: there two
    workers keep both cores busy, so a niced exporter starved while a worker sat waiting for its
    export (on the export's lock, cache.exclusive), the core it left idle going to nobody."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        os.nice(19)


# Background exporters started by start_child and still running: one per module and session.
_CHILDREN: dict = {}


def start_child(module: str, args: list[str]) -> bool:
    """Run `python -m <this package>.<module> ARGS...` in a child at the lowest priority and return
    at once (False when that module's child was started already). The test session starts them at
    collection so that exporting overlaps the tests; nothing waits for them: the exports write
    atomically and a test that gets there first exports the model itself. The child is killed
    when this process exits, so a session that ends early leaves no exporter behind."""
    import atexit
    import subprocess as sp
    import sys

    if module in _CHILDREN:
        return False
    package = pathlib.Path(__file__).resolve().parent
    child = sp.Popen([sys.executable, "-m", f"{package.name}.{module}", *args], cwd=package.parent,
                     stdout=sp.DEVNULL, stderr=sp.DEVNULL, preexec_fn=lower_priority)
    _CHILDREN[module] = child
    atexit.register(child.kill)
    return True
