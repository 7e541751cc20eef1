"""The default scenario: best held-out AUC on validation or across a cross-validation's folds, ties and fallbacks."""

from __future__ import annotations

import json

import pytest

from limbscan.bundle import export_bundle, read_manifest
from limbscan.bundle.default import choose_default, default_scenario
from limbscan.errors import LimbscanError
from limbscan.scenarios import names


def _cv_folder(path, scenarios_auc, sha, k=3):
    """A finished `limbscan cv` folder as export reads it: cv.json with each scenario's fold mean."""
    path.mkdir(parents=True)
    summary = {"k": k, "dataset_sha256": sha,
               "scenarios": {n: {"auc_mean": a, "auc_sd": 0.01, "fold_auc": [a] * k} for n, a in scenarios_auc.items()}}
    (path / "cv.json").write_text(json.dumps(summary))
    return path


def test_default_from_cv_picks_the_best_fold_mean_and_says_so(bundle, tiny_run, tmp_path):
    _, run = tiny_run
    m = read_manifest(bundle)
    val = json.loads((run / "val_scores.json").read_text())
    sha = next(d["dataset_sha256"] for d in val["training_data"] if d["role"] == "main")
    # the CV favours a scenario other than the one validation chose
    pick = next(n for n in m["scenarios"] if n != m["default_scenario"])
    aucs = {n: (0.91 if n == pick else 0.80) for n in m["scenarios"]}
    cv = _cv_folder(tmp_path / "cv", aucs, sha)
    out = export_bundle(run, tmp_path / "cv.limbscan", default_from_cv_dir=cv)
    got = read_manifest(out)
    assert got["default_scenario"] == pick
    assert got["default_reason"].startswith(f"{pick}: best cross-validated AUC (mean across the folds of 3-fold CV "
                                            f"in cv), 0.910 vs ")
    assert got["default_cv"]["auc_mean"] == aucs and got["default_cv"]["k"] == 3
    assert got["thresholds"] == m["thresholds"]  # the operating points stay the validation split's

    # refused: a scenario the CV did not score, another dataset, no summary yet
    partial = _cv_folder(tmp_path / "partial", {n: 0.9 for n in m["scenarios"] if n != "fused"}, sha)
    with pytest.raises(LimbscanError, match="did not score fused.*--scenario whole-image,detector,cascade,fused"):
        export_bundle(run, tmp_path / "b1.limbscan", default_from_cv_dir=partial)
    other = _cv_folder(tmp_path / "other", aucs, "0" * 64)
    with pytest.raises(LimbscanError, match="another dataset.json"):
        export_bundle(run, tmp_path / "b2.limbscan", default_from_cv_dir=other)
    with pytest.raises(LimbscanError, match="cv.json: not found"):
        export_bundle(run, tmp_path / "b3.limbscan", default_from_cv_dir=tmp_path / "nothing")
    assert not any((tmp_path / f"b{i}.limbscan").exists() for i in (1, 2, 3))


def test_choose_default_by_auc_with_ties_to_the_unfitted_scenario():
    assert choose_default({"whole-image": 0.90, "detector": 0.83, "cascade": 0.85, "fused": 0.91}) == (
        "fused", "fused: best validation AUC (fused: out-of-fold; the others: their best epoch's), 0.910 vs whole-image 0.900, detector "
                 "0.830, cascade 0.850")
    name, why = choose_default({"whole-image": 0.92, "detector": 0.83, "cascade": 0.85, "fused": 0.91})
    assert name == "whole-image" and why.startswith("whole-image: best validation AUC")
    name, why = choose_default({"whole-image": 0.8, "cascade": 0.9, "fused": 0.9})
    assert name == "cascade" and "tied with fused" in why  # a fitted scenario must win outright
    name, why = choose_default({"whole-image": None, "cascade": None, "fused": None})
    assert name == "cascade" and "no AUC to compare (one class in the validation split)" in why
    # without scores, the fallback keeps the paper's best; fused only when it is all there is
    assert default_scenario(list(names())) == "cascade" and default_scenario(["fused"]) == "fused"
