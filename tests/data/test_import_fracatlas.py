"""FracAtlas importer: the real lower-limb subset once per session, bad cases on tiny copies."""

from __future__ import annotations

import csv
import json
from collections import Counter
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
    assert not skipped  # the lower-limb subset reads whole (its truncated JPEGs are kept, with a warning)
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


# name, folder, hand, leg, hip, shoulder, csv fractured
LOWER_ROWS = [
    ("IMG0000001.jpg", "Non_fractured", 0, 1, 0, 0, 0),
    ("IMG0000002.jpg", "Non_fractured", 0, 0, 1, 0, 0),
    ("IMG0000003.jpg", "Fractured", 0, 1, 1, 0, 1),
    ("IMG0000004.jpg", "Fractured", 0, 1, 0, 0, 0),  # the README's quirk: csv disagrees with folder
    ("IMG0000005.jpg", "Fractured", 0, 1, 0, 0, 1),
]
UPPER_ROWS = [
    ("IMG0000006.jpg", "Non_fractured", 1, 0, 0, 0, 0),
    ("IMG0000007.jpg", "Fractured", 0, 0, 0, 1, 1),
    ("IMG0000008.jpg", "Non_fractured", 1, 0, 0, 1, 0),  # hand and shoulder: mixed
    ("IMG0000009.jpg", "Fractured", 1, 1, 0, 0, 1),  # hand beside a leg: a leg image
    ("IMG0000010.jpg", "Non_fractured", 0, 0, 0, 0, 0),  # tagged with no part
]


def make_tree(root: Path, rows=LOWER_ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "dataset.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for name, _, hand, leg, hip, shoulder, frac in rows:
            mixed = int(hand + leg + hip + shoulder > 1)
            writer.writerow([name, hand, leg, hip, shoulder, mixed, 1, 0, frac, frac, 1, 0, 0])
    for name, folder, *_ in rows:
        _jpeg(root / "images" / folder / name)
    coco = {
        "images": [
            {"id": 10, "file_name": "IMG0000003.jpg", "width": 64, "height": 48},
            {"id": 11, "file_name": "IMG0000004.jpg", "width": 64, "height": 48},
            {"id": 12, "file_name": "IMG0000005.jpg", "width": 64, "height": 48},
            {"id": 13, "file_name": "IMG0009999.jpg", "width": 64, "height": 48},  # no such file
            {"id": 14, "file_name": "IMG0000007.jpg", "width": 64, "height": 48},  # shoulder
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
            {"id": 5, "image_id": 14, "category_id": 0, "bbox": [20, 10, 8, 8],
             "segmentation": [], "area": 64, "iscrowd": 0},
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


def _parts(result) -> dict[str, str | None]:
    return {Path(im["file_name"]).name: im["body_part"] for im in result.dataset.images}


def test_body_parts_from_every_csv_column(tmp_path):
    root = make_tree(tmp_path / "fa", LOWER_ROWS + UPPER_ROWS)
    parts = _parts(import_fracatlas(root, tmp_path / "ds", progress=False))
    assert [parts[f"IMG{i:07d}.jpg"] for i in range(1, 11)] == [
        "leg", "hip", "hip", "leg", "leg", "hand", "shoulder", "mixed", "leg", None,
    ]


def test_part_filters_divide_one_fracatlas_into_main_and_auxiliary(tmp_path):
    root = make_tree(tmp_path / "fa", LOWER_ROWS + UPPER_ROWS)
    everything = _parts(import_fracatlas(root, tmp_path / "all", progress=False))
    main = import_fracatlas(root, tmp_path / "main", progress=False, parts=["leg", "hip"])
    aux = import_fracatlas(root, tmp_path / "aux", progress=False, exclude_parts=["leg", "hip"])
    assert set(_parts(main).values()) == {"leg", "hip"}
    assert set(_parts(aux).values()) == {"hand", "shoulder", "mixed", None}
    # Together exactly the unfiltered import, no image in both.
    assert {**_parts(main), **_parts(aux)} == everything
    assert not set(_parts(main)) & set(_parts(aux))
    assert _parts(import_fracatlas(root, tmp_path / "upper", progress=False,
                                   parts=["hand", "Shoulder ", "mixed"])) == {
        "IMG0000006.jpg": "hand", "IMG0000007.jpg": "shoulder", "IMG0000008.jpg": "mixed"}
    # Images left out are said once per part, and their lesions are not listed as skipped one by one.
    left_out = [s.problem for s in main.warnings if "left out" in s.problem]
    assert sorted(left_out) == sorted(f"{n} {part} image(s) left out (body parts kept: hip, leg)"
                                      for part, n in (("hand", 1), ("mixed", 1), ("shoulder", 1), ("unknown", 1)))
    assert not any("IMG0000007.jpg" in s.path or "IMG0000007.jpg" in s.problem for s in main.skipped)
    # ... and kept where their image is: the shoulder fracture's box.
    shoulder = next(im for im in aux.dataset.images if im["body_part"] == "shoulder")
    assert [a["image_id"] for a in aux.dataset.coco["annotations"]] == [shoulder["id"]]
    assert main.dataset.info["description"] == "FracAtlas: hip, leg"


def test_part_filter_errors_name_the_problem(tmp_path):
    root = make_tree(tmp_path / "fa")
    with pytest.raises(LimbscanError, match="body part 'foot' is not one of leg, hip, hand"):
        import_fracatlas(root, tmp_path / "ds", progress=False, parts=["leg", "foot"])
    with pytest.raises(LimbscanError, match="not both"):
        import_fracatlas(root, tmp_path / "ds", progress=False, parts=["leg"], exclude_parts=["hip"])
    with pytest.raises(LimbscanError, match=r"no images of the body parts kept \(hand\); found hip 2, leg 3"):
        import_fracatlas(root, tmp_path / "ds", progress=False, parts=["hand"])
    assert not (tmp_path / "ds" / "dataset.json").exists()


def test_cli_imports_the_division(tmp_path):
    from typer.testing import CliRunner

    from limbscan.cli import app

    root = make_tree(tmp_path / "fa", LOWER_ROWS + UPPER_ROWS)
    runner = CliRunner()
    for option, out in (("--parts", "main"), ("--exclude-parts", "aux")):
        result = runner.invoke(app, ["data", "import", "fracatlas", str(root), "-o", str(tmp_path / out),
                                     option, "leg,hip", "-q"])
        assert result.exit_code == 0, result.output
    assert {im["body_part"] for im in Dataset.load(tmp_path / "main").images} == {"leg", "hip"}
    assert len(Dataset.load(tmp_path / "aux").images) == len(UPPER_ROWS) - 1  # the hand-beside-a-leg is main
    result = runner.invoke(app, ["data", "import", "fracatlas", str(root), "-o", str(tmp_path / "x"),
                                 "--parts", "legs"])
    assert isinstance(result.exception, LimbscanError) and "'legs' is not one of" in str(result.exception)


@pytest.fixture(scope="module")
def upper_imported(fracatlas_upper_root, tmp_path_factory):
    return import_fracatlas(fracatlas_upper_root, tmp_path_factory.mktemp("fracatlas_upper"), progress=False)


@pytest.mark.realdata
@pytest.mark.slow
def test_real_upper_limb_parts_match_dataset_csv(upper_imported, fracatlas_upper_root):
    with (fracatlas_upper_root / "dataset.csv").open(newline="") as fh:
        rows = {row["image_id"]: row for row in csv.DictReader(fh)}
    images = upper_imported.dataset.images
    parts = {Path(im["file_name"]).name: im["body_part"] for im in images}
    assert None not in parts.values()  # no `unknown`
    for name, part in parts.items():
        tagged = {p for p in ("hand", "shoulder") if rows[name][p] == "1"}
        assert part == (tagged.pop() if len(tagged) == 1 else "mixed"), name
        assert rows[name]["leg"] == rows[name]["hip"] == "0"
    counts = Counter(parts.values())
    in_csv = Counter(
        "mixed" if r["hand"] == r["shoulder"] == "1" else ("hand" if r["hand"] == "1" else "shoulder")
        for name, r in rows.items() if name in parts
    )
    assert counts == in_csv and set(counts) == {"hand", "shoulder", "mixed"}
    skipped = {Path(s.path).name for s in upper_imported.skipped}
    assert len(parts) + len(skipped & set(rows)) == len(rows) == 1615


@pytest.mark.realdata
@pytest.mark.slow
def test_real_lower_limb_import_is_the_main_division(imported, fracatlas_root, tmp_path):
    """--parts leg,hip on the lower-limb folder leaves out nothing: same images, ids, lesions."""
    kept = import_fracatlas(fracatlas_root, tmp_path / "ds", progress=False, parts=["leg", "hip"])
    assert kept.dataset.images == imported.dataset.images
    assert kept.dataset.coco["annotations"] == imported.dataset.coco["annotations"]
    assert not [s for s in kept.warnings if "left out" in s.problem]
