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
from limbscan.eval.metrics import format_metric
from limbscan.rundir import RunDir
from limbscan.scenarios import info, names
from limbscan.train.records import read_metrics
from limbscan.utils.files import write_text_atomic

SYNTHETIC_BANNER = (
    "> **Trained and validated on SYNTHETIC phantoms, not radiographs.** "
    "These figures show the pipeline runs; they say nothing about real images."
)
AUXILIARY_SYNTHETIC_BANNER = "> **The auxiliary training data includes SYNTHETIC phantoms, not radiographs.**"


def training_markdown(out: Path, ds: Dataset, cfg: Config) -> str:
    run = RunDir(out)
    summary = json.loads(run.summary.read_text())
    scenarios = summary["scenarios"]
    training_data = summary.get("training_data") or []
    history = read_metrics(run.metrics) if run.metrics.is_file() else []
    tree = config_to_dict(cfg)
    model = {name: info(name).describe(tree) for name in names()}
    lines = ["# limbscan training run", ""]
    if ds.synthetic:  # said first, before any number
        lines += [SYNTHETIC_BANNER, ""]
    elif any(d.get("synthetic") for d in training_data):
        lines += [AUXILIARY_SYNTHETIC_BANNER, ""]
    lines += [
        "| scenario | model | epochs | best epoch | best validation AUC | training time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, r in scenarios.items():
        seconds = sum(h.get("seconds", 0.0) for h in history if h["stage"] == name)
        lines.append(
            f"| {name} | {model.get(name, '')} | {r['epochs']} | {r['best_epoch']} | "
            f"{format_metric(r['best_val_auc'])} | {seconds:.0f} s |"
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
        f"| {h['stage']} | {h['epoch']} | {format_metric(h.get('train_loss'), 4)} | {format_metric(h.get('val_auc'))} | "
        f"{h.get('seconds', 0.0):.1f} |"
        for h in history
    ]
    lines += _fusion_lines(history)
    data_lines = _training_data_lines(training_data, summary.get("auxiliary_share"))
    lines += ["", *data_lines] if data_lines else []
    stats = stats_markdown(stats_table(ds), title="Dataset").replace("# Dataset", "## Dataset", 1)
    return "\n".join(lines) + "\n\n" + stats


def _fusion_lines(history: list[dict]) -> list[str]:
    """The rules a stage fitted without gradients (the fused scenario's) was measured by: each
    rule's cross-validated AUC within the validation split."""
    lines = []
    for h in history:
        rules = [k.removeprefix("cv_auc_") for k in h if k.startswith("cv_auc_") and not k.endswith("_sd")]
        if rules:
            measured = ", ".join(f"{r} {format_metric(h[f'cv_auc_{r}'])} ± {format_metric(h.get(f'cv_auc_{r}_sd'))}" for r in rules)
            lines += ["", f"{h['stage']}: cross-validated AUC of each fusion rule within the validation split "
                          f"(mean ± sd over reshuffled stratified k-folds): {measured}. Its validation AUC above "
                          "is out-of-fold: no weight saw the image it scored."]
    return lines


def _training_data_lines(training_data: list[dict], share: float | None) -> list[str]:
    """Every dataset trained on, its role and hash, and the body parts trained on."""
    if not training_data:
        return []
    lines = [
        "## Training data",
        "",
        "| role | dataset | split used | images | abnormal | body parts | dataset.json sha256 |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for d in training_data:
        parts = ", ".join(f"{part} {n}" for part, n in (d.get("body_parts") or {}).items())
        digest = (d.get("dataset_sha256") or "not found")[:16]
        lines.append(f"| {d['role']} | `{d['path']}` | {d['split']} | {d['images']} | {d['abnormal']} | "
                     f"{parts} | `{digest}` |")
    trained_parts = sorted({p for d in training_data for p in d.get("body_parts") or {}})
    lines += ["", f"Body parts trained on: {', '.join(trained_parts)}."]
    if len(training_data) > 1:
        how = "their natural share" if share is None else f"{share:.0%} of each batch"
        lines.append(f"Auxiliary images are training images of every stage ({how}), never validation or test; "
                     "pixel statistics and thresholds come from the main dataset.")
    return lines


def write_training_report(out: Path, ds: Dataset, cfg: Config) -> Path:
    path = RunDir(out).report
    write_text_atomic(path, training_markdown(out, ds, cfg))
    return path
