"""``limbscan train``: the registered scenarios trained in order, each as a stage of the one engine.

Each scenario makes its own stage (``Scenario.make_stage``, see :mod:`limbscan.scenarios`) and
validates through its own scoring, so the validation AUC that picks ``best.pt`` is computed on
the numbers ``evaluate`` and ``predict`` give. When the stages are done, ``val_scores.json``
holds every trained scenario's validation scores from its best checkpoint (where the operating
thresholds are chosen) and ``train.json`` / ``report.md`` say what was trained.

Every model normalises with the training split's pixel mean and std; class imbalance is handled
by ``train.balance``: ``sampler`` (class-balanced draws, with replacement), ``loss`` (BCE
``pos_weight`` = negatives / positives; the detector has no such loss and samples plainly),
or ``none``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from limbscan.config import Config, check_config
from limbscan.data.cache import build_cache
from limbscan.data.dataset import Dataset
from limbscan.data.torchdata import pixel_stats
from limbscan.errors import LimbscanError
from limbscan.rundir import RunDir
from limbscan.scenarios import names as scenario_names_in_order
from limbscan.scenarios import parse_scenarios, scenario_class
from limbscan.scenarios.scoring import validation_scores
from limbscan.scenarios.stage import RunData
from limbscan.train.checkpoint import seed_everything
from limbscan.train.engine import FitResult, fit
from limbscan.train.report import write_training_report
from limbscan.utils.distributed import DistInfo, init_distributed, shutdown_distributed
from limbscan.utils.files import write_json_atomic


def scenario_names(scenario: str) -> list[str]:
    """``all`` -> every registered scenario, in the order they must train (cascade after detector)."""
    return parse_scenarios(scenario)


def prepare(ds: Dataset, cfg: Config) -> RunData:
    """Check the config's values and that the dataset is split; compute the training split's pixel statistics."""
    check_config(cfg)  # a Config changed in Python is checked like a loaded one, before any training
    train_images, val_images = ds.split_images("train"), ds.split_images("val")
    for split, images in (("train", train_images), ("val", val_images)):
        if not images:
            raise LimbscanError(f"{ds.root}: no {split} images; split the dataset first (`limbscan data split`)")
    if len({int(im["label"]) for im in train_images}) < 2:
        raise LimbscanError(f"{ds.root}: the train split has only one class; nothing to learn")
    mean, std = pixel_stats(ds, train_images, cfg.data.cache.longest_side)
    return RunData(ds, cfg, train_images, val_images, mean, max(std, 1e-3))


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


def make_stage(name: str, run: RunData, out: str | Path, resume: bool = False, progress: bool = False):
    """The training stage of scenario ``name``, asked of its registered class."""
    return scenario_class(name).make_stage(run, RunDir(out), resume, progress)


def write_val_scores(out: Path, run: RunData) -> Path:
    path = RunDir(out).val_scores
    write_json_atomic(path, validation_scores(out, run.ds, run.val_images, run.train_images))
    return path


def train(
    ds_path: str | Path, cfg: Config, out: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, FitResult]:
    """Train the scenario(s) of ``cfg.train.scenario`` on the dataset at ``ds_path``; results by scenario.

    The run folder ``out`` (see :class:`~limbscan.rundir.RunDir`) gets one subfolder per stage
    (``last.pt``, ``best.pt``), ``metrics.jsonl``, ``train.json``, ``val_scores.json`` and
    ``report.md``. A scenario that needs another (the cascade, the detector) reuses its best
    checkpoint, trained earlier in this call or by an earlier run into ``out``.
    """
    folder = RunDir(out)
    out = folder.root
    names = scenario_names(cfg.train.scenario)
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed()
    try:
        run = prepare(cached_dataset(Dataset.load(ds_path), cfg, info, progress), cfg)
        results: dict[str, FitResult] = {}
        for name in names:
            # Each stage starts from the same seed, so it builds the same initial model whether or
            # not the stages before it ran in this process (a resumed run may skip them).
            seed_everything(cfg.train.seed)
            stage = make_stage(name, run, folder, resume, progress)
            results[name] = fit(stage, out, cfg, resume=resume, progress=progress)
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
            write_json_atomic(folder.summary, {
                "scenarios": {name: scenarios[name] for name in scenario_names_in_order() if name in scenarios},
                "pixel_mean": run.pixel_mean,
                "pixel_std": run.pixel_std,
                "train_images": len(run.train_images),
                "val_images": len(run.val_images),
            })
            write_val_scores(out, run)
            write_training_report(out, run.ds, cfg)
        return results
    finally:
        if owns_group:
            shutdown_distributed()


__all__ = [
    "cached_dataset",
    "make_stage",
    "prepare",
    "scenario_names",
    "train",
    "write_val_scores",
]
