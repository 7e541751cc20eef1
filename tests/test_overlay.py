from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from limbscan.inference import Detection, Prediction
from limbscan.overlay import render_overlay, save_png


def _prediction(detections, label="abnormal", probability=0.87, file="Doe^John_123456.dcm",
                suspected_threshold=None) -> Prediction:
    return Prediction(file=file, scenario="cascade", probability=probability, threshold=0.5, label=label,
                      scores={"cascade": probability}, detections=detections, width=1200, height=800,
                      suspected_threshold=suspected_threshold)


def _runs(flags: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], flags.astype(int), [0]]))
    return list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))


def _is_red(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] < 60)


@pytest.fixture
def grey() -> np.ndarray:
    return np.full((800, 1200), 0.5, dtype=np.float32)


def test_downscales_to_max_side_and_draws_the_box_in_red(grey):
    pred = _prediction([Detection([300.0, 200.0, 700.0, 600.0], 0.9, None)])
    rgb = render_overlay(grey, pred, max_side=600)
    assert rgb.shape == (400, 600, 3) and rgb.dtype == np.uint8
    # At half scale the box spans x 150..349, y 100..299: its edges red, inside and outside grey.
    assert _is_red(rgb[200, 149:153]).any() and _is_red(rgb[297:301, 250]).any()
    assert _is_red(rgb[100:103, 250]).any() and _is_red(rgb[200, 347:351]).any()
    assert not _is_red(rgb[200, 250]) and not _is_red(rgb[350, 500])
    assert abs(int(rgb[200, 250, 0]) - 128) <= 1 and rgb[200, 250, 0] == rgb[200, 250, 1]


def test_never_enlarges_a_small_image():
    rgb = render_overlay(np.zeros((50, 80), np.float32), _prediction([]), max_side=1024)
    assert rgb.shape == (50, 80, 3)


def test_best_box_is_thicker_than_the_others(grey):
    best, other = [100.0, 100.0, 500.0, 700.0], [700.0, 100.0, 1100.0, 700.0]
    rgb = render_overlay(grey, _prediction([Detection(best, 0.9, None), Detection(other, 0.4, None)]), max_side=1200)
    row = _is_red(rgb[400])
    assert row[100:130].sum() > row[700:730].sum() >= 1


def test_mask_is_shaded_red_not_painted(grey):
    mask = np.zeros((800, 1200), bool)
    mask[300:500, 400:800] = True
    rgb = render_overlay(grey, _prediction([Detection([400.0, 300.0, 800.0, 500.0], 0.9, mask)]), max_side=1200)
    rgb = rgb.astype(int)
    inside, outside = rgb[400, 600], rgb[700, 100]
    assert inside[0] > inside[1] + 40 and inside[1] == inside[2]  # reddened
    assert inside[1] > 40  # the bone still shows through
    assert outside[0] == outside[1] == outside[2]


def test_heatmap_colours_hot_pixels_only(grey):
    heat = np.zeros((800, 1200), np.float32)
    heat[500:700, 800:1100] = 1.0
    plain = render_overlay(grey, _prediction([]), max_side=1200).astype(int)
    blended = render_overlay(grey, _prediction([]), heatmap=heat, max_side=1200).astype(int)
    assert np.abs(blended[600, 950] - plain[600, 950]).sum() > 30
    np.testing.assert_array_equal(blended[300, 300], plain[300, 300])
    with pytest.raises(ValueError, match="heatmap shape"):
        render_overlay(grey, _prediction([]), heatmap=heat[:10])


def test_caption_depends_on_the_result_but_never_on_the_file_name(grey):
    dets = [Detection([300.0, 200.0, 700.0, 600.0], 0.9, None)]
    a = render_overlay(grey, _prediction(dets, file="Doe^John_123456.dcm"))
    b = render_overlay(grey, _prediction(dets, file="Roe^Jane_654321.dcm"))
    np.testing.assert_array_equal(a, b)
    c = render_overlay(grey, _prediction(dets, label="normal", probability=0.12))
    top = slice(0, 60)
    assert not np.array_equal(a[top], c[top])  # the caption is drawn at the top
    assert (a[top, :300] != 128).any()


def test_save_png_round_trips_atomically(tmp_path, grey):
    rgb = render_overlay(grey, _prediction([Detection([300.0, 200.0, 700.0, 600.0], 0.9, None)]), max_side=300)
    path = tmp_path / "sub" / "000001.png"
    save_png(rgb, path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), rgb)
    assert [p.name for p in path.parent.iterdir()] == ["000001.png"]  # no temporary file left
    with pytest.raises(ValueError, match="uint8"):
        save_png(rgb.astype(np.float32), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize(("probability", "label", "level"), [(0.87, "abnormal", "likely"), (0.3, "normal", "suspected"),
                                                             (0.1, "normal", "normal")])
def test_the_boxs_line_says_the_level(grey, probability, label, level):
    box = [300.0, 200.0, 700.0, 600.0]
    pred = _prediction([Detection(box, 0.9, None)], label=label, probability=probability, suspected_threshold=0.2)
    assert pred.level == level
    rgb = render_overlay(grey, pred, max_side=1200)  # scale 1: line width 3, the best box 6
    bottom = _is_red(rgb[598, 300:700])  # a row inside the bottom edge, corner to corner
    left = _is_red(rgb[200:600, 301])
    runs = _runs(bottom)
    if level == "likely":
        assert bottom.all() and left.all()  # solid
    elif level == "suspected":
        assert len(runs) > 3 and min(runs[:-1]) >= 20 and not bottom.all()  # dashes of 5 line widths
        assert not left.all() and bottom[0] and left[0]  # every edge starts on a dash: the corners show
    else:
        assert len(runs) > 10 and max(runs) <= 6  # dots of one line width
    assert not _is_red(rgb[400, 500])  # nothing drawn inside


def test_caption_says_the_level_in_its_colour(grey):
    from limbscan.overlay import _caption

    dets = [Detection([300.0, 200.0, 700.0, 600.0], 0.9, None)]
    likely = _prediction(dets, suspected_threshold=0.2)
    suspected = _prediction(dets, label="normal", probability=0.3, suspected_threshold=0.2)
    normal = _prediction(dets, label="normal", probability=0.1, suspected_threshold=0.2)
    assert _caption(likely) == "likely abnormal 0.87 (cascade)"
    assert _caption(suspected) == "suspected abnormal 0.30 (cascade)"
    assert _caption(normal) == "normal 0.10 (cascade)"
    top = slice(0, 40)

    def amber(rgb):
        return (rgb[..., 0] > 200) & (rgb[..., 1] > 120) & (rgb[..., 1] < 220) & (rgb[..., 2] < 60)

    a, b, c = (render_overlay(grey, p, max_side=1200)[top, :600] for p in (likely, suspected, normal))
    assert _is_red(a).any() and not amber(a).any()
    assert amber(b).any() and not _is_red(b).any()
    assert not _is_red(c).any() and not amber(c).any() and (c == 255).all(axis=-1).any()
    # no suspected threshold (a bundle exported before them): 0.3 is below the one threshold, normal
    assert _prediction(dets, label="normal", probability=0.3).level == "normal"


def test_a_long_caption_fits_a_narrow_image():
    narrow = np.full((454, 373), 0.5, dtype=np.float32)
    pred = Prediction(file=None, scenario="whole-image", probability=0.99, threshold=0.5, label="abnormal",
                      scores={"whole-image": 0.99}, detections=[Detection([100.0, 200.0, 150.0, 250.0], 0.9, None)],
                      width=373, height=454, boxes_from="detector")
    rgb = render_overlay(narrow, pred)
    band = rgb[:6]  # the caption's black band starts at the top-left corner
    assert (band[:, 0] == 0).all()
    # it ends before the right edge: the text fitted (a clipped caption's band spans the width)
    assert (band[:, -1] > 100).all()
