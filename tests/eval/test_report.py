"""limbscan.eval.report: tables carry the numbers given, undefined is said in words, HTML matches."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from limbscan.eval.report import SYNTHETIC_BANNER, metrics_html, metrics_markdown, write_report


def metrics(synthetic: bool = False) -> dict:
    m = {
        "split": "test",
        "suspected_sensitivity": 0.95,
        "n": 236,
        "n_abnormal": 36,
        "scenarios": {
            "cascade": {
                "auc": 0.9123,
                "auc_ci95": [0.8601, 0.9512],
                "sensitivity": 0.8611,
                "sensitivity_ci95": [0.7222, 0.9444],
                "specificity": 0.8899,
                "accuracy": 0.8856,
                "ppv": 0.5849,
                "npv": 0.9727,
                "f1": 0.6966,
                "kappa": 0.6321,
                "threshold": 0.4217,
                "confusion": {"tp": 31, "fn": 5, "fp": 22, "tn": 178},
                "by_body_part": {
                    "leg": {"auc": 0.9034, "n": 200},
                    "knee": {"auc": None, "n": 20, "n_abnormal": 0},
                    "hip": {"auc": 0.7123, "n": 16, "seen": False},
                },
                "by_tag": {"hardware": {"0": {"auc": 0.8766, "n": 220}, "1": {"auc": None, "n": 16, "n_abnormal": 16}}},
                "localisation": {"n": 36, "ap50": 0.4123, "top_box_hit": 0.6111},
                "operating_points": {
                    "likely": {"threshold": 0.4217, "rule": "youden", "sensitivity": 0.8611,
                               "sensitivity_ci95": [0.7222, 0.9444], "specificity": 0.8899, "specificity_ci95": None,
                               "confusion": {"tp": 31, "fn": 5, "fp": 22, "tn": 178},
                               "val_sensitivity": 0.8889, "val_specificity": 0.91},
                    "suspected": {"threshold": 0.0712, "rule": "sensitivity>=0.95", "target_sensitivity": 0.95,
                                  "note": None, "sensitivity": 0.9444, "sensitivity_ci95": [0.8611, 1.0],
                                  "specificity": 0.515, "specificity_ci95": [0.445, 0.585],
                                  "confusion": {"tp": 34, "fn": 2, "fp": 97, "tn": 103},
                                  "val_sensitivity": 1.0, "val_specificity": 0.47},
                },
            },
            "detector": {
                "auc": 0.8512,
                "auc_ci95": [0.7933, 0.9011],
                "sensitivity": 0.75,
                "specificity": 0.8,
                "accuracy": 0.7924,
                "ppv": None,
                "threshold": 0.3,
                "confusion": {"tp": 27, "fn": 9, "fp": 40, "tn": 160},
                "by_body_part": {"leg": {"auc": 0.8411, "n": 200}},
                "by_tag": {"hardware": {"0": {"auc": 0.7988, "n": 220}}},
                "operating_points": {
                    "likely": {"threshold": 0.3, "rule": "youden", "sensitivity": 0.75, "specificity": 0.8,
                               "confusion": {"tp": 27, "fn": 9, "fp": 40, "tn": 160},
                               "val_sensitivity": 0.8, "val_specificity": 0.82},
                    "suspected": None,  # a bundle exported before operating points
                },
            },
        },
        "comparisons": [
            {"a": "cascade", "b": "detector", "delong_p": 0.0312, "auc_diff": 0.0611},
            {"a": "cascade", "b": "whole-image", "delong_p": 0.0004},
        ],
        "backbones": [
            {
                "backbone": "efficientnet_lite0",
                "scenario": "cascade",
                "auc": 0.9123,
                "auc_ci95": [0.8601, 0.9512],
                "sensitivity": 0.8611,
            },
            {"backbone": "resnet50", "scenario": "cascade", "auc": 0.9345, "sensitivity": 0.8889},
        ],
    }
    if synthetic:
        m["synthetic"] = True
    return m


def table_rows(md: str, first_cell: str) -> list[list[str]]:
    """Cells of every Markdown table row whose first cell is ``first_cell``."""
    rows = []
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if cells[0] == first_cell:
                rows.append(cells)
    return rows


def all_cells(md: str) -> set[str]:
    cells = set()
    for line in md.splitlines():
        if line.startswith("| ") and not set(line) <= set("|-: "):
            cells |= {c.strip() for c in line.strip("|").split(" | ") if c.strip()}
    return cells


def test_scenario_table_holds_the_numbers_to_three_decimals():
    md = metrics_markdown(metrics())
    cascade = table_rows(md, "cascade")[0]
    assert cascade[1] == "0.912 [0.860, 0.951]"  # AUC [95 % CI]
    assert cascade[2] == "0.861 [0.722, 0.944]"  # sensitivity [95 % CI]
    assert cascade[3:] == ["0.890", "0.886", "0.585", "0.973", "0.697", "0.632", "0.422"]
    detector = table_rows(md, "detector")[0]
    assert detector[1] == "0.851 [0.793, 0.901]"
    assert detector[5] == "undefined"  # PPV None: nothing called abnormal is not 0
    assert ["cascade", "31", "5", "22", "178"] in table_rows(md, "cascade")


def test_threshold_provenance_and_split_summary():
    md = metrics_markdown(metrics())
    assert "operating threshold chosen on the validation split (youden's j)" in md.lower()
    assert "236 images, 36 abnormal, 200 normal" in md
    target = metrics() | {"threshold_method": "sensitivity", "target_sensitivity": 0.9}
    assert "(target sensitivity 0.900)" in metrics_markdown(target)
    assert "optimistic" in metrics_markdown(metrics() | {"split": "val"})


def test_operating_points_table_has_both_points_on_this_split_and_on_validation():
    md = metrics_markdown(metrics())
    assert "### Operating points: likely and suspected" in md
    rows = table_rows(md, "cascade")
    assert ["cascade", "likely (balanced)", "youden", "0.422", "0.861 [0.722, 0.944]", "0.890", "31", "5", "22", "178",
            "0.889", "0.910"] in rows
    assert ["cascade", "suspected (high sensitivity)", "sensitivity>=0.95", "0.071", "0.944 [0.861, 1.000]",
            "0.515 [0.445, 0.585]", "34", "2", "97", "103", "1.000", "0.470"] in rows
    assert ["detector", "likely (balanced)", "youden", "0.300", "0.750", "0.800", "27", "9", "40", "160", "0.800",
            "0.820"] in table_rows(md, "detector")
    assert not [r for r in table_rows(md, "detector") if "suspected" in r[1]]
    assert "No suspected point for detector" in md
    assert "sensitivity 0.950 on validation" in md  # the header says how the second point was chosen
    noted = metrics()
    noted["scenarios"]["cascade"]["operating_points"]["suspected"]["note"] = "reached only at the lowest score"
    assert "cascade, suspected: reached only at the lowest score." in metrics_markdown(noted)
    plain = metrics()
    for s in plain["scenarios"].values():
        del s["operating_points"]
    assert "Operating points" not in metrics_markdown(plain)  # older metrics.json: no table, no error


def test_comparisons_backbones_groups_and_localisation():
    md = metrics_markdown(metrics())
    assert "## AUC comparisons (DeLong test)" in md
    rows = table_rows(md, "cascade")
    assert ["cascade", "detector", "0.912", "0.851", "0.061", "0.031"] in rows
    assert ["cascade", "whole-image", "0.912", "undefined", "undefined", "< 0.001"] in rows
    assert "Tables 3 and 4" in md
    assert ["efficientnet_lite0", "cascade", "0.912 [0.860, 0.951]", "0.861"] in table_rows(md, "efficientnet_lite0")
    assert ["resnet50", "cascade", "0.934", "0.889"] in table_rows(md, "resnet50")
    assert table_rows(md, "leg")[0] == ["leg", "200", "", "0.903", "0.841"]
    assert table_rows(md, "knee")[0] == ["knee", "20", "0", "undefined (no abnormal images)", "—"]
    assert table_rows(md, "hip (unseen in training)"), "unseen body part not flagged"
    assert "Not in the model's training data: hip." in md
    # hardware: the AUC without it beside the overall one, and why
    assert table_rows(md, "all images")[0][3:] == ["0.912", "0.851"]
    assert table_rows(md, "without hardware")[0][3:] == ["0.877", "0.799"]
    assert table_rows(md, "with hardware")[0][3] == "undefined (no normal images)"
    assert "spotting metal" in md
    assert "cascade 0.877 without hardware vs 0.912 overall" in md
    assert ["cascade", "36", "0.412", "0.611"] in table_rows(md, "cascade")
    assert "backbone" not in metrics_markdown({k: v for k, v in metrics().items() if k != "backbones"})


def test_undefined_auc_is_said_in_words():
    m = {
        "split": "all",
        "n": 40,
        "n_abnormal": 0,
        "scenarios": {
            "cascade": {
                "auc": None,
                "auc_ci95": None,
                "sensitivity": None,
                "specificity": 0.95,
                "accuracy": 0.95,
                "threshold": 0.5,
                "confusion": {"tp": 0, "fn": 0, "fp": 2, "tn": 38},
            }
        },
    }
    md = metrics_markdown(m)
    row = table_rows(md, "cascade")[0]
    assert row[1] == "undefined (no abnormal images)"
    assert row[2] == "undefined" and row[3] == "0.950"
    assert "AUC is undefined on this split (no abnormal images)" in md


def test_synthetic_banner_comes_first():
    md = metrics_markdown(metrics(synthetic=True))
    first_para = md.split("\n\n")[1]
    assert SYNTHETIC_BANNER in first_para
    assert md.index(SYNTHETIC_BANNER) < md.index("|")
    assert "SYNTHETIC" not in metrics_markdown(metrics())


def test_html_has_same_content_and_img_links(tmp_path):
    m = metrics(synthetic=True)
    figures = {"roc": tmp_path / "roc.png", "gallery": Path("gallery.png")}
    page = metrics_html(m, figures)
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "HTML must be self-contained"
    text = html.unescape(page)
    missing = [c for c in all_cells(metrics_markdown(m)) if c not in text]
    assert not missing, missing
    assert SYNTHETIC_BANNER in text and text.index(SYNTHETIC_BANNER) < text.index("<table>")
    assert '<img src="roc.png"' in page and '<img src="gallery.png"' in page
    assert "undefined (no abnormal images)" in text and "0.031" in text


def test_write_report_writes_every_file(tmp_path):
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


def test_training_data_is_listed_where_the_run_recorded_it():
    m = metrics()
    assert "## Training data" not in metrics_markdown(m)
    m["training_data"] = [
        {"role": "main", "path": "/data/ds/fracatlas", "split": "train", "images": 826, "abnormal": 126,
         "body_parts": {"leg": 700, "hip": 126}},
        {"role": "auxiliary", "path": "/data/ds/fracatlas-aux", "split": "all", "images": 1615, "abnormal": 439,
         "body_parts": {"shoulder": 101, "hand": 1281, "mixed": 233}},
    ]
    md = metrics_markdown(m)
    section = md.split("## Training data", 1)[1]
    assert "| main | /data/ds/fracatlas | train | 826 | 126 | leg, hip |" in section
    assert "| auxiliary | /data/ds/fracatlas-aux | all | 1615 | 439 | hand, shoulder, mixed |" in section
    assert "never validation" in section
    assert "/data/ds/fracatlas-aux" in metrics_html(m, {})
