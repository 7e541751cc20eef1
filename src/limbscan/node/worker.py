"""The node's worker: takes received objects off the queue, one at a time, and scores them.

Per SOP Instance UID: decode, predict, draw the overlay, build the SR and SC with UIDs derived
from the source and the bundle, put them in every outbox, then commit (``scored/<uid>.json``) and
let the object go; a kill before the commit redoes it all, building the same objects. One that
cannot be decoded or scored is committed as a failure (``failed/``), logged by UID only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from limbscan.analysis import AnalyseOptions, Analyser
from limbscan.errors import BadInputError
from limbscan.node.spool import DICOM_DIR, OVERLAY_DIR, Spool

if TYPE_CHECKING:
    from limbscan.inference import Predictor

log = logging.getLogger("limbscan.node")


@dataclass
class ScoreOptions:
    scenario: str | None = None
    dicom_out: tuple[str, ...] = ("sc", "sr")
    gate: bool = True


def bundle_identity(manifest: dict[str, Any]) -> str:
    """A short digest of the bundle's files: with the source's UID, the seed of the outputs' UIDs."""
    files = json.dumps(manifest.get("files") or {}, sort_keys=True)
    text = f"{manifest.get('limbscan_version')}|{manifest.get('created')}|{files}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Scorer(threading.Thread):
    """Scores what ``work`` (a queue of SOP Instance UIDs) hands it until stopped."""

    def __init__(self, model: Predictor, spool: Spool, work: queue.Queue, options: ScoreOptions, *,
                 post: Callable[[list], None], on_result: Callable[[dict], None], decode_lock: threading.Lock):
        super().__init__(name="limbscan-score", daemon=True)
        self.model, self.spool, self.work, self.options = model, spool, work, options
        self.post, self.on_result = post, on_result
        self.decode_lock = decode_lock
        self.scenario = options.scenario or model.default_scenario
        self.analyser = Analyser(model, AnalyseOptions(scenario=self.scenario, gate=options.gate,
                                                       dicom_out=tuple(options.dicom_out)), decode_lock)
        self.seed = bundle_identity(model.manifest) + f"|{self.scenario}"
        self.stopping = threading.Event()
        self.busy = False
        self.next_seq = 0

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                uid = self.work.get(timeout=0.2)
            except queue.Empty:
                continue
            self.busy = True
            try:
                self.handle(uid)
            except Exception as err:  # noqa: BLE001 - a disk error: the object stays queued for a restart
                log.error("SOP Instance %s: left in received/ for the next start (%s)", uid, type(err).__name__)
            finally:
                self.busy = False
                self.work.task_done()

    def handle(self, uid: str) -> dict | None:
        """Score one queued object; its committed record (None when there was nothing to do)."""
        if not self.spool.received_path(uid).exists():
            return None  # a second queue entry of an object already done
        if self.spool.is_done(uid):  # committed before a kill let the object go
            if self.spool.is_failed(uid):
                self.spool.finish_failed(uid)
            else:
                self.spool.release(uid)
            return None
        started = time.time()
        received_at = self.spool.received_at(uid)
        try:
            record = self._score(uid)
        except BadInputError as err:
            return self._fail(uid, err.problem, received_at)
        except Exception as err:  # noqa: BLE001 - the model saw pixels only; the type is enough
            return self._fail(uid, f"could not score the image ({type(err).__name__})", received_at)
        record.update(seq=self._seq(), received_at=received_at, scored_at=time.time(),
                      seconds=round(time.time() - started, 3))
        self.spool.commit(uid, record)
        if record["probability"] is None:
            log.info("SOP Instance %s not analysed: %s (%.2f s)", uid, record["scope"]["reason"], record["seconds"])
        else:
            log.info("SOP Instance %s scored: %s, probability %.3f (%.2f s)", uid, record["level"],
                     record["probability"], record["seconds"])
        self.on_result(record)
        return record

    def _seq(self) -> int:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return seq

    def _score(self, uid: str) -> dict:
        name = f"received/{uid}.dcm"
        analysis = self.analyser.one(self.spool.received_path(uid), name=name)
        record = analysis.record
        record.update(sop_instance_uid=uid, study_instance_uid=record.get("study"))
        written = self.analyser.write(
            analysis, overlay=self.spool.overlay_path(uid), overlay_ref=f"{OVERLAY_DIR}/{uid}.png",
            dicom_dir=self.spool.dicom_dir, dicom_ref=lambda p: f"{DICOM_DIR}/{p.name}", uid_seed=f"{uid}|{self.seed}")
        if written:
            self.post(written)
        elif self.options.dicom_out and analysis.prediction.in_scope:
            failed = [w for w in analysis.warnings if w.startswith("DICOM output failed")]
            log.warning("SOP Instance %s: no SR / SC (%s)", uid, "; ".join(failed) or "none made")
        return record

    def _fail(self, uid: str, problem: str, received_at: float | None) -> dict:
        # One line: decoders' messages run over several.
        problem = " ".join(problem.replace(str(self.spool.received_path(uid)), f"received/{uid}.dcm").split())
        record = {"file": f"received/{uid}.dcm", "sop_instance_uid": uid, "error": problem, "status": "failed",
                  "seq": self._seq(), "received_at": received_at, "scored_at": time.time()}
        self.spool.fail(uid, record)
        log.warning("SOP Instance %s: failed, %s", uid, problem)
        self.on_result(record)
        return record


def start_seq(records: Sequence[dict]) -> int:
    return max((int(r.get("seq", -1)) for r in records), default=-1) + 1


__all__ = ["ScoreOptions", "Scorer", "bundle_identity", "start_seq"]
