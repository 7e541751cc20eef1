"""``fused``: the whole-image, detector and cascade scores of one image combined into one
calibrated probability, beside the paper's three scenarios (never replacing them).

``p = sigmoid(b + sum_i w_i * f_i(s_i))`` (:func:`fused_probability`, the one copy), with f_i the
logit of s_i clipped to [1e-4, 1 - 1e-4] (``logistic``, and ``equal``: w_i = 1/3, b = 0), or its
midrank among the validation scores kept as ``reference`` (``rank``). The checkpoint holds w, b and
``reference`` as buffers; the manifest's ``fusion`` entry (:func:`manifest_entry`) holds w and b.
Scoring asks the three base scenarios on the same batch and shows the cascade's boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.special import expit

from limbscan.errors import LimbscanError
from limbscan.scenarios import info
from limbscan.scenarios.base import Batch, Finding, ModelStore, Scenario

NAME = "fused"
INPUTS: tuple[str, ...] = info(NAME).needs  # the scenarios fused, in the order of w
BOXES_FROM = "cascade"  # whose boxes (and masks) a fused finding shows
CLIP = 1e-4  # scores are clipped to [CLIP, 1 - CLIP] before their logit: a 0 or 1 stays finite
LOGISTIC, RANK, EQUAL = "logistic", "rank", "equal"  # EQUAL: nothing fitted (too few validation images)


# -- the score ------------------------------------------------------------------------------
def logits(scores: Any) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), CLIP, 1.0 - CLIP)
    return np.log(p) - np.log1p(-p)


def midranks(scores: Any, reference: Any) -> np.ndarray:
    """Each column of ``scores`` placed among that column of ``reference``: the share of reference
    values below it, ties counted half (in [0, 1])."""
    s, ref = np.asarray(scores, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    out = np.empty_like(s)
    for i in range(s.shape[1]):
        col = np.sort(ref[:, i])
        out[:, i] = (np.searchsorted(col, s[:, i], "left") + np.searchsorted(col, s[:, i], "right")) / (2.0 * len(col))
    return out


def features(scores: Any, rule: str, reference: Any = None) -> np.ndarray:
    """f(scores) per row of base scores (n x len(INPUTS)): midranks for ``rank``, else logits."""
    return midranks(scores, reference) if rule == RANK else logits(scores)


def fused_probability(scores: Any, rule: str, coef: Any, intercept: float, reference: Any = None) -> np.ndarray:
    """P(abnormal) per row of base scores (n x len(INPUTS)): sigmoid(b + w . f(scores))."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1, len(np.asarray(coef)))
    return expit(features(s, rule, reference) @ np.asarray(coef, dtype=np.float64) + float(intercept))


# -- the scenario -----------------------------------------------------------------------------
def manifest_entry(ckpt: dict[str, Any]) -> dict[str, Any]:
    """What a bundle's manifest says of a fused checkpoint: the rule, w and b (enough to fuse the
    ONNX classifiers' outputs by hand under the logistic rule) and both rules' cross-validated AUCs."""
    extra, state = ckpt.get("extra") or {}, ckpt["model"]
    return {
        "rule": extra.get("rule"),
        "inputs": list(extra.get("inputs") or INPUTS),
        "score": "sigmoid(intercept + sum(coef * f(score))), f = logit(clip(score, 1e-4, 1 - 1e-4)) under the "
                 "logistic rule, the midrank among the stored validation scores under the rank rule",
        "coef": [float(v) for v in state["coef"].tolist()],
        "intercept": float(state["intercept"]),
        "out_of_fold_auc": extra.get("out_of_fold_auc"),
        "cv_auc": extra.get("cv_auc"),
        "folds": extra.get("folds_used"),
        "configured": extra.get("fusion"),
        "note": extra.get("note"),
    }


class FusedScenario(Scenario):
    name = NAME

    def __init__(self, bases: dict[str, Scenario], rule: str, coef: Any, intercept: float, reference: Any = None):
        missing = [n for n in INPUTS if n not in bases]
        if missing:
            raise LimbscanError(f"fused: needs the scenarios {', '.join(missing)}")
        if rule not in (LOGISTIC, RANK, EQUAL):
            raise LimbscanError(f"fused: rule {rule!r}: expected {LOGISTIC}, {RANK} or {EQUAL}")
        self.bases = {n: bases[n] for n in INPUTS}
        self.rule, self.intercept = rule, float(intercept)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.reference = None if reference is None else np.asarray(reference, dtype=np.float64)
        self.cache_side = int(self.bases[BOXES_FROM].cache_side)
        # The boxes shown are the cascade's, from its detector: predict pastes their masks with it.
        self.detector = getattr(self.bases[BOXES_FROM], "detector", None)

    @classmethod
    def load(cls, store: ModelStore) -> FusedScenario:
        ckpt = store.checkpoint(cls.name)
        extra = ckpt.get("extra") or {}
        inputs = tuple(extra.get("inputs") or ())
        if inputs != INPUTS:
            raise LimbscanError(f"{store.folder.best(cls.name)}: fuses {', '.join(inputs) or 'nothing'}; this "
                                f"limbscan fuses {', '.join(INPUTS)} (refit: `limbscan train DS -o RUN --resume`)")
        state = ckpt["model"]
        return cls({n: store.scenario(n) for n in INPUTS}, str(extra["rule"]), state["coef"].numpy(),
                   float(state["intercept"]), state["reference"].numpy())

    def probabilities(self, scores: Any) -> np.ndarray:
        """P(abnormal) per row of base scores (n x len(INPUTS), in INPUTS order)."""
        return fused_probability(scores, self.rule, self.coef, self.intercept, self.reference)

    def score(self, batch: Batch) -> list[Finding]:
        found = {n: batch.findings(s) for n, s in self.bases.items()}
        scores = np.asarray([[found[n][i].score for n in INPUTS] for i in range(len(batch))], dtype=np.float64)
        findings = []
        for p, shown in zip(self.probabilities(scores.reshape(len(batch), len(INPUTS))), found[BOXES_FROM],
                            strict=True):
            findings.append(Finding(float(p), list(shown.boxes), list(shown.box_scores),
                                    detector_boxes=shown.detector_boxes, boxes_from=shown.boxes_from))
        return findings

    def settings(self) -> dict[str, Any]:
        return {"rule": self.rule, "inputs": list(INPUTS), "coef": self.coef.tolist(), "intercept": self.intercept}

    @classmethod
    def held_out_scores(cls, store: ModelStore, image_ids: Sequence[int]) -> list[float] | None:
        """The out-of-fold fused scores the stage kept for these validation images."""
        extra = store.checkpoint(cls.name).get("extra") or {}
        kept = dict(zip((int(i) for i in extra.get("val_image_ids") or []), extra.get("oof_scores") or [], strict=True))
        missing = [int(i) for i in image_ids if int(i) not in kept]
        if missing:
            raise LimbscanError(
                f"{store.folder.best(cls.name)}: fitted on other validation images ({len(missing)} of these are "
                "not among them, so it has no out-of-fold score for them); refit it on this split: "
                "`limbscan train DS -o RUN --scenario fused`"
            )
        return [float(kept[int(i)]) for i in image_ids]


__all__ = [
    "FusedScenario",
    "fused_probability",
    "logits",
    "manifest_entry",
]
