"""A COCO JSON plus its image folder; images are referenced in place.

Image-level fields are taken from the JSON where present (``label``, ``body_part``,
``patient_id``, ``study``, ``split``, ``attributes``; a DICOM image's study is else its own
StudyInstanceUID, as anonymised); otherwise an image is abnormal when it has annotations.
Every annotation category counts as a lesion.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from limbscan.data.dataset import SPLITS, DatasetBuilder
from limbscan.data.importers.common import (
    ImportResult,
    add_coco_lesions,
    add_probed,
    finish,
    probe_sources,
    require_dir,
)
from limbscan.errors import LimbscanError, Skipped
from limbscan.io.bodypart import normalize_body_part


def import_coco(annotations: Path, images: Path, out: Path, progress: bool = True) -> ImportResult:
    """Import the COCO file ``annotations`` whose ``file_name``s live under ``images``."""
    annotations, images = Path(annotations), require_dir(Path(images), "image folder")
    coco = _load(annotations)
    builder = DatasetBuilder(Path(out), source="coco")

    entries: list[dict] = []
    seen: set[Any] = set()
    for n, entry in enumerate(coco["images"]):
        if not isinstance(entry, dict) or "id" not in entry or not entry.get("file_name"):
            builder.skip(annotations, f"images[{n}] has no id or file_name")
        elif entry["id"] in seen:
            builder.skip(annotations, f"images[{n}] repeats image id {entry['id']}")
        else:
            seen.add(entry["id"])
            entries.append(entry)
    if not entries:
        raise LimbscanError(f"{annotations}: lists no usable images")

    anns_by_image: dict[Any, list[dict]] = defaultdict(list)
    for n, ann in enumerate(coco["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if image_id not in seen:
            builder.skip(annotations, f"annotation {ann.get('id', n) if isinstance(ann, dict) else n} "
                         f"names image id {image_id!r}, which the file does not list")
        else:
            anns_by_image[image_id].append(ann)

    paths = [images / str(entry["file_name"]) for entry in entries]  # an absolute file_name wins
    sources = probe_sources(paths, Path(out), builder, progress)
    for entry, path, src in zip(entries, paths, sources, strict=True):
        if src is None:
            continue
        meta = src.probed
        anns = anns_by_image.get(entry["id"], [])
        if isinstance(meta, Skipped) and anns:
            meta = Skipped(meta.path, f"{meta.problem} (its {len(anns)} annotation(s) left out too)")
        label = entry.get("label", 1 if anns else 0)
        image_id = add_probed(
            builder, path, meta, label, _body_part(entry, path, builder),
            _patient(entry) or src.pseudonym, _attributes(entry, path, builder), file_name=src.file_name,
            study=str(entry["study"]) if entry.get("study") else src.study,
        )
        if image_id is None:
            continue
        image = builder.images[image_id - 1]
        split = entry.get("split")
        if split in SPLITS:
            image["split"] = split
        elif split is not None:
            builder.warnings.append(Skipped(str(path), f"split {split!r} is not one of {SPLITS}; left unsplit"))
        if (entry.get("width"), entry.get("height")) not in ((None, None), (image["width"], image["height"])):
            builder.warnings.append(Skipped(str(path), (
                f"the JSON says {entry.get('width')}x{entry.get('height')}, the image is "
                f"{image['width']}x{image['height']}; boxes are checked against the image"
            )))
        if anns and image["label"] == 0:
            builder.warnings.append(Skipped(str(path), f"labelled normal; its {len(anns)} annotation(s) left out"))
            continue
        add_coco_lesions(builder, image_id, anns, path)
    return finish(builder, annotations)


def _load(path: Path) -> dict:
    if not path.is_file():
        raise LimbscanError(f"{path}: annotation file not found")
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LimbscanError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise LimbscanError(f"{path}: not a COCO file (no 'images' list)")
    coco.setdefault("annotations", [])
    if not isinstance(coco["annotations"], list):
        raise LimbscanError(f"{path}: 'annotations' is not a list")
    return coco


def _body_part(entry: dict, path: Path, builder: DatasetBuilder) -> str | None:
    raw = entry.get("body_part")
    part = normalize_body_part(raw) if isinstance(raw, str) else None
    if raw is not None and part is None:
        builder.warnings.append(Skipped(str(path), f"body_part {raw!r} is not a lower-limb part; left unknown"))
    return part


def _patient(entry: dict) -> str | None:
    value = entry.get("patient_id")
    return None if value in (None, "") else str(value)


def _attributes(entry: dict, path: Path, builder: DatasetBuilder) -> dict[str, Any]:
    value = entry.get("attributes") or {}
    if not isinstance(value, dict):
        builder.warnings.append(Skipped(str(path), "attributes is not a mapping; ignored"))
        return {}
    return value
