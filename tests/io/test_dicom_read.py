"""read_image on DICOM: real files in every transfer syntax, the grey-level pipeline, metadata,
body-part words, and bad input (with no patient data in any message)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

import limbscan.io.dicom as dicom_module
from limbscan.errors import BadInputError
from limbscan.io import LOWER_LIMB_PARTS, normalize_body_part, read_image
from limbscan.io.dicom import dicom_meta, dicom_pixels, grey_levels, pixel_spacing, redact

PHI = {"PatientName": "Garcia^Lucia", "PatientID": "MRN-7719-ZQ", "PatientBirthDate": "19630217"}


def _bone_vs_air(pixels: np.ndarray) -> tuple[float, float]:
    """RG3 (CR, right lower leg): at 30-50 % of the height the tibia shaft lies at 45-50 % of
    the width and air at 28-35 % (chosen by looking at the image)."""
    h, w = pixels.shape
    rows = slice(int(0.30 * h), int(0.50 * h))
    tibia = pixels[rows, int(0.45 * w) : int(0.50 * w)].mean()
    air = pixels[rows, int(0.28 * w) : int(0.35 * w)].mean()
    return float(tibia), float(air)


def _synthetic(values: np.ndarray, **attrs) -> Dataset:
    """A minimal greyscale dataset holding ``values`` (uint16) as native pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = values.astype("<u2").tobytes()
    for key, value in {**PHI, **attrs}.items():
        setattr(ds, key, value)
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _assert_bad(path: Path, *words: str) -> BadInputError:
    with pytest.raises(BadInputError) as info:
        read_image(path)
    err = info.value
    assert str(err).startswith(str(path))
    for word in words:
        assert word.lower() in err.problem.lower(), err.problem
    for value in PHI.values():
        assert value not in str(err)
    return err


# -- real files ----------------------------------------------------------------------------


def test_cr_tibia_monochrome1_reads_bone_bright(pydicom_data):
    pixels, meta = read_image(pydicom_data("RG3_UNCR.dcm"))
    assert pixels.dtype == np.float32 and pixels.shape == (1760, 1760)
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    tibia, air = _bone_vs_air(pixels)
    assert tibia > air + 0.4, (tibia, air)  # MONOCHROME1 was inverted
    assert meta.photometric == "MONOCHROME1" and meta.modality == "CR" and meta.bits_stored == 10
    # BodyPartExamined says only EXTREMITY; the study description names the tibia
    assert meta.body_part == "leg"
    assert (meta.width, meta.height, meta.format) == (1760, 1760, "dicom")


def test_jpeg2000_and_uncompressed_tibia_agree(pydicom_data):
    raw, _ = read_image(pydicom_data("RG3_UNCR.dcm"))
    j2k, meta = read_image(pydicom_data("RG3_J2KR.dcm"))
    assert j2k.shape == raw.shape
    assert np.abs(j2k - raw).max() < 1e-3
    tibia, air = _bone_vs_air(j2k)
    assert tibia > air + 0.4
    assert meta.body_part == "leg"


@pytest.mark.parametrize(
    ("compressed", "reference"),
    [
        ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),  # JPEG-LS lossless
        ("MR_small_RLE.dcm", "MR_small.dcm"),  # RLE
        ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm"),  # JPEG lossless (process 14), RGB -> grey
        ("MR_small_jp2klossless.dcm", "MR_small.dcm"),  # JPEG 2000 lossless
    ],
)
def test_lossless_syntaxes_match_the_uncompressed_file(pydicom_data, compressed, reference):
    a, _ = read_image(pydicom_data(compressed))
    b, _ = read_image(pydicom_data(reference))
    assert a.shape == b.shape and a.ndim == 2
    assert b.std() > 0.05
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    "name", ["JPEG-LL.dcm", "JPEGLSNearLossless_16.dcm", "JPGExtended.dcm", "US1_J2KI.dcm", "SC_rgb_jpeg_dcmtk.dcm"]
)
def test_compressed_syntaxes_decode(pydicom_data, name):
    path = pydicom_data(name)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    pixels, meta = read_image(path)
    assert pixels.dtype == np.float32 and pixels.shape == (header.Rows, header.Columns)
    assert np.isfinite(pixels).all() and 0.0 <= pixels.min() and pixels.max() <= 1.0
    assert pixels.std() > 0.01, "decoded to a flat image"


def test_palette_colour_is_reduced_to_grey(pydicom_data):
    pixels, meta = read_image(pydicom_data("OBXXXX1A.dcm"))
    assert pixels.shape == (600, 800) and pixels.std() > 0.01
    assert meta.photometric == "PALETTE COLOR"


def test_multiframe_takes_first_frame_and_says_so(pydicom_data):
    path = pydicom_data("emri_small.dcm")
    pixels, meta = read_image(path)
    frames = pydicom.dcmread(path).pixel_array
    assert frames.shape[0] == 10 and pixels.shape == frames.shape[1:]
    expected = (frames[0] - frames[0].min()) / np.ptp(frames[0])  # no window: min-max
    np.testing.assert_allclose(pixels, expected, atol=1e-6)
    assert any("first frame" in w and "10 frames" in w for w in meta.warnings)


# -- the grey-level pipeline ---------------------------------------------------------------------


def test_monochrome1_is_the_inverse_of_monochrome2():
    values = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) % 4096
    mono2, _ = dicom_pixels(_synthetic(values))
    mono1, _ = dicom_pixels(_synthetic(values, PhotometricInterpretation="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_no_voi_stretches_modality_values_min_to_max():
    values = np.linspace(100, 200, 64).reshape(8, 8).astype(np.uint16)
    pixels, notes = dicom_pixels(_synthetic(values))
    assert pixels.min() == 0.0 and pixels.max() == pytest.approx(1.0)
    np.testing.assert_allclose(pixels, (values - 100) / 100.0, atol=1e-6)
    assert notes == []


def test_window_applies_after_rescale():
    values = np.array([[0, 250, 300, 350, 1000]], dtype=np.uint16)
    # rescaled: -100, 400, 500, 600, 1900; window 500 +- 100 (in rescaled units)
    ds = _synthetic(values, RescaleSlope="2", RescaleIntercept="-100", WindowCenter="500", WindowWidth="200")
    pixels, _ = dicom_pixels(ds)
    assert pixels[0, 0] == 0.0 and pixels[0, 4] == 1.0  # clipped outside the window
    assert pixels[0, 2] == pytest.approx(0.5, abs=0.01)  # the centre is mid-grey
    assert pixels[0, 1] < pixels[0, 2] < pixels[0, 3]


def test_multiple_windows_use_the_first():
    values = np.array([[0, 100, 200, 300, 400]], dtype=np.uint16)
    ds = _synthetic(values, WindowCenter=["200", "50"], WindowWidth=["400", "20"])
    pixels, _ = dicom_pixels(ds)
    assert pixels[0, 2] == pytest.approx(0.5, abs=0.01)


def test_voi_lut_sequence_is_preferred_and_may_invert():
    values = np.array([[0, 64, 128, 255]], dtype=np.uint16)
    ds = _synthetic(values, BitsStored=8, HighBit=7, WindowCenter="10", WindowWidth="5")
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = list(range(255, -1, -1))  # a decreasing LUT: white for 0
    ds.VOILUTSequence = [item]
    out, _ = grey_levels(values, ds)
    np.testing.assert_allclose(out, 1.0 - values / 255.0, atol=1e-6)


def test_unusable_window_falls_back_to_min_max_with_a_note():
    values = np.array([[10, 20, 30]], dtype=np.uint16)
    pixels, notes = dicom_pixels(_synthetic(values, WindowCenter="20", WindowWidth="0"))
    np.testing.assert_allclose(pixels, [[0.0, 0.5, 1.0]], atol=1e-6)
    assert notes and "window" in notes[0]


# -- metadata -----------------------------------------------------------------------------------


def test_pixel_spacing_prefers_pixel_spacing_and_ignores_zeros():
    ds = Dataset()
    assert pixel_spacing(ds) is None
    ds.ImagerPixelSpacing = ["0.15", "0.2"]
    assert pixel_spacing(ds) == (0.15, 0.2)
    ds.PixelSpacing = ["0", "0"]
    assert pixel_spacing(ds) == (0.15, 0.2)  # zeros mean unknown
    ds.PixelSpacing = ["0.1", "0.125"]
    assert pixel_spacing(ds) == (0.1, 0.125)


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"BodyPartExamined": "KNEE"}, "knee"),
        ({"BodyPartExamined": "EXTREMITY", "SeriesDescription": "AP ankle"}, "ankle"),
        ({"StudyDescription": "XR FEMUR LEFT", "ProtocolName": "Knee"}, "femur"),
        ({"ProtocolName": "Pelvis AP"}, "hip"),
        ({"BodyPartExamined": "CHEST"}, None),
    ],
)
def test_body_part_comes_from_the_first_field_that_names_one(attrs, expected):
    meta = dicom_meta(_synthetic(np.zeros((2, 2), np.uint16), **attrs))
    assert meta.body_part == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("XR_KNEE", "knee"),
        ("Knee", "knee"),
        ("ankle", "ankle"),
        ("TIB-FIB", "leg"),
        ("TibFib", "leg"),
        ("tibia", "leg"),
        ("Fibula", "leg"),
        ("LOWER LEG", "leg"),
        ("shin", "leg"),
        ("Non-ossifying fibroma of distal tibia", "leg"),
        ("patella", "knee"),
        ("tibial plateau", "knee"),
        ("THIGH", "femur"),
        ("distal femur", "femur"),
        ("femoral neck", "hip"),
        ("calcaneus", "foot"),
        ("3rd metatarsal", "foot"),
        ("tarsal bones", "foot"),
        ("FOOT", "foot"),
        ("phalanx of toe", "toe"),
        ("hallux", "toe"),
        ("Toes", "toe"),
        ("PELVIS", "hip"),
        ("hip", "hip"),
        ("EXTREMITY", None),
        ("LOWER EXTREMITY", None),
        ("XR_ELBOW", None),
        ("phalanx", None),  # a finger or a toe: not said
        ("fibroma", None),  # a word that only contains 'fib'
        ("", None),
        (None, None),
    ],
)
def test_normalize_body_part(text, expected):
    assert normalize_body_part(text) == expected
    assert expected is None or expected in LOWER_LIMB_PARTS


# -- bad input ----------------------------------------------------------------------------------


def test_truncated_dicom_in_pixel_data(tmp_path, pydicom_data):
    data = pydicom_data("RG3_UNCR.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 2])
    _assert_bad(path, "truncated")


def test_truncated_dicom_in_header(tmp_path, pydicom_data):
    data = pydicom_data("RG3_UNCR.dcm").read_bytes()
    for n in (200, 1000):
        path = tmp_path / f"cut{n}.dcm"
        path.write_bytes(data[:n])
        _assert_bad(path, "truncated")


def test_truncated_encapsulated_dicom(tmp_path, pydicom_data):
    data = pydicom_data("RG3_J2KR.dcm").read_bytes()
    path = tmp_path / "cut_j2k.dcm"
    path.write_bytes(data[: len(data) // 2])
    _assert_bad(path, "truncated")


def test_dicom_without_pixel_data(tmp_path):
    ds = _synthetic(np.zeros((4, 4), np.uint16))
    del ds.PixelData
    _assert_bad(_save(ds, tmp_path / "nopix.dcm"), "no pixel data")


def test_nonsense_header_value_is_bad_input(tmp_path):
    ds = _synthetic(np.zeros((4, 4), np.uint16))
    ds.add_new(0x00280008, "LO", "many")  # Number of Frames, written as text
    path = _save(ds, tmp_path / "frames.dcm")
    _assert_bad(path, "header value")


def test_structured_report_has_no_pixel_data(pydicom_data):
    _assert_bad(pydicom_data("reportsi.dcm"), "no pixel data")


def test_zero_size_dicom(tmp_path):
    ds = _synthetic(np.zeros((4, 4), np.uint16))
    ds.Rows, ds.Columns, ds.PixelData = 0, 0, b""
    _assert_bad(_save(ds, tmp_path / "zero.dcm"), "zero size")


def test_unsupported_transfer_syntax_is_named(tmp_path):
    ds = _synthetic(np.zeros((4, 4), np.uint16))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2 MP@ML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    err = _assert_bad(_save(ds, tmp_path / "video.dcm"), "unsupported transfer syntax", "MPEG2")
    assert "1.2.840.10008.1.2.4.100" in err.problem


def test_missing_decoder_plugin_is_named(pydicom_data, monkeypatch):
    class NoPlugin:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"]

    monkeypatch.setattr(dicom_module, "get_decoder", lambda ts: NoPlugin())
    err = _assert_bad(pydicom_data("RG3_J2KR.dcm"), "JPEG 2000", "install")
    assert "pylibjpeg-openjpeg" in err.problem


def test_no_patient_data_in_errors_or_warnings(tmp_path):
    values = np.arange(16, dtype=np.uint16).reshape(4, 4)
    ds = _synthetic(values)
    data = _save(ds, tmp_path / "full.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-10])
    err = _assert_bad(cut, "truncated")  # _assert_bad checks every PHI value is absent
    assert "Garcia" not in repr(err)

    text = f"bad value {PHI['PatientName']!r} for {PHI['PatientID']} born {PHI['PatientBirthDate']}; JPEG 2000"
    cleaned = redact(text, ds)
    for value in PHI.values():
        assert value not in cleaned
    assert "JPEG 2000" in cleaned and "<redacted>" in cleaned


def test_warnings_during_a_read_reach_meta_redacted(tmp_path, monkeypatch, caplog):
    path = _save(_synthetic(np.arange(16, dtype=np.uint16).reshape(4, 4)), tmp_path / "ok.dcm")
    real_meta = dicom_module.dicom_meta

    def chatty_meta(ds):
        # as pydicom does on an odd value: log it and warn, quoting it
        message = f"Invalid value for VR PN: {PHI['PatientName']!r}"
        logging.getLogger("pydicom").warning(message)
        warnings.warn(message, UserWarning)
        return real_meta(ds)

    monkeypatch.setattr(dicom_module, "dicom_meta", chatty_meta)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        pixels, meta = read_image(path)
    assert pixels.shape == (4, 4)
    assert any("Invalid value" in w and "<redacted>" in w for w in meta.warnings), meta.warnings
    shown = " ".join(meta.warnings) + " ".join(str(w.message) for w in escaped) + caplog.text
    assert "Garcia" not in shown
    assert not logging.getLogger("pydicom").filters  # the muting ended with the read
