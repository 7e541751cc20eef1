"""DICOM outputs: a Secondary Capture of the overlay and a Comprehensive SR of the finding."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import limbscan.io.dicom_out as dicom_out
from limbscan.errors import BadInputError
from limbscan.io.dicom_out import dicom_outputs

# Single-component name: highdicom warns and logs about it, quoting it.
PATIENT = {
    "PatientName": "Quixotesque",
    "PatientID": "PID-73519",
    "PatientBirthDate": "19610203",
    "PatientSex": "M",
    "AccessionNumber": "ACC-88231",
}
IDENTIFIERS = [value for value in PATIENT.values() if len(value) > 1]  # "M" is in any "DICOM"
PATIENT_MODULE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientIdentityRemoved")
STUDY_MODULE = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyDescription")
MANIFEST = {
    "limbscan_version": "9.8.7",
    "scenarios": ["cascade", "detector"],
    "default_scenario": "cascade",
    "thresholds": {"cascade": 0.42, "detector": 0.5},
    "threshold_rule": "youden",
    "suspected_sensitivity": 0.95,
    "created": "2025-01-02T03:04:05Z",
}


def _synthetic_dicom(path: Path, rows: int = 48, cols: int = 64, pixels: bool = True, **overrides) -> Path:
    """A small DX For Presentation image with patient data in every identifying field."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.PatientIdentityRemoved = "NO"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240102", "101010", "ST-1"
    ds.StudyDescription = "XR ANKLE 2 VIEWS"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.PatientOrientation = ["AL", "F"]  # composite: highdicom's own check would refuse it
    ds.BodyPartExamined = "ANKLE"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if pixels:
        ds.PixelData = np.arange(rows * cols, dtype=np.uint8).tobytes()
    for keyword, value in overrides.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def _prediction(width: int, height: int, label: str = "abnormal", probability: float = 0.83, n_boxes: int = 2,
                suspected_threshold: float | None = 0.12) -> dict:
    """Prediction.to_json() shape, boxes inside a ``width`` x ``height`` image, best first."""
    rng = np.random.default_rng(n_boxes)
    detections = []
    for score in sorted(rng.uniform(0.05, 0.95, n_boxes), reverse=True):
        x0, y0 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
        box = [round(x0, 2), round(y0, 2), round(x0 + width / 3, 2), round(y0 + height / 3, 2)]
        detections.append({"box": box, "score": float(score)})
    return {
        "file": "ignored.dcm",
        "scenario": "cascade",
        "probability": probability,
        "threshold": 0.42,
        "label": label,
        "level": "likely" if probability >= 0.42 else (
            "suspected" if suspected_threshold is not None and probability >= suspected_threshold else "normal"),
        "suspected_threshold": suspected_threshold,
        "scores": {"cascade": probability, "detector": 0.5},
        "detections": detections,
        "width": width,
        "height": height,
        "body_part": "ankle",
    }


def _overlay(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _by_modality(paths: list[Path]) -> dict[str, pydicom.Dataset]:
    return {ds.Modality: ds for ds in map(pydicom.dcmread, paths)}


def _report(path: Path) -> hd.sr.MeasurementReport:
    return hd.sr.srread(path).content


def _assert_filed_with_source(out: pydicom.Dataset, src: pydicom.Dataset) -> None:
    for keyword in PATIENT_MODULE + STUDY_MODULE:
        assert out.get(keyword) == src.get(keyword), keyword
    assert out.SeriesInstanceUID != src.SeriesInstanceUID
    assert out.SOPInstanceUID != src.SOPInstanceUID


def test_synthetic_source_gives_sc_and_sr_in_its_study(tmp_path):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    src = pydicom.dcmread(source)
    pred, overlay = _prediction(64, 48), _overlay(30, 40)
    paths = dicom_outputs(source, pred, overlay, MANIFEST, tmp_path / "out")

    assert [p.parent for p in paths] == [tmp_path / "out"] * 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths), "no temp files left"
    out = _by_modality(paths)
    sc, sr = out["OT"], out["SR"]
    for ds, path in ((sc, paths[0]), (sr, paths[1])):
        assert path.name == f"{ds.SOPInstanceUID}.dcm"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        _assert_filed_with_source(ds, src)
    assert sc.SeriesInstanceUID != sr.SeriesInstanceUID

    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.SeriesDescription == "limbscan overlay"
    assert sc.ImageType[0] == "DERIVED" and sc.BurnedInAnnotation == "YES"
    assert sc.PatientOrientation == src.PatientOrientation
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    np.testing.assert_array_equal(sc.pixel_array, overlay)
    np.testing.assert_array_equal(hd.imread(paths[0]).get_frame(1), overlay)

    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == src.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_sr_holds_finding_probability_threshold_and_boxes(tmp_path):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    src = pydicom.dcmread(source)
    pred = _prediction(64, 48, n_boxes=3)
    (path,) = dicom_outputs(source, pred, _overlay(48, 64), MANIFEST, tmp_path / "out", kinds=("sr",))
    report = _report(path)

    (image_group,) = report.get_image_measurement_groups()
    (evaluation,) = image_group.get_qualitative_evaluations(name=codes.DCM.Normality)
    assert evaluation.value == codes.SCT.Abnormal
    (probability,) = image_group.get_measurements(name=codes.DCM.Probability)
    (threshold,) = image_group.get_measurements(name=codes.DCM.ThresholdValue)
    assert probability.value == pytest.approx(pred["probability"])
    assert threshold.value == pytest.approx(pred["threshold"])
    assert [site.value for site in image_group.finding_sites] == [codes.SCT.AnkleJoint]
    texts = [item.TextValue for item in _walk(pydicom.dcmread(path)) if item.get("ValueType") == "TEXT"]
    assert "scenario=cascade" in texts and MANIFEST["limbscan_version"] in texts

    regions = report.get_planar_roi_measurement_groups()
    assert len(regions) == len(pred["detections"])
    for group, det in zip(regions, pred["detections"], strict=True):
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        x0, y0, x1, y1 = det["box"]
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
        np.testing.assert_allclose(group.roi.value, corners, atol=1e-3)
        ref = group.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (src.SOPClassUID, src.SOPInstanceUID)
        (score,) = group.get_measurements(name=codes.DCM.Probability)
        assert score.value == pytest.approx(det["score"], abs=1e-6)

    (observer,) = report.get_observer_contexts()
    assert observer.observer_type == codes.DCM.Device
    assert observer.observer_identifying_attributes.model_name == "limbscan 9.8.7"


def test_sr_says_whose_boxes_a_whole_image_finding_shows(tmp_path):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    pred = {**_prediction(64, 48, n_boxes=2), "scenario": "whole-image", "boxes_from": "detector"}
    (path,) = dicom_outputs(source, pred, _overlay(48, 64), MANIFEST, tmp_path / "out", kinds=("sr",))
    texts = [item.TextValue for item in _walk(pydicom.dcmread(path)) if item.get("ValueType") == "TEXT"]
    assert "scenario=whole-image" in texts and "boxes_from=detector" in texts
    names = [g.tracking_identifier for g in _report(path).get_planar_roi_measurement_groups()]
    assert names == ["limbscan detection 1 (detector)", "limbscan detection 2 (detector)"]


def _level(report: hd.sr.MeasurementReport) -> hd.sr.CodedConcept:
    (level,) = report.get_image_measurement_groups()[0].get_qualitative_evaluations(name=dicom_out.LEVEL)
    return level.value


@pytest.mark.parametrize(("probability", "suspected_threshold", "label", "level"),
                         [(0.83, 0.12, "abnormal", "LIKELY"), (0.3, 0.12, "normal", "SUSPECTED"),
                          (0.05, 0.12, "normal", "NORMAL"), (0.3, None, "normal", "NORMAL")])
def test_sr_holds_the_level_and_both_thresholds(tmp_path, probability, suspected_threshold, label, level):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    pred = _prediction(64, 48, label=label, probability=probability, suspected_threshold=suspected_threshold)
    (path,) = dicom_outputs(source, pred, _overlay(48, 64), MANIFEST, tmp_path / "out", kinds=("sr",))
    report = _report(path)
    assert _level(report) == hd.sr.CodedConcept(level, "99LIMBSCAN", dicom_out.LEVEL_CODES[level.lower()].meaning)
    group = report.get_image_measurement_groups()[0]
    (normality,) = group.get_qualitative_evaluations(name=codes.DCM.Normality)  # the balanced point's call, as before
    assert normality.value == (codes.SCT.Abnormal if label == "abnormal" else codes.SCT.Normal)
    (threshold,) = group.get_measurements(name=codes.DCM.ThresholdValue)
    assert threshold.value == pytest.approx(0.42)
    suspected = group.get_measurements(name=dicom_out.SUSPECTED_THRESHOLD)
    if suspected_threshold is None:  # a bundle exported without one: nothing claimed
        assert suspected == []
    else:
        assert [m.value for m in suspected] == [pytest.approx(suspected_threshold)]
        assert suspected[0].unit == dicom_out.PROBABILITY_UNIT
    ds = pydicom.dcmread(path)
    (scheme,) = ds.CodingSchemeIdentificationSequence  # the local designator is declared in the document
    assert (scheme.CodingSchemeDesignator, scheme.CodingSchemeResponsibleOrganization) == ("99LIMBSCAN", "limbscan")
    texts = [item.TextValue for item in _walk(ds) if item.get("ValueType") == "TEXT"]
    assert "bundle suspected_sensitivity=0.95" in texts


def test_a_level_that_disagrees_with_the_thresholds_is_refused(tmp_path):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    with pytest.raises(ValueError, match="level 'normal' disagrees"):
        dicom_outputs(source, _prediction(64, 48) | {"level": "normal"}, _overlay(48, 64), MANIFEST, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_normal_prediction_is_coded_normal_and_only_the_best_five_boxes_are_kept(tmp_path):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    pred = _prediction(64, 48, label="normal", probability=0.1, n_boxes=8)
    pred["detections"] = pred["detections"][::-1]  # worst first: the output must still keep the best
    (path,) = dicom_outputs(source, pred, _overlay(48, 64), MANIFEST, tmp_path / "out", kinds=("sr",))
    report = _report(path)

    (evaluation,) = report.get_image_measurement_groups()[0].get_qualitative_evaluations(name=codes.DCM.Normality)
    assert evaluation.value == codes.SCT.Normal
    scores = [
        g.get_measurements(name=codes.DCM.Probability)[0].value for g in report.get_planar_roi_measurement_groups()
    ]
    best = sorted((d["score"] for d in pred["detections"]), reverse=True)[:5]
    np.testing.assert_allclose(scores, best, atol=1e-6)


def test_no_detections_and_no_body_part_still_give_a_report(tmp_path):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    pred = _prediction(64, 48, n_boxes=0) | {"body_part": None}
    (path,) = dicom_outputs(source, pred, _overlay(48, 64), MANIFEST, tmp_path / "out", kinds=("sr",))
    report = _report(path)
    assert report.get_planar_roi_measurement_groups() == []
    assert report.get_image_measurement_groups()[0].finding_sites == []


def test_real_monochrome1_cr(tmp_path, pydicom_data):
    source = pydicom_data("RG3_UNCR.dcm")
    src = pydicom.dcmread(source, stop_before_pixels=True)
    overlay = _overlay(128, 128)
    pred = _prediction(int(src.Columns), int(src.Rows)) | {"body_part": "leg"}
    paths = dicom_outputs(source, pred, overlay, MANIFEST, tmp_path)
    out = _by_modality(paths)
    for ds in out.values():
        _assert_filed_with_source(ds, src)
    np.testing.assert_array_equal(out["OT"].pixel_array, overlay)
    report = _report(paths[1])
    group = report.get_image_measurement_groups()[0]
    assert group.get_qualitative_evaluations(name=codes.DCM.Normality)[0].value == codes.SCT.Abnormal
    assert [site.value for site in group.finding_sites] == [codes.SCT.LowerLeg]
    box = pred["detections"][0]["box"]
    np.testing.assert_allclose(report.get_planar_roi_measurement_groups()[0].roi.value[2], box[2:], atol=1e-3)


def test_patient_data_reaches_neither_logs_nor_warnings(tmp_path, caplog, capsys):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        paths = dicom_outputs(source, _prediction(64, 48), _overlay(48, 64), MANIFEST, tmp_path / "out")
    assert len(paths) == 2
    captured = capsys.readouterr()
    told = caplog.text + captured.out + captured.err + "".join(str(w.message) for w in said)
    for value in IDENTIFIERS:
        assert value not in told


def test_non_dicom_source_is_bad_input(tmp_path):
    png = tmp_path / "scan.dcm"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, "PNG")
    with pytest.raises(BadInputError) as info:
        dicom_outputs(png, _prediction(8, 8), _overlay(8, 8), MANIFEST, tmp_path / "out")
    assert info.value.path == str(png) and "PNG" in info.value.problem
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"pixels": False}, "no pixel data"),
        ({"StudyInstanceUID": None}, "StudyInstanceUID"),
        ({"SOPClassUID": "1.2.3.4.5"}, "SOP Class"),
    ],
)
def test_unusable_dicom_is_bad_input_without_patient_data(tmp_path, overrides, words):
    source = _synthetic_dicom(tmp_path / "in.dcm", **overrides)
    with pytest.raises(BadInputError) as info:
        dicom_outputs(source, _prediction(64, 48), _overlay(48, 64), MANIFEST, tmp_path / "out")
    assert str(info.value).startswith(str(source)) and words in info.value.problem
    assert not any(value in str(info.value) for value in IDENTIFIERS)


def test_caller_errors_are_value_errors(tmp_path):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    with pytest.raises(ValueError, match="unknown DICOM output kind"):
        dicom_outputs(source, _prediction(64, 48), _overlay(48, 64), MANIFEST, tmp_path, kinds=("pdf",))
    with pytest.raises(ValueError, match="100x48 image"):
        dicom_outputs(source, _prediction(100, 48), _overlay(48, 64), MANIFEST, tmp_path)
    with pytest.raises(ValueError, match="uint8"):
        dicom_outputs(source, _prediction(64, 48), _overlay(48, 64).astype(np.float32), MANIFEST, tmp_path)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    source = _synthetic_dicom(tmp_path / "in.dcm")

    def broken(fp, *args, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(dicom_out.pydicom, "dcmwrite", broken)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        dicom_outputs(source, _prediction(64, 48), _overlay(48, 64), MANIFEST, out)
    assert list(out.iterdir()) == []


def _walk(ds: pydicom.Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _walk(item)


def test_a_uid_seed_makes_every_uid_the_same_on_a_rebuild(tmp_path):
    source = _synthetic_dicom(tmp_path / "in.dcm")
    pred, overlay = _prediction(64, 48, n_boxes=2), _overlay(48, 64)

    def uids(paths: list[Path]) -> list[str]:
        found = []
        for ds in map(pydicom.dcmread, paths):
            found += [ds.SOPInstanceUID, ds.SeriesInstanceUID]
            found += [str(item.UID) for item in _walk(ds) if item.get("ValueType") == "UIDREF"]
        # The Device Observer UID names limbscan's version, the same in every report.
        return [uid for uid in found if uid != dicom_out.device_uid(MANIFEST["limbscan_version"])]

    first = dicom_outputs(source, pred, overlay, MANIFEST, tmp_path / "a", uid_seed="1.2.3|bundle")
    again = dicom_outputs(source, pred, overlay, MANIFEST, tmp_path / "b", uid_seed="1.2.3|bundle")
    other = dicom_outputs(source, pred, overlay, MANIFEST, tmp_path / "c", uid_seed="1.2.4|bundle")
    unseeded = dicom_outputs(source, pred, overlay, MANIFEST, tmp_path / "d")
    assert [p.name for p in first] == [p.name for p in again]
    assert uids(first) == uids(again) and len(uids(first)) == len(set(uids(first))) >= 7  # 2 x 2 + tracking UIDs
    assert not set(uids(first)) & set(uids(other)) and not set(uids(first)) & set(uids(unseeded))
