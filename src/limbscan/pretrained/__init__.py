"""The model limbscan ships: what ``limbscan predict``, ``serve``, ``listen`` and ``limbscan.load()``
use when no bundle is named (docs/model-card.md says what it is and how it was made)."""

from __future__ import annotations

from pathlib import Path

from limbscan.errors import LimbscanError

SHIPPED = Path(__file__).resolve().parent / "fracatlas-lowerlimb.limbscan"


def shipped_bundle() -> Path:
    """The shipped bundle's folder; a clear error where this installation lacks it."""
    if not (SHIPPED / "bundle.json").is_file():
        raise LimbscanError(f"{SHIPPED}: the shipped model is not in this installation; name a bundle "
                            "(limbscan export RUN -o NAME.limbscan makes one)")
    return SHIPPED


__all__ = ["SHIPPED", "shipped_bundle"]
