"""The node's DICOM face: a Storage SCP (pynetdicom) for plain radiographs, and Verification.

Associations only from configured calling AE titles, for :data:`STORAGE_CLASSES` in any
transfer syntax :func:`transfer_syntaxes` lists (what this machine decodes). A C-STORE is
answered once its object is whole on disk and its header read (:func:`check_object`); scoring
happens later, in the worker. Logs name UIDs and AE titles, never header values.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from limbscan.errors import BadInputError
from limbscan.io.dicom_out import MANUFACTURER
from limbscan.node.spool import Spool, clean_uid

log = logging.getLogger("limbscan.node")

# Plain radiographs: what a CR or DX modality, or a PACS forwarding them, sends.
STORAGE_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
_CANDIDATE_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEG2000Lossless,
    JPEG2000,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

VERIFICATION = UID("1.2.840.10008.1.1")
# check_object's answer for a Secondary Capture limbscan made: a PACS that routes everything back
# must not have limbscan score its own overlays, again and again.
OWN_OUTPUT = "limbscan's own overlay"
# C-STORE status codes (PS3.4 Table B.2-1).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


def transfer_syntaxes() -> list[UID]:
    """The transfer syntaxes this machine's pydicom plugins decode: the ones the SCP accepts."""
    from pydicom.pixels.decoders.base import get_decoder

    found = []
    for ts in _CANDIDATE_SYNTAXES:
        if not ts.is_compressed:
            found.append(ts)
            continue
        try:
            if get_decoder(ts).is_available:
                found.append(ts)
        except NotImplementedError:
            continue
    return found


def check_object(path: Path, uid: str) -> str | None:
    """Why the stored object at ``path`` cannot join the queue, or None.

    Reads the header and checks what can be checked without decoding the pixels: a data set
    pydicom parses, not cut short, of SOP Instance ``uid``, with pixel data, a size, and (when
    not compressed) all its pixel bytes. A corrupt compressed stream is found by the worker.
    The reason never quotes a header value.
    """
    from pydicom.pixels.utils import get_expected_length

    from limbscan.io.dicom import pydicom_messages, read_dataset, truncation

    with pydicom_messages() as said:
        try:
            ds = read_dataset(path)
        except BadInputError as err:
            return err.problem
        problem = truncation(ds, [str(w.message) for w in said])
        if problem:
            return problem
        try:
            if clean_uid(ds.get("SOPInstanceUID")) != uid:
                return "the data set's SOP Instance UID is not the one its C-STORE request names"
            if ds.get("SOPClassUID") == SecondaryCaptureImageStorage and ds.get("Manufacturer") == MANUFACTURER:
                return OWN_OUTPUT
            if "PixelData" not in ds:
                return "no pixel data: not an image"
            rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
            if rows == 0 or cols == 0:
                return f"image has zero size ({rows}x{cols})"
            ts = UID(ds.file_meta.TransferSyntaxUID)
            if not ts.is_compressed:
                expected = get_expected_length(ds, unit="bytes")
                if len(ds.PixelData) < expected:
                    return f"pixel data holds {len(ds.PixelData)} of the {expected} bytes its header announces"
        except Exception as err:  # noqa: BLE001 - a header value that is not what its VR says
            return f"unusable DICOM header ({type(err).__name__})"
    return None


class StorageSCP:
    """The AE and its handlers. ``accept(uid)`` is called for each object stored and checked."""

    def __init__(self, spool: Spool, accept: Callable[[str], None], *, ae_title: str, allowed: list[str],
                 max_associations: int = 32, decode_lock: threading.Lock | None = None):
        from pynetdicom import AE

        if not allowed:
            raise ValueError("no calling AE title allowed: every association would be rejected")
        self.spool = spool
        self.accept = accept
        self.ae_title = ae_title
        self.allowed = list(allowed)
        # pydicom's warnings are collected process-wide (warnings.catch_warnings): one reader at a time.
        self.decode_lock = decode_lock or threading.Lock()
        self.ae = AE(ae_title=ae_title)
        self.ae.require_calling_aet = self.allowed
        self.ae.maximum_associations = max_associations
        self.ae.maximum_pdu_size = 0  # no limit: whole radiographs arrive in as few PDUs as the sender likes
        syntaxes = transfer_syntaxes()
        for sop in STORAGE_CLASSES:
            self.ae.add_supported_context(sop, syntaxes)
        self.ae.add_supported_context(VERIFICATION)
        self._server = None

    def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: a free port) in background threads; the bound port."""
        from pynetdicom import evt

        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_REJECTED, self._on_rejected)]
        self._server = self.ae.start_server((host, port), block=False, evt_handlers=handlers)
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # -- handlers (pynetdicom's association threads) ----------------------------------------
    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_rejected(self, event) -> None:
        log.warning("association from calling AE %r rejected: not an allowed calling AE title",
                    event.assoc.requestor.ae_title)

    def _on_store(self, event) -> int:
        uid = clean_uid(event.request.AffectedSOPInstanceUID)
        caller = event.assoc.requestor.ae_title
        if uid is None:
            log.warning("C-STORE from %r refused: its SOP Instance UID is not a valid UID", caller)
            return CANNOT_UNDERSTAND
        if self.spool.is_done(uid):
            log.info("SOP Instance %s from %r: already scored; acknowledged, not scored again", uid, caller)
            return SUCCESS
        try:
            path = self.spool.store(uid, event.encoded_dataset(include_meta=True))
        except OSError as err:
            log.error("SOP Instance %s from %r refused: cannot store it (%s)", uid, caller,
                      err.strerror or type(err).__name__)
            return OUT_OF_RESOURCES
        with self.decode_lock:
            problem = check_object(path, uid)
        if problem == OWN_OUTPUT:
            self.spool.received_path(uid).unlink(missing_ok=True)
            log.info("SOP Instance %s from %r: %s, acknowledged and not scored", uid, caller, problem)
            return SUCCESS
        if problem is not None:
            self.spool.refuse(uid, {"file": f"received/{uid}.dcm", "sop_instance_uid": uid, "error": problem,
                                    "status": "refused"})
            log.warning("SOP Instance %s from %r refused: %s", uid, caller, problem)
            return DOES_NOT_MATCH if "SOP Instance UID" in problem else CANNOT_UNDERSTAND
        log.info("SOP Instance %s received from %r", uid, caller)
        self.accept(uid)
        return SUCCESS


__all__ = ["STORAGE_CLASSES", "StorageSCP", "check_object", "transfer_syntaxes"]
