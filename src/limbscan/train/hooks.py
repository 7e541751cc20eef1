"""What rank 0 does as a stage trains, one hook per job: the checkpoints, the ``metrics.jsonl``
line, TensorBoard and the line on the console after each epoch.

:func:`limbscan.train.engine.fit` builds the hooks (on rank 0 alone), calls :meth:`Hook.on_step`
after each optimiser step and :meth:`Hook.on_epoch_end` after each validated epoch, in list
order, and :meth:`Hook.close` once when the stage ends, finished or not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from limbscan.config import Config
from limbscan.train.checkpoint import save_checkpoint, stage_checkpoint
from limbscan.train.records import append_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochEnd:
    """An epoch just trained and validated, and where the stage stands after it."""

    record: dict[str, Any]  # its metrics.jsonl line: stage, epoch (1-based), losses, metrics, lr, times
    improved: bool  # the best epoch so far: best.pt becomes this one
    best_auc: float | None
    best_epoch: int | None
    history: list[dict]  # every epoch's record so far, this one last
    rngs: list[dict[str, Any]]  # each rank's generator states, gathered after validation

    @property
    def epoch(self) -> int:
        return int(self.record["epoch"])


class Hook:
    """Something done as the epochs go by; each method does nothing unless a hook overrides it."""

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        """After optimiser step ``step`` (0-based) of epoch ``epoch`` (0-based), its loss."""

    def on_epoch_end(self, end: EpochEnd) -> None:
        """After the epoch is validated."""

    def close(self) -> None:
        """Once, when the stage ends or stops on an error."""


class SaveCheckpoints(Hook):
    """``last.pt`` after every epoch, and ``best.pt`` (the same payload) when the epoch is the best so far."""

    def __init__(self, stage: Any, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: Any, scaler: torch.amp.GradScaler, world_size: int, last: Path, best: Path):
        self.stage, self.cfg, self.model = stage, cfg, model
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.world_size, self.last, self.best = world_size, last, best

    def on_epoch_end(self, end: EpochEnd) -> None:
        payload = stage_checkpoint(
            self.stage, self.cfg, epoch=end.epoch, model=self.model, rngs=end.rngs, best_auc=end.best_auc,
            best_epoch=end.best_epoch, history=end.history, world_size=self.world_size,
            optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
        )
        save_checkpoint(payload, self.last)
        if end.improved:
            save_checkpoint(payload, self.best)


class AppendMetrics(Hook):
    """The epoch's line in ``metrics.jsonl``, written after its checkpoint (a resume rewrites the
    file from the checkpoint's history, so a line lost in between comes back)."""

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, end: EpochEnd) -> None:
        append_metrics(self.path, end.record)


class TensorBoard(Hook):
    """``out/tensorboard/<stage>``: the loss of every step, and every number of each epoch's record."""

    def __init__(self, writer: Any, stage: str, steps_per_epoch: int):
        self.writer, self.stage, self.steps = writer, stage, steps_per_epoch

    @classmethod
    def open(cls, cfg: Config, out: Path, stage: str, steps_per_epoch: int, purge_step: int) -> TensorBoard | None:
        """The hook when ``train.tensorboard`` asks for it and tensorboard is installed; events from
        ``purge_step`` on (a killed run's, past its checkpoint) are dropped."""
        if not cfg.train.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("train.tensorboard is set but tensorboard is not installed: `pip install tensorboard`")
            return None
        writer = SummaryWriter(log_dir=str(out / "tensorboard" / stage), purge_step=purge_step or None)
        return cls(writer, stage, steps_per_epoch)

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        self.writer.add_scalar(f"{self.stage}/step_loss", loss, epoch * self.steps + step + 1)

    def on_epoch_end(self, end: EpochEnd) -> None:
        for key, value in end.record.items():
            if isinstance(value, int | float) and key not in ("epoch",):
                self.writer.add_scalar(f"{self.stage}/{key}", value, end.epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class PrintEpoch(Hook):
    """One line per epoch on the progress bar's console: loss, validation AUC, time, and whether it is the best."""

    def __init__(self, console: Console, stage: str, epochs: int):
        self.console, self.stage, self.epochs = console, stage, epochs

    def on_epoch_end(self, end: EpochEnd) -> None:
        auc = end.record.get("val_auc")
        shown = "n/a" if auc is None else f"{auc:.3f}"
        self.console.print(
            f"{self.stage} epoch {end.epoch}/{self.epochs}: loss {end.record['train_loss']:.4f}, "
            f"val AUC {shown}, {end.record['seconds']:.1f} s" + ("  (best)" if end.improved else ""),
            highlight=False,
        )
