"""Study-level AUC where the dataset knows studies (the synthetic set: one study per patient)."""

from __future__ import annotations

import pytest
from sklearn.metrics import roc_auc_score

from limbscan.data.dataset import Dataset
from limbscan.eval.evaluate import measure
from limbscan.eval.report import metrics_markdown


def test_study_level_auc_takes_each_studys_highest_image(tiny_run):
    root, run = tiny_run
    result = measure(run, root, "test", n_boot=20, gallery=False, progress=False)
    images = Dataset.load(root).split_images("test")
    assert all(im.get("study") for im in images)  # synth names one study per patient
    members: dict[str, list[int]] = {}
    for i, im in enumerate(images):
        members.setdefault(im["study"], []).append(i)
    for name, (labels, scores) in result.curves.items():
        study_labels = [max(labels[i] for i in idx) for idx in members.values()]
        study_scores = [max(scores[i] for i in idx) for idx in members.values()]
        got = result.metrics["scenarios"][name]["study_level"]
        assert (got["n"], got["n_abnormal"]) == (len(members), sum(study_labels))
        if 0 < sum(study_labels) < len(members):
            assert got["auc"] == pytest.approx(roc_auc_score(study_labels, study_scores), abs=1e-9)
        else:  # one class of study only: no AUC, and the reason says why
            assert got["auc"] is None and got["auc_undefined_reason"]
    assert "Study-level AUC" in metrics_markdown(result.metrics)
