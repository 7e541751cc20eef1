"""The training engine on a toy stage: learning, checkpoints, best epoch, logs, NaN stop, resume."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from limbscan.config import Config
from limbscan.errors import BadInputError, LimbscanError
from limbscan.train import fit, load_checkpoint, save_checkpoint, seed_everything
from limbscan.train.checkpoint import rng_state, set_rng_state
from limbscan.train.engine import to_device
from limbscan.train.records import read_metrics

_spec = importlib.util.spec_from_file_location("limbscan_test_toystage", Path(__file__).with_name("toystage.py"))
toystage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(toystage)



def _cfg(**train) -> Config:
    cfg = Config()
    cfg.train.warmup_steps = 3
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def _stage(**kwargs) -> toystage.ToyStage:
    seed_everything(0)
    return toystage.ToyStage(**kwargs)


def test_fit_learns_and_logs_each_epoch(tmp_path):
    stage = _stage(epochs=4)
    result = fit(stage, tmp_path, _cfg(), progress=True)
    assert result.epochs == 4 and len(result.history) == 4
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < losses[0]
    assert result.history[-1]["val_auc"] > 0.8  # a linear rule a conv + linear layer can learn
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    for record in lines:
        assert record["stage"] == "toy"
        for key in ("train_loss", "val_auc", "seconds", "lr", "train_bce"):
            assert key in record, key
    ckpt = load_checkpoint(tmp_path / "toy" / "last.pt")
    assert ckpt["epoch"] == 4 and ckpt["stage"] == "toy"
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config", "best_auc", "history"} <= set(ckpt)
    assert ckpt["config"]["train"]["warmup_steps"] == 3
    assert all(torch.equal(v, stage.model.state_dict()[k]) for k, v in ckpt["model"].items())


def test_cpu_run_repeats_exactly(tmp_path):
    first = _stage(epochs=2)
    fit(first, tmp_path / "a", _cfg(), progress=False)
    second = _stage(epochs=2)
    fit(second, tmp_path / "b", _cfg(), progress=False)
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    third = _stage(epochs=2)
    fit(third, tmp_path / "c", _cfg(seed=1), progress=False)
    assert not torch.equal(a["4.weight"], third.model.state_dict()["4.weight"])


def test_param_groups_keep_their_own_learning_rates(tmp_path):
    stage = _stage(epochs=1)
    fit(stage, tmp_path, _cfg(schedule="constant", warmup_steps=0), progress=False)
    groups = load_checkpoint(tmp_path / "toy" / "last.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.05, 0.02]
    assert all(g["momentum"] == 0.9 for g in groups)


@pytest.mark.parametrize(
    ("aucs", "best_epoch"),
    [([0.6, 0.8, 0.8, 0.7], 2), ([None, None, None], 1), ([None, 0.5, 0.9], 3), ([0.7, None, 0.6], 1)],
)
def test_best_checkpoint_is_the_best_val_auc_and_ties_keep_the_earlier(tmp_path, aucs, best_epoch):
    result = fit(_stage(epochs=len(aucs), aucs=aucs), tmp_path, _cfg(), progress=False)
    assert result.best_epoch == best_epoch
    best = load_checkpoint(tmp_path / "toy" / "best.pt")
    assert best["epoch"] == best_epoch
    assert best["best_auc"] == aucs[best_epoch - 1]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    fit(_stage(epochs=1), tmp_path, _cfg(), progress=False)
    last = tmp_path / "toy" / "last.pt"
    before = last.read_bytes()
    stage = _stage(epochs=3, nan_at=(2, 3))
    with pytest.raises(LimbscanError) as err:
        fit(stage, tmp_path, _cfg(), resume=True, progress=False)
    message = str(err.value)
    assert "toy" in message and "epoch 2" in message and "step 3" in message
    assert "lower the learning rate" in message and "last.pt" in message
    assert last.read_bytes() == before
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]


def test_nan_loss_before_any_checkpoint_says_none_was_written(tmp_path):
    with pytest.raises(LimbscanError, match="no checkpoint was written yet"):
        fit(_stage(epochs=2, nan_at=(1, 1)), tmp_path, _cfg(), progress=False)
    assert not (tmp_path / "toy" / "last.pt").exists()


def test_resume_after_a_stop_goes_on_at_the_next_epoch_and_keeps_the_earlier_ones(tmp_path):
    with pytest.raises(LimbscanError):  # stops in epoch 2, after epoch 1's checkpoint
        fit(_stage(epochs=3, nan_at=(2, 3)), tmp_path, _cfg(), progress=False)
    first = load_checkpoint(tmp_path / "toy" / "last.pt")["history"]
    stage = _stage(epochs=3)
    trained: list[int] = []
    loader = stage.train_loader
    stage.train_loader = lambda epoch, rank, world: trained.append(epoch) or loader(epoch, rank, world)
    result = fit(stage, tmp_path, _cfg(), resume=True, progress=False)
    assert trained[1:] == [1, 2]  # (the first call only counts the steps) epochs 2 and 3, 0-based
    assert result.epochs == 3 and result.history[0] == first[0] and len(result.step_losses) == 2 * 12
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert load_checkpoint(result.last_path)["scheduler"]["last_epoch"] == 3 * 12


def test_resume_of_a_finished_stage_does_not_train_again(tmp_path):
    done = fit(_stage(epochs=2), tmp_path, _cfg(), progress=False)
    stage = _stage(epochs=2, nan_at=(1, 1))  # would fail if it trained a step
    again = fit(stage, tmp_path, _cfg(), resume=True, progress=False)
    assert again.epochs == 2 and again.best_epoch == done.best_epoch
    assert torch.equal(stage.model.state_dict()["4.weight"], load_checkpoint(done.last_path)["model"]["4.weight"])
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 2


def test_resume_on_other_auxiliary_data_is_refused_and_on_the_same_goes_on(tmp_path, monkeypatch):
    fit(_stage(epochs=2), tmp_path, _cfg(), progress=False)
    other = _cfg()
    other.data.auxiliary = (str(tmp_path / "upper"),)
    with pytest.raises(LimbscanError, match=r"toy/last.pt: trained with auxiliary data none, this run asks for "
                                            r".*upper \(share None\).*new folder"):
        fit(_stage(epochs=2), tmp_path, other, resume=True, progress=False)

    shared = _cfg()
    shared.data.auxiliary_share = 0.3  # a share of no auxiliary data is no other data
    assert fit(_stage(epochs=2), tmp_path, shared, resume=True, progress=False).epochs == 2

    fit(_stage(epochs=1), tmp_path / "aux", other, progress=False)
    monkeypatch.chdir(tmp_path)
    same = _cfg()
    same.data.auxiliary = ("upper",)  # the same folder, named from elsewhere
    assert fit(_stage(epochs=2), tmp_path / "aux", same, resume=True, progress=False).epochs == 2


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    result = fit(_stage(epochs=2), tmp_path, _cfg(), resume=True, progress=False)
    assert result.epochs == 2 and load_checkpoint(result.last_path)["epoch"] == 2


def test_fresh_fit_replaces_only_its_own_stage_lines(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps({"stage": "other", "epoch": 1}) + "\n" + json.dumps({"stage": "toy", "epoch": 9}) + "\n")
    fit(_stage(epochs=1), tmp_path, _cfg(), progress=False)
    assert [(r["stage"], r["epoch"]) for r in read_metrics(log)] == [("other", 1), ("toy", 1)]


def test_max_steps_per_epoch_caps_the_epoch(tmp_path):
    stage = _stage(epochs=2)
    fit(stage, tmp_path, _cfg(max_steps_per_epoch=2), progress=False)
    assert stage._step == 2
    sched = load_checkpoint(tmp_path / "toy" / "last.pt")["scheduler"]
    assert sched["last_epoch"] == 4  # optimiser steps taken


def test_tensorboard_writes_events_when_asked(tmp_path):
    fit(_stage(epochs=1), tmp_path, _cfg(tensorboard=True), progress=False)
    assert list((tmp_path / "tensorboard" / "toy").glob("events.out.tfevents.*"))


def test_save_checkpoint_is_atomic(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"format": 1, "model": {"w": torch.ones(2)}}, path)
    before = path.read_bytes()
    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("cannot save this")

    with pytest.raises(RuntimeError, match="cannot save"):  # fails after the weights are written
        save_checkpoint({"format": 1, "model": {"w": torch.ones(1000), "x": Unsaveable()}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_load_checkpoint_names_the_file_when_it_is_not_one(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="broken.pt"):
        load_checkpoint(bad)
    with pytest.raises(BadInputError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(BadInputError, match="not a limbscan checkpoint"):
        load_checkpoint(foreign)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    seed_everything(5)
    path = save_checkpoint({"format": 1, "model": {}, "rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_everything(99)
    set_rng_state(load_checkpoint(path)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


class _OnTheGpu:
    """Stands in for a tensor that a CUDA run's resume loaded onto the GPU: numpy() refuses it, as torch does."""

    def __init__(self, tensor):
        self.tensor = tensor

    def numpy(self):
        raise TypeError("can't convert cuda:0 device type tensor to numpy")

    def cpu(self):
        return self.tensor


def test_rng_state_restores_from_a_checkpoint_loaded_onto_the_gpu():
    # A GPU run resumes with its checkpoint loaded onto the device (map_location): every tensor of
    # the saved generator states is on the GPU then, the numpy keys too (it failed so once on an H200).
    seed_everything(5)
    state = rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    seed_everything(99)
    state["numpy"]["keys"] = _OnTheGpu(state["numpy"]["keys"])
    state["torch"] = _OnTheGpu(state["torch"])
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_to_device_moves_nested_batches():
    batch = ([torch.zeros(1, 2, 2)], {"boxes": torch.ones(1, 4), "name": "x"}, torch.zeros(2, 1, 3, 3))
    moved = to_device(batch, torch.device("cpu"), channels_last=True)
    assert isinstance(moved, tuple) and moved[1]["name"] == "x"
    assert moved[2].is_contiguous(memory_format=torch.channels_last)
    assert math.isclose(float(moved[1]["boxes"].sum()), 4.0)


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "last.pt"
    save_checkpoint({"format": 1, "epoch": 1}, path)
    before = path.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(LimbscanError, match="disk full.*intact.*--resume"):
        save_checkpoint({"format": 1, "epoch": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
