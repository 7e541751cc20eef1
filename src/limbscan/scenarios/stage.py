"""What the scenarios' training stages share: the run's data, the epoch loader, the classifier
stage's loss, and validation through the scenario's own scoring.

A stage is what :func:`limbscan.train.engine.fit` trains (see its ``Stage`` protocol); each
scenario module defines its own and makes it in ``Scenario.make_stage``. Validation scores the
validation split through the very :class:`~limbscan.scenarios.base.Scenario` that ``evaluate``
and ``predict`` use, with the model being trained, so the AUC that picks ``best.pt`` is computed
on the numbers those give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torch.utils.data import Dataset as TorchDataset

from limbscan.config import Config
from limbscan.data.dataset import Dataset
from limbscan.data.torchdata import ShardedSampler, class_balanced_sampler
from limbscan.scenarios.base import Finding, ImageInput, Scenario, score_images


@dataclass
class RunData:
    """What every stage of a run shares: the dataset, its train / val images and pixel statistics."""

    ds: Dataset
    cfg: Config
    train_images: list[dict]
    val_images: list[dict]
    pixel_mean: float
    pixel_std: float

    @property
    def cache_side(self) -> int:
        return int(self.cfg.data.cache.longest_side)

    def val_inputs(self) -> Iterator[ImageInput]:
        """The validation images as every scenario scores them (pixels from the cache), one by one."""
        return (ImageInput.from_dataset(self.ds, im, self.cache_side) for im in self.val_images)

    @property
    def val_labels(self) -> list[int]:
        return [int(im["label"]) for im in self.val_images]


def auc_or_none(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC, or None when the labels hold one class (AUC undefined)."""
    from sklearn.metrics import roc_auc_score

    if len(set(int(y) for y in labels)) < 2:
        return None
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores, dtype=np.float64)))


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
    """One epoch's loader: a function of (seed, epoch, rank) only, so a resumed epoch draws the same batches."""
    sampler: Sampler[int]
    if balance == "sampler":
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
    "ClassifierStage",
    "RunData",
    "auc_or_none",
    "paper_augment",
    "seed_for",
    "train_loader",
    "validate_scenario",
    "validation_metrics",
]
