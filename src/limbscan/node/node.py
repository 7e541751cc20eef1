"""``Node``: the Storage SCP, the worker and the senders of one node folder, started and stopped together.

::

    node = Node("fa.limbscan", NodeConfig(out="node", allowed=["ORTHANC"],
                                          forward=[parse_forward("ORTHANC@127.0.0.1:4242")]))
    with node:                      # resumes OUT's queue and outbox, then listens
        node.wait_idle(timeout=60)  # every received object scored and every result delivered
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from limbscan.errors import LimbscanError
from limbscan.node.forward import Destination, Forwarder
from limbscan.node.scp import StorageSCP, transfer_syntaxes
from limbscan.node.spool import Spool, _indexed
from limbscan.node.worker import ScoreOptions, Scorer, start_seq
from limbscan.predict import study_rows

if TYPE_CHECKING:
    from limbscan.inference import Predictor

log = logging.getLogger("limbscan.node")

LIVE_ROWS = 500  # results node.json carries for the web page, newest first
_LIGHT = ("sop_instance_uid", "study_instance_uid", "scenario", "probability", "threshold", "suspected_threshold",
          "label", "level", "scores", "width", "height", "body_part", "received_at", "scored_at", "seconds",
          "warnings", "error", "status", "study", "scope", "boxes_from")


@dataclass
class NodeConfig:
    out: Path
    allowed: Sequence[str]  # calling AE titles whose associations are accepted
    ae_title: str = "LIMBSCAN"
    host: str = "127.0.0.1"
    port: int = 11112  # 0: a free port (tests)
    forward: Sequence[Destination] = field(default_factory=tuple)
    scenario: str | None = None
    dicom_out: tuple[str, ...] = ("sc", "sr")
    keep_received: bool = False
    max_associations: int = 32
    retry_base: float = 1.0
    retry_max: float = 60.0
    stow_token: str | None = None
    gate: bool = True  # the input gate: out-of-scope images are recorded "not analysed", nothing sent back


class Node:
    """A running limbscan DICOM node (see the package docstring)."""

    def __init__(self, model: Predictor | str | Path, config: NodeConfig):
        from limbscan.io.dicom_out import KINDS

        if isinstance(model, (str, Path)):
            from limbscan.inference import load

            model = load(model)
        self.model = model
        self.config = config
        if config.scenario is not None and config.scenario not in model.scenarios:
            raise LimbscanError(f"{model.path}: no scenario {config.scenario!r} in this bundle "
                                f"(it has {', '.join(model.scenarios)})")
        unknown = [k for k in config.dicom_out if k not in KINDS]
        if unknown:
            raise LimbscanError(f"--dicom-out {','.join(unknown)}: use sc and / or sr")
        if config.forward and not config.dicom_out:
            raise LimbscanError("a destination is set but no DICOM output to send it (--dicom-out sc,sr)")
        keys = [d.key for d in config.forward]
        if len(set(keys)) != len(keys):
            raise LimbscanError("the same destination is named twice")
        self.spool = Spool(config.out, keep_received=config.keep_received)
        self.decode_lock = threading.Lock()
        self.work: queue.Queue[str] = queue.Queue()
        self._status_lock = threading.Lock()
        self._rows: list[dict] = []
        self._records: list[dict] = []
        self._counts = {"received": 0, "failed": 0}
        self._dirty = threading.Event()
        self._status_thread: threading.Thread | None = None
        self.started_at: str | None = None
        self.port: int | None = None
        self.forwarders = [Forwarder(self.spool, dest, config.ae_title, retry_base=config.retry_base,
                                     retry_max=config.retry_max, stow_token=config.stow_token,
                                     on_change=self.write_status) for dest in config.forward]
        self.scorer = Scorer(model, self.spool, self.work, ScoreOptions(config.scenario, tuple(config.dicom_out), config.gate),
                             post=self._post, on_result=self._on_result, decode_lock=self.decode_lock)
        self.scp = StorageSCP(self.spool, self._accept, ae_title=config.ae_title, allowed=list(config.allowed),
                              max_associations=config.max_associations, decode_lock=self.decode_lock)
        self._running = False

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> Node:
        """Resume what OUT holds (results rebuilt, queue and outbox picked up), then listen."""
        records, failures = self.spool.rebuild()
        self._records = records
        self._counts["failed"] = sum(f.get("status") == "failed" for f in failures)
        self._rows = [_light(r) for r in sorted(records + failures, key=lambda r: r.get("scored_at") or 0)][-LIVE_ROWS:]
        self.scorer.next_seq = start_seq(records + failures)
        pending = self.spool.pending()
        for uid in pending:
            self.work.put(uid)
        waiting = sum(len(self.spool.outbox_files(d.key)) for d in self.config.forward)
        if pending or waiting:
            log.info("resuming: %d object(s) to score, %d result(s) to send", len(pending), waiting)
        self.scorer.start()
        for forwarder in self.forwarders:
            forwarder.start()
        self.port = self.scp.start(self.config.host, self.config.port)
        self.started_at = _now()
        self._running = True
        self._status_thread = threading.Thread(target=self._status_loop, name="limbscan-status", daemon=True)
        self._status_thread.start()
        self.write_status()
        log.info("listening as %s on %s:%d (calling AE titles allowed: %s; transfer syntaxes: %s)",
                 self.config.ae_title, self.config.host, self.port, ", ".join(self.config.allowed),
                 ", ".join(ts.name for ts in transfer_syntaxes()))
        for dest in self.config.forward:
            log.info("results go to %s (%s)", dest.label, "C-STORE" if dest.kind == "dimse" else "STOW-RS")
        return self

    def stop(self) -> None:
        """Stop listening, then the worker (after the object in hand) and the senders; the queue
        and outbox stay on disk for the next start."""
        if not self._running:
            return
        self.scp.stop()
        self.scorer.stop()
        for forwarder in self.forwarders:
            forwarder.stop()
        self.scorer.join(timeout=120)
        for forwarder in self.forwarders:
            forwarder.join(timeout=60)
        self._running = False
        self._dirty.set()
        if self._status_thread is not None:
            self._status_thread.join(timeout=10)
        self.flush_status()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until interrupted (Ctrl+C, SIGTERM as KeyboardInterrupt), then stop cleanly."""
        try:
            while True:
                time.sleep(1.0)
        finally:
            self.stop()

    def idle(self) -> bool:
        """Nothing queued, nothing in hand, nothing waiting to be sent."""
        return (self.work.unfinished_tasks == 0 and not self.spool.pending()
                and all(not self.spool.outbox_files(d.key) for d in self.config.forward))

    def wait_idle(self, timeout: float = 60.0, poll: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.idle():
                return True
            time.sleep(poll)
        return self.idle()

    # -- callbacks ------------------------------------------------------------------------
    def _accept(self, uid: str) -> None:
        with self._status_lock:
            self._counts["received"] += 1
        self.work.put(uid)
        self.write_status()

    def _post(self, files: list[Path]) -> None:
        for forwarder in self.forwarders:
            self.spool.post(forwarder.dest.key, files)
            forwarder.wake.set()

    def _on_result(self, record: dict) -> None:
        with self._status_lock:
            self._rows = [*self._rows, _light(record)][-LIVE_ROWS:]
            if "error" not in record:
                self._records.append(record)
            else:
                self._counts["failed"] += 1
            records = list(self._records)
        if "error" not in record:
            self.spool.write_worklist(records)
        self.write_status()

    # -- status ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._status_lock:
            rows = list(reversed(self._rows))
            counts = dict(self._counts)
            records = list(self._records)
        return {
            "node": {
                "ae_title": self.config.ae_title, "host": self.config.host, "port": self.port,
                "allowed": list(self.config.allowed), "running": self._running, "started": self.started_at,
                "updated": _now(), "queued": len(self.spool.pending()), "scored": len(self._records),
                "failed": counts["failed"], "received_since_start": counts["received"],
                "destinations": [f.status() for f in self.forwarders],
            },
            "rows": rows,
            # The worklist a radiologist reads: one row per study, most likely abnormal first.
            "studies": study_rows([_indexed(r) for r in records]),
        }

    def write_status(self) -> None:
        """Ask for node.json to be rewritten: at most twice a second, by its own thread."""
        self._dirty.set()

    def _status_loop(self) -> None:
        while self._running:
            if self._dirty.wait(1.0):
                self._dirty.clear()
                self.flush_status()
                time.sleep(0.5)

    def flush_status(self) -> None:
        """Write node.json now."""
        try:
            self.spool.write_status(self.status())
        except OSError as err:  # pragma: no cover - a full disk shows elsewhere first
            log.error("cannot write the node's status (%s)", err.strerror or type(err).__name__)


def _light(record: dict) -> dict:
    row = {k: record[k] for k in _LIGHT if k in record}
    if "detections" in record:
        row["detections"] = [{"box": d["box"], "score": d["score"]} for d in record["detections"]]
    return row


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["Node", "NodeConfig"]
