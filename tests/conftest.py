import pathlib
import sys

# Make the repo-root `models` package importable without installing it.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
