"""Dataset counts: per body part x label x split, as a JSON-friendly dict and as a rich table."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from limbscan.data.dataset import SPLITS, Dataset

LABEL_NAMES = {0: "normal", 1: "abnormal"}
UNSPLIT = "unsplit"
COLUMNS = (*SPLITS, UNSPLIT, "total")


def stats_table(ds: Dataset) -> dict[str, Any]:
    """Counts for ``limbscan data stats``; every key is a string, every count an int.

    ``by_body_part[part][normal|abnormal][train|val|test|unsplit|total]`` counts images,
    ``by_split[split]`` counts images, abnormal images and lesion annotations.
    """
    by_part: dict[str, dict[str, dict[str, int]]] = {}
    by_split = {s: {"n_images": 0, "n_normal": 0, "n_abnormal": 0, "n_annotations": 0} for s in COLUMNS}
    for image in ds.images:
        part = image.get("body_part") or "unknown"
        label = LABEL_NAMES[int(image["label"])]
        split = image.get("split") if image.get("split") in SPLITS else UNSPLIT
        cells = by_part.setdefault(part, {name: dict.fromkeys(COLUMNS, 0) for name in LABEL_NAMES.values()})
        n_ann = len(ds.annotations_for(image["id"]))
        for column in (split, "total"):
            cells[label][column] += 1
            by_split[column]["n_images"] += 1
            by_split[column][f"n_{label}"] += 1
            by_split[column]["n_annotations"] += n_ann
    patients = {image.get("patient_id") or f"image:{image['id']}" for image in ds.images}
    total = by_split.pop("total")
    return {
        "n_images": total["n_images"],
        "n_normal": total["n_normal"],
        "n_abnormal": total["n_abnormal"],
        "n_annotations": len(ds.coco["annotations"]),
        "n_patients": len(patients),
        "n_truncated": sum(bool(image.get("truncated")) for image in ds.images),
        "by_body_part": dict(sorted(by_part.items())),
        "by_split": by_split,
        "source": ds.info.get("source"),
        "synthetic": ds.synthetic,
    }


def stats_rows(stats: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table's columns and rows: one row per body part and label, then totals."""
    columns = [c for c in COLUMNS if c != UNSPLIT or stats["by_split"][UNSPLIT]["n_images"]]
    rows = []
    for part, labels in stats["by_body_part"].items():
        for label, cells in labels.items():
            if cells["total"]:
                rows.append([part, label, *(str(cells[c]) for c in columns)])
    for label in LABEL_NAMES.values():
        cells = [sum(stats["by_body_part"][p][label][c] for p in stats["by_body_part"]) for c in columns]
        rows.append(["all", label, *map(str, cells)])
    splits = stats["by_split"]
    rows.append(["all", "all", *(str(splits[c]["n_images"]) if c != "total" else str(stats["n_images"])
                                 for c in columns)])
    return columns, rows


def _title(stats: dict[str, Any]) -> str:
    return f"{stats['n_images']} images, {stats['n_abnormal']} abnormal, {stats['n_annotations']} lesion boxes"


SYNTHETIC_NOTE = "SYNTHETIC phantoms: not radiographs, not for reporting results"


def render_stats(stats: dict[str, Any]) -> Table:
    """A table for the terminal: one row per body part and label, one column per split."""
    columns, rows = stats_rows(stats)
    table = Table(title=_title(stats), caption=SYNTHETIC_NOTE if stats.get("synthetic") else None)
    table.add_column("body part")
    table.add_column("label")
    for column in columns:
        table.add_column(column, justify="right")
    n_parts = len(rows) - len(LABEL_NAMES) - 1
    for i, row in enumerate(rows):
        if i == n_parts:
            table.add_section()
        table.add_row(*row, style="bold" if i == len(rows) - 1 else None)
    return table


def stats_markdown(stats: dict[str, Any], title: str = "Dataset") -> str:
    """The same table as Markdown, for reports; a synthetic dataset says so at the top."""
    columns, rows = stats_rows(stats)
    lines = [f"# {title}", ""]
    if stats.get("synthetic"):
        lines += [f"> **{SYNTHETIC_NOTE}.** Drawn by `limbscan data synth` for tests and demos.", ""]
    lines += [
        f"{_title(stats)}; {stats['n_patients']} patients; source: {stats.get('source') or 'unknown'}.",
        "",
        "| " + " | ".join(["body part", "label", *columns]) + " |",
        "|" + "---|" * 2 + "---:|" * len(columns),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
