"""`limbscan compare`: reports of the same images side by side, read from what evaluate wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest

from limbscan.errors import LimbscanError
from limbscan.eval.compare import compare
from limbscan.eval.evaluate import SCORES_FILE, Evaluation
from limbscan.eval.metrics import binary_metrics, delong_test


def _report(folder, ids, labels, scores: dict[str, np.ndarray], backbone: str):
    scenarios = {}
    for name, s in scores.items():
        m = binary_metrics(labels, s, 0.5)
        scenarios[name] = {**m.as_dict(), "auc_ci95": [0.0, 1.0], "confusion": {"tp": m.tp, "fn": m.fn,
                                                                               "fp": m.fp, "tn": m.tn}}
    metrics = {"split": "test", "dataset": "ds", "n": len(ids), "n_abnormal": int(labels.sum()),
               "scenarios": scenarios, "comparisons": [], "backbones_used": {n: backbone for n in scores}}
    Evaluation(metrics, {n: (labels, s) for n, s in scores.items()}, None, list(ids)).write(folder)
    return folder


@pytest.fixture
def two_reports(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(20, int), np.zeros(60, int)]
    ids = list(range(100, 180))
    good = labels * 0.4 + rng.random(80) * 0.6  # separates well; probabilities stay in [0, 1]
    poor = labels * 0.1 + rng.random(80) * 0.9
    a = _report(tmp_path / "a", ids, labels, {"cascade": good, "detector": poor}, "efficientnet_lite0")
    b = _report(tmp_path / "b", ids, labels, {"cascade": poor}, "resnet50")
    return a, b, labels, good, poor


def test_compare_puts_each_backbone_in_one_table_with_delong(two_reports, tmp_path):
    a, b, labels, good, poor = two_reports
    assert (a / SCORES_FILE).read_text().splitlines()[0] == "image_id,label,cascade,detector"
    m = compare([a, b], tmp_path / "cmp", scenario="cascade")
    assert [r["backbone"] for r in m["backbones"]] == ["efficientnet_lite0", "resnet50"]
    assert m["backbones"][0]["auc"] > m["backbones"][1]["auc"]
    (c,) = m["comparisons"]
    assert c["delong_p"] == pytest.approx(delong_test(labels, good, poor)["p"], rel=1e-3)  # 6-decimal CSV
    text = (tmp_path / "cmp" / "report.md").read_text()
    assert "Per backbone" in text and "resnet50" in text
    assert (tmp_path / "cmp" / "roc.png").is_file()
    assert json.loads((tmp_path / "cmp" / "metrics.json").read_text())["n"] == 80


def test_compare_without_scenario_takes_every_scenario_of_every_report(two_reports, tmp_path):
    a, b, *_ = two_reports
    m = compare([a, b])
    assert len(m["scenarios"]) == 3 and len(m["comparisons"]) == 3


def test_compare_refuses_other_images_missing_scores_and_missing_scenarios(two_reports, tmp_path):
    a, b, labels, good, _ = two_reports
    other = _report(tmp_path / "other", list(range(80)), labels, {"cascade": good}, "resnet101")
    with pytest.raises(LimbscanError, match="other images"):
        compare([a, other])
    with pytest.raises(LimbscanError, match="no 'detector' scenario"):
        compare([a, b], scenario="detector")
    (b / SCORES_FILE).unlink()
    with pytest.raises(LimbscanError, match="scores.csv: missing"):
        compare([a, b])
    with pytest.raises(LimbscanError, match="at least two"):
        compare([a])
