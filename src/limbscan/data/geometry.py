"""Box and image geometry: squaring an image for a classifier, the one crop function, and the
Mask R-CNN target of an image at any scale.

Boxes are XYXY in continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``), as
torchvision's detection models use; letterboxing pads with 0 (black, the usual background of a
radiograph) and centres the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.transforms.v2 import functional as TF

from limbscan.data.dataset import Dataset
from limbscan.errors import LimbscanError
from limbscan.models.labels import ABNORMAL, NORMAL

# A crop never shrinks below this many pixels a side (at the scale of the image it is cut
# from): a 3-pixel box of a hairline fracture still comes with the bone around it.
MIN_CROP_SIDE = 16
# Lesion boxes are at least this many pixels a side at cache scale: PaperAugment drops boxes
# under 1 px, and its smallest scale (0.85) must not turn a hairline lesion into one.
MIN_BOX_SIDE = 2.0


# -- geometry ------------------------------------------------------------------------------
def _as_chw(image: torch.Tensor) -> torch.Tensor:
    if image.ndim == 2:
        return image[None]
    if image.ndim != 3:
        raise ValueError(f"expected a [C, H, W] (or [H, W]) image tensor, got shape {tuple(image.shape)}")
    return image


def fit(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the longest side ``size`` and the aspect kept (each side at least 1)."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _pad_centred(image: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = image.shape
    out = image.new_zeros((image.shape[0], size, size))
    top, left = (size - h) // 2, (size - w) // 2
    out[:, top : top + h, left : left + w] = image
    return out


def letterbox(image: torch.Tensor, size: int) -> torch.Tensor:
    """[C, H, W] -> [C, size, size]: longest side resized to ``size``, centred, padded with 0.

    Enlarges as well as shrinks (a small crop fills the square). Antialiased when shrinking,
    so a 1024-px image does not alias into moire at 320 px.
    """
    if size < 1:
        raise ValueError(f"letterbox size must be a positive number of pixels, got {size}")
    image = _as_chw(image)
    h, w = image.shape[-2:]
    nh, nw = fit(h, w, size)
    if (nh, nw) != (h, w):
        image = TF.resize(image, [nh, nw], antialias=True)
    return _pad_centred(image, size)


def squash(image: torch.Tensor, size: int) -> torch.Tensor:
    """[C, H, W] -> [C, size, size]: resized to the square, aspect ratio not kept (antialiased)."""
    if size < 1:
        raise ValueError(f"squash size must be a positive number of pixels, got {size}")
    image = _as_chw(image)
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.resize(image, [size, size], antialias=True)
    return image


def square_input(image: torch.Tensor, size: int, resize: str = "letterbox") -> torch.Tensor:
    """The whole-image classifier's square input: :func:`letterbox` or :func:`squash` (``classifier.image_resize``)."""
    if resize == "squash":
        return squash(image, size)
    if resize != "letterbox":
        raise ValueError(f"image_resize must be letterbox or squash, got {resize!r}")
    return letterbox(image, size)


def crop_window(
    box_xyxy: Sequence[float] | torch.Tensor,
    image_hw: tuple[int, int],
    margin: float,
    min_side: int = MIN_CROP_SIDE,
) -> tuple[int, int, int, int]:
    """The integer window ``(x0, y0, x1, y1)`` that :func:`crop_box` cuts for a box.

    The box grows by ``margin`` times its width (height) on the left and right (top and
    bottom) and is clamped to the image (clamping shrinks the window, never shifts it). A
    window still shorter than ``min_side`` (or the image) becomes that long, centred on the
    box and slid inside the image.
    """
    if margin < 0:
        raise ValueError(f"crop margin must be >= 0, got {margin}")
    coords = [float(v) for v in (box_xyxy.tolist() if isinstance(box_xyxy, torch.Tensor) else box_xyxy)]
    if len(coords) != 4 or not all(math.isfinite(v) for v in coords):
        raise ValueError(f"expected a finite box [x0, y0, x1, y1], got {coords}")
    x0, y0, x1, y1 = coords
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {coords} is not XYXY (x1 < x0 or y1 < y0)")
    height, width = image_hw
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise ValueError(f"box {coords} lies outside the {width}x{height} image")
    window = []
    for lo, hi, extent in ((x0, x1, width), (y0, y1, height)):
        grow = margin * (hi - lo)
        lo, hi = lo - grow, hi + grow
        side = min(min_side, extent)
        if hi - lo < side:
            # Centred on the box, then slid inside the image: a tiny box at the border
            # still gets its full share of context.
            lo = min(max(0.0, (lo + hi - side) / 2), extent - side)
            hi = lo + side
        window.append((max(0, math.floor(lo)), min(extent, math.ceil(hi))))
    (cx0, cx1), (cy0, cy1) = window
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"box {coords} lies outside the {width}x{height} image")
    return cx0, cy0, cx1, cy1


def crop_box(
    image: torch.Tensor,
    box_xyxy: Sequence[float] | torch.Tensor,
    margin: float,
    size: int,
    min_side: int = MIN_CROP_SIDE,
) -> torch.Tensor:
    """Cut ``box_xyxy`` (in ``image``'s pixels) with a margin and letterbox it to [C, size, size].

    THE crop function: cascade training and inference both call it, so the classifier sees the
    same kind of input in both (:func:`crop_window` chooses the window). Slicing and an antialiased
    resize, not ``roi_align``: faster, and the box keeps its aspect (docs/benchmarks.md).
    """
    image = _as_chw(image)
    x0, y0, x1, y1 = crop_window(box_xyxy, tuple(image.shape[-2:]), margin, min_side)
    return letterbox(image[:, y0:y1, x0:x1], size)


# -- targets -------------------------------------------------------------------------------
def _box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """The pixels a box covers (at least one), as a uint8 H x W mask."""
    x0, y0, x1, y1 = box
    c0, r0 = min(width - 1, max(0, math.floor(x0))), min(height - 1, max(0, math.floor(y0)))
    c1, r1 = max(c0 + 1, min(width, math.ceil(x1))), max(r0 + 1, min(height, math.ceil(y1)))
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[r0:r1, c0:c1] = 1
    return mask


def _at_least_min_side(box: list[float], height: int, width: int) -> list[float]:
    """Grow a box thinner than MIN_BOX_SIDE (a hairline lesion shrunk to cache scale) about
    its centre, kept inside the image, so augmentation's sanitising does not drop it."""
    out = list(box)
    for lo, hi, extent in ((0, 2, width), (1, 3, height)):
        side = min(MIN_BOX_SIDE, float(extent))
        if out[hi] - out[lo] < side:
            start = min(max(0.0, (out[lo] + out[hi] - side) / 2), extent - side)
            out[lo], out[hi] = start, start + side
    return out


def _polygon_mask(
    polygons: list[list[float]], sx: float, sy: float, box: Sequence[float], height: int, width: int
) -> np.ndarray:
    """COCO polygons rasterised at scale (sx, sy), kept inside the box; box-shaped if empty."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) < 6:  # fewer than three vertices encloses nothing
            continue
        # PIL fills a pixel when its integer coordinate is inside; COCO's pixel i is centred
        # on i + 0.5, hence the half-pixel shift.
        xy = [(x * sx - 0.5, y * sy - 0.5) for x, y in zip(poly[0::2], poly[1::2])]
        draw.polygon(xy, fill=1, outline=1)
    box_mask = _box_mask(box, height, width)
    # The polygon's outline can reach one pixel past its box; the box is the truth the
    # detector's mask head is cropped to.
    mask = np.asarray(canvas, dtype=np.uint8) & box_mask
    return mask if mask.any() else box_mask


def detection_target(
    ds: Dataset, image: dict, height: int, width: int, unboxed: str = "whole"
) -> dict[str, torch.Tensor]:
    """Mask R-CNN's target for ``image`` drawn on an ``height`` x ``width`` version of it.

    Normal: one whole-image NORMAL box, full mask. Abnormal: each lesion box (scaled from
    original pixels), ABNORMAL, its polygons as mask. An abnormal image without any box gets
    a whole-image ABNORMAL box under ``unboxed="whole"``: the image-level label still teaches
    the detector, and the image score (best ABNORMAL box) stays defined for it.
    """
    sx, sy = width / image["width"], height / image["height"]
    boxes, masks, labels = [], [], []
    if int(image["label"]) == 1:
        for ann in ds.annotations_for(image["id"]):
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = _at_least_min_side([x * sx, y * sy, (x + w) * sx, (y + h) * sy], height, width)
            boxes.append(box)
            masks.append(_polygon_mask(ann.get("segmentation") or [], sx, sy, box, height, width))
            labels.append(ABNORMAL)
    if not boxes:
        if int(image["label"]) == 1 and unboxed != "whole":
            raise LimbscanError(f"abnormal image {image['id']} has no lesion box (unboxed={unboxed!r})")
        boxes.append([0.0, 0.0, float(width), float(height)])
        masks.append(np.ones((height, width), dtype=np.uint8))
        labels.append(ABNORMAL if int(image["label"]) == 1 else NORMAL)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "masks": torch.from_numpy(np.stack(masks)),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def drop_degenerate(target: dict[str, Any], min_size: float = 1.0) -> dict[str, Any]:
    """Keep boxes at least ``min_size`` px a side, with their masks and labels."""
    boxes = target["boxes"]
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    if bool(keep.all()):
        return target
    return {k: (v[keep] if k in ("boxes", "masks", "labels") else v) for k, v in target.items()}
