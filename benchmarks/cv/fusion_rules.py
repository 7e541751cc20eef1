"""Fusion rules measured on a CV folder's out-of-fold scores, without training anything.

    python -m benchmarks.cv.fusion_rules bench/cv3-cl-all --out benchmarks/results/fusion_rules.json

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
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks._common import write_report
from limbscan.scenarios.fused import INPUTS
from limbscan.train.cv import read_oof_scores
from limbscan.train.stages.fused import MEASURED, FusionEstimator

BASELINE = "whole-image"
AS_TRAINED = "fused"


def fold_aucs(y: np.ndarray, folds: np.ndarray, scores: np.ndarray) -> list[float]:
    return [float(roc_auc_score(y[folds == f], scores[folds == f])) for f in np.unique(folds)]


def cross_fold_scores(x: np.ndarray, y: np.ndarray, folds: np.ndarray, rule: str) -> np.ndarray:
    """Each row's score from ``rule`` fitted on the rows of every other fold (``x``: its base scores)."""
    out = np.empty(len(y))
    for f in np.unique(folds):
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
    y, folds = np.array([r["label"] for r in rows]), np.array([r["fold"] for r in rows])

    def column(name: str) -> np.ndarray:
        return np.array([r[name] for r in rows], dtype=np.float64)

    baseline = fold_aucs(y, folds, column(BASELINE))
    results = {BASELINE: summary(baseline, baseline)}
    if AS_TRAINED in rows[0]:
        results[f"{AS_TRAINED} (as cross-validated: fitted within each fold)"] = summary(
            fold_aucs(y, folds, column(AS_TRAINED)), baseline)
    others = [name for name in INPUTS if name != BASELINE]
    for n in range(1, len(others) + 1):
        for extra in itertools.combinations(others, n):
            inputs = (BASELINE, *extra)
            x = np.column_stack([column(name) for name in inputs])
            for rule in MEASURED:
                results[f"{rule}: {' + '.join(inputs)}"] = summary(
                    fold_aucs(y, folds, cross_fold_scores(x, y, folds, rule)), baseline)
    return {"cv": str(cv_dir), "k": len(baseline), "images": len(rows), "abnormal": int(y.sum()), "rules": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv", type=Path, help="a `limbscan cv` folder (holds oof_scores.csv)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fusion_rules.json"))
    args = parser.parse_args(argv)
    report = measure(args.cv)
    for name, r in report["rules"].items():
        paired = r["paired_vs_whole_image"]
        print(f"{name:60s} {r['mean']:.3f} ± {r['sd']:.3f}  (folds {', '.join(f'{a:.3f}' for a in r['fold_auc'])}; "
              f"vs whole-image {paired['mean']:+.3f} ± {paired['sd']:.3f})")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
