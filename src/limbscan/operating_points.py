"""The two operating points of a scenario and the level a probability reaches: one home for both.

``likely`` (Youden's J, or ``--target-sensitivity``; the bundle's ``thresholds``) and
``suspected`` (the most specific threshold reaching :data:`SUSPECTED_SENSITIVITY` on validation,
never above ``likely``), both chosen at export on VALIDATION scores. At or above ``likely``:
"likely"; at or above ``suspected`` only: "suspected"; else "normal". A bundle without a
``suspected`` point (``None``) gives only "likely" or "normal". Torch- and scikit-learn-free at
import; choosing the points imports :mod:`limbscan.eval.metrics` when called.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from limbscan.errors import LimbscanError

LIKELY, SUSPECTED, NORMAL = "likely", "suspected", "normal"
LEVELS = (LIKELY, SUSPECTED, NORMAL)  # most to least suspicious
# The sensitivity the high-sensitivity point must reach on validation, as fracture readers' "doubt" boxes aim for.
SUSPECTED_SENSITIVITY = 0.95


def level_of(probability: float, likely: float, suspected: float | None) -> str:
    """"likely", "suspected" or "normal": ``probability`` against the two thresholds (``score >=
    threshold`` calls, as everywhere in limbscan); ``suspected`` None means the bundle has none."""
    if probability >= likely:
        return LIKELY
    if suspected is not None and probability >= suspected:
        return SUSPECTED
    return NORMAL


def rule_name(target_sensitivity: float | None) -> str:
    """How a threshold was chosen, as the manifest and the reports spell it."""
    return "youden" if target_sensitivity is None else f"sensitivity>={target_sensitivity:g}"


def check_sensitivity(value: float | None, what: str) -> None:
    """A sensitivity target is a number in (0, 1] (``None``: not asked for); the error names ``what``."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise LimbscanError(f"{what} must be a sensitivity in (0, 1], got {value!r}")


def stored_thresholds(manifest: Mapping[str, Any], scenario: str) -> tuple[float, float | None]:
    """(likely, suspected) of ``scenario`` as the bundle's manifest stores them; suspected is
    ``None`` for a bundle exported before operating points (it only ever has ``thresholds``)."""
    likely = float(manifest["thresholds"][scenario])
    point = ((manifest.get("operating_points") or {}).get(scenario) or {}).get(SUSPECTED)
    return likely, (None if point is None else float(point["threshold"]))


def choose_operating_points(
    labels: Sequence[int],
    scores: Sequence[float],
    *,
    target_sensitivity: float | None = None,
    suspected_sensitivity: float = SUSPECTED_SENSITIVITY,
) -> dict[str, dict[str, Any]]:
    """Both operating points of one scenario, chosen on its VALIDATION ``labels`` and ``scores``.

    Each point: ``threshold``, ``rule``, ``val_sensitivity``, ``val_specificity``; ``suspected`` (lowered
    to ``likely`` at most) adds ``target_sensitivity`` and ``note``, which says when the point is
    degenerate on this split (reached only at the lowest score, or no lower than ``likely``).
    Raises :class:`~limbscan.eval.metrics.MetricsInputError` on one-class or malformed data.
    """
    import numpy as np

    from limbscan.eval.metrics import binary_metrics, choose_threshold

    check_sensitivity(target_sensitivity, "target_sensitivity")
    check_sensitivity(suspected_sensitivity, "suspected_sensitivity")
    y, s = np.asarray(labels), np.asarray(scores, dtype=float)
    likely = choose_threshold(y, s, target_sensitivity=target_sensitivity)
    reached = choose_threshold(y, s, target_sensitivity=suspected_sensitivity)
    suspected = min(reached, likely)

    def point(threshold: float, rule: str) -> dict[str, Any]:
        m = binary_metrics(y, s, threshold)
        return {"threshold": float(threshold), "rule": rule, "val_sensitivity": m.sensitivity,
                "val_specificity": m.specificity}

    low = point(suspected, rule_name(suspected_sensitivity))
    note = None
    if reached >= likely:
        note = (f"the likely point already reaches validation sensitivity {low['val_sensitivity']:.3f} "
                f"(target {suspected_sensitivity:g}): 'suspected' coincides with 'likely', so no image is only "
                "suspected")
    if suspected <= float(s.min()):
        n_abnormal = int(y.sum())
        note = (f"validation sensitivity {suspected_sensitivity:g} is reached only at the lowest validation score "
                f"({suspected:.4g}), where every validation image is called abnormal (specificity "
                f"{low['val_specificity']:.3f}); {n_abnormal} abnormal validation images are too few, or the model "
                "too weak, for this target above the lowest score")
    return {
        LIKELY: point(likely, rule_name(target_sensitivity)),
        SUSPECTED: {**low, "target_sensitivity": float(suspected_sensitivity), "note": note},
    }


__all__ = [
    "LEVELS",
    "LIKELY",
    "NORMAL",
    "SUSPECTED",
    "SUSPECTED_SENSITIVITY",
    "check_sensitivity",
    "choose_operating_points",
    "level_of",
    "rule_name",
    "stored_thresholds",
]
