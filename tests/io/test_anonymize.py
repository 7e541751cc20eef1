"""De-identification (PS3.15 Annex E basic profile) on a real CR file with planted PHI."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from limbscan.errors import BadInputError
from limbscan.io import Anonymizer, anonymize_tree, read_image
from limbscan.io.anonymize import annex_e_table

# Every value below identifies someone; none may survive anywhere in the output.
PLANTED = {
    "PatientName": "Garcia^Lucia^Maria",
    "PatientID": "MRN-7719-ZQ",
    "PatientBirthDate": "19630217",
    "PatientAddress": "12 Calle Mayor, Sevilla",
    "PatientTelephoneNumbers": "+34-955-123456",
    "PatientMotherBirthName": "Fernandez^Rosa",
    "OtherPatientIDs": "SSN-555-0199",
    "IssuerOfPatientID": "HOSPITAL-VIRGEN-ROCIO",
    "InstitutionName": "Hospital Virgen del Rocio",
    "InstitutionAddress": "Avenida Manuel Siurot s/n",
    "ReferringPhysicianName": "House^Gregory",
    "PerformingPhysicianName": "Quinn^Michaela",
    "OperatorsName": "Nightingale^Florence",
    "NameOfPhysiciansReadingStudy": "Watson^John",
    "AccessionNumber": "ACC20240517X",
    "StudyID": "STUDY-88413",
    "StudyDate": "20240517",
    "SeriesDate": "20240518",
    "ContentDate": "20240519",
    "StudyTime": "134501",
    "AcquisitionDateTime": "20240517134502",
    "StationName": "XRAYROOM7",
    "DeviceSerialNumber": "SN-0048213",
    "PatientComments": "lives with daughter Carmen",
    "ImageComments": "Garcia left knee follow-up",
    "StudyDescription": "Garcia tibia check",
}
PRIVATE_TEXT = "private note Lucia"
NESTED_NAME = "Ramirez^Jorge"  # a PN inside a sequence the table does not name
NESTED_DATE = "20240601"
OVERLAY_TEXT = "overlay says Lucia Garcia"
CURVE_TEXT = "curve label Garcia"
OTHER_IDS_SEQ_ID = "PASSPORT-X1234567"
UNLISTED_UID = "1.2.3.4.5.6.7.8.9.77"


def _planted_dataset(path: Path, *, sop_uid: str | None = None) -> Dataset:
    ds = pydicom.dcmread(path)
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    if sop_uid:
        ds.SOPInstanceUID = sop_uid
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.BurnedInAnnotation = "NO"
    ds.FrameOfReferenceUID = "1.2.3.4.5.6.7.8.9.1"
    other = Dataset()
    other.PatientID = OTHER_IDS_SEQ_ID
    other.IssuerOfPatientID = "PASSPORT OFFICE"
    ds.OtherPatientIDsSequence = Sequence([other])
    region = Dataset()  # AnatomicRegionSequence is kept by the profile: its contents are cleaned
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "T-12345", "SRT", "Tibia"
    # Attributes Table E.1-1 does not list: caught by their kind (a name, a date, a UID).
    region.EvaluatorName = NESTED_NAME
    region.SecondaryReviewDate = NESTED_DATE
    region.RTVCommunicationSOPInstanceUID = UNLISTED_UID
    region.private_block(0x0011, "ACME NESTED", create=True).add_new(0x01, "LO", PRIVATE_TEXT)
    ds.AnatomicRegionSequence = Sequence([region])
    ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "LO", PRIVATE_TEXT)
    ds.add_new(0x60004000, "LT", OVERLAY_TEXT)  # Overlay Comments
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 8)  # Overlay Data
    ds.add_new(0x50002500, "LO", CURVE_TEXT)  # Curve Label (retired, still seen)
    ds.file_meta.SourceApplicationEntityTitle = "RAMIREZ_PC"
    return ds


def _secrets(ds: Dataset) -> list[str]:
    """Everything identifying that was in ``ds`` before anonymisation."""
    values = [v for v in PLANTED.values()]
    values += [PRIVATE_TEXT, NESTED_NAME, NESTED_DATE, UNLISTED_UID, OVERLAY_TEXT, CURVE_TEXT, OTHER_IDS_SEQ_ID]
    values += ["RAMIREZ_PC"]
    values += [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.FrameOfReferenceUID)]
    # the names' parts on their own, too
    values += ["Garcia", "Lucia", "Gregory", "Michaela", "Florence"]
    return values


def _every_value(ds: Dataset) -> list[str]:
    """The text of every element, file meta and nested sequences included."""
    found: list[str] = []

    def visit(_: Dataset, elem: pydicom.DataElement) -> None:
        if elem.VR == "SQ" or elem.tag == 0x7FE00010:
            return
        value = elem.value
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        found.append(f"{elem.tag} {value}")

    ds.walk(visit)
    ds.file_meta.walk(visit)
    return found


@pytest.fixture
def planted_file(tmp_path, pydicom_data) -> tuple[Path, Dataset]:
    ds = _planted_dataset(pydicom_data("RG3_UNCR.dcm"))
    path = tmp_path / "in" / "Garcia_Lucia_19630217" / "scan.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path)
    return path, pydicom.dcmread(path)


def test_no_planted_value_survives_anywhere(planted_file, tmp_path):
    src, original = planted_file
    dst = tmp_path / "out" / "anon.dcm"
    pseudonym = Anonymizer().anonymize_file(src, dst)

    out = pydicom.dcmread(dst)
    values = _every_value(out)
    raw = dst.read_bytes()
    header = raw[: raw.index(b"\xe0\x7f\x10\x00")]  # everything before the pixel data element
    for secret in _secrets(original):
        assert not any(secret in v for v in values), f"{secret!r} survived: {[v for v in values if secret in v]}"
        assert secret.encode() not in header, f"{secret!r} is in the written bytes"

    # private tags, curves and overlay data/comments are gone, at every depth
    assert not [e for e in _elements(out) if e.tag.is_private]
    assert not [e for e in _elements(out) if e.tag.group & 0xFF00 == 0x5000]
    assert 0x60003000 not in out and 0x60004000 not in out
    assert "OtherPatientIDsSequence" not in out and "PatientAddress" not in out

    # the profile's own marks
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod and out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.BurnedInAnnotation == "NO"  # kept: it warns of text in the pixels
    assert out.PatientID == pseudonym and re.fullmatch(r"anon-[0-9a-f]{16}", pseudonym)
    assert not out.PatientName and not out.StudyDate

    # pixels untouched; the body part survives the removal of the descriptions
    assert out.PixelData == original.PixelData
    assert out.BodyPartExamined == "LEG"
    a, meta_a = read_image(src)
    b, meta_b = read_image(dst)
    np.testing.assert_array_equal(a, b)
    assert meta_b.body_part == meta_a.body_part == "leg"


def _elements(ds: Dataset) -> list[pydicom.DataElement]:
    found: list[pydicom.DataElement] = []
    ds.walk(lambda _, elem: found.append(elem))
    return found


def test_uids_are_replaced_consistently_within_a_run(tmp_path, pydicom_data):
    study_files = []
    for n, sop in enumerate([generate_uid(), generate_uid()]):
        ds = _planted_dataset(pydicom_data("RG3_UNCR.dcm"), sop_uid=sop)
        path = tmp_path / f"img{n}.dcm"
        ds.save_as(path)
        study_files.append(path)
    original = pydicom.dcmread(study_files[0], stop_before_pixels=True)

    run = Anonymizer()
    outs = []
    for n, path in enumerate(study_files):
        run.anonymize_file(path, tmp_path / "out" / f"{n}.dcm")
        outs.append(pydicom.dcmread(tmp_path / "out" / f"{n}.dcm", stop_before_pixels=True))
    first, second = outs

    assert first.StudyInstanceUID == second.StudyInstanceUID != original.StudyInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID != original.SeriesInstanceUID
    assert first.FrameOfReferenceUID == second.FrameOfReferenceUID != original.FrameOfReferenceUID
    assert first.SOPInstanceUID != second.SOPInstanceUID
    inputs = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in study_files}
    assert first.SOPInstanceUID not in inputs and second.SOPInstanceUID not in inputs
    for out in outs:
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.SOPClassUID == original.SOPClassUID  # class UIDs name a format, not a person
        assert pydicom.uid.UID(out.StudyInstanceUID).is_valid
    assert first.PatientID == second.PatientID  # one patient, one pseudonym

    # another run (another salt) cannot be linked to this one
    other = Anonymizer().anonymize(pydicom.dcmread(study_files[0]))
    assert other.StudyInstanceUID != first.StudyInstanceUID and other.PatientID != first.PatientID
    # the same salt reproduces the same mapping
    again = Anonymizer(salt=run._salt).anonymize(pydicom.dcmread(study_files[0]))
    assert again.StudyInstanceUID == first.StudyInstanceUID


def test_pseudonym_is_stable_and_salted():
    a, b = Anonymizer(salt=b"one"), Anonymizer(salt=b"two")
    assert a.pseudonym("MRN-1") == a.pseudonym("MRN-1") == Anonymizer(salt=b"one").pseudonym("MRN-1")
    assert a.pseudonym("MRN-1") != a.pseudonym("MRN-2")
    assert a.pseudonym("MRN-1") != b.pseudonym("MRN-1")
    assert re.fullmatch(r"anon-[0-9a-f]{16}", a.pseudonym("MRN-1"))
    assert "MRN" not in a.pseudonym("MRN-1")
    assert a.pseudonym(None) is None and a.pseudonym("  ") is None


def test_table_holds_the_profile():
    table, masked = annex_e_table()
    tag = pydicom.datadict.tag_for_keyword
    assert table[tag("PatientName")] == "Z" and table[tag("PatientBirthDate")] == "Z"
    assert table[tag("PatientAddress")] == "X" and table[tag("OtherPatientIDs")] == "X"
    assert table[tag("StudyInstanceUID")] == "U" and table[tag("SOPInstanceUID")] == "U"
    assert tag("BurnedInAnnotation") not in table and tag("BodyPartExamined") not in table
    assert any(group == 0x6000 and element == 0x3000 for group, element, *_ in masked)  # overlay data


def test_anonymize_tree_names_nothing_from_the_input_and_skips_bad_files(tmp_path, pydicom_data, caplog):
    src = tmp_path / "export"
    patient_dir = src / "Garcia_Lucia_MRN-7719-ZQ" / "19630217"
    patient_dir.mkdir(parents=True)
    ds = _planted_dataset(pydicom_data("CT_small.dcm"))
    ds.save_as(patient_dir / "Garcia_1.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(patient_dir / "Garcia_2")  # no extension: found by content
    (patient_dir / "notes.txt").write_text("Garcia called on Monday")
    data = (patient_dir / "Garcia_1.dcm").read_bytes()
    (patient_dir / "Garcia_cut.dcm").write_bytes(data[: len(data) - 5000])  # truncated in the pixels
    (patient_dir / "Garcia_copy.dcm").write_bytes(data)  # the same instance twice

    dst = tmp_path / "anon"
    caplog.set_level(logging.DEBUG)
    written, skipped = anonymize_tree(src, dst, progress=False)

    assert len(written) == 2 and all(p.is_file() for p in written)
    for path in written:
        relative = path.relative_to(dst)
        assert re.fullmatch(r"anon-[0-9a-f]{16}/[0-9.]+\.dcm", relative.as_posix()), relative
        out = pydicom.dcmread(path)
        assert out.PatientIdentityRemoved == "YES"
        assert path.stem == out.SOPInstanceUID
    assert len({p.parent for p in written}) == 1  # one patient, one folder

    problems = {Path(s.path).name: s.problem for s in skipped}
    assert set(problems) == {"notes.txt", "Garcia_cut.dcm", "Garcia_copy.dcm"}
    assert "not a DICOM" in problems["notes.txt"]
    assert "truncated" in problems["Garcia_cut.dcm"]
    assert "duplicate" in problems["Garcia_copy.dcm"]
    for secret in ("MRN-7719-ZQ", "Garcia^Lucia", "19630217", "Hospital Virgen", "House^Gregory", PRIVATE_TEXT):
        assert secret not in caplog.text
        assert all(secret not in s.problem for s in skipped)


def test_anonymize_tree_can_mirror_folders_and_write_one_file(tmp_path, pydicom_data):
    src = tmp_path / "clean" / "knee"
    src.mkdir(parents=True)
    shutil.copy(pydicom_data("CT_small.dcm"), src / "a.dcm")
    written, skipped = anonymize_tree(tmp_path / "clean", tmp_path / "out", progress=False, keep_folders=True)
    assert not skipped and len(written) == 1
    assert written[0].parent == tmp_path / "out" / "knee" and written[0].name != "a.dcm"

    single, _ = anonymize_tree(src / "a.dcm", tmp_path / "one.dcm", progress=False)
    assert single == [tmp_path / "one.dcm"] and (tmp_path / "one.dcm").is_file()


def test_anonymize_file_rejects_bad_input_without_phi(tmp_path, planted_file, caplog):
    src, _ = planted_file
    data = src.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:2000])
    text = tmp_path / "report.dcm"
    text.write_text("Garcia^Lucia^Maria MRN-7719-ZQ")
    caplog.set_level(logging.DEBUG)
    anonymizer = Anonymizer()
    for path, word in ((cut, "truncated"), (text, "not a DICOM"), (tmp_path / "missing.dcm", "not found")):
        with pytest.raises(BadInputError) as info:
            anonymizer.anonymize_file(path, tmp_path / "out.dcm")
        assert word in info.value.problem and str(info.value).startswith(str(path))
        assert "Garcia" not in str(info.value) and "MRN-7719" not in str(info.value)
    assert not (tmp_path / "out.dcm").exists()
    assert not list(tmp_path.glob(".out.dcm*"))  # no temporary left behind
    assert "Garcia" not in caplog.text and "MRN-7719" not in caplog.text
