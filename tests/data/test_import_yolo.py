"""The YOLOv8 / Roboflow importer on a tiny export drawn in tmp_path, its CLI verb, and the real hip export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from limbscan.cli import app
from limbscan.data.dataset import Dataset
from limbscan.data.importers import IMPORTERS, import_yolo
from limbscan.data.importers.yolo import class_roles, is_normal_name
from limbscan.errors import LimbscanError

HIP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hip-roboflow-dev"
W, H = 100, 50  # not square, so a mix-up of x and y scales shows
CLASSES = ["neck-fracture", "normal-left", "abnormal-other"]


def image(path: Path, size=(W, H)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("L", size, 20)
    ImageDraw.Draw(im).ellipse([5, 5, size[0] - 5, size[1] - 5], fill=150)
    im.save(path)
    return path


def labels(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def make_yolo(root: Path) -> Path:
    """Five images over three splits, Roboflow style: a box, a polygon, normal lines, bad lines."""
    (root / "data.yaml").parent.mkdir(parents=True, exist_ok=True)
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\n"
        "nc: 3\nnames: ['neck-fracture', 'normal-left', 'abnormal-other']\n"
        "roboflow:\n  license: CC BY 4.0\n  project: tiny\n"
    )
    # Two Roboflow copies of one source image: a box lesion plus a normal region; and an empty file.
    image(root / "train" / "images" / "neck_1_png.rf.aaa111.jpg")
    labels(root / "train" / "labels" / "neck_1_png.rf.aaa111.txt", "0 0.5 0.5 0.2 0.4", "1 0.1 0.1 0.2 0.2")
    image(root / "train" / "images" / "neck_1_png.rf.bbb222.jpg")
    labels(root / "train" / "labels" / "neck_1_png.rf.bbb222.txt")
    # A polygon lesion, a line whose class is out of range, a polygon with an odd count.
    image(root / "valid" / "images" / "b.png")
    labels(root / "valid" / "labels" / "b.txt",
           "2 0.1 0.2 0.5 0.2 0.3 0.8", "7 0.5 0.5 0.1 0.1", "0 0.1 0.2 0.3 0.4 0.5")
    # Only a normal region, and a normal box reaching far outside the image.
    image(root / "valid" / "images" / "c.png")
    labels(root / "valid" / "labels" / "c.txt", "1 0.5 0.5 0.5 0.5", "1 0.5 0.5 0.5 1.6")
    # No label file: a background image. And a label file whose image is gone.
    image(root / "test" / "images" / "d.png")
    labels(root / "test" / "labels" / "ghost.txt", "0 0.5 0.5 0.1 0.1")
    return root


def _by_name(ds: Dataset) -> dict[str, dict]:
    return {Path(im["file_name"]).name: im for im in ds.images}


def test_yolo_labels_lesions_and_fields(tmp_path):
    root = make_yolo(tmp_path / "export")
    result = import_yolo(root, tmp_path / "ds", progress=False)
    ds = Dataset.load(tmp_path / "ds")
    images = _by_name(ds)
    a1, a2 = images["neck_1_png.rf.aaa111.jpg"], images["neck_1_png.rf.bbb222.jpg"]
    b, c, d = images["b.png"], images["c.png"], images["d.png"]
    assert len(images) == 5
    assert [im["label"] for im in (a1, a2, b, c, d)] == [1, 0, 1, 0, 0]
    assert all((im["width"], im["height"]) == (W, H) for im in images.values())

    # Box 0.5 0.5 0.2 0.4 on 100 x 50: x = (0.5 - 0.1) * 100 = 40, y = (0.5 - 0.2) * 50 = 15,
    # w = 0.2 * 100 = 20, h = 0.4 * 50 = 20. The normal region beside it is not stored.
    (box,) = ds.annotations_for(a1["id"])
    assert box["bbox"] == pytest.approx([40, 15, 20, 20])
    assert box["segmentation"] == [] and box["area"] == pytest.approx(400)
    # Polygon (0.1, 0.2) (0.5, 0.2) (0.3, 0.8) -> (10, 10) (50, 10) (30, 40): extent [10, 10, 40, 30].
    (poly,) = ds.annotations_for(b["id"])
    assert poly["bbox"] == pytest.approx([10, 10, 40, 30])
    assert poly["segmentation"][0] == pytest.approx([10, 10, 50, 10, 30, 40])
    assert all(x["category_id"] == 1 for x in ds.coco["annotations"]) and len(ds.coco["annotations"]) == 2
    assert ds.annotations_for(c["id"]) == [] and ds.annotations_for(a2["id"]) == []

    # The YOLO split is an attribute, not limbscan's split; the copies of one source share a patient.
    assert [im["attributes"] for im in (a1, b, d)] == [{"yolo_split": s} for s in ("train", "valid", "test")]
    assert all(im["split"] is None and im["body_part"] is None for im in images.values())
    assert a1["patient_id"] == a2["patient_id"] == "yolo:neck_1_png"
    assert b["patient_id"] is None and d["patient_id"] is None
    assert all(Path(im["file_name"]).is_absolute() for im in images.values())  # referenced in place

    assert ds.info["yolo_classes"] == {"normal": ["normal-left"], "abnormal": ["neck-fracture", "abnormal-other"]}
    assert ds.info["dataset"]["license"] == "CC BY 4.0"
    assert result.warnings == []


def test_yolo_skips_bad_lines_with_reasons(tmp_path):
    root = make_yolo(tmp_path / "export")
    result = import_yolo(root, tmp_path / "ds", progress=False)
    skipped = {(Path(s.path).name, s.problem.split(":")[0]): s.problem for s in result.skipped}
    assert set(skipped) == {("b.txt", "line 2"), ("b.txt", "line 3 (class neck-fracture)"),
                            ("c.txt", "line 2 (class normal-left)"), ("ghost.txt", "label file has no image (no "
                                                                       f"{root / 'test' / 'images' / 'ghost'}.*)")}
    assert "'7' is not a class index" in skipped["b.txt", "line 2"] and "0..2" in skipped["b.txt", "line 2"]
    odd = skipped["b.txt", "line 3 (class neck-fracture)"]
    assert "odd number" in odd and "stays abnormal" in odd
    assert "outside the normalised 0..1" in skipped["c.txt", "line 2 (class normal-left)"]

def test_yolo_explicit_class_mapping(tmp_path):
    root = make_yolo(tmp_path / "export")
    # abnormal-other called normal: b's polygon is no lesion; its odd neck-fracture line still makes it abnormal.
    for kwargs in ({"normal": ["normal-left", "abnormal-other"]}, {"abnormal": ["neck-fracture"]},
                   {"normal": ["normal-left", "abnormal-other"], "abnormal": ["neck-fracture"]}):
        out = tmp_path / f"ds{len(kwargs)}{sorted(kwargs)[0]}"
        ds = import_yolo(root, out, progress=False, **kwargs).dataset
        b = _by_name(ds)["b.png"]
        assert b["label"] == 1 and ds.annotations_for(b["id"]) == []
        assert ds.info["yolo_classes"]["abnormal"] == ["neck-fracture"]

    with pytest.raises(LimbscanError, match="'abnormal-other' named neither normal nor abnormal"):
        import_yolo(root, tmp_path / "x", normal=["normal-left"], abnormal=["neck-fracture"], progress=False)
    with pytest.raises(LimbscanError, match="'normal-left' named both"):
        import_yolo(root, tmp_path / "x", normal=["normal-left", "abnormal-other"],
                    abnormal=["neck-fracture", "normal-left"], progress=False)
    with pytest.raises(LimbscanError, match=r"data\.yaml: normal class\(es\) 'normal-rigth' not among"):
        import_yolo(root, tmp_path / "x", normal=["normal-rigth"], progress=False)
    assert not (tmp_path / "x" / "dataset.json").exists()


def test_default_mapping_by_the_word_normal():
    assert [is_normal_name(n) for n in ("normal-left", "Normal", "NORMAL_right", "normal")] == [True] * 4
    assert [is_normal_name(n) for n in ("abnormal", "abnormal-other", "subnormality", "left-neck")] == [False] * 4
    names = dict(enumerate(CLASSES))
    assert class_roles(names, None, None) == {"neck-fracture": True, "normal-left": False, "abnormal-other": True}
    assert class_roles(names, [" normal-left ", ""], None) == class_roles(names, None, None)  # CLI lists stripped


def test_yolo_no_normal_class_warns(tmp_path):
    root = tmp_path / "export"
    (root / "data.yaml").parent.mkdir(parents=True)
    (root / "data.yaml").write_text("nc: 1\nnames: [fracture]\n")
    image(root / "train" / "images" / "x.png")
    labels(root / "train" / "labels" / "x.txt", "0 0.5 0.5 0.2 0.2")
    result = import_yolo(root, tmp_path / "ds", progress=False)
    assert result.dataset.images[0]["label"] == 1
    assert any("no class name holds the word 'normal'" in w.problem for w in result.warnings)


def test_yolo_unknown_class_leaves_the_label_unknown(tmp_path):
    root = tmp_path / "export"
    (root / "data.yaml").parent.mkdir(parents=True)
    (root / "data.yaml").write_text("names: {0: fracture, 1: normal}\n")
    image(root / "images" / "keep.png")
    labels(root / "labels" / "keep.txt", "1 0.5 0.5 0.2 0.2")
    image(root / "images" / "unsure.png")  # only a normal region known: it may be abnormal
    labels(root / "labels" / "unsure.txt", "1 0.5 0.5 0.2 0.2", "5 0.5 0.5 0.2 0.2")
    result = import_yolo(root, tmp_path / "ds", progress=False)
    assert [Path(im["file_name"]).name for im in result.dataset.images] == ["keep.png"]
    unsure = [s for s in result.skipped if s.path.endswith("unsure.png")]
    assert len(unsure) == 1 and "line(s) 2" in unsure[0].problem and "label is unknown" in unsure[0].problem


def test_yolo_flat_layout_dict_names_and_body_part(tmp_path):
    root = tmp_path / "export"
    (root / "data.yaml").parent.mkdir(parents=True)
    (root / "data.yaml").write_text("nc: 2\nnames:\n  0: fracture\n  1: normal\n")
    image(root / "images" / "p.png", size=(40, 80))
    labels(root / "labels" / "p.txt", "0 0.25 0.75 0.5 0.5")
    image(root / "images" / "q.png")
    result = import_yolo(root, tmp_path / "ds", body_part="HIP", progress=False)
    images = _by_name(result.dataset)
    assert {n: im["label"] for n, im in images.items()} == {"p.png": 1, "q.png": 0}
    assert all(im["body_part"] == "hip" and im["attributes"] == {} for im in images.values())
    # 40 x 80: x = (0.25 - 0.25) * 40 = 0, y = (0.75 - 0.25) * 80 = 40, w = 20, h = 40.
    assert result.dataset.coco["annotations"][0]["bbox"] == pytest.approx([0, 40, 20, 40])
    with pytest.raises(LimbscanError, match="'wrist' is not a lower-limb part"):
        import_yolo(root, tmp_path / "ds2", body_part="wrist", progress=False)


def test_yolo_no_labels_folder_warns(tmp_path):
    root = tmp_path / "export"
    (root / "data.yaml").parent.mkdir(parents=True)
    (root / "data.yaml").write_text("names: [fracture, normal]\n")
    image(root / "test" / "images" / "t.png")
    result = import_yolo(root, tmp_path / "ds", progress=False)
    assert result.dataset.images[0]["label"] == 0
    assert any("no labels folder" in w.problem for w in result.warnings)


def test_yolo_bad_roots_raise(tmp_path):
    root = tmp_path / "export"
    image(root / "train" / "images" / "x.png")
    with pytest.raises(LimbscanError, match=f"{root}: no data.yaml here"):
        import_yolo(root, tmp_path / "ds", progress=False)
    (root / "data.yaml").write_text("nc: 3\nnames: [a, normal]\n")
    with pytest.raises(LimbscanError, match="nc is 3 but names lists 2"):
        import_yolo(root, tmp_path / "ds", progress=False)
    (root / "data.yaml").write_text("nc: 2\n")
    with pytest.raises(LimbscanError, match="no 'names:'"):
        import_yolo(root, tmp_path / "ds", progress=False)

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "data.yaml").write_text("names: [a, normal]\n")
    with pytest.raises(LimbscanError, match=f"{bare}: no images folder"):
        import_yolo(bare, tmp_path / "ds", progress=False)
    (bare / "train" / "images").mkdir(parents=True)
    with pytest.raises(LimbscanError, match=f"{bare}: no images in"):
        import_yolo(bare, tmp_path / "ds", progress=False)
    (bare / "train" / "images" / "x.png").write_text("not an image")
    with pytest.raises(LimbscanError, match="nothing usable"):
        import_yolo(bare, tmp_path / "ds", progress=False)
    with pytest.raises(LimbscanError, match="not a folder"):
        import_yolo(tmp_path / "missing", tmp_path / "ds", progress=False)
    assert IMPORTERS["yolo"] is import_yolo


def test_cli_import_yolo(tmp_path):
    root = make_yolo(tmp_path / "export")
    out = tmp_path / "ds"
    runner = CliRunner()
    result = runner.invoke(app, ["data", "import", "yolo", str(root), "-o", str(out), "--body-part", "hip",
                                 "--normal", "normal-left,abnormal-other", "-q"])
    assert result.exit_code == 0, result.output
    ds = Dataset.load(out)
    assert len(ds.images) == 5 and {im["body_part"] for im in ds.images} == {"hip"}
    assert sum(im["label"] for im in ds.images) == 2 and len(ds.coco["annotations"]) == 1
    report = json.loads((out / "import_report.json").read_text())
    assert len(report["skipped"]) == 4 and report["n_images"] == 5

    bad = runner.invoke(app, ["data", "import", "yolo", str(root), "-o", str(tmp_path / "ds2"),
                              "--normal", "normal-left", "--abnormal", "neck-fracture", "-q"])
    assert bad.exit_code != 0 and isinstance(bad.exception, LimbscanError)
    assert "abnormal-other" in str(bad.exception)
    assert "yolo" in runner.invoke(app, ["data", "import", "--help"]).output


def test_yolo_real_hip_export(tmp_path):
    if not (HIP / "data.yaml").is_file():
        pytest.skip(f"real data absent: no Roboflow hip export at {HIP}")
    result = import_yolo(HIP, tmp_path / "ds", body_part="hip", progress=False)
    images = Dataset.load(tmp_path / "ds").images
    assert len(images) == 354 and result.skipped == []
    assert sum(im["label"] for im in images) == 148
    assert sum(1 - im["label"] for im in images) == 206
    assert all(im["body_part"] == "hip" and im["attributes"] == {"yolo_split": "train"} for im in images)
    assert all(im["patient_id"].startswith("yolo:") for im in images)
    assert not (tmp_path / "ds" / "images").exists()  # referenced in place, never copied
    anns = result.dataset.coco["annotations"]
    assert anns and all(a["segmentation"] and len(a["segmentation"][0]) >= 6 for a in anns)
    assert {a["image_id"] for a in anns} == {im["id"] for im in images if im["label"] == 1}
