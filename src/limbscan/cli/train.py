"""``limbscan train``, ``search`` and ``cv``: train the scenarios, search their settings,
cross-validate them by patient.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from limbscan.cli import render
from limbscan.cli.options import AuxOpt, ConfigOpt, DatasetArg, Overrides, Quiet, ScenariosOpt, load_settings
from limbscan.operating_points import SUSPECTED_SENSITIVITY

verbs = typer.Typer()


@verbs.command("train")
def train_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, metrics.jsonl, config.yaml).")],
    config: ConfigOpt = None,
    overrides: Overrides = None,
    scenario: ScenariosOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN's last checkpoints.")] = False,
    aux: AuxOpt = None,
    quiet: Quiet = False,
) -> None:
    """Train the whole-image baseline, the detector and / or the cascade on DS's train split."""
    from limbscan.config import save_config
    from limbscan.rundir import RunDir
    from limbscan.train.runner import train

    run = RunDir(out)
    # --resume with no -c goes on with the settings the run started with: the library's rule.
    cfg = load_settings(config, list(overrides or []) + ([f"train.scenario={scenario}"] if scenario else []), aux,
                        run=run, resume=resume)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    render.trained(train(dataset, cfg, out, resume=resume, progress=not quiet), out)


@verbs.command("search")
def search_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Search folder (one subfolder per trial).")],
    config: ConfigOpt = None,
    overrides: Overrides = None,
    trials: Annotated[Optional[int], typer.Option(help="Number of trials (default: search.trials).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Sampling seed (default: train.seed).")] = None,
    folds: Annotated[Optional[int], typer.Option(
        "--folds", help="Score each trial by K-fold cross-validation by patient over train + val (as `limbscan cv`, "
                        "the same folds for every trial) and rank by mean fold AUC; default: the validation split.")
    ] = None,
    aux: AuxOpt = None,
    quiet: Quiet = False,
) -> None:
    """Random search, ranked by validation AUC (or mean fold AUC with --folds); writes search.csv, search.json and best.yaml."""
    from limbscan.train.search import random_search

    cfg = load_settings(config, overrides, aux)
    ranked = random_search(dataset, cfg, out, trials=trials, seed=seed, progress=not quiet, folds=folds)
    render.searched(ranked, folds, out)


CV_HELP = (
    "K-fold cross-validation by patient over DS's train + val images; the test split is never read.\n\n"
    "Folds are stratified by body part x label. Each fold trains the scenarios with that fold as validation "
    "(OUT/fold-<i>/, a normal run folder; auxiliary data joins training only) and scores it from its best "
    "checkpoint. Reports each scenario's AUC as mean +- sd across folds and the pooled out-of-fold AUC with its CI "
    "(cv.json, oof_scores.csv); operating points are chosen on the out-of-fold scores. Rerunning the same command "
    "keeps finished folds and resumes the rest; another k, seed, dataset or config into the same OUT is refused."
)


@verbs.command("cv", help=CV_HELP)
def cv_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="CV folder: fold-<i>/ runs, folds.json, oof_scores.csv, cv.json.")],
    config: ConfigOpt = None,
    overrides: Overrides = None,
    k: Annotated[int, typer.Option("-k", "--folds", help="Number of folds (k >= 2; 5 by default).")] = 5,
    scenario: ScenariosOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Fold assignment seed (default: data.split.seed, 0).")] = None,
    aux: AuxOpt = None,
    target_sensitivity: Annotated[
        Optional[float], typer.Option(help="Likely point: reach this out-of-fold sensitivity (default: Youden's J).")
    ] = None,
    suspected_sensitivity: Annotated[
        float, typer.Option(help="Suspected point: reach this out-of-fold sensitivity.")
    ] = SUSPECTED_SENSITIVITY,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples (of patients) for the pooled AUC's 95 % CI.")] = 2000,
    fold: Annotated[Optional[list[int]], typer.Option(
        "--fold", help="Train only this fold (0 to k-1; repeat for several), e.g. one process per GPU or machine "
                       "on the same OUT; the call that finds every fold finished writes the summary.")] = None,
    quiet: Quiet = False,
) -> None:
    from limbscan.rundir import CvDir
    from limbscan.train.cv import cross_validate

    cfg = load_settings(config, overrides, aux)
    summary = cross_validate(dataset, cfg, out, k=k, scenarios=scenario, seed=seed, progress=not quiet,
                             target_sensitivity=target_sensitivity, suspected_sensitivity=suspected_sensitivity,
                             n_boot=n_boot, folds=fold)
    render.cross_validated(summary, k, CvDir(out))
