"""limbscan.eval.metrics: hand-computed cases, undefined metrics, and DeLong against the bootstrap."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from limbscan.eval.metrics import (
    METRICS,
    MetricsInputError,
    auc_or_none,
    binary_metrics,
    bootstrap_auc_diff,
    bootstrap_ci,
    choose_threshold,
    delong_ci,
    delong_test,
    format_metric,
    undefined_reason,
)

# Worked on paper: 8 abnormal, 12 normal, threshold 0.5 (score >= 0.5 is called abnormal).
# TP=5 FN=3 FP=2 TN=10.
HAND_POS = [0.9, 0.8, 0.7, 0.6, 0.55, 0.3, 0.2, 0.1]
HAND_NEG = [0.65, 0.5, 0.45, 0.4, 0.35, 0.25, 0.22, 0.15, 0.12, 0.05, 0.02, 0.01]


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([1] * len(HAND_POS) + [0] * len(HAND_NEG))
    return labels, np.array(HAND_POS + HAND_NEG)


def synthetic(n: int = 300, seed: int = 0, prevalence: float = 0.3) -> dict[str, np.ndarray]:
    """Two correlated models on the same images: `strong` and `weak` differ clearly,
    `strong_twin` has the same skill as `strong` with partly shared noise."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    shared, own_a, own_b = rng.normal(size=(3, n))
    strong = 1.2 * y + shared + 0.5 * own_a
    weak = 0.3 * y + shared + 0.5 * own_b
    strong_twin = 1.2 * y + shared + 0.5 * own_b
    return {"y": y, "strong": strong, "weak": weak, "strong_twin": strong_twin}


# --- point metrics ---------------------------------------------------------------------------


def test_binary_metrics_match_hand_computed_case():
    labels, scores = hand_case()
    m = binary_metrics(labels, scores, threshold=0.5)
    assert (m.n, m.n_pos, m.n_neg) == (20, 8, 12)
    assert (m.tp, m.fn, m.fp, m.tn) == (5, 3, 2, 10)
    assert m.confusion.tolist() == [[10, 2], [3, 5]]
    assert m.accuracy == pytest.approx(15 / 20)
    assert m.sensitivity == pytest.approx(5 / 8)
    assert m.specificity == pytest.approx(10 / 12)
    assert m.ppv == pytest.approx(5 / 7)
    assert m.npv == pytest.approx(10 / 13)
    assert m.f1 == pytest.approx(2 * 5 / (2 * 5 + 2 + 3))
    # kappa: po = 15/20, pe = (7*8 + 13*12) / 20^2 = 212/400
    po, pe = Fraction(15, 20), Fraction(7 * 8 + 13 * 12, 400)
    assert m.kappa == pytest.approx(float((po - pe) / (1 - pe)))
    # AUC: abnormal images outrank 12+12+12+11+11+7+5+3 = 73 of the 8*12 pairs
    assert m.auc == pytest.approx(73 / 96)
    assert m.auc_undefined_reason is None


def test_threshold_is_inclusive_and_does_not_change_auc():
    labels, scores = hand_case()
    at = binary_metrics(labels, scores, threshold=0.5)
    above = binary_metrics(labels, scores, threshold=0.5000001)
    assert at.fp == above.fp + 1  # the normal image scored exactly 0.5 is called abnormal at 0.5
    assert at.auc == above.auc


def test_as_dict_is_plain_json_without_nan():
    labels = np.zeros(6, dtype=int)
    m = binary_metrics(labels, np.linspace(0, 1, 6), threshold=2.0)  # nothing called abnormal
    d = m.as_dict()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text) == d
    assert d["ppv"] is None and d["sensitivity"] is None and d["auc"] is None
    assert all(not isinstance(v, np.generic) for v in d.values())


@pytest.mark.parametrize(
    ("labels", "reason", "defined", "undefined"),
    [
        ([0, 0, 0, 0, 0, 0], "no abnormal images", "specificity", "sensitivity"),
        ([1, 1, 1, 1, 1, 1], "no normal images", "sensitivity", "specificity"),
    ],
)
def test_one_class_auc_undefined_other_metrics_computed(labels, reason, defined, undefined):
    scores = [0.1, 0.4, 0.6, 0.2, 0.9, 0.7]
    assert undefined_reason(labels) == reason
    m = binary_metrics(labels, scores, threshold=0.5)
    assert m.auc is None and m.auc_undefined_reason == reason
    assert getattr(m, undefined) is None
    assert getattr(m, defined) == pytest.approx(0.5)
    assert m.accuracy == pytest.approx(0.5)
    ci = bootstrap_ci(labels, scores, 0.5, n_boot=200)
    assert ci["auc"] is None and ci[undefined] is None
    assert ci[defined] is not None and ci[defined][0] <= 0.5 <= ci[defined][1]
    assert all(v is None for v in delong_test(labels, scores, scores[::-1]).values())
    assert delong_ci(labels, scores) is None
    assert bootstrap_auc_diff(labels, scores, scores[::-1], n_boot=50)["diff"] is None
    with pytest.raises(MetricsInputError, match=reason):
        choose_threshold(labels, scores)


def test_undefined_reason_both_classes():
    assert undefined_reason([0, 1, 0]) is None
    assert undefined_reason([]) == "no images"


def test_auc_or_none_is_none_without_two_classes_and_formats_as_undefined():
    labels, scores = hand_case()
    assert auc_or_none(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert auc_or_none([1, 1], [0.2, 0.4]) is None and auc_or_none([], []) is None
    assert format_metric(auc_or_none([0, 0], [0.2, 0.4])) == "undefined" == format_metric(float("nan"))
    assert format_metric(0.91234) == "0.912" and format_metric(0.5, digits=1) == "0.5"


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 1, 1], [0.1, 0.2], "3 labels but 2 scores"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "0 \\(normal\\) or 1"),
        ([0, 1, 1], [0.1, float("nan"), 0.3], "NaN"),
    ],
)
def test_bad_input_is_a_clear_error(labels, scores, match):
    with pytest.raises(MetricsInputError, match=match):
        binary_metrics(labels, scores, 0.5)


# --- threshold choice ------------------------------------------------------------------------


def test_youden_known_answer():
    # J at 0.7: 3/5 - 0 = 0.6; at 0.35: 5/5 - 1/4 = 0.75 (the maximum)
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.4, 0.35, 0.6, 0.3, 0.2, 0.1]
    assert choose_threshold(labels, scores) == pytest.approx(0.35)


def test_youden_tie_goes_to_highest_threshold():
    # J = 0.75 both at 0.7 (tpr 3/4, fpr 0) and at 0.4 (tpr 1, fpr 1/4)
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1]
    assert choose_threshold(labels, scores) == pytest.approx(0.7)


def test_youden_maximises_j_on_random_data():
    d = synthetic(n=200, seed=3)
    t = choose_threshold(d["y"], d["strong"])
    best = binary_metrics(d["y"], d["strong"], t)
    j = best.sensitivity + best.specificity - 1
    for other in np.unique(d["strong"]):
        m = binary_metrics(d["y"], d["strong"], other)
        assert m.sensitivity + m.specificity - 1 <= j + 1e-12


def test_target_sensitivity_known_answer():
    labels = [1, 1, 1, 1, 1, 0, 0, 0, 0]
    scores = [0.9, 0.8, 0.7, 0.4, 0.35, 0.6, 0.3, 0.2, 0.1]
    assert choose_threshold(labels, scores, target_sensitivity=0.8) == pytest.approx(0.4)  # 4 of 5
    assert choose_threshold(labels, scores, target_sensitivity=1.0) == pytest.approx(0.35)


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95])
def test_target_sensitivity_reached_at_highest_threshold(target):
    d = synthetic(n=200, seed=4)
    t = choose_threshold(d["y"], d["strong"], method="sensitivity", target_sensitivity=target)
    assert binary_metrics(d["y"], d["strong"], t).sensitivity >= target
    higher = np.unique(d["strong"][d["strong"] > t])
    assert binary_metrics(d["y"], d["strong"], higher[0]).sensitivity < target


def test_threshold_bad_method():
    with pytest.raises(MetricsInputError, match="unknown threshold method"):
        choose_threshold([0, 1], [0.1, 0.9], method="f1")
    with pytest.raises(MetricsInputError, match="target_sensitivity"):
        choose_threshold([0, 1], [0.1, 0.9], method="sensitivity")


# --- DeLong ----------------------------------------------------------------------------------


def test_delong_aucs_equal_sklearn_with_ties():
    d = synthetic(seed=1)
    a, b = np.round(d["strong"], 1), np.round(d["weak"], 1)  # plenty of ties
    r = delong_test(d["y"], a, b)
    assert r["auc_a"] == pytest.approx(roc_auc_score(d["y"], a), abs=1e-12)
    assert r["auc_b"] == pytest.approx(roc_auc_score(d["y"], b), abs=1e-12)
    assert r["diff"] == pytest.approx(r["auc_a"] - r["auc_b"])


def test_delong_ci_covers_sklearn_auc_and_matches_bootstrap():
    d = synthetic(seed=2)
    auc = roc_auc_score(d["y"], d["strong"])
    lo, hi = delong_ci(d["y"], d["strong"])
    assert lo < auc < hi
    boot_lo, boot_hi = bootstrap_ci(d["y"], d["strong"], 0.5, metrics=("auc",))["auc"]
    assert (hi - lo) == pytest.approx(boot_hi - boot_lo, rel=0.15)


@pytest.mark.parametrize(("other", "significant"), [("weak", True), ("strong_twin", False)])
def test_delong_agrees_with_paired_bootstrap(other, significant):
    d = synthetic(seed=0)
    dl = delong_test(d["y"], d["strong"], d[other])
    bs = bootstrap_auc_diff(d["y"], d["strong"], d[other], n_boot=2000, seed=0)
    assert bs["diff"] == pytest.approx(dl["diff"])
    assert bs["se"] == pytest.approx(dl["se"], rel=0.15)
    assert (dl["p"] < 0.05) is significant
    assert (bs["p"] < 0.05) is significant
    assert (bs["ci"][0] > 0) is significant


def test_delong_identical_scores():
    d = synthetic(n=100, seed=5)
    r = delong_test(d["y"], d["strong"], d["strong"])
    assert r["diff"] == 0 and r["se"] == pytest.approx(0, abs=1e-12) and r["p"] == 1.0


# --- patient-level bootstrap -----------------------------------------------------------------


def test_bootstrap_resamples_patients_not_images():
    d = synthetic(n=150, seed=6)
    y, s = d["y"], d["strong"]
    base = bootstrap_ci(y, s, 0.5, n_boot=1000, seed=0)
    # every image five times under its own patient: the same information, five times the images
    y5, s5 = np.repeat(y, 5), np.repeat(s, 5)
    patients = np.repeat([f"p{i:04d}" for i in range(y.size)], 5)
    by_patient = bootstrap_ci(y5, s5, 0.5, groups=patients, n_boot=1000, seed=0)
    by_image = bootstrap_ci(y5, s5, 0.5, groups=None, n_boot=1000, seed=0)
    for metric in ("auc", "sensitivity", "specificity", "accuracy"):
        width = base[metric][1] - base[metric][0]
        assert by_patient[metric][1] - by_patient[metric][0] == pytest.approx(width, rel=0.15), metric
        # resampling images as if independent shrinks the interval by about sqrt(5)
        assert by_image[metric][1] - by_image[metric][0] < 0.7 * width, metric


def test_bootstrap_ci_contains_point_estimates():
    d = synthetic(n=250, seed=7)
    point = binary_metrics(d["y"], d["strong"], 0.6)
    ci = bootstrap_ci(d["y"], d["strong"], 0.6, n_boot=500)
    assert set(ci) == set(METRICS)
    for metric, (lo, hi) in ci.items():
        assert lo <= getattr(point, metric) <= hi, metric
        assert lo < hi, metric


def test_bootstrap_deterministic_for_seed():
    d = synthetic(n=120, seed=8)
    groups = np.arange(120) // 2
    a = bootstrap_ci(d["y"], d["strong"], 0.5, groups=groups, n_boot=300, seed=11)
    b = bootstrap_ci(d["y"], d["strong"], 0.5, groups=groups, n_boot=300, seed=11)
    c = bootstrap_ci(d["y"], d["strong"], 0.5, groups=groups, n_boot=300, seed=12)
    assert a == b
    assert a != c
    da = bootstrap_auc_diff(d["y"], d["strong"], d["weak"], groups=groups, n_boot=300, seed=11)
    assert da == bootstrap_auc_diff(d["y"], d["strong"], d["weak"], groups=groups, n_boot=300, seed=11)


def test_bootstrap_rejects_unknown_metric_and_bad_groups():
    with pytest.raises(MetricsInputError, match="unknown metrics"):
        bootstrap_ci([0, 1], [0.1, 0.9], 0.5, metrics=("auprc",))
    with pytest.raises(MetricsInputError, match="patient ids"):
        bootstrap_ci([0, 1, 0], [0.1, 0.9, 0.2], 0.5, groups=["a", "b"])


def test_delong_has_no_p_for_a_difference_without_variance():
    from limbscan.eval.metrics import delong_test

    labels = [0, 0, 1, 1]
    perfect, inverted = [0.1, 0.2, 0.8, 0.9], [0.9, 0.8, 0.2, 0.1]
    result = delong_test(labels, perfect, inverted)
    assert result["diff"] == pytest.approx(1.0) and result["p"] is None
    assert delong_test(labels, perfect, perfect)["p"] == 1.0
