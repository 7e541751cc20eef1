"""Evaluation figures, readable in print: ROC (the paper's Fig. 5), confusion, calibration, gallery (Fig. 6).

Every ``plot_*`` takes arrays, writes ``<stem>.png`` (200 dpi) and ``<stem>.svg`` and returns both
paths; its ``_*_figure`` helper builds the figure unsaved, for tests. Figures are bare
``matplotlib.figure.Figure`` objects, never ``pyplot`` (no global registry, no GUI backend).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from numpy.typing import ArrayLike
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score, roc_curve

from limbscan.eval.metrics import MetricsInputError, undefined_reason

DPI = 200
PRED_COLOUR = "#e00000"  # the paper draws the predicted lesion box in red
TRUE_COLOUR = "#00b050"
GALLERY_GROUPS = ("TP", "FP", "FN", "TN")
GALLERY_MAX_SIDE = 480

# Sizes in points: 9 pt is the smallest that survives a two-column journal reduction.
_STYLE: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    # text stays text in the SVG (editable, searchable); a fixed salt keeps the file reproducible
    "svg.fonttype": "none",
    "svg.hashsalt": "limbscan",
}

Curves = Mapping[str, tuple[ArrayLike, ArrayLike]]


@contextmanager
def _style() -> Iterator[None]:
    # rc_context restores the caller's settings afterwards, so a notebook's style is untouched
    with matplotlib.rc_context(_STYLE):
        yield


def _save(fig: Figure, stem: Path) -> list[Path]:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    with _style():
        # no bbox_inches="tight": constrained layout already fits the text, and a fixed canvas
        # keeps data coordinates -> pixels predictable
        fig.savefig(paths[0], dpi=DPI, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"Date": None})
    return paths


def _arrays(name: str, labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=float).ravel()
    if y.shape != s.shape:
        raise MetricsInputError(f"{name}: {y.size} labels but {s.size} scores")
    if y.size and not np.isin(y, (0, 1)).all():
        raise MetricsInputError(f"{name}: labels must be 0 (normal) or 1 (abnormal)")
    if not np.isfinite(s).all():
        raise MetricsInputError(f"{name}: {int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    return y.astype(int), s


def _fmt_ci(ci: Sequence[float] | None) -> str:
    return "" if ci is None else f" [95 % CI {ci[0]:.3f}–{ci[1]:.3f}]"


# --- ROC ------------------------------------------------------------------------------------


def roc_label(name: str, labels: ArrayLike, scores: ArrayLike, ci: Sequence[float] | None = None) -> str:
    """Legend text of one ROC curve: its AUC to 3 decimals (and CI), or why AUC is undefined."""
    y, s = _arrays(name, labels, scores)
    reason = undefined_reason(y)
    if reason:
        return f"{name}: AUC undefined ({reason})"
    return f"{name}: AUC {roc_auc_score(y, s):.3f}{_fmt_ci(ci)}"


def _roc_figure(curves: Curves, title: str = "ROC", cis: Mapping[str, Sequence[float] | None] | None = None) -> Figure:
    cis = cis or {}
    with _style():
        fig = Figure(figsize=(5.0, 5.0), dpi=DPI, layout="constrained")
        ax = fig.add_subplot()
        for name, (labels, scores) in curves.items():
            y, s = _arrays(name, labels, scores)
            label = roc_label(name, y, s, cis.get(name))
            if undefined_reason(y):
                # no curve exists, but the reader must still see that this scenario was evaluated
                ax.plot([], [], linestyle="none", label=label)
                continue
            fpr, tpr, _ = roc_curve(y, s)
            ax.plot(fpr, tpr, linewidth=1.8, drawstyle="steps-post", label=label)
        ax.plot([0, 1], [0, 1], color="0.55", linestyle="--", linewidth=1.0, label="chance (AUC 0.500)")
        ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal", title=title)
        ax.set_xlabel("1 − specificity (false-positive rate)")
        ax.set_ylabel("Sensitivity (true-positive rate)")
        ax.grid(True, linewidth=0.4, alpha=0.5)
        ax.legend(loc="lower right", frameon=True, framealpha=0.9)
    return fig


def plot_roc(
    curves: Curves,
    stem: Path,
    title: str = "ROC",
    cis: Mapping[str, Sequence[float] | None] | None = None,
) -> list[Path]:
    """One ROC curve per scenario or backbone, its AUC (and 95 % CI from ``cis``) in the legend."""
    return _save(_roc_figure(curves, title, cis), stem)


# --- confusion ------------------------------------------------------------------------------


def _confusion_figure(confusions: Mapping[str, Mapping[str, int]]) -> Figure:
    if not confusions:
        raise MetricsInputError("no confusion matrices to plot")
    with _style():
        n = len(confusions)
        fig = Figure(figsize=(3.3 * n + 0.4, 3.4), dpi=DPI, layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
        for ax, (name, c) in zip(axes, confusions.items()):
            try:
                # rows truth (normal, abnormal), columns prediction: scikit-learn's layout
                counts = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]], dtype=int)
            except KeyError as err:
                raise MetricsInputError(f"{name}: confusion needs tp, fn, fp and tn; {err} is missing") from err
            totals = counts.sum(axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                share = np.where(totals > 0, counts / totals, 0.0)
            ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
            for (i, j), count in np.ndenumerate(counts):
                pct = f"{100 * share[i, j]:.1f} %" if totals[i, 0] else "–"
                ax.text(
                    j,
                    i,
                    f"{count}\n{pct}",
                    ha="center",
                    va="center",
                    fontsize=10,
                    color="white" if share[i, j] > 0.55 else "black",
                )
            ax.set_xticks([0, 1], ["normal", "abnormal"])
            ax.set_yticks([0, 1], ["normal", "abnormal"])
            ax.set_xlabel("Predicted")
            ax.set_ylabel("True")
            ax.set_title(name)
            for side in ("top", "right"):
                ax.spines[side].set_visible(True)
        fig.suptitle("Confusion matrices (count, % of true class)")
    return fig


def plot_confusion(confusions: Mapping[str, Mapping[str, int]], stem: Path) -> list[Path]:
    """One panel per scenario: counts and the share of each true class (row %)."""
    return _save(_confusion_figure(confusions), stem)


# --- calibration ----------------------------------------------------------------------------


def _calibration_figure(curves: Curves, n_bins: int = 10) -> Figure:
    with _style():
        fig = Figure(figsize=(5.0, 6.0), dpi=DPI, layout="constrained")
        top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
        top.plot([0, 1], [0, 1], color="0.55", linestyle="--", linewidth=1.0, label="perfectly calibrated")
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        for name, (labels, scores) in curves.items():
            y, s = _arrays(name, labels, scores)
            if s.size and (s.min() < 0.0 or s.max() > 1.0):
                raise MetricsInputError(f"{name}: calibration needs probabilities in [0, 1]")
            (line,) = top.plot([], [], marker="o", markersize=4, linewidth=1.5)
            reason = undefined_reason(y)
            if reason:
                line.set_label(f"{name}: undefined ({reason})")
                line.set_linestyle("none")
            else:
                observed, predicted = calibration_curve(y, s, n_bins=n_bins, strategy="uniform")
                line.set_data(predicted, observed)
                line.set_label(name)
            bottom.hist(s, bins=edges, histtype="step", linewidth=1.5, color=line.get_color())
        top.set(xlim=(0, 1), ylim=(-0.02, 1.02), title="Calibration")
        top.set_ylabel("Observed share abnormal")
        top.legend(loc="upper left")
        top.grid(True, linewidth=0.4, alpha=0.5)
        bottom.set_xlabel("Predicted probability of abnormal")
        bottom.set_ylabel("Images")
    return fig


def plot_calibration(curves: Curves, stem: Path, n_bins: int = 10) -> list[Path]:
    """Reliability diagram (scikit-learn's ``calibration_curve``, equal-width bins) over a score histogram."""
    return _save(_calibration_figure(curves, n_bins), stem)


# --- gallery --------------------------------------------------------------------------------


def _group_of(item: Mapping[str, Any]) -> str:
    group = item.get("group") or str(item.get("title", "")).split(" ")[0]
    return str(group).upper()


def _gallery_rows(items: Sequence[Mapping[str, Any]], columns: int) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Rows of at most ``columns`` items, each row one group, groups in TP, FP, FN order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        groups.setdefault(_group_of(item), []).append(item)
    order = sorted(groups, key=lambda g: (GALLERY_GROUPS.index(g) if g in GALLERY_GROUPS else len(GALLERY_GROUPS), g))
    rows = []
    for g in order:
        members = groups[g]
        rows += [(g, members[i : i + columns]) for i in range(0, len(members), columns)]
    return rows


def _gallery_figure(items: Sequence[Mapping[str, Any]], columns: int = 4) -> Figure:
    if not items:
        raise MetricsInputError("the gallery has no items")
    if columns < 1:
        raise MetricsInputError(f"columns must be >= 1, got {columns}")
    rows = _gallery_rows(items, columns)
    columns = max(len(members) for _, members in rows)  # no empty columns when every group is short
    with _style():
        fig = Figure(figsize=(2.4 * columns + 0.6, 2.6 * len(rows) + 0.5), dpi=DPI, layout="constrained")
        axes = fig.subplots(len(rows), columns, squeeze=False)
        for r, (group, members) in enumerate(rows):
            for c in range(columns):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c == 0:
                    ax.set_ylabel(group, fontsize=12, fontweight="bold", rotation=0, ha="right", va="center")
                if c >= len(members):
                    ax.set_facecolor("none")
                    continue
                _draw_item(ax, members[c])
        fig.legend(
            handles=[
                Line2D([], [], color=PRED_COLOUR, linewidth=2, label="predicted lesion"),
                Line2D([], [], color=TRUE_COLOUR, linewidth=2, linestyle="--", label="reference lesion"),
            ],
            loc="outside upper center",
            ncols=2 if columns > 1 else 1,
            frameon=False,
        )
    return fig


def _draw_item(ax: Any, item: Mapping[str, Any]) -> None:
    image = np.asarray(item["image"], dtype=float)
    if image.ndim != 2:
        raise MetricsInputError(f"gallery images must be 2-D greyscale, got shape {image.shape}")
    h, w = image.shape
    # extent in the original pixel-edge coordinates: boxes need no rescaling for the
    # thumbnail, and a box edge at x lies on the boundary between pixel columns x-1 and x
    ax.imshow(_thumbnail(image), cmap="gray", vmin=0.0, vmax=1.0, extent=(0, w, h, 0), interpolation="antialiased")
    for box in item.get("true_boxes") or []:
        _box(ax, box, TRUE_COLOUR, "--")
    # predictions drawn last so the red box stays visible where it coincides with the reference
    for box in item.get("pred_boxes") or []:
        _box(ax, box, PRED_COLOUR, "-")
    ax.set_title(str(item.get("title", "")), fontsize=9)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """Shrink to at most ``GALLERY_MAX_SIDE`` px: the SVG embeds every pixel, and a panel
    2.4 inches wide at 200 dpi shows under 500 of them anyway."""
    h, w = image.shape
    scale = GALLERY_MAX_SIDE / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image.astype(np.float32)).resize(size, Image.Resampling.BILINEAR))


def _box(ax: Any, box: Sequence[float], colour: str, style: str) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=2.0, linestyle=style))


def plot_gallery(items: Sequence[Mapping[str, Any]], stem: Path, columns: int = 4) -> list[Path]:
    """True positives, false positives, false negatives in rows (the paper's Fig. 6).

    Each item: ``image`` (float HxW in [0, 1]), ``pred_boxes`` and ``true_boxes``
    (``[x0, y0, x1, y1]`` in image pixels; predictions red, references green dashed),
    ``title`` (e.g. ``"TP 0.93"``) and optionally ``group`` (else the title's first word).
    Titles are drawn as given: callers put outcome and score there, never a file name or
    anything about the patient.
    """
    return _save(_gallery_figure(items, columns), stem)


__all__ = [
    "DPI",
    "plot_calibration",
    "plot_confusion",
    "plot_gallery",
    "plot_roc",
    "roc_label",
]
