"""Random search: sampling within the space, ranking by validation AUC, resuming a killed search."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import yaml

from limbscan.config import Config, load_config
from limbscan.errors import LimbscanError
from limbscan.train.search import random_search, sample_trial


def test_samples_stay_in_the_space_and_repeat_for_a_seed():
    base = Config()
    space = base.search
    draws = [sample_trial(base, np.random.default_rng(3))[1] for _ in range(2)]
    assert draws[0] == draws[1]
    rng = np.random.default_rng(0)
    for _ in range(50):
        cfg, s = sample_trial(base, rng)
        assert space.lr_backbone[0] <= s["lr_backbone"] <= space.lr_backbone[1]
        assert cfg.train.lr_heads / cfg.train.lr_backbone == pytest.approx(base.train.lr_heads / base.train.lr_backbone)
        assert space.weight_decay[0] <= s["weight_decay"] <= space.weight_decay[1]
        assert s["image_size"] in space.image_size and cfg.classifier.image_size == s["image_size"]
        assert space.crop_margin[0] <= cfg.classifier.crop_margin <= space.crop_margin[1]
        lo, hi = cfg.data.augment.scale_range
        assert 0 < lo <= 1 <= hi
        assert cfg.train.epochs == space.epochs
    assert base == Config()  # the base config is not modified


@pytest.fixture
def fake_train(monkeypatch):
    """Stand in for the real trainer: validation AUC peaks at lr_backbone = 1e-3."""
    calls = []

    def train(dataset, cfg, out, resume=False, progress=True):
        calls.append(out.name)
        auc = 1.0 - abs(np.log10(cfg.train.lr_backbone) + 3) / 10
        (out / "metrics.jsonl").write_text("{}\n")
        return {"whole-image": types.SimpleNamespace(best_auc=auc), "cascade": types.SimpleNamespace(best_auc=auc - 0.01)}

    module = types.ModuleType("limbscan.train.runner")
    module.train = train
    monkeypatch.setitem(sys.modules, "limbscan.train.runner", module)
    return calls


def test_ranks_by_validation_auc_and_resumes(tmp_path, fake_train):
    base = load_config(None, ["train.scenario=all", "search.trials=5"])
    ranked = random_search(tmp_path / "ds", base, tmp_path / "search", seed=1, progress=False)
    aucs = [r["val_auc"] for r in ranked]
    assert aucs == sorted(aucs, reverse=True) and len(aucs) == 5
    assert fake_train == [f"trial_{i:02d}" for i in range(5)]
    table = json.loads((tmp_path / "search" / "search.json").read_text())
    assert table["ranked_by"] == "cascade validation AUC"
    best = yaml.safe_load((tmp_path / "search" / "best.yaml").read_text())
    assert best["train"]["lr_backbone"] == pytest.approx(ranked[0]["lr_backbone"])
    assert (tmp_path / "search" / "search.csv").read_text().startswith("trial,dir,val_auc")
    # a rerun (e.g. after a kill) trains nothing already finished, and asks for more only
    again = random_search(tmp_path / "ds", base, tmp_path / "search", trials=6, seed=1, progress=False)
    assert fake_train[5:] == ["trial_05"]
    assert [r["trial"] for r in again if r["trial"] < 5] == [r["trial"] for r in ranked]


def test_no_auc_at_all_is_an_error(tmp_path, monkeypatch):
    module = types.ModuleType("limbscan.train.runner")
    module.train = lambda *a, **k: {}
    monkeypatch.setitem(sys.modules, "limbscan.train.runner", module)
    with pytest.raises(LimbscanError, match="validation AUC"):
        random_search(tmp_path, load_config(None, ["search.trials=2"]), tmp_path / "s", progress=False)


@pytest.fixture
def fake_cv(monkeypatch):
    """Stand in for cross-validation: mean fold AUC peaks at lr_backbone = 1e-3; no plain training."""
    calls = []

    def cross_validate(dataset, cfg, out, k=5, progress=True, **kwargs):
        calls.append((out.name, k))
        auc = 1.0 - abs(np.log10(cfg.train.lr_backbone) + 3) / 10
        return {"scenarios": {"whole-image": {"auc_mean": auc + 0.05, "auc_sd": 0.01},
                              "cascade": {"auc_mean": auc, "auc_sd": 0.02}}}

    def train(*args, **kwargs):
        raise AssertionError("a --folds search trained on the validation split")

    cv = types.ModuleType("limbscan.train.cv")
    cv.cross_validate = cross_validate
    runner = types.ModuleType("limbscan.train.runner")
    runner.train = train
    monkeypatch.setitem(sys.modules, "limbscan.train.cv", cv)
    monkeypatch.setitem(sys.modules, "limbscan.train.runner", runner)
    return calls


def test_folds_rank_trials_by_mean_fold_auc_and_are_never_mixed(tmp_path, fake_cv):
    base = load_config(None, ["train.scenario=all", "search.trials=4"])
    ranked = random_search(tmp_path / "ds", base, tmp_path / "search", seed=1, progress=False, folds=3)
    means = [r["cv_auc_mean"] for r in ranked]
    assert means == sorted(means, reverse=True) and len(means) == 4
    assert all("val_auc" not in r and r["folds"] == 3 and r["cv_auc_sd"] == 0.02 for r in ranked)  # the cascade's
    assert fake_cv == [(f"trial_{i:02d}", 3) for i in range(4)]
    table = json.loads((tmp_path / "search" / "search.json").read_text())
    assert table["ranked_by"] == "cascade mean AUC over 3 cross-validation folds"
    best = yaml.safe_load((tmp_path / "search" / "best.yaml").read_text())
    assert best["train"]["lr_backbone"] == pytest.approx(ranked[0]["lr_backbone"])
    # the same search again trains nothing; another k, or the validation split, is refused
    random_search(tmp_path / "ds", base, tmp_path / "search", seed=1, progress=False, folds=3)
    assert len(fake_cv) == 4
    with pytest.raises(LimbscanError, match="scored by 3-fold cross-validation; this search asks by 5-fold"):
        random_search(tmp_path / "ds", base, tmp_path / "search", seed=1, progress=False, folds=5)
    with pytest.raises(LimbscanError, match="asks on the validation split"):
        random_search(tmp_path / "ds", base, tmp_path / "search", seed=1, progress=False)
