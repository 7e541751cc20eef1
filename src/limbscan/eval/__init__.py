"""Evaluation: image-level metrics with confidence intervals (:mod:`.metrics`) and reports."""

from limbscan.eval.metrics import (
    BinaryMetrics,
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

__all__ = [
    "BinaryMetrics",
    "auc_or_none",
    "binary_metrics",
    "bootstrap_auc_diff",
    "bootstrap_ci",
    "choose_threshold",
    "delong_ci",
    "delong_test",
    "format_metric",
    "undefined_reason",
]
