"""The ``cascade`` scenario's training stage: the crop classifier.

Crops are drawn as scoring draws them: the trained detector's top-k boxes on normal images, the
lesion boxes (jittered each epoch) on abnormal ones, auxiliary data alike. The proposals come
from the detector's best checkpoint through the one detector pass and are kept in
``RUN/cascade/proposals.json`` (reused on resume; its validation boxes are ``predict``'s).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from limbscan.data.dataset import Dataset
from limbscan.data.datasets import CropDataset, join_sources
from limbscan.errors import LimbscanError
from limbscan.rundir import RunDir
from limbscan.scenarios.base import Batch, ImageInput
from limbscan.scenarios.cascade import CascadeScenario
from limbscan.train.stages.base import (
    ClassifierStage,
    RunData,
    TrainSource,
    seed_for,
    train_loader,
    validation_metrics,
)

PROPOSALS_FILE = "proposals.json"
# Bump when the proposals' meaning changes: version 2 = one image per detector forward, the pass
# evaluate and predict run (version 1 batched two, which moved scores).
PROPOSALS_VERSION = 2
VALIDATION_CHUNK = 16  # validation images held in memory at once
# How a cascade training box is drawn each epoch: as it is, moved a little, or widened around it.
FIXED, JITTER, CONTEXT = "fixed", "jitter", "context"


def _xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def jitter_box(box: Sequence[float], width: float, height: float, amount: float, rng: np.random.Generator) -> list[float]:
    """Move each side of ``box`` by up to ``amount`` of the box's width / height, kept inside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    dx0, dy0, dx1, dy1 = rng.uniform(-amount, amount, size=4) * [bw, bh, bw, bh]
    nx0, ny0 = min(max(0.0, x0 + dx0), width - 1.0), min(max(0.0, y0 + dy0), height - 1.0)
    nx1, ny1 = max(min(width, x1 + dx1), nx0 + 1.0), max(min(height, y1 + dy1), ny0 + 1.0)
    return [nx0, ny0, nx1, ny1]


def context_box(
    box: Sequence[float], width: float, height: float, share: tuple[float, float], rng: np.random.Generator
) -> list[float]:
    """A box of ``share`` (width, height fractions) of the image that holds ``box`` whole, placed at
    random around it and kept inside the image; never smaller than ``box``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    bw = min(max(share[0] * width, x1 - x0), width)
    bh = min(max(share[1] * height, y1 - y0), height)
    nx0 = rng.uniform(max(0.0, x1 - bw), max(max(0.0, x1 - bw), min(x0, width - bw)))
    ny0 = rng.uniform(max(0.0, y1 - bh), max(max(0.0, y1 - bh), min(y0, height - bh)))
    return [nx0, ny0, nx0 + bw, ny0 + bh]


def detector_proposals(
    detector: nn.Module, run: RunData, images: list[dict], k: int, progress: bool = False, ds: Dataset | None = None
) -> dict[int, dict[str, Any]]:
    """Each image's top-k detector boxes (``top``, ORIGINAL pixels) and image score (``score``), by
    image id, from the pass every scorer runs (:meth:`Batch.detections`). ``images`` belong to
    ``ds`` (default: the run's main dataset).

    Under DDP each rank runs its shard and the ranks swap results."""
    from rich.progress import track

    from limbscan.data.samplers import shard
    from limbscan.utils.distributed import all_gather_objects, init_distributed

    info = init_distributed()
    mine = sorted(set(shard(range(len(images)), info.rank, info.world_size))) if info.distributed else list(
        range(len(images)))
    detector.eval()
    found: dict[int, dict[str, Any]] = {}
    chunks = [mine[i : i + 16] for i in range(0, len(mine), 16)]
    with torch.inference_mode():
        for chunk in track(chunks, description="Detector proposals", disable=not (progress and info.is_main),
                           transient=True):
            batch = Batch([ImageInput.from_dataset(ds or run.ds, images[i], run.cache_side) for i in chunk])
            for i, d in zip(chunk, batch.detections(detector, k), strict=True):
                found[int(images[i]["id"])] = {"top": d.top, "score": d.score}
    if info.distributed:
        for part in all_gather_objects(found, info):
            found.update(part)
    return found


class CascadeStage(ClassifierStage):
    """The crop classifier, trained on lesion boxes and the detector's proposals on normal images."""

    name = CascadeScenario.name

    def __init__(self, run: RunData, out: str | Path | RunDir, resume: bool = False, progress: bool = False):
        super().__init__(run, run.cfg.classifier.crop_size)
        cfg = run.cfg
        out = out if isinstance(out, RunDir) else RunDir(out)
        self.size, self.margin, self.k = cfg.classifier.crop_size, cfg.classifier.crop_margin, cfg.classifier.top_k
        self.rule = cfg.classifier.cascade_score  # its value checked with the config's
        detector_path = out.best("detector")
        if not detector_path.is_file():
            raise LimbscanError(
                f"{detector_path}: not found; the cascade needs a trained detector "
                "(train scenario detector first, or all)"
            )
        if cfg.classifier.cascade_init == "whole-image":
            self._init_from_whole_image(out.best("whole-image"))
        proposals = self._proposals(out, detector_path, resume, progress)
        self.train_proposals, self.val_proposals = proposals["train"], proposals["val"]
        self.val_detector_scores = [float(proposals["val_scores"][str(im["id"])]) for im in run.val_images]
        # Each source's proposals by image id: the main train split's, then each auxiliary dataset's.
        by_source = [self.train_proposals, *(aux["train"] for aux in proposals.get("auxiliary", []))]
        # Positives: lesion boxes; negatives: the detector's own boxes on normal images. An abnormal
        # image without a lesion box has only its image label: its proposals stand in, as positives.
        # One list per source (main first), as the joined crop datasets are laid out.
        self.train_base: list[list[tuple[dict, list[float], int, str]]] = []  # (image, box, label, how to draw)
        for source, found in zip(run.train_sources, by_source, strict=True):
            base: list[tuple[dict, list[float], int, str]] = []
            for image in source.images:
                label = int(image["label"])
                lesions = [_xyxy(a["bbox"]) for a in source.ds.annotations_for(image["id"])] if label else []
                if lesions:
                    base.extend((image, box, 1, JITTER) for box in lesions)
                    if cfg.classifier.context_crops:
                        base.extend((image, box, 1, CONTEXT) for box in lesions)
                else:
                    boxes = found.get(str(image["id"])) or [[0.0, 0.0, float(image["width"]), float(image["height"])]]
                    base.extend((image, box, label, FIXED) for box in boxes)
            self.train_base.append(base)
        # Box sizes as shares of their image, from the negatives: what a context crop's size is drawn from.
        self.context_sizes = [
            ((box[2] - box[0]) / image["width"], (box[3] - box[1]) / image["height"])
            for base in self.train_base for image, box, label, how in base if how == FIXED and label == 0
        ] or [(1.0, 1.0)]
        self.labels = [label for base in self.train_base for _, _, label, _ in base]
        self._set_pos_weight(self.labels)
        self.checkpoint_extra.update(crop_margin=self.margin, top_k=self.k, cascade_score=self.rule)

    @classmethod
    def for_run(cls, run: RunData, out: RunDir, resume: bool = False, progress: bool = False) -> CascadeStage:
        return cls(run, out, resume, progress)

    def _init_from_whole_image(self, path: Path) -> None:
        from limbscan.models.loading import load_checkpoint

        if not path.is_file():
            raise LimbscanError(
                f"{path}: not found; classifier.cascade_init=whole-image needs the whole-image stage trained first"
            )
        ckpt = load_checkpoint(path)
        if ckpt.get("stage") != "whole-image":
            raise LimbscanError(f"{path}: holds stage {ckpt.get('stage')!r}, not 'whole-image'")
        self.model.load_state_dict(ckpt["model"])

    def _proposals(self, out: RunDir, detector_path: Path, resume: bool, progress: bool) -> dict[str, Any]:
        from limbscan.models.loading import load_detector
        from limbscan.utils.distributed import barrier, init_distributed
        from limbscan.utils.files import sha256_file, write_json_atomic

        info = init_distributed()
        path = out.stage_file(self.name, PROPOSALS_FILE)
        digest = sha256_file(detector_path)
        ids: dict[str, Any] = {split: sorted(int(im["id"]) for im in images)
                               for split, images in (("train", self.run.train_images), ("val", self.run.val_images))}
        auxiliary = self.run.auxiliary
        if auxiliary:  # absent without auxiliary data: the file of a run without it is unchanged
            ids["auxiliary"] = [
                {"dataset": str(Path(a.ds.root).resolve()), "ids": sorted(int(im["id"]) for im in a.images)}
                for a in auxiliary
            ]
        if resume and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError:
                saved = {}
            if (saved.get("version") == PROPOSALS_VERSION and saved.get("detector_sha256") == digest
                    and saved.get("top_k") == self.k and saved.get("ids") == ids):
                return saved
        detector = load_detector(detector_path).to(info.device)

        def unboxed(source: TrainSource) -> list[dict]:  # the images whose crops are the detector's boxes
            return [im for im in source.images if int(im["label"]) == 0 or not source.ds.annotations_for(im["id"])]

        main = self.run.train_sources[0]
        train = detector_proposals(detector, self.run, unboxed(main), self.k, progress)
        val = detector_proposals(detector, self.run, self.run.val_images, self.k, progress)
        aux = [detector_proposals(detector, self.run, unboxed(a), self.k, progress, ds=a.ds) for a in auxiliary]
        del detector
        saved = {
            "version": PROPOSALS_VERSION,
            "detector_sha256": digest,
            "top_k": self.k,
            "ids": ids,
            "train": {str(i): found["top"] for i, found in sorted(train.items())},
            "val": {str(i): found["top"] for i, found in sorted(val.items())},
            "val_scores": {str(i): found["score"] for i, found in sorted(val.items())},
        }
        if auxiliary:
            saved["auxiliary"] = [
                {"dataset": str(Path(a.ds.root).resolve()),
                 "train": {str(i): found["top"] for i, found in sorted(props.items())}}
                for a, props in zip(auxiliary, aux, strict=True)
            ]
        if info.is_main:
            write_json_atomic(path, saved)
        barrier(info)
        return saved

    def train_loader(self, epoch: int, rank: int, world_size: int) -> DataLoader:
        rng = np.random.default_rng(seed_for(self.cfg.train.seed, epoch, 2))
        crops = []
        for source, base in zip(self.run.train_sources, self.train_base, strict=True):
            items = [(image, self._draw(image, box, how, rng), label) for image, box, label, how in base]
            crops.append(CropDataset(source.ds, items, self.run.cache_side, self.size, self.margin, self.augment))
        dataset = join_sources(crops)
        t = self.cfg.train
        return train_loader(dataset, self.labels, self.cfg, epoch, rank, world_size, t.batch_size, t.balance)

    def _draw(self, image: dict, box: list[float], how: str, rng: np.random.Generator) -> list[float]:
        width, height = image["width"], image["height"]
        if how == JITTER:
            return jitter_box(box, width, height, self.cfg.classifier.crop_jitter, rng)
        if how == CONTEXT:
            share = self.context_sizes[int(rng.integers(len(self.context_sizes)))]
            return context_box(box, width, height, share, rng)
        return box

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        """The validation split scored by :meth:`CascadeScenario.score_proposals` on the saved proposals:
        the boxes and detector scores the detector pass gives these images, so the same numbers
        ``evaluate`` computes with this checkpoint."""
        scenario = CascadeScenario(None, model, self.size, self.margin, self.k, self.rule, self.run.cache_side)
        images = self.run.val_images
        findings = []
        with torch.inference_mode():
            for start in range(0, len(images), VALIDATION_CHUNK):
                part = images[start : start + VALIDATION_CHUNK]
                findings += scenario.score_proposals(
                    [ImageInput.from_dataset(self.run.ds, im, self.run.cache_side) for im in part],
                    [self.val_proposals.get(str(im["id"])) or [] for im in part],
                    self.val_detector_scores[start : start + VALIDATION_CHUNK],
                )
        return validation_metrics(self.run, findings)
