"""benchmarks.cv.fusion_rules on a made-up CV folder: a base scenario carrying signal of its own
lifts the fused rules above whole-image alone in every fold; one without does not."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from benchmarks.cv import fusion_rules


def _cv_folder(path: Path, columns: tuple[str, ...]) -> Path:
    rng = np.random.default_rng(0)
    n = 900
    y = (rng.random(n) < 0.2).astype(int)
    scores = {"whole-image": expit(y + rng.normal(size=n)), "detector": expit(y + rng.normal(size=n)),
              "cascade": expit(rng.normal(size=n)), "fused": expit(y + rng.normal(size=n))}
    path.mkdir()
    with open(path / "oof_scores.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "fold", "label", "body_part", *columns])
        for i in range(n):
            writer.writerow([i + 1, i % 3, y[i], "leg", *(f"{scores[c][i]:.6f}" for c in columns)])
    return path


def test_rules_fitted_across_folds_use_the_scenario_with_signal(tmp_path):
    cv = _cv_folder(tmp_path / "cv", ("whole-image", "detector", "cascade", "fused"))
    out = tmp_path / "fusion.json"
    assert fusion_rules.main([str(cv), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rules = report["rules"]
    assert report["k"] == 3 and report["images"] == 900
    assert rules["whole-image"]["paired_vs_whole_image"] == {"mean": 0.0, "sd": 0.0}
    assert "fused (as cross-validated: fitted within each fold)" in rules
    base = rules["whole-image"]["fold_auc"]
    for rule in ("logistic", "rank"):
        with_detector = rules[f"{rule}: whole-image + detector"]["fold_auc"]
        assert all(a > b + 0.02 for a, b in zip(with_detector, base, strict=True)), rule
        assert abs(rules[f"{rule}: whole-image + cascade"]["paired_vs_whole_image"]["mean"]) < 0.02, rule


def test_a_folder_without_every_input_is_refused_by_name(tmp_path):
    cv = _cv_folder(tmp_path / "cv", ("whole-image",))
    with pytest.raises(SystemExit, match="no detector, cascade column"):
        fusion_rules.main([str(cv), "--out", str(tmp_path / "x.json")])
