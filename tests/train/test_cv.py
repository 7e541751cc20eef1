"""k-fold cross-validation by patient (``limbscan cv``): folds partition train + val, the test
split is never read, out-of-fold scores are each fold's own, reruns keep finished folds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from limbscan.config import Config, save_config
from limbscan.data.cache import cache_dir
from limbscan.data.dataset import Dataset
from limbscan.data.split import patient_key, split_dataset
from limbscan.data.synth import synthesize
from limbscan.errors import LimbscanError
from limbscan.rundir import CvDir
from limbscan.train import runner
from limbscan.train.cv import cross_validate, fold_view, read_oof_scores

K = 3


def _cfg(factory) -> Config:
    cfg = factory()
    cfg.train.scenario = "whole-image"
    cfg.train.epochs, cfg.train.max_steps_per_epoch = 1, 2
    return cfg


@pytest.fixture(scope="module")
def done(tmp_path_factory, tiny_config_factory):
    """(dataset folder, CV folder, the RunData each fold trained on, the summary): one real 3-fold
    CV of the whole-image scenario on 30 split phantoms. Read-only: copy the folder to change it."""
    root = tmp_path_factory.mktemp("cv_ds")
    split_dataset(synthesize(root, n=30, seed=5, abnormal_fraction=0.5, progress=False), Config().data.split).save()
    out = tmp_path_factory.mktemp("cv") / "out"
    seen = []
    real_prepare = runner.prepare

    def spy(ds, cfg, auxiliary=None):
        run = real_prepare(ds, cfg, auxiliary)
        seen.append(run)
        return run

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "prepare", spy)
        summary = cross_validate(root, _cfg(tiny_config_factory), out, k=K, progress=False, n_boot=200)
    return root, out, seen, summary


def _ids(images) -> set[int]:
    return {int(im["id"]) for im in images}


@pytest.mark.slow
def test_folds_partition_train_and_val_by_patient_and_never_hold_a_test_image(done, tiny_config_factory):
    root, out, seen, _ = done
    ds = Dataset.load(root)
    pool, test = _ids(ds.split_images("train") + ds.split_images("val")), _ids(ds.split_images("test"))
    assert test  # the dataset has a test split, for this test to mean something
    folds = json.loads(CvDir(out).folds.read_text())
    fold_of = {int(i): f for i, f in folds["image_fold"].items()}
    assert set(fold_of) == pool and not set(fold_of) & test and set(fold_of.values()) == set(range(K))
    patient_folds = defaultdict(set)
    for im in ds.images:
        if int(im["id"]) in fold_of:
            patient_folds[patient_key(im)].add(fold_of[int(im["id"])])
    assert all(len(f) == 1 for f in patient_folds.values())
    assert any(len([im for im in ds.images if patient_key(im) == p]) > 1 for p in patient_folds)  # real groups
    assert "patient_id" not in CvDir(out).folds.read_text()
    # what each fold really trained and validated on (the runner's RunData)
    assert len(seen) == K
    by_id = {int(im["id"]): im for im in ds.images}
    for i, run in enumerate(seen):
        train_ids, val_ids = _ids(run.train_images), _ids(run.val_images)
        assert val_ids == {j for j, f in fold_of.items() if f == i}
        assert train_ids == pool - val_ids
        assert not (train_ids | val_ids | _ids(run.ds.images)) & test
        assert {int(by_id[j]["label"]) for j in val_ids} == {0, 1}  # stratified: both classes in every fold
    # pixel statistics are each fold's training images' own
    assert len({run.pixel_mean for run in seen}) == K
    # the test images were never even decoded: the cache holds the pooled images only
    entries = list(cache_dir(ds, tiny_config_factory().data.cache.longest_side).rglob("*.npy"))
    assert len(entries) == len(pool)


@pytest.mark.slow
def test_oof_scores_are_each_folds_validation_scores_and_cv_json_adds_up(done):
    root, out, _, summary = done
    ds = Dataset.load(root)
    folder = CvDir(out)
    rows = read_oof_scores(folder.oof_scores)
    pool = _ids(ds.split_images("train") + ds.split_images("val"))
    ids = [r["image_id"] for r in rows]
    assert sorted(ids) == sorted(pool) and len(ids) == len(set(ids))
    by_id = {int(im["id"]): im for im in ds.images}
    for r in rows:
        assert r["label"] == by_id[r["image_id"]]["label"]
        assert r["body_part"] == by_id[r["image_id"]]["body_part"]
    assert json.loads(folder.summary.read_text()) == json.loads(json.dumps(summary))
    s = summary["scenarios"]["whole-image"]
    for i in range(K):
        val = json.loads(folder.fold(i).val_scores.read_text())
        mine = {r["image_id"]: r for r in rows if r["fold"] == i}
        assert sorted(mine) == sorted(val["image_ids"])
        for image_id, score in zip(val["image_ids"], val["scores"]["whole-image"], strict=True):
            assert mine[image_id]["whole-image"] == pytest.approx(score, abs=1e-12)
        assert s["fold_auc"][i] == pytest.approx(roc_auc_score(val["labels"], val["scores"]["whole-image"]))
    aucs = np.asarray(s["fold_auc"])
    assert s["auc_mean"] == pytest.approx(float(np.mean(aucs)))
    assert s["auc_sd"] == pytest.approx(float(np.std(aucs, ddof=1)))
    labels = [r["label"] for r in rows]
    pooled = [r["whole-image"] for r in rows]
    assert s["oof_auc"] == pytest.approx(roc_auc_score(labels, pooled))
    lo, hi = s["oof_auc_ci95"]
    assert lo <= s["oof_auc"] <= hi
    likely = s["operating_points"]["likely"]
    called = np.asarray(pooled) >= likely["threshold"]
    y = np.asarray(labels, dtype=bool)
    assert likely["oof_sensitivity"] == pytest.approx(called[y].mean())
    assert likely["oof_specificity"] == pytest.approx((~called[~y]).mean())
    assert sum(b["n"] for b in s["by_body_part"].values()) == len(rows)
    assert summary["dataset_sha256"] and summary["config"]["train"]["scenario"] == "whole-image"
    assert summary["test_images_excluded"] == len(ds.split_images("test"))


@pytest.fixture
def copied(done, tmp_path):
    root, out, _, _ = done
    dst = tmp_path / "cv"
    shutil.copytree(out, dst)
    return root, dst


def _stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()
            and p.parent != folder}


@pytest.mark.slow
def test_rerun_keeps_finished_folds_resumes_an_unfinished_one_and_refuses_other_folds(copied, tiny_config_factory,
                                                                                      monkeypatch):
    root, out = copied
    cfg = _cfg(tiny_config_factory)
    before = _stamps(out)
    calls = []
    real_train = runner.train

    def spy(ds, cfg, out, resume=False, progress=True):
        calls.append((Path(out).name, resume))
        return real_train(ds, cfg, out, resume=resume, progress=progress)

    monkeypatch.setattr(runner, "train", spy)
    cross_validate(root, cfg, out, k=K, progress=False, n_boot=50)
    assert calls == [] and _stamps(out) == before
    # a fold killed before it finished (no val_scores.json yet) resumes from its checkpoints
    CvDir(out).fold(1).val_scores.unlink()
    best = CvDir(out).fold(1).best("whole-image").stat().st_mtime_ns
    cross_validate(root, cfg, out, k=K, progress=False, n_boot=50)
    assert calls == [("fold-1", True)]
    assert CvDir(out).fold(1).best("whole-image").stat().st_mtime_ns == best  # finished stage not retrained
    for i in (0, 2):
        assert CvDir(out).fold(i).metrics.stat().st_mtime_ns == before[f"fold-{i}/metrics.jsonl"]
    # folds are never mixed
    with pytest.raises(LimbscanError, match=r"k=3, seed 0 .*this call asks k=4"):
        cross_validate(root, cfg, out, k=4, progress=False)
    with pytest.raises(LimbscanError, match="seed 1"):
        cross_validate(root, cfg, out, k=K, seed=1, progress=False)
    other = _cfg(tiny_config_factory)
    other.train.lr_backbone = 0.5
    with pytest.raises(LimbscanError, match="train.lr_backbone"):
        cross_validate(root, other, out, k=K, progress=False)
    assert len(calls) == 1


@pytest.mark.slow
def test_a_changed_dataset_is_refused(copied, tiny_config_factory, tmp_path):
    root, out = copied
    moved = tmp_path / "ds"
    shutil.copytree(root, moved)
    ds = Dataset.load(moved)
    ds.images[0]["label"] = 1 - ds.images[0]["label"]
    ds.save()
    with pytest.raises(LimbscanError, match="Folds are never mixed"):
        cross_validate(moved, _cfg(tiny_config_factory), out, k=K, progress=False)


@pytest.mark.slow
def test_fold_view_keeps_the_dataset_and_drops_the_test_split(done):
    root, out, _, _ = done
    ds = Dataset.load(root)
    before = json.dumps(ds.coco)
    fold_of = {int(i): f for i, f in json.loads(CvDir(out).folds.read_text())["image_fold"].items()}
    view = fold_view(ds, fold_of, 2)
    assert json.dumps(ds.coco) == before and view.root == ds.root
    assert {im["split"] for im in view.images} == {"train", "val"}
    assert _ids(view.split_images("val")) == {i for i, f in fold_of.items() if f == 2}
    assert {a["image_id"] for a in view.coco["annotations"]} <= set(fold_of)
    assert not view.split_images("test")


def test_an_unsplit_dataset_or_too_many_folds_is_a_clear_error(tmp_path, tiny_config_factory):
    ds = synthesize(tmp_path / "ds", n=12, seed=1, abnormal_fraction=0.5, progress=False)
    with pytest.raises(LimbscanError, match="split the dataset first"):
        cross_validate(ds, _cfg(tiny_config_factory), tmp_path / "out", k=K, progress=False)
    split_dataset(ds, Config().data.split)
    with pytest.raises(LimbscanError, match="k=20 folds need at least 20"):
        cross_validate(ds, _cfg(tiny_config_factory), tmp_path / "out", k=20, progress=False)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "limbscan.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_cli_help_and_a_rerun_of_finished_folds(copied, tiny_config_factory, tmp_path):
    root, out = copied
    proc = _cli("cv", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "mean +- sd" in text and "test split is never read" in text and "--folds" in text
    config = save_config(_cfg(tiny_config_factory), tmp_path / "tiny.yaml")
    proc = _cli("cv", root, "-c", config, "-o", out, "-k", K, "--scenario", "whole-image", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "whole-image" in proc.stdout and "±" in proc.stdout and "cv.json" in proc.stdout
    proc = _cli("cv", root, "-c", config, "-o", out, "-k", 4, "-q")
    assert proc.returncode == 1 and "Folds are never mixed" in proc.stderr and "Traceback" not in proc.stderr



@pytest.mark.slow
def test_search_with_folds_cross_validates_each_trial(done, tiny_config_factory, tmp_path):
    from limbscan.train.search import random_search

    root, _, _, _ = done
    base = _cfg(tiny_config_factory)
    base.search.trials, base.search.epochs, base.search.image_size = 1, 1, (64,)
    ranked = random_search(root, base, tmp_path / "search", progress=False, folds=K)
    trial = CvDir(tmp_path / "search" / ranked[0]["dir"])
    summary = json.loads(trial.summary.read_text())
    assert ranked[0]["cv_auc_mean"] == summary["scenarios"]["whole-image"]["auc_mean"]
    assert ranked[0]["cv_auc_sd"] == summary["scenarios"]["whole-image"]["auc_sd"]
    assert summary["config"]["train"]["lr_backbone"] == pytest.approx(ranked[0]["lr_backbone"])
    assert [trial.fold(i).best("whole-image").is_file() for i in range(K)] == [True] * K


@pytest.mark.slow
def test_folds_trained_apart_then_summarised_by_the_call_that_finds_them_all(done, tiny_config_factory, tmp_path,
                                                                             monkeypatch):
    """``--fold``: one process per fold on the same folder; no summary until every fold is finished."""
    root = done[0]
    cfg = _cfg(tiny_config_factory)
    out = tmp_path / "cv"
    calls = []
    real_train = runner.train

    def spy(ds, cfg, out, resume=False, progress=True):
        calls.append(Path(out).name)
        return real_train(ds, cfg, out, resume=resume, progress=progress)

    monkeypatch.setattr(runner, "train", spy)
    with pytest.raises(LimbscanError, match="numbered 0 to 2"):
        cross_validate(root, cfg, out, k=K, progress=False, folds=[3])
    partial = cross_validate(root, cfg, out, k=K, progress=False, folds=[2])
    assert partial == {"k": K, "finished": [2], "pending": [0, 1]} and calls == ["fold-2"]
    assert not CvDir(out).summary.exists() and not CvDir(out).fold(0).root.exists()
    summary = cross_validate(root, cfg, out, k=K, progress=False, n_boot=50, folds=[1, 0])
    assert calls == ["fold-2", "fold-0", "fold-1"] and CvDir(out).summary.is_file()
    assert len(summary["scenarios"]["whole-image"]["fold_auc"]) == K
    # the same folds as one call made them
    assert json.loads(CvDir(out).folds.read_text()) == json.loads(CvDir(done[1]).folds.read_text())
