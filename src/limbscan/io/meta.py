"""What a reader returns beside the pixels. No field ever holds patient data."""

from __future__ import annotations

from dataclasses import dataclass, field

BODY_PARTS = ("toe", "foot", "ankle", "leg", "knee", "femur", "hip")


@dataclass
class ImageMeta:
    width: int
    height: int
    format: str  # "dicom", "png" or "jpeg"
    pixel_spacing: tuple[float, float] | None = None  # mm per pixel (row, column), where known
    body_part: str | None = None  # one of BODY_PARTS where the file says so, else None
    bits_stored: int | None = None
    photometric: str | None = None  # DICOM PhotometricInterpretation or PIL mode
    modality: str | None = None
    # A JPEG that ended early but still decoded: the pixels are used and the caller is told.
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
