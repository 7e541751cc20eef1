"""Score a dataset's images with a trained run or bundle: every scenario through its registered
object (:mod:`limbscan.scenarios`), the images read from the dataset's cache, the detector run
once per image for every scenario that needs it: the numbers ``predict`` gives the same files.

Training writes :func:`validation_scores` (``RUN/val_scores.json``, where thresholds are chosen)
and ``evaluate`` scores the reported split with the same :func:`score_run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from limbscan.data.dataset import Dataset
from limbscan.errors import LimbscanError
from limbscan.rundir import BEST, RunDir
from limbscan.scenarios import info, scenario_class
from limbscan.scenarios.base import ImageInput, ModelStore, load_scenarios, score_images


@dataclass
class Scored:
    """One scenario's scores on a list of images, in their order."""

    image_ids: list[int]
    labels: np.ndarray  # 0 / 1
    scores: np.ndarray  # probability of abnormal
    # image id -> {"boxes": [[x0, y0, x1, y1], ...], "scores": [...]} in ORIGINAL pixels, best first
    boxes: dict[int, dict] = field(default_factory=dict)

    def top_box(self, image_id: int) -> list[float] | None:
        found = self.boxes.get(image_id)
        return found["boxes"][0] if found and found["boxes"] else None


def trained_scenarios(run: Path) -> list[str]:
    return RunDir(run).trained()


def score_run(
    run: Path, ds: Dataset, images: list[dict], scenarios: list[str] | None = None, progress: bool = False
) -> dict[str, Scored]:
    """Every requested (default: every trained) scenario's scores on ``images``."""
    from rich.progress import track

    folder = RunDir(run)
    names = scenarios or folder.trained()
    if not names:
        raise LimbscanError(f"{run}: no trained scenario here (expected <scenario>/{BEST})")
    missing = [n for n in names if not folder.best(n).is_file()]
    missing += [f"{need} (the {name}'s first stage)" for name in names for need in info(name).needs
                if need not in names and not folder.best(need).is_file()]
    if missing:
        raise LimbscanError(f"{run}: not trained here: {', '.join(missing)}")
    loaded = load_scenarios(ModelStore(run), names)
    sides = {s.cache_side for s in loaded.values()}
    if len(sides) > 1:
        raise LimbscanError(f"{run}: its scenarios were trained at different cache sizes ({sorted(sides)})")
    side = sides.pop()
    inputs = (ImageInput.from_dataset(ds, im, side) for im in images)
    wrap = (lambda it: track(it, description="scoring", total=len(images), transient=True)) if progress else None
    found = score_images(loaded, inputs, progress=wrap)
    ids = [int(im["id"]) for im in images]
    labels = np.asarray([int(im["label"]) for im in images], dtype=int)
    out = {}
    for name in names:
        findings = found[name]
        boxes = {i: {"boxes": f.boxes, "scores": f.box_scores} for i, f in zip(ids, findings, strict=True)} \
            if any(f.detector_boxes for f in findings) else {}
        out[name] = Scored(ids, labels, np.asarray([f.score for f in findings], dtype=float), boxes)
    return out


def validation_scores(
    run: Path,
    ds: Dataset,
    val_images: list[dict],
    train_images: list[dict] | None = None,
    training_data: list[dict] | None = None,
) -> dict:
    """Every trained scenario's scores on the validation split, from its best checkpoint: where
    the operating thresholds are chosen, so evaluation never picks one on the split it reports.
    A scenario fitted on these images (fused) gives its out-of-fold scores instead
    (:meth:`~limbscan.scenarios.base.Scenario.held_out_scores`), never its in-sample ones.

    ``train_images``: every image trained on (auxiliary ones included), for the body parts seen;
    ``training_data``: the datasets trained on (each training source's provenance).
    """
    scored = score_run(run, ds, val_images)
    ids = [int(im["id"]) for im in val_images]
    store = ModelStore(run)
    scores = {}
    for name, s in scored.items():
        held_out = scenario_class(name).held_out_scores(store, ids)
        scores[name] = [round(float(v), 6) for v in (s.scores if held_out is None else held_out)]
    return {
        "dataset": str(ds.root.resolve()),
        "image_ids": ids,
        "labels": [int(im["label"]) for im in val_images],
        "scores": scores,
        "train_body_parts": (
            sorted({im.get("body_part") or "unknown" for im in train_images}) if train_images is not None else None
        ),
        "training_data": training_data,
    }


__all__ = ["Scored", "score_run", "trained_scenarios", "validation_scores"]
