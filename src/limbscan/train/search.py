"""Random hyperparameter search on the validation split (the paper's tuning method).

Each trial samples learning rate, weight decay, input size, crop margin and augmentation
strength from :class:`limbscan.config.SearchConfig`, trains on a short budget into
``OUT/trial_NN/``, and is ranked by validation AUC. The test split is never looked at.
A finished trial leaves ``result.json``; rerunning the same command skips it, so a killed
search continues where it stopped.
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
    dataset: Path, base: Config, out: Path, trials: int | None = None, seed: int | None = None, progress: bool = True
) -> list[dict[str, Any]]:
    """Run the trials, write ``search.csv``, ``search.json`` and ``best.yaml``; return the ranked rows."""
    from limbscan.train.runner import train  # the heavy imports only when a search runs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials = trials or base.search.trials
    rng = np.random.default_rng(base.train.seed if seed is None else seed)
    scenario = ranking_scenario(base)
    rows = []
    for i in range(trials):
        cfg, sampled = sample_trial(base, rng)  # drawn even when skipped, so trial i is always the same
        trial_dir = out / f"trial_{i:02d}"
        trial = RunDir(trial_dir)
        done = trial_dir / RESULT_FILE
        if done.is_file():
            row = json.loads(done.read_text())
        else:
            # A trial's config is drawn again, identically, on a rerun: it is saved, never read back.
            save_config(cfg, trial.config)
            results = train(dataset, cfg, trial_dir, resume=trial.metrics.is_file(), progress=progress)
            val_auc = getattr(results.get(scenario), "best_auc", None)
            row = {"trial": i, "dir": trial_dir.name, "val_auc": val_auc, **sampled}
            write_json_atomic(done, row)
        rows.append(row)
    ranked = sorted(rows, key=lambda r: -1.0 if r["val_auc"] is None else r["val_auc"], reverse=True)
    if ranked[0]["val_auc"] is None:
        raise LimbscanError(f"{out}: no trial gave a validation AUC (does the val split hold both classes?)")
    _write_tables(out, ranked, scenario)
    write_text_atomic(out / "best.yaml", RunDir(out / ranked[0]["dir"]).config.read_text())
    return ranked


def _write_tables(out: Path, ranked: list[dict[str, Any]], scenario: str) -> None:
    write_json_atomic(out / "search.json", {"ranked_by": f"{scenario} validation AUC", "trials": ranked})
    with open(out / "search.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ranked[0]))
        writer.writeheader()
        writer.writerows(ranked)
