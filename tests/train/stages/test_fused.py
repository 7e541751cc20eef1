"""The fused stage's fit on its own: the rank rule, calibration, and too few images to fit.

The fit on a trained run (out-of-fold validation scores, a resumed run's refit) is checked with the
scenario's scoring in ``tests/scenarios/test_fused.py``, on one trained fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from limbscan.scenarios.fused import EQUAL, LOGISTIC, RANK, fused_probability, midranks
from limbscan.train.stages.fused import FusionEstimator, fit_fusion


def test_the_rank_rule_is_a_platt_scaled_weighted_rank_average():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    scores = np.clip(rng.normal(0.3 + 0.3 * labels[:, None], 0.15, (80, 3)), 0, 1)
    est = FusionEstimator(RANK).fit(scores, labels)
    assert np.all(est.coef_ >= 0) and est.coef_.sum() > 0  # a positive mix of ranks, then scaled
    new = rng.random((5, 3))
    ranks = midranks(new, scores)
    assert np.all((ranks >= 0) & (ranks <= 1))
    np.testing.assert_allclose(est.predict_proba(new)[:, 1], expit(est.intercept_ + ranks @ est.coef_))
    np.testing.assert_allclose(fused_probability(new, RANK, est.coef_, est.intercept_, est.reference_),
                               est.predict_proba(new)[:, 1])


def test_the_fused_output_is_calibrated_where_its_inputs_are_not():
    rng = np.random.default_rng(1)
    labels = (rng.random(200) < 0.3).astype(int)
    signal = rng.normal(labels[:, None] * 1.5, 1.0, (200, 3))
    scores = expit(signal - 3.0)  # every input far too low: its mean is no probability of abnormal
    assert scores.mean() < labels.mean() / 2
    fit = fit_fusion(scores, labels, LOGISTIC, 1.0, 5, 2, 0)
    probability = fused_probability(scores, LOGISTIC, fit.coef, fit.intercept)
    assert probability.mean() == pytest.approx(labels.mean(), abs=0.01)  # calibrated in the large
    assert abs(fit.out_of_fold.mean() - labels.mean()) < 0.03
    assert fit.folds == 5 and fit.note is None and set(fit.cv_auc) == {LOGISTIC, RANK}


def test_too_few_images_of_a_class_fit_nothing():
    fit = fit_fusion([[0.2, 0.3, 0.4], [0.7, 0.8, 0.6], [0.9, 0.1, 0.5]], [0, 1, 1], LOGISTIC, 1.0, 5, 10, 0)
    assert fit.rule == EQUAL and fit.folds == 0 and "1 image(s) of a class" in fit.note
    np.testing.assert_allclose(fit.coef, [1 / 3] * 3)
