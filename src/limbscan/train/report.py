"""``RUN/report.md``: what a run folder holds, in a form a reader can paste or check.

Built from ``train.json`` and ``metrics.jsonl``, so it covers every stage trained into the
folder, whichever call trained it. Validation AUCs here chose the checkpoints; they are not
test results and are labelled so.
"""

from __future__ import annotations

import json
from pathlib import Path

from limbscan.config import Config
from limbscan.data.dataset import Dataset, write_text_atomic
from limbscan.data.stats import stats_markdown, stats_table
from limbscan.train.engine import read_metrics

REPORT_FILE = "report.md"
SYNTHETIC_BANNER = (
    "> **Trained and validated on SYNTHETIC phantoms, not radiographs.** "
    "These figures show the pipeline runs; they say nothing about real images."
)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "undefined" if value is None else f"{value:.{digits}f}"


def training_markdown(out: Path, ds: Dataset, cfg: Config) -> str:
    out = Path(out)
    scenarios = json.loads((out / "train.json").read_text())["scenarios"]
    history = read_metrics(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []
    model = {
        "whole-image": f"{cfg.classifier.backbone} @ {cfg.classifier.image_size} px",
        "detector": f"Mask R-CNN, {cfg.detector.backbone}-FPN @ {cfg.detector.min_size}-{cfg.detector.max_size} px",
        "cascade": f"{cfg.classifier.backbone} on {cfg.classifier.crop_size} px crops (top {cfg.classifier.top_k})",
    }
    lines = ["# limbscan training run", ""]
    if ds.synthetic:  # said first, before any number
        lines += [SYNTHETIC_BANNER, ""]
    lines += [
        "| scenario | model | epochs | best epoch | best validation AUC | training time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in scenarios.items():
        seconds = sum(h.get("seconds", 0.0) for h in history if h["stage"] == name)
        lines.append(
            f"| {name} | {model.get(name, '')} | {r['epochs']} | {r['best_epoch']} | "
            f"{_fmt(r['best_val_auc'])} | {seconds:.0f} s |"
        )
    lines += [
        "",
        "Validation AUC chose each stage's best checkpoint; it is not a test result.",
        "",
        "## Per epoch",
        "",
        "| stage | epoch | train loss | validation AUC | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {h['stage']} | {h['epoch']} | {_fmt(h.get('train_loss'), 4)} | {_fmt(h.get('val_auc'))} | "
        f"{h.get('seconds', 0.0):.1f} |"
        for h in history
    ]
    stats = stats_markdown(stats_table(ds), title="Dataset").replace("# Dataset", "## Dataset", 1)
    return "\n".join(lines) + "\n\n" + stats


def write_training_report(out: Path, ds: Dataset, cfg: Config) -> Path:
    path = Path(out) / REPORT_FILE
    write_text_atomic(path, training_markdown(out, ds, cfg))
    return path
