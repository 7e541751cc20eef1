"""Random hyperparameter search on the validation split (the paper's tuning method), or by
cross-validation.

Each trial samples from :class:`limbscan.config.SearchConfig`, trains a short budget into
``OUT/trial_NN/`` and is ranked by validation AUC, or with ``folds=K`` by the mean AUC of a
K-fold cross-validation (:func:`limbscan.train.cv.cross_validate`, the same folds every trial).
The test split is never read. A finished trial leaves ``result.json``, so a rerun resumes.
"""

from __future__ import annotations

import copy
import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from limbscan.config import Config, save_config
from limbscan.errors import LimbscanError
from limbscan.rundir import RunDir
from limbscan.utils.files import write_json_atomic, write_text_atomic

RESULT_FILE = "result.json"
VAL_KEY, CV_KEY = "val_auc", "cv_auc_mean"  # what a trial is ranked by: validation AUC, or mean fold AUC


def sample_trial(base: Config, rng: np.random.Generator) -> tuple[Config, dict[str, Any]]:
    """One trial's config: ``base`` with the searched keys drawn from ``base.search``."""
    space = base.search
    cfg = copy.deepcopy(base)

    def log_uniform(lo: float, hi: float) -> float:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    lr = log_uniform(*space.lr_backbone)
    # The heads keep the paper's ratio to the backbone (1e-4 : 1e-3).
    ratio = base.train.lr_heads / base.train.lr_backbone
    cfg.train.lr_backbone, cfg.train.lr_heads = lr, lr * ratio
    cfg.train.weight_decay = log_uniform(*space.weight_decay)
    cfg.classifier.image_size = int(rng.choice(space.image_size))
    cfg.classifier.crop_margin = float(rng.uniform(*space.crop_margin))
    strength = float(rng.uniform(*space.augment_strength))
    aug = cfg.data.augment
    aug.rotate_degrees = base.data.augment.rotate_degrees * strength
    aug.shift_fraction = min(0.5, base.data.augment.shift_fraction * strength)
    lo, hi = base.data.augment.scale_range
    aug.scale_range = (max(0.1, 1 - (1 - lo) * strength), 1 + (hi - 1) * strength)
    cfg.train.epochs = space.epochs
    cfg.train.detector_epochs = min(space.epochs, base.train.detector_epochs)
    sampled = {
        "lr_backbone": cfg.train.lr_backbone,
        "lr_heads": cfg.train.lr_heads,
        "weight_decay": cfg.train.weight_decay,
        "image_size": cfg.classifier.image_size,
        "crop_margin": cfg.classifier.crop_margin,
        "augment_strength": strength,
    }
    return cfg, sampled


def ranking_scenario(cfg: Config) -> str:
    """The scenario a search ranks by: the one a bundle of the trained scenarios would use by default
    (the paper's best, the cascade, when all are trained)."""
    from limbscan.scenarios import default_scenario, parse_scenarios

    return default_scenario(parse_scenarios(cfg.train.scenario))


def random_search(
    dataset: Path,
    base: Config,
    out: Path,
    trials: int | None = None,
    seed: int | None = None,
    progress: bool = True,
    folds: int | None = None,
) -> list[dict[str, Any]]:
    """Run the trials, write ``search.csv``, ``search.json`` and ``best.yaml``; return the ranked rows.

    ``folds``: score each trial by ``folds``-fold cross-validation (mean fold AUC, ``cv_auc_mean``)
    instead of on the validation split (``val_auc``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials = trials or base.search.trials
    rng = np.random.default_rng(base.train.seed if seed is None else seed)
    scenario = ranking_scenario(base)
    key = CV_KEY if folds else VAL_KEY
    rows = []
    for i in range(trials):
        cfg, sampled = sample_trial(base, rng)  # drawn even when skipped, so trial i is always the same
        trial_dir = out / f"trial_{i:02d}"
        trial = RunDir(trial_dir)
        done = trial_dir / RESULT_FILE
        if done.is_file():
            row = json.loads(done.read_text())
            if key not in row or row.get("folds") != folds:
                raise LimbscanError(f"{done}: this trial was scored {_scored_by(row.get('folds'))}; this search "
                                    f"asks {_scored_by(folds)}: use another -o")
        else:
            # A trial's config is drawn again, identically, on a rerun: it is saved, never read back.
            save_config(cfg, trial.config)
            row = {"trial": i, "dir": trial_dir.name, **_score_trial(dataset, cfg, trial_dir, scenario, folds, progress),
                   **sampled}
            write_json_atomic(done, row)
        rows.append(row)
    ranked = sorted(rows, key=lambda r: -1.0 if r[key] is None else r[key], reverse=True)
    if ranked[0][key] is None:
        raise LimbscanError(f"{out}: no trial gave a validation AUC (does the val split hold both classes?)"
                            if not folds else f"{out}: no trial gave a mean fold AUC")
    _write_tables(out, ranked, scenario, folds)
    write_text_atomic(out / "best.yaml", RunDir(out / ranked[0]["dir"]).config.read_text())
    return ranked


def _score_trial(dataset: Path, cfg: Config, trial_dir: Path, scenario: str, folds: int | None,
                 progress: bool) -> dict[str, Any]:
    if folds:
        # Every trial gets the same folds: the assignment's seed is data.split.seed, not searched.
        from limbscan.train.cv import cross_validate  # the heavy imports only when a search runs

        found = cross_validate(dataset, cfg, trial_dir, k=folds, progress=progress)["scenarios"][scenario]
        return {CV_KEY: found["auc_mean"], "cv_auc_sd": found["auc_sd"], "folds": folds}
    from limbscan.train.runner import train

    results = train(dataset, cfg, trial_dir, resume=RunDir(trial_dir).metrics.is_file(), progress=progress)
    return {VAL_KEY: getattr(results.get(scenario), "best_auc", None)}


def _scored_by(folds: int | None) -> str:
    return f"by {folds}-fold cross-validation" if folds else "on the validation split"


def _write_tables(out: Path, ranked: list[dict[str, Any]], scenario: str, folds: int | None = None) -> None:
    by = f"{scenario} mean AUC over {folds} cross-validation folds" if folds else f"{scenario} validation AUC"
    write_json_atomic(out / "search.json", {"ranked_by": by, "trials": ranked})
    with open(out / "search.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ranked[0]))
        writer.writeheader()
        writer.writerows(ranked)
