"""The engine's epoch-end hooks alone: best.pt only on a better epoch, the console line, and the
best-epoch choice they are told about."""

from __future__ import annotations

import io

import torch
from rich.console import Console

from limbscan.config import Config
from limbscan.train import load_checkpoint
from limbscan.train.checkpoint import rng_state
from limbscan.train.engine import Standing
from limbscan.train.hooks import EpochEnd, PrintEpoch, SaveCheckpoints


class _Stage:
    name, epochs = "toy", 3
    checkpoint_extra = {"pixel_mean": 0.5}


def _end(epoch: int, standing: Standing, auc: float | None) -> EpochEnd:
    record = {"stage": "toy", "epoch": epoch, "train_loss": 0.123456, "val_auc": auc, "lr": 0.01, "seconds": 2.04}
    improved = standing.add(record)
    return EpochEnd(record, improved, standing.best_auc, standing.best_epoch, standing.history, [rng_state()])


def test_save_checkpoints_writes_best_only_for_a_better_epoch(tmp_path):
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    hook = SaveCheckpoints(_Stage(), Config(), model, optimizer, scheduler, scaler, 1, last, best)
    standing = Standing()
    hook.on_epoch_end(_end(1, standing, 0.7))
    with torch.no_grad():
        model.weight.add_(1.0)
    hook.on_epoch_end(_end(2, standing, 0.7))  # a tie keeps the earlier epoch
    kept, now = load_checkpoint(best), load_checkpoint(last)
    assert (kept["epoch"], kept["best_epoch"], now["epoch"], now["best_epoch"]) == (1, 1, 2, 1)
    assert not torch.equal(kept["model"]["weight"], now["model"]["weight"])
    assert now["extra"] == {"pixel_mean": 0.5} and now["scaler"] == {} and len(now["history"]) == 2
    hook.on_epoch_end(_end(3, standing, 0.9))
    assert load_checkpoint(best)["epoch"] == 3 and load_checkpoint(best)["best_auc"] == 0.9


def test_standing_prefers_a_defined_auc_and_keeps_the_first_when_none_is():
    standing = Standing()
    assert [standing.add({"epoch": e, "val_auc": a}) for e, a in [(1, None), (2, None), (3, 0.5), (4, None)]] == [
        True, False, True, False]
    assert (standing.best_epoch, standing.best_auc, len(standing.history)) == (3, 0.5, 4)


def test_print_epoch_says_loss_auc_time_and_best():
    out = io.StringIO()
    hook = PrintEpoch(Console(file=out, width=200), "toy", 3)
    standing = Standing()
    hook.on_epoch_end(_end(1, standing, None))
    hook.on_epoch_end(_end(2, standing, 0.81234))
    hook.on_epoch_end(_end(3, standing, 0.5))
    assert out.getvalue().splitlines() == [
        "toy epoch 1/3: loss 0.1235, val AUC n/a, 2.0 s  (best)",
        "toy epoch 2/3: loss 0.1235, val AUC 0.812, 2.0 s  (best)",
        "toy epoch 3/3: loss 0.1235, val AUC 0.500, 2.0 s",
    ]
