"""What a reader returns beside the pixels. No field ever holds patient data."""

from __future__ import annotations

from dataclasses import dataclass, field

# The parts limbscan is built for: what free text and DICOM tags are mapped onto
# (limbscan.io.bodypart) and what synthetic phantoms show.
LOWER_LIMB_PARTS = ("toe", "foot", "ankle", "leg", "knee", "femur", "hip")
# Parts that come with auxiliary training data (FracAtlas' hand and shoulder images); ``mixed``
# is an image that shows several of them. Never read from a file's own tags.
OTHER_BODY_PARTS = ("hand", "shoulder", "mixed")
# Every body part a dataset may name, in report order (lower limb first).
BODY_PARTS = LOWER_LIMB_PARTS + OTHER_BODY_PARTS


@dataclass
class ImageMeta:
    width: int
    height: int
    format: str  # "dicom", "png" or "jpeg"
    pixel_spacing: tuple[float, float] | None = None  # mm per pixel (row, column), where known
    body_part: str | None = None  # one of LOWER_LIMB_PARTS where the file says so, else None
    bits_stored: int | None = None
    photometric: str | None = None  # DICOM PhotometricInterpretation or PIL mode
    modality: str | None = None
    # (DICOM keyword, body part, the words that named it) from the first header field that names a
    # body part, lower limb or not (limbscan.io.bodypart.body_region): what the input gate reads.
    header_region: tuple[str, str, str] | None = None
    # A JPEG that ended early but still decoded: the pixels are used and the caller is told.
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)
