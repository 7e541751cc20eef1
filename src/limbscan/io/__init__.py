"""Reading radiographs: DICOM (any transfer syntax pydicom + pylibjpeg decode), PNG, JPEG.

``read_image(path)`` returns ``(pixels, meta)``: a float32 H x W array in [0, 1] with bone
bright (MONOCHROME1 inverted), and an :class:`ImageMeta`. Any failure is a
:class:`limbscan.errors.BadInputError` naming the file and the problem.
``Anonymizer`` / ``anonymize_tree`` de-identify DICOM (PS3.15 Annex E basic profile).
"""

from limbscan.io.anonymize import Anonymizer, anonymize_tree
from limbscan.io.bodypart import normalize_body_part
from limbscan.io.images import read_image, sniff_format
from limbscan.io.meta import BODY_PARTS, LOWER_LIMB_PARTS, ImageMeta

__all__ = [
    "BODY_PARTS",
    "LOWER_LIMB_PARTS",
    "Anonymizer",
    "ImageMeta",
    "anonymize_tree",
    "normalize_body_part",
    "read_image",
    "sniff_format",
]
