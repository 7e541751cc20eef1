"""Patient-level, stratified, seeded 70/10/20 split."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from limbscan.config import SplitConfig
from limbscan.data.dataset import SPLITS, Dataset
from limbscan.data.split import assign_folds, patient_key, split_dataset
from limbscan.errors import LimbscanError


def make_dataset(tmp_path, spec, seed=0) -> Dataset:
    """``spec``: (body part, label, n patients, images per patient or None for no patient id)."""
    rng = np.random.default_rng(seed)
    images = []
    for part, label, n_patients, per_patient in spec:
        for p in range(n_patients):
            pid = None if per_patient is None else f"{part}-{label}-{p}"
            for _ in range(per_patient or 1):
                # Multi-image patients sometimes mix labels: the patient is abnormal if any image is.
                lab = label if per_patient is None or rng.random() > 0.2 else 1 - label
                images.append({"id": len(images) + 1, "file_name": f"x{len(images)}.png", "width": 8,
                               "height": 8, "body_part": part, "label": lab, "patient_id": pid,
                               "split": None, "attributes": {}})
    return Dataset(tmp_path, {"images": images, "annotations": [], "categories": []})


SPEC = [("leg", 0, 700, None), ("leg", 1, 120, None), ("hip", 0, 60, 3), ("hip", 1, 20, 2),
        ("knee", 1, 3, 1), ("toe", 1, 1, None), ("foot", 0, 2, 4)]


def _splits(ds):
    return [im["split"] for im in ds.images]


def test_every_image_split_and_no_patient_crosses(tmp_path):
    ds = split_dataset(make_dataset(tmp_path, SPEC), SplitConfig(seed=3))
    assert set(_splits(ds)) == set(SPLITS)
    by_patient = defaultdict(set)
    for im in ds.images:
        if im["patient_id"] is not None:
            by_patient[im["patient_id"]].add(im["split"])
    assert by_patient and all(len(s) == 1 for s in by_patient.values())


def test_deterministic_per_seed(tmp_path):
    a = _splits(split_dataset(make_dataset(tmp_path, SPEC), SplitConfig(seed=0)))
    b = _splits(split_dataset(make_dataset(tmp_path, SPEC), SplitConfig(seed=0)))
    c = _splits(split_dataset(make_dataset(tmp_path, SPEC), SplitConfig(seed=1)))
    assert a == b
    assert a != c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ratios_per_class(tmp_path, seed):
    ds = split_dataset(make_dataset(tmp_path, SPEC), SplitConfig(seed=seed))
    for label in (0, 1):
        counts = Counter(im["split"] for im in ds.images if im["label"] == label)
        n = sum(counts.values())
        for split, target in zip(SPLITS, (0.7, 0.1, 0.2)):
            assert abs(counts[split] / n - target) < 0.03, (label, counts)


def test_many_tiny_strata_still_hit_the_class_ratios(tmp_path):
    # Rounding each 1-3 image stratum on its own would send them all to train.
    parts = [f"part{i}" for i in range(40)]
    spec = [(p, 1, 1 + i % 3, None) for i, p in enumerate(parts)] + [(p, 0, 2, None) for p in parts]
    ds = split_dataset(make_dataset(tmp_path, spec), SplitConfig(seed=5))
    for label in (0, 1):
        counts = Counter(im["split"] for im in ds.images if im["label"] == label)
        n = sum(counts.values())
        assert abs(counts["train"] / n - 0.7) < 0.05 and abs(counts["test"] / n - 0.2) < 0.05
        assert counts["val"] >= 1


@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_datasets(tmp_path, n):
    ds = split_dataset(make_dataset(tmp_path, [("knee", 1, n, None)]), SplitConfig(seed=0))
    assert all(s in SPLITS for s in _splits(ds))


def test_fractions_are_checked_and_zero_means_empty(tmp_path):
    ds = make_dataset(tmp_path, SPEC)
    with pytest.raises(LimbscanError, match="sum to 1"):
        split_dataset(ds, SplitConfig(train=0.8, val=0.1, test=0.2))
    split_dataset(ds, SplitConfig(train=0.8, val=0.0, test=0.2))
    assert "val" not in _splits(ds)
    with pytest.raises(LimbscanError, match="no images"):
        split_dataset(make_dataset(tmp_path, []), SplitConfig())


def test_split_survives_save_and_load(tmp_path):
    ds = split_dataset(make_dataset(tmp_path, SPEC), SplitConfig(seed=0))
    ds.save()
    assert _splits(Dataset.load(tmp_path)) == _splits(ds)


@pytest.mark.parametrize(("k", "seed"), [(3, 0), (5, 1), (10, 2)])
def test_folds_partition_by_patient_with_each_class_in_equal_shares(tmp_path, k, seed):
    images = make_dataset(tmp_path, SPEC).images
    fold_of = assign_folds(images, k, seed)
    assert set(fold_of) == {im["id"] for im in images} and set(fold_of.values()) == set(range(k))
    by_patient = defaultdict(set)
    for im in images:
        by_patient[patient_key(im)].add(fold_of[im["id"]])
    assert all(len(folds) == 1 for folds in by_patient.values())
    largest = max(Counter(patient_key(im) for im in images).values())
    for label in (0, 1):
        counts = Counter(fold_of[im["id"]] for im in images if im["label"] == label)
        n = sum(counts.values())
        # each fold within about one patient of its share of the class (multi-image patients mix labels)
        assert all(abs(counts[f] - n / k) <= largest + 1 for f in range(k)), (label, counts)
    # stratified by body part too: a 60-patient body part is spread across every fold
    assert {fold_of[im["id"]] for im in images if im["body_part"] == "hip"} == set(range(k))


def test_folds_repeat_for_a_seed_and_need_k_patients_per_class(tmp_path):
    images = make_dataset(tmp_path, SPEC).images
    assert assign_folds(images, 5, 0) == assign_folds(images, 5, 0)
    assert assign_folds(images, 5, 0) != assign_folds(images, 5, 1)
    few = make_dataset(tmp_path, [("leg", 0, 10, None), ("leg", 1, 2, None)]).images
    assert set(assign_folds(few, 2, 0).values()) == {0, 1}
    with pytest.raises(LimbscanError, match="k=3 folds need at least 3 abnormal patients"):
        assign_folds(few, 3, 0)
    with pytest.raises(LimbscanError, match="k >= 2"):
        assign_folds(images, 1, 0)
