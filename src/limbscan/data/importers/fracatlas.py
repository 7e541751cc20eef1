"""FracAtlas (Abedeen et al. 2023), read in its own layout; images are referenced in place.

::

    ROOT/images/Fractured/*.jpg        label 1 (the folder wins over dataset.csv's `fractured`)
    ROOT/images/Non_fractured/*.jpg    label 0
    ROOT/dataset.csv                   image-level tags: leg, hip, hardware, multiscan, views, ...
    ROOT/Annotations/COCO JSON/COCO_fracture_masks.json   fracture polygons + boxes

FracAtlas has no patient ids, so every image is its own patient (``patient_id`` None).
An image tagged both leg and hip is filed as ``hip``: such images show the hip joint or
pelvis together with the femur, and the hip is what the study is about; both tags remain
in ``attributes`` so nothing is lost.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from limbscan.data.dataset import DatasetBuilder
from limbscan.data.importers.common import (
    ImportResult,
    add_coco_lesions,
    add_probed,
    finish,
    list_files,
    probe_images,
    require_dir,
)
from limbscan.errors import LimbscanError, Skipped

LABEL_FOLDERS = {"Fractured": 1, "Non_fractured": 0}
COCO_FILE = Path("Annotations") / "COCO JSON" / "COCO_fracture_masks.json"
CITATION = {
    "name": "FracAtlas",
    "citation": (
        "Abedeen I. et al., FracAtlas: A Dataset for Fracture Classification, Localization and "
        "Segmentation of Musculoskeletal Radiographs, Scientific Data 10, 521 (2023)"
    ),
    "doi": "10.1038/s41597-023-02432-4",
    "data_doi": "10.6084/m9.figshare.22363012",
    "license": "CC BY 4.0",
    "attribution_required": True,
}
# dataset.csv columns that are not image attributes: the key, and the label (taken from the folder).
_NOT_ATTRIBUTES = {"image_id", "fractured"}


def import_fracatlas(
    root: Path, out: Path, progress: bool = True, skip_truncated: bool = False
) -> ImportResult:
    """Import a FracAtlas tree at ``root`` into the dataset folder ``out``."""
    root = require_dir(Path(root), "FracAtlas root")
    images_dir = require_dir(root / "images", "FracAtlas images folder")
    tags = _read_tags(root / "dataset.csv")
    builder = DatasetBuilder(Path(out), source="fracatlas", description="FracAtlas, lower-limb subset")

    files: list[tuple[Path, int]] = []
    for folder, label in LABEL_FOLDERS.items():
        if (images_dir / folder).is_dir():
            files += [(p, label) for p in list_files(images_dir / folder)]
    if not files:
        raise LimbscanError(f"{images_dir}: no images in {' or '.join(LABEL_FOLDERS)}")
    files.sort(key=lambda item: (item[0].name, item[0]))  # ids follow FracAtlas' own numbering

    ids_by_name: dict[str, int] = {}
    probed = probe_images([p for p, _ in files], progress, "Reading FracAtlas images")
    for (path, label), meta in zip(files, probed, strict=True):
        if skip_truncated and not isinstance(meta, Skipped) and meta.truncated:
            builder.skip(path, "file is truncated; left out (skip_truncated)")
            continue
        row = tags.get(path.name)
        if row is None:
            builder.warnings.append(Skipped(str(path), "not listed in dataset.csv: body part unknown"))
            row = {}
        elif "fractured" in row and row["fractured"] != label:
            builder.warnings.append(
                Skipped(str(path), f"dataset.csv says fractured={row['fractured']}, folder says "
                        f"{label}; the folder is used")
            )
        attributes = {k: v for k, v in row.items() if k not in _NOT_ATTRIBUTES}
        image_id = add_probed(builder, path, meta, label, _body_part(row), None, attributes)
        if image_id is not None:
            ids_by_name[path.name] = image_id

    _add_annotations(builder, root / COCO_FILE, ids_by_name)
    return finish(builder, root, {"dataset": CITATION})


def _read_tags(path: Path) -> dict[str, dict[str, int]]:
    if not path.is_file():
        raise LimbscanError(f"{path}: FracAtlas' dataset.csv not found")
    tags: dict[str, dict[str, int]] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "image_id" not in reader.fieldnames:
            raise LimbscanError(f"{path}: no image_id column; is this FracAtlas' dataset.csv?")
        for line, row in enumerate(reader, start=2):
            values: dict[str, int] = {}
            for key, raw in row.items():
                if key in (None, "image_id"):
                    continue
                try:
                    values[key] = int(raw)
                except (TypeError, ValueError) as err:
                    raise LimbscanError(f"{path}:{line}: {key}={raw!r} is not an integer") from err
            tags[row["image_id"]] = values
    return tags


def _body_part(row: dict[str, int]) -> str | None:
    if row.get("hip"):
        return "hip"
    if row.get("leg"):
        return "leg"
    return None


def _add_annotations(builder: DatasetBuilder, path: Path, ids_by_name: dict[str, int]) -> None:
    """Add every polygon/box whose image was imported; list the rest as skipped."""
    if not path.is_file():
        builder.warnings.append(Skipped(str(path), "annotation file not found: no lesion boxes"))
        return
    try:
        coco = json.loads(path.read_text())
        coco_images = {im["id"]: im for im in coco["images"]}
        annotations = coco["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        builder.skip(path, f"not a COCO annotation file ({type(err).__name__}: {err}); no lesion boxes")
        return

    by_image: dict[int, list[dict]] = defaultdict(list)
    for ann in annotations:
        if ann.get("image_id") not in coco_images:
            builder.skip(path, f"annotation {ann.get('id')} names image id {ann.get('image_id')}, "
                         "which the file does not list")
            continue
        by_image[ann["image_id"]].append(ann)

    for coco_id, anns in sorted(by_image.items()):
        coco_image = coco_images[coco_id]
        name = Path(str(coco_image.get("file_name", ""))).name
        image_id = ids_by_name.get(name)
        if image_id is None:
            builder.skip(path, f"{len(anns)} annotation(s) name {name}, which was not imported "
                         "(missing or skipped)")
            continue
        image = builder.images[image_id - 1]
        where = image["file_name"]
        if image["label"] == 0:
            builder.skip(where, f"{len(anns)} lesion annotation(s) on an image in Non_fractured; "
                         "left out")
            continue
        if (coco_image.get("width"), coco_image.get("height")) != (image["width"], image["height"]):
            builder.warnings.append(Skipped(where, (
                f"annotation file says {coco_image.get('width')}x{coco_image.get('height')}, "
                f"the image is {image['width']}x{image['height']}"
            )))
        add_coco_lesions(builder, image_id, anns, where)
