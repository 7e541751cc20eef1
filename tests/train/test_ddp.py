"""The engine under torchrun: 2 CPU processes with gloo finish, agree, and only rank 0 writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from limbscan.train import load_checkpoint
from limbscan.train.records import read_metrics

TOY = Path(__file__).with_name("toystage.py")


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_two_gloo_processes_finish_and_agree(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TOY_KILL_AT")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(TOY), str(tmp_path), "--epochs", "2"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rank0 = torch.load(tmp_path / "final-rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "final-rank1.pt", weights_only=True)
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    ckpt = load_checkpoint(tmp_path / "toy" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["epoch"] == 2
    for key in rank0:
        assert torch.equal(ckpt["model"][key], rank0[key]), key  # saved unwrapped: no "module." prefix
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]  # rank 0 alone logs
    # Each rank saw half the data: 96 images / 8 per batch / 2 ranks = 6 steps per epoch.
    assert ckpt["scheduler"]["last_epoch"] == 12
