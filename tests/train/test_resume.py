"""A run killed mid-epoch (SIGKILL: no cleanup) and resumed ends on exactly the weights of an unkilled run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from limbscan.train import load_checkpoint
from limbscan.train.records import read_metrics

TOY = Path(__file__).with_name("toystage.py")


def _run(out: Path, *args: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TOY_KILL_AT", None)
    env.pop("WORLD_SIZE", None)
    if kill_at:
        env["TOY_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, str(TOY), str(out), "--epochs", "3", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in records]


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _run(whole)
    assert done.returncode == 0, done.stderr

    died = _run(killed, kill_at="2:5")  # epoch 2, step 5 of 12: mid-epoch
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert load_checkpoint(killed / "toy" / "last.pt")["epoch"] == 1
    assert not (killed / "final-rank0.pt").exists()

    resumed = _run(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr

    expected = torch.load(whole / "final-rank0.pt", weights_only=True)
    got = torch.load(killed / "final-rank0.pt", weights_only=True)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    a, b = load_checkpoint(whole / "toy" / "last.pt"), load_checkpoint(killed / "toy" / "last.pt")
    for key in a["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][key]["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert a["best_epoch"] == b["best_epoch"]
    # The log holds each epoch once, as an unkilled run's does.
    assert _without_timing(read_metrics(killed / "metrics.jsonl")) == _without_timing(read_metrics(whole / "metrics.jsonl"))

