"""What the commands print: rich tables and result lines on stdout, warnings and notes on stderr.

The commands compute, then call one function here with what they got back.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from limbscan.errors import Skipped

if TYPE_CHECKING:
    from limbscan.rundir import CvDir

console = Console()
err_console = Console(stderr=True)


def _warn(label: str, text: str) -> None:
    err_console.print(f"[yellow]{label}[/]: {text}", highlight=False, soft_wrap=True)


# -- the whole command line ---------------------------------------------------------------
def version(number: str) -> None:
    console.print(f"limbscan {number}")


def error(err: Exception) -> None:
    err_console.print(f"[red]error[/]: {err}", highlight=False, soft_wrap=True)


def interrupted() -> None:
    err_console.print("interrupted; rerun the same command to continue where it stopped")


def skipped(items: Sequence[Skipped], warnings: Iterable[Skipped] = ()) -> None:
    for item in warnings:
        _warn("warning", str(item))
    for item in items:
        err_console.print(f"[red]skipped[/]: {item}", highlight=False, soft_wrap=True)
    if items:
        err_console.print(f"{len(items)} entr{'y' if len(items) == 1 else 'ies'} skipped", highlight=False)


# -- data ---------------------------------------------------------------------------------
def dataset_stats(stats: dict[str, Any], as_json: bool = False) -> None:
    from limbscan.data.stats import render_stats

    if as_json:
        sys.stdout.write(json.dumps(stats, indent=1) + "\n")
    else:
        console.print(render_stats(stats))


def imported(stats: dict[str, Any], out: Path, n_images: int, n_lesions: int) -> None:
    dataset_stats(stats)
    console.print(f"wrote {out / 'dataset.json'}: {n_images} images, {n_lesions} lesions")


def synthesized(out: Path, n_images: int, n_abnormal: int) -> None:
    console.print(f"wrote {out / 'dataset.json'}: {n_images} SYNTHETIC phantoms, {n_abnormal} with a fracture")


def split_saved(stats: dict[str, Any], path: Path, seed: int) -> None:
    dataset_stats(stats)
    console.print(f"split saved in {path} (seed {seed})")


def wrote(path: Path) -> None:
    err_console.print(f"wrote {path}")


def cached(report: Any) -> None:
    skipped(report.skipped)
    console.print(
        f"cache: {report.n_built} decoded, {report.n_reused} reused, {len(report.skipped)} skipped "
        f"of {report.n_total} in {report.seconds:.1f} s"
    )


def downloaded(root: Path) -> None:
    console.print(f"FracAtlas is in {root}; next: limbscan data import fracatlas {root} -o DS")


def anonymized(written: Sequence[Path], skipped_files: Sequence[Skipped], out: Path) -> None:
    skipped(skipped_files)
    console.print(f"anonymised {len(written)} file(s) into {out}")


# -- training -----------------------------------------------------------------------------
def trained(results: dict[str, Any], out: Path) -> None:
    from limbscan.eval.metrics import format_metric  # numpy: not at --help time

    for name, result in results.items():
        seconds = sum(h.get("seconds", 0.0) for h in result.history)
        console.print(
            f"{name}: best validation AUC {format_metric(result.best_auc)} "
            f"(epoch {result.best_epoch} of {result.epochs}), {seconds:.0f} s training"
        )
    console.print(f"run saved in {out}")


def searched(ranked: list[dict[str, Any]], folds: int | None, out: Path) -> None:
    by = f"mean AUC over {folds} cross-validation folds" if folds else "validation AUC"
    table = Table(title=f"random search, ranked by {by}")
    for column in ranked[0]:
        table.add_column(column)
    for row in ranked:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()))
    console.print(table)
    console.print(f"best config: {out / 'best.yaml'}")


def cross_validated(summary: dict[str, Any], k: int, folder: CvDir) -> None:
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
    from limbscan.eval.metrics import format_metric as _fmt  # numpy: not at --help time

    for name, s in summary["scenarios"].items():
        mean = _fmt(s["auc_mean"]) + ("" if s["auc_sd"] is None else f" ± {s['auc_sd']:.3f}")
        ci = s["oof_auc_ci95"]
        pooled = _fmt(s["oof_auc"]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
        table.add_row(name, mean, pooled, " ".join(_fmt(a) for a in s["fold_auc"]))
    console.print(table)
    console.print(f"out-of-fold scores: {folder.oof_scores}; summary: {folder.summary}", highlight=False,
                  soft_wrap=True)  # paths unbroken, to copy


# -- evaluation ---------------------------------------------------------------------------
def timing(stages: list[dict[str, Any]]) -> None:
    for t in stages:
        console.print(f"{t['stage']}: {t['seconds'] / 60:.1f} min, peak RSS {t['peak_rss_mb']:.0f} MB", highlight=False)


def evaluation(metrics: dict[str, Any], out: Path) -> None:
    from limbscan.eval.metrics import format_metric as _fmt  # numpy: not at --help time

    for name, m in metrics["scenarios"].items():
        auc = _fmt(m["auc"])
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


# -- bundles and their use ----------------------------------------------------------------
def exported(path: Path, manifest: dict[str, Any]) -> None:
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
            _warn("note", f"{name}, suspected point: {note}")
    for name, note in (manifest.get("onnx_notes") or {}).items():
        if name not in (manifest.get("onnx") or {}):
            _warn("onnx", f"{name}: {note}")
    if manifest.get("data_hash") is None:
        _warn("warning", str(manifest.get("data_hash_note")))


def predicted(summary: Any, out: Path, gate: bool, overlays: bool) -> None:
    from limbscan.predict import ERRORS, OVERLAY_DIR, STUDIES, SUMMARY, WORKLIST

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
    table.add_row("errors (skipped files)",
                  f"{summary.n_errors}" + (f"  ({out / ERRORS})" if summary.n_errors else ""))
    table.add_row("worklist", str(out / WORKLIST))
    table.add_row("studies", f"{summary.n_studies}  ({out / STUDIES})")
    if overlays:
        table.add_row("overlays", str(out / OVERLAY_DIR))
    table.add_row("time", f"{summary.seconds:.1f} s")
    console.print(table)


def open_port(host: str, port: int) -> None:
    _warn("warning", f"listening on {host} without a token: anyone who can reach port {port} can upload "
                     "images and see the overlays; set --token or LIMBSCAN_TOKEN")


def serving(bundle: Path, host: str, port: int) -> None:
    console.print(f"serving {bundle} on http://{host}:{port}/ (API docs at /docs); Ctrl+C stops", highlight=False)


def listening(aet: str, host: str, port: int, out: Path) -> None:
    console.print(f"DICOM node {aet} listening on {host}:{port}; results in {out}; Ctrl+C stops", highlight=False)


def node_page(base: str) -> None:
    console.print(f"web page with the live worklist: {base}/", highlight=False)


# -- the input gate -----------------------------------------------------------------------
def gate_fitted(out: Path, meta: dict[str, Any]) -> None:
    table = Table(title=f"{out}: in scope where the lower-limb score >= {meta['region_threshold']:.3f} and the "
                        f"distance <= {meta['distance_threshold']:.3f}")
    for column in ("images", "n", "kept in scope"):
        table.add_column(column)
    for name, rate in {**{f"{k} (out of fold)": v for k, v in meta["out_of_fold"].items()},
                       **meta["held_out"]}.items():
        table.add_row(name, str(rate["n"]), f"{rate['accepted']} ({rate['accepted_share']:.1%})")
    console.print(table)
