"""End to end against the real PACS and the reference DICOM tools: DCMTK's storescu sends, Orthanc
pushes and receives, and the SR / SC are read back through Orthanc's REST and DICOMweb APIs.
Skipped, with the reason, where Orthanc or DCMTK is not installed (.ci/run installs both as root)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from limbscan.node import Node, NodeConfig, parse_forward, parse_stow

PATIENT_NAME, PATIENT_ID = "Quixote^Alonso", "PID-451-XYZ"  # as tests/node/conftest.py writes them


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _wait(condition, timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _sr_and_sc(pacs, tmp_path: Path) -> dict[str, dict]:
    """Per source SOP Instance UID, the SR and SC Orthanc holds: {"sr": Dataset path, "sc": Dataset}."""
    found: dict[str, dict] = {}
    for inst in pacs.instances():
        data = pacs.get(f"/instances/{inst['ID']}/file").content
        ds = pydicom.dcmread(io.BytesIO(data))
        if ds.Modality == "SR":
            path = tmp_path / f"sr-{inst['ID']}.dcm"
            path.write_bytes(data)
            ref = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
            source = str(ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            found.setdefault(source, {})["sr"] = path
        elif ds.Modality == "OT":
            found.setdefault(str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID), {})["sc"] = ds
    return found


def _check_report(sr_path: Path, record: dict) -> None:
    """The SR Orthanc returns says what predictions.jsonl says: finding, probability, threshold, boxes."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    report = hd.sr.srread(sr_path).content
    (group,) = report.get_image_measurement_groups()
    (normality,) = group.get_qualitative_evaluations(name=codes.DCM.Normality)
    assert normality.value == (codes.SCT.Abnormal if record["label"] == "abnormal" else codes.SCT.Normal)
    (probability,) = group.get_measurements(name=codes.DCM.Probability)
    (threshold,) = group.get_measurements(name=codes.DCM.ThresholdValue)
    assert probability.value == pytest.approx(record["probability"], abs=1e-6)
    assert threshold.value == pytest.approx(record["threshold"], abs=1e-6)
    regions = report.get_planar_roi_measurement_groups()
    assert len(regions) == min(5, len(record["detections"])) > 0
    for region, det in zip(regions, sorted(record["detections"], key=lambda d: -d["score"]), strict=False):
        x0, y0, x1, y1 = det["box"]
        np.testing.assert_allclose(region.roi.value, [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], atol=1e-3)


@pytest.fixture
def node_factory(tiny_model, tmp_path):
    nodes: list[Node] = []

    def make(**options) -> Node:
        options.setdefault("out", tmp_path / "node")
        options.setdefault("allowed", ["STORESCU", "ORTHANC"])
        options.setdefault("port", 0)
        nodes.append(Node(tiny_model, NodeConfig(**options)).start())
        return nodes[-1]

    yield make
    for node in nodes:
        node.stop()


def test_storescu_to_limbscan_to_orthanc_real_cr_both_transfer_syntaxes(orthanc, node_factory, storescu,
                                                                       pydicom_data, tmp_path):
    pacs = orthanc().start()
    node = node_factory(forward=[parse_forward(f"ORTHANC@127.0.0.1:{pacs.dicom_port}")])
    uncompressed, j2k = pydicom_data("RG3_UNCR.dcm"), pydicom_data("RG3_J2KR.dcm")
    storescu(node.port, [uncompressed])
    storescu(node.port, [j2k], extra=["-xv"])  # propose JPEG 2000 lossless: the file goes as it is
    refused = storescu(node.port, [uncompressed], aet="INTRUDER", check=False)
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert node.wait_idle(120)

    records = {r["sop_instance_uid"]: r for r in _lines(node.config.out / "predictions.jsonl")}
    assert set(records) == {_uid(uncompressed), _uid(j2k)}
    # The same pixels, losslessly compressed: the same score.
    assert records[_uid(uncompressed)]["probability"] == pytest.approx(records[_uid(j2k)]["probability"], abs=1e-6)
    source = pydicom.dcmread(uncompressed, stop_before_pixels=True)
    study = str(source.StudyInstanceUID)

    # DICOMweb: the study holds two new series of each kind, beside none of the source's (not sent to Orthanc).
    series = pacs.get(f"/dicom-web/studies/{study}/series").json()
    modalities = Counter(s["00080060"]["Value"][0] for s in series)
    assert modalities == {"SR": 2, "OT": 2}
    by_source = _sr_and_sc(pacs, tmp_path)
    assert set(by_source) == set(records)
    for uid, record in records.items():
        sr = pydicom.dcmread(by_source[uid]["sr"])
        sc = by_source[uid]["sc"]
        for ds in (sr, sc):
            assert ds.StudyInstanceUID == study and ds.PatientID == source.PatientID  # filed in the source's study
        _check_report(by_source[uid]["sr"], record)
        assert sc.BurnedInAnnotation == "YES" and sc.SamplesPerPixel == 3
    assert len(pacs.instances()) == 4  # nothing twice


def test_orthanc_pushes_a_study_and_gets_the_results_back(orthanc, node_factory, phantoms, port, tmp_path):
    import requests

    node_port = port()
    pacs = orthanc({"limbscan": ["LIMBSCAN", "127.0.0.1", node_port]}).start()
    node = node_factory(port=node_port, forward=[parse_stow(pacs.url + "/dicom-web")])
    sent = phantoms(2)
    for path in sent:
        requests.post(pacs.url + "/instances", data=path.read_bytes(), timeout=30).raise_for_status()
    (study_id,) = pacs.get("/studies").json()
    answer = requests.post(pacs.url + "/modalities/limbscan/store", data=study_id, timeout=60)
    assert answer.ok, answer.text
    assert node.wait_idle(120)

    records = {r["sop_instance_uid"]: r for r in _lines(node.config.out / "predictions.jsonl")}
    assert set(records) == {_uid(p) for p in sent}
    _wait(lambda: len(pacs.instances()) == 6, 30, "2 SR + 2 SC in Orthanc")
    assert pacs.get("/studies").json() == [study_id]  # back into the very study Orthanc pushed
    by_source = _sr_and_sc(pacs, tmp_path)
    for uid, record in records.items():
        _check_report(by_source[uid]["sr"], record)
    assert [d["via"] for d in _lines(node.config.out / "delivered.jsonl")] == ["stow"] * 4


def test_orthanc_auto_routes_radiographs_with_the_readmes_lua_script(orthanc, node_factory, storescu, phantoms,
                                                                     port):
    script = Path(__file__).resolve().parents[2] / "docs" / "orthanc" / "limbscan.lua"
    node_port = port()
    pacs = orthanc({"limbscan": ["LIMBSCAN", "127.0.0.1", node_port]}, LuaScripts=[str(script)]).start()
    node = node_factory(port=node_port, forward=[parse_forward(f"ORTHANC@127.0.0.1:{pacs.dicom_port}")])
    sent = phantoms(2)
    storescu(pacs.dicom_port, sent, called="ORTHANC")  # the modality sends to the PACS only
    _wait(lambda: len(pacs.instances()) == 6, 120, "2 radiographs + 2 SR + 2 SC in Orthanc")
    assert node.wait_idle(60)
    time.sleep(1)  # had the SR or SC been routed back to limbscan, it would be received by now
    assert len(pacs.instances()) == 6
    assert sorted(r["sop_instance_uid"] for r in _lines(node.config.out / "predictions.jsonl")) == \
        sorted(_uid(p) for p in sent)
    assert _lines(node.config.out / "errors.jsonl") == []


def test_destination_down_then_up_results_arrive_once(orthanc, node_factory, storescu, phantoms, port, tmp_path):
    pacs = orthanc()  # configured, not started: both its DICOM and its DICOMweb port refuse
    node = node_factory(forward=[parse_forward(f"ORTHANC@127.0.0.1:{pacs.dicom_port}"),
                                 parse_stow(pacs.url + "/dicom-web")], retry_base=0.2, retry_max=1.0)
    sent = phantoms(3)
    storescu(node.port, sent)
    out = node.config.out
    _wait(lambda: len(_lines(out / "predictions.jsonl")) == 3, 120, "3 results")
    for dest in node.config.forward:
        assert len(node.spool.outbox_files(dest.key)) == 6  # 3 SR + 3 SC wait for each destination
    _wait(lambda: all(f.failures >= 2 for f in node.forwarders), 30, "retries")
    node.flush_status()
    status = json.loads((out / "node.json").read_text())["node"]
    assert all(d["pending"] == 6 and d["last_error"] for d in status["destinations"])

    pacs.start()
    assert node.wait_idle(60)
    delivered = Counter((d["destination"], d["uid"]) for d in _lines(out / "delivered.jsonl"))
    assert len(delivered) == 12 and set(delivered.values()) == {1}  # every object to each destination, once
    by_source = _sr_and_sc(pacs, tmp_path)
    assert set(by_source) == {_uid(p) for p in sent}
    assert len(pacs.instances()) == 6


def _listen(bundle: Path, out: Path, node_port: int, pacs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "limbscan.cli", "listen", str(bundle), "-o", str(out), "--allow", "STORESCU",
           "--port", str(node_port), "--forward", f"ORTHANC@127.0.0.1:{pacs.dicom_port}", "--retry-max", "1"]
    log = open(out.parent / f"{out.name}.log", "ab")  # noqa: SIM115 - the process keeps it
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _running(out: Path) -> bool:
    try:
        return json.loads((out / "node.json").read_text())["node"]["running"]
    except (OSError, ValueError, KeyError):
        return False


def test_killed_mid_queue_then_restarted_scores_every_image_once(orthanc, tiny_bundle, storescu, phantoms, port,
                                                                  tmp_path):
    pacs = orthanc().start()
    out, node_port = tmp_path / "node", port()
    sent = phantoms(16)
    process = _listen(tiny_bundle, out, node_port, pacs)
    try:
        _wait(lambda: _running(out), 120, "the node to start")
        storescu(node_port, sent)  # every C-STORE answered: every object is on disk
        _wait(lambda: len(list((out / "scored").glob("*.json"))) >= 1, 60, "a first result", poll=0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    # A kill between a result's commit (scored/) and its object's release leaves both: the restart
    # must let that object go unscored. Mid-queue: some results committed, some objects unscored.
    scored = {p.stem for p in (out / "scored").glob("*.json")}
    left = {p.stem for p in (out / "received").glob("*.dcm")} - scored
    assert scored and 0 < len(left) < 16, f"{len(scored)} scored, {len(left)} unscored: the kill was not mid-queue"

    process = _listen(tiny_bundle, out, node_port, pacs)
    try:
        _wait(lambda: len(list((out / "scored").glob("*.json"))) == 16 and not list((out / "received").iterdir())
              and not list((out / "outbox").glob("*/*.dcm")), 180, "every object scored and sent")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    records = _lines(out / "predictions.jsonl")
    assert sorted(r["sop_instance_uid"] for r in records) == sorted(_uid(p) for p in sent)  # each once
    by_source = _sr_and_sc(pacs, tmp_path)
    assert set(by_source) == {_uid(p) for p in sent} and len(pacs.instances()) == 32
    log = (out.parent / "node.log").read_text()
    assert "resuming:" in log and PATIENT_NAME.split("^")[0] not in log and PATIENT_ID not in log


def test_twenty_senders_at_once_and_a_corrupt_object(orthanc, node_factory, storescu, phantoms, pydicom_data,
                                                      tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    pacs = orthanc().start()
    node = node_factory(forward=[parse_forward(f"ORTHANC@127.0.0.1:{pacs.dicom_port}")])
    sent = phantoms(20)
    short = pydicom.dcmread(sent[0])
    short.SOPInstanceUID = short.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    short.PixelData = short.PixelData[: len(short.PixelData) // 3]
    short.save_as(tmp_path / "short.dcm")

    with ThreadPoolExecutor(21) as pool:
        done = list(pool.map(lambda p: storescu(node.port, [p], extra=["-v"], check=False),
                             [*sent, tmp_path / "short.dcm"]))
    assert all(d.returncode == 0 for d in done[:20]), [d.stderr for d in done if d.returncode]
    assert done[20].returncode != 0 and "Received Store Response (Error: CannotUnderstand)" in done[20].stderr
    assert node.wait_idle(180)

    records = _lines(node.config.out / "predictions.jsonl")
    assert sorted(r["sop_instance_uid"] for r in records) == sorted(_uid(p) for p in sent)
    (error,) = _lines(node.config.out / "errors.jsonl")
    assert error["file"] == f"received/{short.SOPInstanceUID}.dcm" and "pixel data holds" in error["error"]
    assert len(pacs.instances()) == 40
    storescu(node.port, [pydicom_data("RG3_UNCR.dcm")])  # and it still serves
