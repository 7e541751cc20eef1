"""A tiny Stage for the engine's tests: a small CNN on random 8x8 tensors whose label is a linear rule.

It draws from every global generator the engine seeds (dropout and a torch-noise augmentation,
NumPy noise, Python's ``random``), so a resumed run only matches an unkilled one if the engine
restores all of them. Run as a script (``python toystage.py OUT ...``, or under
``torch.distributed.run``) it trains and saves each rank's final weights to ``OUT/final-rank{R}.pt``.
Environment knobs: ``TOY_KILL_AT=E:S`` SIGKILLs the process at epoch E (1-based), step S.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


class ToyStage:
    name = "toy"

    def __init__(self, epochs: int = 3, n: int = 96, batch: int = 8, seed: int = 0,
                 nan_at: tuple[int, int] | None = None, aucs: list[float | None] | None = None):
        self.epochs = epochs
        self.batch = batch
        self.seed = seed
        self.nan_at = nan_at  # (epoch, step), 1-based: the loss there is NaN
        self.aucs = aucs  # scripted val_auc per epoch, to test best.pt's choice
        kill = os.environ.get("TOY_KILL_AT")
        self.kill_at = tuple(int(v) for v in kill.split(":")) if kill else None
        g = torch.Generator().manual_seed(1234)
        w = torch.ones(1, 8, 8)
        w[:, :, 4:] = -1  # label: is the left half brighter than the right?
        x = torch.randn(n + 48, 1, 8, 8, generator=g)
        y = ((x * w).sum((1, 2, 3)) > 0).float()
        self.train_set = TensorDataset(x[:n], y[:n])
        self.val_x, self.val_y = x[n:], y[n:]
        self.model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.1),
            nn.Flatten(), nn.Linear(8 * 64, 1),
        )
        self._epoch = 0
        self._step = 0
        self._validations = 0

    def param_groups(self, model):
        conv, head = model[0], model[4]
        return [
            {"params": list(conv.parameters()), "lr": 0.05},
            {"params": list(head.parameters()), "lr": 0.02},
        ]

    def train_loader(self, epoch, rank, world_size):
        self._epoch, self._step = epoch, 0
        sampler = DistributedSampler(self.train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed)
        sampler.set_epoch(epoch)
        return DataLoader(self.train_set, batch_size=self.batch, sampler=sampler)

    def train_step(self, model, batch):
        self._step += 1
        if self.kill_at == (self._epoch + 1, self._step):
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch
        # Noise from all three global generators: resume must restore each of them.
        x = x + 0.05 * torch.randn_like(x)
        x = x + float(np.random.normal(0, 0.01)) + random.uniform(-0.01, 0.01)
        logits = model(x).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        if self.nan_at == (self._epoch + 1, self._step):
            loss = loss * float("nan")
        return loss, {"bce": float(loss.detach())}

    def validate(self, model):
        self._validations += 1
        if self.aucs is not None:
            return {"val_auc": self.aucs[self._validations - 1]}
        scores = model(self.val_x).squeeze(1)
        return {"val_auc": float(roc_auc_score(self.val_y.numpy(), scores.numpy()))}


def main() -> None:
    from limbscan.config import Config
    from limbscan.train import fit, init_distributed, seed_everything, shutdown_distributed

    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = Config()
    cfg.train.warmup_steps = 3
    info = init_distributed()
    seed_everything(cfg.train.seed)
    stage = ToyStage(epochs=args.epochs)
    fit(stage, args.out, cfg, resume=args.resume, progress=False)
    torch.save(stage.model.state_dict(), args.out / f"final-rank{info.rank}.pt")
    shutdown_distributed()


if __name__ == "__main__":
    main()
