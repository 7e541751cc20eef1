"""limbscan.eval.report: the report folder (metrics.json, report.md, report.html, figures) and scores.csv."""

from __future__ import annotations

import json
import re

import numpy as np
from PIL import Image

from limbscan.eval.report import metrics_html, metrics_markdown, write_report, write_scores


def test_write_report_writes_every_file(tmp_path, metrics):
    rng = np.random.default_rng(0)
    y = (rng.random(80) < 0.3).astype(int)
    scores = np.clip(0.35 * y + 0.65 * rng.random(80), 0, 1)
    m = metrics(synthetic=True)
    m["scenarios"]["cascade"]["auc"] = np.float64(0.9123)  # numpy types and tuples come in from callers
    m["scenarios"]["cascade"]["auc_ci95"] = (np.float64(0.8601), np.float64(0.9512))
    m["scenarios"]["detector"]["kappa"] = float("nan")
    gallery = [{"image": 0.3 * np.ones((60, 40)), "pred_boxes": [[5, 5, 30, 40]], "true_boxes": [], "title": "FP 0.7"}]
    out = tmp_path / "report"
    paths = write_report(out, m, {"cascade": (y, scores), "detector": (y, rng.random(80))}, gallery)
    expected = {"metrics.json", "report.md", "report.html"} | {
        f"{stem}.{ext}" for stem in ("roc", "confusion", "calibration", "gallery") for ext in ("png", "svg")
    }
    assert set(paths) == expected
    assert all(p.is_file() and p.parent == out for p in paths.values())
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["scenarios"]["cascade"]["auc_ci95"] == [0.8601, 0.9512]
    assert saved["scenarios"]["detector"]["kappa"] is None  # NaN would make invalid JSON
    assert saved["synthetic"] is True
    page = (out / "report.html").read_text()
    for src in re.findall(r'<img src="([^"]+)"', page):
        with Image.open(out / src) as im:
            assert im.format == "PNG"
    assert "(roc.png)" in (out / "report.md").read_text()
    # the ROC legend carries the CI from metrics.json
    assert "0.860" in (out / "roc.svg").read_text()
    # no gallery asked for: no gallery files
    paths = write_report(tmp_path / "plain", metrics(), {"cascade": (y, scores)})
    assert "gallery.png" not in paths and not (tmp_path / "plain" / "gallery.png").exists()



def test_the_markdown_and_html_faces_render_the_same_blocks(metrics):
    m = metrics()
    md, page = metrics_markdown(m, "Title"), metrics_html(m, {}, "Title")
    assert md.startswith("# Title\n") and "<h1>Title</h1>" in page
    assert "Per body part" in md and "<h2>Per body part</h2>" in page


def test_scores_csv_holds_ids_labels_and_each_scenarios_score(tmp_path):
    path = write_scores(tmp_path / "scores.csv", [7, 9], {"a": ([1, 0], [0.9, 0.25]), "b": ([1, 0], [0.5, 0.125])})
    assert path.read_text() == "image_id,label,a,b\n7,1,0.900000,0.500000\n9,0,0.250000,0.125000\n"
