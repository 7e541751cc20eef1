"""The node's state on disk: every received object, result and pending send is a file, written whole.

``Spool(OUT)`` owns the node folder (docs/dicom-node.md lists its files): ``received/`` is the
queue, ``scored/`` and ``failed/`` the truth that ``predictions.jsonl``, ``worklist.csv`` and
``errors.jsonl`` are rebuilt from at every start, ``outbox/<dest>/`` the sends not yet
acknowledged. Every file goes through :func:`limbscan.utils.files.atomic_file`. Received objects
are originals with patient data: kept only until scored, folders 0700 and files 0600, every name
a SOP Instance UID.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from limbscan.utils.files import atomic_file, temp_glob, write_json_atomic, write_text_atomic

RECEIVED, SCORED, FAILED, OUTBOX, KEPT = "received", "scored", "failed", "outbox", "kept"
DICOM_DIR, OVERLAY_DIR, REFUSED = "dicom", "overlays", "refused"
PREDICTIONS, WORKLIST, ERRORS = "predictions.jsonl", "worklist.csv", "errors.jsonl"
DELIVERED, STATUS = "delivered.jsonl", "node.json"
# A UID is digits and dots, at most 64 characters (PS3.5 9.1): safe as a file name.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PRIVATE = (RECEIVED, SCORED, FAILED, OUTBOX, KEPT, DICOM_DIR, OVERLAY_DIR)


def clean_uid(value: object) -> str | None:
    """``value`` as a UID fit to name a file (trailing padding dropped), or None when it is not one."""
    text = str(value or "").strip().rstrip("\x00").strip()
    return text if len(text) <= 64 and _UID.match(text) else None


class Spool:
    """Files of one node folder; safe to use from the association threads, the worker and the senders."""

    def __init__(self, out: str | Path, keep_received: bool = False):
        self.out = Path(out)
        self.keep_received = keep_received
        self._lock = threading.Lock()  # appends to the .jsonl files
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(temp_glob()):  # a results file whose rewrite a kill interrupted
            stale.unlink(missing_ok=True)
        for name in _PRIVATE:
            folder = self.out / name
            folder.mkdir(mode=0o700, exist_ok=True)
            for stale in folder.rglob(temp_glob()):  # a write a kill interrupted: never renamed, so never seen
                stale.unlink(missing_ok=True)

    # -- paths ----------------------------------------------------------------------------
    def received_path(self, uid: str) -> Path:
        return self.out / RECEIVED / f"{uid}.dcm"

    def overlay_path(self, uid: str) -> Path:
        return self.out / OVERLAY_DIR / f"{uid}.png"

    @property
    def dicom_dir(self) -> Path:
        return self.out / DICOM_DIR

    def outbox(self, key: str) -> Path:
        return self.out / OUTBOX / key

    # -- the queue ------------------------------------------------------------------------
    def store(self, uid: str, data: bytes) -> Path:
        """Write a received object (whole file: preamble, meta, data set) durably; its path."""
        path = self.received_path(uid)
        with atomic_file(path, "wb", permissions=0o600) as fh:
            fh.write(data)
        return path

    def pending(self) -> list[str]:
        """UIDs waiting in ``received/``, oldest first: the queue a restart resumes."""
        items = []
        for path in (self.out / RECEIVED).glob("*.dcm"):
            try:
                items.append((path.stat().st_mtime_ns, path.stem))
            except FileNotFoundError:  # scored meanwhile
                continue
        return [uid for _, uid in sorted(items)]

    def received_at(self, uid: str) -> float | None:
        """When the object was stored (its file's time, which survives a restart)."""
        try:
            return self.received_path(uid).stat().st_mtime
        except FileNotFoundError:
            return None

    def is_done(self, uid: str) -> bool:
        """Scored, or failed for good: a second copy of it is acknowledged, not scored again."""
        return (self.out / SCORED / f"{uid}.json").is_file() or (self.out / FAILED / f"{uid}.json").is_file()

    def commit(self, uid: str, record: dict[str, Any]) -> None:
        """The result of ``uid`` is final: written, appended to predictions.jsonl, the object let go."""
        write_json_atomic(self.out / SCORED / f"{uid}.json", record)
        with self._lock:
            self._append(PREDICTIONS, _public(record))
        self.release(uid)

    def fail(self, uid: str, record: dict[str, Any]) -> None:
        """``uid`` was received but cannot be scored: its reason written (the commit point), the
        object moved to ``failed/`` for a person to look at. A copy sent again is not retried."""
        write_json_atomic(self.out / FAILED / f"{uid}.json", record)
        with self._lock:
            self._append(ERRORS, {"file": record["file"], "error": record["error"]})
        self.finish_failed(uid)

    def finish_failed(self, uid: str) -> None:
        src = self.received_path(uid)
        if src.exists():
            os.replace(src, self.out / FAILED / f"{uid}.dcm")

    def refuse(self, uid: str, record: dict[str, Any]) -> None:
        """``uid`` was refused in its C-STORE answer (the sender still holds it and may send it
        again, mended): kept in ``failed/`` beside its reason, but not counted as done."""
        write_json_atomic(self.out / FAILED / f"{uid}.refused.json", record)
        with self._lock:
            self._append(ERRORS, {"file": record["file"], "error": record["error"]})
        src = self.received_path(uid)
        if src.exists():
            os.replace(src, self.out / FAILED / f"{uid}.dcm")

    def is_failed(self, uid: str) -> bool:
        return (self.out / FAILED / f"{uid}.json").is_file()

    def release(self, uid: str) -> None:
        """The received object is no longer needed: deleted, or kept in ``kept/`` when asked."""
        src = self.received_path(uid)
        if self.keep_received:
            if src.exists():
                os.replace(src, self.out / KEPT / src.name)
        else:
            src.unlink(missing_ok=True)

    # -- results --------------------------------------------------------------------------
    def records(self) -> list[dict[str, Any]]:
        """Every scored record, in scoring order."""
        return _load_all(self.out / SCORED)

    def failures(self) -> list[dict[str, Any]]:
        return _load_all(self.out / FAILED)

    def rebuild(self) -> tuple[list[dict], list[dict]]:
        """predictions.jsonl, worklist.csv and errors.jsonl rewritten from ``scored/`` and ``failed/``
        (a kill may have come between a result and its line); the records and failures."""
        from limbscan.predict import worklist_csv

        records, failures = self.records(), self.failures()
        with self._lock:
            write_text_atomic(self.out / PREDICTIONS, "".join(json.dumps(_public(r)) + "\n" for r in records))
            write_text_atomic(self.out / ERRORS, "".join(
                json.dumps({"file": f["file"], "error": f["error"]}) + "\n" for f in failures))
        write_text_atomic(self.out / WORKLIST, worklist_csv([_indexed(r) for r in records]))
        return records, failures

    def write_worklist(self, records: Iterable[dict[str, Any]]) -> None:
        from limbscan.predict import worklist_csv

        write_text_atomic(self.out / WORKLIST, worklist_csv([_indexed(r) for r in records]))

    def write_status(self, status: dict[str, Any]) -> None:
        # Rewritten often and rebuilt at every start: whole, but not worth an fsync.
        with atomic_file(self.out / STATUS, fsync=False) as fh:
            json.dump(status, fh, indent=1)

    # -- outbox ---------------------------------------------------------------------------
    def post(self, key: str, files: Iterable[Path]) -> None:
        """Put SR / SC files in a destination's outbox (a hard link where the disk allows; a file
        already there, from a run a kill interrupted, is the same object and stays)."""
        folder = self.outbox(key)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for src in files:
            dst = folder / Path(src).name
            if dst.exists():
                continue
            try:
                os.link(src, dst)  # atomic: the entry appears whole or not at all
            except OSError:
                with atomic_file(dst, "wb", permissions=0o600) as fh, open(src, "rb") as inp:
                    shutil.copyfileobj(inp, fh)

    def outbox_files(self, key: str, limit: int | None = None) -> list[Path]:
        """What waits for a destination, oldest first."""
        items = []
        for path in self.outbox(key).glob("*.dcm"):
            try:
                items.append((path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:
                continue
        return [p for _, _, p in sorted(items)][:limit]

    def delivered(self, key: str, path: Path, info: dict[str, Any]) -> None:
        """The destination acknowledged ``path``: logged in delivered.jsonl, then taken out of the outbox.

        In this order, so a kill between the two re-sends an object the destination already holds
        (the same SOP Instance UID: a PACS keeps one), rather than losing one it does not."""
        with self._lock:
            self._append(DELIVERED, {"destination": key, "uid": Path(path).stem, "time": time.time(), **info})
        Path(path).unlink(missing_ok=True)

    def refused(self, key: str, path: Path) -> Path:
        """The destination refused ``path`` for good: moved aside, never retried."""
        folder = self.outbox(key) / REFUSED
        folder.mkdir(mode=0o700, exist_ok=True)
        dst = folder / Path(path).name
        os.replace(path, dst)
        return dst

    # -- helpers --------------------------------------------------------------------------
    def _append(self, name: str, row: dict[str, Any]) -> None:
        with open(self.out / name, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def _load_all(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in folder.glob("*.json"):
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # pragma: no cover - atomic writes leave none half-written
            continue
    return sorted(rows, key=lambda r: (r.get("seq", 0), r.get("sop_instance_uid", "")))


def _public(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "seq"}


def _indexed(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "index": record.get("seq", 0)}


__all__ = ["Spool", "clean_uid"]
