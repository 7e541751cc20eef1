"""Evaluating a bundle: the stored operating points are the ones reported."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from limbscan.bundle import MANIFEST
from limbscan.errors import LimbscanError
from limbscan.eval.metrics import binary_metrics


@pytest.fixture
def bundle(tiny_bundle):
    """``tiny_run`` exported without the input gate (the session's ``tiny_bundle``). Read-only."""
    return tiny_bundle


def test_evaluate_uses_the_bundles_thresholds(bundle, tiny_run, tmp_path):
    from limbscan.eval.evaluate import evaluate

    root, _ = tiny_run
    # A bundle whose stored thresholds differ from what the validation scores would give:
    # evaluation must report at the stored ones, as predict and serve apply them.
    moved = tmp_path / "moved.limbscan"
    shutil.copytree(bundle, moved)
    m = json.loads((moved / MANIFEST).read_text())
    m["thresholds"] = {name: 0.5 + 0.01 * i for i, name in enumerate(m["scenarios"])}
    for i, name in enumerate(m["scenarios"]):
        m["operating_points"][name]["likely"]["threshold"] = m["thresholds"][name]
        m["operating_points"][name]["suspected"]["threshold"] = 0.2 + 0.01 * i
    (moved / MANIFEST).write_text(json.dumps(m))
    metrics = evaluate(moved, root, "test", tmp_path / "report", n_boot=20, gallery=False, progress=False)
    assert {n: s["threshold"] for n, s in metrics["scenarios"].items()} == m["thresholds"]
    assert metrics["threshold_method"] == "youden" and (tmp_path / "report" / "metrics.json").is_file()
    assert metrics["suspected_sensitivity"] == 0.95
    # Each point's sensitivity and specificity are the reported split's, at the stored threshold.
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    rows = (tmp_path / "report" / "scores.csv").read_text().splitlines()
    header, rows = rows[0].split(","), [r.split(",") for r in rows[1:]]
    labels = np.array([int(r[1]) for r in rows])
    for name, s in saved["scenarios"].items():
        scores = np.array([float(r[header.index(name)]) for r in rows])
        for level in ("likely", "suspected"):
            point = s["operating_points"][level]
            assert point["threshold"] == m["operating_points"][name][level]["threshold"]
            at = binary_metrics(labels, scores, point["threshold"])
            assert (point["sensitivity"], point["specificity"]) == (at.sensitivity, at.specificity)
            assert point["confusion"] == {"tp": at.tp, "fn": at.fn, "fp": at.fp, "tn": at.tn}
        assert s["operating_points"]["likely"]["sensitivity"] == s["sensitivity"]  # the balanced point's keys stay
    with pytest.raises(LimbscanError, match="export the run again"):
        evaluate(moved, root, "test", None, target_sensitivity=0.9, n_boot=20, gallery=False, progress=False)
    with pytest.raises(LimbscanError, match="--suspected-sensitivity 0.9"):
        evaluate(moved, root, "test", None, suspected_sensitivity=0.9, n_boot=20, gallery=False, progress=False)


def test_evaluate_reports_only_the_likely_point_of_a_bundle_without_operating_points(
        bundle, tiny_run, tmp_path, with_operating_points):
    from limbscan.eval.evaluate import evaluate

    root, _ = tiny_run
    old = with_operating_points(bundle, None, None)
    metrics = evaluate(old, root, "test", tmp_path / "report", n_boot=20, gallery=False, progress=False)
    assert metrics["suspected_sensitivity"] is None
    for s in metrics["scenarios"].values():
        assert s["operating_points"]["suspected"] is None
        assert s["operating_points"]["likely"]["threshold"] == s["threshold"]
    assert "No suspected point for whole-image, detector, cascade" in (tmp_path / "report" / "report.md").read_text()


def test_cli_evaluate_prints_both_operating_points(bundle, tiny_run, tmp_path):
    from typer.testing import CliRunner

    from limbscan.cli import app

    root, _ = tiny_run
    result = CliRunner().invoke(app, ["evaluate", str(bundle), str(root), "-o", str(tmp_path / "report"),
                                      "--n-boot", "20", "-q"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines at the terminal's width
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    for name, s in metrics["scenarios"].items():
        low = s["operating_points"]["suspected"]
        assert f"{name}, suspected point: sensitivity" in said and f"at threshold {low['threshold']:.3f}" in said
