"""FracAtlas importer: the real lower-limb subset once per session, bad cases on tiny copies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from limbscan.data.dataset import Dataset
from limbscan.data.importers import common, import_fracatlas
from limbscan.errors import LimbscanError


@pytest.fixture(scope="module")
def imported(fracatlas_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("fracatlas_ds")
    return import_fracatlas(fracatlas_root, out, progress=False)


def _folder_names(root: Path, folder: str) -> set[str]:
    return {p.name for p in (root / "images" / folder).iterdir()}


@pytest.mark.realdata
@pytest.mark.slow
def test_real_counts_account_for_every_file(imported, fracatlas_root):
    fractured = _folder_names(fracatlas_root, "Fractured")
    normal = _folder_names(fracatlas_root, "Non_fractured")
    images = imported.dataset.images
    kept = {Path(im["file_name"]).name: im["label"] for im in images}
    skipped = {Path(s.path).name for s in imported.skipped if Path(s.path).name in fractured | normal}
    # Every file is either kept with its folder's label or named in a skipped entry.
    assert set(kept) | skipped == fractured | normal
    assert not set(kept) & skipped
    assert all(kept[name] == 1 for name in fractured if name in kept)
    assert all(kept[name] == 0 for name in normal if name in kept)
    if not skipped:
        assert sum(im["label"] for im in images) == 180
        assert sum(1 - im["label"] for im in images) == 1000


@pytest.mark.realdata
@pytest.mark.slow
def test_real_truncated_files_are_named(imported):
    truncated = [im for im in imported.dataset.images if im["truncated"]]
    # Warnings name the file as the user gave it; the dataset stores it resolved (symlinks followed).
    warned = {Path(s.path).resolve() for s in imported.warnings if "truncated" in s.problem}
    assert {imported.dataset.image_path(im).resolve() for im in truncated} <= warned
    # FracAtlas holds a few truncated JPEGs: each is either kept (and warned) or skipped by name.
    skipped_jpegs = [s for s in imported.skipped if s.path.endswith(".jpg")]
    assert truncated or skipped_jpegs


@pytest.mark.realdata
@pytest.mark.slow
def test_real_annotations_fields_and_info(imported, fracatlas_root):
    ds = Dataset.load(imported.dataset.root)  # what was saved, not what is in memory
    images = {im["id"]: im for im in ds.images}
    anns = ds.coco["annotations"]
    coco = json.loads((fracatlas_root / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json").read_text())
    # Boxes that fail the check are skipped by name; nearly all of FracAtlas' survive.
    assert 0.9 * len(coco["annotations"]) < len(anns) <= len(coco["annotations"])
    for ann in anns:
        image = images[ann["image_id"]]
        assert image["label"] == 1
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= image["width"] + 1e-6 and y + h <= image["height"] + 1e-6
    assert sum(bool(a["segmentation"]) and len(a["segmentation"][0]) >= 6 for a in anns) == len(anns)
    annotated = {a["image_id"] for a in anns}
    assert len(annotated) > 0.9 * sum(im["label"] for im in ds.images)

    assert all("hardware" in im["attributes"] for im in ds.images)
    assert 0 < sum(im["attributes"]["hardware"] for im in ds.images) < len(ds.images)
    assert {im["body_part"] for im in ds.images} == {"leg", "hip"}
    assert all(im["body_part"] == "hip" for im in ds.images if im["attributes"]["hip"])
    assert all(im["patient_id"] is None for im in ds.images)
    # Referenced in place: absolute paths into the shared folder, nothing copied into DS.
    assert all(Path(im["file_name"]).is_absolute() and Path(im["file_name"]).is_file() for im in ds.images)
    assert [p.name for p in ds.root.iterdir()] == ["dataset.json"]
    assert ds.info["dataset"]["license"] == "CC BY 4.0"
    assert "10.1038/s41597-023-02432-4" in ds.info["dataset"]["doi"]
    assert ds.synthetic is False


# -- a tiny FracAtlas-shaped tree, for the cases the real set does not show ------------------

COLUMNS = ["image_id", "hand", "leg", "hip", "shoulder", "mixed", "hardware", "multiscan",
           "fractured", "fracture_count", "frontal", "lateral", "oblique"]


def _jpeg(path: Path, size=(64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8)).save(path, quality=90)


def make_tree(root: Path) -> Path:
    rows = [
        # name, folder, leg, hip, csv fractured
        ("IMG0000001.jpg", "Non_fractured", 1, 0, 0),
        ("IMG0000002.jpg", "Non_fractured", 0, 1, 0),
        ("IMG0000003.jpg", "Fractured", 1, 1, 1),
        ("IMG0000004.jpg", "Fractured", 1, 0, 0),  # the README's quirk: csv disagrees with folder
        ("IMG0000005.jpg", "Fractured", 1, 0, 1),
    ]
    root.mkdir(parents=True, exist_ok=True)
    with (root / "dataset.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for name, _, leg, hip, frac in rows:
            writer.writerow([name, 0, leg, hip, 0, leg and hip, 1, 0, frac, frac, 1, 0, 0])
    for name, folder, *_ in rows:
        _jpeg(root / "images" / folder / name)
    coco = {
        "images": [
            {"id": 10, "file_name": "IMG0000003.jpg", "width": 64, "height": 48},
            {"id": 11, "file_name": "IMG0000004.jpg", "width": 64, "height": 48},
            {"id": 12, "file_name": "IMG0000005.jpg", "width": 64, "height": 48},
            {"id": 13, "file_name": "IMG0009999.jpg", "width": 64, "height": 48},  # no such file
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 0, "bbox": [10, 10, 20, 10],
             "segmentation": [[10, 10, 30, 10, 30, 20, 10, 20]], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 0, "bbox": [5, 5, 10, 10],
             "segmentation": [[5, 5, 15, 5, 15, 15]], "area": 50, "iscrowd": 0},
            {"id": 3, "image_id": 12, "category_id": 0, "bbox": [50, 40, 100, 100],  # outside
             "segmentation": [], "area": 1e4, "iscrowd": 0},
            {"id": 4, "image_id": 13, "category_id": 0, "bbox": [1, 1, 2, 2],
             "segmentation": [], "area": 4, "iscrowd": 0},
        ],
        "categories": [{"id": 0, "name": "fractured"}],
    }
    ann = root / "Annotations" / "COCO JSON" / "COCO_fracture_masks.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps(coco))
    return root


def test_small_tree_labels_parts_and_bad_annotations(tmp_path):
    root = make_tree(tmp_path / "fa")
    result = import_fracatlas(root, tmp_path / "ds", progress=False)
    by_name = {Path(im["file_name"]).name: im for im in result.dataset.images}
    assert [by_name[f"IMG000000{i}.jpg"]["label"] for i in range(1, 6)] == [0, 0, 1, 1, 1]
    assert by_name["IMG0000003.jpg"]["body_part"] == "hip"  # tagged leg and hip
    assert by_name["IMG0000002.jpg"]["body_part"] == "hip"
    assert by_name["IMG0000001.jpg"]["body_part"] == "leg"
    assert "fractured" not in by_name["IMG0000001.jpg"]["attributes"]
    assert by_name["IMG0000001.jpg"]["attributes"]["hardware"] == 1
    # The quirk is used as the folder says, and said.
    assert any("IMG0000004.jpg" in s.path and "folder" in s.problem for s in result.warnings)

    anns = result.dataset.coco["annotations"]
    assert sorted(by_name[n]["id"] for n in ("IMG0000003.jpg", "IMG0000004.jpg")) == sorted(
        a["image_id"] for a in anns
    )
    skipped = [str(s) for s in result.skipped]
    assert any("IMG0000005.jpg" in s and "outside" in s for s in skipped)
    assert any("IMG0009999.jpg" in s for s in skipped)
    assert Dataset.load(tmp_path / "ds").images == result.dataset.images


def test_unreadable_file_is_skipped_by_name(tmp_path):
    root = make_tree(tmp_path / "fa")
    (root / "images" / "Non_fractured" / "IMG0000001.jpg").write_bytes(b"not a jpeg at all")
    result = import_fracatlas(root, tmp_path / "ds", progress=False)
    assert len(result.dataset.images) == 4
    assert any(s.path.endswith("IMG0000001.jpg") for s in result.skipped)


def test_truncated_kept_with_warning_or_skipped_on_request(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "fa")
    real = common.read_image

    def read_marking_truncated(path):
        pixels, meta = real(path)
        meta.truncated = Path(path).name == "IMG0000002.jpg"
        return pixels, meta

    # Small trees are read in-process, so the patched reader is the one used.
    monkeypatch.setattr(common, "read_image", read_marking_truncated)
    kept = import_fracatlas(root, tmp_path / "ds1", progress=False)
    names = {Path(im["file_name"]).name: im for im in kept.dataset.images}
    assert names["IMG0000002.jpg"]["truncated"] is True
    assert any(s.path.endswith("IMG0000002.jpg") and "truncated" in s.problem for s in kept.warnings)

    left = import_fracatlas(root, tmp_path / "ds2", progress=False, skip_truncated=True)
    assert "IMG0000002.jpg" not in {Path(im["file_name"]).name for im in left.dataset.images}
    assert any(s.path.endswith("IMG0000002.jpg") and "truncated" in s.problem for s in left.skipped)


def test_missing_pieces_raise(tmp_path):
    with pytest.raises(LimbscanError, match="not a folder"):
        import_fracatlas(tmp_path / "nowhere", tmp_path / "ds", progress=False)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(LimbscanError, match="dataset.csv"):
        import_fracatlas(tmp_path / "empty", tmp_path / "ds", progress=False)
    root = make_tree(tmp_path / "fa")
    for p in (root / "images").rglob("*.jpg"):
        p.write_bytes(b"")
    with pytest.raises(LimbscanError, match="nothing usable"):
        import_fracatlas(root, tmp_path / "ds", progress=False)
    assert not (tmp_path / "ds" / "dataset.json").exists()
