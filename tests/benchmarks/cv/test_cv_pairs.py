"""benchmarks.cv.cv_pairs: a lever's CV folder against its baseline's, fold by fold, on hand-made
folders shaped like `limbscan cv`'s (folds.json, fold-I/val_scores.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks.cv import cv_pairs

K, PER_FOLD = 3, 40


def make_cv(root: Path, seed: int, finished: list[int], shift: float = 0.0) -> Path:
    """A CV folder on fixed folds; each finished fold's scores separate the classes by about 1 + ``shift``."""
    root.mkdir(parents=True)
    ids = list(range(K * PER_FOLD))
    (root / "folds.json").write_text(json.dumps({"k": K, "seed": 0, "image_fold": {str(i): i // PER_FOLD for i in ids}}))
    rng = np.random.default_rng(seed)
    for f in finished:
        fold_ids = ids[f * PER_FOLD:(f + 1) * PER_FOLD]
        labels = [int(i % 4 == 0) for i in fold_ids]  # the same labels in every folder
        scores = {name: (np.array(labels) * (1 + shift) + rng.normal(size=PER_FOLD)).tolist()
                  for name in ("whole-image", "detector")}
        (root / f"fold-{f}").mkdir()
        (root / f"fold-{f}" / "val_scores.json").write_text(
            json.dumps({"image_ids": fold_ids, "labels": labels, "scores": scores}))
    return root


def test_pairs_the_folds_both_finished_and_lists_the_rest(tmp_path):
    base = make_cv(tmp_path / "base", seed=1, finished=[0, 1, 2])
    lever = make_cv(tmp_path / "lever", seed=2, finished=[0, 2], shift=1.0)
    out = tmp_path / "pairs.json"
    assert cv_pairs.main([str(base), str(lever), "--out", str(out)]) == 0
    (pair,) = json.loads(out.read_text())["pairs"]
    assert pair["folds_compared"] == [0, 2]
    assert pair["pending"] == {"base": [], "lever": [1]}
    for name in ("whole-image", "detector"):
        want = []
        for f in (0, 2):
            b = json.loads((base / f"fold-{f}" / "val_scores.json").read_text())
            v = json.loads((lever / f"fold-{f}" / "val_scores.json").read_text())
            want.append(roc_auc_score(v["labels"], v["scores"][name]) - roc_auc_score(b["labels"], b["scores"][name]))
        s = pair["scenarios"][name]
        assert s["paired_gain"]["fold"] == pytest.approx(want, abs=1e-6)
        assert s["paired_gain"]["mean"] == pytest.approx(np.mean(want))
        assert s["folds_up"] == sum(w > 0 for w in want)
        assert all(0 <= f["scenarios"][name]["delong_p"] <= 1 for f in pair["per_fold"])


def test_folders_on_other_folds_or_other_images_are_refused_by_name(tmp_path):
    base = make_cv(tmp_path / "base", seed=1, finished=[0])
    other = make_cv(tmp_path / "other", seed=2, finished=[0])
    folds = json.loads((other / "folds.json").read_text())
    folds["image_fold"]["0"] = 1
    (other / "folds.json").write_text(json.dumps(folds))
    with pytest.raises(SystemExit, match="dealt different folds"):
        cv_pairs.main([str(base), str(other), "--out", str(tmp_path / "x.json")])

    moved = make_cv(tmp_path / "moved", seed=2, finished=[0])
    path = moved / "fold-0" / "val_scores.json"
    val = json.loads(path.read_text())
    val["image_ids"] = val["image_ids"][::-1]
    path.write_text(json.dumps(val))
    with pytest.raises(SystemExit, match=r"moved/fold-0 and .*base/fold-0 validate on different images"):
        cv_pairs.main([str(base), str(moved), "--out", str(tmp_path / "x.json")])
