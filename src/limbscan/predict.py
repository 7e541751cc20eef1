"""Batch prediction: score files, folders and glob patterns with a bundle, write a triage worklist.

``run_predict`` writes into OUT ``predictions.jsonl`` (one record per image, input order),
``worklist.csv`` (most likely abnormal first, then the out-of-scope images), ``studies.csv``,
``overlays/<n>.png`` (``n``: the image's place in the sorted inputs, never its file name),
``errors.jsonl``, ``summary.json`` and, with ``dicom_out``, ``dicom/`` (docs/deployment.md). Under
``torchrun`` each rank scores its shard into ``OUT/.parts/`` and rank 0 merges them into the very
files one process writes.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch.distributed as dist

from limbscan.analysis import AnalyseOptions, Analyser
from limbscan.data.samplers import shard
from limbscan.errors import BadInputError, LimbscanError
from limbscan.io import read_image, sniff_format
from limbscan.operating_points import SUSPECTED
from limbscan.utils.distributed import DistInfo, init_distributed, shutdown_distributed
from limbscan.utils.files import atomic_file, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from limbscan.inference import Model

PREDICTIONS = "predictions.jsonl"
WORKLIST = "worklist.csv"
STUDIES = "studies.csv"
ERRORS = "errors.jsonl"
SUMMARY = "summary.json"
OVERLAY_DIR = "overlays"
DICOM_DIR = "dicom"
PARTS_DIR = ".parts"
# New columns go at the end: scripts read the older ones by position.
WORKLIST_COLUMNS = ("rank", "file", "body_part", "probability", "label", "scenario", "n_detections", "overlay",
                    "level", "study", "not_analysed_because", "boxes_from")
STUDY_COLUMNS = ("rank", "study", "probability", "level", "n_images", "n_scored", "n_out_of_scope", "top_file",
                 "top_overlay", "files")
_OVERLAY_NAME = re.compile(r"^\d{6,}\.png$")
# A file named like this in a folder must hold an image: when it does not, errors.jsonl says so.
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")


@dataclass
class PredictSummary:
    out: Path
    scenario: str
    threshold: float
    n_inputs: int  # images found (scored + errors)
    n_scored: int
    n_abnormal: int  # at the bundle's balanced operating point: level "likely"
    n_errors: int
    seconds: float
    suspected_threshold: float | None = None  # the high-sensitivity point; None for a bundle without one
    n_suspected: int = 0  # at the high-sensitivity point only
    scenario_reason: str | None = None  # why this scenario: asked for, or why the bundle made it its default
    n_out_of_scope: int = 0  # read, but kept from scoring by the input gate (not in n_scored)
    n_studies: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out)}


# -- inputs --------------------------------------------------------------------------------
def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder)


def _walk(folder: Path, exclude: Path | None, errors: list[dict]) -> Iterator[str]:
    """Image files under ``folder`` (recursive), told by content; hidden entries and ``exclude`` skipped."""
    for root, dirs, files in os.walk(folder):
        # Hidden folders hold tool state (.git, our own .parts), not radiographs.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _inside(Path(root) / d, exclude))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if _keep(path, errors):
                yield str(path)


def _keep(path: Path, errors: list[dict]) -> bool:
    """Whether a file met in a folder or pattern is an image to score.

    Told by content; a file named like an image (``.dcm``, ``.png``, ``.jpg``...) whose content is
    not one (empty, random bytes, text) is listed in ``errors`` as a named file would be, so
    a broken export is heard of; other files (notes, reports) are passed over without a word.
    """
    try:
        if sniff_format(path) is not None:
            return True
    except BadInputError as err:  # unreadable: the user should hear of it, the rest goes on
        errors.append({"file": str(path), "error": err.problem})
        return False
    if path.suffix.lower() in IMAGE_SUFFIXES:
        try:
            read_image(path)  # not an image: raises at once with the reason (empty, not DICOM...)
        except BadInputError as err:
            errors.append({"file": str(path), "error": err.problem})
    return False


def collect_inputs(inputs: Sequence[str | Path], exclude: Path | None = None) -> tuple[list[str], list[dict]]:
    """Sorted, de-duplicated image files from files, folders and glob patterns, and the
    ``{"file", "error"}`` entries for files found unreadable on the way.

    Folders and patterns keep only files whose content is DICOM, PNG or JPEG; a file named
    explicitly is kept whatever it holds, so a wrong one is reported rather than ignored, and
    so is a file in a folder named like an image (``.dcm``, ``.png``, ``.jpg``) that holds none.
    ``exclude`` (the output folder) is never searched. A folder or pattern that yields neither
    an image nor such a listed file, or no input at all, is a :class:`LimbscanError`.
    """
    if not inputs:
        raise LimbscanError("no input given: name image files, folders or glob patterns")
    exclude = Path(exclude).resolve() if exclude is not None else None
    found: list[str] = []
    errors: list[dict] = []
    for item in map(str, inputs):
        n_errors = len(errors)
        if Path(item).is_dir():
            images = list(_walk(Path(item), exclude, errors))
            if not images and len(errors) == n_errors:  # files named like images but not: listed, not refused
                raise LimbscanError(f"{item}: no DICOM, PNG or JPEG file in this folder")
        elif glob.has_magic(item):
            images = []
            for match in sorted(glob.glob(item, recursive=True)):
                if _inside(Path(match), exclude):
                    continue
                if Path(match).is_dir():
                    images.extend(_walk(Path(match), exclude, errors))
                    continue
                if _keep(Path(match), errors):
                    images.append(match)
            if not images and len(errors) == n_errors:
                raise LimbscanError(f"{item}: no DICOM, PNG or JPEG file matches this pattern")
        else:
            images = [item]
        found.extend(images)
    unique: dict[str, str] = {}
    for path in sorted(found):  # the first spelling, in sorted order, stands for the file
        unique.setdefault(os.path.realpath(path), path)
    return sorted(unique.values()), errors


# -- scoring -------------------------------------------------------------------------------
def _overlay_name(index: int) -> str:
    return f"{OVERLAY_DIR}/{index + 1:06d}.png"


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _score_shard(analyser: Analyser, files: list[str], mine: list[int], out: Path, batch_size: int, progress: bool,
                 records: io.TextIOBase, errors: io.TextIOBase) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # Transient: once done, the command's summary table says what the bar said.
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task("predict", total=len(mine))
        for chunk in _batches(mine, batch_size):
            loaded = []
            for index in chunk:
                read = analyser.read(files[index])
                if isinstance(read, BadInputError):
                    errors.write(json.dumps({"index": index, "file": files[index], "error": read.problem}) + "\n")
                else:
                    loaded.append((index, read))
            results = analyser.analyse([read for _, read in loaded])
            for (index, _), result in zip(loaded, results, strict=True):
                if isinstance(result, BadInputError):
                    errors.write(json.dumps({"index": index, "file": files[index], "error": result.problem}) + "\n")
                    continue
                analyser.write(result, overlay=out / _overlay_name(index), overlay_ref=_overlay_name(index),
                               dicom_dir=out / DICOM_DIR,
                               dicom_ref=lambda p: str(p.relative_to(out)) if p.is_relative_to(out) else str(p))
                records.write(json.dumps({"index": index, **result.record}) + "\n")
            bar.advance(task, len(chunk))


# -- parts and merge -----------------------------------------------------------------------
def _part_paths(out: Path, rank: int) -> tuple[Path, Path]:
    parts = out / PARTS_DIR
    return parts / f"rank{rank}.jsonl", parts / f"rank{rank}.errors.jsonl"


def _write_parts(out: Path, rank: int, fill) -> None:
    """Each part appears whole or not at all, so the merge never reads half a rank."""
    records_path, errors_path = _part_paths(out, rank)
    with atomic_file(records_path) as records, atomic_file(errors_path) as errors:
        fill(records, errors)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise LimbscanError(f"{path}: a rank's part is missing (did it fail?)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _ranked(records: list[dict]) -> list[dict]:
    """Scored records most likely abnormal first (ties keep input order, so the list is the same
    however sharded), then the out-of-scope ones in input order."""
    scored = sorted((r for r in records if r.get("probability") is not None),
                    key=lambda r: (-float(r["probability"]), r["index"]))
    return scored + sorted((r for r in records if r.get("probability") is None), key=lambda r: r["index"])


def worklist_csv(records: list[dict]) -> str:
    """worklist.csv's text for records of :meth:`Prediction.to_json` shape, each with an ``index``:
    scored images ranked, then the images the gate kept out of scope, unranked, with its reason."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(WORKLIST_COLUMNS)
    for rank, r in enumerate(_ranked(records), 1):
        scored = r.get("probability") is not None
        writer.writerow([rank if scored else "", r["file"], r.get("body_part") or "",
                         f"{float(r['probability']):.6f}" if scored else "", r["label"], r["scenario"],
                         len(r.get("detections") or []), r.get("overlay", ""), r["level"], r.get("study") or "",
                         "" if scored else (r.get("scope") or {}).get("reason", ""), r.get("boxes_from") or ""])
    return buf.getvalue()


def study_rows(records: list[dict]) -> list[dict]:
    """One row per study, most likely abnormal first: its score is the highest probability of its
    in-scope images (the image that gives it leads its list); studies with none scored come last.
    A record without a study is a study of its own."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r.get("study") or f"image:{r['index']}", []).append(r)
    rows = []
    for key, members in groups.items():
        ranked = _ranked(members)
        top = ranked[0]
        scored = [m for m in members if m.get("probability") is not None]
        rows.append({"study": None if key.startswith("image:") else key, "index": top["index"],
                     "probability": top.get("probability") if scored else None,
                     "level": top["level"], "n_images": len(members), "n_scored": len(scored),
                     "n_out_of_scope": len(members) - len(scored), "top_file": top["file"],
                     "top_overlay": top.get("overlay"), "files": [m["file"] for m in ranked]})
    return _ranked(rows)


def studies_csv(records: list[dict]) -> str:
    """studies.csv's text: :func:`study_rows`, the files of each study joined by " | "."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(STUDY_COLUMNS)
    for rank, row in enumerate(study_rows(records), 1):
        scored = row["probability"] is not None
        writer.writerow([rank if scored else "", row["study"] or "", f"{row['probability']:.6f}" if scored else "",
                         row["level"], row["n_images"], row["n_scored"], row["n_out_of_scope"], row["top_file"],
                         row["top_overlay"] or "", " | ".join(str(f) for f in row["files"])])
    return buf.getvalue()


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _bundle_meta(model: Model) -> dict:
    meta = {k: v for k, v in model.manifest.items() if k != "files"}  # per-file hashes say nothing to a reader
    return {"path": str(model.path), **meta}


def _merge(out: Path, world_size: int, found_errors: list[dict], analyser: Analyser, batch_size: int,
           reason: str | None, n_inputs: int, started: float) -> PredictSummary:
    model, opts, scenario = analyser.model, analyser.options, analyser.scenario
    records: list[dict] = []
    errors = [{"index": -1, **e} for e in found_errors]  # found while listing: before any scored file
    for rank in range(world_size):
        rec_path, err_path = _part_paths(out, rank)
        records.extend(_read_jsonl(rec_path))
        errors.extend(_read_jsonl(err_path))
    records.sort(key=lambda r: r["index"])
    errors.sort(key=lambda e: e["index"])
    write_text_atomic(out / PREDICTIONS, _jsonl([{k: v for k, v in r.items() if k != "index"} for r in records]))
    write_text_atomic(out / WORKLIST, worklist_csv(records))
    write_text_atomic(out / STUDIES, studies_csv(records))
    write_text_atomic(out / ERRORS, _jsonl([{"file": e["file"], "error": e["error"]} for e in errors]))
    _drop_stale_overlays(out, {r["overlay"] for r in records if "overlay" in r})
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)

    seconds = time.perf_counter() - started
    scored = [r for r in records if r.get("probability") is not None]
    refused = [r for r in records if r.get("probability") is None]
    n_abnormal = sum(r["label"] == "abnormal" for r in scored)
    likely, suspected = model.thresholds(scenario)
    summary = PredictSummary(out, scenario, likely, n_inputs, len(scored), n_abnormal, len(errors),
                             round(seconds, 3), suspected, sum(r["level"] == SUSPECTED for r in scored), reason,
                             len(refused), len({r.get("study") or f"image:{r['index']}" for r in records}))
    by_part: dict[str, dict[str, int]] = {}
    for r in scored:
        entry = by_part.setdefault(r.get("body_part") or "unknown", {"n": 0, "n_abnormal": 0, "n_suspected": 0})
        entry["n"] += 1
        entry["n_abnormal"] += r["label"] == "abnormal"
        entry["n_suspected"] += r["level"] == SUSPECTED
    write_json_atomic(out / SUMMARY, {
        **summary.to_json(),
        "n_normal": len(scored) - n_abnormal,  # label "normal": the suspected ones included
        "n_warnings": sum(bool(r.get("warnings")) for r in records),
        "images_per_second": round(len(records) / seconds, 3) if seconds > 0 else None,
        "by_body_part": dict(sorted(by_part.items())),
        # The input gate: on (the bundle's pixel check and DICOM headers) or off; what it kept out.
        "gate": {"enabled": opts.gate, "pixel_check": model.gate is not None,
                 "out_of_scope": [{"file": r["file"], "reason": r["scope"]["reason"]} for r in refused]},
        "options": {"batch_size": batch_size, "overlays": opts.overlay, "gradcam": opts.gradcam,
                    "dicom_out": list(opts.dicom_out), "studies": opts.study_key, "world_size": world_size},
        "outputs": {"predictions": PREDICTIONS, "worklist": WORKLIST, "studies": STUDIES, "errors": ERRORS,
                    "overlays": OVERLAY_DIR if opts.overlay else None,
                    "dicom": DICOM_DIR if opts.dicom_out else None},
        "bundle": _bundle_meta(model),
    })
    return summary


def _drop_stale_overlays(out: Path, keep: set[str]) -> None:
    """Overlays of an earlier run into the same OUT, which this run's worklist does not list."""
    folder = out / OVERLAY_DIR
    if not folder.is_dir():
        return
    for item in folder.iterdir():
        if _OVERLAY_NAME.match(item.name) and f"{OVERLAY_DIR}/{item.name}" not in keep:
            item.unlink(missing_ok=True)


def _summary_from_file(out: Path) -> PredictSummary:
    saved = json.loads((out / SUMMARY).read_text())
    fields = PredictSummary.__dataclass_fields__
    return PredictSummary(**{**{k: saved[k] for k in fields}, "out": out})


# -- entry point ---------------------------------------------------------------------------
def _reason(model: Model, scenario: str | None) -> str:
    name = scenario or model.default_scenario
    if scenario is None:
        return model.default_reason or f"{name}: the bundle's default"
    return f"{name}: asked for (the bundle's default is {model.default_scenario})"


def _my_share(n: int, info: DistInfo) -> list[int]:
    # shard() pads every rank to the same count, which DDP training needs; inference does not,
    # and scoring a padded image twice would race two ranks on its overlay. The padding is
    # the tail of each rank's list.
    return shard(range(n), info.rank, info.world_size)[: len(range(info.rank, n, info.world_size))]


def _list_inputs(inputs: Sequence[str | Path], out: Path, info: DistInfo) -> tuple[list[str], list[dict]]:
    """Rank 0 lists the inputs and tells the others, so every rank shards the very same list."""
    payload: list[Any] = [None, None, None]
    if info.is_main:
        try:
            files, errors = collect_inputs(inputs, exclude=out)
            payload = [files, errors, None]
        except LimbscanError as err:
            payload = [None, None, str(err)]
        shutil.rmtree(out / PARTS_DIR, ignore_errors=True)  # an interrupted run's parts
    if info.distributed:
        dist.broadcast_object_list(payload, src=0)
    if payload[2] is not None:
        raise LimbscanError(payload[2])
    return payload[0], payload[1]


def run_predict(
    bundle: Path | Model | None,
    inputs: Sequence[str],
    out: Path,
    *,
    scenario: str | None = None,
    batch_size: int = 1,
    overlays: bool = True,
    gradcam: bool = False,
    dicom_out: Sequence[str] = (),
    progress: bool = True,
    gate: bool = True,
    studies: str = "file",
) -> PredictSummary:
    """Score every image in ``inputs`` (files, folders, glob patterns) with ``bundle`` (None: the
    shipped model) into ``out``.

    Bad files are listed in ``errors.jsonl`` and skipped; see the module docstring for the outputs.
    ``gate=False`` scores every image, in scope or not (research use). ``studies``: how files that
    are not DICOM form studies ("file": each its own; "folder": one per folder).
    Under ``torchrun`` every rank calls this and gets the merged summary.
    """
    started = time.perf_counter()
    out = Path(out)
    if bundle is None or isinstance(bundle, (str, Path)):
        from limbscan.inference import load

        model = load(bundle)
    else:
        model = bundle
    if batch_size < 1:
        raise LimbscanError(f"batch size must be at least 1, got {batch_size}")
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in dicom_out if k.strip()))
    analyser = Analyser(model, AnalyseOptions(scenario, gate, overlays, gradcam, kinds, studies))
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed()
    try:
        out.mkdir(parents=True, exist_ok=True)
        files, found_errors = _list_inputs(inputs, out, info)
        if info.distributed:
            dist.barrier()  # rank 0 has cleared old parts before anyone writes new ones
        mine = _my_share(len(files), info)
        _write_parts(out, info.rank, lambda records, errors: _score_shard(
            analyser, files, mine, out, batch_size, progress and info.is_main, records, errors))
        if info.distributed:
            dist.barrier()
        if info.is_main:
            summary = _merge(out, info.world_size, found_errors, analyser, batch_size, _reason(model, scenario),
                             len(files) + len(found_errors), started)
        if info.distributed:
            dist.barrier()  # the merged files exist for every rank from here on
        return summary if info.is_main else _summary_from_file(out)
    finally:
        if owns_group:
            shutdown_distributed()


__all__ = ["PredictSummary", "collect_inputs", "run_predict", "studies_csv", "study_rows", "worklist_csv"]
