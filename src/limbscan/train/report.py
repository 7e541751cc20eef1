"""``RUN/report.md``: what a run folder holds, in a form a reader can paste or check.

Built from ``train.json`` and ``metrics.jsonl``, so it covers every stage trained into the
folder, whichever call trained it. Validation AUCs here chose the checkpoints; they are not
test results and are labelled so.
"""

from __future__ import annotations

import json
from pathlib import Path

from limbscan.config import Config, config_to_dict
from limbscan.data.dataset import Dataset
from limbscan.data.stats import stats_markdown, stats_table
from limbscan.rundir import RunDir
from limbscan.scenarios import info, names
from limbscan.train.engine import read_metrics
from limbscan.utils.files import write_text_atomic

SYNTHETIC_BANNER = (
    "> **Trained and validated on SYNTHETIC phantoms, not radiographs.** "
    "These figures show the pipeline runs; they say nothing about real images."
)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "undefined" if value is None else f"{value:.{digits}f}"


def training_markdown(out: Path, ds: Dataset, cfg: Config) -> str:
    run = RunDir(out)
    scenarios = json.loads(run.summary.read_text())["scenarios"]
    history = read_metrics(run.metrics) if run.metrics.is_file() else []
    tree = config_to_dict(cfg)
    model = {name: info(name).describe(tree) for name in names()}
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
    path = RunDir(out).report
    write_text_atomic(path, training_markdown(out, ds, cfg))
    return path
