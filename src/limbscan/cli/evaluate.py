"""``limbscan evaluate``, ``benchmark`` and ``compare``: score trained models on held-out images
and set the reports side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from limbscan.cli import render
from limbscan.cli.options import (
    AuxOpt,
    CompareScenarioOpt,
    ConfigOpt,
    DatasetArg,
    DefaultCvOpt,
    NBootOpt,
    Overrides,
    Quiet,
    Split,
    SplitOpt,
    TargetSensitivityOpt,
    load_settings,
    value,
)
from limbscan.operating_points import SUSPECTED_SENSITIVITY

verbs = typer.Typer()


@verbs.command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help="A trained run folder (a bundle once `export` exists).")],
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder: metrics.json, report.md/.html, figures.")],
    split: SplitOpt = Split.test,
    target_sensitivity: TargetSensitivityOpt = None,
    n_boot: NBootOpt = 2000,
    suspected_sensitivity: Annotated[
        Optional[float],
        typer.Option(help="High-sensitivity ('suspected') point: reach this sensitivity on validation "
                          f"(default: the bundle's, else {SUSPECTED_SENSITIVITY:g})."),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Score a trained run on one split; threshold from the validation split, CIs, DeLong tests, figures."""
    from limbscan.eval.evaluate import evaluate

    metrics = evaluate(run, dataset, value(split), out, target_sensitivity=target_sensitivity, n_boot=n_boot,
                       progress=not quiet, suspected_sensitivity=suspected_sensitivity)
    render.evaluation(metrics, out)


@verbs.command("benchmark")
def benchmark_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run (OUT/run), its bundle (OUT/model.limbscan) and the report (OUT/report).")],
    config: ConfigOpt = None,
    overrides: Overrides = None,
    n_boot: NBootOpt = 2000,
    aux: AuxOpt = None,
    default_from_cv: DefaultCvOpt = None,
    quiet: Quiet = False,
) -> None:
    """Train whole-image, detector and cascade on one split, evaluate on test, compare in one report."""
    from limbscan.eval.pipeline import run_pipeline

    cfg = load_settings(config, overrides, aux)
    metrics = run_pipeline(dataset, cfg, out, n_boot=n_boot, progress=not quiet, default_from_cv=default_from_cv)
    render.timing(metrics["timing"])
    render.evaluation(metrics, out / "report")


@verbs.command("compare")
def compare_cmd(
    reports: Annotated[list[Path], typer.Argument(help="Report folders from `limbscan evaluate` on the same images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the combined report.")],
    scenario: CompareScenarioOpt = None,
) -> None:
    """Set evaluations side by side (e.g. one run per backbone): one table, ROC curves together, DeLong tests."""
    from limbscan.eval.compare import compare

    render.evaluation(compare(reports, out, scenario=value(scenario)), out)
