"""Train / val / test split: by patient, stratified by body part x label, repeatable per seed.

Stratified systematic sampling: patients are shuffled within each stratum (seeded), the strata
of one class laid end to end, and each patient goes to the split furthest below its target share
of that class's images. Shares come out right to within about one patient per class and per
stratum, however small (docs/training.md says why not scikit-learn's splitters).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from limbscan.config import SplitConfig, check_config
from limbscan.data.dataset import SPLITS, Dataset
from limbscan.errors import LimbscanError


def split_dataset(ds: Dataset, cfg: SplitConfig) -> Dataset:
    """Set every image's ``split`` (train/val/test) and return ``ds``; the caller saves it."""
    check_config(cfg)  # fractions in [0, 1] summing to 1
    fractions = np.array([cfg.train, cfg.val, cfg.test], dtype=float)
    if not ds.images:
        raise LimbscanError(f"{ds.root}: the dataset has no images to split")

    split_of = _deal(ds.images, fractions, SPLITS, cfg.seed)
    for image in ds.images:
        image["split"] = split_of[patient_key(image)]
    return ds


def assign_folds(images: list[dict], k: int, seed: int) -> dict[int, int]:
    """Image id -> fold (0 .. k-1): every patient's images in one fold, folds stratified by body
    part x label as :func:`split_dataset` stratifies its splits, each of about 1/k of each
    class's images; deterministic for a seed. Refused when a class has fewer than k patients
    (a fold would then validate on one class, where AUC is undefined)."""
    if k < 2:
        raise LimbscanError(f"cross-validation needs k >= 2 folds, got {k}")
    if not images:
        raise LimbscanError("no images to divide into folds")
    patients = _patients(images)
    for label, name in ((0, "normal patients"), (1, "abnormal patients (any abnormal image)")):
        n = sum(1 for stratum in patients.values() if stratum[0] == label)
        if n < k:
            raise LimbscanError(f"k={k} folds need at least {k} {name}, one per fold; there are {n}: choose a smaller k")
    fold_of = _deal(images, np.full(k, 1.0 / k), tuple(range(k)), seed)
    return {int(image["id"]): int(fold_of[patient_key(image)]) for image in images}


def _deal(images: list[dict], fractions: np.ndarray, bins: tuple, seed: int) -> dict[str, object]:
    """Patient key -> one of ``bins``, each bin taking its ``fractions`` share of each class."""
    patients = _patients(images)
    rng = np.random.default_rng(seed)
    bin_of: dict[str, object] = {}
    for label in sorted({stratum[0] for stratum in patients.values()}, reverse=True):
        strata: dict[tuple, list[str]] = defaultdict(list)
        for key in sorted(patients):
            if patients[key][0] == label:
                strata[patients[key]].append(key)
        names = sorted(strata)
        ordered: list[str] = []
        for i in rng.permutation(len(names)):
            ordered += [strata[names[i]][j] for j in rng.permutation(len(strata[names[i]]))]
        bin_of.update(_allocate(ordered, _sizes(images), fractions, bins))
    return bin_of


def patient_key(image: dict) -> str:
    """The patient an image belongs to, as the split and the folds group images."""
    # An image without a patient id is its own patient; the prefixes keep the two kinds apart.
    pid = image.get("patient_id")
    return f"p:{pid}" if pid not in (None, "") else f"i:{image['id']}"


def _patients(images: list[dict]) -> dict[str, tuple[int, str]]:
    """Each patient's stratum: (any image abnormal, most common body part)."""
    labels: dict[str, int] = defaultdict(int)
    parts: dict[str, Counter] = defaultdict(Counter)
    for image in images:
        key = patient_key(image)
        labels[key] = max(labels[key], int(image["label"]))
        parts[key][image.get("body_part") or "unknown"] += 1
    # Ties between parts go to the alphabetically first, so the stratum never depends on order.
    return {
        key: (labels[key], min(parts[key].items(), key=lambda kv: (-kv[1], kv[0]))[0])
        for key in labels
    }


def _sizes(images: list[dict]) -> Counter:
    return Counter(patient_key(image) for image in images)


def _allocate(ordered: list[str], sizes: Counter, fractions: np.ndarray, bins: tuple) -> dict[str, object]:
    """Give each patient in turn to the bin (split or fold) furthest below its share of images so far."""
    assigned = np.zeros(len(bins))
    out: dict[str, object] = {}
    for key in ordered:
        size = sizes[key]
        deficit = fractions * (assigned.sum() + size) - assigned
        deficit[fractions == 0] = -np.inf  # a split asked to be empty stays empty
        choice = int(np.argmax(deficit))
        assigned[choice] += size
        out[key] = bins[choice]
    return out
