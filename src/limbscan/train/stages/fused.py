"""The ``fused`` scenario's training stage: the fusion's weights (w, b) fitted on the validation
split, no gradient; :func:`~limbscan.scenarios.fused.fused_probability` applies them.

``fusion.rule: logistic`` fits an L2 logistic regression on the base scores' logits (not
standardised); ``rank`` a Platt-scaled weighted average of their midranks. Both rules are
measured by repeated k-fold cross-validation within validation, ``val_scores.json`` gets each
image's out-of-fold fused score, and the weights shipped are fitted on every validation image;
too few images of a class fit nothing (rule ``equal``). docs/training.md ("Fused weights") has why.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from limbscan.errors import LimbscanError
from limbscan.eval.metrics import auc_or_none
from limbscan.rundir import RunDir
from limbscan.scenarios.fused import (
    EQUAL,
    INPUTS,
    LOGISTIC,
    NAME,
    RANK,
    features,
    fused_probability,
    logits,
    midranks,
)
from limbscan.train.stages.base import RunData

MEASURED = (LOGISTIC, RANK)  # the rules cross-validated side by side
GRID_STEPS = 10  # rank rule: the mix's weights are multiples of 1 / GRID_STEPS
DECIMALS = 6  # val_scores.json's rounding, which the out-of-fold scores get too


def _logistic(x: np.ndarray, y: np.ndarray, c: float, standardise: bool = False) -> tuple[np.ndarray, float]:
    """(w, b) of an L2 logistic regression on ``x`` (``standardise``: fitted on standardised
    columns, folded back onto ``x``)."""
    from sklearn.linear_model import LogisticRegression

    mean, sd = (x.mean(axis=0), x.std(axis=0)) if standardise else (np.zeros(x.shape[1]), np.ones(x.shape[1]))
    sd = np.where(sd > 1e-12, sd, 1.0)  # a constant input gets no weight, and no division by 0
    fit = LogisticRegression(C=c, max_iter=1000).fit((x - mean) / sd, y)
    w = fit.coef_[0] / sd
    return w, float(fit.intercept_[0] - np.sum(fit.coef_[0] * mean / sd))


def _aucs(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC AUC of each column of ``z`` (Mann-Whitney on midranks)."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return (rankdata(z, axis=0)[pos].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)


def best_mix(ranks: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The rank rule's mix: weights on a simplex grid (multiples of 1 / GRID_STEPS, summing to 1)
    giving the best AUC on ``ranks``; ties go to the mix nearest equal weights."""
    k = ranks.shape[1]
    grid = np.asarray([w for w in itertools.product(range(GRID_STEPS + 1), repeat=k) if sum(w) == GRID_STEPS],
                      dtype=np.float64) / GRID_STEPS
    aucs = np.round(_aucs(ranks @ grid.T, y), 12)
    best = np.flatnonzero(aucs == aucs.max())
    return grid[best[np.argmin(np.abs(grid[best] - 1.0 / k).sum(axis=1))]]


class FusionEstimator(ClassifierMixin, BaseEstimator):
    """The fused score as a scikit-learn classifier on rows of base scores, so the stage's fit and
    ``cross_val_predict`` fit it alike."""

    def __init__(self, rule: str = LOGISTIC, C: float = 1.0):  # noqa: N803 - scikit-learn's name
        self.rule = rule
        self.C = C

    def fit(self, X: Any, y: Any) -> FusionEstimator:  # noqa: N803
        x, y = np.asarray(X, dtype=np.float64), np.asarray(y).astype(int)
        self.classes_ = np.array([0, 1])
        k = x.shape[1]
        self.reference_ = np.sort(x, axis=0) if self.rule == RANK else np.zeros((0, k))
        if self.rule == EQUAL:
            self.coef_, self.intercept_ = np.full(k, 1.0 / k), 0.0
        elif self.rule == LOGISTIC:
            self.coef_, self.intercept_ = _logistic(logits(x), y, self.C)
        elif self.rule == RANK:
            ranks = midranks(x, self.reference_)
            mix = best_mix(ranks, y)
            # Platt: the average's scale is its own (a share in [0, 1]), so standardise it for the penalty.
            scale, self.intercept_ = _logistic((ranks @ mix)[:, None], y, self.C, standardise=True)
            self.coef_ = mix * scale[0]
        else:
            raise LimbscanError(f"fusion rule {self.rule!r}: expected {LOGISTIC}, {RANK} or {EQUAL}")
        return self

    def decision_function(self, X: Any) -> np.ndarray:  # noqa: N803
        return features(X, self.rule, self.reference_) @ self.coef_ + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:  # noqa: N803
        p = fused_probability(X, self.rule, self.coef_, self.intercept_, self.reference_)
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:  # noqa: N803
        return (self.decision_function(X) >= 0).astype(int)


def effective_folds(labels: Any, folds: int) -> int:
    """``folds``, or fewer where a class has fewer validation images (stratified k-fold needs k of each)."""
    counts = np.bincount(np.asarray(labels).astype(int), minlength=2)
    return int(min(folds, counts.min()))


def out_of_fold(scores: Any, labels: Any, rule: str, c: float, folds: int, seed: int) -> np.ndarray:
    """Each image's fused score from weights fitted without it: stratified ``folds``-fold, shuffled by ``seed``."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    x, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(int)
    return cross_val_predict(FusionEstimator(rule, c), x, y, cv=cv, method="predict_proba")[:, 1]


def cross_validated_auc(scores: Any, labels: Any, rule: str, c: float, folds: int, repeats: int,
                        seed: int) -> dict[str, Any]:
    """AUC of the pooled out-of-fold scores of ``repeats`` reshuffled k-folds (seeds ``seed``,
    ``seed + 1``, ...): mean, sd and each round's."""
    from sklearn.metrics import roc_auc_score

    aucs = [float(roc_auc_score(labels, out_of_fold(scores, labels, rule, c, folds, seed + r))) for r in range(repeats)]
    return {"mean": float(np.mean(aucs)), "sd": float(np.std(aucs, ddof=1)) if repeats > 1 else 0.0,
            "folds": folds, "repeats": repeats, "aucs": [round(a, 6) for a in aucs]}


@dataclass
class FusionFit:
    """What fitting the fusion on the validation split gives."""

    rule: str  # the rule fitted: the configured one, or EQUAL where nothing could be
    coef: np.ndarray
    intercept: float
    reference: np.ndarray  # the rank rule's validation scores (0 rows for the others)
    out_of_fold: np.ndarray  # per validation image, in order; EQUAL: its (unfitted) scores
    folds: int  # of the cross-validation; 0: none (too few images)
    cv_auc: dict[str, dict[str, Any]] = field(default_factory=dict)  # rule -> cross_validated_auc
    note: str | None = None


def fit_fusion(scores: Any, labels: Any, rule: str, c: float, folds: int, repeats: int, seed: int) -> FusionFit:
    """Measure both rules by repeated cross-validation on the validation ``scores`` (n x
    len(INPUTS)) and ``labels``, keep the configured ``rule``'s out-of-fold scores, and fit it on
    them all. Too few images of a class to cross-validate: nothing fitted (EQUAL)."""
    x, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(int)
    k = effective_folds(y, folds)
    if k < 2:
        equal = FusionEstimator(EQUAL).fit(x, y)
        smallest = int(np.bincount(y, minlength=2).min())
        note = (f"the validation split holds {smallest} image(s) of a class, too few to cross-validate a fit: "
                "nothing was fitted (equal weights on the logits)")
        return FusionFit(EQUAL, equal.coef_, float(equal.intercept_), equal.reference_,
                         np.round(equal.predict_proba(x)[:, 1], DECIMALS), 0, {}, note)
    measured = {r: cross_validated_auc(x, y, r, c, k, repeats, seed) for r in MEASURED}
    fitted = FusionEstimator(rule, c).fit(x, y)
    note = None if k == folds else (f"{k}-fold, not {folds}: the validation split holds only {k} images of a class")
    return FusionFit(rule, fitted.coef_, float(fitted.intercept_), fitted.reference_,
                     np.round(out_of_fold(x, y, rule, c, k, seed), DECIMALS), k, measured, note)


class FusionWeights(nn.Module):
    """(w, b), and for the rank rule the validation scores ranks are taken among, as buffers: the
    stage's checkpoint holds them as any model's weights. Nothing here is trained by gradient."""

    def __init__(self, n_inputs: int = len(INPUTS), n_reference: int = 0):
        super().__init__()
        self.register_buffer("coef", torch.zeros(n_inputs, dtype=torch.float64))
        self.register_buffer("intercept", torch.zeros((), dtype=torch.float64))
        self.register_buffer("reference", torch.zeros(n_reference, n_inputs, dtype=torch.float64))

    def set(self, fit: FusionFit) -> None:
        self.coef = torch.as_tensor(fit.coef, dtype=torch.float64).clone()
        self.intercept = torch.tensor(float(fit.intercept), dtype=torch.float64)
        self.reference = torch.as_tensor(fit.reference, dtype=torch.float64).reshape(-1, len(fit.coef)).clone()


class FusedStage:
    """The fusion's fit, on the base stages' best checkpoints and the validation split: no
    gradient, one "epoch" (``needs_gradients = False``: :func:`limbscan.train.engine.fit` calls
    :meth:`fit_model` instead of a training loop and saves the checkpoint like any stage's)."""

    name = NAME
    epochs = 1
    needs_gradients = False

    def __init__(self, run: RunData, out: str | Path | RunDir, progress: bool = False):
        from limbscan.utils.files import sha256_file

        self.run, self.cfg, self.progress = run, run.cfg, progress
        self.out = out if isinstance(out, RunDir) else RunDir(out)
        missing = [n for n in INPUTS if not self.out.best(n).is_file()]
        if missing:
            raise LimbscanError(f"{self.out.root}: the fused scenario combines {', '.join(INPUTS)}, and "
                                f"{', '.join(missing)} is not trained here (train all, or those first)")
        self.model = FusionWeights()
        # What the fit depends on: a resumed run keeps a finished fit while all of it is unchanged.
        self.fingerprint: dict[str, Any] = {
            "inputs": list(INPUTS),
            "base_sha256": {n: sha256_file(self.out.best(n)) for n in INPUTS},
            "val_image_ids": [int(im["id"]) for im in run.val_images],
            "fusion": self.cfg.fusion.model_dump(),
            "seed": int(self.cfg.train.seed),
        }
        self.checkpoint_extra: dict[str, Any] = {"scenario": NAME, **self.fingerprint}

    @classmethod
    def for_run(cls, run: RunData, out: RunDir, resume: bool = False, progress: bool = False) -> FusedStage:
        return cls(run, out, progress)

    def reusable(self, extra: dict[str, Any]) -> bool:
        """Whether a saved fit (its checkpoint's ``extra``) was made from exactly these inputs."""
        return all(extra.get(key) == value for key, value in self.fingerprint.items())

    def fit_model(self, model: FusionWeights) -> dict[str, float | None]:
        """Score the validation split with the base stages' best checkpoints (as ``val_scores.json``
        does), fit, set ``model``'s buffers; the epoch's metrics, ``val_auc`` the out-of-fold one."""
        from limbscan.scenarios.scoring import score_run

        scored = score_run(self.out.root, self.run.ds, self.run.val_images, list(INPUTS), progress=self.progress)
        scores = np.column_stack([scored[n].scores for n in INPUTS])
        labels = np.asarray(self.run.val_labels)
        f = self.cfg.fusion
        fit = fit_fusion(scores, labels, f.rule, f.C, f.folds, f.repeats, int(self.cfg.train.seed))
        model.set(fit)
        auc = auc_or_none(labels, fit.out_of_fold)
        self.checkpoint_extra.update(
            rule=fit.rule, oof_scores=[float(v) for v in fit.out_of_fold], out_of_fold_auc=auc,
            folds_used=fit.folds, cv_auc=fit.cv_auc, note=fit.note,
            # what it was fitted on, unrounded (val_scores.json rounds to 6 decimals)
            val_base_scores={n: [float(v) for v in scores[:, i]] for i, n in enumerate(INPUTS)},
        )
        metrics: dict[str, float | None] = {"val_auc": auc, "val_images": float(len(labels))}
        for rule, cv in fit.cv_auc.items():
            metrics[f"cv_auc_{rule}"], metrics[f"cv_auc_{rule}_sd"] = cv["mean"], cv["sd"]
        return metrics


__all__ = [
    "DECIMALS",
    "MEASURED",
    "FusedStage",
    "FusionEstimator",
    "FusionFit",
    "FusionWeights",
    "cross_validated_auc",
    "effective_folds",
    "fit_fusion",
    "out_of_fold",
]
