"""Command line: each verb parses its arguments and calls the library.

Heavy modules are imported inside the commands so ``limbscan --help`` answers at once.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from limbscan.errors import LimbscanError, Skipped
from limbscan.operating_points import SUSPECTED_SENSITIVITY
from limbscan.scenarios import names as scenario_names

SCENARIO_CHOICES = " | ".join(scenario_names())  # the registered scenarios, for --help

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="limbscan",
    help="Find and triage lesions in lower-limb radiographs (DICOM, PNG, JPEG).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Build, split, inspect and cache datasets.", no_args_is_help=True)
import_app = typer.Typer(help="Import a dataset into limbscan's schema (COCO JSON + image fields).", no_args_is_help=True)
download_app = typer.Typer(help="Fetch public datasets (needs internet).", no_args_is_help=True)
gate_app = typer.Typer(help="The input gate: which images limbscan reads (lower-limb radiographs) and which it "
                            "leaves 'not analysed'.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(gate_app, name="gate")
data_app.add_typer(import_app, name="import")
data_app.add_typer(download_app, name="download")

OutDir = Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write (DS).")]
DatasetArg = Annotated[Path, typer.Argument(help="Dataset folder (holds dataset.json).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
GateOpt = Annotated[bool, typer.Option(
    "--gate/--no-gate", help="Ask the input gate first: images that are no lower-limb radiograph (another body part or "
                             "modality, a photograph) are 'not analysed'. --no-gate scores everything (research use).")]


def _version_callback(value: bool) -> None:
    if value:
        from limbscan import __version__

        console.print(f"limbscan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    pass


def _report_skipped(skipped: list[Skipped], warnings: list[Skipped] = ()) -> None:
    for item in warnings:
        err_console.print(f"[yellow]warning[/]: {item}", highlight=False, soft_wrap=True)
    for item in skipped:
        err_console.print(f"[red]skipped[/]: {item}", highlight=False, soft_wrap=True)
    if skipped:
        err_console.print(f"{len(skipped)} entr{'y' if len(skipped) == 1 else 'ies'} skipped", highlight=False)


def _finish_import(result, out: Path) -> None:
    """Print what an importer did, keep its skip list beside the dataset."""
    from limbscan.data.stats import render_stats, stats_table
    from limbscan.utils.files import write_json_atomic

    ds = result.dataset
    write_json_atomic(
        out / "import_report.json",
        {
            "skipped": [vars(s) for s in result.skipped],
            "warnings": [vars(s) for s in result.warnings],
            "n_images": len(ds.images),
            "n_annotations": len(ds.coco["annotations"]),
        },
    )
    _report_skipped(result.skipped, result.warnings)
    console.print(render_stats(stats_table(ds)))
    console.print(f"wrote {out / 'dataset.json'}: {len(ds.images)} images, {len(ds.coco['annotations'])} lesions")


# -- data import ---------------------------------------------------------------------
@import_app.command("fracatlas")
def import_fracatlas_cmd(
    root: Annotated[Path, typer.Argument(help="FracAtlas root (holds dataset.csv, images/, Annotations/).")],
    out: OutDir,
    skip_truncated: Annotated[bool, typer.Option(help="Skip truncated JPEGs instead of keeping what decodes.")] = False,
    parts: Annotated[Optional[str], typer.Option(
        help="Keep only these body parts, a comma list of leg, hip, hand, shoulder, mixed, unknown "
             "(leg,hip: the main lower-limb dataset).")] = None,
    exclude_parts: Annotated[Optional[str], typer.Option(
        help="Keep all but these body parts (leg,hip: the rest, as auxiliary training data).")] = None,
    quiet: Quiet = False,
) -> None:
    """Import FracAtlas as laid out by its authors: label from the folder, tags from dataset.csv, lesions from COCO."""
    from limbscan.data.importers import import_fracatlas

    result = import_fracatlas(root, out, progress=not quiet, skip_truncated=skip_truncated,
                              parts=_comma_list(parts), exclude_parts=_comma_list(exclude_parts))
    _finish_import(result, out)


def _comma_list(value: str | None) -> list[str] | None:
    return None if value is None else [item.strip() for item in value.split(",")]


@import_app.command("folder")
def import_folder_cmd(
    root: Annotated[Path, typer.Argument(help="ROOT/<body_part>/{normal,abnormal}/... of DICOM, PNG or JPEG.")],
    out: OutDir,
    quiet: Quiet = False,
) -> None:
    """Import a folder tree ROOT/<body_part>/{normal,abnormal}/...; DICOM files are anonymised into DS/images."""
    from limbscan.data.importers import import_folder

    _finish_import(import_folder(root, out, progress=not quiet), out)


@import_app.command("coco")
def import_coco_cmd(
    annotations: Annotated[Path, typer.Argument(help="COCO JSON file; its annotations are lesions.")],
    images: Annotated[Path, typer.Option("--images", help="Folder the COCO file names are relative to.")],
    out: OutDir,
    quiet: Quiet = False,
) -> None:
    """Import a COCO JSON and its image folder."""
    from limbscan.data.importers import import_coco

    _finish_import(import_coco(annotations, images, out, progress=not quiet), out)


@import_app.command("mura")
def import_mura_cmd(
    root: Annotated[Path, typer.Argument(help="MURA/LERA-style tree: .../XR_<PART>/<patient>/<study>_positive|_negative/.")],
    out: OutDir,
    all_parts: Annotated[bool, typer.Option(help="Keep upper-limb studies too.")] = False,
    quiet: Quiet = False,
) -> None:
    """Import MURA / LERA study folders (label from the _positive / _negative suffix)."""
    from limbscan.data.importers import import_mura

    _finish_import(import_mura(root, out, progress=not quiet, lower_limb_only=not all_parts), out)


@import_app.command("yolo")
def import_yolo_cmd(
    root: Annotated[Path, typer.Argument(
        help="YOLOv8 / Roboflow export: data.yaml and <split>/images/, <split>/labels/ (or images/, labels/).")],
    out: OutDir,
    normal: Annotated[Optional[str], typer.Option(
        help="Classes of a normal region, a comma list (default: every class whose name holds the word "
             "'normal'; with --abnormal alone, the rest).")] = None,
    abnormal: Annotated[Optional[str], typer.Option(
        help="Classes that make an image abnormal, each region a lesion, a comma list (default: the rest).")] = None,
    body_part: Annotated[Optional[str], typer.Option(
        help="Body part of every image (e.g. hip); default unknown.")] = None,
    quiet: Quiet = False,
) -> None:
    """Import a YOLOv8 / Roboflow export: an image is abnormal when any region is of an abnormal class."""
    from limbscan.data.importers import import_yolo

    result = import_yolo(root, out, normal=_comma_list(normal), abnormal=_comma_list(abnormal),
                         body_part=body_part, progress=not quiet)
    _finish_import(result, out)


# -- data ----------------------------------------------------------------------------
@data_app.command("synth")
def synth_cmd(
    out: OutDir,
    n: Annotated[int, typer.Option("-n", help="Number of phantom images.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    abnormal_fraction: Annotated[float, typer.Option(help="Share of phantoms with a fracture.")] = 0.3,
    fracture_width: Annotated[
        float, typer.Option(help="Scale of the fracture gap: 1 = a 1-3 px hairline; 3 = easy, for short demos.")
    ] = 1.0,
    quiet: Quiet = False,
) -> None:
    """Draw SYNTHETIC long-bone phantoms (PNG and DICOM) for tests and offline demos; not radiographs."""
    from limbscan.data.synth import synthesize

    ds = synthesize(out, n=n, seed=seed, abnormal_fraction=abnormal_fraction, progress=not quiet,
                    fracture_width=fracture_width)
    n_abn = sum(im["label"] for im in ds.images)
    console.print(f"wrote {out / 'dataset.json'}: {len(ds.images)} SYNTHETIC phantoms, {n_abn} with a fracture")


@data_app.command("split")
def split_cmd(
    dataset: DatasetArg,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (default: the config's, 0).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (data.split).")] = None,
) -> None:
    """Split 70/10/20 by patient, stratified by body part x label; deterministic for a seed."""
    from limbscan.config import load_config
    from limbscan.data.dataset import Dataset
    from limbscan.data.split import split_dataset
    from limbscan.data.stats import render_stats, stats_table

    cfg = load_config(config).data.split
    if seed is not None:
        cfg.seed = seed
    ds = split_dataset(Dataset.load(dataset), cfg)
    path = ds.save()
    console.print(render_stats(stats_table(ds)))
    console.print(f"split saved in {path} (seed {cfg.seed})")


@data_app.command("stats")
def stats_cmd(
    dataset: DatasetArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    markdown: Annotated[Optional[Path], typer.Option(help="Also write a Markdown report here.")] = None,
) -> None:
    """Count images per body part x label x split."""
    from limbscan.data.dataset import Dataset
    from limbscan.data.stats import render_stats, stats_markdown, stats_table

    ds = Dataset.load(dataset)
    stats = stats_table(ds)
    if as_json:
        sys.stdout.write(json.dumps(stats, indent=1) + "\n")
    else:
        console.print(render_stats(stats))
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(stats_markdown(stats, title=f"Dataset {dataset.name}"))
        err_console.print(f"wrote {markdown}")


@data_app.command("cache")
def cache_cmd(
    dataset: DatasetArg,
    longest_side: Annotated[Optional[int], typer.Option(help="Longest side of cached images (default: config).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decoding processes (default: config).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (data.cache).")] = None,
    quiet: Quiet = False,
) -> None:
    """Decode every image once, resize it and store it; reruns only do what is missing or changed."""
    from limbscan.config import load_config
    from limbscan.data.cache import build_cache
    from limbscan.data.dataset import Dataset

    cfg = load_config(config).data.cache
    ds = Dataset.load(dataset)
    report = build_cache(
        ds,
        longest_side=longest_side or cfg.longest_side,
        workers=workers or cfg.workers,
        progress=not quiet,
    )
    _report_skipped(report.skipped)
    console.print(
        f"cache: {report.n_built} decoded, {report.n_reused} reused, {len(report.skipped)} skipped "
        f"of {report.n_total} in {report.seconds:.1f} s"
    )
    if report.n_total and len(report.skipped) == report.n_total:
        raise LimbscanError(f"{dataset}: no image could be cached")


@download_app.command("fracatlas")
def download_fracatlas_cmd(
    dest: Annotated[Path, typer.Argument(help="Folder to download and unpack into.")],
    quiet: Quiet = False,
) -> None:
    """Download FracAtlas (CC BY 4.0) from figshare, resumably, check it and unpack it."""
    from limbscan.data.download import download_fracatlas

    root = download_fracatlas(dest, progress=not quiet)
    console.print(f"FracAtlas is in {root}; next: limbscan data import fracatlas {root} -o DS")


# -- train / search ------------------------------------------------------------------
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config, e.g. configs/cpu.yaml.")]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="Config overrides, key=value (e.g. train.epochs=3).")]
AuxOpt = Annotated[Optional[list[Path]], typer.Option(
    "--aux", help="Auxiliary training data: a dataset folder whose every image joins training, never validation "
                  "or test; repeat for several (adds to data.auxiliary; data.auxiliary_share sets its batch share).")]


@app.command("train")
def train_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (checkpoints, metrics.jsonl, config.yaml).")],
    config: ConfigOpt = None,
    overrides: Overrides = None,
    scenario: Annotated[
        Optional[str], typer.Option(help=f"{SCENARIO_CHOICES} | all, or a comma list (default: the config's).")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from RUN's last checkpoints.")] = False,
    aux: AuxOpt = None,
    quiet: Quiet = False,
) -> None:
    """Train the whole-image baseline, the detector and / or the cascade on DS's train split."""
    from limbscan.config import add_auxiliary, save_config
    from limbscan.rundir import RunDir
    from limbscan.train.runner import train

    run = RunDir(out)
    # --resume with no -c goes on with the settings the run started with: the library's rule.
    cfg = run.config_for(config, list(overrides or []) + ([f"train.scenario={scenario}"] if scenario else []), resume)
    cfg = add_auxiliary(cfg, aux)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    results = train(dataset, cfg, out, resume=resume, progress=not quiet)
    for name, result in results.items():
        auc = result.best_auc
        seconds = sum(h.get("seconds", 0.0) for h in result.history)
        console.print(
            f"{name}: best validation AUC {'undefined' if auc is None else f'{auc:.3f}'} "
            f"(epoch {result.best_epoch} of {result.epochs}), {seconds:.0f} s training"
        )
    console.print(f"run saved in {out}")


@app.command("search")
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
    from rich.table import Table

    from limbscan.config import add_auxiliary, load_config
    from limbscan.train.search import random_search

    cfg = add_auxiliary(load_config(config, list(overrides or [])), aux)
    ranked = random_search(dataset, cfg, out, trials=trials, seed=seed, progress=not quiet, folds=folds)
    by = f"mean AUC over {folds} cross-validation folds" if folds else "validation AUC"
    table = Table(title=f"random search, ranked by {by}")
    for column in ranked[0]:
        table.add_column(column)
    for row in ranked:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    console.print(f"best config: {out / 'best.yaml'}")


CV_HELP = (
    "K-fold cross-validation by patient over DS's train + val images; the test split is never read.\n\n"
    "Folds are stratified by body part x label. Each fold trains the scenarios with that fold as validation "
    "(OUT/fold-<i>/, a normal run folder; auxiliary data joins training only) and scores it from its best "
    "checkpoint. Reports each scenario's AUC as mean +- sd across folds and the pooled out-of-fold AUC with its CI "
    "(cv.json, oof_scores.csv); operating points are chosen on the out-of-fold scores. Rerunning the same command "
    "keeps finished folds and resumes the rest; another k, seed, dataset or config into the same OUT is refused."
)


@app.command("cv", help=CV_HELP)
def cv_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="CV folder: fold-<i>/ runs, folds.json, oof_scores.csv, cv.json.")],
    config: ConfigOpt = None,
    overrides: Overrides = None,
    k: Annotated[int, typer.Option("-k", "--folds", help="Number of folds (k >= 2; 5 by default).")] = 5,
    scenario: Annotated[
        Optional[str], typer.Option(help=f"{SCENARIO_CHOICES} | all, or a comma list (default: the config's).")
    ] = None,
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
    from rich.table import Table

    from limbscan.config import add_auxiliary, load_config
    from limbscan.rundir import CvDir
    from limbscan.train.cv import cross_validate

    cfg = add_auxiliary(load_config(config, list(overrides or [])), aux)
    summary = cross_validate(dataset, cfg, out, k=k, scenarios=scenario, seed=seed, progress=not quiet,
                             target_sensitivity=target_sensitivity, suspected_sensitivity=suspected_sensitivity,
                             n_boot=n_boot, folds=fold)
    if "scenarios" not in summary:
        console.print(f"folds finished: {', '.join(map(str, summary['finished'])) or 'none'}; still to train: "
                      f"{', '.join(map(str, summary['pending']))}. The summary is written by the call that finds "
                      "every fold finished (the same command without --fold trains the rest).")
        return
    table = Table(title=f"{k}-fold cross-validation by patient on train + val ({summary['n_images']} images; "
                        "test not read)")
    table.add_column("scenario", no_wrap=True)  # names whole, however narrow the terminal
    for column in ("AUC mean ± sd", "pooled OOF AUC [95 % CI]", "folds"):
        table.add_column(column)
    for name, s in summary["scenarios"].items():
        mean = _fmt(s["auc_mean"]) + ("" if s["auc_sd"] is None else f" ± {s['auc_sd']:.3f}")
        ci = s["oof_auc_ci95"]
        pooled = _fmt(s["oof_auc"]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        table.add_row(name, mean, pooled, " ".join(_fmt(a) for a in s["fold_auc"]))
    console.print(table)
    console.print(f"out-of-fold scores: {CvDir(out).oof_scores}; summary: {CvDir(out).summary}", highlight=False,
                  soft_wrap=True)  # paths unbroken, to copy


# -- evaluate ------------------------------------------------------------------------
@app.command("evaluate")
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(help="A trained run folder (a bundle once `export` exists).")],
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder: metrics.json, report.md/.html, figures.")],
    split: Annotated[str, typer.Option(help="test | val | train | all (all: every image, e.g. a new dataset).")] = "test",
    target_sensitivity: Annotated[
        Optional[float], typer.Option(help="Operating point: reach this sensitivity on validation (default: Youden's J).")
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples (of patients) for the 95 % CIs.")] = 2000,
    suspected_sensitivity: Annotated[
        Optional[float],
        typer.Option(help="High-sensitivity ('suspected') point: reach this sensitivity on validation "
                          f"(default: the bundle's, else {SUSPECTED_SENSITIVITY:g})."),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Score a trained run on one split; threshold from the validation split, CIs, DeLong tests, figures."""
    from limbscan.eval.evaluate import evaluate

    if split not in ("test", "val", "train", "all"):
        raise LimbscanError(f"--split {split!r}: use test, val, train or all")
    metrics = evaluate(run, dataset, split, out, target_sensitivity=target_sensitivity, n_boot=n_boot,
                       progress=not quiet, suspected_sensitivity=suspected_sensitivity)
    _print_evaluation(metrics, out)


@app.command("benchmark")
def benchmark_cmd(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the run (OUT/run), its bundle (OUT/model.limbscan) and the report (OUT/report).")],
    config: ConfigOpt = None,
    overrides: Overrides = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples (of patients) for the 95 % CIs.")] = 2000,
    aux: AuxOpt = None,
    default_from_cv: DefaultCvOpt = None,
    quiet: Quiet = False,
) -> None:
    """Train whole-image, detector and cascade on one split, evaluate on test, compare in one report."""
    from limbscan.config import add_auxiliary, load_config
    from limbscan.eval.pipeline import run_pipeline

    cfg = add_auxiliary(load_config(config, list(overrides or [])), aux)
    metrics = run_pipeline(dataset, cfg, out, n_boot=n_boot, progress=not quiet, default_from_cv=default_from_cv)
    for t in metrics["timing"]:
        console.print(f"{t['stage']}: {t['seconds'] / 60:.1f} min, peak RSS {t['peak_rss_mb']:.0f} MB", highlight=False)
    _print_evaluation(metrics, out / "report")


@app.command("compare")
def compare_cmd(
    reports: Annotated[list[Path], typer.Argument(help="Report folders from `limbscan evaluate` on the same images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the combined report.")],
    scenario: Annotated[
        Optional[str], typer.Option(help="Keep only this scenario of each report (e.g. cascade).")
    ] = None,
) -> None:
    """Set evaluations side by side (e.g. one run per backbone): one table, ROC curves together, DeLong tests."""
    from limbscan.eval.compare import compare

    _print_evaluation(compare(reports, out, scenario=scenario), out)


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _print_evaluation(metrics: dict, out: Path) -> None:
    for name, m in metrics["scenarios"].items():
        auc = "undefined" if m["auc"] is None else f"{m['auc']:.3f}"
        ci = m.get("auc_ci95")
        ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        console.print(
            f"{name}: AUC {auc}{ci_text}, sensitivity {m['sensitivity']:.3f}, specificity {m['specificity']:.3f}, "
            f"accuracy {m['accuracy']:.3f} at threshold {m['threshold']:.3f}", highlight=False,
        )
        low = (m.get("operating_points") or {}).get("suspected")
        if low:
            console.print(
                f"{name}, suspected point: sensitivity {_fmt(low['sensitivity'])}, specificity "
                f"{_fmt(low['specificity'])} at threshold {low['threshold']:.3f}", highlight=False,
            )
    for c in metrics["comparisons"]:
        p = "n/a" if c["delong_p"] is None else f"{c['delong_p']:.3g}"
        console.print(f"{c['a']} vs {c['b']}: DeLong p = {p}", highlight=False)
    console.print(f"report: {out / 'report.md'}")


# -- anonymize -----------------------------------------------------------------------
@app.command("anonymize")
def anonymize_cmd(
    src: Annotated[Path, typer.Argument(help="A DICOM file or a folder of them (searched recursively).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    quiet: Quiet = False,
) -> None:
    """De-identify DICOM with the PS3.15 basic profile (UIDs replaced consistently within the run)."""
    from limbscan.io.anonymize import anonymize_tree

    written, skipped = anonymize_tree(src, out, progress=not quiet)
    _report_skipped(skipped)
    console.print(f"anonymised {len(written)} file(s) into {out}")
    if not written:
        raise LimbscanError(f"{src}: no DICOM file could be anonymised")


# -- predict -------------------------------------------------------------------------
@app.command("predict")
def predict_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder made by `limbscan export` (NAME.limbscan).")],
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (searched recursively) or glob patterns.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: predictions.jsonl, worklist.csv, overlays/.")],
    scenario: Annotated[
        Optional[str], typer.Option(help=f"{SCENARIO_CHOICES} (default: the bundle's).")
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Images per forward pass (1 is fastest on a CPU; raise it on a GPU).")
    ] = 1,
    overlays: Annotated[bool, typer.Option("--overlays/--no-overlays", help="Draw overlays/<n>.png.")] = True,
    gradcam: Annotated[bool, typer.Option("--gradcam", help="Blend a Grad-CAM heatmap into each overlay.")] = False,
    dicom_out: Annotated[
        Optional[str], typer.Option("--dicom-out", help="For DICOM inputs: sc, sr or sc,sr (into OUT/dicom/).")
    ] = None,
    gate: GateOpt = True,
    studies: Annotated[str, typer.Option(
        "--studies", help="How PNG / JPEG files form studies in studies.csv: file (each its own) or folder (one per "
                          "folder, as MURA lays them out). DICOM files use their StudyInstanceUID.")] = "file",
    quiet: Quiet = False,
) -> None:
    """Score radiographs with a bundle and write a triage worklist, most likely abnormal first."""
    import os

    from rich.table import Table

    from limbscan.predict import ERRORS, OVERLAY_DIR, STUDIES, SUMMARY, WORKLIST, run_predict

    kinds = [k for k in (dicom_out or "").split(",") if k.strip()]
    summary = run_predict(bundle, paths, out, scenario=scenario, batch_size=batch_size, overlays=overlays,
                          gradcam=gradcam, dicom_out=kinds, progress=not quiet, gate=gate, studies=studies)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one table
        if summary.scenario_reason:
            console.print(f"scenario {summary.scenario_reason}", highlight=False, soft_wrap=True)
        suspected = "" if summary.suspected_threshold is None else f", suspected from {summary.suspected_threshold:.3f}"
        table = Table(title=f"{summary.scenario}, likely from {summary.threshold:.3f}{suspected}", show_header=False)
        table.add_row("images scored", str(summary.n_scored))
        if gate:
            table.add_row("not analysed (out of scope)", str(summary.n_out_of_scope) + (
                f"  (reasons in {out / SUMMARY})" if summary.n_out_of_scope else ""))
        table.add_row("likely abnormal (balanced point)", str(summary.n_abnormal))
        if summary.suspected_threshold is not None:
            table.add_row("suspected (high-sensitivity point only)", str(summary.n_suspected))
        table.add_row("errors (skipped files)", f"{summary.n_errors}" + (f"  ({out / ERRORS})" if summary.n_errors else ""))
        table.add_row("worklist", str(out / WORKLIST))
        table.add_row("studies", f"{summary.n_studies}  ({out / STUDIES})")
        if overlays:
            table.add_row("overlays", str(out / OVERLAY_DIR))
        table.add_row("time", f"{summary.seconds:.1f} s")
        console.print(table)
    if summary.n_scored == 0:
        raise typer.Exit(1)


# -- serve ---------------------------------------------------------------------------
@app.command("serve")
def serve_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder made by `limbscan export` (NAME.limbscan).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token: Annotated[
        Optional[str],
        typer.Option(envvar="LIMBSCAN_TOKEN", show_envvar=True,
                     help="Bearer token every /v1 call except health must carry (the env var keeps it out of `ps`)."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Largest request body accepted, MiB.")] = 64,
    concurrency: Annotated[int, typer.Option(help="Images predicted at the same time.")] = 2,
    workdir: Annotated[
        Optional[Path], typer.Option(help="Folder for uploads (deleted once predicted) and overlays (default: a temp folder).")
    ] = None,
    node: Annotated[Optional[Path], typer.Option(
        "--node", help="Also show the live worklist of the DICOM node writing into this folder (`limbscan listen -o`).")
    ] = None,
    gate: GateOpt = True,
) -> None:
    """Serve BUNDLE: a REST API (/v1/predict, docs at /docs) and a worklist web page at /."""
    import ipaddress

    import uvicorn

    from limbscan.serve import create_app

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        err_console.print(
            f"[yellow]warning[/]: listening on {host} without a token: anyone who can reach port {port} can upload "
            "images and see the overlays; set --token or LIMBSCAN_TOKEN", highlight=False, soft_wrap=True,
        )
    # The service logs one line per request (id, route, status, time); uvicorn's access log would repeat it.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = create_app(bundle, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                         max_concurrency=concurrency, workdir=workdir, node=node, gate=gate)
    console.print(f"serving {bundle} on http://{host}:{port}/ (API docs at /docs); Ctrl+C stops", highlight=False)
    uvicorn.run(service, host=host, port=port, access_log=False, log_level="info")


# -- listen --------------------------------------------------------------------------
LISTEN_HELP = (
    "Run as a DICOM node: receive radiographs by C-STORE, score them, send the SR and SC back.\n\n"
    "A Storage SCP for CR, DX (for presentation and for processing) and Secondary Capture images, in every "
    "transfer syntax the reader decodes, answering C-ECHO too; only calling AE titles named with --allow may "
    "associate. Each object is stored in OUT/received before its C-STORE is answered, then scored by one worker "
    "into OUT/predictions.jsonl, worklist.csv and errors.jsonl (as `predict` writes them); the SR and SC "
    "(OUT/dicom) go to every --forward and --stow destination as new series of the source's study, through an "
    "outbox on disk retried with back-off. Stopping (Ctrl+C) or a crash loses nothing: the same command resumes "
    "the queue and the outbox. --http-port also serves the web page, whose worklist shows what arrives."
)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@app.command("listen", help=LISTEN_HELP)
def listen_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder made by `limbscan export` (NAME.limbscan).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Node folder: queue, outbox, results (reused on restart).")],
    allow: Annotated[list[str], typer.Option(
        "--allow", help="A calling AE title allowed to associate (the PACS', the modality's); repeat for several.")],
    aet: Annotated[str, typer.Option("--aet", help="This node's AE title.")] = "LIMBSCAN",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="DICOM port.")] = 11112,
    forward: Annotated[Optional[list[str]], typer.Option(
        "--forward", help="Send the SR and SC by C-STORE to AE@host:port (e.g. ORTHANC@pacs:4242); repeatable.")
    ] = None,
    stow: Annotated[Optional[list[str]], typer.Option(
        "--stow", help="Send the SR and SC by STOW-RS to this DICOMweb root (e.g. http://pacs:8042/dicom-web); "
                       "repeatable.")] = None,
    stow_token: Annotated[Optional[str], typer.Option(
        envvar="LIMBSCAN_STOW_TOKEN", show_envvar=True, help="Bearer token for the STOW-RS server.")] = None,
    scenario: Annotated[Optional[str], typer.Option(help=f"{SCENARIO_CHOICES} (default: the bundle's).")] = None,
    dicom_out: Annotated[str, typer.Option("--dicom-out", help="DICOM outputs made and sent: sc, sr or sc,sr.")
                         ] = "sc,sr",
    keep_received: Annotated[bool, typer.Option(
        "--keep-received", help="Keep each received object (OUT/kept) once scored, instead of deleting it.")] = False,
    max_associations: Annotated[int, typer.Option(help="Associations served at the same time.")] = 32,
    retry_max: Annotated[float, typer.Option(
        help="Longest wait, in seconds, between tries to reach a destination that is down (back-off 1, 2, 4... s).")
    ] = 60.0,
    http_port: Annotated[Optional[int], typer.Option(
        "--http-port", help="Also serve the web page and REST API (as `serve`) on this port, showing the node's "
                            "live worklist.")] = None,
    http_host: Annotated[str, typer.Option(help="Address of the web page (with --http-port).")] = "127.0.0.1",
    token: Annotated[Optional[str], typer.Option(
        envvar="LIMBSCAN_TOKEN", show_envvar=True, help="Bearer token for the web page's /v1 calls (--http-port).")
    ] = None,
    gate: GateOpt = True,
) -> None:
    import signal

    from limbscan.node import Node, NodeConfig, parse_forward, parse_stow

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom's own INFO lines repeat ours; its warnings and errors still show.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    kinds = tuple(k.strip().lower() for k in dicom_out.split(",") if k.strip())
    destinations = [parse_forward(f) for f in forward or []] + [parse_stow(u) for u in stow or []]
    allowed = [a.strip() for a in allow if a.strip()]
    if not allowed:
        raise LimbscanError("--allow: name at least one calling AE title (the PACS' or the modality's)")
    config = NodeConfig(out=out, allowed=allowed, ae_title=aet, host=host, port=port, forward=destinations,
                        scenario=scenario, dicom_out=kinds, keep_received=keep_received,
                        max_associations=max_associations, retry_max=retry_max, stow_token=stow_token, gate=gate)
    node = Node(bundle, config)
    # SIGTERM (a service manager's stop) ends like Ctrl+C: the object in hand finished, the rest left queued.
    signal.signal(signal.SIGTERM, _interrupt)
    node.start()
    console.print(f"DICOM node {aet} listening on {host}:{node.port}; results in {out}; Ctrl+C stops",
                  highlight=False)
    if http_port is None:
        node.serve_forever()
        return
    from limbscan.serve import background_server, create_app

    web = create_app(node.model, token=token, node=out, decode_lock=node.decode_lock, gate=gate)
    with background_server(web, host=http_host, port=http_port, log_level="warning") as base:
        console.print(f"web page with the live worklist: {base}/", highlight=False)
        node.serve_forever()


# -- export --------------------------------------------------------------------------
DefaultCvOpt = Annotated[Optional[Path], typer.Option(
    "--default-from-cv", help="Choose the bundle's default scenario by the best mean AUC across the folds of this "
                              "finished `limbscan cv` folder (same dataset; every scenario cross-validated) instead of "
                              "by validation AUC.")]


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="A trained run folder (from `limbscan train`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write, e.g. model.limbscan.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Also write ONNX models (checked against PyTorch).")] = False,
    target_sensitivity: Annotated[
        Optional[float],
        typer.Option(help="Operating point: reach this sensitivity on validation (default: Youden's J)."),
    ] = None,
    suspected_sensitivity: Annotated[
        float, typer.Option(help="High-sensitivity ('suspected') point: reach this sensitivity on validation.")
    ] = SUSPECTED_SENSITIVITY,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle at OUT.")] = False,
    default_from_cv: DefaultCvOpt = None,
    gate: Annotated[str, typer.Option(
        "--gate", help="The input gate the bundle carries: builtin (the one limbscan ships), a gate.npz from "
                       "`limbscan gate train`, or none (only DICOM headers then keep images out of scope).")
    ] = "builtin",
    localiser: Annotated[str, typer.Option(
        "--localiser", help="Whose boxes a likely or suspected image shows when its scenario draws none: auto (the "
                            "detector if the run has one, else Grad-CAM), detector, cascade or gradcam.")
    ] = "auto",
    quiet: Quiet = False,
) -> None:
    """Package a trained run as a bundle: weights, config, validation thresholds, input gate, checksums."""
    from rich.table import Table

    from limbscan.bundle import export_bundle, read_manifest

    path = export_bundle(run, out, target_sensitivity=target_sensitivity, suspected_sensitivity=suspected_sensitivity,
                         onnx=onnx, progress=not quiet, overwrite=overwrite, default_from_cv_dir=default_from_cv,
                         gate=None if gate == "none" else gate, localiser=localiser)
    manifest = read_manifest(path, verify=False)
    table = Table(title=f"{path} (thresholds on validation: likely by {manifest['threshold_rule']}, suspected by "
                        f"sensitivity>={manifest['suspected_sensitivity']:g})")
    for column in ("scenario", "likely threshold", "suspected threshold", "onnx"):
        table.add_column(column)
    for name in manifest["scenarios"]:
        default = " (default)" if name == manifest["default_scenario"] else ""
        suspected = manifest["operating_points"][name]["suspected"]
        table.add_row(name + default, f"{manifest['thresholds'][name]:.4f}", f"{suspected['threshold']:.4f}",
                      "yes" if name in (manifest.get("onnx") or {}) else "-")
    console.print(table)
    if manifest.get("default_reason"):
        console.print(f"default scenario {manifest['default_reason']}", highlight=False, soft_wrap=True)
    if manifest.get("localiser"):
        console.print(f"boxes on likely and suspected images: {manifest['localiser']['name']} "
                      f"({manifest['localiser']['why']})", highlight=False, soft_wrap=True)
    fusion = manifest.get("fusion")
    if fusion:
        measured = ", ".join(f"{rule} {cv['mean']:.3f} ± {cv['sd']:.3f}" for rule, cv in (fusion.get("cv_auc") or {}).items())
        console.print(f"fused: rule {fusion['rule']}" + (f"; cross-validated AUC on validation: {measured}" if measured
                                                         else "") + (f" ({fusion['note']})" if fusion.get("note") else ""),
                      highlight=False, soft_wrap=True)
    for name in manifest["scenarios"]:
        note = manifest["operating_points"][name]["suspected"]["note"]
        if note:
            err_console.print(f"[yellow]note[/]: {name}, suspected point: {note}", highlight=False, soft_wrap=True)
    for name, note in (manifest.get("onnx_notes") or {}).items():
        if name not in (manifest.get("onnx") or {}):
            err_console.print(f"[yellow]onnx[/]: {name}: {note}", highlight=False, soft_wrap=True)
    if manifest.get("data_hash") is None:
        err_console.print(f"[yellow]warning[/]: {manifest.get('data_hash_note')}", highlight=False, soft_wrap=True)


# -- gate ----------------------------------------------------------------------------
@gate_app.command("train")
def gate_train_cmd(
    dataset: Annotated[Path, typer.Argument(help="The lower-limb dataset (split): its train split is in scope.")],
    other: Annotated[list[Path], typer.Option(
        "--other", help="A dataset of radiographs of other body parts (e.g. FracAtlas hand / shoulder, split): its "
                        "train and val splits are out of scope, its test split measured; repeatable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The gate file to write (gate.npz).")],
    refuse: Annotated[float, typer.Option(
        help="Share of the --other radiographs the body-region classifier must refuse, on out-of-fold scores.")
    ] = 0.97,
    accept_distance: Annotated[float, typer.Option(
        help="Share of lower-limb radiographs the distance check must keep, on out-of-fold distances.")] = 0.995,
    drawn: Annotated[int, typer.Option(help="Pictures that are no radiograph to draw as out-of-scope examples.")] = 240,
    seed: Annotated[int, typer.Option(help="Seed of the drawn pictures and folds.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Fit the input gate's pixel check (frozen ImageNet features, a body-region classifier, a distance) and
    measure it on held-out images; `limbscan export --gate GATE` puts it in a bundle."""
    from rich.table import Table

    from limbscan.gate.fit import fit_gate

    gate = fit_gate(dataset, other, n_drawn=drawn, seed=seed, refuse=refuse, accept_distance=accept_distance,
                    progress=not quiet)
    gate.save(out)
    meta = gate.meta
    table = Table(title=f"{out}: in scope where the lower-limb score >= {meta['region_threshold']:.3f} and the "
                        f"distance <= {meta['distance_threshold']:.3f}")
    for column in ("images", "n", "kept in scope"):
        table.add_column(column)
    for name, rate in {**{f"{k} (out of fold)": v for k, v in meta["out_of_fold"].items()},
                       **meta["held_out"]}.items():
        table.add_row(name, str(rate["n"]), f"{rate['accepted']} ({rate['accepted_share']:.1%})")
    console.print(table)


def main() -> None:
    # pydicom's own warnings can quote element values; limbscan reports problems itself.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    try:
        app()
    except LimbscanError as err:
        err_console.print(f"[red]error[/]: {err}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted; rerun the same command to continue where it stopped")
        sys.exit(130)


if __name__ == "__main__":
    main()
