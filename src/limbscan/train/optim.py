"""The optimiser and its learning-rate schedule, as :func:`limbscan.train.engine.fit` builds and steps them.

SGD with momentum or AdamW over a stage's parameter groups (:func:`build_optimizer`); a linear
warm-up, then a cosine / step / constant decay, or a one-cycle curve, as a ``LambdaLR`` multiplier
(:func:`lr_factor`) stepped once per optimiser step (:func:`step_schedule`).
"""

from __future__ import annotations

import math
import typing
import warnings
from collections.abc import Callable
from typing import Any

import torch

from limbscan.config import Config, Schedule
from limbscan.errors import LimbscanError

SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)  # the config's choices
# The "step" schedule: x0.1 at these shares of the post-warm-up steps (torchvision's 26-epoch
# detection recipe drops at epochs 16 and 22, about 2/3 and 8/9 of the way).
STEP_MILESTONES = (2 / 3, 8 / 9)
STEP_GAMMA = 0.1
# One-cycle, as torch.optim.lr_scheduler.OneCycleLR's defaults: from lr / 25 up to lr over the
# first 30 % of the steps, then cosine down to lr / 25e4 (``train.warmup_steps`` is not used).
ONECYCLE_PCT, ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 0.3, 25.0, 1e4
MAX_WARMUP_SHARE = 5  # warm-up takes at most a fifth of a stage's steps


def lr_factor(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier after ``step`` optimiser steps: linear warm-up, then ``schedule``."""
    if schedule not in SCHEDULES:
        raise LimbscanError(f"config: train.schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "onecycle":
        return _one_cycle(total_steps)
    # A short run (a demo, a search trial) would otherwise spend all of itself warming up.
    warmup_steps = max(0, min(int(warmup_steps), total_steps // MAX_WARMUP_SHARE))
    decay_steps = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
        if schedule == "cosine":
            return warm * 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "step":
            return warm * STEP_GAMMA ** sum(progress >= m for m in STEP_MILESTONES)
        return warm

    return factor


def _one_cycle(total_steps: int) -> Callable[[int], float]:
    up = max(1, round(ONECYCLE_PCT * total_steps))
    down = max(1, total_steps - up)
    start, end = 1.0 / ONECYCLE_DIV, 1.0 / (ONECYCLE_DIV * ONECYCLE_FINAL_DIV)

    def factor(step: int) -> float:
        if step < up:
            return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * step / up))
        progress = min(1.0, (step - up) / down)
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(groups: list[dict], cfg: Config) -> torch.optim.Optimizer:
    """``train.optimizer``: SGD with momentum, or AdamW (decoupled weight decay); groups without
    their own lr / weight decay take the config's backbone values."""
    groups = [g for g in groups if any(p.requires_grad for p in g["params"])]
    if not groups:
        raise LimbscanError("training: the stage has no trainable parameters")
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr_backbone, weight_decay=cfg.train.weight_decay)
    return torch.optim.SGD(
        groups, lr=cfg.train.lr_backbone, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
    )


def step_schedule(scheduler: Any) -> None:
    """One schedule step per batch. Under AMP the scaler skips the first optimizer steps whose
    gradients overflow while it finds its scale; the schedule still advances, so PyTorch's warning
    that the scheduler stepped before the optimizer is expected there and kept out of the log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                category=UserWarning)
        scheduler.step()
