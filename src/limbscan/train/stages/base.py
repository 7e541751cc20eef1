"""What the training stages share: the run's data, the epoch loader, the classifier stages' BCE
step, and validation through the scenario's own scoring.

Training data comes in sources (:class:`TrainSource`: the main train split, then each auxiliary
dataset whole), joined and drawn in their shares by :func:`train_loader`; validation, pixel
statistics and thresholds are the main dataset's. Validation scores through the very
:class:`~limbscan.scenarios.base.Scenario` that ``evaluate`` and ``predict`` use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torch.utils.data import Dataset as TorchDataset

from limbscan.config import Config
from limbscan.data.dataset import DATASET_FILE, Dataset
from limbscan.data.datasets import JoinedDataset
from limbscan.data.samplers import ShardedSampler, SourceMixSampler, class_balanced_sampler
from limbscan.eval.metrics import auc_or_none
from limbscan.scenarios.base import Finding, ImageInput, Scenario, score_images

MAIN, AUXILIARY = "main", "auxiliary"  # a training source's role


@dataclass
class TrainSource:
    """One dataset's training images: the main dataset's train split, or every image of an
    auxiliary dataset (whatever split it carries). Image ids are the dataset's own, so an image
    is always named with its dataset."""

    ds: Dataset
    images: list[dict]
    role: str  # MAIN or AUXILIARY

    def provenance(self) -> dict[str, Any]:
        """What ``train.json``, ``val_scores.json`` and the bundle's manifest say of this source."""
        from limbscan.utils.files import sha256_file

        path = Path(self.ds.root) / DATASET_FILE
        parts: dict[str, int] = {}
        for im in self.images:
            part = im.get("body_part") or "unknown"
            parts[part] = parts.get(part, 0) + 1
        return {
            "role": self.role,
            "path": str(Path(self.ds.root).resolve()),
            "dataset_sha256": sha256_file(path) if path.is_file() else None,
            "split": "train" if self.role == MAIN else "all",
            "images": len(self.images),
            "abnormal": sum(int(im["label"]) for im in self.images),
            "body_parts": dict(sorted(parts.items())),
            "synthetic": self.ds.synthetic,
        }


@dataclass
class RunData:
    """What every stage of a run shares: the dataset, its train / val images and pixel statistics,
    and the auxiliary training sources (empty unless ``data.auxiliary`` names some)."""

    ds: Dataset
    cfg: Config
    train_images: list[dict]
    val_images: list[dict]
    pixel_mean: float
    pixel_std: float
    auxiliary: list[TrainSource] = field(default_factory=list)

    @property
    def cache_side(self) -> int:
        return int(self.cfg.data.cache.longest_side)

    @property
    def train_sources(self) -> list[TrainSource]:
        """Every source of training images, the main one first (the order of joined datasets)."""
        return [TrainSource(self.ds, self.train_images, MAIN), *self.auxiliary]

    def training_data(self) -> list[dict[str, Any]]:
        """Each source's provenance, main first: the datasets this run trained on."""
        return [source.provenance() for source in self.train_sources]

    def val_inputs(self) -> Iterator[ImageInput]:
        """The validation images as every scenario scores them (pixels from the cache), one by one."""
        return (ImageInput.from_dataset(self.ds, im, self.cache_side) for im in self.val_images)

    @property
    def val_labels(self) -> list[int]:
        return [int(im["label"]) for im in self.val_images]


def validate_scenario(scenario: Scenario, run: RunData) -> dict[str, float | None]:
    """``val_auc`` of ``scenario`` (holding the model being trained) on the run's validation split."""
    findings = score_images({scenario.name: scenario}, run.val_inputs())[scenario.name]
    return validation_metrics(run, findings)


def validation_metrics(run: RunData, findings: list[Finding]) -> dict[str, float | None]:
    labels = run.val_labels
    return {"val_auc": auc_or_none(labels, [f.score for f in findings]), "val_images": float(len(labels))}


def seed_for(*parts: int) -> int:
    """A seed mixed from ``parts``: (seed 0, epoch 1) and (seed 1, epoch 0) never collide."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def train_loader(
    dataset: TorchDataset,
    labels: Sequence[int],
    cfg: Config,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    balance: str,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """One epoch's loader: a function of (seed, epoch, rank) only, so a resumed epoch draws the same batches.

    A :class:`~limbscan.data.datasets.JoinedDataset` (auxiliary data joined) is drawn by a
    :class:`~limbscan.data.samplers.SourceMixSampler`: ``data.auxiliary_share`` of each batch
    auxiliary, classes balanced within each source under ``balance="sampler"``.
    """
    sampler: Sampler[int]
    if isinstance(dataset, JoinedDataset):
        base: Sampler[int] = SourceMixSampler(
            labels, dataset.sizes, cfg.data.auxiliary_share, balance == "sampler",
            torch.Generator().manual_seed(seed_for(cfg.train.seed, epoch)),
        )
        sampler = ShardedSampler(base, rank, world_size) if world_size > 1 else base
    elif balance == "sampler":
        # Same generator seed on every rank: all draw one sequence and each keeps its shard.
        base = class_balanced_sampler(labels, None, torch.Generator().manual_seed(seed_for(cfg.train.seed, epoch)))
        sampler = ShardedSampler(base, rank, world_size) if world_size > 1 else base
    else:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.train.seed)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.train.workers,
        collate_fn=collate_fn,
        # A last batch of one makes batch norm's statistics noise (or an error).
        drop_last=len(sampler) > batch_size,
        # Workers' augmentation seeds come from this generator, not from the global one.
        generator=torch.Generator().manual_seed(seed_for(cfg.train.seed, epoch, rank, 1)),
        persistent_workers=False,
    )


def paper_augment(cfg: Config) -> nn.Module:
    """The paper's run-time augmentation (imported here, not by inference)."""
    from limbscan.data.augment import PaperAugment

    return PaperAugment(cfg.data.augment)


class ClassifierStage:
    """Shared by the classifier scenarios: a Classifier trained with BCE on (image, label) batches."""

    name = "classifier"
    find_unused_parameters = False

    def __init__(self, run: RunData, input_size: int):
        from limbscan.models.classifier import build_classifier

        self.run = run
        self.cfg = cfg = run.cfg
        self.epochs = int(cfg.train.epochs)
        self.model = build_classifier(cfg.classifier, run.pixel_mean, run.pixel_std)
        self.augment = paper_augment(cfg)
        self.checkpoint_extra: dict[str, Any] = {
            "scenario": self.name,
            "pixel_mean": run.pixel_mean,
            "pixel_std": run.pixel_std,
            "input_size": input_size,
        }
        self._pos_weight: float | None = None

    def _set_pos_weight(self, labels: Sequence[int]) -> None:
        if self.cfg.train.balance == "loss":
            positives = sum(int(y) for y in labels)
            self._pos_weight = (len(labels) - positives) / max(positives, 1)

    def param_groups(self, model: nn.Module) -> list[dict]:
        t = self.cfg.train
        return model.param_groups(t.lr_backbone, t.lr_heads, t.weight_decay)

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        logits = model(x).float()
        pos_weight = None if self._pos_weight is None else logits.new_tensor(self._pos_weight)
        loss = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), pos_weight=pos_weight)
        return loss, {}


__all__ = [
    "AUXILIARY",
    "MAIN",
    "ClassifierStage",
    "RunData",
    "TrainSource",
    "paper_augment",
    "seed_for",
    "train_loader",
    "validate_scenario",
    "validation_metrics",
]
