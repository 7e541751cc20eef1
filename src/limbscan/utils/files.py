"""Files written whole or not at all, and their digests (stdlib only: imported by light modules).

Every writer in limbscan goes through :func:`atomic_file`: the content is written to a temporary
file beside the target (``.{name}.XXXXXXXX.tmp``), fsynced, renamed over the target, and the
rename fsynced in its folder, so a reader (or a run restarted after a kill or a power cut) sees
the old file or the new one, never half of one. A killed writer can leave its temp file behind:
:func:`temp_glob` gives the pattern to sweep.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


def temp_glob(name_glob: str = "*") -> str:
    """The glob of the temp files :func:`atomic_file` makes for targets matching ``name_glob``."""
    return f".{name_glob}.*{TEMP_SUFFIX}"


def sha256_file(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable: it lives in the directory entry, which a power cut
    can otherwise undo. A no-op where directories cannot be opened or synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(
    path: str | Path, mode: str = "w", permissions: int | None = 0o644, *, fsync: bool = True
) -> Iterator[IO]:
    """A file handle whose content appears at ``path`` whole when the block ends, or not at all:
    written beside it, fsynced, then renamed over it (and the rename fsynced in its folder).

    ``permissions`` None keeps mkstemp's 0600. ``fsync=False`` skips both fsyncs, for callers
    that check what they read back instead (the rename still keeps a reader from half a file).
    If the block raises, the temp file is removed and the old ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, mode) as fh:
            if permissions is not None:
                os.fchmod(fh.fileno(), permissions)  # mkstemp's 0600 would hide datasets and reports from a group
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text so that a reader sees the old file or the new one, never half of one."""
    with atomic_file(path) as fh:
        fh.write(text)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1))


__all__ = [
    "TEMP_SUFFIX",
    "atomic_file",
    "fsync_dir",
    "sha256_file",
    "temp_glob",
    "write_json_atomic",
    "write_text_atomic",
]
