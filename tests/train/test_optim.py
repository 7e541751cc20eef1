"""The optimiser and its schedule (limbscan.train.optim): warm-up, cosine / step / constant and
one-cycle curves, AdamW or SGD over a stage's groups, one quiet schedule step per optimiser step."""

from __future__ import annotations

import warnings

import pytest
import torch

from limbscan.config import Config
from limbscan.errors import LimbscanError
from limbscan.train.optim import build_optimizer, lr_factor, step_schedule


def test_lr_factor_warms_up_then_follows_the_schedule():
    cosine = lr_factor("cosine", warmup_steps=10, total_steps=110)
    assert [round(cosine(s), 6) for s in range(3)] == [0.1, 0.2, 0.3]
    assert cosine(9) == pytest.approx(1.0)
    assert cosine(60) == pytest.approx(0.5)
    assert cosine(110) == pytest.approx(0.0, abs=1e-9)
    factors = [cosine(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(factors, factors[1:]))
    step = lr_factor("step", warmup_steps=0, total_steps=90)
    assert step(0) == 1.0 and step(59) == 1.0 and step(61) == pytest.approx(0.1) and step(85) == pytest.approx(0.01)
    constant = lr_factor("constant", warmup_steps=4, total_steps=100)
    assert constant(1) == 0.5 and constant(99) == 1.0
    with pytest.raises(LimbscanError, match="cosine"):
        lr_factor("linear", 0, 10)
    # a run shorter than five warm-ups warms up over its first fifth only
    short = lr_factor("constant", warmup_steps=50, total_steps=20)
    assert [short(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_one_cycle_rises_to_the_peak_at_30_percent_then_anneals_to_nearly_zero():
    f = lr_factor("onecycle", warmup_steps=50, total_steps=100)  # warmup_steps is not used
    values = [f(s) for s in range(100)]
    assert values[0] == pytest.approx(1 / 25)
    assert values[30] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:30], values[1:31]))
    assert all(a >= b for a, b in zip(values[30:], values[31:]))
    assert f(100) == pytest.approx(1 / 25e4)
    # the same curve as torch's OneCycleLR with its defaults (cos annealing, pct_start 0.3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=101, cycle_momentum=False)
    ours = []
    for _ in range(101):
        ours.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    # (torch ends its rise one step earlier: 0.3 * total - 1)
    assert ours[::5] == pytest.approx([lr_factor("onecycle", 0, 101)(s) for s in range(0, 101, 5)], abs=0.025)


def test_adamw_keeps_each_groups_learning_rate_and_decay():
    cfg = Config()
    cfg.train.optimizer = "adamw"
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt = build_optimizer([{"params": a.parameters(), "lr": 5e-4, "weight_decay": 0.01},
                           {"params": b.parameters(), "lr": 1e-3, "weight_decay": 0.0}], cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(5e-4, 0.01), (1e-3, 0.0)]
    cfg.train.optimizer = "sgd"
    assert isinstance(build_optimizer([{"params": a.parameters()}], cfg), torch.optim.SGD)


def test_a_schedule_step_after_a_step_the_amp_scaler_skipped_is_quiet_and_still_counts():
    """Under AMP the first optimizer steps can be skipped (overflowing gradients): the schedule
    advances all the same, without PyTorch's warning about the order in the log."""
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        step_schedule(sched)  # no optimizer.step() before it, as when the scaler skipped it
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    with pytest.warns(UserWarning, match="lr_scheduler.step"):  # what PyTorch says unfiltered
        weight2 = torch.nn.Parameter(torch.zeros(1))
        opt2 = torch.optim.SGD([weight2], lr=1.0)
        torch.optim.lr_scheduler.LambdaLR(opt2, lambda step: 1.0).step()
