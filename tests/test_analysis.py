"""The one per-image path: a file through ``predict``, ``POST /v1/predict`` and ``listen`` gives the
same record (probability, level, scope verdict, boxes), in scope or not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from limbscan.analysis import AnalyseOptions, Analyser
from limbscan.errors import BadInputError, LimbscanError
from limbscan.inference import load
from limbscan.node import Node, NodeConfig
from limbscan.predict import run_predict
from limbscan.serve import create_app

SAME = ("probability", "level", "label", "scope", "scenario", "threshold", "suspected_threshold", "width", "height",
        "body_part", "scores", "study")


@pytest.fixture(scope="module")
def gated_model(gated_bundle):
    return load(gated_bundle)


def _photo(tmp_path: Path) -> Path:
    from PIL import Image
    from skimage import data

    path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def _same(a: dict, b: dict) -> None:
    for key in SAME:
        if isinstance(a[key], float):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key
        else:
            assert a[key] == b[key], key
    assert [d["score"] for d in a["detections"]] == pytest.approx([d["score"] for d in b["detections"]], abs=1e-6)
    for da, db in zip(a["detections"], b["detections"], strict=True):
        assert da["box"] == pytest.approx(db["box"], abs=1e-3)


def _listen(model, files: list[Path], out: Path) -> dict[str, dict]:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    with Node(model, NodeConfig(out=out, allowed=["SCU"], port=0)) as node:
        ae = AE(ae_title="SCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="LIMBSCAN")
        assert assoc.is_established
        assert [int(assoc.send_c_store(f).Status) for f in files] == [0] * len(files)
        assoc.release()
        assert node.wait_idle(120)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f.name for f in files}
    return {uids[r["sop_instance_uid"]]: r for r in records}


def test_predict_serve_and_listen_give_one_record(gated_model, pydicom_data, tmp_path):
    tibia, chest = pydicom_data("RG3_UNCR.dcm"), pydicom_data("RG1_UNCI.dcm")
    photo = _photo(tmp_path)
    run_predict(gated_model, [str(tibia), str(chest), str(photo)], tmp_path / "out", progress=False)
    by_predict = {Path(r["file"]).name: r
                  for r in map(json.loads, (tmp_path / "out" / "predictions.jsonl").read_text().splitlines())}
    assert set(by_predict) == {tibia.name, chest.name, photo.name}

    # What each is: the tibia scored (header), the chest refused by its header, the photograph by its pixels.
    assert by_predict[tibia.name]["scope"]["decided_by"] == "header" and by_predict[tibia.name]["probability"] >= 0
    assert by_predict[tibia.name]["overlay"].startswith("overlays/")
    for name, who in ((chest.name, "header"), (photo.name, "pixels")):
        record = by_predict[name]
        assert record["level"] == "out_of_scope" and record["probability"] is None and record["detections"] == []
        assert record["scope"]["in_scope"] is False and record["scope"]["decided_by"] == who
        assert "overlay" not in record

    with TestClient(create_app(gated_model, workdir=tmp_path / "work")) as client:
        for path in (tibia, chest, photo):
            answer = client.post("/v1/predict", files={"file": ("upload", path.read_bytes())})
            assert answer.status_code == 200, answer.text
            record = answer.json()
            _same(by_predict[path.name], record)
            assert record["file"] is None
            assert ("overlay_url" in record) == (path == tibia)

    by_listen = _listen(gated_model, [tibia, chest], tmp_path / "node")
    for path in (tibia, chest):
        _same(by_predict[path.name], by_listen[path.name])
    assert "dicom" in by_listen[tibia.name] and "dicom" not in by_listen[chest.name]  # nothing sent back for it


def test_the_gate_off_scores_everything(gated_model, pydicom_data, tmp_path):
    chest = pydicom_data("RG1_UNCI.dcm")
    analyser = Analyser(gated_model, AnalyseOptions(gate=False))
    record = analyser.one(chest).record
    assert record["scope"] == {"in_scope": True, "decided_by": "off", "reason": "input gate turned off",
                               "region_score": None, "distance": None}
    assert 0 <= record["probability"] <= 1 and record["level"] in ("likely", "suspected", "normal")


def test_the_analyser_checks_its_options_and_names_a_bad_file(gated_model, tmp_path):
    with pytest.raises(LimbscanError, match="no scenario 'nope'"):
        Analyser(gated_model, AnalyseOptions(scenario="nope"))
    with pytest.raises(LimbscanError, match="--studies"):
        Analyser(gated_model, AnalyseOptions(study_key="patient"))
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(BadInputError, match="x.png"):
        Analyser(gated_model).one(bad)
