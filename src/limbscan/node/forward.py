"""Sending results on: C-STORE to a DICOM node (``AE@host:port``) or STOW-RS to a DICOMweb server.

One :class:`Forwarder` thread per destination empties its outbox, oldest first. An object leaves
only once acknowledged (logged first in ``delivered.jsonl``); while the destination is down it
waits on disk, retried after 1, 2, 4... s up to ``retry_max``; one refused for good goes to
``refused/``. A re-send after a kill is the same instance (UIDs derived from source and bundle),
which a PACS keeps once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limbscan.errors import LimbscanError
from limbscan.node.spool import Spool

log = logging.getLogger("limbscan.node")

_FORWARD = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9a-fA-F:.]+\]|[^:@\[\]]+):(?P<port>\d{1,5})$")
BATCH = 64  # objects per association / pass: a long outbox still lets status and stop through


@dataclass(frozen=True)
class Destination:
    kind: str  # "dimse" or "stow"
    label: str  # for logs and node.json: no credentials
    key: str  # the outbox folder's name
    ae_title: str = ""
    host: str = ""
    port: int = 0
    url: str = ""


def parse_forward(spec: str) -> Destination:
    """``AE@host:port`` (a DICOM node to C-STORE to) as a :class:`Destination`."""
    match = _FORWARD.match(spec.strip())
    if not match:
        raise LimbscanError(f"--forward {spec!r}: write it AE@host:port, e.g. ORTHANC@127.0.0.1:4242")
    ae, host, port = match["ae"].strip(), match["host"].strip("[]"), int(match["port"])
    if not ae or not ae.isprintable() or "\\" in ae:
        raise LimbscanError(f"--forward {spec!r}: {ae!r} is not an AE title (1-16 characters, no backslash)")
    if not 0 < port < 65536:
        raise LimbscanError(f"--forward {spec!r}: port {port} is out of range")
    key = "dimse-" + re.sub(r"[^A-Za-z0-9_.-]", "_", f"{ae}@{host}_{port}")
    return Destination("dimse", f"{ae}@{host}:{port}", key, ae_title=ae, host=host, port=port)


def parse_stow(url: str) -> Destination:
    """A DICOMweb root (``http://pacs/dicom-web``) or its ``/studies`` endpoint as a :class:`Destination`."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LimbscanError(f"--stow {url!r}: give the DICOMweb server's http(s) URL, e.g. http://pacs:8042/dicom-web")
    path = parts.path.rstrip("/")
    endpoint = path if path.endswith("/studies") else f"{path}/studies"
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, endpoint, "", ""))  # user:password never reaches a log
    full = urlunsplit((parts.scheme, parts.netloc, endpoint, parts.query, ""))
    key = "stow-" + hashlib.sha256(clean.encode()).hexdigest()[:12]
    return Destination("stow", clean, key, url=full)


class DeliveryError(Exception):
    """The destination did not take the objects now; ``retry``: it may later (it is down or busy)."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


# -- one destination --------------------------------------------------------------------------
def send_dimse(dest: Destination, paths: list[Path], calling_aet: str, on_result, timeout: float = 30.0) -> None:
    """C-STORE ``paths`` in one association; ``on_result(path, None | DeliveryError)`` after each.

    Raises :class:`DeliveryError` when no association can be made or it breaks off: the
    objects not yet answered stay where they are.
    """
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 10.0)
    classes: dict[str, set[str]] = {}
    for path in paths:
        meta = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        classes.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(str(meta.TransferSyntaxUID))
    for sop, syntaxes in classes.items():
        ae.add_requested_context(sop, sorted(syntaxes))
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "no association (unreachable or aborted)"
        raise DeliveryError(why)
    try:
        for path in paths:
            try:
                status = assoc.send_c_store(path)
            except ValueError:  # pynetdicom: no accepted presentation context for this object's class
                on_result(path, DeliveryError("the destination accepts no presentation context for its SOP class",
                                              retry=False))
                continue
            if not status or "Status" not in status:
                raise DeliveryError("no C-STORE answer (association lost or timed out)")
            code = int(status.Status)
            if code == 0x0000 or code in (0xB000, 0xB006, 0xB007):  # success, or stored with a warning
                on_result(path, None)
            elif 0xA700 <= code <= 0xA7FF:
                raise DeliveryError(f"destination out of resources (status 0x{code:04X})")
            else:
                on_result(path, DeliveryError(f"refused with status 0x{code:04X}", retry=False))
    finally:
        if assoc.is_established:
            assoc.release()


def send_stow(dest: Destination, path: Path, token: str | None = None, timeout: float = 30.0) -> None:
    """STOW-RS one object (PS3.18 10.5); raises :class:`DeliveryError` unless the server stored it."""
    import requests

    boundary = uuid.uuid4().hex
    data = path.read_bytes()
    body = b"".join((f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data,
                     f"\r\n--{boundary}--\r\n".encode()))
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        answer = requests.post(dest.url, data=body, headers=headers, timeout=timeout)
    except requests.RequestException as err:
        raise DeliveryError(f"no answer ({type(err).__name__})") from None
    if answer.status_code >= 500 or answer.status_code in (408, 429):
        raise DeliveryError(f"HTTP {answer.status_code}")
    if answer.status_code >= 400:
        raise DeliveryError(f"refused: HTTP {answer.status_code}", retry=False)
    failed = _stow_failures(answer)
    if failed:
        reasons = ", ".join(f"0x{r:04X}" for r in failed)
        raise DeliveryError(f"refused: failure reason {reasons}",
                            retry=all(0xA700 <= r <= 0xA7FF for r in failed))


def _stow_failures(answer) -> list[int]:
    """The Failure Reasons of the STOW-RS answer's Failed SOP Sequence (empty: stored)."""
    try:
        body: Any = answer.json()
    except ValueError:
        return []  # a server that answers 200 without a body stored it
    items = (body.get("00081198") or {}).get("Value") or [] if isinstance(body, dict) else []
    reasons = []
    for item in items:
        value = (item.get("00081197") or {}).get("Value") or [0x0110]  # "processing failure" when unsaid
        reasons.append(int(value[0]))
    return reasons


# -- the thread --------------------------------------------------------------------------------
class Forwarder(threading.Thread):
    """Empties one destination's outbox, with exponential back-off while it cannot be reached."""

    def __init__(self, spool: Spool, dest: Destination, calling_aet: str, *, retry_base: float = 1.0,
                 retry_max: float = 60.0, stow_token: str | None = None, on_change=None):
        super().__init__(name=f"limbscan-forward-{dest.key}", daemon=True)
        self.spool, self.dest, self.calling_aet = spool, dest, calling_aet
        self.retry_base, self.retry_max = retry_base, retry_max
        self.stow_token = stow_token
        self.on_change = on_change or (lambda: None)
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.failures = 0
        self.last_error: str | None = None
        self.next_try: float | None = None
        self.n_delivered = 0
        (spool.outbox(dest.key)).mkdir(mode=0o700, parents=True, exist_ok=True)
        (spool.outbox(dest.key) / "destination.json").write_text(json.dumps(
            {"kind": dest.kind, "destination": dest.label}, indent=1))

    def status(self) -> dict[str, Any]:
        return {"destination": self.dest.label, "kind": self.dest.kind,
                "pending": len(self.spool.outbox_files(self.dest.key)), "delivered": self.n_delivered,
                "last_error": self.last_error, "retry_in_s": None if self.next_try is None
                else max(0.0, round(self.next_try - time.time(), 1))}

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            paths = self.spool.outbox_files(self.dest.key, limit=BATCH)
            if not paths:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self._deliver(paths)
            except DeliveryError as err:
                self._back_off(str(err), len(paths))
            except Exception as err:  # noqa: BLE001 - a sender bug must not end the thread
                self._back_off(f"{type(err).__name__}: {err}", len(paths))
            else:
                if self.failures:
                    log.info("destination %s reachable again", self.dest.label)
                self.failures, self.last_error, self.next_try = 0, None, None
            self.on_change()

    def _back_off(self, why: str, n: int) -> None:
        self.failures += 1
        delay = min(self.retry_base * 2 ** (self.failures - 1), self.retry_max)
        self.last_error, self.next_try = why, time.time() + delay
        log.warning("destination %s: %s; %s object(s) wait in the outbox, next try in %.1f s",
                    self.dest.label, why, f"{n}+" if n >= BATCH else n, delay)
        self.on_change()
        self.stopping.wait(delay)
        self.next_try = None

    def _deliver(self, paths: list[Path]) -> None:
        if self.dest.kind == "dimse":
            send_dimse(self.dest, paths, self.calling_aet, self._result)
            return
        for path in paths:
            try:
                send_stow(self.dest, path, self.stow_token)
            except DeliveryError as err:
                if err.retry:
                    raise
                self._result(path, err)
            else:
                self._result(path, None)

    def _result(self, path: Path, error: DeliveryError | None) -> None:
        if error is None:
            self.spool.delivered(self.dest.key, path, {"via": self.dest.kind})
            self.n_delivered += 1
            log.info("%s delivered to %s", path.stem, self.dest.label)
        else:
            self.spool.refused(self.dest.key, path)
            log.error("%s refused by %s (%s): moved to %s, not retried", path.stem, self.dest.label, error,
                      self.spool.outbox(self.dest.key) / "refused")


__all__ = ["DeliveryError", "Destination", "Forwarder", "parse_forward", "parse_stow", "send_dimse", "send_stow"]
