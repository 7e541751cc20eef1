"""The one dataset schema: COCO JSON extended with image-level fields (docs/architecture.md).

A dataset is a folder ``DS`` holding ``DS/dataset.json``. Each image has ``body_part``, ``label``
(0 normal, 1 abnormal), ``patient_id`` (always a pseudonym; ``null``: its own patient), optional
``study``, ``split`` (train / val / test / null), ``attributes`` and ``truncated``; ``file_name`` is
relative to ``DS`` (files it owns) or absolute. Only lesions are annotated, category ``lesion``,
``bbox`` ``[x, y, w, h]`` in pixels of the original image.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from limbscan.errors import BadInputError, LimbscanError, Skipped
from limbscan.io.meta import ImageMeta

# Moved to limbscan.utils.files; kept importable from here for callers outside limbscan.
from limbscan.utils.files import atomic_file, sha256_file, write_json_atomic, write_text_atomic  # noqa: F401

DATASET_FILE = "dataset.json"
LESION_CATEGORY = {"id": 1, "name": "lesion", "supercategory": "abnormal"}
SPLITS = ("train", "val", "test")
# Polygon and box coordinates from annotation tools often overshoot by a fraction of a pixel.
BOX_TOLERANCE_PX = 1.0


def check_box(bbox: Iterable[float], width: int, height: int, where: str) -> list[float]:
    """Validate a COCO box against its image; clip sub-pixel overshoot, reject the rest."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError) as err:
        raise BadInputError(where, f"box {bbox!r} is not four numbers") from err
    if not all(map(_finite, (x, y, w, h))) or w <= 0 or h <= 0:
        raise BadInputError(where, f"box {[x, y, w, h]} has no area or is not finite")
    tol = BOX_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise BadInputError(
            where, f"box [x={x:.1f}, y={y:.1f}, w={w:.1f}, h={h:.1f}] lies outside the "
            f"{width}x{height} image"
        )
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(width)), min(y + h, float(height))
    return [x0, y0, x1 - x0, y1 - y0]


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


@dataclass
class Dataset:
    """A loaded ``dataset.json`` and the folder it lives in."""

    root: Path
    coco: dict[str, Any]
    _by_image: dict[int, list[dict]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.reindex()

    # -- reading ---------------------------------------------------------------------
    @classmethod
    def load(cls, root: str | Path) -> Dataset:
        root = Path(root)
        path = root / DATASET_FILE if root.is_dir() else root
        if not path.is_file():
            raise LimbscanError(f"{root}: no {DATASET_FILE} here; make one with `limbscan data import`")
        try:
            coco = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise LimbscanError(f"{path}: not valid JSON ({err})") from err
        for key in ("images", "annotations", "categories"):
            if key not in coco:
                raise LimbscanError(f"{path}: missing the COCO key {key!r}")
        return cls(path.parent, coco)

    def reindex(self) -> None:
        self._by_image = {}
        for ann in self.coco["annotations"]:
            self._by_image.setdefault(ann["image_id"], []).append(ann)

    @property
    def images(self) -> list[dict]:
        return self.coco["images"]

    @property
    def info(self) -> dict:
        return self.coco.setdefault("info", {})

    @property
    def synthetic(self) -> bool:
        return bool(self.info.get("synthetic", False))

    def annotations_for(self, image_id: int) -> list[dict]:
        return self._by_image.get(image_id, [])

    def image_path(self, image: dict) -> Path:
        return self.root / image["file_name"]  # an absolute file_name wins the join

    def split_images(self, split: str) -> list[dict]:
        if split == "all":
            return list(self.images)
        return [im for im in self.images if im.get("split") == split]

    def counts(self) -> dict[tuple[str, int, str], int]:
        """Image counts per (body part, label, split); unsplit images count under 'none'."""
        return dict(
            Counter(
                (im.get("body_part") or "unknown", int(im["label"]), im.get("split") or "none")
                for im in self.images
            )
        )

    # -- writing ---------------------------------------------------------------------
    def save(self) -> Path:
        path = self.root / DATASET_FILE
        write_json_atomic(path, self.coco)
        return path


@dataclass
class DatasetBuilder:
    """What importers fill: images and their lesions, with every bad entry kept as a Skipped."""

    root: Path
    source: str
    synthetic: bool = False
    description: str = ""
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[Skipped] = field(default_factory=list)

    def add_image(
        self,
        file_name: str | Path,
        meta: ImageMeta,
        label: int,
        body_part: str | None,
        patient_id: str | None = None,
        attributes: dict[str, Any] | None = None,
        study: str | None = None,
    ) -> int:
        if label not in (0, 1):
            raise BadInputError(file_name, f"label must be 0 (normal) or 1 (abnormal), got {label!r}")
        if meta.width <= 0 or meta.height <= 0:
            raise BadInputError(file_name, f"image is {meta.width}x{meta.height}: no pixels")
        image_id = len(self.images) + 1
        self.images.append(
            {
                "id": image_id,
                "file_name": _portable_name(Path(file_name), self.root),
                "width": int(meta.width),
                "height": int(meta.height),
                "format": meta.format,
                "body_part": body_part,
                "label": int(label),
                "patient_id": patient_id,
                "split": None,
                "attributes": dict(attributes or {}),
                "pixel_spacing": list(meta.pixel_spacing) if meta.pixel_spacing else None,
                "truncated": bool(meta.truncated),
                # Where the source groups images into studies (MURA folders, synthetic patients):
                # evaluate then also reports study-level AUC. Absent: each image its own study.
                **({"study": str(study)} if study else {}),
            }
        )
        if meta.truncated:
            self.warnings.append(
                Skipped(str(file_name), "file is truncated; decoded what is there and kept it")
            )
        return image_id

    def add_lesion(
        self,
        image_id: int,
        bbox: Iterable[float],
        segmentation: list[list[float]] | None = None,
        where: str | None = None,
    ) -> int | None:
        """Add a lesion box (and polygons); a bad box is listed in ``skipped``, not raised."""
        image = self.images[image_id - 1]
        where = where or image["file_name"]
        try:
            box = check_box(bbox, image["width"], image["height"], where)
        except BadInputError as err:
            self.skipped.append(Skipped.from_error(err))
            return None
        ann_id = len(self.annotations) + 1
        self.annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": LESION_CATEGORY["id"],
                "bbox": box,
                "segmentation": [list(map(float, poly)) for poly in (segmentation or [])],
                "area": box[2] * box[3],
                "iscrowd": 0,
            }
        )
        return ann_id

    def skip(self, path: str | Path, problem: str) -> None:
        self.skipped.append(Skipped(str(path), problem))

    def build(self) -> Dataset:
        from limbscan import __version__

        coco = {
            "info": {
                "description": self.description or f"limbscan dataset imported from {self.source}",
                "source": self.source,
                "synthetic": self.synthetic,
                "limbscan_version": __version__,
            },
            "images": self.images,
            "annotations": self.annotations,
            "categories": [dict(LESION_CATEGORY)],
        }
        return Dataset(self.root, coco)


def _portable_name(path: Path, root: Path) -> str:
    """Relative to the dataset when the file lives inside it, else absolute."""
    path = path if path.is_absolute() else (Path.cwd() / path)
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path.resolve())
