"""Image-level metrics with honest uncertainty: point metrics, thresholds, bootstrap CIs, DeLong.

Conventions: ``labels`` 0 (normal) / 1 (abnormal); ``scores`` higher-is-more-abnormal; abnormal
when ``score >= threshold`` (``roc_curve``'s convention). A metric with an empty denominator is
``None``, never NaN, so ``metrics.json`` stays valid JSON. Confidence intervals resample PATIENTS,
stratified by whether the patient has an abnormal image (one patient's images are correlated).
What scikit-learn and scipy lack (DeLong's covariance, a vectorised weighted AUC) is here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score, roc_curve

from limbscan.errors import LimbscanError

METRICS: tuple[str, ...] = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "kappa")

# Bootstrap weight matrices are (resamples x images) floats; this bounds one chunk to ~32 MB
# so a 20 000-image dataset does not need gigabytes for 2000 resamples.
_CHUNK_CELLS = 4_000_000

# A CI is only reported when the metric is defined in at least this share of resamples
# (e.g. PPV when the model calls almost nothing abnormal); otherwise it would describe a
# biased subset of resamples.
_MIN_DEFINED_SHARE = 0.5


class MetricsInputError(LimbscanError, ValueError):
    """Labels or scores that cannot be scored (length mismatch, labels not 0/1, NaN scores)."""


@dataclass(frozen=True)
class BinaryMetrics:
    """Metrics of one set of predictions at one threshold; ``None`` means undefined."""

    n: int
    n_pos: int
    n_neg: int
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float | None
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    f1: float | None
    kappa: float | None
    auc: float | None
    auc_undefined_reason: str | None = None

    @property
    def confusion(self) -> np.ndarray:
        """2x2 confusion matrix in scikit-learn's layout: rows truth (0, 1), columns prediction."""
        return np.array([[self.tn, self.fp], [self.fn, self.tp]])

    def as_dict(self) -> dict[str, Any]:
        """Plain Python types only (no numpy scalars, no NaN), ready for ``json.dump``."""
        return {k: _json_number(v) for k, v in asdict(self).items()}


def undefined_reason(labels: ArrayLike) -> str | None:
    """Why AUC (and sensitivity or specificity) is undefined on these labels, or ``None``."""
    y = _labels(labels)
    if y.size == 0:
        return "no images"
    if not y.any():
        return "no abnormal images"
    if y.all():
        return "no normal images"
    return None


def auc_or_none(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """ROC AUC of ``scores`` on ``labels``, or ``None`` where it is undefined (no images, or one class)."""
    y, s = _check(labels, scores)
    return None if undefined_reason(y) else float(roc_auc_score(y, s))


def format_metric(value: float | None, digits: int = 3) -> str:
    """A metric (an AUC, say) to ``digits`` decimals, or "undefined" where it is ``None`` or not finite."""
    if value is None or not math.isfinite(value):
        return "undefined"
    return f"{float(value):.{digits}f}"


def binary_metrics(labels: ArrayLike, scores: ArrayLike, threshold: float) -> BinaryMetrics:
    """All image-level metrics at ``threshold``; AUC from the scores, independent of it."""
    y, s = _check(labels, scores)
    if y.size == 0:
        raise MetricsInputError("cannot compute metrics on zero images")
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    reason = undefined_reason(y)
    with warnings.catch_warnings():
        # kappa is 0/0 when truth and prediction are both one constant class; sklearn warns
        # (which warning depends on its version) and returns NaN, which becomes None below.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kappa = float(cohen_kappa_score(y, pred, labels=[0, 1]))
    return BinaryMetrics(
        n=int(y.size),
        n_pos=tp + fn,
        n_neg=tn + fp,
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        accuracy=(tp + tn) / y.size,
        sensitivity=_ratio(tp, tp + fn),
        specificity=_ratio(tn, tn + fp),
        ppv=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        f1=_nan_to_none(float(f1_score(y, pred, labels=[0, 1], zero_division=np.nan))),
        kappa=_nan_to_none(kappa),
        auc=auc_or_none(y, s),
        auc_undefined_reason=reason,
    )


def choose_threshold(
    labels: ArrayLike,
    scores: ArrayLike,
    method: str = "youden",
    target_sensitivity: float | None = None,
) -> float:
    """Operating threshold picked on VALIDATION data; the caller applies it unchanged elsewhere.

    ``method="youden"`` maximises sensitivity + specificity - 1 (ties: the highest threshold);
    ``"sensitivity"`` (implied by ``target_sensitivity``) returns the highest threshold reaching the
    target. The threshold is always one of ``scores`` (never ``inf``), so ``score >= threshold``
    reproduces the chosen point; a useless model still gets its best finite point.
    """
    y, s = _check(labels, scores)
    reason = undefined_reason(y)
    if reason:
        raise MetricsInputError(f"cannot choose a threshold: the validation data has {reason}")
    if target_sensitivity is not None:
        method = "sensitivity"
    # drop_intermediate=False keeps every distinct score as a candidate, so the first index
    # reaching a target is the highest threshold that does.
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if method == "youden":
        return float(thresholds[int(np.argmax(tpr - fpr))])  # argmax: first, i.e. highest, of ties
    if method == "sensitivity":
        if target_sensitivity is None:
            raise MetricsInputError("method='sensitivity' needs target_sensitivity")
        if not 0.0 < target_sensitivity <= 1.0:
            raise MetricsInputError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
        # tiny tolerance: a target of 0.9 with 9 of 10 found is met, despite 9/10 in floats
        return float(thresholds[int(np.argmax(tpr >= target_sensitivity - 1e-12))])
    raise MetricsInputError(f"unknown threshold method {method!r}; use 'youden' or 'sensitivity'")


def bootstrap_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    groups: ArrayLike | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    metrics: Sequence[str] = METRICS,
) -> dict[str, tuple[float, float] | None]:
    """Percentile ``1 - alpha`` CIs by a patient-level stratified bootstrap.

    ``groups`` holds each image's patient id (``None``: every image is its own patient). Each
    resample draws, with replacement, as many patients as there are in each stratum (patients
    with any abnormal image / with none) and keeps all images of every drawn patient.
    A metric gets ``None`` when it is undefined on the data itself or in more than half the
    resamples; otherwise its interval is taken over the resamples where it is defined.
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise MetricsInputError(f"unknown metrics {sorted(unknown)}; known: {list(METRICS)}")
    y, s = _check(labels, scores)
    point = binary_metrics(y, s, threshold)
    pred = s >= threshold
    samples: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    order = _AucOrder(y, s)
    for w in _bootstrap_weights(y, groups, n_boot, seed):
        tp = w @ (y & pred)
        fn = w @ (y & ~pred)
        fp = w @ (~y & pred)
        tn = w @ (~y & ~pred)
        values = _rates(tp, fp, tn, fn)
        if "auc" in samples:
            values["auc"] = order.auc(w)
        for m in metrics:
            samples[m].append(values[m])
    return {
        m: None if getattr(point, m) is None else _percentile_ci(np.concatenate(samples[m]), alpha) for m in metrics
    }


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> dict[str, float | None]:
    """DeLong et al. (1988) test of two correlated AUCs on the same images (two-sided).

    Uses Sun & Xu's (2014) midrank algorithm. All values are ``None`` when AUC is undefined
    (one class) or a class has a single image (its variance term cannot be estimated).
    When both score sets rank every pair identically the difference has zero variance:
    ``se`` is 0 and ``p`` is 1 (``z`` is ``None``); a non-zero difference with zero variance
    (both AUCs at 0 or 1) has ``p`` ``None``: the test cannot say.
    """
    y, a = _check(labels, scores_a)
    _, b = _check(labels, scores_b)
    keys = ("auc_a", "auc_b", "diff", "se", "z", "p")
    if _too_few(y):
        return dict.fromkeys(keys)
    aucs, cov = _delong(y, np.vstack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    # var can come out as a rounding-level negative or zero when the two rankings agree; a
    # difference with no variance (e.g. AUC 1 against AUC 0 on a handful of images) has no p.
    if se <= 1e-12:
        z, p = None, (1.0 if abs(diff) <= 1e-12 else None)
    else:
        z = diff / se
        p = float(2 * norm.sf(abs(z)))
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": diff, "se": se, "z": z, "p": p}


def delong_ci(labels: ArrayLike, scores: ArrayLike, alpha: float = 0.05) -> tuple[float, float] | None:
    """Normal-approximation CI for one AUC with DeLong's variance, clipped to [0, 1]."""
    y, s = _check(labels, scores)
    if _too_few(y):
        return None
    aucs, cov = _delong(y, s[None, :])
    half = norm.ppf(1 - alpha / 2) * np.sqrt(max(float(cov[0, 0]), 0.0))
    return float(max(aucs[0] - half, 0.0)), float(min(aucs[0] + half, 1.0))


def bootstrap_auc_diff(
    labels: ArrayLike,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired patient-level bootstrap of AUC(a) - AUC(b), the check on (and alternative to) DeLong.

    Both models are scored on the same resampled patients. ``se`` is the standard deviation
    of the resampled differences, ``p`` the two-sided normal p-value of ``diff / se`` (as
    pROC's bootstrap test), ``ci`` the percentile interval. All ``None`` when AUC is undefined.
    """
    y, a = _check(labels, scores_a)
    _, b = _check(labels, scores_b)
    if undefined_reason(y):
        return {"diff": None, "se": None, "p": None, "ci": None}
    diff = float(roc_auc_score(y, a) - roc_auc_score(y, b))
    order_a, order_b = _AucOrder(y, a), _AucOrder(y, b)
    diffs = np.concatenate([order_a.auc(w) - order_b.auc(w) for w in _bootstrap_weights(y, groups, n_boot, seed)])
    diffs = diffs[np.isfinite(diffs)]
    se = float(np.std(diffs, ddof=1))
    p = 1.0 if se <= 1e-12 else float(2 * norm.sf(abs(diff) / se))
    return {"diff": diff, "se": se, "p": p, "ci": _percentile_ci(diffs, alpha)}


# --- helpers ---------------------------------------------------------------------------------


def _labels(labels: ArrayLike) -> np.ndarray:
    y = np.asarray(labels).ravel()
    if y.size and not np.isin(y, (0, 1)).all():
        bad = [v.item() for v in np.unique(y[~np.isin(y, (0, 1))])[:5]]
        raise MetricsInputError(f"labels must be 0 (normal) or 1 (abnormal); found {bad}")
    return y.astype(bool)


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(labels)
    s = np.asarray(scores, dtype=float).ravel()
    if s.shape != y.shape:
        raise MetricsInputError(f"{y.size} labels but {s.size} scores")
    if not np.isfinite(s).all():
        raise MetricsInputError(f"{int((~np.isfinite(s)).sum())} scores are NaN or infinite")
    return y, s


def _too_few(y: np.ndarray) -> bool:
    return int(y.sum()) < 2 or int((~y).sum()) < 2


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else x


def _json_number(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _rates(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised metrics from (weighted) confusion counts; NaN where a denominator is 0."""
    n = tp + fp + tn + fn
    with np.errstate(divide="ignore", invalid="ignore"):
        po = (tp + tn) / n
        pe = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / n**2
        return {
            "accuracy": po,
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "kappa": (po - pe) / (1 - pe),
        }


def _percentile_ci(values: np.ndarray, alpha: float) -> tuple[float, float] | None:
    finite = values[np.isfinite(values)]
    if finite.size < _MIN_DEFINED_SHARE * values.size or finite.size == 0:
        return None
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _bootstrap_weights(y: np.ndarray, groups: ArrayLike | None, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (chunk x images) matrices: how many times each image is in each resample.

    An image's weight is the number of times its patient was drawn, so a patient's images
    always move together. Chunks are deterministic in size, so results depend on the seed only.
    """
    if n_boot < 1:
        raise MetricsInputError(f"n_boot must be >= 1, got {n_boot}")
    if groups is None:
        patient = np.arange(y.size)
    else:
        g = np.asarray(groups).ravel()
        if g.shape != y.shape:
            raise MetricsInputError(f"{y.size} labels but {g.size} patient ids")
        _, patient = np.unique(g.astype(str), return_inverse=True)
    n_patients = int(patient.max()) + 1 if y.size else 0
    abnormal_patient = np.zeros(n_patients, dtype=bool)
    np.logical_or.at(abnormal_patient, patient, y)
    strata = [np.flatnonzero(abnormal_patient), np.flatnonzero(~abnormal_patient)]
    strata = [st for st in strata if st.size]
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_CELLS // max(y.size, 1)))
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        counts = np.zeros((size, n_patients))
        for members in strata:
            # a multinomial draw of k from k equally likely patients is exactly k draws with
            # replacement, summarised as counts
            counts[:, members] = rng.multinomial(members.size, np.full(members.size, 1 / members.size), size=size)
        yield counts[:, patient]


class _AucOrder:
    """Weighted AUC for many weight vectors at once (the Mann-Whitney statistic with weights).

    AUC = sum over abnormal i, normal j of w_i w_j [s_i > s_j + tie/2] / (W_abnormal W_normal).
    Sorting once and taking cumulative normal weight up to each score's tie group makes every
    resample one matrix pass instead of a call to roc_auc_score.
    """

    def __init__(self, y: np.ndarray, s: np.ndarray):
        order = np.argsort(s, kind="stable")
        self.order = order
        self.pos = y[order].astype(float)
        s_sorted = s[order]
        # for each sorted position: start and end (exclusive) of its group of tied scores
        _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
        group = np.repeat(np.arange(first.size), counts)
        self.start = first[group]
        self.end = (first + counts)[group]

    def auc(self, w: np.ndarray) -> np.ndarray:
        w = w[:, self.order]
        w_pos = w * self.pos
        w_neg = w - w_pos
        cum_neg = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w_neg, axis=1)], axis=1)
        below = cum_neg[:, self.start]
        tied = cum_neg[:, self.end] - below
        num = (w_pos * (below + 0.5 * tied)).sum(axis=1)
        den = w_pos.sum(axis=1) * w_neg.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return num / den


def _delong(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their covariance for k score rows (Sun & Xu 2014, midranks via scipy)."""
    x, z = scores[:, y], scores[:, ~y]  # abnormal, normal
    m, n = x.shape[1], z.shape[1]
    tx = rankdata(x, axis=1)
    tz = rankdata(z, axis=1)
    t_all = rankdata(np.hstack([x, z]), axis=1)
    aucs = (t_all[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (t_all[:, :m] - tx) / n  # per abnormal image: share of normals it outranks
    v01 = 1.0 - (t_all[:, m:] - tz) / m  # per normal image: share of abnormals above it
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov
