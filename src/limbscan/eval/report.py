"""``REPORT/``: ``metrics.json``, ``report.md``, ``report.html`` and the figures of one evaluation.

The report is built once as blocks (:mod:`.report_sections`) and rendered to Markdown and to
HTML (:mod:`.report_render`), so the two always say the same thing. Input is the
``metrics.json`` contract of DESIGN.md; a number that is ``None`` is written out in words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from limbscan.eval import figures as fig
from limbscan.eval.report_render import to_html, to_markdown
from limbscan.eval.report_sections import report_blocks
from limbscan.utils.files import write_json_atomic, write_text_atomic


def metrics_markdown(
    metrics: Mapping[str, Any], title: str = "limbscan evaluation", figures: Mapping[str, Path] | None = None
) -> str:
    """The report as Markdown: per-scenario (Table 5), per-backbone (Tables 3-4), DeLong, groups."""
    return to_markdown(report_blocks(metrics, title, figures))


def metrics_html(metrics: Mapping[str, Any], figures: Mapping[str, Path], title: str = "limbscan evaluation") -> str:
    """The same content as :func:`metrics_markdown`, as one self-contained HTML page.

    Styles are inline; figures are ``<img>`` links relative to the report (a bare file name
    for an absolute path), so the folder can be moved or zipped as a whole.
    """
    return to_html(report_blocks(metrics, title, figures), title)


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy types to Python, tuples to lists, NaN/inf to None (undefined)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_scores(path: Path, image_ids: Sequence[int], curves: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> Path:
    """Per image: id, label and each scenario's score (ids only: no file names, which may carry identifiers)."""
    names = list(curves)
    labels = np.asarray(next(iter(curves.values()))[0]) if names else np.zeros(len(image_ids))
    lines = [",".join(["image_id", "label", *names])]
    for i, image_id in enumerate(image_ids):
        values = [f"{float(np.asarray(curves[n][1])[i]):.6f}" for n in names]
        lines.append(",".join([str(int(image_id)), str(int(labels[i])), *values]))
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def write_report(
    out: Path,
    metrics: Mapping[str, Any],
    curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
    gallery: list[dict[str, Any]] | None = None,
    title: str = "limbscan evaluation",
) -> dict[str, Path]:
    """Write the whole report folder; returns ``{file name: path}`` of everything written.

    ``curves`` maps scenario (or backbone) -> (labels, scores) on the reported split; the ROC
    legend's CIs come from ``metrics["scenarios"][name]["auc_ci95"]``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = _plain(metrics)
    written: dict[str, Path] = {}
    write_json_atomic(out / "metrics.json", metrics)
    written["metrics.json"] = out / "metrics.json"
    scenarios = metrics.get("scenarios", {})
    figure_paths: dict[str, list[Path]] = {}
    if curves:
        cis = {name: scenarios.get(name, {}).get("auc_ci95") for name in curves}
        figure_paths["roc"] = fig.plot_roc(
            curves, out / "roc", title=f"ROC, {metrics.get('split', '')} split".rstrip(", "), cis=cis
        )
    confusions = {name: s["confusion"] for name, s in scenarios.items() if s.get("confusion")}
    if confusions:
        figure_paths["confusion"] = fig.plot_confusion(confusions, out / "confusion")
    if curves:
        figure_paths["calibration"] = fig.plot_calibration(curves, out / "calibration")
    if gallery:
        figure_paths["gallery"] = fig.plot_gallery(gallery, out / "gallery")
    for paths in figure_paths.values():
        written.update({p.name: p for p in paths})
    pngs = {key: paths[0] for key, paths in figure_paths.items()}
    write_text_atomic(out / "report.md", metrics_markdown(metrics, title, {k: Path(p.name) for k, p in pngs.items()}))
    write_text_atomic(out / "report.html", metrics_html(metrics, {k: Path(p.name) for k, p in pngs.items()}, title))
    written["report.md"] = out / "report.md"
    written["report.html"] = out / "report.html"
    return written
