"""A lever against its baseline, fold by fold, from two or more ``limbscan cv`` folders on the same folds.

    python -m benchmarks.cv.cv_pairs bench/cv3-cl-all bench/cv3-cl-aux --out benchmarks/results/cv_aux.json

The first folder is the baseline; each other one is a lever. For every fold that both finished
(its ``val_scores.json``) and every scenario both scored: the fold's validation AUC in each, the
difference, and DeLong's test on the paired scores (the same validation images, two models).
Per scenario: each side's fold AUCs with mean ± sd, the paired difference's mean ± sd, and how
many folds went up. Folders must hold the very same folds (``folds.json``, image by image) and
each fold the same validation images, else the script stops and names them. A fold that one
folder has not finished is listed as pending, never guessed; cross-validation summaries
(``limbscan cv``'s ``cv.json``) are not needed, so a CV that runs a fold per session can be
compared as its folds land.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import write_report
from limbscan.eval.metrics import delong_test
from limbscan.rundir import CvDir


def folds_of(cv_dir: Path) -> dict[str, Any]:
    """The folder's ``folds.json``; a folder without one is refused by name."""
    path = CvDir(cv_dir).folds
    if not path.is_file():
        raise SystemExit(f"{cv_dir}: no folds.json: not a `limbscan cv` folder")
    return json.loads(path.read_text())


def fold_scores(cv_dir: Path, k: int) -> dict[int, dict[str, Any]]:
    """The folds this folder finished: fold -> its ``val_scores.json``."""
    paths = {i: CvDir(cv_dir).fold(i).val_scores for i in range(k)}
    return {i: json.loads(p.read_text()) for i, p in paths.items() if p.is_file()}


def compare(base_dir: Path, lever_dir: Path) -> dict[str, Any]:
    base_folds, lever_folds = folds_of(base_dir), folds_of(lever_dir)
    if (base_folds.get("k"), base_folds.get("image_fold")) != (lever_folds.get("k"), lever_folds.get("image_fold")):
        raise SystemExit(f"{lever_dir} and {base_dir} dealt different folds (folds.json): their AUCs do not pair")
    k = int(base_folds["k"])
    base, lever = fold_scores(base_dir, k), fold_scores(lever_dir, k)
    both = sorted(set(base) & set(lever))
    per_fold, scenarios = [], {}
    for i in both:
        b, v = base[i], lever[i]
        if b["image_ids"] != v["image_ids"] or b["labels"] != v["labels"]:
            raise SystemExit(f"{lever_dir}/fold-{i} and {base_dir}/fold-{i} validate on different images")
        labels = np.asarray(b["labels"], dtype=int)
        row = {"fold": i, "images": len(labels), "abnormal": int(labels.sum()), "scenarios": {}}
        for name in [n for n in b["scores"] if n in v["scores"]]:
            test = delong_test(labels, v["scores"][name], b["scores"][name])  # it computes both AUCs too
            row["scenarios"][name] = {"base": test["auc_b"], "lever": test["auc_a"], "delong_p": test["p"]}
            scenarios.setdefault(name, []).append(row["scenarios"][name])
        per_fold.append(row)
    summary = {}
    for name, rows in scenarios.items():
        b = np.array([r["base"] for r in rows])
        v = np.array([r["lever"] for r in rows])
        summary[name] = {"folds": len(rows), "base": _spread(b), "lever": _spread(v),
                         "paired_gain": _spread(v - b), "folds_up": int(np.sum(v > b))}
    return {"base": str(base_dir), "lever": str(lever_dir), "k": k, "folds_compared": both,
            "pending": {"base": sorted(set(range(k)) - set(base)), "lever": sorted(set(range(k)) - set(lever))},
            "per_fold": per_fold, "scenarios": summary}


def _spread(values: np.ndarray) -> dict[str, Any]:
    return {"fold": [round(float(x), 6) for x in values], "mean": float(values.mean()),
            "sd": float(values.std(ddof=1)) if len(values) > 1 else None}


def _fmt(spread: dict[str, Any], sign: str = "") -> str:
    sd = "" if spread["sd"] is None else f" ± {spread['sd']:.3f}"
    return f"{spread['mean']:{sign}.3f}{sd}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the baseline's `limbscan cv` folder")
    parser.add_argument("levers", type=Path, nargs="+", help="`limbscan cv` folders on the same folds, one lever each")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cv_pairs.json"))
    args = parser.parse_args(argv)
    rows = [compare(args.base, lever) for lever in args.levers]
    for r in rows:
        pending = {side: f for side, f in r["pending"].items() if f}
        print(f"{r['lever']} vs {r['base']}: folds {r['folds_compared']}"
              + (f" (pending: {pending})" if pending else ""))
        for name, s in r["scenarios"].items():
            ps = ", ".join(f"{f['scenarios'][name]['delong_p']:.3g}" for f in r["per_fold"] if name in f["scenarios"])
            print(f"  {name}: {_fmt(s['base'])} -> {_fmt(s['lever'])}, paired {_fmt(s['paired_gain'], '+')}, "
                  f"up in {s['folds_up']} of {s['folds']}, DeLong p by fold {ps}")
    write_report(args.out, {"pairs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
