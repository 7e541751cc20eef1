"""Evaluation: image-level metrics with confidence intervals (:mod:`.metrics`) and reports."""

from limbscan.eval.metrics import (
    BinaryMetrics,
    binary_metrics,
    bootstrap_auc_diff,
    bootstrap_ci,
    choose_threshold,
    delong_ci,
    delong_test,
    undefined_reason,
)

__all__ = [
    "BinaryMetrics",
    "binary_metrics",
    "bootstrap_auc_diff",
    "bootstrap_ci",
    "choose_threshold",
    "delong_ci",
    "delong_test",
    "undefined_reason",
]
