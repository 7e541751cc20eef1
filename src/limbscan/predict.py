"""Batch prediction: score files, folders and glob patterns with a bundle, write a triage worklist.

``run_predict`` writes into OUT:

- ``predictions.jsonl``: one :meth:`Prediction.to_json` per scored image, in input order, with
  ``file``, ``overlay`` (where one was drawn), ``dicom`` (DICOM outputs) and ``warnings``;
- ``worklist.csv``: the scored images, most likely abnormal first (what a reader works down),
  each with its level: "likely", "suspected" or "normal" (:mod:`limbscan.operating_points`);
- ``overlays/<n>.png``: ``n`` is the image's place in the sorted input list, never its file
  name, which may carry a patient's name or id;
- ``errors.jsonl``: every file that could not be scored, and why (a batch never stops for one);
- ``summary.json``: counts, time and the bundle's metadata;
- ``dicom/``: Secondary Capture / Structured Report for DICOM inputs with ``dicom_out``.

Under ``torchrun`` (``WORLD_SIZE`` > 1) rank 0 lists the inputs, each rank scores its shard
into ``OUT/.parts/rank<r>.*``, and rank 0 merges the parts into the very files one process
writes. One process takes the same path with one part, so both write the same outputs.
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

import numpy as np
import torch.distributed as dist

from limbscan.data.torchdata import shard
from limbscan.errors import BadInputError, LimbscanError
from limbscan.io import read_image, sniff_format
from limbscan.operating_points import SUSPECTED
from limbscan.overlay import render_overlay, save_png
from limbscan.scenarios import classifier_scenarios
from limbscan.utils.distributed import DistInfo, init_distributed, shutdown_distributed
from limbscan.utils.files import atomic_file, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    from limbscan.inference import Model, Prediction

PREDICTIONS = "predictions.jsonl"
WORKLIST = "worklist.csv"
ERRORS = "errors.jsonl"
SUMMARY = "summary.json"
OVERLAY_DIR = "overlays"
DICOM_DIR = "dicom"
PARTS_DIR = ".parts"
DICOM_KINDS = ("sc", "sr")
# New columns go at the end: scripts read the older ones by position.
WORKLIST_COLUMNS = ("rank", "file", "body_part", "probability", "label", "scenario", "n_detections", "overlay",
                    "level")
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
def _read(path: str) -> tuple[np.ndarray, Any] | dict:
    try:
        return read_image(path)
    except BadInputError as err:
        return {"file": path, "error": err.problem}
    except Exception as err:  # noqa: BLE001 - one odd file must not end a batch
        # Only the type: a decoder's message could quote a header value with patient data.
        return {"file": path, "error": f"could not decode the image ({type(err).__name__})"}


def _predict(model: Model, arrays: list[np.ndarray], scenario: str, batch_size: int) -> list[Prediction | Exception]:
    """Predictions for a batch; when the batch fails, image by image, so one image fails alone."""
    try:
        return list(model.predict(arrays, scenario=scenario, batch_size=batch_size, masks=True))
    except Exception:  # noqa: BLE001 - retried one by one below, each failure reported
        if len(arrays) == 1:
            raise
    out: list[Prediction | Exception] = []
    for array in arrays:
        try:
            out.extend(model.predict([array], scenario=scenario, batch_size=1, masks=True))
        except Exception as err:  # noqa: BLE001
            out.append(err)
    return out


def _score_error(path: str, err: Exception) -> dict:
    if isinstance(err, BadInputError):  # named "<array>" by the model, which only saw pixels
        return {"file": path, "error": err.problem}
    # The model only ever saw pixels, so its messages cannot quote a header.
    return {"file": path, "error": f"could not score the image ({type(err).__name__}: {err})"}


def _overlay_name(index: int) -> str:
    return f"{OVERLAY_DIR}/{index + 1:06d}.png"


@dataclass
class _Options:
    scenario: str
    batch_size: int
    overlays: bool
    gradcam: bool
    dicom_out: tuple[str, ...]
    reason: str | None = None


def _finish(model: Model, path: str, index: int, pixels: np.ndarray, meta: Any, pred: Prediction,
            out: Path, opts: _Options) -> dict:
    """One scored image: its overlay and DICOM outputs written, its JSON record returned."""
    pred.file = path
    if pred.body_part is None:
        pred.body_part = meta.body_part
    record = pred.to_json()
    record["file"] = path
    warnings = list(meta.warnings)
    want_dicom = bool(opts.dicom_out) and meta.format == "dicom"
    if opts.overlays or want_dicom:
        heat = None
        if opts.gradcam:
            from limbscan.explain import gradcam

            try:
                heat = gradcam(model, pixels, pred)
            except Exception as err:  # noqa: BLE001 - the overlay is still worth drawing without it
                warnings.append(f"Grad-CAM failed ({type(err).__name__})")
        rgb = render_overlay(pixels, pred, heat)
        if opts.overlays:
            save_png(rgb, out / _overlay_name(index))
            record["overlay"] = _overlay_name(index)
        if want_dicom:
            from limbscan.io.dicom_out import dicom_outputs  # pulls highdicom in only when asked

            try:
                written = dicom_outputs(Path(path), record, rgb, model.manifest, out / DICOM_DIR, opts.dicom_out)
                record["dicom"] = [str(Path(p).relative_to(out)) if Path(p).is_relative_to(out) else str(p)
                                   for p in written]
            except BadInputError as err:
                warnings.append(f"DICOM output failed: {err.problem}")
            except Exception as err:  # noqa: BLE001 - only the type: a message could quote the header
                warnings.append(f"DICOM output failed ({type(err).__name__})")
    if warnings:
        record["warnings"] = warnings
    return record


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _score_shard(model: Model, files: list[str], mine: list[int], out: Path, opts: _Options, progress: bool,
                 records: io.TextIOBase, errors: io.TextIOBase) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    # Transient: once done, the command's summary table says what the bar said.
    with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=True) as bar:
        task = bar.add_task("predict", total=len(mine))
        for chunk in _batches(mine, opts.batch_size):
            loaded = []
            for index in chunk:
                read = _read(files[index])
                if isinstance(read, dict):
                    errors.write(json.dumps({"index": index, **read}) + "\n")
                else:
                    loaded.append((index, *read))
            preds = _predict(model, [pixels for _, pixels, _ in loaded], opts.scenario, opts.batch_size) if loaded else []
            for (index, pixels, meta), pred in zip(loaded, preds, strict=True):
                path = files[index]
                if isinstance(pred, Exception):
                    errors.write(json.dumps({"index": index, **_score_error(path, pred)}) + "\n")
                    continue
                try:
                    record = _finish(model, path, index, pixels, meta, pred, out, opts)
                except (OSError, LimbscanError):
                    raise  # a full disk or a broken bundle fails every image alike: stop
                except Exception as err:  # noqa: BLE001
                    errors.write(json.dumps({"index": index, **_score_error(path, err)}) + "\n")
                    continue
                records.write(json.dumps({"index": index, **record}) + "\n")
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


def worklist_csv(records: list[dict]) -> str:
    """worklist.csv's text for records of :meth:`Prediction.to_json` shape, each with an ``index``."""
    # Most likely abnormal first; ties keep input order, so the list is the same however sharded.
    ranked = sorted(records, key=lambda r: (-float(r["probability"]), r["index"]))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(WORKLIST_COLUMNS)
    for rank, r in enumerate(ranked, 1):
        writer.writerow([rank, r["file"], r.get("body_part") or "", f"{float(r['probability']):.6f}", r["label"],
                         r["scenario"], len(r.get("detections") or []), r.get("overlay", ""), r["level"]])
    return buf.getvalue()


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _bundle_meta(model: Model) -> dict:
    meta = {k: v for k, v in model.manifest.items() if k != "files"}  # per-file hashes say nothing to a reader
    return {"path": str(model.path), **meta}


def _merge(out: Path, world_size: int, found_errors: list[dict], model: Model, opts: _Options,
           n_inputs: int, started: float) -> PredictSummary:
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
    write_text_atomic(out / ERRORS, _jsonl([{"file": e["file"], "error": e["error"]} for e in errors]))
    _drop_stale_overlays(out, {r["overlay"] for r in records if "overlay" in r})
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)

    seconds = time.perf_counter() - started
    n_abnormal = sum(r["label"] == "abnormal" for r in records)
    likely, suspected = model.thresholds(opts.scenario)
    summary = PredictSummary(out, opts.scenario, likely, n_inputs, len(records), n_abnormal, len(errors),
                             round(seconds, 3), suspected, sum(r["level"] == SUSPECTED for r in records), opts.reason)
    by_part: dict[str, dict[str, int]] = {}
    for r in records:
        entry = by_part.setdefault(r.get("body_part") or "unknown", {"n": 0, "n_abnormal": 0, "n_suspected": 0})
        entry["n"] += 1
        entry["n_abnormal"] += r["label"] == "abnormal"
        entry["n_suspected"] += r["level"] == SUSPECTED
    write_json_atomic(out / SUMMARY, {
        **summary.to_json(),
        "n_normal": len(records) - n_abnormal,  # label "normal": the suspected ones included
        "n_warnings": sum(bool(r.get("warnings")) for r in records),
        "images_per_second": round(len(records) / seconds, 3) if seconds > 0 else None,
        "by_body_part": dict(sorted(by_part.items())),
        "options": {"batch_size": opts.batch_size, "overlays": opts.overlays, "gradcam": opts.gradcam,
                    "dicom_out": list(opts.dicom_out), "world_size": world_size},
        "outputs": {"predictions": PREDICTIONS, "worklist": WORKLIST, "errors": ERRORS,
                    "overlays": OVERLAY_DIR if opts.overlays else None,
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
def _options(model: Model, scenario: str | None, batch_size: int, overlays: bool, gradcam: bool,
             dicom_out: Sequence[str]) -> _Options:
    name = scenario or model.default_scenario
    if name not in model.scenarios:
        raise LimbscanError(f"{model.path}: no scenario {name!r} in this bundle (it has {', '.join(model.scenarios)})")
    if batch_size < 1:
        raise LimbscanError(f"batch size must be at least 1, got {batch_size}")
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in dicom_out if k.strip()))
    unknown = [k for k in kinds if k not in DICOM_KINDS]
    if unknown:
        raise LimbscanError(f"--dicom-out {','.join(unknown)}: use {' and / or '.join(DICOM_KINDS)}")
    if gradcam and not overlays:
        raise LimbscanError("Grad-CAM is drawn on the overlays: drop --no-overlays or --gradcam")
    if gradcam and name not in classifier_scenarios():
        raise LimbscanError(f"Grad-CAM needs a classifier: scenario {name!r} has none (use --scenario "
                            f"{' or '.join(classifier_scenarios())} where the bundle has them)")
    if scenario is None:
        reason = model.default_reason or f"{name}: the bundle's default"
    else:
        reason = f"{name}: asked for (the bundle's default is {model.default_scenario})"
    return _Options(name, int(batch_size), bool(overlays), bool(gradcam), kinds, reason)


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
    bundle: Path | Model,
    inputs: Sequence[str],
    out: Path,
    *,
    scenario: str | None = None,
    batch_size: int = 1,
    overlays: bool = True,
    gradcam: bool = False,
    dicom_out: Sequence[str] = (),
    progress: bool = True,
) -> PredictSummary:
    """Score every image in ``inputs`` (files, folders, glob patterns) with ``bundle`` into ``out``.

    Bad files are listed in ``errors.jsonl`` and skipped; see the module docstring for the outputs.
    Under ``torchrun`` every rank calls this and gets the merged summary.
    """
    started = time.perf_counter()
    out = Path(out)
    if isinstance(bundle, (str, Path)):
        from limbscan.inference import load

        model = load(bundle)
    else:
        model = bundle
    opts = _options(model, scenario, batch_size, overlays, gradcam, dicom_out)
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed()
    try:
        out.mkdir(parents=True, exist_ok=True)
        files, found_errors = _list_inputs(inputs, out, info)
        if info.distributed:
            dist.barrier()  # rank 0 has cleared old parts before anyone writes new ones
        mine = _my_share(len(files), info)
        _write_parts(out, info.rank, lambda records, errors: _score_shard(
            model, files, mine, out, opts, progress and info.is_main, records, errors))
        if info.distributed:
            dist.barrier()
        if info.is_main:
            summary = _merge(out, info.world_size, found_errors, model, opts,
                             len(files) + len(found_errors), started)
        if info.distributed:
            dist.barrier()  # the merged files exist for every rank from here on
        return summary if info.is_main else _summary_from_file(out)
    finally:
        if owns_group:
            shutdown_distributed()


__all__ = ["PredictSummary", "collect_inputs", "run_predict", "worklist_csv"]
