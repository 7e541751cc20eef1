"""What every importer shares: the result type, the parallel decode-check, and the final save."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import track

from limbscan.data.dataset import Dataset, DatasetBuilder
from limbscan.errors import BadInputError, LimbscanError, Skipped
from limbscan.io import read_image, sniff_format
from limbscan.io.meta import ImageMeta

# Below this many files a process pool costs more to start than it saves.
SERIAL_BELOW = 16
# Where importers put the anonymised copies of DICOM inputs, inside the dataset folder.
IMAGES_DIR = "images"


@dataclass
class ImportResult:
    """The saved dataset, the entries left out, and the ones kept with a caveat."""

    dataset: Dataset
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[Skipped] = field(default_factory=list)


def probe_one(path: str | Path) -> ImageMeta | Skipped:
    """Decode one file fully (so a broken one is found now, not mid-training); keep only its meta.

    Returns rather than raises so a pool can carry on past bad files.
    """
    path = Path(path)
    if not path.is_file():
        return Skipped(str(path), "file not found")
    try:
        _, meta = read_image(path)
    except BadInputError as err:
        return Skipped.from_error(err)
    except Exception as err:  # noqa: BLE001 - a decoder bug on one file must not end the batch
        return Skipped(str(path), f"cannot be decoded ({type(err).__name__}: {err})")
    if meta.width <= 0 or meta.height <= 0:
        return Skipped(str(path), f"image is {meta.width}x{meta.height}: no pixels")
    return meta


def probe_images(
    paths: Sequence[Path],
    progress: bool = True,
    description: str = "Reading images",
    workers: int | None = None,
) -> list[ImageMeta | Skipped]:
    """``probe_one`` over ``paths`` in a process pool, results in input order (stable image ids)."""
    workers = workers or len(os.sched_getaffinity(0))
    results: Iterable[ImageMeta | Skipped]
    if len(paths) < SERIAL_BELOW or workers <= 1:
        results = map(probe_one, paths)
        return list(_track(results, len(paths), description, progress))
    # Several chunks per worker keep both cores busy to the end without per-file IPC cost.
    chunksize = max(1, len(paths) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(probe_one, paths, chunksize=chunksize)
        return list(_track(results, len(paths), description, progress))


def _track(items: Iterable[Any], total: int, description: str, progress: bool) -> Iterator[Any]:
    # stderr, so `--json` output on stdout stays clean.
    return iter(
        track(items, total=total, description=description, disable=not progress,
              console=Console(stderr=True), transient=True)
    )


@dataclass(frozen=True)
class Source:
    """One input made ready for the dataset: the file to reference, its probe, its pseudonym."""

    path: Path  # what the user gave (named in messages)
    file_name: Path  # what the dataset points at: the input, or its anonymised copy
    probed: ImageMeta | Skipped
    pseudonym: str | None  # the DICOM patient's pseudonym; None for PNG / JPEG

    @property
    def study(self) -> str | None:
        """The anonymised copy's StudyInstanceUID (consistent across one import); None for PNG / JPEG."""
        if self.pseudonym is None:
            return None
        from limbscan.io.dicom import study_uid

        return study_uid(self.file_name)


def probe_sources(
    paths: Sequence[Path], out: Path, builder: DatasetBuilder, progress: bool = True
) -> list[Source | None]:
    """Anonymise every DICOM input into ``out/images/`` (PS3.15 basic profile), then decode-check
    all inputs. ``None`` marks an input the anonymiser already listed in ``builder.skipped``.

    Every importer goes through here, so no dataset ever points at a file holding patient data,
    and no copy's name carries anything from the input path (folder names are often patient names).
    """
    anonymised = dict(_anonymise_all(paths, out, builder, progress))
    readable = [anonymised[i][0] if i in anonymised else path for i, path in enumerate(paths)]
    probed = probe_images(readable, progress, "Reading images")
    sources: list[Source | None] = []
    for i, (path, file_name, meta) in enumerate(zip(paths, readable, probed, strict=True)):
        if i in anonymised:
            if isinstance(meta, Skipped):
                # Name the file the user gave, not our anonymised copy of it.
                meta = Skipped(str(path), meta.problem)
                file_name.unlink(missing_ok=True)
            sources.append(Source(path, file_name, meta, anonymised[i][1]))
        elif _is_dicom(path):
            sources.append(None)
        else:
            sources.append(Source(path, path, meta, None))
    return sources


def _is_dicom(path: Path) -> bool:
    try:
        return sniff_format(path) == "dicom" or path.suffix.lower() in (".dcm", ".dicom")
    except (BadInputError, OSError):
        return False  # the decode-check names the file and the problem


def _anonymise_all(
    paths: Sequence[Path], out: Path, builder: DatasetBuilder, progress: bool
) -> Iterator[tuple[int, tuple[Path, str | None]]]:
    """Yield ``(input index, (anonymised copy, pseudonym))``; failures go to ``builder.skipped``."""
    dicom = [i for i, path in enumerate(paths) if _is_dicom(path)]
    if not dicom:
        return
    # Imported here: only inputs holding DICOM need the anonymiser (and pydicom behind it).
    from limbscan.io.anonymize import Anonymizer

    anonymizer = Anonymizer()  # one per import: pseudonyms and UIDs consistent across its files
    for i in _track(dicom, len(dicom), "Anonymising DICOM", progress):
        src = paths[i]
        dst = Path(out) / IMAGES_DIR / f"img{i:06d}.dcm"
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            pseudonym = anonymizer.anonymize_file(src, dst)
        except BadInputError as err:
            dst.unlink(missing_ok=True)
            # The anonymiser may name its output; the user knows the file by its input path.
            builder.skipped.append(Skipped(str(src), err.problem))
            continue
        yield i, (dst, pseudonym)


def list_files(folder: Path) -> list[Path]:
    """Every regular file below ``folder``, sorted; hidden files (.DS_Store and the like) ignored."""
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def add_probed(
    builder: DatasetBuilder,
    path: Path,
    probed: ImageMeta | Skipped,
    label: int,
    body_part: str | None,
    patient_id: str | None = None,
    attributes: dict[str, Any] | None = None,
    file_name: Path | None = None,
    study: str | None = None,
) -> int | None:
    """Add an image whose probe succeeded; otherwise list it as skipped. Returns its id or None."""
    if isinstance(probed, Skipped):
        builder.skipped.append(probed)
        return None
    try:
        return builder.add_image(file_name or path, probed, label, body_part, patient_id, attributes, study=study)
    except BadInputError as err:
        builder.skipped.append(Skipped.from_error(err))
        return None


@dataclass(frozen=True)
class Found:
    """One image file an importer found, and what the input's layout says of it."""

    path: Path
    label: int
    body_part: str | None
    patient_id: str | None = None  # a DICOM's own (pseudonymised) patient wins
    study: str | None = None  # likewise its StudyInstanceUID


def add_source(builder: DatasetBuilder, src: Source, found: Found, attributes: dict[str, Any] | None = None,
               probed: ImageMeta | Skipped | None = None) -> int | None:
    """:func:`add_probed` for a ``found`` file once probed (``src``): the dataset points at the
    source's file (the anonymised copy of a DICOM), whose own pseudonym and study win over the
    layout's. ``probed`` replaces ``src.probed`` (a reworded skip)."""
    return add_probed(builder, src.path, src.probed if probed is None else probed, found.label, found.body_part,
                      src.pseudonym or found.patient_id, attributes, file_name=src.file_name,
                      study=src.study or found.study)


def import_found(builder: DatasetBuilder, found: Sequence[Found], out: Path, what: str | Path,
                 progress: bool = True) -> ImportResult:
    """Anonymise and decode-check the ``found`` files (:func:`probe_sources`), add each that passes
    (:func:`add_source`) and save the dataset (:func:`finish`; ``what`` names the input)."""
    sources = probe_sources([f.path for f in found], Path(out), builder, progress)
    for f, src in zip(found, sources, strict=True):
        if src is not None:
            add_source(builder, src, f)
    return finish(builder, what)


def finish(builder: DatasetBuilder, what: str | Path, info: dict[str, Any] | None = None) -> ImportResult:
    """Save ``dataset.json``, or raise when nothing usable is left (the CLI exits non-zero)."""
    if not builder.images:
        reason = f"; first skipped: {builder.skipped[0]}" if builder.skipped else ""
        raise LimbscanError(
            f"{what}: nothing usable to import ({len(builder.skipped)} entries skipped{reason})"
        )
    dataset = builder.build()
    dataset.info.update(info or {})
    dataset.save()
    return ImportResult(dataset, list(builder.skipped), list(builder.warnings))


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise LimbscanError(f"{path}: {what} is not a folder")
    return path


def lesion_geometry(ann: dict) -> tuple[Any, list[list[float]] | None, str | None]:
    """The box and polygons of a COCO annotation, and why polygons were dropped (or None).

    A box missing from the annotation is taken from its polygons. RLE masks and malformed
    polygons are dropped (the box still counts) and the reason returned for a warning.
    """
    segmentation = ann.get("segmentation")
    polygons: list[list[float]] | None = None
    problem = None
    if isinstance(segmentation, list) and segmentation:
        try:
            polygons = [[float(v) for v in poly] for poly in segmentation]
        except (TypeError, ValueError):
            polygons, problem = None, "segmentation is not a list of polygons; kept the box only"
        else:
            if any(len(poly) < 6 or len(poly) % 2 for poly in polygons):
                polygons, problem = None, "a polygon has fewer than 3 points or an odd length; kept the box only"
    elif segmentation:
        problem = "segmentation is not in polygon form (RLE?); kept the box only"
    bbox = ann.get("bbox")
    if bbox is None and polygons:
        xs = [v for poly in polygons for v in poly[0::2]]
        ys = [v for poly in polygons for v in poly[1::2]]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return bbox, polygons, problem


def add_coco_lesions(builder: DatasetBuilder, image_id: int, anns: list[dict], where: str | Path) -> None:
    """Add COCO annotations as lesions of one image; each problem is listed, none is fatal."""
    for ann in anns:
        ann_where = f"{where} (annotation {ann.get('id')})"
        bbox, polygons, problem = lesion_geometry(ann)
        if problem:
            builder.warnings.append(Skipped(ann_where, problem))
        builder.add_lesion(image_id, bbox, polygons, where=ann_where)
