"""Fixtures of the report tests: a metrics.json with every section the report writes."""

from __future__ import annotations

import pytest


def _metrics(synthetic: bool = False) -> dict:
    m = {
        "split": "test",
        "suspected_sensitivity": 0.95,
        "n": 236,
        "n_abnormal": 36,
        "scenarios": {
            "cascade": {
                "auc": 0.9123,
                "auc_ci95": [0.8601, 0.9512],
                "sensitivity": 0.8611,
                "sensitivity_ci95": [0.7222, 0.9444],
                "specificity": 0.8899,
                "accuracy": 0.8856,
                "ppv": 0.5849,
                "npv": 0.9727,
                "f1": 0.6966,
                "kappa": 0.6321,
                "threshold": 0.4217,
                "confusion": {"tp": 31, "fn": 5, "fp": 22, "tn": 178},
                "by_body_part": {
                    "leg": {"auc": 0.9034, "n": 200},
                    "knee": {"auc": None, "n": 20, "n_abnormal": 0},
                    "hip": {"auc": 0.7123, "n": 16, "seen": False},
                },
                "by_tag": {"hardware": {"0": {"auc": 0.8766, "n": 220}, "1": {"auc": None, "n": 16, "n_abnormal": 16}}},
                "localisation": {"n": 36, "ap50": 0.4123, "top_box_hit": 0.6111},
                "operating_points": {
                    "likely": {"threshold": 0.4217, "rule": "youden", "sensitivity": 0.8611,
                               "sensitivity_ci95": [0.7222, 0.9444], "specificity": 0.8899, "specificity_ci95": None,
                               "confusion": {"tp": 31, "fn": 5, "fp": 22, "tn": 178},
                               "val_sensitivity": 0.8889, "val_specificity": 0.91},
                    "suspected": {"threshold": 0.0712, "rule": "sensitivity>=0.95", "target_sensitivity": 0.95,
                                  "note": None, "sensitivity": 0.9444, "sensitivity_ci95": [0.8611, 1.0],
                                  "specificity": 0.515, "specificity_ci95": [0.445, 0.585],
                                  "confusion": {"tp": 34, "fn": 2, "fp": 97, "tn": 103},
                                  "val_sensitivity": 1.0, "val_specificity": 0.47},
                },
            },
            "detector": {
                "auc": 0.8512,
                "auc_ci95": [0.7933, 0.9011],
                "sensitivity": 0.75,
                "specificity": 0.8,
                "accuracy": 0.7924,
                "ppv": None,
                "threshold": 0.3,
                "confusion": {"tp": 27, "fn": 9, "fp": 40, "tn": 160},
                "by_body_part": {"leg": {"auc": 0.8411, "n": 200}},
                "by_tag": {"hardware": {"0": {"auc": 0.7988, "n": 220}}},
                "operating_points": {
                    "likely": {"threshold": 0.3, "rule": "youden", "sensitivity": 0.75, "specificity": 0.8,
                               "confusion": {"tp": 27, "fn": 9, "fp": 40, "tn": 160},
                               "val_sensitivity": 0.8, "val_specificity": 0.82},
                    "suspected": None,  # a bundle exported before operating points
                },
            },
        },
        "comparisons": [
            {"a": "cascade", "b": "detector", "delong_p": 0.0312, "auc_diff": 0.0611},
            {"a": "cascade", "b": "whole-image", "delong_p": 0.0004},
        ],
        "backbones": [
            {
                "backbone": "efficientnet_lite0",
                "scenario": "cascade",
                "auc": 0.9123,
                "auc_ci95": [0.8601, 0.9512],
                "sensitivity": 0.8611,
            },
            {"backbone": "resnet50", "scenario": "cascade", "auc": 0.9345, "sensitivity": 0.8889},
        ],
    }
    if synthetic:
        m["synthetic"] = True
    return m


@pytest.fixture
def metrics():
    """``metrics(synthetic=False)``: a fresh metrics.json dict (two scenarios, every optional section
    but training data, gate and timing), to change freely."""
    return _metrics
