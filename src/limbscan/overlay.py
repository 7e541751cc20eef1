"""Pictures of a prediction for a reader: the radiograph in grey, the finding in red.

``render_overlay`` draws every detection's box (the best thicker) and mask, a caption (level,
probability, scenario) and optionally a Grad-CAM heatmap. The box's line says the level: solid
"likely", dashed "suspected", dotted below both. It never draws a file name or a header value:
an overlay can leave the hospital.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from limbscan.operating_points import LIKELY, NORMAL, SUSPECTED
from limbscan.utils.files import atomic_file

if TYPE_CHECKING:
    from limbscan.inference import Prediction

RED = (255, 0, 0)
AMBER = (255, 176, 0)
# Box line per level: None solid, else (on, off) in multiples of the line's width.
LINE_DASH: dict[str, tuple[int, int] | None] = {LIKELY: None, SUSPECTED: (5, 3), NORMAL: (1, 3)}
BOXES_FROM = {"detector": "detector", "cascade": "cascade", "gradcam": "Grad-CAM"}
SMALLEST_CAPTION_PX = 6  # below this a caption is unreadable anyway
CAPTION = {LIKELY: ("likely abnormal", RED), SUSPECTED: ("suspected abnormal", AMBER), NORMAL: ("normal", (255, 255, 255))}
MASK_ALPHA = 0.35  # masks shaded, not painted: the bone under them stays readable
HEATMAP_ALPHA = 0.6  # at the heatmap's hottest; colder pixels are blended proportionally less
# inferno, not jet: jet's hot end is red, which the overlay keeps for the boxes and masks.
HEATMAP_COLORMAP = "inferno"
CAPTION_FRACTION = 0.035  # caption height as a share of the overlay's longest side
MIN_CAPTION_PX = 12


def _scale(height: int, width: int, max_side: int) -> float:
    if max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    return min(1.0, max_side / max(height, width))


def _resize(array: np.ndarray, size_wh: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    if (array.shape[1], array.shape[0]) == size_wh:
        return array
    return np.asarray(Image.fromarray(array).resize(size_wh, resample))


def _grey_rgb(pixels: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    grey = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    grey = np.clip(_resize(grey, size_wh, Image.Resampling.LANCZOS), 0.0, 1.0)
    return np.repeat((grey * 255.0)[..., None], 3, axis=2)  # float, blended below, rounded once


def _blend_heatmap(rgb: np.ndarray, heatmap: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    from matplotlib import colormaps  # matplotlib is slow to import; only overlays with a heatmap need it

    heat = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    heat = np.clip(_resize(heat, size_wh, Image.Resampling.BILINEAR), 0.0, 1.0)
    colour = colormaps[HEATMAP_COLORMAP](heat)[..., :3] * 255.0
    alpha = (HEATMAP_ALPHA * heat)[..., None]
    return rgb * (1.0 - alpha) + colour * alpha


def _shade_mask(rgb: np.ndarray, mask: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    small = _resize(np.asarray(mask, dtype=np.uint8) * 255, size_wh, Image.Resampling.NEAREST) > 127
    rgb[small] = rgb[small] * (1.0 - MASK_ALPHA) + np.asarray(RED, dtype=np.float32) * MASK_ALPHA
    return rgb


def _caption(prediction: Prediction) -> str:
    boxes = f"; boxes: {BOXES_FROM[prediction.boxes_from]}" if prediction.boxes_from and prediction.detections else ""
    return f"{CAPTION[prediction.level][0]} {prediction.probability:.2f} ({prediction.scenario}{boxes})"


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: list[int], colour: tuple[int, int, int], width: int,
                      dash: tuple[int, int]) -> None:
    """PIL's rectangle outline (``width`` pixels inward from the edges of ``box``, ends included)
    in runs of ``dash[0]`` pixels on, ``dash[1]`` off; every edge starts on, so corners show."""
    x0, y0, x1, y1 = box
    on, off = dash

    def runs(start: int, end: int):
        for s in range(start, end + 1, on + off):
            yield s, min(s + on - 1, end)

    for s, e in runs(x0, x1):
        draw.rectangle([s, y0, e, min(y0 + width - 1, y1)], fill=colour)
        draw.rectangle([s, max(y1 - width + 1, y0), e, y1], fill=colour)
    for s, e in runs(y0, y1):
        draw.rectangle([x0, s, min(x0 + width - 1, x1), e], fill=colour)
        draw.rectangle([max(x1 - width + 1, x0), s, x1, e], fill=colour)


def render_overlay(
    pixels: np.ndarray, prediction: Prediction, heatmap: np.ndarray | None = None, max_side: int = 1024
) -> np.ndarray:
    """RGB uint8, longest side at most ``max_side``: the radiograph in grey, each detection's
    box in red (the best one, listed first, thicker; solid, dashed or dotted by the level) and
    its mask shaded red, an optional heatmap (float H x W in [0, 1], original pixels) blended
    in, and a caption such as ``"likely abnormal 0.87 (cascade)"``."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError(f"expected a grey H x W image, got shape {pixels.shape}")
    height, width = pixels.shape
    scale = _scale(height, width, max_side)
    size_wh = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = _grey_rgb(pixels, size_wh)
    if heatmap is not None:
        if np.shape(heatmap) != (height, width):
            raise ValueError(f"heatmap shape {np.shape(heatmap)} differs from the image's {(height, width)}")
        rgb = _blend_heatmap(rgb, heatmap, size_wh)
    for det in prediction.detections:
        if det.mask is not None:
            if np.shape(det.mask) != (height, width):
                raise ValueError(f"mask shape {np.shape(det.mask)} differs from the image's {(height, width)}")
            rgb = _shade_mask(rgb, det.mask, size_wh)
    canvas = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    longest = max(size_wh)
    line = max(1, round(longest / 400))
    level = prediction.level
    dash = LINE_DASH[level]
    # Drawn worst first, so the best box ends on top where boxes overlap.
    for rank, det in reversed(list(enumerate(prediction.detections))):
        x0, y0, x1, y1 = (float(v) * scale for v in det.box)
        # PIL's rectangle includes its end pixel; a box [x0, x1) ends at pixel x1 - 1.
        box = [max(0, round(x0)), max(0, round(y0)), min(size_wh[0], round(x1)) - 1, min(size_wh[1], round(y1)) - 1]
        if box[2] < box[0] or box[3] < box[1]:
            continue
        width = line * (2 if rank == 0 else 1)
        if dash is None:
            draw.rectangle(box, outline=RED, width=width)
        else:
            _dashed_rectangle(draw, box, RED, width, (dash[0] * width, dash[1] * width))
    font_px = max(MIN_CAPTION_PX, round(longest * CAPTION_FRACTION))
    text = _caption(prediction)
    while True:  # the whole caption on the image: a smaller font on a narrow image
        font = ImageFont.load_default(size=font_px)
        pad = max(2, font_px // 4)
        left, top, right, bottom = draw.textbbox((pad, pad), text, font=font)
        if right + pad <= size_wh[0] or font_px <= SMALLEST_CAPTION_PX:
            break
        font_px -= 1
    draw.rectangle([0, 0, right + pad, bottom + pad], fill=(0, 0, 0))
    draw.text((pad, pad), text, font=font, fill=CAPTION[level][1])
    return np.asarray(canvas)


def save_png(rgb: np.ndarray, path: Path) -> None:
    """Write ``rgb`` (H x W x 3 uint8) as a PNG; a reader sees the old file or the new one, never half."""
    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {rgb.dtype} {rgb.shape}")
    with atomic_file(path, "wb") as fh:
        Image.fromarray(rgb).save(fh, format="PNG")


__all__ = ["render_overlay", "save_png"]
