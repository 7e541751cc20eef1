"""The whole-image stage's test-time flip (``classifier.tta_flip``) measured on CV folders, without
training anything.

    python -m benchmarks.cv.tta_flip bench/cv3-cl-recipe bench/cv3-cl-letterbox \
        --out benchmarks/results/tta_flip.json

Each fold of a ``limbscan cv`` folder holds the whole-image model it trained and the fold's
validation scores (``val_scores.json``). Here every fold's model scores its own validation images
twice, from the same checkpoint: the image alone, and the mean of the image's and its mirror's
probabilities (what ``tta_flip: true`` does). The scores of the setting the fold trained with
must equal its ``val_scores.json`` (else the folder and this code disagree, and it stops). Per
folder: each setting's fold AUCs, mean and sd, and the paired difference (flip average minus
image alone). Folders on the same folds share their validation images, so their pairs are
not independent evidence; models trained differently are, for what the flip does to a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks._common import write_report
from benchmarks.cv.cv_pairs import folds_of
from limbscan.data.dataset import Dataset
from limbscan.rundir import CvDir, RunDir
from limbscan.scenarios.base import ImageInput, ModelStore, score_images

NAME = "whole-image"
SETTINGS = {"image alone": False, "flip average": True}
DECIMALS, AGREE = 6, 1e-4  # val_scores.json's rounding, and how far the same model may stray from it


def score_fold(ds: Dataset, by_id: dict[int, dict], run: RunDir) -> dict:
    """One fold: its validation labels and its model's scores under each setting (``by_id``: ``ds``'s images by id)."""
    val = json.loads(run.val_scores.read_text())
    images = [by_id[int(i)] for i in val["image_ids"]]
    scenario = ModelStore(run.root).scenario(NAME)
    trained_with = scenario.tta_flip
    scores = {}
    for label, flip in SETTINGS.items():
        scenario.tta_flip = flip
        inputs = (ImageInput.from_dataset(ds, im, scenario.cache_side) for im in images)
        found = score_images({NAME: scenario}, inputs)[NAME]
        # Rounded as val_scores.json rounds them: the trained setting's AUCs are then cv.json's, ties and all.
        scores[label] = np.round(np.array([f.score for f in found], dtype=np.float64), DECIMALS)
    recorded = np.asarray(val["scores"][NAME], dtype=np.float64)
    as_trained = scores["flip average" if trained_with else "image alone"]
    gap = float(np.abs(as_trained - recorded).max())
    if gap > AGREE:
        raise SystemExit(f"{run.val_scores}: its {NAME} scores differ from this model's by up to {gap:.2g} "
                         f"(tta_flip {trained_with}); the folder and this code disagree")
    return {"labels": np.asarray(val["labels"], dtype=int), "scores": scores, "trained_with_flip": trained_with}


def measure(cv_dir: Path) -> dict:
    pinned = folds_of(cv_dir)
    ds = Dataset.load(pinned["dataset"])
    by_id = {int(im["id"]): im for im in ds.images}
    folds = [score_fold(ds, by_id, CvDir(cv_dir).fold(i)) for i in range(int(pinned["k"]))]
    settings = {}
    for label in SETTINGS:
        aucs = [float(roc_auc_score(f["labels"], f["scores"][label])) for f in folds]
        settings[label] = {"fold_auc": [round(a, 6) for a in aucs], "mean": float(np.mean(aucs)),
                           "sd": float(np.std(aucs, ddof=1))}
    diff = np.subtract(settings["flip average"]["fold_auc"], settings["image alone"]["fold_auc"])
    return {"cv": str(cv_dir), "k": len(folds), "images": sum(len(f["labels"]) for f in folds),
            "trained_with_flip": [f["trained_with_flip"] for f in folds], "settings": settings,
            "paired_flip_minus_alone": {"fold": [round(float(d), 6) for d in diff], "mean": float(diff.mean()),
                                        "sd": float(diff.std(ddof=1))}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv", type=Path, nargs="+", help="`limbscan cv` folders that trained the whole-image scenario")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tta_flip.json"))
    args = parser.parse_args(argv)
    rows = [measure(cv) for cv in args.cv]
    for r in rows:
        s, d = r["settings"], r["paired_flip_minus_alone"]
        print(f"{r['cv']}: image alone {s['image alone']['mean']:.3f} ± {s['image alone']['sd']:.3f}, "
              f"flip average {s['flip average']['mean']:.3f} ± {s['flip average']['sd']:.3f}, "
              f"paired {d['mean']:+.4f} ± {d['sd']:.4f} (folds {', '.join(f'{v:+.4f}' for v in d['fold'])})")
    write_report(args.out, {"folders": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
