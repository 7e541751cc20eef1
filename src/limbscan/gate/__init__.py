"""The input gate: is this a lower-limb radiograph? Asked before any scenario scores
(:mod:`limbscan.analysis`), so a chest film or a photograph is "not analysed", not "likely abnormal".

First the DICOM header (:func:`header_verdict`): another modality or region is out of scope (the
reason names the tag), a lower-limb part in scope, a blank header decides nothing. Then, where the
header said nothing, the pixels (:class:`~limbscan.gate.model.PixelGate`, the bundle's ``gate.npz``).
docs/input-gate.md has how it was fitted and measured.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from limbscan.io.meta import LOWER_LIMB_PARTS, ImageMeta

# Modalities of projection radiographs: computed, digital, and (retired) conventional film.
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")
# "Other": what a secondary capture of a digitised film or a screenshot says; the pixels decide.
UNDECIDED_MODALITIES = ("OT",)
OUT_OF_SCOPE = "out_of_scope"
_DEFINED_TERM = re.compile(r"[A-Z0-9_ ]{1,16}")


@dataclass(frozen=True)
class ScopeVerdict:
    """Whether an image is what limbscan reads, who decided (``header``, ``pixels`` or ``off``),
    and why, in words that never quote patient data."""

    in_scope: bool
    decided_by: str
    reason: str
    region_score: float | None = None  # the pixel check's lower-limb score (above its threshold: lower limb)
    distance: float | None = None  # from the lower-limb training images (pixel check)

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


GATE_OFF = ScopeVerdict(True, "off", "input gate turned off")


def header_verdict(meta: ImageMeta) -> ScopeVerdict | None:
    """The header's verdict, or ``None`` where it says nothing that decides (PNG, JPEG, a blank
    or generic DICOM header): then the pixels decide."""
    if meta.format != "dicom":
        return None
    modality = (meta.modality or "").strip().upper()
    if modality and modality not in RADIOGRAPH_MODALITIES + UNDECIDED_MODALITIES:
        # Quoted only when it looks like a defined term: a malformed header could hold anything.
        shown = modality if _DEFINED_TERM.fullmatch(modality) else "(not a defined term)"
        return ScopeVerdict(False, "header", f"Modality {shown}: limbscan reads radiographs "
                                             f"({', '.join(RADIOGRAPH_MODALITIES)})")
    if meta.header_region is None:
        return None
    tag, part, words = meta.header_region
    if part in LOWER_LIMB_PARTS:
        return ScopeVerdict(True, "header", f"{tag} names the {part} ({words!r})")
    return ScopeVerdict(False, "header", f"{tag} names the {part} ({words!r}): limbscan reads "
                                         f"lower-limb radiographs")


__all__ = ["GATE_OFF", "OUT_OF_SCOPE", "RADIOGRAPH_MODALITIES", "UNDECIDED_MODALITIES", "ScopeVerdict",
           "header_verdict"]
