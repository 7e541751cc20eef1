"""``limbscan compare``: several evaluations of the same images set side by side.

The paper compares backbones (its Tables 3 and 4, Figure 5): train one run per backbone,
evaluate each on the same split, then compare the reports. Each report folder holds
``metrics.json`` (the thresholds were chosen on validation when it was made) and ``scores.csv``
(per image id: label and scores); this module only reads them, so nothing is re-scored and no
threshold is re-chosen. AUCs of two entries are compared with the DeLong test, which holds
because every entry scored the very same images.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from limbscan.errors import LimbscanError
from limbscan.eval.evaluate import SCORES_FILE
from limbscan.eval.metrics import delong_test

ROW_KEYS = ("auc", "auc_ci95", "sensitivity", "sensitivity_ci95", "specificity", "specificity_ci95",
            "accuracy", "accuracy_ci95", "threshold")


def _read_report(folder: Path) -> tuple[dict[str, Any], list[int], np.ndarray, dict[str, np.ndarray]]:
    metrics_path, scores_path = folder / "metrics.json", folder / SCORES_FILE
    for path in (metrics_path, scores_path):
        if not path.is_file():
            raise LimbscanError(f"{path}: missing (make the report with `limbscan evaluate`, which writes it)")
    try:
        metrics = json.loads(metrics_path.read_text())
        with scores_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError) as err:
        raise LimbscanError(f"{folder}: cannot read the report ({err})") from err
    if not rows:
        raise LimbscanError(f"{scores_path}: no images")
    names = [k for k in rows[0] if k not in ("image_id", "label")]
    ids = [int(r["image_id"]) for r in rows]
    labels = np.asarray([int(r["label"]) for r in rows])
    scores = {n: np.asarray([float(r[n]) for r in rows]) for n in names}
    return metrics, ids, labels, scores


def _entry_name(folder: Path, scenario: str, metrics: dict[str, Any], taken: set[str]) -> str:
    backbone = (metrics.get("backbones_used") or {}).get(scenario)
    name = f"{backbone} ({scenario})" if backbone else f"{folder.name} ({scenario})"
    return name if name not in taken else f"{folder.name}: {name}"


def compare(reports: Sequence[str | Path], out: str | Path | None = None, scenario: str | None = None
            ) -> dict[str, Any]:
    """One report from several: a row per (report, scenario), ROC curves together, DeLong for every pair.

    ``scenario`` keeps only that scenario of each report (e.g. ``cascade`` for the paper's
    per-backbone table of its best scenario). The reports must cover the same images.
    """
    from limbscan.eval.report import write_report

    folders = [Path(r) for r in reports]
    if len(folders) < 2:
        raise LimbscanError("compare needs at least two report folders")
    first_ids: list[int] | None = None
    first_labels: np.ndarray | None = None
    entries: dict[str, dict[str, Any]] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rows: list[dict[str, Any]] = []
    head: dict[str, Any] = {}
    for folder in folders:
        metrics, ids, labels, scores = _read_report(folder)
        if first_ids is None:
            first_ids, first_labels, head = ids, labels, metrics
        elif ids != first_ids or not np.array_equal(labels, first_labels):
            raise LimbscanError(f"{folder}: scores other images than {folders[0]} (same dataset and split needed)")
        wanted = [scenario] if scenario else list(scores)
        for name in wanted:
            if name not in scores or name not in metrics.get("scenarios", {}):
                raise LimbscanError(f"{folder}: no {name!r} scenario in this report (it has {', '.join(scores)})")
            key = _entry_name(folder, name, metrics, set(entries))
            entries[key] = metrics["scenarios"][name]
            curves[key] = (labels, scores[name])
            backbone = (metrics.get("backbones_used") or {}).get(name, folder.name)
            rows.append({"backbone": backbone, "scenario": name,
                         **{k: metrics["scenarios"][name].get(k) for k in ROW_KEYS}})
    assert first_labels is not None
    comparisons = []
    for a, b in itertools.combinations(entries, 2):
        d = delong_test(first_labels, curves[a][1], curves[b][1])
        comparisons.append({"a": a, "b": b, "auc_diff": d["diff"], "delong_p": d["p"]})
    result = {
        "split": head.get("split"), "dataset": head.get("dataset"), "n": len(first_ids or []),
        "n_abnormal": int(first_labels.sum()), "synthetic": head.get("synthetic", False),
        "threshold_method": head.get("threshold_method"), "compared_reports": [str(f) for f in folders],
        "scenarios": entries, "backbones": rows, "comparisons": comparisons,
    }
    if out is not None:
        write_report(Path(out), result, curves, title="limbscan comparison")
    return result
