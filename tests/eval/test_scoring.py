"""Scoring a trained run reproduces what training measured on the same images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from limbscan.data.dataset import Dataset
from limbscan.errors import LimbscanError
from limbscan.scenarios import info
from limbscan.scenarios.scoring import score_run, trained_scenarios, validation_scores
from limbscan.train.stages.base import auc_or_none


@pytest.fixture(scope="module")
def trained_run(tiny_run):
    return tiny_run


def test_val_scores_reproduce_the_training_validation_auc(trained_run):
    root, out = trained_run
    ds = Dataset.load(root)
    val = ds.split_images("val")
    scored = score_run(out, ds, val)
    assert list(scored) == trained_scenarios(out) == ["whole-image", "detector", "cascade", "fused"]
    summary = json.loads((out / "train.json").read_text())["scenarios"]
    held_out = validation_scores(out, ds, val)["scores"]
    for name, s in scored.items():
        assert s.image_ids == [im["id"] for im in val]
        assert np.all((s.scores >= 0) & (s.scores <= 1))
        expected = summary[name]["best_val_auc"]
        # A scenario fitted on validation (fused) is judged by its out-of-fold scores there.
        got = auc_or_none(s.labels, held_out[name] if info(name).fitted_on_validation else s.scores)
        assert (got is None and expected is None) or got == pytest.approx(expected, abs=1e-6), name


def test_cascade_crops_the_detectors_top_boxes(trained_run):
    root, out = trained_run
    ds = Dataset.load(root)
    images = ds.split_images("test")
    scored = score_run(out, ds, images, scenarios=["detector", "cascade"])
    for image in images:
        crops = scored["cascade"].boxes[image["id"]]
        assert 1 <= len(crops["boxes"]) <= 2  # top_k = 2; the whole image when the detector found nothing
        assert crops["scores"] == sorted(crops["scores"], reverse=True)
        i = scored["cascade"].image_ids.index(image["id"])
        detector = scored["detector"].scores[i]  # the tiny run fuses them: classifier.cascade_score = geomean
        assert scored["cascade"].scores[i] == pytest.approx((crops["scores"][0] * detector) ** 0.5)
        for x0, y0, x1, y1 in crops["boxes"]:
            assert 0 <= x0 < x1 <= image["width"] + 1e-3 and 0 <= y0 < y1 <= image["height"] + 1e-3


def test_missing_stages_are_named(tmp_path, trained_run):
    root, _ = trained_run
    with pytest.raises(LimbscanError, match="no trained scenario"):
        score_run(tmp_path, Dataset.load(root), [])


def test_evaluate_reports_test_with_thresholds_from_validation(trained_run, tmp_path):
    from limbscan.eval.evaluate import evaluate
    from limbscan.eval.metrics import choose_threshold
    from limbscan.operating_points import choose_operating_points

    root, out = trained_run
    val = json.loads((out / "val_scores.json").read_text())
    metrics = evaluate(out, root, "test", tmp_path / "report", n_boot=200, progress=False)
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["n"] == len(Dataset.load(root).split_images("test"))
    assert saved["synthetic"] is True
    for name, m in metrics["scenarios"].items():
        expected = choose_threshold(np.asarray(val["labels"]), np.asarray(val["scores"][name]))
        assert m["threshold"] == pytest.approx(expected)
        assert m["tp"] + m["fn"] + m["fp"] + m["tn"] == saved["n"]
        # a run folder: both operating points chosen on its val_scores.json, as export chooses them
        chosen = choose_operating_points(val["labels"], val["scores"][name])
        points = saved["scenarios"][name]["operating_points"]
        for level in ("likely", "suspected"):
            assert points[level]["threshold"] == pytest.approx(chosen[level]["threshold"])
            assert points[level]["rule"] == chosen[level]["rule"]
            assert points[level]["val_sensitivity"] == pytest.approx(chosen[level]["val_sensitivity"])
            assert sum(points[level]["confusion"].values()) == saved["n"]
        assert points["suspected"]["confusion"]["tp"] >= points["likely"]["confusion"]["tp"]
    assert saved["suspected_sensitivity"] == 0.95
    assert {(c["a"], c["b"]) for c in metrics["comparisons"]} == {
        ("whole-image", "detector"), ("whole-image", "cascade"), ("detector", "cascade"),
        ("whole-image", "fused"), ("detector", "fused"), ("cascade", "fused")}
    for name in ("report.md", "report.html", "roc.png", "confusion.png", "calibration.png"):
        assert (tmp_path / "report" / name).is_file(), name
    assert "SYNTHETIC" in (tmp_path / "report" / "report.md").read_text().upper()
    assert saved["backbones_used"] == {"whole-image": "mobilenetv3_small_050", "detector": "mobilenetv3_small_050",
                                       "cascade": "mobilenetv3_small_050 + mobilenetv3_small_050",
                                       "fused": "none of its own: fuses whole-image, detector and cascade"}
    scores = (tmp_path / "report" / "scores.csv").read_text().splitlines()
    assert scores[0] == "image_id,label,whole-image,detector,cascade,fused" and len(scores) == saved["n"] + 1


def test_evaluate_refuses_the_threshold_split_and_empty_splits(trained_run, tmp_path):
    from limbscan.eval.evaluate import evaluate

    root, out = trained_run
    with pytest.raises(LimbscanError, match="threshold is chosen on this val split"):
        evaluate(out, root, "val", None, progress=False)
    with pytest.raises(LimbscanError, match="split is empty"):
        evaluate(out, root, "nonexistent", None, progress=False)


def test_pipeline_trains_all_three_and_reports_their_cost(trained_run, tmp_path, tiny_config):
    import shutil

    from limbscan.eval.pipeline import run_pipeline

    root, out = trained_run
    # A copy of the trained run: the pipeline resumes it, so only evaluation runs here.
    shutil.copytree(out, tmp_path / "bench" / "run")
    metrics = run_pipeline(root, tiny_config, tmp_path / "bench", n_boot=100, progress=False)
    stages = [t["stage"] for t in metrics["timing"]]
    assert stages == ["train whole-image", "train detector", "train cascade", "train fused", "export bundle",
                      "evaluate (test)", "total"]
    assert all(t["seconds"] >= 0 and t["peak_rss_mb"] > 0 for t in metrics["timing"])
    assert set(metrics["scenarios"]) == {"whole-image", "detector", "cascade", "fused"}
    assert (tmp_path / "bench" / "model.limbscan" / "bundle.json").is_file()
    text = (tmp_path / "bench" / "report" / "report.md").read_text()
    assert "Wall time and peak memory" in text and "evaluate (test)" in text


def test_a_run_without_val_scores_gets_them_from_the_datasets_val_split(trained_run, tmp_path):
    import shutil

    from limbscan.eval.evaluate import evaluate

    root, out = trained_run
    with_file = evaluate(out, root, "test", None, n_boot=50, progress=False)
    shutil.copytree(out, tmp_path / "run")
    (tmp_path / "run" / "val_scores.json").unlink()
    without = evaluate(tmp_path / "run", root, "test", None, n_boot=50, progress=False)
    for name, m in with_file["scenarios"].items():
        assert without["scenarios"][name]["threshold"] == pytest.approx(m["threshold"], abs=1e-5)
