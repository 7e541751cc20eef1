"""``REPORT/``: ``metrics.json``, ``report.md``, ``report.html`` and the figures of one evaluation.

The report is built once as a list of blocks (headings, paragraphs, tables, figures) and then
rendered to Markdown and to HTML, so the two always say the same thing. Input is the
``metrics.json`` contract of DESIGN.md; every key beyond ``scenarios`` is optional, and a
number that is ``None`` (undefined, e.g. AUC on one class) is written out in words.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from limbscan.eval import figures as fig
from limbscan.eval.metrics import format_metric
from limbscan.io.meta import BODY_PARTS
from limbscan.utils.files import write_json_atomic, write_text_atomic

SYNTHETIC_BANNER = (
    "These figures come from SYNTHETIC phantoms, not radiographs: they show that the pipeline "
    "runs and say nothing about performance on real images."
)
METRIC_NAMES: dict[str, str] = {
    "auc": "AUC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "accuracy": "accuracy",
    "ppv": "PPV",
    "npv": "NPV",
    "f1": "F1",
    "kappa": "Cohen's κ",
}
FIGURE_CAPTIONS: dict[str, str] = {
    "roc": "ROC curves, AUC in the legend (cf. the paper's Fig. 5)",
    "confusion": "Confusion matrices at the operating threshold",
    "calibration": "Calibration: observed share abnormal against predicted probability",
    "gallery": "True positives, false positives and false negatives; predicted box red, reference green dashed "
    "(cf. the paper's Fig. 6)",
}
# Why the hardware tag gets its own line: FracAtlas puts orthopaedic hardware only on fractured
# images, so "metal present" alone separates the classes on that subset.
TAG_NOTES: dict[str, str] = {
    "hardware": "Every image with orthopaedic hardware in this data is fractured, so a model can score by spotting "
    "metal; the AUC without hardware measures fracture detection itself.",
}
TAG_VALUE_NAMES: dict[str, dict[str, str]] = {"hardware": {"0": "without hardware", "1": "with hardware"}}
GENERIC_TAG_NOTE = (
    "AUC within each value of the tag beside the overall AUC: a gap shows how much the tag drives the score."
)
UNSEEN_MARK = "(unseen in training)"
# The levels of limbscan.operating_points, in the words a reader sees.
OPERATING_POINT_NAMES: dict[str, str] = {"likely": "likely (balanced)", "suspected": "suspected (high sensitivity)"}
LOCALISATION_NAMES: dict[str, str] = {
    "n": "images with lesion boxes",
    "ap50": "box AP @ IoU 0.5",
    "top_box_hit": "top box hits a lesion",
}


# --- blocks ---------------------------------------------------------------------------------


@dataclass
class _Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "banner" | "table" | "figure"
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)  # right-align these columns


def _table(header: list[str], rows: list[list[str]], numeric: Sequence[bool] | None = None) -> _Block:
    numeric = list(numeric) if numeric is not None else [False] + [True] * (len(header) - 1)
    return _Block("table", header=header, rows=rows, numeric=numeric)


# --- number formatting ----------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, str):  # e.g. the localisation's hit mode
        return value
    return format_metric(value, digits)  # None or not finite: "undefined"


def _with_ci(value: Any, ci: Sequence[float] | None) -> str:
    if value is None or not ci or ci[0] is None or ci[1] is None:
        return _num(value)
    return f"{_num(value)} [{_num(ci[0])}, {_num(ci[1])}]"


def _p(p: Any) -> str:
    return "< 0.001" if p is not None and p < 0.001 else format_metric(p)


def _reason(entry: Mapping[str, Any], fallback: str | None = None) -> str:
    """Why AUC is undefined for this entry, from what the entry tells about its classes."""
    if entry.get("auc_undefined_reason"):
        return str(entry["auc_undefined_reason"])
    n, pos = entry.get("n"), entry.get("n_abnormal", entry.get("n_pos"))
    if n is not None and pos is not None:
        if n == 0:
            return "no images"
        if pos == 0:
            return "no abnormal images"
        if pos == n:
            return "no normal images"
    return fallback or "one class only"


def _auc(entry: Mapping[str, Any], fallback: str | None = None, ci: bool = True) -> str:
    if entry.get("auc") is None:
        return f"undefined ({_reason(entry, fallback)})"
    return _with_ci(entry["auc"], entry.get("auc_ci95") if ci else None)


# --- sections -------------------------------------------------------------------------------


def _global_reason(metrics: Mapping[str, Any]) -> str | None:
    n, pos = metrics.get("n"), metrics.get("n_abnormal")
    if n is None or pos is None:
        return None
    return _reason({"n": n, "n_abnormal": pos}) if pos in (0, n) else None


def _threshold_line(metrics: Mapping[str, Any]) -> str:
    method = metrics.get("threshold_method", "youden")
    target = metrics.get("target_sensitivity")
    how = f"target sensitivity {_num(target)}" if method == "sensitivity" or target is not None else "Youden's J"
    line = f"Operating threshold chosen on the validation split ({how}) and applied unchanged to this split."
    suspected = metrics.get("suspected_sensitivity")
    if suspected is not None:
        line += (f" So was a second, high-sensitivity threshold ('suspected': the most specific reaching "
                 f"sensitivity {_num(suspected)} on validation).")
    if metrics.get("split") == "val":
        line += " This report IS the validation split, so its sensitivity and specificity are optimistic."
    return line


def _header_blocks(metrics: Mapping[str, Any], title: str) -> list[_Block]:
    blocks = [_Block("h1", title)]
    if metrics.get("synthetic"):  # said first, before any number
        blocks.append(_Block("banner", SYNTHETIC_BANNER))
    n, pos = metrics.get("n"), metrics.get("n_abnormal")
    summary = f"Split: {metrics.get('split', 'unknown')}"
    if n is not None:
        summary += f"; {n} images"
        if pos is not None:
            summary += f", {pos} abnormal, {n - pos} normal"
    blocks.append(_Block("p", summary + "."))
    blocks.append(_Block("p", _threshold_line(metrics)))
    reason = _global_reason(metrics)
    if reason:
        blocks.append(
            _Block("p", f"AUC is undefined on this split ({reason}); every metric that is defined is reported.")
        )
    return blocks


def _scenario_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    scenarios: Mapping[str, Mapping[str, Any]] = metrics.get("scenarios", {})
    if not scenarios:
        return [_Block("p", "No scenario was evaluated.")]
    fallback = _global_reason(metrics)
    header = [
        "scenario",
        *(METRIC_NAMES[m] + (" [95 % CI]" if m in ("auc", "sensitivity") else "") for m in METRIC_NAMES),
        "threshold",
    ]
    rows = []
    for name, s in scenarios.items():
        cells = [name, _auc(s, fallback)]
        cells += [_with_ci(s.get(m), s.get(f"{m}_ci95")) for m in list(METRIC_NAMES)[1:]]
        rows.append([*cells, _num(s.get("threshold"))])
    blocks = [
        _Block("h2", "Image-level results per scenario (the paper's Table 5)"),
        _table(header, rows),
        _Block(
            "p", metrics.get("ci_method", "95 % confidence intervals by stratified bootstrap, resampling patients.")
        ),
    ]
    studies = {name: s["study_level"] for name, s in scenarios.items() if s.get("study_level")}
    if studies:
        first = next(iter(studies.values()))
        blocks += [
            _Block("h3", f"Study-level AUC ({first['n']} studies, {first['n_abnormal']} abnormal; a study scores "
                         f"its highest image)"),
            _table(["scenario", "AUC"], [[name, _auc(st, fallback)] for name, st in studies.items()]),
        ]
    confusion = [
        [name, *(_num(s["confusion"].get(k)) for k in ("tp", "fn", "fp", "tn"))]
        for name, s in scenarios.items()
        if s.get("confusion")
    ]
    if confusion:
        blocks += [
            _Block("h3", "Confusion counts at the operating threshold"),
            _table(["scenario", "TP", "FN", "FP", "TN"], confusion),
        ]
    return blocks


def _operating_point_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    """Sensitivity and specificity at each operating point: on this split, and on validation
    where the point was chosen (the reader sees how much of the target carried over)."""
    scenarios: Mapping[str, Mapping[str, Any]] = metrics.get("scenarios", {})
    rows, notes, missing = [], [], []
    for name, s in scenarios.items():
        points = s.get("operating_points")
        if not points:
            continue
        for level, label in OPERATING_POINT_NAMES.items():
            p = points.get(level)
            if p is None:
                if level == "suspected":
                    missing.append(name)
                continue
            c = p.get("confusion") or {}
            rows.append([name, label, str(p.get("rule", "")), _num(p.get("threshold")),
                         _with_ci(p.get("sensitivity"), p.get("sensitivity_ci95")),
                         _with_ci(p.get("specificity"), p.get("specificity_ci95")),
                         *(_num(c.get(k)) for k in ("tp", "fn", "fp", "tn")),
                         _num(p.get("val_sensitivity")), _num(p.get("val_specificity"))])
            if p.get("note"):
                notes.append(f"{name}, {level}: {p['note']}.")
    if not rows:
        return []
    header = ["scenario", "operating point", "chosen by", "threshold", "sensitivity [95 % CI]",
              "specificity [95 % CI]", "TP", "FN", "FP", "TN", "validation sensitivity", "validation specificity"]
    blocks = [
        _Block("h3", "Operating points: likely and suspected"),
        _Block("p", "Both thresholds were chosen on the validation split and are applied here unchanged: at or above "
                    "the likely one an image is 'likely' abnormal (solid box), between the two 'suspected' (dashed "
                    "box). The suspected point's figures count every image at or above it, the likely ones included."),
        _table(header, rows, [False, False, False] + [True] * (len(header) - 3)),
    ]
    blocks += [_Block("p", note) for note in notes]
    if missing:
        blocks.append(_Block("p", f"No suspected point for {', '.join(missing)}: the bundle was exported before "
                                  "limbscan chose one; export the run again to get it."))
    return blocks


def _backbone_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    rows_in: Sequence[Mapping[str, Any]] = metrics.get("backbones") or []
    if not rows_in:
        return []
    keys = [k for k in ("backbone", "scenario") if any(k in r for r in rows_in)]
    keys += [m for m in METRIC_NAMES if any(m in r for r in rows_in)]
    skip = set(keys) | {f"{m}_ci95" for m in METRIC_NAMES} | {"auc_undefined_reason"}
    for r in rows_in:  # extra columns (parameters, seconds, ...) in first-seen order
        keys += [k for k in r if k not in skip and k not in keys]
    rows = []
    for r in rows_in:
        row = []
        for k in keys:
            if k == "auc":
                row.append(_auc(r))
            elif k in METRIC_NAMES:
                row.append(_with_ci(r.get(k), r.get(f"{k}_ci95")))
            elif k in ("backbone", "scenario") or isinstance(r.get(k), str):
                row.append(str(r.get(k, "")))
            else:
                row.append(_num(r.get(k), digits=1 if abs(r.get(k) or 0) >= 10 else 3))
        rows.append(row)
    header = [METRIC_NAMES.get(k, k.replace("_", " ")) for k in keys]
    numeric = [k not in ("backbone", "scenario") for k in keys]
    return [_Block("h2", "Per backbone (the paper's Tables 3 and 4)"), _table(header, rows, numeric)]


def _comparison_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    comparisons: Sequence[Mapping[str, Any]] = metrics.get("comparisons") or []
    if not comparisons:
        return []
    scenarios = metrics.get("scenarios", {})
    rows = []
    for c in comparisons:
        a, b = str(c.get("a")), str(c.get("b"))
        auc_a = c.get("auc_a", scenarios.get(a, {}).get("auc"))
        auc_b = c.get("auc_b", scenarios.get(b, {}).get("auc"))
        diff = c.get("auc_diff", c.get("diff"))
        if diff is None and auc_a is not None and auc_b is not None:
            diff = auc_a - auc_b
        rows.append([a, b, _num(auc_a), _num(auc_b), _num(diff), _p(c.get("delong_p"))])
    return [
        _Block("h2", "AUC comparisons (DeLong test)"),
        _table(
            ["A", "B", "AUC A", "AUC B", "AUC difference (A − B)", "DeLong p"],
            rows,
            [False, False, True, True, True, True],
        ),
        _Block("p", "Two-sided DeLong test for two correlated AUCs on the same images."),
    ]


def _part_order(part: str) -> tuple[int, str]:
    return (BODY_PARTS.index(part) if part in BODY_PARTS else len(BODY_PARTS), part)


def _group_table(
    scenarios: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, Mapping[str, Mapping[str, Any]]],
    label: dict[str, str],
    overall: Mapping[str, Any] | None = None,
) -> _Block:
    """Rows: groups; columns: n (and abnormal) then one AUC column per scenario.

    ``groups`` maps scenario -> group -> entry; entries of one group share images across
    scenarios, so n is taken from the first scenario that has the group. ``overall`` (the
    whole metrics dict) adds an "all images" row first.
    """
    keys = list(label)
    names = list(scenarios)
    rows = []
    if overall:
        n, pos = overall.get("n"), overall.get("n_abnormal")
        rows.append(
            [
                "all images",
                _num(n) if n is not None else "",
                _num(pos) if pos is not None else "",
                *(_auc(scenarios[s], ci=False) for s in names),
            ]
        )
    for key in keys:
        first = next(groups[s][key] for s in names if key in groups.get(s, {}))
        pos = first.get("n_abnormal", first.get("n_pos"))
        aucs = [_auc(groups[s][key], ci=False) if key in groups.get(s, {}) else "—" for s in names]
        rows.append([label[key], _num(first.get("n")), _num(pos) if pos is not None else "", *aucs])
    return _table(["group", "n", "abnormal", *(f"AUC {s}" for s in names)], rows)


def _body_part_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    scenarios = metrics.get("scenarios", {})
    groups = {s: e.get("by_body_part") or {} for s, e in scenarios.items()}
    parts = sorted({p for g in groups.values() for p in g}, key=_part_order)
    if not parts:
        return []
    unseen = set(metrics.get("unseen_body_parts") or [])
    unseen |= {p for g in groups.values() for p, e in g.items() if e.get("seen") is False}
    label = {p: f"{p} {UNSEEN_MARK}" if p in unseen else p for p in parts}
    blocks = [_Block("h2", "Per body part"), _group_table(scenarios, groups, label)]
    if unseen:
        names = ", ".join(sorted(unseen, key=_part_order))
        blocks.append(
            _Block(
                "p",
                f"Not in the model's training data: {names}. Their figures measure how the model "
                "transfers to a body part it never saw.",
            )
        )
    return blocks


def _gate_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    """What the bundle's input gate would have kept out of scope on this split (scored regardless)."""
    gate = metrics.get("gate")
    if not gate:
        return []
    by = gate.get("by") or {}
    return [_Block("h2", "Input gate"), _Block(
        "p", f"Of {gate['n']} images, the input gate would keep {gate['n_out_of_scope']} out of scope "
             f"({by.get('header', 0)} by their DICOM header, {by.get('pixels', 0)} by their pixels); every image is "
             f"scored above all the same, so these figures compare with runs scored without a gate.")]


def _training_data_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    """The datasets the evaluated model trained on, where its run recorded them (main and auxiliary)."""
    data: Sequence[Mapping[str, Any]] = metrics.get("training_data") or []
    if not data:
        return []
    rows = [
        [str(d.get("role", "")), str(d.get("path", "")), str(d.get("split", "")), _num(d.get("images")),
         _num(d.get("abnormal")), ", ".join(sorted(d.get("body_parts") or {}, key=_part_order))]
        for d in data
    ]
    return [
        _Block("h2", "Training data"),
        _table(["role", "dataset", "split used", "images", "abnormal", "body parts"], rows,
               [False, False, False, True, True, False]),
        _Block("p", "Auxiliary datasets are training images only: never validation (thresholds) or test."),
    ]


def _tag_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    scenarios = metrics.get("scenarios", {})
    tags = sorted({t for e in scenarios.values() for t in (e.get("by_tag") or {})})
    if not tags:
        return []
    blocks = [_Block("h2", "Per image tag")]
    for tag in tags:
        groups = {s: (e.get("by_tag") or {}).get(tag) or {} for s, e in scenarios.items()}
        values = sorted({str(v) for g in groups.values() for v in g})
        groups = {s: {str(v): e for v, e in g.items()} for s, g in groups.items()}
        names = TAG_VALUE_NAMES.get(tag, {})
        label = {v: names.get(v, f"{tag} = {v}") for v in values}
        blocks += [
            _Block("h3", tag),
            _Block("p", TAG_NOTES.get(tag, GENERIC_TAG_NOTE)),
            _group_table(scenarios, groups, label, overall=metrics),
        ]
        if tag == "hardware" and any("0" in g for g in groups.values()):
            pairs = [
                f"{s} {_auc(groups[s]['0'], ci=False)} without hardware vs {_auc(scenarios[s], ci=False)} overall"
                for s in scenarios
                if "0" in groups[s]
            ]
            blocks.append(_Block("p", "AUC: " + "; ".join(pairs) + "."))
    return blocks


def _localisation_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    scenarios = metrics.get("scenarios", {})
    loc = {s: e["localisation"] for s, e in scenarios.items() if e.get("localisation")}
    loc.update({f"{s} (Grad-CAM box)": e["localisation_gradcam"] for s, e in scenarios.items()
                if e.get("localisation_gradcam")})
    if not loc:
        return []
    keys = [k for k in LOCALISATION_NAMES if any(k in v for v in loc.values())]
    keys += sorted({k for v in loc.values() for k in v} - set(keys))
    rows = [[s, *(_num(v.get(k)) if k in v else "—" for k in keys)] for s, v in loc.items()]
    return [
        _Block("h2", "Localisation (images with lesion boxes)"),
        _table(["scenario", *(LOCALISATION_NAMES.get(k, k.replace("_", " ")) for k in keys)], rows),
    ]


def _figure_blocks(figures: Mapping[str, Path] | None) -> list[_Block]:
    if not figures:
        return []
    blocks = [_Block("h2", "Figures")]
    for key, path in figures.items():
        blocks.append(_Block("figure", _link(path), header=[FIGURE_CAPTIONS.get(key, key)]))
    return blocks


def _link(path: Path | str) -> str:
    # the report sits beside its figures, so a bare file name is the portable relative link
    path = Path(path)
    return path.name if path.is_absolute() else path.as_posix()


def _blocks(metrics: Mapping[str, Any], title: str, figures: Mapping[str, Path] | None) -> list[_Block]:
    return [
        *_header_blocks(metrics, title),
        *_scenario_blocks(metrics),
        *_operating_point_blocks(metrics),
        *_backbone_blocks(metrics),
        *_comparison_blocks(metrics),
        *_body_part_blocks(metrics),
        *_training_data_blocks(metrics),
        *_gate_blocks(metrics),
        *_tag_blocks(metrics),
        *_localisation_blocks(metrics),
        *_timing_blocks(metrics),
        *_figure_blocks(figures),
    ]


def _timing_blocks(metrics: Mapping[str, Any]) -> list[_Block]:
    """``limbscan benchmark``'s cost of each stage: wall time and peak memory, as measured."""
    timing = metrics.get("timing")
    if not timing:
        return []
    rows = [[t["stage"], f"{t['seconds'] / 60:.1f}", _num(t.get("peak_rss_mb"), 0)] for t in timing]
    return [
        _Block("h2", "Wall time and peak memory"),
        _table(["stage", "minutes", "peak RSS (MB)"], rows),
        _Block("p", metrics.get("timing_note", "Peak RSS is the process's high-water mark at the end of the stage.")),
    ]


# --- renderers ------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _to_markdown(blocks: list[_Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "banner":
            out += [f"> **{b.text}**", ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "table":
            out.append("| " + " | ".join(map(_md_cell, b.header)) + " |")
            out.append("|" + "|".join("---:" if num else "---" for num in b.numeric) + "|")
            out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b.rows]
            out.append("")
        elif b.kind == "figure":
            out += [f"![{b.header[0]}]({b.text})", "", f"*{b.header[0]}.*", ""]
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 70em; margin: 2em auto;
       padding: 0 1em; color: #1a1a1a; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.banner { background: #fff3cd; border: 2px solid #e0a800; padding: 0.8em 1em; font-weight: bold; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; }
@media print { body { max-width: none; } h2 { page-break-after: avoid; } table, figure { page-break-inside: avoid; } }
"""


def _to_html(blocks: list[_Block], title: str) -> str:
    def e(text: str) -> str:
        return html.escape(text, quote=False)  # text nodes; attributes below use quote=True

    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
    ]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "banner":
            out.append(f'<div class="banner" role="alert">{e(b.text)}</div>')
        elif b.kind == "p":
            out.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "table":
            out.append("<table>")
            out.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr></thead>")
            out.append("<tbody>")
            for row in b.rows:
                cells = "".join(
                    f'<td class="num">{e(c)}</td>' if num else f"<td>{e(c)}</td>" for c, num in zip(row, b.numeric)
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</tbody></table>")
        elif b.kind == "figure":
            out.append(
                f'<figure><img src="{html.escape(b.text)}" alt="{html.escape(b.header[0])}">'
                f"<figcaption>{e(b.header[0])}</figcaption></figure>"
            )
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def metrics_markdown(
    metrics: Mapping[str, Any], title: str = "limbscan evaluation", figures: Mapping[str, Path] | None = None
) -> str:
    """The report as Markdown: per-scenario (Table 5), per-backbone (Tables 3-4), DeLong, groups."""
    return _to_markdown(_blocks(metrics, title, figures))


def metrics_html(metrics: Mapping[str, Any], figures: Mapping[str, Path], title: str = "limbscan evaluation") -> str:
    """The same content as :func:`metrics_markdown`, as one self-contained HTML page.

    Styles are inline; figures are ``<img>`` links relative to the report (a bare file name
    for an absolute path), so the folder can be moved or zipped as a whole.
    """
    return _to_html(_blocks(metrics, title, figures), title)


# --- writing --------------------------------------------------------------------------------


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
