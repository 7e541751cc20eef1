"""Which scenario a bundle uses when none is asked for: the one rule, for export, evaluate and search.

:func:`choose_default` takes the best held-out AUC: on the run's validation split
(:func:`default_from_validation`; the fused scenario's is out-of-fold) or, with ``limbscan export
--default-from-cv``, the best mean across the folds of a ``limbscan cv`` (:func:`default_from_cv`).
Without scores to compare, :func:`default_scenario` falls back on the registry's order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from limbscan.bundle.manifest import is_bundle, read_manifest
from limbscan.errors import BadInputError, LimbscanError
from limbscan.rundir import CvDir
from limbscan.scenarios import default_scenario, names


def choose_default(aucs: dict[str, float | None], cv: str | None = None) -> tuple[str, str]:
    """(scenario, why): the scenario with the best held-out AUC, from ``aucs`` (scenario -> AUC;
    None where undefined). Without ``cv`` they are validation-split AUCs: for a scenario fitted on
    validation (fused) its out-of-fold one, for the others their best epoch's (nothing was fitted
    on validation but the epoch choice). With ``cv`` (a description such as "3-fold CV in
    runs/cv") they are each scenario's mean AUC across the folds of ``limbscan cv``. A tie, or no
    AUC at all, goes to :func:`default_scenario` among the tied: a fitted scenario must beat the
    others outright."""
    from limbscan.eval.metrics import format_metric

    available = [name for name in names() if name in aucs]
    defined = {name: float(aucs[name]) for name in available if aucs[name] is not None}  # type: ignore[arg-type]
    if not defined:
        name = default_scenario(available)
        where = f"the folds of {cv}" if cv else "the validation split"
        return name, f"{name}: no AUC to compare (one class in {where}), the fallback default"
    best = max(defined.values())
    name = default_scenario([n for n, v in defined.items() if v == best])
    others = ", ".join(f"{n} {format_metric(aucs[n])}" for n in available if n != name)
    tie = [n for n, v in defined.items() if v == best and n != name]
    basis = (f"best cross-validated AUC (mean across the folds of {cv})" if cv else
             "best validation AUC (fused: out-of-fold; the others: their best epoch's)")
    why = f"{name}: {basis}, {defined[name]:.3f}"
    why += f" vs {others}" if others else ""
    if tie:
        why += f" (tied with {', '.join(tie)}: a tie goes to the later scenario not fitted on validation)"
    return name, why


def default_from_validation(val: dict[str, Any], scenarios: list[str]) -> tuple[str, str]:
    """(scenario, why): the best held-out AUC on the run's validation scores
    (``val_scores.json``, where the fused scenario's scores are out-of-fold)."""
    from limbscan.eval.metrics import auc_or_none

    return choose_default({name: auc_or_none(val["labels"], val["scores"][name]) for name in scenarios})


def default_from_cv(cv_dir: str | Path, val: dict[str, Any], scenarios: list[str]) -> tuple[str, str, dict[str, Any]]:
    """(scenario, why, record): the best mean AUC across the folds of a finished ``limbscan cv``
    folder (its ``cv.json``) that scored every scenario of the run on the run's own dataset
    (train + val pooled; the test split is never in it). ``record`` goes into the manifest."""
    folder = CvDir(cv_dir)
    if not folder.summary.is_file():
        raise LimbscanError(f"{folder.summary}: not found; `limbscan cv` writes it once every fold is finished")
    try:
        summary = json.loads(folder.summary.read_text())
        found = {name: s["auc_mean"] for name, s in summary["scenarios"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise BadInputError(folder.summary, f"not a cross-validation summary ({type(err).__name__})") from err
    missing = [name for name in scenarios if name not in found]
    if missing:
        raise LimbscanError(
            f"{cv_dir}: its cross-validation did not score {', '.join(missing)}; rerun `limbscan cv` into it with "
            f"--scenario {','.join(scenarios)} (finished stages are kept)"
        )
    main = next((d for d in val.get("training_data") or [] if d.get("role") == "main"), None)
    ran_on, trained_on = summary.get("dataset_sha256"), (main or {}).get("dataset_sha256")
    if ran_on and trained_on and ran_on != trained_on:
        raise LimbscanError(
            f"{cv_dir}: cross-validated on another dataset.json (sha256 {ran_on[:12]}…) than the run trained on "
            f"({trained_on[:12]}…); the default must be chosen on the run's own data"
        )
    k = summary.get("k")
    means = {n: found[n] for n in scenarios}
    name, why = choose_default(means, cv=f"{k}-fold CV in {folder.root.name}")
    record = {"path": str(folder.root.resolve()), "k": k, "dataset_sha256": ran_on, "auc_mean": means,
              "auc_sd": {n: summary["scenarios"][n].get("auc_sd") for n in scenarios}}
    return name, why, record


def default_for(folder: Path, val: dict[str, Any], scenarios: list[str]) -> str:
    """The scenario ``predict`` would use for a run or bundle ``folder`` scored on ``val``: a
    bundle's stored default; for a run, the one its export would choose (best held-out AUC)."""
    if is_bundle(folder):
        stored = read_manifest(folder, verify=False)["default_scenario"]
        if stored in scenarios:
            return stored
    if all(name in val["scores"] for name in scenarios):
        return default_from_validation(val, scenarios)[0]
    return default_scenario(scenarios)
