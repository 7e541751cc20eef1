"""PLACEHOLDER (being replaced by the io work): minimal PNG/JPEG reader so other modules run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from limbscan.errors import BadInputError
from limbscan.io.meta import ImageMeta


def sniff_format(path: str | Path) -> str | None:
    head = Path(path).read_bytes()[:132]
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG"):
        return "png"
    if head.startswith(b"\xff\xd8"):
        return "jpeg"
    return None


def read_image(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    path = Path(path)
    fmt = sniff_format(path)
    if fmt not in ("png", "jpeg"):
        raise BadInputError(path, "not a PNG or JPEG image")
    with Image.open(path) as im:
        arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return arr, ImageMeta(width=arr.shape[1], height=arr.shape[0], format=fmt)
