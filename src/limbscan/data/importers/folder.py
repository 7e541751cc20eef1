"""A plain folder tree: ``ROOT/<body_part>/{normal,abnormal}/...`` (any depth below that).

PNG and JPEG files are referenced in place. DICOM files are anonymised on import into
``OUT/images/img<NNNNNN>.dcm``: the dataset never points at a file that holds patient data,
and the new name carries nothing from the input path (folder names are often patient names).
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import track

from limbscan.data.dataset import DatasetBuilder
from limbscan.data.importers.common import (
    ImportResult,
    add_probed,
    finish,
    list_files,
    probe_images,
    require_dir,
)
from limbscan.errors import BadInputError, LimbscanError, Skipped
from limbscan.io import sniff_format
from limbscan.io.bodypart import normalize_body_part

LABEL_FOLDERS = {"normal": 0, "abnormal": 1}
IMAGES_DIR = "images"


def import_folder(root: Path, out: Path, progress: bool = True) -> ImportResult:
    """Import ``root/<body_part>/{normal,abnormal}/**`` into the dataset folder ``out``."""
    root = require_dir(Path(root), "image folder")
    out = Path(out)
    builder = DatasetBuilder(out, source="folder")

    # (file, label, body part), in a stable order so image ids and DICOM names repeat.
    entries: list[tuple[Path, int, str]] = []
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
            entries += [(path, label, body_part) for path in list_files(label_dir)]
    if not entries and not builder.skipped:
        raise LimbscanError(f"{root}: no images (expected {root}/<body_part>/normal|abnormal/...)")

    readable: list[Path] = []  # what to decode: the input, or its anonymised copy
    patients: list[str | None] = []
    dicom = [i for i, (path, _, _) in enumerate(entries) if _is_dicom(path)]
    dicom_set = set(dicom)
    # DICOM first, one at a time: the anonymiser's pseudonyms must be consistent across files.
    anonymised = dict(_anonymise_all(entries, dicom, out, builder, progress)) if dicom else {}
    for i, (path, _, _) in enumerate(entries):
        copy, pseudonym = anonymised.get(i, (path, None))
        readable.append(copy)
        patients.append(pseudonym)

    probed = probe_images(readable, progress, "Reading images")
    for i, ((path, label, body_part), file_name, meta) in enumerate(zip(entries, readable, probed, strict=True)):
        if i in dicom_set and i not in anonymised:
            continue  # already listed as skipped by the anonymiser
        if isinstance(meta, Skipped) and file_name != path:
            # Name the file the user gave, not our anonymised copy of it.
            meta = Skipped(str(path), meta.problem)
            file_name.unlink(missing_ok=True)
        add_probed(builder, path, meta, label, body_part, patients[i], file_name=file_name)
    return finish(builder, root)


def _is_dicom(path: Path) -> bool:
    try:
        return sniff_format(path) == "dicom" or path.suffix.lower() in (".dcm", ".dicom")
    except (BadInputError, OSError):
        return False  # the decode-check names the file and the problem


def _anonymise_all(
    entries: list[tuple[Path, int, str]],
    dicom: list[int],
    out: Path,
    builder: DatasetBuilder,
    progress: bool,
):
    """Yield ``(entry index, (anonymised copy, pseudonym))``; failures go to ``builder.skipped``."""
    # Imported here: only trees holding DICOM need the anonymiser (and pydicom behind it).
    from limbscan.io.anonymize import Anonymizer

    anonymizer = Anonymizer()
    for i in track(dicom, description="Anonymising DICOM", disable=not progress or not dicom,
                   console=Console(stderr=True), transient=True):
        src = entries[i][0]
        dst = out / IMAGES_DIR / f"img{i:06d}.dcm"
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            pseudonym = anonymizer.anonymize_file(src, dst)
        except BadInputError as err:
            dst.unlink(missing_ok=True)
            # The anonymiser may name its output; the user knows the file by its input path.
            builder.skipped.append(Skipped(str(src), err.problem))
            continue
        yield i, (dst, pseudonym)
