"""Fusion rules measured on a CV folder's out-of-fold scores, without training anything.

    python benchmarks/fusion_rules.py bench/cv3-cl-all --out benchmarks/results/fusion_rules.json

``limbscan cv … --scenario all`` leaves every train + val image's out-of-fold score from each
scenario in ``oof_scores.csv``. Here each fold's images are scored by a fusion rule fitted on the
other folds' out-of-fold scores (the fused scenario's own estimator, ``FusionEstimator``), for
the rules the fused stage knows (logistic on the logits, rank average) on every subset of the
base scenarios with whole-image in it; each rule's fold AUCs, their mean and sd, and the paired
difference from whole-image alone. The ``fused`` column of the CV (fitted within each fold's
validation part, as ``make bench`` fits it on the validation split) is reported beside them.
A fold's models differ from the others', so a rule fitted across folds sees scores of three
scales: this measures what more fitting data could buy, not a scenario ``predict`` runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from limbscan.scenarios.fused import INPUTS, MEASURED, FusionEstimator
from limbscan.train.cv import read_oof_scores

BASELINE = "whole-image"
AS_TRAINED = "fused"


def fold_aucs(rows: list[dict], scores: np.ndarray) -> list[float]:
    folds, y = np.array([r["fold"] for r in rows]), np.array([r["label"] for r in rows])
    return [float(roc_auc_score(y[folds == f], scores[folds == f])) for f in sorted(set(folds))]


def cross_fold_scores(rows: list[dict], inputs: tuple[str, ...], rule: str) -> np.ndarray:
    """Each row's score from ``rule`` fitted on the rows of every other fold."""
    x = np.array([[r[name] for name in inputs] for r in rows], dtype=np.float64)
    y, folds = np.array([r["label"] for r in rows]), np.array([r["fold"] for r in rows])
    out = np.empty(len(rows))
    for f in sorted(set(folds)):
        held = folds == f
        out[held] = FusionEstimator(rule).fit(x[~held], y[~held]).decision_function(x[held])
    return out


def summary(aucs: list[float], baseline: list[float]) -> dict:
    diff = np.subtract(aucs, baseline)
    return {"fold_auc": [round(a, 6) for a in aucs], "mean": float(np.mean(aucs)), "sd": float(np.std(aucs, ddof=1)),
            "paired_vs_whole_image": {"mean": float(diff.mean()), "sd": float(diff.std(ddof=1))}}


def measure(cv_dir: Path) -> dict:
    rows = read_oof_scores(cv_dir / "oof_scores.csv")
    missing = [name for name in INPUTS if name not in rows[0]]
    if missing:
        raise SystemExit(f"{cv_dir / 'oof_scores.csv'}: no {', '.join(missing)} column: run `limbscan cv` with "
                         "--scenario all (or every one of the fused scenario's inputs)")
    baseline = fold_aucs(rows, np.array([r[BASELINE] for r in rows]))
    results = {BASELINE: summary(baseline, baseline)}
    if AS_TRAINED in rows[0]:
        results[f"{AS_TRAINED} (as cross-validated: fitted within each fold)"] = summary(
            fold_aucs(rows, np.array([r[AS_TRAINED] for r in rows])), baseline)
    others = [name for name in INPUTS if name != BASELINE]
    for n in range(1, len(others) + 1):
        for extra in itertools.combinations(others, n):
            inputs = (BASELINE, *extra)
            for rule in MEASURED:
                results[f"{rule}: {' + '.join(inputs)}"] = summary(
                    fold_aucs(rows, cross_fold_scores(rows, inputs, rule)), baseline)
    return {"cv": str(cv_dir), "k": len(baseline), "images": len(rows),
            "abnormal": int(sum(r["label"] for r in rows)), "rules": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv", type=Path, help="a `limbscan cv` folder (holds oof_scores.csv)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fusion_rules.json"))
    args = parser.parse_args(argv)
    report = measure(args.cv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, r in report["rules"].items():
        paired = r["paired_vs_whole_image"]
        print(f"{name:60s} {r['mean']:.3f} ± {r['sd']:.3f}  (folds {', '.join(f'{a:.3f}' for a in r['fold_auc'])}; "
              f"vs whole-image {paired['mean']:+.3f} ± {paired['sd']:.3f})")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
