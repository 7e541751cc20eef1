"""Geometry: letterboxing, the one crop function and the window it cuts."""

from __future__ import annotations

import pytest
import torch

from limbscan.data.geometry import crop_box, crop_window, letterbox


# -- letterbox and crop_box ----------------------------------------------------------------
@pytest.mark.parametrize("hw", [(40, 80), (80, 40), (30, 30)])
@pytest.mark.parametrize("size", [64, 17])
def test_letterbox_keeps_aspect_and_pads_with_zero(hw, size):
    h, w = hw
    out = letterbox(torch.full((1, h, w), 0.5), size)
    assert out.shape == (1, size, size) and out.dtype == torch.float32
    rows = torch.nonzero(out[0].amax(1) > 0).flatten()
    cols = torch.nonzero(out[0].amax(0) > 0).flatten()
    content_h, content_w = len(rows), len(cols)
    assert max(content_h, content_w) == size
    assert content_w / content_h == pytest.approx(w / h, rel=0.1)
    # Centred: the padding on either side differs by at most one pixel.
    assert abs(int(rows[0]) - (size - 1 - int(rows[-1]))) <= 1
    assert abs(int(cols[0]) - (size - 1 - int(cols[-1]))) <= 1
    assert out.sum() == pytest.approx(0.5 * content_h * content_w, rel=1e-4)


def test_letterbox_enlarges_small_images():
    out = letterbox(torch.ones(1, 10, 5), 40)
    assert (out[0] > 0).sum(0).max() == 40  # the long side now fills the square


def test_crop_box_sees_the_marked_region():
    image = torch.zeros(1, 200, 300)
    image[0, 50:70, 100:140] = 1.0
    crop = crop_box(image, [100, 50, 140, 70], margin=0.0, size=64)
    assert crop.shape == (1, 64, 64)
    content = crop[0][crop[0].amax(1) > 0]
    assert content.shape[0] == 32  # 40 x 20 box letterboxed: 64 x 32
    assert content.min() > 0.99
    # With a margin, the mark sits in the middle and the surroundings are in the crop too.
    wide = crop_box(image, [100, 50, 140, 70], margin=0.5, size=80)
    assert wide[0, 40, 40] > 0.99 and wide[0, 25, 5] == 0 and wide[0].max() > 0.99


def test_crop_box_keeps_orientation():
    # Pixel values encode x: a crop must go left to right over the box's own x range.
    w = 300
    image = (torch.arange(w, dtype=torch.float32) / w).expand(1, 100, w).clone()
    crop = crop_box(image, [150, 20, 200, 70], margin=0.0, size=50)
    row = crop[0, 25]
    assert torch.all(row[1:] >= row[:-1] - 1e-6)
    assert row[0] == pytest.approx(150 / w, abs=2 / w) and row[-1] == pytest.approx(199 / w, abs=2 / w)


def test_crop_window_margin_clamps_at_borders():
    assert crop_window([0, 0, 10, 10], (100, 100), margin=0.5) == (0, 0, 15, 15)
    assert crop_window([90, 80, 100, 100], (100, 100), margin=0.5) == (85, 70, 100, 100)
    assert crop_window([20, 20, 40, 60], (100, 100), margin=0.25) == (15, 10, 45, 70)


def test_crop_window_gives_a_tiny_box_context():
    x0, y0, x1, y1 = crop_window([50, 50, 52, 51], (100, 100), margin=0.0, min_side=16)
    assert x1 - x0 >= 16 and y1 - y0 >= 16
    assert x0 <= 50 and x1 >= 52 and y0 <= 50 and y1 >= 51
    # Never larger than the image, however small the image.
    assert crop_window([2, 2, 3, 3], (8, 10), margin=0.0, min_side=16) == (0, 0, 10, 8)


@pytest.mark.parametrize(
    "box, words",
    [
        ([200, 200, 220, 220], "outside"),
        ([100, 40, 101, 41], "outside"),
        ([10, 10, 5, 20], "XYXY"),
        ([0, float("nan"), 1, 1], "finite"),
    ],
)
def test_crop_box_rejects_bad_boxes(box, words):
    with pytest.raises(ValueError, match=words):
        crop_box(torch.zeros(1, 100, 100), box, margin=0.1, size=32)
