"""The input gate's header check: modality and body-part words, on hand-made metadata and on
pydicom-data's real files (chest CR, NM, CT, MR, and a tibia CR)."""

from __future__ import annotations

import pytest

from limbscan.gate import ScopeVerdict, header_verdict
from limbscan.io import read_image
from limbscan.io.bodypart import OTHER_REGIONS, body_region, normalize_body_part
from limbscan.io.meta import ImageMeta


def _meta(fmt="dicom", modality="CR", region=None) -> ImageMeta:
    return ImageMeta(100, 100, fmt, modality=modality, header_region=region)


@pytest.mark.parametrize("text, part", [
    ("PA CHEST", "chest"), ("CT HEAD", "head"), ("L-SPINE", "spine"), ("ABDOMEN", "abdomen"),
    ("SHOULDER", "shoulder / arm"), ("Hand PA", "hand / wrist"), ("WRIST", "hand / wrist"),
    ("ELBOW", "elbow / forearm"), ("SOFT TISSUE NECK", "neck"), ("Whole Body Bone", "whole body"),
    # lower limb, including the words that also name other regions
    ("AP PELVIS", "hip"), ("neck of femur", "hip"), ("head of the femur", "hip"), ("Femoral head", "hip"),
    ("fibular neck", "leg"), ("talar neck", "foot"), ("XR_KNEE", "knee"), ("TIB-FIB", "leg"),
])
def test_body_region_names_lower_limb_and_other_parts(text, part):
    assert body_region(text)[0] == part
    assert normalize_body_part(text) == (None if part in OTHER_REGIONS else part)


@pytest.mark.parametrize("text", ["EXTREMITY", "", None, "Quixote^Alonso", "study 1"])
def test_generic_or_blank_text_names_no_region(text):
    assert body_region(text) is None


def test_modality_other_than_a_radiograph_is_out_of_scope_and_named():
    verdict = header_verdict(_meta(modality="CT"))
    assert verdict == ScopeVerdict(False, "header", verdict.reason)
    assert verdict.reason.startswith("Modality CT")


def test_a_modality_that_is_no_defined_term_is_not_quoted():
    verdict = header_verdict(_meta(modality="Alonso Quixote 1955"))
    assert not verdict.in_scope and "Alonso" not in verdict.reason and "not a defined term" in verdict.reason


def test_body_part_decides_and_the_reason_names_the_tag():
    chest = header_verdict(_meta(region=("BodyPartExamined", "chest", "chest")))
    assert not chest.in_scope and chest.reason.startswith("BodyPartExamined names the chest")
    knee = header_verdict(_meta(modality="DX", region=("StudyDescription", "knee", "knee")))
    assert knee.in_scope and knee.decided_by == "header"


@pytest.mark.parametrize("meta", [_meta(), _meta(modality=None), _meta(modality="OT"), _meta(fmt="png", modality=None),
                                  _meta(fmt="jpeg", modality=None, region=None)])
def test_a_silent_header_leaves_the_decision_to_the_pixels(meta):
    assert header_verdict(meta) is None


@pytest.mark.parametrize("name, tag", [
    ("RG1_UNCI.dcm", "BodyPartExamined"),  # CR, CHEST
    ("RG1_J2KR.dcm", "BodyPartExamined"),
    ("JPEG2000.dcm", "Modality NM"),
    ("J2K_pixelrep_mismatch.dcm", "Modality CT"),
    ("examples_overlay.dcm", "Modality MR"),
    ("CT_small.dcm", "Modality CT"),
    ("MR_small.dcm", "Modality MR"),
])
def test_real_dicom_of_another_part_or_modality_is_out_of_scope(pydicom_data, name, tag):
    _, meta = read_image(pydicom_data(name))
    verdict = header_verdict(meta)
    assert verdict is not None and not verdict.in_scope and verdict.reason.startswith(tag)


def test_the_real_tibia_cr_is_in_scope_by_its_study_description(pydicom_data):
    _, meta = read_image(pydicom_data("RG3_UNCR.dcm"))  # BodyPartExamined EXTREMITY: generic
    verdict = header_verdict(meta)
    assert verdict.in_scope and verdict.reason.startswith("StudyDescription names the leg ('tibia')")
