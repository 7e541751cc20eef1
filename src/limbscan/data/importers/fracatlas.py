"""FracAtlas (Abedeen et al. 2023), read in its own layout; images are referenced in place.

The label is the folder (``images/Fractured`` 1, ``images/Non_fractured`` 0, winning over
dataset.csv); lesions come from the COCO fracture masks. FracAtlas has no patient ids: every
image is its own patient. Body part from dataset.csv's columns: hip (also when tagged leg), else
leg, else hand or shoulder (``mixed``: both, or mixed alone), else none; tags stay in ``attributes``.
``parts`` / ``exclude_parts`` keep a subset by body part (``("leg", "hip")``: limbscan's main
dataset, or its auxiliary data); what is left out is never decoded and said in one line per part.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from collections.abc import Collection
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
UNKNOWN = "unknown"  # the body part of an image dataset.csv tags with none
# Every body part an import can give, for parts / exclude_parts.
FRACATLAS_PARTS = ("leg", "hip", "hand", "shoulder", "mixed", UNKNOWN)


def import_fracatlas(
    root: Path,
    out: Path,
    progress: bool = True,
    skip_truncated: bool = False,
    parts: Collection[str] | None = None,
    exclude_parts: Collection[str] | None = None,
) -> ImportResult:
    """Import a FracAtlas tree at ``root`` into the dataset folder ``out``; with ``parts`` only the
    images of those body parts, with ``exclude_parts`` all but those (``unknown``: untagged)."""
    keep = _part_filter(parts, exclude_parts)
    root = require_dir(Path(root), "FracAtlas root")
    images_dir = require_dir(root / "images", "FracAtlas images folder")
    tags = _read_tags(root / "dataset.csv")

    files: list[tuple[Path, int]] = []
    for folder, label in LABEL_FOLDERS.items():
        if (images_dir / folder).is_dir():
            files += [(p, label) for p in list_files(images_dir / folder)]
    if not files:
        raise LimbscanError(f"{images_dir}: no images in {' or '.join(LABEL_FOLDERS)}")
    files.sort(key=lambda item: (item[0].name, item[0]))  # ids follow FracAtlas' own numbering
    part_of = {p.name: _body_part(tags.get(p.name, {})) or UNKNOWN for p, _ in files}
    left_out = [name for name in part_of if keep is not None and part_of[name] not in keep]
    if left_out:
        files = [(p, label) for p, label in files if part_of[p.name] in keep]
        if not files:
            counts = ", ".join(f"{part} {n}" for part, n in sorted(Counter(part_of.values()).items()))
            raise LimbscanError(f"{root}: no images of the body parts kept ({', '.join(sorted(keep))}); "
                                f"found {counts}")
    kept_parts = sorted({part_of[p.name] for p, _ in files})
    builder = DatasetBuilder(Path(out), source="fracatlas", description=f"FracAtlas: {', '.join(kept_parts)}")
    # One line per body part left out, not one per file.
    for part, n in sorted(Counter(part_of[name] for name in left_out).items()):
        builder.warnings.append(Skipped(str(root), f"{n} {part} image(s) left out (body parts kept: "
                                                   f"{', '.join(sorted(keep or ()))})"))

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

    _add_annotations(builder, root / COCO_FILE, ids_by_name, set(left_out))
    return finish(builder, root, {"dataset": CITATION})


def _part_filter(parts: Collection[str] | None, exclude_parts: Collection[str] | None) -> set[str] | None:
    """The body parts to keep, or None for all; a name FracAtlas cannot give is an error."""
    if parts is not None and exclude_parts is not None:
        raise LimbscanError("fracatlas: give the body parts to keep or the ones to leave out, not both")
    given = parts if parts is not None else exclude_parts
    if given is None:
        return None
    names = {str(p).strip().lower() for p in given} - {""}
    if not names:
        raise LimbscanError(f"fracatlas: no body part named (choose from {', '.join(FRACATLAS_PARTS)})")
    unknown = sorted(names - set(FRACATLAS_PARTS))
    if unknown:
        raise LimbscanError(f"fracatlas: body part {unknown[0]!r} is not one of {', '.join(FRACATLAS_PARTS)}")
    return names if parts is not None else set(FRACATLAS_PARTS) - names


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
    upper = [part for part in ("hand", "shoulder") if row.get(part)]
    if len(upper) > 1 or (row.get("mixed") and not upper):
        return "mixed"
    return upper[0] if upper else None


def _add_annotations(
    builder: DatasetBuilder, path: Path, ids_by_name: dict[str, int], left_out: Collection[str] = ()
) -> None:
    """Add every polygon/box whose image was imported; list the rest as skipped, except those of
    images left out by body part (already said once per part)."""
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
        if image_id is None and name in left_out:
            continue
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
