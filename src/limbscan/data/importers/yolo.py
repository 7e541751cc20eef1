"""A YOLOv8 / Roboflow export: ``data.yaml`` plus split folders; images are referenced in place.

Layout: ``ROOT/<split>/images/`` with ``ROOT/<split>/labels/<stem>.txt`` (or the flat
``ROOT/images/``, ``ROOT/labels/``), one region a line normalised to 0..1: ``CLASS xc yc w h`` (a
box) or ``CLASS x1 y1 x2 y2 ...`` (a polygon). A class is normal or abnormal (by default: normal
when its name holds the word "normal"); an image is abnormal when any region is, each abnormal
region a lesion. The YOLO split is kept as the attribute ``yolo_split``; Roboflow's source name
(``<name>.rf.<hash>``), prefixed ``yolo:``, is the patient, so augmented copies stay together.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from limbscan.data.dataset import DatasetBuilder
from limbscan.data.importers.common import (
    Found,
    ImportResult,
    add_source,
    finish,
    list_files,
    probe_sources,
    require_dir,
)
from limbscan.errors import LimbscanError, Skipped
from limbscan.io.bodypart import normalize_body_part
from limbscan.io.meta import LOWER_LIMB_PARTS

PATIENT_PREFIX = "yolo:"
DATA_FILES = ("data.yaml", "data.yml")
ROBOFLOW_MARK = ".rf."
# Normalised coordinates a little outside 0..1 (export rounding) are clipped; beyond this, skipped.
COORD_TOLERANCE = 0.01
_WORDS = re.compile(r"[^a-z0-9]+")


@dataclass
class _Region:
    """One label line: its class and its outline, normalised (a polygon; a box as its 4 corners)."""

    line: int
    name: str
    abnormal: bool
    polygon: list[float] | None  # None: the line's geometry is bad, its reason already listed
    is_box: bool = False


@dataclass
class _Entry:
    path: Path
    split: str | None
    label_file: Path | None  # None: no label file (a background image)
    regions: list[_Region] = field(default_factory=list)
    unknown_lines: list[int] = field(default_factory=list)  # lines whose class could not be read


def import_yolo(
    root: Path,
    out: Path,
    *,
    abnormal: Collection[str] | None = None,
    normal: Collection[str] | None = None,
    body_part: str | None = None,
    progress: bool = True,
) -> ImportResult:
    """Import the YOLOv8 / Roboflow export at ``root`` into the dataset folder ``out``.

    ``normal`` / ``abnormal``: class names from ``data.yaml``; either one alone means the other
    is the rest; neither: a class is normal when its name holds the word "normal". ``body_part``
    (a lower-limb part, e.g. ``hip``) is given to every image.
    """
    root = require_dir(Path(root), "YOLO root")
    part = _body_part(body_part)
    data_file, names, data = _read_data_yaml(root)
    builder = DatasetBuilder(Path(out), source="yolo")
    roles = class_roles(names, normal, abnormal, data_file, builder)

    folders = _split_folders(root)
    entries: list[_Entry] = []
    n_files = 0
    for split, images_dir, labels_dir in folders:
        found, n = _collect(split, images_dir, labels_dir, names, roles, builder)
        if found and not labels_dir.is_dir():
            builder.warnings.append(Skipped(str(labels_dir), (
                f"no labels folder; the {len(found)} image(s) of {images_dir} are all taken as normal")))
        entries.extend(found)
        n_files += n
    if not n_files:
        where = ", ".join(str(images_dir) for _, images_dir, _ in folders)
        raise LimbscanError(f"{root}: no images in {where}")

    sources = probe_sources([e.path for e in entries], Path(out), builder, progress)
    for entry, src in zip(entries, sources, strict=True):
        if src is None:
            continue
        meta = src.probed
        lesions = [r for r in entry.regions if r.abnormal]
        label = 1 if lesions else 0
        if isinstance(meta, Skipped) and entry.regions:
            meta = Skipped(meta.path, f"{meta.problem} (its {len(entry.regions)} labelled region(s) left out too)")
        elif label == 0 and entry.unknown_lines:
            lines = ", ".join(map(str, entry.unknown_lines))
            builder.skip(entry.path, (
                f"no region of an abnormal class, but line(s) {lines} of {entry.label_file} name no known "
                "class, so the label is unknown"))
            continue
        attributes = {"yolo_split": entry.split} if entry.split else {}
        image_id = add_source(builder, src, Found(entry.path, label, part, _patient(entry.path)), attributes, meta)
        if image_id is None:
            continue
        image = builder.images[image_id - 1]
        width, height = image["width"], image["height"]
        for region in lesions:
            if region.polygon is None:
                continue
            pixels = [v * (width if i % 2 == 0 else height) for i, v in enumerate(region.polygon)]
            xs, ys = pixels[0::2], pixels[1::2]
            bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            builder.add_lesion(image_id, bbox, None if region.is_box else [pixels],
                               where=f"{entry.label_file} (line {region.line}, class {region.name})")
    info: dict[str, Any] = {"yolo_classes": {
        "normal": [n for n in _unique(names.values()) if not roles[n]],
        "abnormal": [n for n in _unique(names.values()) if roles[n]],
    }}
    if isinstance(data.get("roboflow"), dict):  # Roboflow's workspace, project, licence, url
        info["dataset"] = dict(data["roboflow"])
    return finish(builder, root, info)


# -- data.yaml and the classes ------------------------------------------------------------

def _read_data_yaml(root: Path) -> tuple[Path, dict[int, str], dict]:
    """``(data file, class index -> name, the whole file)``."""
    path = next((root / name for name in DATA_FILES if (root / name).is_file()), None)
    if path is None:
        raise LimbscanError(f"{root}: no data.yaml here (a YOLOv8 / Roboflow export has one, listing the "
                            "class names)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise LimbscanError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict) or not data.get("names"):
        raise LimbscanError(f"{path}: no 'names:' (the class names, a list or index -> name)")
    raw = data["names"]
    if isinstance(raw, list):
        names = {i: str(name) for i, name in enumerate(raw)}
    elif isinstance(raw, dict):
        try:
            names = {int(i): str(name) for i, name in raw.items()}
        except (TypeError, ValueError) as err:
            raise LimbscanError(f"{path}: 'names:' maps {list(raw)!r}; the keys must be class indices") from err
    else:
        raise LimbscanError(f"{path}: 'names:' is neither a list nor index -> name")
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise LimbscanError(f"{path}: nc is {nc!r} but names lists {len(names)} classes")
    return path, names, data


def is_normal_name(name: str) -> bool:
    """Whether a class name holds the word "normal" (``normal-left``, ``Normal``; not ``abnormal``)."""
    return "normal" in _WORDS.split(name.lower())


def class_roles(
    names: dict[int, str],
    normal: Collection[str] | None,
    abnormal: Collection[str] | None,
    where: str | Path = "data.yaml",
    builder: DatasetBuilder | None = None,
) -> dict[str, bool]:
    """Class name -> abnormal. Either list alone makes the other the rest; a name in neither list
    (both given), in both, or in no ``names:`` of ``where`` is a :class:`LimbscanError`."""
    classes = _unique(names.values())
    normal = None if normal is None else _clean(normal)
    abnormal = None if abnormal is None else _clean(abnormal)
    for given, option in ((normal, "normal"), (abnormal, "abnormal")):
        unknown = [n for n in given or () if n not in classes]
        if unknown:
            raise LimbscanError(f"{where}: {option} class(es) {', '.join(map(repr, unknown))} not among the "
                                f"classes {', '.join(classes)}")
    if normal is not None and abnormal is not None:
        both = [n for n in classes if n in normal and n in abnormal]
        if both:
            raise LimbscanError(f"{where}: class(es) {', '.join(map(repr, both))} named both normal and abnormal")
        neither = [n for n in classes if n not in normal and n not in abnormal]
        if neither:
            raise LimbscanError(f"{where}: class(es) {', '.join(map(repr, neither))} named neither normal nor "
                                "abnormal; name each class in one of the two lists")
        return {n: n in abnormal for n in classes}
    if abnormal is not None:
        return {n: n in abnormal for n in classes}
    if normal is None:
        normal = [n for n in classes if is_normal_name(n)]
        if builder is not None and not normal:
            builder.warnings.append(Skipped(str(where), (
                "no class name holds the word 'normal', so every labelled region is a lesion; "
                "name the normal classes to change that")))
    return {n: n not in normal for n in classes}


def _clean(names: Collection[str]) -> list[str]:
    return [n.strip() for n in names if n and n.strip()]


def _unique(names: Collection[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _body_part(body_part: str | None) -> str | None:
    if body_part is None:
        return None
    part = normalize_body_part(body_part)
    if part is None:
        raise LimbscanError(f"body part {body_part!r} is not a lower-limb part ({', '.join(LOWER_LIMB_PARTS)})")
    return part


def _patient(path: Path) -> str | None:
    """``yolo:<source name>`` for Roboflow's ``<source name>.rf.<hash>.<ext>``; else None (its own patient)."""
    source, mark, _ = path.name.partition(ROBOFLOW_MARK)
    return PATIENT_PREFIX + source if mark and source else None


# -- the folders and the label files ------------------------------------------------------

def _split_folders(root: Path) -> list[tuple[str | None, Path, Path]]:
    """``(split, images folder, labels folder)``: the flat ``ROOT/images`` and every ``ROOT/<split>/images``."""
    folders: list[tuple[str | None, Path, Path]] = []
    if (root / "images").is_dir():
        folders.append((None, root / "images", root / "labels"))
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if child.name not in ("images", "labels") and (child / "images").is_dir():
            folders.append((child.name, child / "images", child / "labels"))
    if not folders:
        raise LimbscanError(f"{root}: no images folder (looked for {root}/<split>/images/ and {root}/images/)")
    return folders


def _collect(
    split: str | None,
    images_dir: Path,
    labels_dir: Path,
    names: dict[int, str],
    roles: dict[str, bool],
    builder: DatasetBuilder,
) -> tuple[list[_Entry], int]:
    """Every image below ``images_dir`` with its parsed label file, and how many files were there;
    label files without an image are skipped."""
    entries: list[_Entry] = []
    used: set[Path] = set()
    files = list_files(images_dir)
    for path in files:
        rel = path.relative_to(images_dir)
        label_file = labels_dir / rel.with_suffix(".txt")
        # ROOT/images/<split>/ (the flat form): the first folder is the split.
        entry_split = split if split is not None or len(rel.parts) == 1 else rel.parts[0]
        entry = _Entry(path, entry_split, label_file if label_file.is_file() else None)
        if entry.label_file is not None:
            used.add(label_file)
            if not _parse(entry, names, roles, builder):
                continue
        entries.append(entry)
    if labels_dir.is_dir():
        for label_file in list_files(labels_dir):
            if label_file.suffix == ".txt" and label_file not in used:
                stem = label_file.relative_to(labels_dir).with_suffix("")
                builder.skip(label_file, f"label file has no image (no {images_dir / stem}.*)")
    return entries, len(files)


def _parse(entry: _Entry, names: dict[int, str], roles: dict[str, bool], builder: DatasetBuilder) -> bool:
    """Read the entry's label file into its regions; False (and the image skipped) when it cannot be read."""
    label_file = entry.label_file
    try:
        text = label_file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        builder.skip(entry.path, f"its label file {label_file} cannot be read ({type(err).__name__}: {err})")
        return False
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        index = _class_index(fields[0])
        if index is None or index not in names:
            builder.skip(label_file, f"line {n}: class {fields[0]!r} is not a class index of data.yaml "
                                     f"({_index_range(names)}); line left out")
            entry.unknown_lines.append(n)
            continue
        name = names[index]
        abnormal = roles[name]
        polygon, problem = _geometry(fields[1:])
        if problem:
            consequence = "lesion left out, the image stays abnormal" if abnormal else "line left out"
            builder.skip(label_file, f"line {n} (class {name}): {problem}; {consequence}")
        entry.regions.append(_Region(n, name, abnormal, polygon, is_box=len(fields) == 5))
    return True


def _class_index(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _index_range(names: dict[int, str]) -> str:
    indices = sorted(names)
    if indices == list(range(len(indices))):
        return f"0..{len(indices) - 1}"
    return ", ".join(map(str, indices))


def _geometry(fields: list[str]) -> tuple[list[float] | None, str | None]:
    """The region as a normalised polygon (a box as its 4 corners), or None and why."""
    try:
        values = [float(v) for v in fields]
    except ValueError:
        return None, f"coordinates {' '.join(fields)!r} are not all numbers"
    if not all(v == v and abs(v) != float("inf") for v in values):
        return None, "coordinates are not finite"
    if len(values) == 4:
        xc, yc, w, h = values
        if w <= 0 or h <= 0:
            return None, f"box width and height {w:g} x {h:g} are not positive"
        x0, y0, x1, y1 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
        values = [x0, y0, x1, y0, x1, y1, x0, y1]
        what = f"box [xc={xc:g}, yc={yc:g}, w={w:g}, h={h:g}]"
    elif len(values) % 2:
        return None, f"{len(values)} coordinates: an odd number, not a box (4) nor polygon points (x y pairs)"
    elif len(values) < 6:
        return None, f"{len(values)} coordinates: fewer than a box (4) or a polygon of 3 points (6)"
    else:
        what = f"polygon of {len(values) // 2} points"
    low, high = min(values), max(values)
    if low < -COORD_TOLERANCE or high > 1 + COORD_TOLERANCE:
        return None, f"{what} reaches {low:g}..{high:g}, outside the normalised 0..1"
    return [min(max(v, 0.0), 1.0) for v in values], None
