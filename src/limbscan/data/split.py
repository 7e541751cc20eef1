"""Train / val / test split: by patient, stratified by body part x label, repeatable per seed.

Why not sklearn's splitters: ``train_test_split(stratify=...)`` refuses strata with one
member, and ``StratifiedGroupKFold`` needs at least as many patients as folds and ratios that
are multiples of 1/n_folds. Real datasets have strata of one or two patients (a rare body part
with a fracture), and small test datasets have a handful of patients. So the allocation here
is stratified systematic sampling: patients are shuffled within each stratum (numpy's seeded
generator), the strata of one class are laid end to end, and each patient goes to the split
furthest below its target share of that class's images. The shares then come out right per
class to within one patient, and per stratum to within about one patient, however small.
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

    patients = _patients(ds.images)
    rng = np.random.default_rng(cfg.seed)
    split_of: dict[str, str] = {}
    for label in sorted({stratum[0] for stratum in patients.values()}, reverse=True):
        strata: dict[tuple, list[str]] = defaultdict(list)
        for key in sorted(patients):
            if patients[key][0] == label:
                strata[patients[key]].append(key)
        names = sorted(strata)
        ordered: list[str] = []
        for i in rng.permutation(len(names)):
            ordered += [strata[names[i]][j] for j in rng.permutation(len(strata[names[i]]))]
        split_of.update(_allocate(ordered, _sizes(ds.images), fractions))

    for image in ds.images:
        image["split"] = split_of[_patient_key(image)]
    return ds


def _patient_key(image: dict) -> str:
    # An image without a patient id is its own patient; the prefixes keep the two kinds apart.
    pid = image.get("patient_id")
    return f"p:{pid}" if pid not in (None, "") else f"i:{image['id']}"


def _patients(images: list[dict]) -> dict[str, tuple[int, str]]:
    """Each patient's stratum: (any image abnormal, most common body part)."""
    labels: dict[str, int] = defaultdict(int)
    parts: dict[str, Counter] = defaultdict(Counter)
    for image in images:
        key = _patient_key(image)
        labels[key] = max(labels[key], int(image["label"]))
        parts[key][image.get("body_part") or "unknown"] += 1
    # Ties between parts go to the alphabetically first, so the stratum never depends on order.
    return {
        key: (labels[key], min(parts[key].items(), key=lambda kv: (-kv[1], kv[0]))[0])
        for key in labels
    }


def _sizes(images: list[dict]) -> Counter:
    return Counter(_patient_key(image) for image in images)


def _allocate(ordered: list[str], sizes: Counter, fractions: np.ndarray) -> dict[str, str]:
    """Give each patient in turn to the split furthest below its share of images so far."""
    assigned = np.zeros(len(SPLITS))
    out: dict[str, str] = {}
    for key in ordered:
        size = sizes[key]
        deficit = fractions * (assigned.sum() + size) - assigned
        deficit[fractions == 0] = -np.inf  # a split asked to be empty stays empty
        choice = int(np.argmax(deficit))
        assigned[choice] += size
        out[key] = SPLITS[choice]
    return out
