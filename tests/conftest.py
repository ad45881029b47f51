import os
import pathlib
import sys

# One torch thread: torch's OpenMP workers spin-wait, and beside onnxruntime's own pool (or any
# other busy process on a 2-core machine) a reference backward pass stalled for minutes.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Make the repo-root `models` package importable without installing it.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
