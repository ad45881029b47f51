"""The per-model results the reference sweeps write to tests/.results/ (read by tools/model_table.py
to make docs/models.md). The folder is ignored by git: results are measurements, not sources."""
from __future__ import annotations

import json
import pathlib

FOLDER = pathlib.Path(__file__).parent / ".results"


def merge_results(name: str, rows: dict) -> None:
    """Add `rows` to FOLDER/name, keeping the rows a partial rerun (-k) did not measure."""
    if not rows:
        return
    FOLDER.mkdir(exist_ok=True)
    (FOLDER / ".gitignore").write_text("*\n")
    path = FOLDER / name
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update(rows)
    path.write_text(json.dumps(dict(sorted(old.items())), indent=1) + "\n")
