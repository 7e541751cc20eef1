"""The pieces a report is built of: :class:`Block` (heading, paragraph, table, figure) and the
number formatting every table cell goes through (``None`` or not finite: "undefined", in words)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from limbscan.eval.metrics import format_metric
from limbscan.io.meta import BODY_PARTS


@dataclass
class Block:
    kind: str  # "h1" | "h2" | "h3" | "p" | "banner" | "table" | "figure"
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)  # right-align these columns


def table(header: list[str], rows: list[list[str]], numeric: Sequence[bool] | None = None) -> Block:
    """A table block; by default the first column is text and the others numbers."""
    numeric = list(numeric) if numeric is not None else [False] + [True] * (len(header) - 1)
    return Block("table", header=header, rows=rows, numeric=numeric)


def num(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, str):  # e.g. the localisation's hit mode
        return value
    return format_metric(value, digits)  # None or not finite: "undefined"


def with_ci(value: Any, ci: Sequence[float] | None) -> str:
    if value is None or not ci or ci[0] is None or ci[1] is None:
        return num(value)
    return f"{num(value)} [{num(ci[0])}, {num(ci[1])}]"


def p_value(p: Any) -> str:
    return "< 0.001" if p is not None and p < 0.001 else format_metric(p)


def why_undefined(entry: Mapping[str, Any], fallback: str | None = None) -> str:
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


def auc_text(entry: Mapping[str, Any], fallback: str | None = None, ci: bool = True) -> str:
    """An entry's AUC (with its CI), or "undefined (why)"."""
    if entry.get("auc") is None:
        return f"undefined ({why_undefined(entry, fallback)})"
    return with_ci(entry["auc"], entry.get("auc_ci95") if ci else None)


def part_order(part: str) -> tuple[int, str]:
    """Sort key: body parts in :data:`~limbscan.io.meta.BODY_PARTS` order, unknown ones last."""
    return (BODY_PARTS.index(part) if part in BODY_PARTS else len(BODY_PARTS), part)
