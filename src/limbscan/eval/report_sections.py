"""The report's content: ``metrics.json`` (the DESIGN.md contract) to a list of blocks, one
section each, which :mod:`.report_render` writes as Markdown and as HTML. Every key beyond
``scenarios`` is optional: a section whose data is absent is left out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from limbscan.eval.report_blocks import (
    Block,
    auc_text,
    num,
    p_value,
    part_order,
    table,
    why_undefined,
    with_ci,
)

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


def _global_reason(metrics: Mapping[str, Any]) -> str | None:
    n, pos = metrics.get("n"), metrics.get("n_abnormal")
    if n is None or pos is None:
        return None
    return why_undefined({"n": n, "n_abnormal": pos}) if pos in (0, n) else None


def _threshold_line(metrics: Mapping[str, Any]) -> str:
    method = metrics.get("threshold_method", "youden")
    target = metrics.get("target_sensitivity")
    how = f"target sensitivity {num(target)}" if method == "sensitivity" or target is not None else "Youden's J"
    line = f"Operating threshold chosen on the validation split ({how}) and applied unchanged to this split."
    suspected = metrics.get("suspected_sensitivity")
    if suspected is not None:
        line += (f" So was a second, high-sensitivity threshold ('suspected': the most specific reaching "
                 f"sensitivity {num(suspected)} on validation).")
    if metrics.get("split") == "val":
        line += " This report IS the validation split, so its sensitivity and specificity are optimistic."
    return line


def _header_blocks(metrics: Mapping[str, Any], title: str) -> list[Block]:
    blocks = [Block("h1", title)]
    if metrics.get("synthetic"):  # said first, before any number
        blocks.append(Block("banner", SYNTHETIC_BANNER))
    n, pos = metrics.get("n"), metrics.get("n_abnormal")
    summary = f"Split: {metrics.get('split', 'unknown')}"
    if n is not None:
        summary += f"; {n} images"
        if pos is not None:
            summary += f", {pos} abnormal, {n - pos} normal"
    blocks.append(Block("p", summary + "."))
    blocks.append(Block("p", _threshold_line(metrics)))
    reason = _global_reason(metrics)
    if reason:
        blocks.append(
            Block("p", f"AUC is undefined on this split ({reason}); every metric that is defined is reported.")
        )
    return blocks


def _scenario_blocks(metrics: Mapping[str, Any]) -> list[Block]:
    scenarios: Mapping[str, Mapping[str, Any]] = metrics.get("scenarios", {})
    if not scenarios:
        return [Block("p", "No scenario was evaluated.")]
    fallback = _global_reason(metrics)
    header = [
        "scenario",
        *(METRIC_NAMES[m] + (" [95 % CI]" if m in ("auc", "sensitivity") else "") for m in METRIC_NAMES),
        "threshold",
    ]
    rows = []
    for name, s in scenarios.items():
        cells = [name, auc_text(s, fallback)]
        cells += [with_ci(s.get(m), s.get(f"{m}_ci95")) for m in list(METRIC_NAMES)[1:]]
        rows.append([*cells, num(s.get("threshold"))])
    blocks = [
        Block("h2", "Image-level results per scenario (the paper's Table 5)"),
        table(header, rows),
        Block(
            "p", metrics.get("ci_method", "95 % confidence intervals by stratified bootstrap, resampling patients.")
        ),
    ]
    studies = {name: s["study_level"] for name, s in scenarios.items() if s.get("study_level")}
    if studies:
        first = next(iter(studies.values()))
        blocks += [
            Block("h3", f"Study-level AUC ({first['n']} studies, {first['n_abnormal']} abnormal; a study scores "
                         f"its highest image)"),
            table(["scenario", "AUC"], [[name, auc_text(st, fallback)] for name, st in studies.items()]),
        ]
    confusion = [
        [name, *(num(s["confusion"].get(k)) for k in ("tp", "fn", "fp", "tn"))]
        for name, s in scenarios.items()
        if s.get("confusion")
    ]
    if confusion:
        blocks += [
            Block("h3", "Confusion counts at the operating threshold"),
            table(["scenario", "TP", "FN", "FP", "TN"], confusion),
        ]
    return blocks


def _operating_point_blocks(metrics: Mapping[str, Any]) -> list[Block]:
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
            rows.append([name, label, str(p.get("rule", "")), num(p.get("threshold")),
                         with_ci(p.get("sensitivity"), p.get("sensitivity_ci95")),
                         with_ci(p.get("specificity"), p.get("specificity_ci95")),
                         *(num(c.get(k)) for k in ("tp", "fn", "fp", "tn")),
                         num(p.get("val_sensitivity")), num(p.get("val_specificity"))])
            if p.get("note"):
                notes.append(f"{name}, {level}: {p['note']}.")
    if not rows:
        return []
    header = ["scenario", "operating point", "chosen by", "threshold", "sensitivity [95 % CI]",
              "specificity [95 % CI]", "TP", "FN", "FP", "TN", "validation sensitivity", "validation specificity"]
    blocks = [
        Block("h3", "Operating points: likely and suspected"),
        Block("p", "Both thresholds were chosen on the validation split and are applied here unchanged: at or above "
                    "the likely one an image is 'likely' abnormal (solid box), between the two 'suspected' (dashed "
                    "box). The suspected point's figures count every image at or above it, the likely ones included."),
        table(header, rows, [False, False, False] + [True] * (len(header) - 3)),
    ]
    blocks += [Block("p", note) for note in notes]
    if missing:
        blocks.append(Block("p", f"No suspected point for {', '.join(missing)}: the bundle was exported before "
                                  "limbscan chose one; export the run again to get it."))
    return blocks


def _backbone_blocks(metrics: Mapping[str, Any]) -> list[Block]:
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
                row.append(auc_text(r))
            elif k in METRIC_NAMES:
                row.append(with_ci(r.get(k), r.get(f"{k}_ci95")))
            elif k in ("backbone", "scenario") or isinstance(r.get(k), str):
                row.append(str(r.get(k, "")))
            else:
                row.append(num(r.get(k), digits=1 if abs(r.get(k) or 0) >= 10 else 3))
        rows.append(row)
    header = [METRIC_NAMES.get(k, k.replace("_", " ")) for k in keys]
    numeric = [k not in ("backbone", "scenario") for k in keys]
    return [Block("h2", "Per backbone (the paper's Tables 3 and 4)"), table(header, rows, numeric)]


def _comparison_blocks(metrics: Mapping[str, Any]) -> list[Block]:
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
        rows.append([a, b, num(auc_a), num(auc_b), num(diff), p_value(c.get("delong_p"))])
    return [
        Block("h2", "AUC comparisons (DeLong test)"),
        table(
            ["A", "B", "AUC A", "AUC B", "AUC difference (A − B)", "DeLong p"],
            rows,
            [False, False, True, True, True, True],
        ),
        Block("p", "Two-sided DeLong test for two correlated AUCs on the same images."),
    ]


def _group_table(
    scenarios: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, Mapping[str, Mapping[str, Any]]],
    label: dict[str, str],
    overall: Mapping[str, Any] | None = None,
) -> Block:
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
                num(n) if n is not None else "",
                num(pos) if pos is not None else "",
                *(auc_text(scenarios[s], ci=False) for s in names),
            ]
        )
    for key in keys:
        first = next(groups[s][key] for s in names if key in groups.get(s, {}))
        pos = first.get("n_abnormal", first.get("n_pos"))
        aucs = [auc_text(groups[s][key], ci=False) if key in groups.get(s, {}) else "—" for s in names]
        rows.append([label[key], num(first.get("n")), num(pos) if pos is not None else "", *aucs])
    return table(["group", "n", "abnormal", *(f"AUC {s}" for s in names)], rows)


def _body_part_blocks(metrics: Mapping[str, Any]) -> list[Block]:
    scenarios = metrics.get("scenarios", {})
    groups = {s: e.get("by_body_part") or {} for s, e in scenarios.items()}
    parts = sorted({p for g in groups.values() for p in g}, key=part_order)
    if not parts:
        return []
    unseen = set(metrics.get("unseen_body_parts") or [])
    unseen |= {p for g in groups.values() for p, e in g.items() if e.get("seen") is False}
    label = {p: f"{p} {UNSEEN_MARK}" if p in unseen else p for p in parts}
    blocks = [Block("h2", "Per body part"), _group_table(scenarios, groups, label)]
    if unseen:
        names = ", ".join(sorted(unseen, key=part_order))
        blocks.append(
            Block(
                "p",
                f"Not in the model's training data: {names}. Their figures measure how the model "
                "transfers to a body part it never saw.",
            )
        )
    return blocks


def _gate_blocks(metrics: Mapping[str, Any]) -> list[Block]:
    """What the bundle's input gate would have kept out of scope on this split (scored regardless)."""
    gate = metrics.get("gate")
    if not gate:
        return []
    by = gate.get("by") or {}
    return [Block("h2", "Input gate"), Block(
        "p", f"Of {gate['n']} images, the input gate would keep {gate['n_out_of_scope']} out of scope "
             f"({by.get('header', 0)} by their DICOM header, {by.get('pixels', 0)} by their pixels); every image is "
             f"scored above all the same, so these figures compare with runs scored without a gate.")]


def _training_data_blocks(metrics: Mapping[str, Any]) -> list[Block]:
    """The datasets the evaluated model trained on, where its run recorded them (main and auxiliary)."""
    data: Sequence[Mapping[str, Any]] = metrics.get("training_data") or []
    if not data:
        return []
    rows = [
        [str(d.get("role", "")), str(d.get("path", "")), str(d.get("split", "")), num(d.get("images")),
         num(d.get("abnormal")), ", ".join(sorted(d.get("body_parts") or {}, key=part_order))]
        for d in data
    ]
    return [
        Block("h2", "Training data"),
        table(["role", "dataset", "split used", "images", "abnormal", "body parts"], rows,
               [False, False, False, True, True, False]),
        Block("p", "Auxiliary datasets are training images only: never validation (thresholds) or test."),
    ]


def _tag_blocks(metrics: Mapping[str, Any]) -> list[Block]:
    scenarios = metrics.get("scenarios", {})
    tags = sorted({t for e in scenarios.values() for t in (e.get("by_tag") or {})})
    if not tags:
        return []
    blocks = [Block("h2", "Per image tag")]
    for tag in tags:
        groups = {s: (e.get("by_tag") or {}).get(tag) or {} for s, e in scenarios.items()}
        values = sorted({str(v) for g in groups.values() for v in g})
        groups = {s: {str(v): e for v, e in g.items()} for s, g in groups.items()}
        names = TAG_VALUE_NAMES.get(tag, {})
        label = {v: names.get(v, f"{tag} = {v}") for v in values}
        blocks += [
            Block("h3", tag),
            Block("p", TAG_NOTES.get(tag, GENERIC_TAG_NOTE)),
            _group_table(scenarios, groups, label, overall=metrics),
        ]
        if tag == "hardware" and any("0" in g for g in groups.values()):
            pairs = [
                f"{s} {auc_text(groups[s]['0'], ci=False)} without hardware vs {auc_text(scenarios[s], ci=False)} overall"
                for s in scenarios
                if "0" in groups[s]
            ]
            blocks.append(Block("p", "AUC: " + "; ".join(pairs) + "."))
    return blocks


def _localisation_blocks(metrics: Mapping[str, Any]) -> list[Block]:
    scenarios = metrics.get("scenarios", {})
    loc = {s: e["localisation"] for s, e in scenarios.items() if e.get("localisation")}
    loc.update({f"{s} (Grad-CAM box)": e["localisation_gradcam"] for s, e in scenarios.items()
                if e.get("localisation_gradcam")})
    if not loc:
        return []
    keys = [k for k in LOCALISATION_NAMES if any(k in v for v in loc.values())]
    keys += sorted({k for v in loc.values() for k in v} - set(keys))
    rows = [[s, *(num(v.get(k)) if k in v else "—" for k in keys)] for s, v in loc.items()]
    return [
        Block("h2", "Localisation (images with lesion boxes)"),
        table(["scenario", *(LOCALISATION_NAMES.get(k, k.replace("_", " ")) for k in keys)], rows),
    ]


def _figure_blocks(figures: Mapping[str, Path] | None) -> list[Block]:
    if not figures:
        return []
    blocks = [Block("h2", "Figures")]
    for key, path in figures.items():
        blocks.append(Block("figure", _link(path), header=[FIGURE_CAPTIONS.get(key, key)]))
    return blocks


def _link(path: Path | str) -> str:
    # the report sits beside its figures, so a bare file name is the portable relative link
    path = Path(path)
    return path.name if path.is_absolute() else path.as_posix()


def _timing_blocks(metrics: Mapping[str, Any]) -> list[Block]:
    """``limbscan benchmark``'s cost of each stage: wall time and peak memory, as measured."""
    timing = metrics.get("timing")
    if not timing:
        return []
    rows = [[t["stage"], f"{t['seconds'] / 60:.1f}", num(t.get("peak_rss_mb"), 0)] for t in timing]
    return [
        Block("h2", "Wall time and peak memory"),
        table(["stage", "minutes", "peak RSS (MB)"], rows),
        Block("p", metrics.get("timing_note", "Peak RSS is the process's high-water mark at the end of the stage.")),
    ]


def report_blocks(metrics: Mapping[str, Any], title: str, figures: Mapping[str, Path] | None) -> list[Block]:
    """Every section of the report, in reading order; ``figures`` maps a figure key to its file."""
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
