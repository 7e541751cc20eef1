"""``limbscan train``: the registered scenarios trained in order, each as a stage of the one engine.

Each stage (:func:`limbscan.train.stages.make_stage`) validates through its scenario's own
scoring, so ``best.pt`` is picked on the numbers ``evaluate`` and ``predict`` give. At the end,
``val_scores.json`` holds every scenario's validation scores (where thresholds are chosen) and
``train.json`` / ``report.md`` say what was trained, on which datasets. Pixel statistics,
validation and thresholds are the main dataset's; auxiliary data (``data.auxiliary``) only trains.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from limbscan.config import Config, check_config, stage_config
from limbscan.data.cache import build_cache
from limbscan.data.dataset import Dataset
from limbscan.data.datasets import pixel_stats
from limbscan.errors import LimbscanError
from limbscan.rundir import RunDir
from limbscan.scenarios import names as scenario_names_in_order
from limbscan.scenarios import parse_scenarios
from limbscan.scenarios.scoring import validation_scores
from limbscan.train.checkpoint import seed_everything
from limbscan.train.engine import FitResult, fit
from limbscan.train.report import write_training_report
from limbscan.train.stages import make_stage
from limbscan.train.stages.base import AUXILIARY, RunData, TrainSource
from limbscan.utils.distributed import DistInfo, init_distributed, shutdown_distributed
from limbscan.utils.files import write_json_atomic


def scenario_names(scenario: str) -> list[str]:
    """``all`` -> every registered scenario, in the order they must train (cascade after detector)."""
    return parse_scenarios(scenario)


def prepare(ds: Dataset, cfg: Config, auxiliary: Sequence[Dataset] | None = None) -> RunData:
    """Check the config's values and that the dataset is split; compute the training split's pixel statistics.

    ``auxiliary``: the datasets of ``cfg.data.auxiliary`` as :func:`load_auxiliary` gives them
    (default: loaded here); each one's every image is a training image.
    """
    check_config(cfg)  # a Config changed in Python is checked like a loaded one, before any training
    train_images, val_images = ds.split_images("train"), ds.split_images("val")
    for split, images in (("train", train_images), ("val", val_images)):
        if not images:
            raise LimbscanError(f"{ds.root}: no {split} images; split the dataset first (`limbscan data split`)")
    if len({int(im["label"]) for im in train_images}) < 2:
        raise LimbscanError(f"{ds.root}: the train split has only one class; nothing to learn")
    if auxiliary is None:
        auxiliary = load_auxiliary(cfg, ds)
    for aux in auxiliary:
        if not aux.images:
            raise LimbscanError(f"data.auxiliary: {aux.root}: no image left to train on")
    # The main training split's statistics, whatever joins it: the models normalise inference
    # images with them, and inference sees main-dataset images.
    mean, std = pixel_stats(ds, train_images, cfg.data.cache.longest_side)
    sources = [TrainSource(aux, list(aux.images), AUXILIARY) for aux in auxiliary]
    return RunData(ds, cfg, train_images, val_images, mean, max(std, 1e-3), sources)


def load_auxiliary(cfg: Config, main: Dataset) -> list[Dataset]:
    """The datasets of ``cfg.data.auxiliary``, refused with a one-line error naming the folder when
    one is missing, is the main dataset, is listed twice, or holds an image file of the main
    dataset (whose validation and test images must never be trained on)."""
    if not cfg.data.auxiliary:
        return []
    seen = {main.root.resolve(): f"the main dataset ({main.root})"}
    main_files = {main.image_path(im).resolve() for im in main.images}
    found = []
    for given in cfg.data.auxiliary:
        path = Path(given)
        if not path.exists():
            raise LimbscanError(f"data.auxiliary: {given}: no such dataset folder")
        try:
            aux = Dataset.load(path)
        except LimbscanError as err:
            raise LimbscanError(f"data.auxiliary: {err}") from err
        root = aux.root.resolve()
        if root in seen:
            raise LimbscanError(f"data.auxiliary: {given} is {seen[root]}; a dataset joins training once")
        seen[root] = f"listed already as {given}"
        shared = [im for im in aux.images if aux.image_path(im).resolve() in main_files]
        if shared:
            raise LimbscanError(
                f"data.auxiliary: {given} holds {len(shared)} image file(s) of the main dataset {main.root} "
                f"(first: {aux.image_path(shared[0])}); import it without them "
                "(FracAtlas: `limbscan data import fracatlas ROOT -o DS --exclude-parts leg,hip`)"
            )
        found.append(aux)
    return found


def cached_dataset(ds: Dataset, cfg: Config, info: DistInfo, progress: bool = True) -> Dataset:
    """Decode every image into the cache before training (rank 0; the others then find it
    built), and leave out the images that cannot be decoded, each named once on stderr."""
    if info.distributed and not info.is_main:
        dist.barrier()
    side, workers = cfg.data.cache.longest_side, cfg.data.cache.workers
    report = build_cache(ds, longest_side=side, workers=workers, progress=progress and info.is_main)
    if info.distributed and info.is_main:
        dist.barrier()
    if not report.skipped:
        return ds
    bad = {s.path for s in report.skipped}
    if info.is_main:
        for item in report.skipped:
            print(f"skipped: {item}", file=sys.stderr)
    ds.coco["images"] = [im for im in ds.images if str(ds.image_path(im)) not in bad]
    ds.reindex()
    return ds


def write_val_scores(out: Path, run: RunData, training_data: list[dict] | None = None) -> Path:
    path = RunDir(out).val_scores
    train_images = [im for source in run.train_sources for im in source.images]
    write_json_atomic(path, validation_scores(out, run.ds, run.val_images, train_images,
                                              training_data or run.training_data()))
    return path


def train(
    ds_path: str | Path | Dataset, cfg: Config, out: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, FitResult]:
    """Train the scenario(s) of ``cfg.train.scenario`` on the dataset at ``ds_path``; results by scenario.

    ``ds_path`` may be a loaded :class:`~limbscan.data.dataset.Dataset` carrying the splits to use
    (a cross-validation fold's view). ``out`` (:class:`~limbscan.rundir.RunDir`) gets a folder per
    stage, ``metrics.jsonl``, ``train.json``, ``val_scores.json`` and ``report.md``. A scenario that
    needs another reuses that one's best checkpoint, from this call or an earlier run into ``out``.
    """
    folder = RunDir(out)
    out = folder.root
    names = scenario_names(cfg.train.scenario)
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed()
    try:
        main = ds_path if isinstance(ds_path, Dataset) else Dataset.load(ds_path)
        auxiliary = load_auxiliary(cfg, main)  # refused before any image is decoded
        run = prepare(
            cached_dataset(main, cfg, info, progress), cfg,
            [cached_dataset(aux, cfg, info, progress) for aux in auxiliary],
        )
        results: dict[str, FitResult] = {}
        for name in names:
            # Each stage starts from the same seed, so it builds the same initial model whether or
            # not the stages before it ran in this process (a resumed run may skip them).
            seed_everything(cfg.train.seed)
            # The scenario's own overrides (`stages:` in the config) apply to its stage alone.
            stage_cfg = stage_config(cfg, name)
            stage = make_stage(name, replace(run, cfg=stage_cfg), folder, resume, progress)
            results[name] = fit(stage, out, stage_cfg, resume=resume, progress=progress)
            del stage
        if info.is_main:
            # Stages trained into this folder by earlier calls (e.g. the detector before a
            # `--scenario cascade` run) stay listed beside the ones trained now.
            summary = json.loads(folder.summary.read_text()) if folder.summary.is_file() else {}
            scenarios = summary.get("scenarios", {})
            scenarios.update({
                name: {"epochs": r.epochs, "best_epoch": r.best_epoch, "best_val_auc": r.best_auc,
                       "checkpoint": folder.best(name).relative_to(out).as_posix()}
                for name, r in results.items()
            })
            training_data = run.training_data()
            write_json_atomic(folder.summary, {
                "scenarios": {name: scenarios[name] for name in scenario_names_in_order() if name in scenarios},
                "pixel_mean": run.pixel_mean,
                "pixel_std": run.pixel_std,
                "train_images": len(run.train_images),  # the main dataset's
                "val_images": len(run.val_images),
                "auxiliary_share": cfg.data.auxiliary_share if run.auxiliary else None,
                "training_data": training_data,
            })
            write_val_scores(out, run, training_data)
            write_training_report(out, run.ds, cfg)
        return results
    finally:
        if owns_group:
            shutdown_distributed()


__all__ = [
    "cached_dataset",
    "load_auxiliary",
    "prepare",
    "scenario_names",
    "train",
    "write_val_scores",
]
