"""The three scenarios as stages of the one engine, and :func:`train`, which runs them.

| stage         | model                          | trains on                                     | val score per image            |
|---------------|--------------------------------|-----------------------------------------------|--------------------------------|
| whole-image   | Classifier                     | whole images, letterboxed                     | sigmoid(logit)                 |
| detector      | Mask R-CNN                     | normal images boxed whole, lesion boxes       | best ABNORMAL box score        |
| cascade       | Classifier on crops            | lesion boxes (jittered) + detector proposals  | max over top-k crops (x detector, ``geomean``) |

The cascade's classifier learns from crops drawn the way inference draws them: on normal
images the trained detector's own top-k boxes (what it will be shown at inference), on abnormal
images the lesion boxes, moved a little each epoch because a detector's box never sits exactly
on the lesion. The proposals are computed once, with the detector's best checkpoint in eval
mode, and kept in ``out/cascade/proposals.json`` so a resumed run reuses them.

Every model normalises with the training split's pixel mean and std; class imbalance is handled
by ``train.balance``: ``sampler`` (class-balanced draws, with replacement), ``loss`` (BCE
``pos_weight`` = negatives / positives; the detector has no such loss and samples plainly),
or ``none``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import track
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler
from torch.utils.data import Dataset as TorchDataset

from limbscan.config import Config, DetectorConfig
from limbscan.data.augment import PaperAugment
from limbscan.data.cache import build_cache, load_cached
from limbscan.data.dataset import Dataset, sha256_file, write_json_atomic
from limbscan.data.torchdata import (
    CropDataset,
    DetectionDataset,
    ShardedSampler,
    WholeImageDataset,
    class_balanced_sampler,
    detection_collate,
    pixel_stats,
    shard,
)
from limbscan.errors import LimbscanError
from limbscan.models import (
    build_classifier,
    build_detector,
    cascade_score,
    detector_param_groups,
    image_scores,
    top_boxes,
)
from limbscan.models.classifier import CASCADE_SCORES
from limbscan.models.labels import ABNORMAL
from limbscan.train.checkpoint import BEST, load_checkpoint, seed_everything
from limbscan.train.engine import DistInfo, FitResult, fit, init_distributed, shutdown_distributed
from limbscan.train.report import write_training_report

SCENARIOS = ("whole-image", "detector", "cascade")
BALANCE = ("sampler", "loss", "none")
PROPOSALS_FILE = "proposals.json"


def scenario_names(scenario: str) -> list[str]:
    """``all`` -> the three, in the order they must train (cascade after detector)."""
    if scenario == "all":
        return list(SCENARIOS)
    names = [s.strip() for s in scenario.split(",") if s.strip()]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown or not names:
        raise LimbscanError(f"config: train.scenario {scenario!r}: use all or one of {', '.join(SCENARIOS)}")
    return [s for s in SCENARIOS if s in names]


@dataclass
class RunData:
    """What every stage of a run shares: the dataset, its train / val images and pixel statistics."""

    ds: Dataset
    cfg: Config
    train_images: list[dict]
    val_images: list[dict]
    pixel_mean: float
    pixel_std: float

    @property
    def cache_side(self) -> int:
        return int(self.cfg.data.cache.longest_side)


def prepare(ds: Dataset, cfg: Config) -> RunData:
    """Check the dataset is split and the config sane; compute the training split's pixel statistics."""
    if cfg.train.balance not in BALANCE:
        raise LimbscanError(f"config: train.balance {cfg.train.balance!r} is not one of {', '.join(BALANCE)}")
    train_images, val_images = ds.split_images("train"), ds.split_images("val")
    for split, images in (("train", train_images), ("val", val_images)):
        if not images:
            raise LimbscanError(f"{ds.root}: no {split} images; split the dataset first (`limbscan data split`)")
    if len({int(im["label"]) for im in train_images}) < 2:
        raise LimbscanError(f"{ds.root}: the train split has only one class; nothing to learn")
    mean, std = pixel_stats(ds, train_images, cfg.data.cache.longest_side)
    return RunData(ds, cfg, train_images, val_images, mean, max(std, 1e-3))


def cached_dataset(ds: Dataset, cfg: Config, info: DistInfo, progress: bool = True) -> Dataset:
    """Decode every image into the cache before training (rank 0; the others then find it
    built), and leave out the images that cannot be decoded, each named once on stderr."""
    if info.distributed and not info.is_main:
        dist.barrier()
    side, workers = cfg.data.cache.longest_side, cfg.data.cache.workers
    report = build_cache(ds, longest_side=side, workers=workers, progress=progress and info.is_main)
    if info.distributed and info.is_main:
        dist.barrier()
    if not report.skipped:
        return ds
    bad = {s.path for s in report.skipped}
    if info.is_main:
        for item in report.skipped:
            print(f"skipped: {item}", file=sys.stderr)
    ds.coco["images"] = [im for im in ds.images if str(ds.image_path(im)) not in bad]
    ds.reindex()
    return ds


def auc_or_none(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """ROC AUC, or None when the labels hold one class (AUC undefined)."""
    from sklearn.metrics import roc_auc_score

    if len(set(int(y) for y in labels)) < 2:
        return None
    return float(roc_auc_score(np.asarray(labels), np.asarray(scores, dtype=np.float64)))


def _seed(*parts: int) -> int:
    # SeedSequence mixes the parts, so (seed 0, epoch 1) and (seed 1, epoch 0) never collide.
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def train_loader(
    dataset: TorchDataset,
    labels: Sequence[int],
    cfg: Config,
    epoch: int,
    rank: int,
    world_size: int,
    batch_size: int,
    balance: str,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """One epoch's loader: a function of (seed, epoch, rank) only, so a resumed epoch draws the same batches."""
    sampler: Sampler[int]
    if balance == "sampler":
        # Same generator seed on every rank: all draw one sequence and each keeps its shard.
        base = class_balanced_sampler(labels, None, torch.Generator().manual_seed(_seed(cfg.train.seed, epoch)))
        sampler = ShardedSampler(base, rank, world_size) if world_size > 1 else base
    else:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=cfg.train.seed)
        sampler.set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=cfg.train.workers,
        collate_fn=collate_fn,
        # A last batch of one makes batch norm's statistics noise (or an error).
        drop_last=len(sampler) > batch_size,
        # Workers' augmentation seeds come from this generator, not from the global one.
        generator=torch.Generator().manual_seed(_seed(cfg.train.seed, epoch, rank, 1)),
        persistent_workers=False,
    )


def _eval_loader(dataset: TorchDataset, cfg: Config, batch_size: int, collate_fn: Callable | None = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=cfg.train.workers,
                      collate_fn=collate_fn)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# -- classifier stages ---------------------------------------------------------------------
class _ClassifierStage:
    """Shared by whole-image and cascade: a Classifier trained with BCE on (image, label) batches."""

    name = "classifier"
    find_unused_parameters = False

    def __init__(self, run: RunData, input_size: int):
        self.run = run
        cfg = run.cfg
        self.cfg = cfg
        self.epochs = int(cfg.train.epochs)
        self.model = build_classifier(cfg.classifier, run.pixel_mean, run.pixel_std)
        self.augment = PaperAugment(cfg.data.augment)
        self.checkpoint_extra = {
            "scenario": self.name,
            "pixel_mean": run.pixel_mean,
            "pixel_std": run.pixel_std,
            "input_size": input_size,
        }
        self._pos_weight: float | None = None

    def _set_pos_weight(self, labels: Sequence[int]) -> None:
        if self.cfg.train.balance == "loss":
            positives = sum(int(y) for y in labels)
            self._pos_weight = (len(labels) - positives) / max(positives, 1)

    def param_groups(self, model: nn.Module) -> list[dict]:
        t = self.cfg.train
        return model.param_groups(t.lr_backbone, t.lr_heads, t.weight_decay)

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        x, y = batch
        logits = model(x).float()
        pos_weight = None if self._pos_weight is None else logits.new_tensor(self._pos_weight)
        loss = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), pos_weight=pos_weight)
        return loss, {}

    def _scores(self, model: nn.Module, dataset: TorchDataset) -> tuple[np.ndarray, np.ndarray]:
        device = _device(model)
        scores, labels = [], []
        for x, y in _eval_loader(dataset, self.cfg, self.cfg.train.batch_size):
            scores.append(torch.sigmoid(model(x.to(device)).float()).cpu())
            labels.append(y)
        return torch.cat(scores).numpy(), torch.cat(labels).numpy().astype(int)


class WholeImageStage(_ClassifierStage):
    """The MURA-style baseline: the whole image, letterboxed, one logit."""

    name = "whole-image"

    def __init__(self, run: RunData):
        super().__init__(run, run.cfg.classifier.image_size)
        size = run.cfg.classifier.image_size
        self.train_set = WholeImageDataset(run.ds, run.train_images, run.cache_side, size, self.augment)
        self.val_set = WholeImageDataset(run.ds, run.val_images, run.cache_side, size)
        self._set_pos_weight(self.train_set.labels)

    def train_loader(self, epoch: int, rank: int, world_size: int) -> DataLoader:
        t = self.cfg.train
        return train_loader(self.train_set, self.train_set.labels, self.cfg, epoch, rank, world_size,
                            t.batch_size, t.balance)

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        scores, labels = self._scores(model, self.val_set)
        return {"val_auc": auc_or_none(labels, scores), "val_images": float(len(labels))}


# -- detector --------------------------------------------------------------------------------
class DetectorStage:
    """Mask R-CNN, classes normal / abnormal; image score = its best ABNORMAL box."""

    name = "detector"
    find_unused_parameters = False

    def __init__(self, run: RunData):
        self.run = run
        self.cfg = cfg = run.cfg
        self.epochs = int(cfg.train.detector_epochs)
        self.model = build_detector(cfg.detector, run.pixel_mean, run.pixel_std)
        self.train_set = DetectionDataset(run.ds, run.train_images, run.cache_side, PaperAugment(cfg.data.augment))
        self.val_set = _PixelsDataset(run.ds, run.val_images, run.cache_side)
        self.checkpoint_extra = {"scenario": self.name, "pixel_mean": run.pixel_mean, "pixel_std": run.pixel_std}

    def param_groups(self, model: nn.Module) -> list[dict]:
        t = self.cfg.train
        return detector_param_groups(model, t.lr_backbone, t.lr_heads, t.weight_decay)

    def train_loader(self, epoch: int, rank: int, world_size: int) -> DataLoader:
        t = self.cfg.train
        # A BCE pos_weight has no Mask R-CNN counterpart: "loss" samples plainly (the RoI
        # sampler already balances foreground and background within each image).
        balance = "sampler" if t.balance == "sampler" else "none"
        return train_loader(self.train_set, self.train_set.labels, self.cfg, epoch, rank, world_size,
                            t.detector_batch_size, balance, detection_collate)

    def train_step(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, float]]:
        images, targets = batch
        losses = model(images, targets)
        loss = sum(losses.values())
        return loss, {k.removeprefix("loss_"): float(v.detach()) for k, v in losses.items()}

    def validate(self, model: nn.Module) -> dict[str, float | None]:
        device = _device(model)
        scores, labels = [], []
        loader = _eval_loader(self.val_set, self.cfg, self.cfg.train.detector_batch_size, _list_collate)
        for images, indices in loader:
            outputs = model([im.to(device) for im in images])
            scores.extend(image_scores(outputs).float().cpu().tolist())
            labels.extend(int(self.val_set.images[i]["label"]) for i in indices)
        return {"val_auc": auc_or_none(labels, scores), "val_images": float(len(labels))}


class _PixelsDataset(TorchDataset):
    """(Tensor[1, h, w] at cache scale, index): what the detector sees at inference."""

    def __init__(self, ds: Dataset, images: list[dict], cache_side: int):
        self.ds, self.images, self.cache_side = ds, list(images), cache_side

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return torch.from_numpy(load_cached(self.ds, self.images[index], self.cache_side))[None], index


def _list_collate(batch: Sequence[tuple[Tensor, int]]) -> tuple[list[Tensor], list[int]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def load_detector(path: Path) -> nn.Module:
    """A detector rebuilt from its checkpoint: the checkpoint's own detector config and pixel statistics."""
    ckpt = load_checkpoint(path)
    extra = ckpt.get("extra") or {}
    if ckpt.get("stage") != "detector" or "pixel_mean" not in extra:
        raise LimbscanError(f"{path}: not a detector checkpoint")
    model = build_detector(DetectorConfig(**ckpt["config"]["detector"]), extra["pixel_mean"], extra["pixel_std"])
    model.load_state_dict(ckpt["model"])
    return model


def describe_detections(image: dict, pixels: Tensor, output: dict, k: int) -> dict[str, Any]:
    """One image's detector output in ORIGINAL pixels: ``score`` (best abnormal box, 0 if none),
    ``boxes`` / ``box_scores`` (abnormal, best first) and ``top`` (the cascade's top-k boxes, with
    :func:`top_boxes`' fallbacks, rounded to 0.01 px so they survive a JSON round trip unchanged)."""
    out = {key: value.detach().float().cpu() for key, value in output.items() if key != "masks"}
    out["labels"] = output["labels"].cpu()
    scale = torch.tensor([image["width"] / pixels.shape[-1], image["height"] / pixels.shape[-2]] * 2)
    abnormal = out["labels"] == ABNORMAL
    order = out["scores"][abnormal].argsort(descending=True)
    return {
        "score": float(image_scores([out])[0]),
        "boxes": (out["boxes"][abnormal][order] * scale).tolist(),
        "box_scores": out["scores"][abnormal][order].tolist(),
        "top": [[round(float(v), 2) for v in box] for box in top_boxes(out, k) * scale],
    }


@torch.no_grad()
def detector_proposals(
    model: nn.Module,
    ds: Dataset,
    images: list[dict],
    cache_side: int,
    k: int,
    info: DistInfo,
    batch_size: int = 2,
    progress: bool = False,
) -> dict[int, dict[str, Any]]:
    """Each image's top-k detector boxes (``top``, :func:`top_boxes`, XYXY in ORIGINAL pixels) and
    image score (``score``), by image id.

    Under DDP each rank runs its shard and the ranks swap results. An image the detector finds
    nothing on gets no box here; the cascade then crops it whole.
    """
    model.eval()
    dataset = _PixelsDataset(ds, images, cache_side)
    mine = shard(range(len(images)), info.rank, info.world_size) if info.distributed else list(range(len(images)))
    mine = sorted(set(mine))
    found: dict[int, dict[str, Any]] = {}
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    for batch in track(batches, description="Detector proposals", disable=not (progress and info.is_main),
                       transient=True):
        pixels = [dataset[i][0].to(info.device) for i in batch]
        outputs = model(pixels)
        for i, pix, out in zip(batch, pixels, outputs):
            described = describe_detections(images[i], pix, out, k)
            found[int(images[i]["id"])] = {"top": described["top"], "score": described["score"]}
    if info.distributed:
        parts: list[Any] = [None] * info.world_size
        dist.all_gather_object(parts, found)
        for part in parts:
            found.update(part)
    return found


def _whole_box(image: dict) -> list[float]:
    return [0.0, 0.0, float(image["width"]), float(image["height"])]


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


# How a cascade training box is drawn each epoch: as it is, moved a little, or widened around it.
FIXED, JITTER, CONTEXT = "fixed", "jitter", "context"


class CascadeStage(_ClassifierStage):
    """The paper's scenario 2: the detector proposes, a classifier judges each crop; image score = the
    best crop's probability, or with ``classifier.cascade_score`` = geomean, fused with the detector's."""

    name = "cascade"

    def __init__(self, run: RunData, out: Path, resume: bool = False, progress: bool = False):
        super().__init__(run, run.cfg.classifier.crop_size)
        cfg = run.cfg
        self.size, self.margin, self.k = cfg.classifier.crop_size, cfg.classifier.crop_margin, cfg.classifier.top_k
        detector_path = Path(out) / "detector" / BEST
        if not detector_path.is_file():
            raise LimbscanError(
                f"{detector_path}: not found; the cascade needs a trained detector "
                "(train scenario detector first, or all)"
            )
        if cfg.classifier.cascade_init == "whole-image":
            self._init_from_whole_image(Path(out) / "whole-image" / BEST)
        elif cfg.classifier.cascade_init != "imagenet":
            raise LimbscanError(
                f"classifier.cascade_init: {cfg.classifier.cascade_init!r} is not imagenet or whole-image"
            )
        proposals = self._proposals(Path(out), detector_path, resume, progress)
        self.train_proposals, self.val_proposals = proposals["train"], proposals["val"]
        self.rule = cfg.classifier.cascade_score
        if self.rule not in CASCADE_SCORES:  # here, not after training
            raise LimbscanError(f"config: classifier.cascade_score {self.rule!r} is not one of {', '.join(CASCADE_SCORES)}")
        self.val_detector_scores = [float(proposals["val_scores"][str(im["id"])]) for im in run.val_images]
        # Positives: lesion boxes; negatives: the detector's own boxes on normal images. An abnormal
        # image without a lesion box has only its image label: its proposals stand in, as positives.
        self.train_base: list[tuple[dict, list[float], int, str]] = []  # (image, box, label, how to draw)
        for image in run.train_images:
            label = int(image["label"])
            lesions = [_xyxy(a["bbox"]) for a in run.ds.annotations_for(image["id"])] if label else []
            if lesions:
                self.train_base.extend((image, box, 1, JITTER) for box in lesions)
                if cfg.classifier.context_crops:
                    self.train_base.extend((image, box, 1, CONTEXT) for box in lesions)
            else:
                boxes = self.train_proposals.get(str(image["id"])) or [_whole_box(image)]
                self.train_base.extend((image, box, label, FIXED) for box in boxes)
        # Box sizes as shares of their image, from the negatives: what a context crop's size is drawn from.
        self.context_sizes = [
            ((box[2] - box[0]) / image["width"], (box[3] - box[1]) / image["height"])
            for image, box, label, how in self.train_base if how == FIXED and label == 0
        ] or [(1.0, 1.0)]
        self.labels = [label for _, _, label, _ in self.train_base]
        self._set_pos_weight(self.labels)
        val_items = []
        self.val_owner: list[int] = []  # val item -> index of its image
        for i, image in enumerate(run.val_images):
            for box in self.val_proposals.get(str(image["id"])) or [_whole_box(image)]:
                val_items.append((image, box, int(image["label"])))
                self.val_owner.append(i)
        self.val_set = CropDataset(run.ds, val_items, run.cache_side, self.size, self.margin)
        self.checkpoint_extra.update(crop_margin=self.margin, top_k=self.k, cascade_score=self.rule)

    def _init_from_whole_image(self, path: Path) -> None:
        if not path.is_file():
            raise LimbscanError(
                f"{path}: not found; classifier.cascade_init=whole-image needs the whole-image stage trained first"
            )
        ckpt = load_checkpoint(path)
        if ckpt.get("stage") != "whole-image":
            raise LimbscanError(f"{path}: holds stage {ckpt.get('stage')!r}, not 'whole-image'")
        self.model.load_state_dict(ckpt["model"])

    def _proposals(self, out: Path, detector_path: Path, resume: bool, progress: bool) -> dict[str, dict]:
        info = init_distributed()
        path = out / self.name / PROPOSALS_FILE
        digest = sha256_file(detector_path)
        ids = {split: sorted(int(im["id"]) for im in images)
               for split, images in (("train", self.run.train_images), ("val", self.run.val_images))}
        if resume and path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError:
                saved = {}
            if (saved.get("detector_sha256") == digest and saved.get("top_k") == self.k
                    and saved.get("ids") == ids and "val_scores" in saved):
                return saved
        detector = load_detector(detector_path).to(info.device)
        cache = self.run.cache_side
        batch = self.cfg.train.detector_batch_size
        normals = [im for im in self.run.train_images
                   if int(im["label"]) == 0 or not self.run.ds.annotations_for(im["id"])]
        train = detector_proposals(detector, self.run.ds, normals, cache, self.k, info, batch, progress)
        val = detector_proposals(detector, self.run.ds, self.run.val_images, cache, self.k, info, batch, progress)
        del detector
        saved = {
            "detector_sha256": digest,
            "top_k": self.k,
            "ids": ids,
            "train": {str(i): found["top"] for i, found in sorted(train.items())},
            "val": {str(i): found["top"] for i, found in sorted(val.items())},
            "val_scores": {str(i): found["score"] for i, found in sorted(val.items())},
        }
        if info.is_main:
            write_json_atomic(path, saved)
        if info.distributed:
            dist.barrier()
        return saved

    def train_loader(self, epoch: int, rank: int, world_size: int) -> DataLoader:
        rng = np.random.default_rng(_seed(self.cfg.train.seed, epoch, 2))
        items = [(image, self._draw(image, box, how, rng), label) for image, box, label, how in self.train_base]
        dataset = CropDataset(self.run.ds, items, self.run.cache_side, self.size, self.margin, self.augment)
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
        scores, _ = self._scores(model, self.val_set)
        best = np.zeros(len(self.run.val_images))
        np.maximum.at(best, np.asarray(self.val_owner), scores)  # every image has at least one crop
        best = np.asarray([cascade_score(c, d, self.rule) for c, d in zip(best, self.val_detector_scores, strict=True)])
        labels = [int(im["label"]) for im in self.run.val_images]
        return {"val_auc": auc_or_none(labels, best), "val_images": float(len(labels))}


def make_stage(name: str, run: RunData, out: str | Path, resume: bool = False, progress: bool = False) -> Any:
    if name == "whole-image":
        return WholeImageStage(run)
    if name == "detector":
        return DetectorStage(run)
    if name == "cascade":
        return CascadeStage(run, Path(out), resume, progress)
    raise LimbscanError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")


VAL_SCORES_FILE = "val_scores.json"


def validation_scores(out: Path, ds: Dataset, val_images: list[dict], train_images: list[dict] | None = None) -> dict:
    """Every trained scenario's scores on the validation split, from its best checkpoint: where
    evaluation picks its operating threshold, so it never picks one on the split it reports."""
    from limbscan.eval.scoring import score_run  # evaluation builds on training, not the reverse

    scored = score_run(out, ds, val_images)
    return {
        "dataset": str(ds.root.resolve()),
        "image_ids": [int(im["id"]) for im in val_images],
        "labels": [int(im["label"]) for im in val_images],
        "scores": {name: [round(float(v), 6) for v in s.scores] for name, s in scored.items()},
        "train_body_parts": (
            sorted({im.get("body_part") or "unknown" for im in train_images}) if train_images is not None else None
        ),
    }


def write_val_scores(out: Path, run: RunData) -> Path:
    path = Path(out) / VAL_SCORES_FILE
    write_json_atomic(path, validation_scores(out, run.ds, run.val_images, run.train_images))
    return path


def train(
    ds_path: str | Path, cfg: Config, out: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, FitResult]:
    """Train the scenario(s) of ``cfg.train.scenario`` on the dataset at ``ds_path``; results by scenario.

    The run folder ``out`` gets one subfolder per stage (``last.pt``, ``best.pt``), ``metrics.jsonl``
    and ``train.json`` (what was trained, best validation AUCs). The cascade reuses
    ``out/detector/best.pt``, trained earlier in this call or by an earlier run into ``out``.
    """
    out = Path(out)
    names = scenario_names(cfg.train.scenario)
    owns_group = not (dist.is_available() and dist.is_initialized())
    info = init_distributed()
    try:
        run = prepare(cached_dataset(Dataset.load(ds_path), cfg, info, progress), cfg)
        results: dict[str, FitResult] = {}
        for name in names:
            # Each stage starts from the same seed, so it builds the same initial model whether or
            # not the stages before it ran in this process (a resumed run may skip them).
            seed_everything(cfg.train.seed)
            stage = make_stage(name, run, out, resume, progress)
            results[name] = fit(stage, out, cfg, resume=resume, progress=progress)
            del stage
        if info.is_main:
            # Stages trained into this folder by earlier calls (e.g. the detector before a
            # `--scenario cascade` run) stay listed beside the ones trained now.
            summary_path = out / "train.json"
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
            scenarios = summary.get("scenarios", {})
            scenarios.update({
                name: {"epochs": r.epochs, "best_epoch": r.best_epoch, "best_val_auc": r.best_auc,
                       "checkpoint": f"{name}/{BEST}"}
                for name, r in results.items()
            })
            write_json_atomic(summary_path, {
                "scenarios": {name: scenarios[name] for name in SCENARIOS if name in scenarios},
                "pixel_mean": run.pixel_mean,
                "pixel_std": run.pixel_std,
                "train_images": len(run.train_images),
                "val_images": len(run.val_images),
            })
            write_val_scores(out, run)
            write_training_report(out, run.ds, cfg)
        return results
    finally:
        if owns_group:
            shutdown_distributed()


__all__ = [
    "SCENARIOS",
    "CascadeStage",
    "DetectorStage",
    "RunData",
    "WholeImageStage",
    "auc_or_none",
    "context_box",
    "detector_proposals",
    "jitter_box",
    "load_detector",
    "make_stage",
    "prepare",
    "scenario_names",
    "train",
    "train_loader",
]
