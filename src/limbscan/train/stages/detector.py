"""The ``detector`` scenario's training stage: Mask R-CNN on the paper's labels (a normal image
boxed whole, an abnormal one on its lesion), validated through :class:`DetectorScenario`'s scoring."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader

from limbscan.data.datasets import DetectionDataset, detection_collate, join_sources
from limbscan.rundir import RunDir
from limbscan.scenarios.detector import DetectorScenario
from limbscan.train.stages.base import RunData, paper_augment, train_loader, validate_scenario


class DetectorStage:
    """Mask R-CNN trained on the paper's labels: normal images boxed whole, lesions boxed."""

    name = DetectorScenario.name
    find_unused_parameters = False

    def __init__(self, run: RunData):
        from limbscan.models.detector import build_detector

        self.run = run
        self.cfg = cfg = run.cfg
        self.epochs = int(cfg.train.detector_epochs)
        self.model = build_detector(cfg.detector, run.pixel_mean, run.pixel_std)
        augment = paper_augment(cfg)
        self.train_set = join_sources([
            DetectionDataset(source.ds, source.images, run.cache_side, augment) for source in run.train_sources
        ])
        self.checkpoint_extra: dict[str, Any] = {
            "scenario": self.name, "pixel_mean": run.pixel_mean, "pixel_std": run.pixel_std,
        }

    @classmethod
    def for_run(cls, run: RunData, out: RunDir, resume: bool = False, progress: bool = False) -> DetectorStage:
        return cls(run)

    def param_groups(self, model: nn.Module) -> list[dict]:
        from limbscan.models.detector import detector_param_groups

        t = self.cfg.train
        return detector_param_groups(model, t.lr_backbone, t.lr_heads, t.weight_decay)

    def train_loader(self, epoch: int, rank: int, world_size: int) -> DataLoader:
        t = self.cfg.train
        # A BCE pos_weight has no Mask R-CNN counterpart: "loss" samples plainly (the RoI
        # sampler already balances foreground and background within each image).
        balance = "sampler" if t.balance == "sampler" else "none"
        return train_loader(self.train_set, self.train_set.labels, self.cfg, epoch, rank, world_size,
                            t.detector_batch_size, balance, detection_collate)

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        images, targets = batch
        losses = model(images, targets)
        loss = sum(losses.values())
        return loss, {k.removeprefix("loss_"): float(v.detach()) for k, v in losses.items()}

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        return validate_scenario(DetectorScenario(model, self.run.cache_side), self.run)
