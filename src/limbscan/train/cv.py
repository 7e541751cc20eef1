"""``limbscan cv``: k-fold cross-validation by patient over the train + validation images.

The pooled images are dealt into k folds by patient, stratified by body part x label
(:func:`limbscan.data.split.assign_folds`); the test split is never read. Fold i is an ordinary
run on a view of the dataset (:func:`fold_view`) validating on fold i; every image is then scored
by the fold that did not train on it. ``cv.json`` holds the per-fold AUCs, their mean and sd and
the pooled out-of-fold AUC; finished folds are kept, and ``folds.json`` pins the assignment
(docs/training.md, "Cross-validation").
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from limbscan.config import Config, check_config, config_to_dict, load_config, save_config
from limbscan.data.dataset import DATASET_FILE, Dataset
from limbscan.data.split import assign_folds, patient_key
from limbscan.errors import LimbscanError
from limbscan.eval.metrics import auc_or_none, format_metric
from limbscan.operating_points import SUSPECTED_SENSITIVITY
from limbscan.rundir import CvDir, RunDir
from limbscan.scenarios import parse_scenarios, with_needs
from limbscan.utils.files import sha256_file, write_json_atomic, write_text_atomic

POOLED_SPLITS = ("train", "val")
SD_DDOF = 1  # the sd across folds is the sample sd


def pool_images(ds: Dataset) -> tuple[list[dict], set[int]]:
    """(the train + val images, the test image ids); refused when some image has no split."""
    unsplit = [im for im in ds.images if im.get("split") not in (*POOLED_SPLITS, "test")]
    if unsplit:
        raise LimbscanError(f"{ds.root}: {len(unsplit)} image(s) have no split; split the dataset first "
                            "(`limbscan data split`): cross-validation pools train + val and never reads test")
    pool = [im for im in ds.images if im["split"] in POOLED_SPLITS]
    if not pool:
        raise LimbscanError(f"{ds.root}: no train or val images to cross-validate on")
    return pool, {int(im["id"]) for im in ds.images if im["split"] == "test"}


def fold_view(ds: Dataset, fold_of: dict[int, int], fold: int) -> Dataset:
    """The dataset as fold ``fold`` trains on it: only the pooled images (``fold_of``'s keys), fold
    ``fold`` as the val split and every other fold as train; the same folder, so the same files
    and cache. ``ds`` is left as it was."""
    images = [{**im, "split": "val" if fold_of[int(im["id"])] == fold else "train"}
              for im in ds.images if int(im["id"]) in fold_of]
    annotations = [a for a in ds.coco["annotations"] if int(a["image_id"]) in fold_of]
    return Dataset(ds.root, {**ds.coco, "info": dict(ds.info), "images": images, "annotations": annotations})


def dataset_sha256(ds: Dataset) -> str | None:
    path = Path(ds.root) / DATASET_FILE
    return sha256_file(path) if path.is_file() else None


def cross_validate(
    ds: Dataset | str | Path,
    cfg: Config,
    out: str | Path,
    k: int = 5,
    scenarios: Sequence[str] | str | None = None,
    seed: int | None = None,
    progress: bool = True,
    target_sensitivity: float | None = None,
    suspected_sensitivity: float = SUSPECTED_SENSITIVITY,
    n_boot: int = 2000,
    folds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Train the scenarios on each of ``k`` patient folds of the train + val images into
    ``out/fold-<i>/``; write ``folds.json``, ``oof_scores.csv`` and ``cv.json`` and return ``cv.json``.

    ``scenarios``: names or a comma list (default ``cfg.train.scenario``; what they need trains too).
    ``seed``: the fold assignment's (default ``cfg.data.split.seed``). ``target_sensitivity`` /
    ``suspected_sensitivity``: as ``limbscan export`` takes them. ``folds``: train only these (0-based);
    until every fold is finished the result holds ``k``, ``finished`` and ``pending`` instead.
    """
    from limbscan.train.runner import load_auxiliary, train  # the heavy imports only when CV runs

    main = ds if isinstance(ds, Dataset) else Dataset.load(ds)
    cfg = copy.deepcopy(cfg)
    if scenarios is not None:
        cfg.train.scenario = scenarios if isinstance(scenarios, str) else ",".join(scenarios)
    check_config(cfg)
    names = with_needs(parse_scenarios(cfg.train.scenario))
    train_cfg = copy.deepcopy(cfg)
    train_cfg.train.scenario = ",".join(names)
    seed = cfg.data.split.seed if seed is None else int(seed)
    load_auxiliary(cfg, main)  # against the whole dataset: no auxiliary image may be a test image

    pool, test_ids = pool_images(main)
    fold_of = assign_folds(pool, k, seed)
    folder = CvDir(out)
    folder.root.mkdir(parents=True, exist_ok=True)
    sha = dataset_sha256(main)
    is_main = int(os.environ.get("RANK", "0")) == 0
    _pin_folds(folder, main, pool, fold_of, k, seed, sha, is_main)
    _pin_config(folder, cfg, is_main)

    chosen = range(k) if folds is None else sorted({int(f) for f in folds})
    if any(not 0 <= f < k for f in chosen):
        raise LimbscanError(f"--fold {', '.join(map(str, chosen))}: folds are numbered 0 to {k - 1}")
    say = _Say(progress and is_main)
    for i in chosen:
        run = folder.fold(i)
        view = fold_view(main, fold_of, i)
        if {int(im["id"]) for im in view.images} & test_ids:  # never: the pool holds no test image
            raise LimbscanError(f"fold {i}: a test image reached the fold's data")
        val_ids = _val_ids(fold_of, i)
        n_train = len(fold_of) - len(val_ids)
        if _fold_done(run, names, val_ids):
            say(f"fold {i + 1}/{k}: finished earlier, kept ({run.root})")
            continue
        say(f"fold {i + 1}/{k}: training {', '.join(names)} on {n_train} images"
            f"{' (+ auxiliary)' if cfg.data.auxiliary else ''}, validating on {len(val_ids)}")
        started = time.perf_counter()
        if is_main:
            run.root.mkdir(parents=True, exist_ok=True)
            save_config(train_cfg, run.config)
        results = train(view, train_cfg, run.root, resume=run.metrics.is_file(), progress=progress)
        aucs = ", ".join(f"{name} {format_metric(r.best_auc)}" for name, r in results.items())
        say(f"fold {i + 1}/{k}: best validation AUC {aucs} ({time.perf_counter() - started:.0f} s)")

    pending = [i for i in range(k) if not _fold_done(folder.fold(i), names, _val_ids(fold_of, i))]
    if pending:  # only with ``folds``: every fold above was trained
        return {"k": k, "finished": [i for i in range(k) if i not in pending], "pending": pending}
    summary = summarize(main, folder, fold_of, names, test_ids, n_boot=n_boot,
                        target_sensitivity=target_sensitivity, suspected_sensitivity=suspected_sensitivity)
    summary.update({"k": k, "seed": seed, "dataset": str(Path(main.root).resolve()), "dataset_sha256": sha,
                    "config": config_to_dict(cfg)})
    if is_main:
        write_json_atomic(folder.summary, summary)
    return summary


def summarize(
    ds: Dataset,
    folder: CvDir,
    fold_of: dict[int, int],
    names: list[str],
    test_ids: set[int] | frozenset[int] = frozenset(),
    n_boot: int = 2000,
    target_sensitivity: float | None = None,
    suspected_sensitivity: float = SUSPECTED_SENSITIVITY,
) -> dict[str, Any]:
    """Read every fold's ``val_scores.json``, write ``oof_scores.csv`` and return the figures of ``cv.json``."""
    k = max(fold_of.values()) + 1
    scores: dict[int, dict[str, float]] = {}
    fold_auc: dict[str, list[float | None]] = {name: [] for name in names}
    folds = []
    for i in range(k):
        path = folder.fold(i).val_scores
        val = json.loads(path.read_text())
        ids = [int(v) for v in val["image_ids"]]
        wrong = [v for v in ids if fold_of.get(v) != i]
        if set(ids) & set(test_ids) or wrong:
            raise LimbscanError(f"{path}: scores images outside fold {i} (first: {wrong[0] if wrong else ''}); "
                                "the fold folders do not match folds.json")
        missing = [name for name in names if name not in val["scores"]]
        if missing:
            raise LimbscanError(f"{path}: no scores for {', '.join(missing)}")
        labels = [int(y) for y in val["labels"]]
        for name in names:
            fold_auc[name].append(auc_or_none(labels, val["scores"][name]))
        for j, image_id in enumerate(ids):
            scores[image_id] = {name: float(val["scores"][name][j]) for name in names}
        folds.append({"fold": i, "dir": folder.fold(i).root.name, "val_images": len(ids),
                      "val_abnormal": sum(labels), "train_images": sum(1 for f in fold_of.values() if f != i)})

    # Out-of-fold rows in the dataset's order; an image the cache could not decode has none.
    images = [im for im in ds.images if int(im["id"]) in scores]
    unscored = sorted(set(fold_of) - set(scores))
    _write_oof(folder.oof_scores, images, fold_of, scores, names)

    labels = np.asarray([int(im["label"]) for im in images])
    groups = [patient_key(im) for im in images]
    parts = [im.get("body_part") or "unknown" for im in images]
    out: dict[str, Any] = {
        "n_images": len(images),
        "n_abnormal": int(labels.sum()),
        "test_images_excluded": len(test_ids),
        "unscored_images": unscored,
        "sd": f"sample sd across folds (ddof={SD_DDOF})",
        "folds": folds,
        "scenarios": {},
    }
    for name in names:
        s = np.asarray([scores[int(im["id"])][name] for im in images])
        out["scenarios"][name] = {
            **_fold_stats(fold_auc[name]),
            **_pooled(labels, s, groups, n_boot, target_sensitivity, suspected_sensitivity),
            "by_body_part": _by_part(labels, s, parts),
        }
    return out


def _fold_stats(aucs: list[float | None]) -> dict[str, Any]:
    defined = np.asarray([a for a in aucs if a is not None], dtype=float)
    return {
        "fold_auc": aucs,
        "auc_mean": float(defined.mean()) if defined.size else None,
        "auc_sd": float(defined.std(ddof=SD_DDOF)) if defined.size > SD_DDOF else None,
        "folds_with_auc": int(defined.size),
    }


def _pooled(labels: np.ndarray, scores: np.ndarray, groups: list[str], n_boot: int,
            target_sensitivity: float | None, suspected_sensitivity: float) -> dict[str, Any]:
    from limbscan.eval.metrics import MetricsInputError, binary_metrics, bootstrap_ci
    from limbscan.operating_points import choose_operating_points

    try:
        points = choose_operating_points(labels, scores, target_sensitivity=target_sensitivity,
                                         suspected_sensitivity=suspected_sensitivity)
    except MetricsInputError as err:
        return {"oof_auc": None, "oof_auc_ci95": None, "operating_points": None, "note": str(err)}
    likely = points["likely"]["threshold"]
    ci = bootstrap_ci(labels, scores, likely, groups=groups, n_boot=n_boot, metrics=("auc",))["auc"]
    # The points' own figures are out-of-fold ones here: named so, not "val_".
    renamed = {level: {("oof_" + key[4:] if key.startswith("val_") else key): v for key, v in point.items()}
               for level, point in points.items()}
    return {"oof_auc": binary_metrics(labels, scores, likely).auc, "oof_auc_ci95": list(ci) if ci else None,
            "operating_points": renamed}


def _by_part(labels: np.ndarray, scores: np.ndarray, parts: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for part in sorted(set(parts)):
        idx = [i for i, p in enumerate(parts) if p == part]
        y = labels[idx]
        out[part] = {"auc": auc_or_none(y, scores[idx]), "n": len(idx), "n_abnormal": int(y.sum())}
    return out


def _write_oof(path: Path, images: list[dict], fold_of: dict[int, int], scores: dict[int, dict[str, float]],
               names: list[str]) -> None:
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["image_id", "fold", "label", "body_part", *names])
    for im in images:
        image_id = int(im["id"])
        writer.writerow([image_id, fold_of[image_id], int(im["label"]), im.get("body_part") or "unknown",
                         *(scores[image_id][name] for name in names)])
    write_text_atomic(path, text.getvalue())


def read_oof_scores(path: str | Path) -> list[dict[str, Any]]:
    """``oof_scores.csv`` as rows: ids, folds and labels as ints, scores as floats."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    fixed = ("image_id", "fold", "label", "body_part")
    return [{**{key: int(row[key]) for key in ("image_id", "fold", "label")}, "body_part": row["body_part"],
             **{key: float(v) for key, v in row.items() if key not in fixed}} for row in rows]


def _val_ids(fold_of: dict[int, int], fold: int) -> set[int]:
    return {im_id for im_id, f in fold_of.items() if f == fold}


def _fold_done(run: RunDir, names: list[str], val_ids: set[int]) -> bool:
    """The fold's val_scores.json is there, scores every asked scenario and only this fold's images."""
    if not run.val_scores.is_file():
        return False
    try:
        val = json.loads(run.val_scores.read_text())
    except json.JSONDecodeError:
        return False
    ids = {int(v) for v in val.get("image_ids") or []}
    return bool(ids) and ids <= val_ids and all(name in (val.get("scores") or {}) for name in names)


def _pin_folds(folder: CvDir, ds: Dataset, pool: list[dict], fold_of: dict[int, int], k: int, seed: int,
               sha: str | None, write: bool) -> None:
    """Write ``folds.json``, or check that the one there describes these very folds."""
    if folder.folds.is_file():
        old = json.loads(folder.folds.read_text())
        same = (old.get("k") == k and old.get("seed") == seed and old.get("dataset_sha256") == sha
                and {int(i): int(f) for i, f in (old.get("image_fold") or {}).items()} == fold_of)
        if not same:
            raise LimbscanError(
                f"{folder.root}: its folds were made with k={old.get('k')}, seed {old.get('seed')} on "
                f"{old.get('dataset')} (dataset.json sha256 {str(old.get('dataset_sha256'))[:12]}); this call asks "
                f"k={k}, seed {seed} on {Path(ds.root).resolve()} (sha256 {str(sha)[:12]}). Folds are never mixed: "
                f"use another -o, or delete {folder.root} to start over"
            )
        return
    if not write:
        return
    counts = []
    for i in range(k):
        members = [im for im in pool if fold_of[int(im["id"])] == i]
        counts.append({"fold": i, "images": len(members), "abnormal": sum(int(im["label"]) for im in members),
                       "patients": len({patient_key(im) for im in members})})
    write_json_atomic(folder.folds, {
        "k": k,
        "seed": seed,
        "dataset": str(Path(ds.root).resolve()),
        "dataset_sha256": sha,
        "pooled_splits": list(POOLED_SPLITS),
        "grouped_by": "patient",
        "stratified_by": "body part x label",
        "folds": counts,
        "image_fold": {str(i): f for i, f in sorted(fold_of.items())},  # the dataset's image ids
    })


def _pin_config(folder: CvDir, cfg: Config, write: bool) -> None:
    """Write ``config.yaml``, or check that the one there trains the folds as ``cfg`` does
    (``train.scenario`` aside: scenarios may be added to finished folds)."""
    if folder.config.is_file():
        old, new = config_to_dict(load_config(folder.config)), config_to_dict(cfg)
        for tree in (old, new):
            tree["train"].pop("scenario")
        changed = _differences(old, new)
        if changed:
            raise LimbscanError(
                f"{folder.root}: its folds were trained with another config ({', '.join(changed[:3])} differ"
                f"{'' if len(changed) <= 3 else ', ...'}); folds are never mixed: use another -o, or the same config"
            )
    if write:
        save_config(cfg, folder.config)


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b))
                for d in _differences(a.get(key), b.get(key), f"{where}.{key}" if where else key)]
    return [] if a == b else [where]


class _Say:
    """One line per fold on stderr (the engine draws its progress bars there too)."""

    def __init__(self, enabled: bool):
        from rich.console import Console

        self.console = Console(stderr=True) if enabled else None

    def __call__(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)


__all__ = ["cross_validate", "dataset_sha256", "fold_view", "pool_images", "read_oof_scores", "summarize"]
