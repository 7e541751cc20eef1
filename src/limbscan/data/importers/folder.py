"""A plain folder tree: ``ROOT/<body_part>/{normal,abnormal}/...`` (any depth below that).

PNG and JPEG files are referenced in place. DICOM files are anonymised on import into
``OUT/images/img<NNNNNN>.dcm``: the dataset never points at a file that holds patient data,
and the new name carries nothing from the input path (folder names are often patient names).
"""

from __future__ import annotations

from pathlib import Path

from limbscan.data.dataset import DatasetBuilder
from limbscan.data.importers.common import Found, ImportResult, import_found, list_files, require_dir
from limbscan.errors import LimbscanError
from limbscan.io.bodypart import normalize_body_part

LABEL_FOLDERS = {"normal": 0, "abnormal": 1}


def import_folder(root: Path, out: Path, progress: bool = True) -> ImportResult:
    """Import ``root/<body_part>/{normal,abnormal}/**`` into the dataset folder ``out``."""
    root = require_dir(Path(root), "image folder")
    out = Path(out)
    builder = DatasetBuilder(out, source="folder")

    # In a stable order, so image ids and DICOM names repeat.
    entries: list[Found] = []
    for part_dir in sorted(p for p in root.iterdir() if not p.name.startswith(".")):
        if not part_dir.is_dir():
            builder.skip(part_dir, f"not inside a body-part folder (expected {root}/<body_part>/normal|abnormal/)")
            continue
        body_part = normalize_body_part(part_dir.name)
        if body_part is None:
            n = len(list_files(part_dir))
            builder.skip(part_dir, f"folder name is not a lower-limb body part; its {n} file(s) left out")
            continue
        for label_dir in sorted(p for p in part_dir.iterdir() if not p.name.startswith(".")):
            label = LABEL_FOLDERS.get(label_dir.name.lower()) if label_dir.is_dir() else None
            if label is None:
                builder.skip(label_dir, "not under normal/ or abnormal/; left out")
                continue
            entries += [Found(path, label, body_part) for path in list_files(label_dir)]
    if not entries and not builder.skipped:
        raise LimbscanError(f"{root}: no images (expected {root}/<body_part>/normal|abnormal/...)")

    return import_found(builder, entries, out, root, progress)

