"""The two operating points: chosen on validation scores, in order, and the level they give a probability."""

from __future__ import annotations

import numpy as np
import pytest

from limbscan.errors import LimbscanError
from limbscan.eval.metrics import binary_metrics, choose_threshold
from limbscan.operating_points import (
    LEVELS,
    LIKELY,
    NORMAL,
    SUSPECTED,
    choose_operating_points,
    level_of,
    stored_thresholds,
)


def _scores(seed: int = 0, n: int = 400, prevalence: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    return y, np.clip(0.25 * y + rng.normal(0.4, 0.15, n), 0, 1)


@pytest.mark.parametrize(
    ("probability", "likely", "suspected", "level"),
    [
        (0.9, 0.5, 0.2, LIKELY),
        (0.5, 0.5, 0.2, LIKELY),  # at a threshold counts, as score >= threshold everywhere
        (0.49, 0.5, 0.2, SUSPECTED),
        (0.2, 0.5, 0.2, SUSPECTED),
        (0.19, 0.5, 0.2, NORMAL),
        (0.3, 0.5, None, NORMAL),  # a bundle without a suspected point: never "suspected"
        (0.7, 0.5, None, LIKELY),
        (0.3, 0.3, 0.3, LIKELY),  # coinciding points: nothing is only suspected
    ],
)
def test_level_of(probability, likely, suspected, level):
    assert level_of(probability, likely, suspected) == level
    assert LEVELS == (LIKELY, SUSPECTED, NORMAL)


def test_suspected_reaches_the_target_most_specifically_and_below_likely():
    y, s = _scores()
    points = choose_operating_points(y, s)
    likely, suspected = points[LIKELY], points[SUSPECTED]
    assert likely == {"threshold": choose_threshold(y, s), "rule": "youden",
                      "val_sensitivity": binary_metrics(y, s, likely["threshold"]).sensitivity,
                      "val_specificity": binary_metrics(y, s, likely["threshold"]).specificity}
    assert suspected["rule"] == "sensitivity>=0.95" and suspected["target_sensitivity"] == 0.95
    assert suspected["note"] is None
    assert suspected["threshold"] < likely["threshold"]
    at = binary_metrics(y, s, suspected["threshold"])
    assert at.sensitivity >= 0.95 and suspected["val_sensitivity"] == at.sensitivity
    assert suspected["val_specificity"] == at.specificity < likely["val_specificity"]
    # the most specific such point: the next score up misses the target
    above = np.min(s[s > suspected["threshold"]])
    assert binary_metrics(y, s, above).sensitivity < 0.95
    assert suspected["threshold"] > s.min()  # reached above the lowest score


def test_target_is_configurable_and_likely_may_use_a_sensitivity_target():
    y, s = _scores(1)
    half = choose_operating_points(y, s, suspected_sensitivity=0.8)
    assert half[SUSPECTED]["rule"] == "sensitivity>=0.8"
    assert half[SUSPECTED]["threshold"] == choose_threshold(y, s, target_sensitivity=0.8)
    strict = choose_operating_points(y, s, target_sensitivity=0.99)
    assert strict[LIKELY]["rule"] == "sensitivity>=0.99"
    # likely already reaches 0.95: suspected cannot rank above it, so the two coincide, and the note says so
    assert strict[SUSPECTED]["threshold"] == strict[LIKELY]["threshold"]
    assert "coincides with 'likely'" in strict[SUSPECTED]["note"]


def test_target_reached_only_at_the_lowest_score_is_noted():
    y = np.array([1, 0, 0, 0, 1, 1, 0, 1, 0, 0])
    s = np.array([0.05, 0.1, 0.2, 0.3, 0.6, 0.7, 0.4, 0.8, 0.5, 0.15])  # the lowest-scoring image is abnormal
    points = choose_operating_points(y, s)
    suspected = points[SUSPECTED]
    assert suspected["threshold"] == pytest.approx(0.05) and points[LIKELY]["threshold"] > 0.05
    assert suspected["val_sensitivity"] == 1.0 and suspected["val_specificity"] == 0.0
    assert "only at the lowest validation score" in suspected["note"] and "4 abnormal" in suspected["note"]


def test_bad_targets_and_one_class_data_are_refused():
    y, s = _scores()
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(LimbscanError, match=r"suspected_sensitivity must be a sensitivity in \(0, 1\]"):
            choose_operating_points(y, s, suspected_sensitivity=bad)
    with pytest.raises(LimbscanError, match="no abnormal images"):
        choose_operating_points(np.zeros(5, int), np.linspace(0, 1, 5))


def test_stored_thresholds_of_old_and_new_manifests():
    new = {"thresholds": {"cascade": 0.4}, "operating_points": {"cascade": {"likely": {"threshold": 0.4},
                                                                           "suspected": {"threshold": 0.1}}}}
    assert stored_thresholds(new, "cascade") == (0.4, 0.1)
    assert stored_thresholds({"thresholds": {"cascade": 0.4}}, "cascade") == (0.4, None)
