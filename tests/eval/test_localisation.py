"""Localisation metrics on hand-made boxes whose AP and hit rate can be worked out on paper.

COCO AP at one IoU threshold is the mean, over 101 recall points r = 0, 0.01, ..., 1, of the
best precision reached at recall >= r (0 where that recall is never reached).
"""

from __future__ import annotations

import json

import pytest

from limbscan.eval.localisation import box_ap50, localisation_summary, top_box_hit_rate
from limbscan.eval.metrics import MetricsInputError

LESION = [10.0, 10.0, 50.0, 50.0]  # 40 x 40


def pred(*boxes_scores: tuple[list[float], float]) -> dict:
    return {"boxes": [b for b, _ in boxes_scores], "scores": [s for _, s in boxes_scores]}


def test_one_perfect_box_gives_ap_1():
    assert box_ap50({1: pred((LESION, 0.9))}, {1: [LESION]}) == pytest.approx(1.0)


@pytest.mark.parametrize(("height", "expected"), [(16.0, 0.0), (24.0, 1.0)])
def test_iou_threshold_is_half(height, expected):
    # same x-extent, shorter box inside the lesion: IoU = height / 40 -> 0.4 misses, 0.6 hits
    box = [10.0, 10.0, 50.0, 10.0 + height]
    assert box_ap50({1: pred((box, 0.9))}, {1: [LESION]}) == pytest.approx(expected)


def test_two_lesions_one_found_gives_51_of_101():
    # recall tops out at 0.5 with precision 1: the 51 recall points 0..0.50 score 1, the other 50 score 0
    other = [100.0, 100.0, 140.0, 140.0]
    ap = box_ap50({1: pred((LESION, 0.9))}, {1: [LESION, other]})
    assert ap == pytest.approx(51 / 101)


def test_false_positive_on_normal_image_scored_higher_lowers_ap():
    truths = {1: [LESION], 2: []}
    clean = box_ap50({1: pred((LESION, 0.5))}, truths)
    # the normal image's box ranks first: precision is 1/2 when recall reaches 1, at all 101 points
    noisy = box_ap50({1: pred((LESION, 0.5)), 2: pred((LESION, 0.9))}, truths)
    assert clean == pytest.approx(1.0)
    assert noisy == pytest.approx(0.5)


def test_false_positive_scored_lower_does_not_lower_ap():
    # COCO takes the precision envelope: a miss ranked after the last true positive costs nothing
    ap = box_ap50({1: pred((LESION, 0.9)), 2: pred((LESION, 0.1))}, {1: [LESION], 2: []})
    assert ap == pytest.approx(1.0)


def test_image_missing_from_truths_counts_as_normal():
    with_key = box_ap50({1: pred((LESION, 0.5)), 7: pred((LESION, 0.9))}, {1: [LESION], 7: []})
    without_key = box_ap50({1: pred((LESION, 0.5)), 7: pred((LESION, 0.9))}, {1: [LESION]})
    assert with_key == pytest.approx(without_key) == pytest.approx(0.5)


def test_more_than_100_boxes_per_image_are_all_counted():
    # COCO's default cap (100 per image) would drop the true positive ranked 151st and give 0
    junk = [([200.0 + i, 200.0, 201.0 + i, 201.0], 0.9) for i in range(150)]
    ap = box_ap50({1: pred(*junk, (LESION, 0.1))}, {1: [LESION]})
    assert ap == pytest.approx(1 / 151)


def test_ap_is_none_without_lesions_and_zero_without_predictions():
    assert box_ap50({1: pred((LESION, 0.9))}, {1: [], 2: []}) is None
    assert box_ap50({}, {}) is None
    assert box_ap50({1: pred()}, {1: [LESION]}) == 0.0


def test_pycocotools_prints_nothing(capfd):
    box_ap50({1: pred((LESION, 0.9)), 2: pred((LESION, 0.3))}, {1: [LESION], 2: []}, {1: (64, 64), 2: (64, 64)})
    out, err = capfd.readouterr()
    assert out == "" and err == ""


@pytest.mark.parametrize(
    "predictions",
    [{1: {"boxes": [LESION], "scores": [0.1, 0.2]}}, {1: {"boxes": [[1, 2, 3]], "scores": [0.1]}},
     {1: {"boxes": [LESION], "scores": [float("nan")]}}, {1: {"boxes": [LESION]}}],
)
def test_malformed_predictions_raise_naming_the_image(predictions):
    with pytest.raises(MetricsInputError, match="image 1"):
        box_ap50(predictions, {1: [LESION]})


def test_truth_box_without_area_raises():
    with pytest.raises(MetricsInputError, match="image 3"):
        box_ap50({}, {3: [[10, 10, 10, 20]]})


# Hit rate. Lesion 10..50; a crop drawn with a 30 px margin around it has IoU 0.16 but contains it.
CROP = [-20.0, -20.0, 80.0, 80.0]
OFF_CENTRE = [30.0, 30.0, 130.0, 130.0]  # centre (80, 80) outside the lesion; covers 400 of its 1600 px
FAR = [300.0, 300.0, 340.0, 340.0]


@pytest.mark.parametrize(
    ("box", "mode", "hit"),
    [(LESION, "iou", True), ([10.0, 10.0, 50.0, 26.0], "iou", False), (CROP, "iou", False),
     (CROP, "center", True), (OFF_CENTRE, "center", False), (CROP, "iomin", True),
     (OFF_CENTRE, "iomin", False), (FAR, "iou", False), (FAR, "center", False), (FAR, "iomin", False)],
)
def test_each_mode_on_one_image(box, mode, hit):
    r = top_box_hit_rate({1: box}, {1: [LESION]}, mode=mode)
    assert (r["n"], r["hits"], r["hit_rate"], r["mode"]) == (1, int(hit), float(hit), mode)


def test_iomin_uses_the_threshold():
    # OFF_CENTRE covers a quarter of the lesion (the smaller box): hits at 0.25, not at 0.3
    assert top_box_hit_rate({1: OFF_CENTRE}, {1: [LESION]}, iou=0.25, mode="iomin")["hits"] == 1
    assert top_box_hit_rate({1: OFF_CENTRE}, {1: [LESION]}, iou=0.3, mode="iomin")["hits"] == 0


def test_hit_rate_counts_only_abnormal_images_and_misses_without_a_box():
    truths = {1: [LESION], 2: [FAR, LESION], 3: [LESION], 4: [LESION], 5: [], 6: []}
    top = {1: LESION, 2: LESION, 3: None, 5: FAR, 6: None}  # 4 absent: a miss as well
    r = top_box_hit_rate(top, truths)
    assert (r["n"], r["hits"]) == (4, 2)
    assert r["hit_rate"] == pytest.approx(0.5)


def test_hit_rate_undefined_without_lesions_and_rejects_unknown_mode():
    r = top_box_hit_rate({1: LESION}, {1: []})
    assert r["hit_rate"] is None and r["n"] == 0
    with pytest.raises(MetricsInputError, match="mode"):
        top_box_hit_rate({1: LESION}, {1: [LESION]}, mode="dice")
    with pytest.raises(MetricsInputError, match="iou"):
        top_box_hit_rate({1: LESION}, {1: [LESION]}, iou=0.0)


def test_summary_is_json_and_defaults_to_best_scored_box():
    predictions = {1: pred((FAR, 0.2), (LESION, 0.8)), 2: pred((FAR, 0.9), (LESION, 0.4)), 3: pred()}
    truths = {1: [LESION], 2: [LESION], 3: []}
    s = json.loads(json.dumps(localisation_summary(predictions, truths)))
    assert s["n_images_with_lesions"] == 2
    assert s["top_box_hit_rate"] == pytest.approx(0.5)  # image 2's best box is the far one
    assert s["ap50"] == pytest.approx(box_ap50(predictions, truths))
    cascade = localisation_summary(predictions, truths, top_boxes={1: LESION, 2: LESION})
    assert cascade["top_box_hit_rate"] == pytest.approx(1.0)
    assert localisation_summary({}, {1: []})["ap50"] is None
