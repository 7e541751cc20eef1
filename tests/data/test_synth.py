"""Synthetic phantoms: drawn lesions sit in their boxes, and the written dataset is sound."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.uid import ExplicitVRLittleEndian

from limbscan.data.dataset import Dataset
from limbscan.data.synth import make_phantom, synthesize
from limbscan.errors import LimbscanError
from limbscan.io import LOWER_LIMB_PARTS, read_image
from limbscan.io.bodypart import normalize_body_part

N, SEED = 24, 1


def rasterise(polygon: list[float], shape: tuple[int, int]) -> np.ndarray:
    canvas = Image.new("L", (shape[1], shape[0]))
    ImageDraw.Draw(canvas).polygon(list(zip(polygon[::2], polygon[1::2])), fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def in_box(xs: np.ndarray, ys: np.ndarray, bbox: list[float], tol: float) -> np.ndarray:
    x, y, w, h = bbox
    return (xs >= x - tol) & (xs + 1 <= x + w + tol) & (ys >= y - tol) & (ys + 1 <= y + h + tol)


# -- make_phantom -----------------------------------------------------------------------


def test_phantom_is_deterministic_for_a_seed():
    a, la = make_phantom(np.random.default_rng(7), fracture=True)
    b, lb = make_phantom(np.random.default_rng(7), fracture=True)
    c, _ = make_phantom(np.random.default_rng(8), fracture=True)
    assert np.array_equal(a, b) and la == lb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("size", [(384, 256), (200, 300), (96, 80)])
def test_phantom_shape_range_and_contrast(size):
    for seed in range(4):
        image, lesions = make_phantom(np.random.default_rng(seed), size, fracture=False)
        assert image.shape == size and image.dtype == np.float32
        assert image.min() >= 0 and image.max() <= 1
        assert lesions == []
        # Air dark, bone bright: a radiograph's range, not a flat field.
        assert np.percentile(image, 2) < 0.15 and np.percentile(image, 99.5) > 0.5


def test_phantom_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        make_phantom(np.random.default_rng(0), (32, 256))


@pytest.mark.parametrize("size", [(384, 256), (320, 224), (352, 352), (96, 80)])
def test_box_and_polygon_cover_the_drawn_fracture(size):
    for seed in range(12):
        # One generator state draws the same limb with and without its fracture, so the
        # difference is exactly what the fracture drew.
        plain, none = make_phantom(np.random.default_rng([seed, 99]), size, fracture=False)
        broken, lesions = make_phantom(np.random.default_rng([seed, 99]), size, fracture=True)
        assert none == [] and len(lesions) == 1
        bbox, polygon = lesions[0]["bbox"], lesions[0]["polygon"]
        h, w = size
        x, y, bw, bh = bbox
        assert 0 <= x and 0 <= y and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h

        ys, xs = np.nonzero(plain - broken > 0.08)  # the dark line, where bone was
        assert len(xs) >= 10, "the fracture line is not visible"
        assert in_box(xs, ys, bbox, tol=1.0).all(), f"seed {seed}: fracture pixels outside {bbox}"
        mask = rasterise(polygon, size)
        assert mask[ys, xs].mean() >= 0.95, f"seed {seed}: polygon misses the fracture line"

        px, py = np.array(polygon[::2]), np.array(polygon[1::2])
        assert len(polygon) >= 6 and len(polygon) % 2 == 0
        assert (px >= x - 1e-6).all() and (px <= x + bw + 1e-6).all()
        assert (py >= y - 1e-6).all() and (py <= y + bh + 1e-6).all()
        # A lesion box, not the whole image.
        assert bw * bh < 0.25 * w * h


# -- synthesize -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_ds(tmp_path_factory) -> Dataset:
    return synthesize(tmp_path_factory.mktemp("synth") / "ds", n=N, seed=SEED, progress=False)


def test_dataset_json_is_valid_and_marked_synthetic(synth_ds):
    loaded = Dataset.load(synth_ds.root)
    assert loaded.synthetic is True and loaded.info["synthetic"] is True
    assert "SYNTHETIC" in loaded.info["description"]
    assert len(loaded.images) == N
    assert [c["name"] for c in loaded.coco["categories"]] == ["lesion"]
    assert len({im["id"] for im in loaded.images}) == N
    readme = (synth_ds.root / "README.md").read_text()
    assert re.search(r"synthetic", readme, re.I) and "not radiographs" in readme
    assert "tests" in readme and "demos" in readme


@pytest.mark.parametrize("n, fraction", [(N, 0.3), (10, 0.5), (5, 0.0), (4, 1.0)])
def test_label_counts_match_fraction(tmp_path, synth_ds, n, fraction):
    ds = synth_ds if n == N else synthesize(tmp_path / "ds", n=n, seed=3, abnormal_fraction=fraction, progress=False)
    labels = [im["label"] for im in ds.images]
    assert sum(labels) == round(n * fraction)
    for im in ds.images:
        # Exactly the abnormal images carry a lesion.
        assert len(ds.annotations_for(im["id"])) == im["label"]


def test_lesions_lie_inside_their_images(synth_ds):
    assert synth_ds.coco["annotations"]
    for ann in synth_ds.coco["annotations"]:
        im = synth_ds.images[ann["image_id"] - 1]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= im["width"] and y + h <= im["height"]
        (poly,) = ann["segmentation"]
        px, py = np.array(poly[::2]), np.array(poly[1::2])
        assert (px >= x - 1e-6).all() and (px <= x + w + 1e-6).all()
        assert (py >= y - 1e-6).all() and (py <= y + h + 1e-6).all()
        # The box marks something dark cutting through bright bone.
        pixels, _ = read_image(synth_ds.image_path(im))
        crop = pixels[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
        assert np.percentile(crop, 95) - crop.min() > 0.1


def test_patients_group_one_to_three_images_of_one_body_part(synth_ds):
    by_patient = defaultdict(list)
    for im in synth_ds.images:
        assert re.fullmatch(r"synth-\d{4}", im["patient_id"])
        assert im["body_part"] in LOWER_LIMB_PARTS
        by_patient[im["patient_id"]].append(im)
    assert all(1 <= len(ims) <= 3 for ims in by_patient.values())
    assert any(len(ims) > 1 for ims in by_patient.values())
    assert all(len({im["body_part"] for im in ims}) == 1 for ims in by_patient.values())
    assert len({im["body_part"] for im in synth_ds.images}) >= 4


def test_files_are_half_png_half_dicom_and_readable(synth_ds):
    formats = [im["format"] for im in synth_ds.images]
    assert formats.count("dicom") == formats.count("png") == N // 2
    kinds = set()
    for im in synth_ds.images:
        path = synth_ds.image_path(im)
        assert path.is_file() and path.parent.name == "images"
        pixels, meta = read_image(path)
        assert pixels.shape == (im["height"], im["width"]) == (meta.height, meta.width)
        # Bone bright, air dark whatever the storage (MONOCHROME1 must come back inverted).
        assert np.percentile(pixels, 2) < 0.15 and np.percentile(pixels, 99.5) > 0.5
        if im["format"] == "png":
            with Image.open(path) as png:
                kinds.add(("png", png.mode))
        else:
            ds = pydicom.dcmread(path)
            kinds.add(("dicom", ds.PhotometricInterpretation))
    assert kinds == {("png", "L"), ("png", "I;16"), ("dicom", "MONOCHROME1"), ("dicom", "MONOCHROME2")}


PHI_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "OtherPatientIDs",
    "OtherPatientNames", "PatientAddress", "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "OperatorsName", "PerformingPhysicianName", "AccessionNumber", "StudyDate", "SeriesDate",
    "AcquisitionDate", "ContentDate", "StudyTime", "DeviceSerialNumber", "StationName",
)


def test_dicom_files_are_well_formed_and_hold_no_phi(synth_ds):
    dicoms = [im for im in synth_ds.images if im["format"] == "dicom"]
    assert dicoms
    for im in dicoms:
        ds = pydicom.dcmread(synth_ds.image_path(im))  # raises unless the preamble and file meta are there
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 12, 11, 0)
        assert ds.pixel_array.max() <= 4095
        assert normalize_body_part(ds.BodyPartExamined) == im["body_part"]
        assert ds.PatientID == im["patient_id"]
        for keyword in PHI_KEYWORDS:
            value = str(ds.get(keyword, "") or "")
            assert value in ("", im["patient_id"]), f"{keyword} holds {value!r}"
        # Whatever else is there: no names but the synthetic id, and no dates or times.
        for elem in ds.iterall():
            if elem.VR == "PN":
                assert str(elem.value or "") in ("", im["patient_id"]), elem.keyword
            if elem.VR in ("DA", "DT", "TM"):
                assert not elem.value, elem.keyword


def test_same_seed_writes_identical_files_and_other_seed_differs(tmp_path, synth_ds):
    again = synthesize(tmp_path / "again", n=N, seed=SEED, progress=False)
    assert again.coco["images"] == synth_ds.coco["images"]
    assert again.coco["annotations"] == synth_ds.coco["annotations"]
    for a, b in zip(synth_ds.images, again.images):
        assert synth_ds.image_path(a).read_bytes() == again.image_path(b).read_bytes()
    other = synthesize(tmp_path / "other", n=N, seed=SEED + 1, progress=False)
    assert other.coco["annotations"] != synth_ds.coco["annotations"]


def test_rerun_replaces_old_phantoms(tmp_path):
    out = tmp_path / "ds"
    synthesize(out, n=8, seed=0, progress=False)
    ds = synthesize(out, n=3, seed=0, progress=False)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(im["file_name"]).name for im in ds.images)
    assert len(json.loads((out / "dataset.json").read_text())["images"]) == 3


def test_refuses_to_overwrite_a_real_dataset(tmp_path):
    out = tmp_path / "real"
    out.mkdir()
    (out / "dataset.json").write_text(json.dumps(
        {"info": {"synthetic": False}, "images": [], "annotations": [], "categories": []}
    ))
    with pytest.raises(LimbscanError, match="not synthetic"):
        synthesize(out, n=2, progress=False)


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(abnormal_fraction=1.5), dict(abnormal_fraction=-0.1)])
def test_bad_arguments_raise(tmp_path, kwargs):
    with pytest.raises(LimbscanError):
        synthesize(tmp_path / "ds", progress=False, **{"n": 4, **kwargs})


def test_fracture_width_widens_the_gap_only():
    from limbscan.data.synth import make_phantom

    normal, _ = make_phantom(np.random.default_rng(7), fracture=False)
    thin, _ = make_phantom(np.random.default_rng(7), fracture=True)
    wide, lesions = make_phantom(np.random.default_rng(7), fracture=True, fracture_width=3.0)
    darkened = lambda img: int(((normal - img) > 0.02).sum())  # noqa: E731
    assert darkened(wide) > 1.5 * darkened(thin) > 0
    x, y, w, h = lesions[0]["bbox"]
    changed = np.argwhere((normal - wide) > 0.02)
    assert changed[:, 1].min() >= x - 2 and changed[:, 1].max() <= x + w + 2
    assert changed[:, 0].min() >= y - 2 and changed[:, 0].max() <= y + h + 2
