"""limbscan.eval.report_sections: tables carry the numbers given, undefined is said in words,
each optional section appears only where its data does."""

from __future__ import annotations

from pathlib import Path

from limbscan.eval.report_render import to_markdown
from limbscan.eval.report_sections import SYNTHETIC_BANNER, report_blocks


def metrics_markdown(m: dict) -> str:
    return to_markdown(report_blocks(m, "limbscan evaluation", None))


def table_rows(md: str, first_cell: str) -> list[list[str]]:
    """Cells of every Markdown table row whose first cell is ``first_cell``."""
    rows = []
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            if cells[0] == first_cell:
                rows.append(cells)
    return rows



def test_scenario_table_holds_the_numbers_to_three_decimals(metrics):
    md = metrics_markdown(metrics())
    cascade = table_rows(md, "cascade")[0]
    assert cascade[1] == "0.912 [0.860, 0.951]"  # AUC [95 % CI]
    assert cascade[2] == "0.861 [0.722, 0.944]"  # sensitivity [95 % CI]
    assert cascade[3:] == ["0.890", "0.886", "0.585", "0.973", "0.697", "0.632", "0.422"]
    detector = table_rows(md, "detector")[0]
    assert detector[1] == "0.851 [0.793, 0.901]"
    assert detector[5] == "undefined"  # PPV None: nothing called abnormal is not 0
    assert ["cascade", "31", "5", "22", "178"] in table_rows(md, "cascade")


def test_threshold_provenance_and_split_summary(metrics):
    md = metrics_markdown(metrics())
    assert "operating threshold chosen on the validation split (youden's j)" in md.lower()
    assert "236 images, 36 abnormal, 200 normal" in md
    target = metrics() | {"threshold_method": "sensitivity", "target_sensitivity": 0.9}
    assert "(target sensitivity 0.900)" in metrics_markdown(target)
    assert "optimistic" in metrics_markdown(metrics() | {"split": "val"})


def test_operating_points_table_has_both_points_on_this_split_and_on_validation(metrics):
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


def test_comparisons_backbones_groups_and_localisation(metrics):
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


def test_synthetic_banner_comes_first(metrics):
    md = metrics_markdown(metrics(synthetic=True))
    first_para = md.split("\n\n")[1]
    assert SYNTHETIC_BANNER in first_para
    assert md.index(SYNTHETIC_BANNER) < md.index("|")
    assert "SYNTHETIC" not in metrics_markdown(metrics())


def test_training_data_is_listed_where_the_run_recorded_it(metrics):
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


def test_gate_timing_and_figures_appear_only_where_given(metrics):
    m = metrics()
    md = metrics_markdown(m)
    assert "## Input gate" not in md and "## Wall time" not in md and "## Figures" not in md
    m["gate"] = {"n": 236, "n_out_of_scope": 3, "by": {"header": 1, "pixels": 2}}
    m["timing"] = [{"stage": "train", "seconds": 90.0, "peak_rss_mb": 1234.4}]
    md = to_markdown(report_blocks(m, "t", {"roc": Path("/abs/roc.png"), "new": Path("sub/x.png")}))
    assert "the input gate would keep 3 out of scope (1 by their DICOM header, 2 by their pixels)" in md
    assert "| train | 1.5 | 1234 |" in md
    assert "![ROC curves, AUC in the legend (cf. the paper's Fig. 5)](roc.png)" in md  # absolute: the bare name
    assert "![new](sub/x.png)" in md
