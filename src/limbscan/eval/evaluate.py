"""``limbscan evaluate``: score a trained run on one split of a dataset and write the report.

The two operating points of each scenario (:mod:`limbscan.operating_points`: "likely", the
balanced one; "suspected", the high-sensitivity one) are chosen on the run's VALIDATION scores
(``RUN/val_scores.json``, written at the end of training) and applied unchanged to the reported
split; asking to report the split they came from is an error. A bundle (``limbscan export``) is
scored like a run, at the operating points it stores, which predict and serve apply too.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from limbscan.bundle.default import default_for
from limbscan.bundle.manifest import is_bundle, read_manifest
from limbscan.data.dataset import Dataset
from limbscan.errors import LimbscanError
from limbscan.eval.localisation import localisation_summary
from limbscan.eval.metrics import (
    binary_metrics,
    bootstrap_auc_diff,
    bootstrap_ci,
    delong_test,
    undefined_reason,
)
from limbscan.operating_points import (
    LIKELY,
    SUSPECTED,
    SUSPECTED_SENSITIVITY,
    choose_operating_points,
    rule_name,
    stored_thresholds,
)
from limbscan.rundir import RunDir
from limbscan.scenarios import info
from limbscan.scenarios.scoring import Scored, score_run, validation_scores

# An image-level tag is reported per value when it takes few values (FracAtlas: 0 / 1 flags).
MAX_TAG_VALUES = 5
GALLERY_PER_KIND = 4


def _validation_scores(run: Path, ds: Dataset) -> dict[str, Any]:
    path = RunDir(run).val_scores
    if path.is_file():
        return json.loads(path.read_text())
    # A run trained before val_scores.json existed: score the validation split of this dataset.
    val = ds.split_images("val")
    if not val:
        raise LimbscanError(
            f"{path}: not found, and {ds.root} has no val split to choose the operating threshold on; "
            "evaluate with the dataset the run was trained on"
        )
    return validation_scores(run, ds, val)


def _gradcam_localisation(bundle: Path, ds: Dataset, images: list[dict], s: Scored, truths: dict,
                          progress: bool) -> dict[str, Any]:
    """The whole-image classifier's localisation: each image's Grad-CAM box (:func:`limbscan.explain.cam_box`)
    ranked by its probability, measured as the detector's boxes are (AP50, top-box hit rate, IoMin)."""
    from rich.progress import track

    from limbscan.explain import CAM_BOX_FRACTION, cam_box, gradcam
    from limbscan.inference import Prediction, load
    from limbscan.io import read_image

    model = load(bundle)
    predictions = {}
    for image, score in track(list(zip(images, s.scores, strict=True)), description="Grad-CAM boxes",
                              disable=not progress, transient=True):
        pixels, _ = read_image(ds.image_path(image))
        pred = Prediction(None, "whole-image", float(score), 0.5, "", {})
        box = cam_box(gradcam(model, pixels, pred))
        predictions[int(image["id"])] = {"boxes": [box] if box else [], "scores": [float(score)] if box else []}
    return {**localisation_summary(predictions, truths, mode="iomin"),
            "box": f"Grad-CAM region around the peak, >= {CAM_BOX_FRACTION:g} of it"}


def _gate_report(run: Path, ds: Dataset, images: list[dict], progress: bool) -> dict[str, Any] | None:
    if not is_bundle(run) or not read_manifest(run, verify=False).get("gate"):
        return None
    from limbscan.gate.model import GATE_FILE, PixelGate, gate_counts, judge_files

    verdicts = judge_files(PixelGate.load(run / GATE_FILE), [ds.image_path(im) for im in images], progress=progress)
    report = gate_counts(verdicts)
    report["out_of_scope_images"] = [int(im["id"]) for im, v in zip(images, verdicts) if v is not None and not v.in_scope]
    return report


def _bundle_points(
    run: Path, target_sensitivity: float | None, suspected_sensitivity: float | None
) -> dict[str, Any] | None:
    """A bundle's stored operating points (the ones predict and serve apply), or None for a run.

    A bundle exported before operating points has only its likely threshold: its suspected
    point is None, as predict and serve apply none."""
    if not is_bundle(run):
        return None
    manifest = read_manifest(run)
    stored = manifest.get("target_sensitivity")
    if target_sensitivity is not None and (stored is None or abs(float(stored) - target_sensitivity) > 1e-9):
        raise LimbscanError(
            f"{run}: this bundle's thresholds were chosen by {manifest.get('threshold_rule')}; to evaluate another "
            f"operating point, export the run again with --target-sensitivity {target_sensitivity}"
        )
    stored_suspected = manifest.get("suspected_sensitivity")
    if suspected_sensitivity is not None and (
        stored_suspected is None or abs(float(stored_suspected) - suspected_sensitivity) > 1e-9
    ):
        chosen = "has no suspected point" if stored_suspected is None else (
            f"chose its suspected point for sensitivity {stored_suspected:g}")
        raise LimbscanError(f"{run}: this bundle {chosen}; to evaluate another, export the run again with "
                            f"--suspected-sensitivity {suspected_sensitivity:g}")
    points = {}
    for name in manifest["scenarios"]:
        likely, suspected = stored_thresholds(manifest, name)
        saved = (manifest.get("operating_points") or {}).get(name) or {}
        points[name] = {
            LIKELY: {"threshold": likely, "rule": manifest.get("threshold_rule") or rule_name(stored)},
            SUSPECTED: None if suspected is None else {
                "threshold": suspected, **{k: saved[SUSPECTED].get(k) for k in ("rule", "target_sensitivity", "note")}},
        }
    return {"points": points, "method": "youden" if stored is None else "sensitivity",
            "target_sensitivity": stored, "suspected_sensitivity": stored_suspected}


def _at_points(points: dict[str, Any], s: Scored, val_labels: np.ndarray, val_scores: np.ndarray,
               likely: dict[str, Any], groups: list[str], n_boot: int, seed: int) -> dict[str, Any]:
    """Sensitivity, specificity (95 % CIs) and confusion on the reported split at each operating
    point, beside what they were on validation, where the point was chosen. ``likely`` is the
    scenario's entry, already measured at the likely threshold."""
    out: dict[str, Any] = {}
    for level, point in points.items():
        if point is None:  # a bundle exported before operating points: none to report
            out[level] = None
            continue
        threshold = float(point["threshold"])
        if level == LIKELY:
            m, cis = likely, {k: likely.get(f"{k}_ci95") for k in ("sensitivity", "specificity")}
        else:
            m = binary_metrics(s.labels, s.scores, threshold).as_dict()
            cis = bootstrap_ci(s.labels, s.scores, threshold, groups=groups, n_boot=n_boot, seed=seed,
                               metrics=("sensitivity", "specificity"))
        on_val = binary_metrics(val_labels, val_scores, threshold)
        out[level] = {
            **{k: v for k, v in point.items() if k not in ("val_sensitivity", "val_specificity")},
            "threshold": threshold,
            "sensitivity": m["sensitivity"], "specificity": m["specificity"],
            **{f"{k}_ci95": (list(v) if v else None) for k, v in cis.items()},
            "confusion": {k: m[k] for k in ("tp", "fn", "fp", "tn")},
            "val_sensitivity": on_val.sensitivity, "val_specificity": on_val.specificity,
        }
    return out


def _groups(images: list[dict]) -> list[str]:
    return [im.get("patient_id") or f"image:{im['id']}" for im in images]


def _auc_block(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    m = binary_metrics(labels, scores, 0.5)
    return {"auc": m.auc, "n": m.n, "n_abnormal": m.n_pos,
            **({"auc_undefined_reason": m.auc_undefined_reason} if m.auc is None else {})}


def _by_group(images: list[dict], s: Scored, key) -> dict[str, dict]:
    values: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        values.setdefault(str(key(image)), []).append(i)
    return {v: _auc_block(s.labels[idx], s.scores[idx]) for v, idx in sorted(values.items())}


def _study_level(images: list[dict], s: Scored) -> dict[str, Any] | None:
    """AUC over studies, where the dataset knows them: a study is abnormal when any image is, and
    scores its highest image (the rule studies.csv ranks by); None when no image names a study."""
    if not any(im.get("study") for im in images):
        return None
    groups: dict[str, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.get("study") or f"image:{im['id']}", []).append(i)
    labels = np.array([s.labels[idx].max() for idx in groups.values()])
    scores = np.array([s.scores[idx].max() for idx in groups.values()])
    return {**_auc_block(labels, scores), "rule": "max over the study's images"}


def _tags(images: list[dict]) -> list[str]:
    seen: dict[str, set] = {}
    for image in images:
        for k, v in (image.get("attributes") or {}).items():
            if isinstance(v, (int, str, bool)):
                seen.setdefault(k, set()).add(v)
    return sorted(k for k, vals in seen.items() if 1 < len(vals) <= MAX_TAG_VALUES)


def _truths(ds: Dataset, images: list[dict]) -> dict[int, list[list[float]]]:
    truths = {}
    for image in images:
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in ds.annotations_for(image["id"]))]
        if boxes and int(image["label"]) == 1:
            truths[int(image["id"])] = boxes
    return truths


def _gallery(ds: Dataset, images: list[dict], s: Scored, threshold: float, truths: dict) -> list[dict]:
    """Up to four each of true positives, false positives (most confident first) and false negatives."""
    from limbscan.io import read_image

    order = np.argsort(-s.scores)
    predicted, label = s.scores >= threshold, s.labels == 1
    kinds = {
        "TP": [i for i in order if predicted[i] and label[i]][:GALLERY_PER_KIND],
        "FP": [i for i in order if predicted[i] and not label[i]][:GALLERY_PER_KIND],
        # the misses worth seeing are the least suspected ones
        "FN": [i for i in order[::-1] if label[i] and not predicted[i]][:GALLERY_PER_KIND],
    }
    items = []
    for kind, indices in kinds.items():
        for i in indices:
            image = images[i]
            pixels, _ = read_image(ds.image_path(image))
            top = s.top_box(int(image["id"]))
            items.append({
                "image": pixels,
                "pred_boxes": [top] if top else [],
                "true_boxes": truths.get(int(image["id"]), []),
                "title": f"{kind} {s.scores[i]:.2f}",
                "kind": kind,
            })
    return items


SCORES_FILE = "scores.csv"


def _models(run: Path, scenarios: list[str]) -> dict[str, str]:
    """Which backbone each scenario's network uses, from its own checkpoint's config."""
    from limbscan.models.loading import load_checkpoint

    return {name: info(name).backbones(load_checkpoint(RunDir(run).best(name))["config"]) for name in scenarios}


@dataclass
class Evaluation:
    """What a report is made of: the metrics.json content, the ROC inputs, the gallery."""

    metrics: dict[str, Any]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]
    gallery: list[dict] | None
    image_ids: list[int] | None = None

    def write(self, out: str | Path) -> dict[str, Path]:
        from limbscan.eval.report import write_report, write_scores

        written = write_report(Path(out), self.metrics, self.curves, self.gallery)
        if self.image_ids is not None:  # what `limbscan compare` reads to set runs side by side
            written[SCORES_FILE] = write_scores(Path(out) / SCORES_FILE, self.image_ids, self.curves)
        return written


def evaluate(
    run: str | Path, dataset: str | Path, split: str = "test", out: str | Path | None = None, **options: Any
) -> dict[str, Any]:
    """Score ``run`` on ``split`` of ``dataset``; write metrics.json and the report into ``out``.
    ``options`` are :func:`measure`'s (``target_sensitivity``, ``n_boot``, ``seed``, ``gallery``,
    ``progress``, ``suspected_sensitivity``)."""
    result = measure(run, dataset, split, **options)
    if out is not None:
        result.write(out)
    return result.metrics


def measure(
    run: str | Path,
    dataset: str | Path,
    split: str = "test",
    target_sensitivity: float | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    gallery: bool = True,
    progress: bool = True,
    suspected_sensitivity: float | None = None,
) -> Evaluation:
    """The measurements behind :func:`evaluate`, without writing anything.

    A bundle is measured at its stored operating points; a run at points chosen on its
    validation scores here, the way export chooses them (``suspected_sensitivity`` default
    :data:`~limbscan.operating_points.SUSPECTED_SENSITIVITY`)."""
    run, ds = Path(run), Dataset.load(dataset)
    images = ds.split_images(split)
    if not images:
        raise LimbscanError(f"{ds.root}: the {split} split is empty (split the dataset, or use --split all)")
    bundle = _bundle_points(run, target_sensitivity, suspected_sensitivity)
    if bundle is not None:
        target_sensitivity = bundle["target_sensitivity"]
        suspected_sensitivity = bundle["suspected_sensitivity"]
    elif suspected_sensitivity is None:
        suspected_sensitivity = SUSPECTED_SENSITIVITY
    val = _validation_scores(run, ds)
    for entry in val.get("training_data") or []:
        if entry.get("role") == "auxiliary" and entry.get("path") == str(ds.root.resolve()):
            raise LimbscanError(
                f"{ds.root}: auxiliary training data of this run (every image of it was trained on); "
                "evaluate on a dataset it did not train on"
            )
    same_dataset = val.get("dataset") == str(ds.root.resolve())
    if same_dataset and split == "val":
        raise LimbscanError(
            f"{ds.root}: the operating threshold is chosen on this val split; report test (or another dataset)"
        )
    scored = score_run(run, ds, images, progress=progress)
    gate = _gate_report(run, ds, images, progress)
    labels = np.asarray([int(im["label"]) for im in images])
    groups = _groups(images)
    truths = _truths(ds, images)
    seen_parts = set(val.get("train_body_parts") or [])
    metrics: dict[str, Any] = {
        "split": split,
        "dataset": ds.root.name,
        "n": len(images),
        "n_abnormal": int(labels.sum()),
        "synthetic": ds.synthetic,
        "threshold_method": bundle["method"] if bundle else ("sensitivity" if target_sensitivity is not None
                                                             else "youden"),  # on validation
        "target_sensitivity": target_sensitivity,
        "suspected_sensitivity": suspected_sensitivity,  # None: a bundle exported without a suspected point
        "auc_undefined_reason": undefined_reason(labels),
        "unseen_body_parts": sorted({im.get("body_part") or "unknown" for im in images} - seen_parts)
        if seen_parts else [],
        "training_data": val.get("training_data"),  # the datasets trained on, where the run recorded them
        "scenarios": {},
        "comparisons": [],
        # Every image is scored above, in scope or not, so figures stay comparable; this says how many
        # the bundle's input gate would have kept from predict (None: a run folder, or no gate).
        "gate": gate,
    }
    metrics["backbones_used"] = _models(run, list(scored))
    for name, s in scored.items():
        val_labels, val_scores = np.asarray(val["labels"]), np.asarray(val["scores"][name])
        points = bundle["points"][name] if bundle else choose_operating_points(
            val_labels, val_scores, target_sensitivity=target_sensitivity, suspected_sensitivity=suspected_sensitivity)
        threshold = points[LIKELY]["threshold"]
        m = binary_metrics(s.labels, s.scores, threshold)
        cis = bootstrap_ci(s.labels, s.scores, threshold, groups=groups, n_boot=n_boot, seed=seed)
        entry = {**m.as_dict(), **{f"{k}_ci95": (list(v) if v else None) for k, v in cis.items()}}
        entry["confusion"] = {"tp": m.tp, "fn": m.fn, "fp": m.fp, "tn": m.tn}  # the DESIGN.md contract
        entry["operating_points"] = _at_points(points, s, val_labels, val_scores, entry, groups, n_boot, seed)
        entry["by_body_part"] = _by_group(images, s, lambda im: im.get("body_part") or "unknown")
        entry["study_level"] = _study_level(images, s)
        entry["by_tag"] = {
            tag: _by_group(images, s, lambda im, tag=tag: (im.get("attributes") or {}).get(tag, "missing"))
            for tag in _tags(images)
        }
        if s.boxes and truths:  # the scenarios that localise
            predictions = {i: {"boxes": b["boxes"], "scores": b["scores"]} for i, b in s.boxes.items()}
            entry["localisation"] = localisation_summary(predictions, truths, mode="iomin")
        if name == "whole-image" and truths and is_bundle(run):  # its Grad-CAM peak as a box
            entry["localisation_gradcam"] = _gradcam_localisation(run, ds, images, s, truths, progress)
        metrics["scenarios"][name] = entry
    for a, b in itertools.combinations(scored, 2):
        d = delong_test(labels, scored[a].scores, scored[b].scores)
        boot = bootstrap_auc_diff(labels, scored[a].scores, scored[b].scores, groups=groups, n_boot=n_boot, seed=seed)
        metrics["comparisons"].append({"a": a, "b": b, "auc_diff": d["diff"], "delong_p": d["p"],
                                       "bootstrap_p": boot["p"]})
    best = default_for(run, val, list(scored))  # the gallery shows the one predict uses by default
    items = _gallery(ds, images, scored[best], metrics["scenarios"][best]["threshold"], truths) if gallery else None
    curves = {name: (s.labels, s.scores) for name, s in scored.items()}
    return Evaluation(metrics, curves, items, [int(im["id"]) for im in images])
