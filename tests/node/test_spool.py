"""The node's spool, outbox, header check and senders' back-off, without a network or a model."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from limbscan.errors import LimbscanError
from limbscan.node import forward as fwd
from limbscan.node.forward import DeliveryError, Forwarder, parse_forward, parse_stow
from limbscan.node.scp import check_object, transfer_syntaxes
from limbscan.node.spool import Spool, clean_uid


def _record(uid: str, seq: int, probability: float) -> dict:
    return {"file": f"received/{uid}.dcm", "scenario": "cascade", "probability": probability, "threshold": 0.5,
            "label": "abnormal" if probability >= 0.5 else "normal", "level": "likely" if probability >= 0.5
            else "normal", "suspected_threshold": None, "scores": {}, "detections": [], "width": 4, "height": 4,
            "body_part": None, "sop_instance_uid": uid, "seq": seq}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_clean_uid_accepts_uids_only():
    assert clean_uid("1.2.840.10008.5.1.4.1.1.1") == "1.2.840.10008.5.1.4.1.1.1"
    assert clean_uid("1.2.3\x00") == "1.2.3"  # UI padding
    for bad in ("", None, "../etc/passwd", "1.2.a", "1..2", "1." * 40 + "1", "1.2/3"):
        assert clean_uid(bad) is None, bad


def test_queue_commit_and_results_in_predicts_shape(tmp_path):
    spool = Spool(tmp_path)
    for uid in ("1.1", "1.2", "1.3"):
        spool.store(uid, b"object " + uid.encode())
        time.sleep(0.01)
    assert spool.pending() == ["1.1", "1.2", "1.3"]  # oldest first
    assert oct(spool.received_path("1.1").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "received").stat().st_mode & 0o777) == "0o700"
    spool.commit("1.2", _record("1.2", 0, 0.2))
    spool.commit("1.1", _record("1.1", 1, 0.9))
    spool.write_worklist(spool.records())
    assert spool.pending() == ["1.3"] and spool.is_done("1.1") and not spool.is_done("1.3")
    assert [r["sop_instance_uid"] for r in _lines(tmp_path / "predictions.jsonl")] == ["1.2", "1.1"]
    assert "seq" not in _lines(tmp_path / "predictions.jsonl")[0]
    rows = (tmp_path / "worklist.csv").read_text().splitlines()
    assert rows[0].startswith("rank,file,") and rows[1].startswith("1,received/1.1.dcm,")  # most likely first

    spool.fail("1.3", {"file": "received/1.3.dcm", "sop_instance_uid": "1.3", "error": "cannot decode", "seq": 2})
    assert (tmp_path / "failed" / "1.3.dcm").read_bytes() == b"object 1.3"
    assert spool.is_done("1.3") and spool.is_failed("1.3") and spool.pending() == []
    assert _lines(tmp_path / "errors.jsonl") == [{"file": "received/1.3.dcm", "error": "cannot decode"}]


def test_a_refused_object_is_listed_but_not_done(tmp_path):
    spool = Spool(tmp_path)
    spool.store("2.1", b"junk")
    spool.refuse("2.1", {"file": "received/2.1.dcm", "sop_instance_uid": "2.1", "error": "no pixel data"})
    assert not spool.is_done("2.1")  # the sender holds it and may send it again, mended
    assert (tmp_path / "failed" / "2.1.dcm").exists() and spool.pending() == []
    assert _lines(tmp_path / "errors.jsonl")[0]["error"] == "no pixel data"


def test_keep_received_moves_instead_of_deleting(tmp_path):
    spool = Spool(tmp_path, keep_received=True)
    spool.store("3.1", b"x")
    spool.commit("3.1", _record("3.1", 0, 0.5))
    assert (tmp_path / "kept" / "3.1.dcm").read_bytes() == b"x"


def test_rebuild_mends_what_a_kill_left(tmp_path):
    spool = Spool(tmp_path)
    for seq, uid in enumerate(("4.1", "4.2", "4.3")):
        spool.store(uid, b"x")
        spool.commit(uid, _record(uid, seq, 0.1 * seq))
    # A kill after scored/4.3.json, before its line was whole; and a temp file of a write never finished.
    text = (tmp_path / "predictions.jsonl").read_text().splitlines()
    (tmp_path / "predictions.jsonl").write_text("\n".join(text[:2]) + "\n" + text[2][:20])
    (tmp_path / "received" / ".5.1.dcm.abcd.tmp").write_bytes(b"half")
    (tmp_path / "worklist.csv").unlink(missing_ok=True)
    spool = Spool(tmp_path)
    records, failures = spool.rebuild()
    assert [r["sop_instance_uid"] for r in records] == ["4.1", "4.2", "4.3"] and failures == []
    assert [r["sop_instance_uid"] for r in _lines(tmp_path / "predictions.jsonl")] == ["4.1", "4.2", "4.3"]
    assert len((tmp_path / "worklist.csv").read_text().splitlines()) == 4
    assert not list((tmp_path / "received").iterdir())  # the temp file swept


def test_outbox_post_is_idempotent_and_delivery_is_logged_before_removal(tmp_path):
    spool = Spool(tmp_path)
    made = tmp_path / "dicom" / "9.1.dcm"
    made.write_bytes(b"sr")
    spool.post("dimse-A", [made])
    spool.post("dimse-A", [made])  # a rerun after a kill: the same entry, once
    spool.post("stow-B", [made])
    (entry,) = spool.outbox_files("dimse-A")
    assert entry.read_bytes() == b"sr" and len(spool.outbox_files("stow-B")) == 1
    spool.delivered("dimse-A", entry, {"via": "dimse"})
    assert spool.outbox_files("dimse-A") == [] and made.exists() and len(spool.outbox_files("stow-B")) == 1
    (line,) = _lines(tmp_path / "delivered.jsonl")
    assert (line["destination"], line["uid"], line["via"]) == ("dimse-A", "9.1", "dimse")
    moved = spool.refused("stow-B", spool.outbox_files("stow-B")[0])
    assert moved.parent.name == "refused" and spool.outbox_files("stow-B") == []


def test_destinations_parse_and_refuse_bad_spellings():
    d = parse_forward("ORTHANC@127.0.0.1:4242")
    assert (d.kind, d.ae_title, d.host, d.port, d.label) == ("dimse", "ORTHANC", "127.0.0.1", 4242,
                                                              "ORTHANC@127.0.0.1:4242")
    assert parse_forward("PACS@[::1]:104").host == "::1"
    for bad in ("ORTHANC", "ORTHANC@host", "@host:1", "A" * 17 + "@h:1", "X@h:70000", "X@h:p"):
        with pytest.raises(LimbscanError):
            parse_forward(bad)
    s = parse_stow("http://user:secret@pacs:8042/dicom-web/")
    assert s.url == "http://user:secret@pacs:8042/dicom-web/studies"
    assert s.label == "http://pacs:8042/dicom-web/studies" and "secret" not in s.key
    assert parse_stow("https://pacs/dicom-web/studies").url == "https://pacs/dicom-web/studies"
    with pytest.raises(LimbscanError):
        parse_stow("ftp://pacs/")


def test_forwarder_backs_off_while_down_then_sends_each_object_once(tmp_path, monkeypatch, caplog):
    spool = Spool(tmp_path)
    made = []
    for uid in ("7.1", "7.2", "7.3"):
        made.append(tmp_path / "dicom" / f"{uid}.dcm")
        made[-1].write_bytes(uid.encode())
    dest = parse_stow("http://127.0.0.1:9/dicom-web")
    spool.post(dest.key, made)
    tries, sent = [], []
    up = threading.Event()

    def fake_send(destination, path, token=None, timeout=30.0):
        tries.append(time.monotonic())
        if not up.is_set():
            raise DeliveryError("no answer (ConnectionError)")
        if path.name == "7.2.dcm":
            raise DeliveryError("refused: HTTP 400", retry=False)
        sent.append(path.read_bytes())

    monkeypatch.setattr(fwd, "send_stow", fake_send)
    forwarder = Forwarder(spool, dest, "LIMBSCAN", retry_base=0.05, retry_max=0.2)
    forwarder.start()
    try:
        deadline = time.monotonic() + 10
        while len(tries) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        gaps = [b - a for a, b in zip(tries, tries[1:])]
        assert len(tries) >= 5 and gaps[0] >= 0.04 and gaps[1] >= 0.09 and max(gaps[:4]) <= 1.0  # 0.05, 0.1, 0.2, 0.2
        assert forwarder.status()["pending"] == 3 and "ConnectionError" in forwarder.status()["last_error"]
        up.set()
        while (spool.outbox_files(dest.key) or len(sent) < 2) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        forwarder.stop()
        forwarder.join(5)
    assert sorted(sent) == [b"7.1", b"7.3"]  # each once
    assert (spool.outbox(dest.key) / "refused" / "7.2.dcm").exists()
    assert [d["uid"] for d in _lines(tmp_path / "delivered.jsonl")] == ["7.1", "7.3"]
    assert forwarder.status()["last_error"] is None
    assert any("next try in" in r.getMessage() for r in caplog.records)


def test_the_scp_accepts_what_the_reader_decodes():
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless

    found = transfer_syntaxes()
    assert {ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless} <= set(found)


def test_check_object_finds_what_the_header_shows(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    phantom_source = Path(get_testdata_file("CT_small.dcm"))  # ships with pydicom itself
    ds = pydicom.dcmread(phantom_source)
    uid = str(ds.SOPInstanceUID)
    assert check_object(phantom_source, uid) is None
    assert "not the one its C-STORE request names" in check_object(phantom_source, "1.2.3")
    data = phantom_source.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) - 5000])
    assert check_object(cut, uid)  # cut short: refused
    noise = tmp_path / "noise.dcm"
    noise.write_bytes(b"\0" * 128 + b"DICM" + os.urandom(300))
    assert check_object(noise, uid)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    assert "no pixel data" in check_object(tmp_path / "nopixels.dcm", uid)
