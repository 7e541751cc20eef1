"""benchmarks.cv.tta_flip on a real (tiny) CV folder: the setting a fold trained with gives back
that fold's recorded validation scores and AUCs; a folder whose scores disagree is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.cv import tta_flip
from limbscan.config import Config
from limbscan.data.split import split_dataset
from limbscan.data.synth import synthesize
from limbscan.train.cv import cross_validate


@pytest.fixture(scope="module")
def cv_folder(tmp_path_factory, tiny_config_factory) -> Path:
    root = tmp_path_factory.mktemp("tta_ds")
    split_dataset(synthesize(root, n=30, seed=5, abnormal_fraction=0.5, progress=False), Config().data.split).save()
    cfg = tiny_config_factory()
    cfg.train.scenario = "whole-image"
    cfg.train.epochs, cfg.train.max_steps_per_epoch = 1, 2
    cfg.classifier.tta_flip = True
    out = tmp_path_factory.mktemp("tta_cv") / "cv"
    cross_validate(root, cfg, out, k=3, progress=False, n_boot=50)
    return out


@pytest.mark.slow
def test_the_trained_setting_reproduces_the_folds_and_the_other_is_measured_beside_it(cv_folder, tmp_path):
    out = tmp_path / "tta.json"
    assert tta_flip.main([str(cv_folder), "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["folders"]
    recorded = json.loads((cv_folder / "cv.json").read_text())["scenarios"]["whole-image"]["fold_auc"]
    assert row["trained_with_flip"] == [True, True, True]
    assert row["settings"]["flip average"]["fold_auc"] == pytest.approx(recorded, abs=1e-4)
    alone = row["settings"]["image alone"]["fold_auc"]
    assert row["paired_flip_minus_alone"]["fold"] == pytest.approx(
        [a - b for a, b in zip(recorded, alone, strict=True)], abs=1e-4)


@pytest.mark.slow
def test_a_fold_whose_recorded_scores_disagree_is_refused_by_name(cv_folder, tmp_path):
    copy = tmp_path / "cv"
    shutil.copytree(cv_folder, copy)
    path = copy / "fold-1" / "val_scores.json"
    val = json.loads(path.read_text())
    val["scores"]["whole-image"] = [min(1.0, s + 0.01) for s in val["scores"]["whole-image"]]
    path.write_text(json.dumps(val))
    with pytest.raises(SystemExit, match=r"fold-1/val_scores.json: its whole-image scores differ"):
        tta_flip.main([str(copy), "--out", str(tmp_path / "x.json")])
