"""Score images with a trained run: one function per scenario, the detector run once for both
scenarios that need it.

A run folder holds ``<scenario>/best.pt`` for what was trained. The detector's outputs (its
image score, its abnormal boxes, its top-k boxes) feed the ``detector`` scenario, the cascade's
crops and the localisation metrics, so it runs once per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import track
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from limbscan.config import ClassifierConfig
from limbscan.data.cache import load_cached
from limbscan.data.dataset import Dataset
from limbscan.data.torchdata import CropDataset, WholeImageDataset
from limbscan.errors import LimbscanError
from limbscan.models import build_classifier, cascade_score
from limbscan.train.checkpoint import BEST, load_checkpoint
from limbscan.train.scenarios import SCENARIOS, describe_detections, load_detector


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
    return [name for name in SCENARIOS if (Path(run) / name / BEST).is_file()]


def _cache_side(ckpt: dict) -> int:
    return int(ckpt["config"]["data"]["cache"]["longest_side"])


def load_classifier(path: Path) -> tuple[torch.nn.Module, dict]:
    """A classifier rebuilt from its checkpoint, in eval mode, and the checkpoint's ``extra`` + config."""
    ckpt = load_checkpoint(path)
    extra = dict(ckpt.get("extra") or {})
    if ckpt.get("stage") not in ("whole-image", "cascade") or "pixel_mean" not in extra:
        raise LimbscanError(f"{path}: not a classifier checkpoint")
    model = build_classifier(ClassifierConfig(**ckpt["config"]["classifier"]), extra["pixel_mean"], extra["pixel_std"])
    model.load_state_dict(ckpt["model"])
    extra["cache_side"] = _cache_side(ckpt)
    extra["config"] = ckpt["config"]
    return model.eval(), extra


def _labels(images: list[dict]) -> np.ndarray:
    return np.asarray([int(im["label"]) for im in images], dtype=int)


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _classify(model: torch.nn.Module, dataset: TorchDataset, batch_size: int, what: str, progress: bool) -> list[float]:
    # The training code's own datasets, without augmentation: inference sees what validation saw.
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    scores: list[float] = []
    for x, _ in track(loader, description=what, disable=not progress, transient=True):
        scores.extend(torch.sigmoid(model(x).float()).tolist())
    return scores


@torch.inference_mode()
def score_whole_image(run: Path, ds: Dataset, images: list[dict], batch_size: int = 16, progress: bool = False) -> Scored:
    model, extra = load_classifier(Path(run) / "whole-image" / BEST)
    dataset = WholeImageDataset(ds, images, extra["cache_side"], int(extra["input_size"]))
    scores = _classify(model, dataset, batch_size, "whole-image", progress)
    return Scored([int(im["id"]) for im in images], _labels(images), np.asarray(scores))


@torch.inference_mode()
def run_detector(
    run: Path, ds: Dataset, images: list[dict], top_k: int = 1, batch_size: int = 1, progress: bool = False
) -> dict[int, dict]:
    """Per image id: ``score`` (best abnormal box), ``boxes`` / ``box_scores`` (abnormal, best first)
    and ``top`` (the cascade's top-k boxes, with the fallbacks of :func:`top_boxes`), original pixels.

    One image per call by default: torchvision pads a batch to its largest image, which moves the
    smaller image's scores, and an image's score must not depend on its neighbours (inference
    batches only same-size images for the same reason)."""
    path = Path(run) / "detector" / BEST
    side = _cache_side(load_checkpoint(path))
    model = load_detector(path).eval()
    found: dict[int, dict] = {}
    for batch in track(_batches(images, batch_size), description="detector", disable=not progress, transient=True):
        pixels = [torch.from_numpy(load_cached(ds, im, side))[None] for im in batch]
        for image, pix, out in zip(batch, pixels, model(pixels), strict=True):
            found[int(image["id"])] = describe_detections(image, pix, out, top_k)
    return found


def score_detector(detections: dict[int, dict], images: list[dict]) -> Scored:
    ids = [int(im["id"]) for im in images]
    boxes = {i: {"boxes": detections[i]["boxes"], "scores": detections[i]["box_scores"]} for i in ids}
    return Scored(ids, _labels(images), np.asarray([detections[i]["score"] for i in ids]), boxes)


@torch.inference_mode()
def score_cascade(
    run: Path, ds: Dataset, images: list[dict], detections: dict[int, dict], batch_size: int = 32,
    progress: bool = False,
) -> Scored:
    """Crop each image's top-k detector boxes (the whole image where there is none), classify, take
    the max; with the checkpoint's ``cascade_score`` rule ``geomean``, fused with the detector's score."""
    model, extra = load_classifier(Path(run) / "cascade" / BEST)
    items: list[tuple[int, list[float]]] = []  # (image index, box in original pixels)
    for i, image in enumerate(images):
        boxes = detections[int(image["id"])]["top"] or [[0.0, 0.0, float(image["width"]), float(image["height"])]]
        items.extend((i, box) for box in boxes)
    dataset = CropDataset(ds, [(images[i], box, int(images[i]["label"])) for i, box in items],
                          extra["cache_side"], int(extra["input_size"]), float(extra["crop_margin"]))
    crop_scores = _classify(model, dataset, batch_size, "cascade", progress)
    best = np.zeros(len(images))
    per_image: dict[int, dict] = {int(im["id"]): {"boxes": [], "scores": []} for im in images}
    for (i, box), score in zip(items, crop_scores, strict=True):
        best[i] = max(best[i], score)
        entry = per_image[int(images[i]["id"])]
        entry["boxes"].append(box)
        entry["scores"].append(score)
    for entry in per_image.values():  # best crop first
        order = np.argsort(entry["scores"])[::-1]
        entry["boxes"] = [entry["boxes"][j] for j in order]
        entry["scores"] = [entry["scores"][j] for j in order]
    rule = str(extra.get("cascade_score", "crop"))  # checkpoints before the option: the paper's
    best = np.asarray([cascade_score(c, detections[int(im["id"])]["score"], rule) for c, im in zip(best, images, strict=True)])
    return Scored([int(im["id"]) for im in images], _labels(images), best, per_image)


def score_run(
    run: Path, ds: Dataset, images: list[dict], scenarios: list[str] | None = None, progress: bool = False
) -> dict[str, Scored]:
    """Every requested (default: every trained) scenario's scores on ``images``."""
    run = Path(run)
    names = scenarios or trained_scenarios(run)
    if not names:
        raise LimbscanError(f"{run}: no trained scenario here (expected <scenario>/{BEST})")
    missing = [n for n in names if not (run / n / BEST).is_file()]
    if "cascade" in names and not (run / "detector" / BEST).is_file():
        missing.append("detector (the cascade's first stage)")
    if missing:
        raise LimbscanError(f"{run}: not trained here: {', '.join(missing)}")
    out: dict[str, Scored] = {}
    if "whole-image" in names:
        out["whole-image"] = score_whole_image(run, ds, images, progress=progress)
    if "detector" in names or "cascade" in names:
        top_k = 1
        if "cascade" in names:
            top_k = int(load_checkpoint(run / "cascade" / BEST)["extra"]["top_k"])
        detections = run_detector(run, ds, images, top_k=top_k, progress=progress)
        if "detector" in names:
            out["detector"] = score_detector(detections, images)
        if "cascade" in names:
            out["cascade"] = score_cascade(run, ds, images, detections, progress=progress)
    return {name: out[name] for name in names}
