"""``out/metrics.jsonl``: one JSON line per trained epoch, each stage's lines kept true to its checkpoint.

:func:`limbscan.train.engine.fit` rewrites a stage's lines from its checkpoint's history when it
starts (:func:`rewrite_metrics`) and appends one per epoch (:func:`append_metrics`); the report and
the tests read them back (:func:`read_metrics`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from limbscan.utils.files import write_text_atomic


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl``; a line torn by a kill is left out."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def rewrite_metrics(path: Path, stage: str, history: list[dict]) -> None:
    """Replace ``stage``'s lines with ``history``, the other stages' lines kept.

    The checkpoint's history is the truth for this stage: lines past it (from a killed epoch, or a
    run started over) go, and a line lost between checkpoint and append comes back."""
    kept = [r for r in read_metrics(path) if r.get("stage") != stage] + history
    if kept or path.exists():
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def append_metrics(path: Path, record: dict) -> None:
    """Add one line, on disk (fsync'd) before this returns."""
    with path.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())

