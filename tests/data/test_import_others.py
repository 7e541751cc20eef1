"""Folder, COCO and MURA importers on small trees drawn in tmp_path, and their bad inputs."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from limbscan.data.dataset import Dataset
from limbscan.data.importers import common, import_coco, import_folder, import_mura
from limbscan.errors import LimbscanError


def png(path: Path, size=(60, 40), shade: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("L", size, 20)
    ImageDraw.Draw(im).ellipse([5, 5, size[0] - 5, size[1] - 5], fill=shade)
    im.save(path)
    return path


def zero_png(path: Path) -> Path:
    """A PNG whose header says 0 x 0 (PIL refuses to write one)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))
    return path


def copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)


def _by_name(ds: Dataset) -> dict[str, dict]:
    return {Path(im["file_name"]).name: im for im in ds.images}


# -- folder -------------------------------------------------------------------------------

def test_folder_labels_parts_and_bad_files(tmp_path):
    root = tmp_path / "root"
    png(root / "knee" / "normal" / "a.png")
    png(root / "knee" / "abnormal" / "deeper" / "b.png")
    png(root / "Ankle" / "Abnormal" / "c.png")
    png(root / "TibFib" / "normal" / "d.png")
    (root / "knee" / "normal" / "notes.txt").write_text("not an image")
    zero_png(root / "knee" / "normal" / "empty.png")
    png(root / "wrist" / "normal" / "w.png")
    png(root / "knee" / "unsure" / "u.png")
    (root / "knee" / "normal" / ".DS_Store").write_bytes(b"\0\0")

    result = import_folder(root, tmp_path / "ds", progress=False)
    images = _by_name(Dataset.load(tmp_path / "ds"))
    assert set(images) == {"a.png", "b.png", "c.png", "d.png"}
    assert (images["a.png"]["label"], images["a.png"]["body_part"]) == (0, "knee")
    assert (images["b.png"]["label"], images["b.png"]["body_part"]) == (1, "knee")
    assert (images["c.png"]["label"], images["c.png"]["body_part"]) == (1, "ankle")
    assert images["d.png"]["body_part"] == "leg"
    assert all(im["patient_id"] is None and Path(im["file_name"]).is_absolute() for im in images.values())
    assert images["a.png"]["width"] == 60 and images["a.png"]["height"] == 40

    skipped = {Path(s.path).name: s.problem for s in result.skipped}
    assert set(skipped) == {"notes.txt", "empty.png", "wrist", "unsure"}
    assert ".DS_Store" not in str(result.skipped)


def test_folder_empty_or_useless_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LimbscanError, match="no images"):
        import_folder(tmp_path / "empty", tmp_path / "ds", progress=False)
    (tmp_path / "bad" / "knee" / "normal").mkdir(parents=True)
    (tmp_path / "bad" / "knee" / "normal" / "x.png").write_text("text")
    with pytest.raises(LimbscanError, match="x.png"):
        import_folder(tmp_path / "bad", tmp_path / "ds", progress=False)
    with pytest.raises(LimbscanError, match="not a folder"):
        import_folder(tmp_path / "missing", tmp_path / "ds", progress=False)


def test_folder_ids_are_in_sorted_order_through_the_pool(tmp_path, capsys):
    root = tmp_path / "root"
    n = common.SERIAL_BELOW + 4  # large enough to go through the process pool
    for i in range(n):
        png(root / "foot" / "normal" / f"f{i:03d}.png", size=(30 + i, 20))
    result = import_folder(root, tmp_path / "ds", progress=True)
    assert capsys.readouterr().out == ""  # progress goes to stderr, stdout stays for --json
    names = [Path(im["file_name"]).name for im in result.dataset.images]
    assert names == sorted(names) and len(names) == n
    # Each image's size came back from its own file, so the pool kept results in order.
    assert [im["width"] for im in result.dataset.images] == [30 + i for i in range(n)]


def test_folder_dicom_is_anonymised_into_the_dataset(tmp_path, pydicom_data):
    import pydicom

    src = pydicom_data("CT_small.dcm")
    other = pydicom_data("MR_small.dcm")
    original = pydicom.dcmread(src)
    root = tmp_path / "root"
    # Folder names often carry patient names; none of it may reach the dataset.
    copy(src, root / "knee" / "abnormal" / "Smith^John_0042" / "scan1.dcm")
    copy(src, root / "knee" / "abnormal" / "Smith^John_0042" / "scan2.dcm")
    copy(other, root / "hip" / "normal" / "Doe^Jane" / "scan.dcm")
    (root / "hip" / "normal" / "Doe^Jane" / "broken.dcm").write_bytes(b"\0" * 200)

    result = import_folder(root, tmp_path / "ds", progress=False)
    ds = Dataset.load(tmp_path / "ds")
    assert len(ds.images) == 3
    assert any(s.path.endswith("broken.dcm") for s in result.skipped)
    for im in ds.images:
        assert im["format"] == "dicom"
        assert not Path(im["file_name"]).is_absolute()  # owned by the dataset
        assert ds.image_path(im).is_file() and ds.image_path(im).parent == ds.root / "images"
    text = (tmp_path / "ds" / "dataset.json").read_text()
    for phi in ("Smith", "John", "0042", "Doe", "Jane", str(original.PatientName), str(original.PatientID)):
        assert phi not in text
    for im in ds.images:
        anonymised = pydicom.dcmread(ds.image_path(im))
        assert str(anonymised.PatientName) != str(original.PatientName)
        # its study: the anonymised copy's StudyInstanceUID, never the original's
        assert im["study"] == str(anonymised.StudyInstanceUID) != str(original.StudyInstanceUID)
    knee = [im["patient_id"] for im in ds.images if im["body_part"] == "knee"]
    hip = [im["patient_id"] for im in ds.images if im["body_part"] == "hip"]
    assert len(knee) == 2 and knee[0] == knee[1] and knee[0] is not None
    assert hip[0] is not None and hip[0] != knee[0]
    knee_studies = {im["study"] for im in ds.images if im["body_part"] == "knee"}
    assert len(knee_studies) == 1  # two copies of one study stay one study


# -- coco ---------------------------------------------------------------------------------

def make_coco(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "imgs"
    png(images / "a.png")
    png(images / "b.png")
    png(images / "sub" / "c.png")
    png(images / "d.png")
    zero_png(images / "zero.png")
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 60, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 60, "height": 40, "label": 0,
             "body_part": "KNEE", "patient_id": 77, "split": "val", "attributes": {"hardware": 1}},
            {"id": 3, "file_name": "sub/c.png", "width": 60, "height": 40},
            {"id": 4, "file_name": "d.png"},
            {"id": 5, "file_name": "gone.png", "width": 60, "height": 40},
            {"id": 6, "file_name": "zero.png", "width": 0, "height": 0},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 10],
             "segmentation": [[5, 5, 25, 5, 25, 15, 5, 15]]},
            {"id": 11, "image_id": 1, "category_id": 4, "segmentation": [[30, 10, 40, 10, 40, 30]]},
            {"id": 12, "image_id": 3, "category_id": 3, "bbox": [50, 30, 40, 40]},  # outside
            {"id": 13, "image_id": 99, "category_id": 3, "bbox": [1, 1, 2, 2]},  # no such image
            {"id": 14, "image_id": 5, "category_id": 3, "bbox": [1, 1, 2, 2]},  # file missing
        ],
        "categories": [{"id": 3, "name": "fracture"}, {"id": 4, "name": "tumour"}],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(coco))
    return ann, images


def test_coco_fields_labels_and_bad_entries(tmp_path):
    ann, images = make_coco(tmp_path)
    result = import_coco(ann, images, tmp_path / "ds", progress=False)
    ds = Dataset.load(tmp_path / "ds")
    by_name = _by_name(ds)
    assert set(by_name) == {"a.png", "b.png", "c.png", "d.png"}
    a, b, c, d = (by_name[n] for n in ("a.png", "b.png", "c.png", "d.png"))
    assert a["label"] == 1 and c["label"] == 1 and d["label"] == 0  # from annotations
    assert (b["label"], b["body_part"], b["patient_id"], b["split"]) == (0, "knee", "77", "val")
    assert b["attributes"] == {"hardware": 1}
    assert a["split"] is None and a["body_part"] is None

    anns = ds.annotations_for(a["id"])
    assert len(anns) == 2 and all(x["category_id"] == 1 for x in anns)  # every category a lesion
    assert anns[1]["bbox"] == [30.0, 10.0, 10.0, 20.0]  # box taken from the polygon
    assert ds.annotations_for(c["id"]) == []

    skipped = [str(s) for s in result.skipped]
    assert any("c.png" in s and "outside" in s for s in skipped)
    assert any("ann.json" in s and "99" in s for s in skipped)
    assert any("gone.png" in s and "annotation" in s for s in skipped)
    assert any("zero.png" in s for s in skipped)


def test_coco_bad_files_raise(tmp_path):
    (tmp_path / "imgs").mkdir()
    with pytest.raises(LimbscanError, match="not found"):
        import_coco(tmp_path / "none.json", tmp_path / "imgs", tmp_path / "ds", progress=False)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(LimbscanError, match="bad.json"):
        import_coco(tmp_path / "bad.json", tmp_path / "imgs", tmp_path / "ds", progress=False)
    (tmp_path / "empty.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(LimbscanError, match="empty.json"):
        import_coco(tmp_path / "empty.json", tmp_path / "imgs", tmp_path / "ds", progress=False)


# -- mura ---------------------------------------------------------------------------------

def make_mura(root: Path) -> Path:
    base = root / "MURA-v1.1" / "train"
    png(base / "XR_KNEE" / "patient00001" / "study1_positive" / "image1.png")
    png(base / "XR_KNEE" / "patient00001" / "study1_positive" / "image2.png")
    png(base / "XR_KNEE" / "patient00002" / "study1_negative" / "image1.png")
    png(base / "XR_ANKLE" / "patient00001" / "study2_negative" / "image1.png")
    png(base / "XR_WRIST" / "patient00003" / "study1_positive" / "image1.png")
    png(base / "XR_WRIST" / "patient00003" / "study1_positive" / "image2.png")
    png(base / "XR_ELBOW" / "patient00004" / "study1_negative" / "image1.png")
    png(base / "XR_KNEE" / "patient00005" / "unlabelled" / "image1.png")
    (root / "MURA-v1.1" / "train_image_paths.csv").write_text("a,b\n")
    return root


def test_mura_labels_parts_patients(tmp_path):
    root = make_mura(tmp_path / "m")
    result = import_mura(root, tmp_path / "ds", progress=False)
    images = Dataset.load(tmp_path / "ds").images
    got = sorted((im["body_part"], im["label"], im["patient_id"]) for im in images)
    assert got == [
        ("ankle", 0, "mura:patient00001"),
        ("knee", 0, "mura:patient00002"),
        ("knee", 1, "mura:patient00001"),
        ("knee", 1, "mura:patient00001"),
    ]
    assert all(ds_ann == [] for ds_ann in [result.dataset.coco["annotations"]])
    # Upper-limb parts are summarised, one line per part, not one per file.
    left = [str(w) for w in result.warnings if "not lower limb" in w.problem]
    assert len(left) == 2 and any("2 wrist" in w for w in left) and any("1 elbow" in w for w in left)
    assert any("unlabelled" in s.path for s in result.skipped)
    assert not any(s.path.endswith(".csv") for s in result.skipped)


def test_mura_all_parts_and_upper_only(tmp_path):
    root = make_mura(tmp_path / "m")
    result = import_mura(root, tmp_path / "ds", progress=False, lower_limb_only=False)
    parts = sorted(im["body_part"] for im in result.dataset.images)
    assert parts == ["ankle", "elbow", "knee", "knee", "knee", "wrist", "wrist"]

    upper = tmp_path / "upper"
    png(upper / "valid" / "XR_HAND" / "patient11185" / "study1_negative" / "image1.png")
    with pytest.raises(LimbscanError, match="lower_limb_only"):
        import_mura(upper, tmp_path / "ds2", progress=False)


@pytest.mark.parametrize("kind", ["coco", "mura"])
def test_every_importer_anonymises_dicom(tmp_path, pydicom_data, kind):
    import pydicom

    src = pydicom_data("CT_small.dcm")
    original = pydicom.dcmread(src)
    out = tmp_path / "ds"
    if kind == "coco":
        copy(src, tmp_path / "imgs" / "a.dcm")
        png(tmp_path / "imgs" / "b.png")
        ann = tmp_path / "ann.json"
        ann.write_text(json.dumps({
            "images": [{"id": 1, "file_name": "a.dcm", "label": 0}, {"id": 2, "file_name": "b.png", "label": 0}],
            "annotations": [], "categories": [{"id": 1, "name": "lesion"}],
        }))
        import_coco(ann, tmp_path / "imgs", out, progress=False)
    else:
        copy(src, tmp_path / "MURA" / "XR_KNEE" / "patient00001" / "study1_negative" / "image1.dcm")
        png(tmp_path / "MURA" / "XR_KNEE" / "patient00002" / "study1_positive" / "image1.png")
        import_mura(tmp_path / "MURA", out, progress=False)
    ds = Dataset.load(out)
    dicom = [im for im in ds.images if im["format"] == "dicom"]
    assert len(dicom) == 1 and len(ds.images) == 2
    # the dataset points at its own anonymised copy, never at the input
    assert ds.image_path(dicom[0]).parent == out / "images"
    copied = pydicom.dcmread(ds.image_path(dicom[0]))
    assert copied.PatientIdentityRemoved == "YES"
    assert str(copied.PatientID) != str(original.PatientID) and dicom[0]["patient_id"].startswith("anon-")
    text = (out / "dataset.json").read_text()
    assert str(original.PatientID) not in text and str(original.PatientName) not in text
