"""MURA / LERA-style trees, labels and parts read from the path; no boxes.

``MURA-v1.1/train/XR_KNEE/patient00001/study1_positive/image1.png``: the study folder's suffix
gives the label, the part folder (``XR_KNEE`` or a bare ``knee``) the body part, ``patientNNNNN``
the patient, kept as ``mura:patientNNNNN`` (the dataset's public ids, prefixed by source so they
never collide with another import's, and one patient's parts stay together in a split).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from limbscan.data.dataset import DatasetBuilder
from limbscan.data.importers.common import Found, ImportResult, import_found, list_files, require_dir
from limbscan.errors import LimbscanError, Skipped
from limbscan.io.bodypart import normalize_body_part

PATIENT_PREFIX = "mura:"
_STUDY = re.compile(r"^study\w*?_(positive|negative)$", re.IGNORECASE)
_PATIENT = re.compile(r"^patient\w+$", re.IGNORECASE)
_PART = re.compile(r"^XR_([A-Z]+)$", re.IGNORECASE)
# Where MURA's own csv files and the like sit: not images, and not worth a line each.
_NOT_IMAGES = {".csv", ".txt", ".md", ".json"}


def import_mura(root: Path, out: Path, progress: bool = True, lower_limb_only: bool = True) -> ImportResult:
    """Import a MURA/LERA-style tree at ``root`` into the dataset folder ``out``."""
    root = require_dir(Path(root), "MURA root")
    builder = DatasetBuilder(Path(out), source="mura")

    entries: list[Found] = []
    left_out: Counter[str] = Counter()  # upper-limb parts: one summary line each, not one per file
    for path in list_files(root):
        if path.suffix.lower() in _NOT_IMAGES:
            continue
        parts = path.relative_to(root).parts[:-1]
        label = _label(parts)
        if label is None:
            builder.skip(path, "no study folder ending in _positive or _negative above it")
            continue
        raw_part, body_part = _body_part(parts)
        if body_part is None and raw_part is not None:
            if lower_limb_only:
                left_out[raw_part] += 1
                continue
            body_part = raw_part  # outside LOWER_LIMB_PARTS, kept by request
        patient = next((p for p in parts if _PATIENT.match(p)), None)
        entries.append(Found(path, label, body_part, PATIENT_PREFIX + patient if patient else None, _study(parts)))

    for raw_part, n in sorted(left_out.items()):
        builder.warnings.append(Skipped(str(root), f"{n} {raw_part} image(s) left out: not lower limb"))
    if not entries:
        upper = sum(left_out.values())
        hint = f" ({upper} upper-limb image(s) left out; pass lower_limb_only=False to keep them)" if upper else ""
        raise LimbscanError(f"{root}: no usable images{hint}")
    return import_found(builder, entries, Path(out), root, progress)


def _study(parts: tuple[str, ...]) -> str | None:
    """The study: the folders down to its ``studyN_positive`` one (part / patient / study, since one
    patient's studies of two parts may both be ``study1``)."""
    for i in range(len(parts) - 1, -1, -1):
        if _STUDY.match(parts[i]):
            return "/".join(parts[: i + 1])
    return None


def _label(parts: tuple[str, ...]) -> int | None:
    for part in reversed(parts):
        match = _STUDY.match(part)
        if match:
            return 1 if match.group(1).lower() == "positive" else 0
    return None


def _body_part(parts: tuple[str, ...]) -> tuple[str | None, str | None]:
    """``(raw part name, lower-limb body part)``; the first is None when no folder names a part."""
    for part in parts:
        match = _PART.match(part)
        if match:
            raw = match.group(1).lower()
            return raw, normalize_body_part(raw)
    for part in parts:  # LERA-style trees name the part without the XR_ prefix
        body_part = normalize_body_part(part)
        if body_part is not None:
            return part.lower(), body_part
    return None, None
