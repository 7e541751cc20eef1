"""The node in this process, talked to with pynetdicom: C-ECHO, C-STORE, refusals, failures,
resuming a queue, the web page's view of it, and the CLI's checks. No Orthanc, no DCMTK."""

from __future__ import annotations

import json
import logging
import shutil
import signal
from pathlib import Path

import pydicom
import pytest

from limbscan.node import Node, NodeConfig

PATIENT_NAME, PATIENT_ID = "Quixote^Alonso", "PID-451-XYZ"  # as tests/node/conftest.py writes them
CR = "1.2.840.10008.5.1.4.1.1.1"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _scu(port: int, aet: str = "SCU", sop_classes=(CR,)):
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.add_requested_context("1.2.840.10008.1.1")
    for sop in sop_classes:
        ae.add_requested_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_requested_context(sop, JPEG2000Lossless)  # one context per syntax: the SCP picks one of each
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", port, ae_title="LIMBSCAN")


def _store(assoc, ds_or_path) -> int:
    status = assoc.send_c_store(ds_or_path)
    return int(status.Status)


@pytest.fixture
def node_factory(tiny_model, tmp_path):
    nodes: list[Node] = []

    def make(out: Path | None = None, **options) -> Node:
        config = NodeConfig(out=out or tmp_path / "node", allowed=["SCU"], port=0, **options)
        nodes.append(Node(tiny_model, config).start())
        return nodes[-1]

    yield make
    for node in nodes:
        node.stop()


def test_echo_store_score_and_an_unknown_calling_ae_rejected(node_factory, phantoms, caplog):
    caplog.set_level(logging.INFO)
    node = node_factory()
    sent = phantoms(3)
    assoc = _scu(node.port)
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assert [_store(assoc, p) for p in sent] == [0, 0, 0]
    assoc.release()
    stranger = _scu(node.port, aet="STRANGER")
    assert stranger.is_rejected and not stranger.is_established

    assert node.wait_idle(60)
    out = node.config.out
    records = _lines(out / "predictions.jsonl")
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in sent]
    assert sorted(r["sop_instance_uid"] for r in records) == sorted(uids)
    study = str(pydicom.dcmread(sent[0]).StudyInstanceUID)
    for r in records:
        assert r["study_instance_uid"] == study and r["file"] == f"received/{r['sop_instance_uid']}.dcm"
        assert r["level"] in ("likely", "suspected", "normal") and 0 <= r["probability"] <= 1
        assert len(r["dicom"]) == 2 and all((out / d).is_file() for d in r["dicom"])
        assert (out / r["overlay"]).is_file()
    assert len((out / "worklist.csv").read_text().splitlines()) == 4
    assert not list((out / "received").iterdir())  # scored, so let go
    node.flush_status()  # written at most twice a second otherwise
    status = json.loads((out / "node.json").read_text())
    assert status["node"]["scored"] == 3 and len(status["rows"]) == 3
    # Its own overlay routed back by a PACS is acknowledged, never scored (no loop).
    (sc,) = [out / d for d in records[0]["dicom"] if pydicom.dcmread(out / d).Modality == "OT"]
    assoc = _scu(node.port, sop_classes=["1.2.840.10008.5.1.4.1.1.7"])
    assert _store(assoc, sc) == 0
    assoc.release()
    assert node.wait_idle(30) and len(_lines(out / "predictions.jsonl")) == 3
    text = caplog.text
    assert PATIENT_NAME.split("^")[0] not in text and PATIENT_ID not in text
    assert "STRANGER" in text and all(uid in text for uid in uids)


def test_a_corrupt_object_gets_a_failure_status_and_the_node_keeps_serving(node_factory, phantoms, pydicom_data,
                                                                          tmp_path, caplog):
    from pydicom.encaps import encapsulate, generate_frames

    caplog.set_level(logging.INFO)
    node = node_factory()
    good, second = phantoms(2)
    short = pydicom.dcmread(good)
    short.SOPInstanceUID = short.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    short.PixelData = short.PixelData[:100]  # the header announces far more
    # A JPEG 2000 object whose header is sound but whose code stream is cut: only decoding finds it.
    broken = pydicom.dcmread(pydicom_data("RG3_J2KR.dcm"))
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    broken.PatientName, broken.PatientID = PATIENT_NAME, PATIENT_ID
    broken.PixelData = encapsulate([next(generate_frames(broken.PixelData, number_of_frames=1))[:3000]])
    broken.save_as(tmp_path / "broken.dcm")

    assoc = _scu(node.port)
    assert _store(assoc, short) == 0xC000
    assert _store(assoc, tmp_path / "broken.dcm") == 0  # stored: the worker finds it cannot be decoded
    assert _store(assoc, good) == 0
    assoc.release()
    assert node.wait_idle(60)
    assoc = _scu(node.port)  # still serving
    assert _store(assoc, second) == 0
    assoc.release()
    assert node.wait_idle(60)

    out = node.config.out
    errors = {e["file"]: e["error"] for e in _lines(out / "errors.jsonl")}
    assert "pixel data holds 100 of the" in errors[f"received/{short.SOPInstanceUID}.dcm"]
    assert "cannot decode the pixel data" in errors[f"received/{broken.SOPInstanceUID}.dcm"]
    assert len(_lines(out / "predictions.jsonl")) == 2
    assert (out / "failed" / f"{broken.SOPInstanceUID}.dcm").exists()
    lines = [r.getMessage() for r in caplog.records if r.name == "limbscan.node"]
    (failed,) = [m for m in lines if str(broken.SOPInstanceUID) in m and "failed" in m]
    assert "\n" not in failed
    assert not [m for m in lines if PATIENT_NAME.split("^")[0] in m or PATIENT_ID in m]
    # The same broken object sent again is acknowledged, not scored again; the refused one is not "done".
    assoc = _scu(node.port)
    assert _store(assoc, tmp_path / "broken.dcm") == 0
    assert _store(assoc, short) == 0xC000
    assoc.release()
    assert node.wait_idle(30) and len(_lines(out / "errors.jsonl")) == 3


def test_a_restart_resumes_the_queue_and_scores_each_object_once(tiny_model, node_factory, phantoms, tmp_path):
    from limbscan.node.spool import Spool

    out = tmp_path / "node"
    spool = Spool(out)
    files = phantoms(3)
    uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in files]
    for uid, path in zip(uids, files, strict=True):
        shutil.copyfile(path, spool.received_path(uid))  # received before a kill
    # The first was committed just before the kill, its object not yet let go.
    spool.commit(uids[0], {"file": f"received/{uids[0]}.dcm", "sop_instance_uid": uids[0], "scenario": "cascade",
                           "probability": 0.5, "threshold": 0.5, "label": "abnormal", "level": "likely", "seq": 0})
    shutil.copyfile(files[0], spool.received_path(uids[0]))
    node = node_factory(out)
    assert node.wait_idle(60)
    records = _lines(out / "predictions.jsonl")
    assert sorted(r["sop_instance_uid"] for r in records) == sorted(uids)
    assert len(records) == 3 and not list((out / "received").iterdir())
    assert next(r for r in records if r["sop_instance_uid"] == uids[0])["probability"] == 0.5  # not scored again
    assert len({json.loads(p.read_text())["seq"] for p in (out / "scored").glob("*.json")}) == 3


def test_serve_shows_the_nodes_live_worklist(tiny_model, node_factory, phantoms, tmp_path):
    from fastapi.testclient import TestClient

    from limbscan.serve import create_app

    node = node_factory()
    assoc = _scu(node.port)
    [path] = phantoms(1)
    assert _store(assoc, path) == 0
    assoc.release()
    assert node.wait_idle(60)
    node.flush_status()
    uid = str(pydicom.dcmread(path).SOPInstanceUID)
    with TestClient(create_app(tiny_model, node=node.config.out, token="t", workdir=tmp_path / "web")) as client:
        auth = {"Authorization": "Bearer t"}
        assert client.get("/v1/node").status_code == 401
        status = client.get("/v1/node", headers=auth).json()
        assert status["node"]["ae_title"] == "LIMBSCAN" and status["node"]["port"] == node.port
        (row,) = status["rows"]
        assert row["sop_instance_uid"] == uid and "mask" not in json.dumps(row)
        overlay = client.get(f"/v1/node/overlays/{uid}.png", headers=auth)
        assert overlay.status_code == 200 and overlay.content.startswith(b"\x89PNG")
        assert client.get("/v1/node/overlays/..%2fnode.json.png", headers=auth).status_code == 404
        assert client.get("/v1/node/overlays/1.2.3.png", headers=auth).status_code == 404
    with TestClient(create_app(tiny_model, workdir=tmp_path / "web2")) as client:
        assert client.get("/v1/node").status_code == 404


def test_listen_command_checks_its_options(tiny_bundle, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import limbscan.node
    from limbscan.cli import app
    from limbscan.errors import LimbscanError

    runner = CliRunner()
    result = runner.invoke(app, ["listen", str(tiny_bundle), "-o", str(tmp_path / "n")])
    assert result.exit_code != 0 and "--allow" in result.output
    result = runner.invoke(app, ["listen", str(tiny_bundle), "-o", str(tmp_path / "n"), "--allow", "PACS",
                                 "--forward", "PACS-at-host"])
    assert isinstance(result.exception, LimbscanError) and "AE@host:port" in str(result.exception)

    started = {}

    class FakeNode:
        def __init__(self, bundle, config):
            started.update(bundle=bundle, config=config)
            self.port = config.port

        def start(self):
            return self

        def serve_forever(self):
            started["served"] = True

    monkeypatch.setattr(limbscan.node, "Node", FakeNode)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # the command's SIGTERM handler: not in pytest
    result = runner.invoke(app, ["listen", str(tiny_bundle), "-o", str(tmp_path / "n"), "--allow", "PACS",
                                 "--allow", "CR1", "--aet", "TRIAGE", "--port", "11113",
                                 "--forward", "PACS@10.0.0.5:104", "--stow", "http://pacs/dicom-web"])
    assert result.exit_code == 0, result.output
    config = started["config"]
    assert config.allowed == ["PACS", "CR1"] and config.ae_title == "TRIAGE" and config.port == 11113
    assert [d.label for d in config.forward] == ["PACS@10.0.0.5:104", "http://pacs/dicom-web/studies"]
    assert config.host == "127.0.0.1" and config.dicom_out == ("sc", "sr") and started["served"]


def test_forwarding_to_a_node_that_takes_only_srs(node_factory, phantoms):
    """C-STORE to a pynetdicom sink accepting Comprehensive SR only: the SR arrives, the SC it cannot
    take is moved aside for good instead of blocking the outbox."""
    from pynetdicom import AE, evt

    from limbscan.node import parse_forward

    got = []
    sink = AE(ae_title="SINK")
    sink.add_supported_context("1.2.840.10008.5.1.4.1.1.88.33")
    server = sink.start_server(("127.0.0.1", 0), block=False,
                               evt_handlers=[(evt.EVT_C_STORE, lambda e: got.append(e.dataset.Modality) or 0)])
    try:
        node = node_factory(forward=[parse_forward(f"SINK@127.0.0.1:{server.server_address[1]}")])
        assoc = _scu(node.port)
        [path] = phantoms(1)
        assert _store(assoc, path) == 0
        assoc.release()
        assert node.wait_idle(60)
    finally:
        server.shutdown()
    assert got == ["SR"]
    (dest,) = node.config.forward
    refused = list((node.spool.outbox(dest.key) / "refused").iterdir())
    assert len(refused) == 1 and pydicom.dcmread(refused[0]).Modality == "OT"
    assert [d["via"] for d in _lines(node.config.out / "delivered.jsonl")] == ["dimse"]


def test_storescu_chest_and_limb_of_one_patient_only_the_limb_is_scored(gated_bundle, storescu, pydicom_data,
                                                                         phantoms, tmp_path, caplog):
    """DCMTK sends a chest CR and a tibia CR of one patient: the chest is 'not analysed' (its header),
    never a finding on the worklist and sent nowhere; the tibia is scored; the node goes on."""
    from limbscan.inference import load

    caplog.set_level(logging.INFO)
    sent = []
    for name in ("RG1_UNCI.dcm", "RG3_UNCR.dcm"):  # CHEST; EXTREMITY, "... of distal tibia"
        ds = pydicom.dcmread(pydicom_data(name))
        ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
        sent.append(tmp_path / name)
        ds.save_as(sent[-1], enforce_file_format=True)
    out = tmp_path / "node"
    with Node(load(gated_bundle), NodeConfig(out=out, allowed=["STORESCU"], port=0)) as node:
        storescu(node.port, sent)
        assert node.wait_idle(120)
        records = {r["sop_instance_uid"]: r for r in _lines(out / "predictions.jsonl")}
        chest, limb = (records[str(pydicom.dcmread(p).SOPInstanceUID)] for p in sent)
        assert chest["level"] == "out_of_scope" and chest["probability"] is None and "dicom" not in chest
        assert chest["scope"]["decided_by"] == "header" and "chest" in chest["scope"]["reason"]
        assert limb["level"] in ("likely", "suspected", "normal") and 0 <= limb["probability"] <= 1
        assert len(limb["dicom"]) == 2  # only the limb's SR and SC go back
        assert sorted(p.name for p in (out / "dicom").iterdir()) == sorted(Path(d).name for d in limb["dicom"])
        worklist = (out / "worklist.csv").read_text().splitlines()
        assert worklist[1].startswith("1,") and limb["sop_instance_uid"] in worklist[1]
        assert worklist[2].startswith(",") and "out_of_scope" in worklist[2]  # unranked, not a finding
        node.flush_status()
        studies = json.loads((out / "node.json").read_text())["studies"]
        assert [s["level"] for s in studies] == [limb["level"], "out_of_scope"]
        # The node goes on: a lower-limb phantom after them is scored.
        storescu(node.port, phantoms(1))
        assert node.wait_idle(60) and len(_lines(out / "predictions.jsonl")) == 3
    assert "not analysed: BodyPartExamined names the chest" in caplog.text
    assert PATIENT_ID not in caplog.text and PATIENT_NAME.split("^")[0] not in caplog.text
