"""PyTorch datasets over a limbscan dataset: what the three scenarios train on.

Pixels come from the decoded-image cache (:func:`limbscan.data.cache.load_cached`), so an item
costs a ``.npy`` read and a resize, never a DICOM decode. Every model input is a 1-channel
float32 tensor in [0, 1]; normalisation happens inside the models (:func:`pixel_stats` measures
what they normalise by). :func:`join_sources` lays one dataset per training source end to end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset
from torch.utils.data import Dataset as TorchDataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from limbscan.data.cache import load_cached
from limbscan.data.dataset import Dataset
from limbscan.data.geometry import MIN_CROP_SIDE, crop_box, detection_target, drop_degenerate, fit, square_input
from limbscan.errors import BadInputError, LimbscanError

# What DetectionDataset does with an abnormal image that has no lesion box (MURA-style labels).
UNBOXED_POLICIES = ("whole", "skip")


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Drop the tv_tensor subclass: models and collate want ordinary tensors."""
    return t.as_subclass(torch.Tensor)


def _augment_image(augment: torch.nn.Module | None, image: torch.Tensor) -> torch.Tensor:
    """Run a (image, target) augmentation on an image alone."""
    if augment is None:
        return image
    out, _ = augment(
        tv_tensors.Image(image), {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}
    )
    return _plain(out)


def _load(ds: Dataset, image: dict, cache_side: int) -> torch.Tensor:
    return torch.from_numpy(load_cached(ds, image, cache_side))[None]


# -- datasets ------------------------------------------------------------------------------
class WholeImageDataset(TorchDataset):
    """(Tensor[1, S, S], float label): the whole image, augmented, letterboxed (or squashed,
    ``resize="squash"``) to ``image_size``.

    The image is shrunk to fit ``image_size`` first and padded (or squashed) last: augmenting
    the small image costs a fraction of augmenting the cached one, and the padding still comes
    after the augmentation, so a shift or rotation moves the limb, not a black border.
    """

    def __init__(
        self,
        ds: Dataset,
        images: list[dict],
        cache_side: int,
        image_size: int,
        augment: torch.nn.Module | None = None,
        resize: str = "letterbox",
    ):
        self.ds = ds
        self.images = list(images)
        self.cache_side = cache_side
        self.image_size = image_size
        self.augment = augment
        self.resize = resize

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> list[int]:
        return [int(im["label"]) for im in self.images]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        image = self.images[index]
        pixels = _load(self.ds, image, self.cache_side)
        h, w = pixels.shape[-2:]
        nh, nw = (self.image_size, self.image_size) if self.resize == "squash" else fit(h, w, self.image_size)
        if (nh, nw) != (h, w):
            pixels = TF.resize(pixels, [nh, nw], antialias=True)
        pixels = _augment_image(self.augment, pixels)
        return square_input(pixels, self.image_size, self.resize), float(image["label"])


class DetectionDataset(TorchDataset):
    """(Tensor[1, h, w], target) at cached scale, for torchvision's Mask R-CNN.

    ``target``: ``boxes`` float32 [N, 4] XYXY in the cached image's pixels, ``labels`` int64 [N]
    (``NORMAL`` / ``ABNORMAL``, :func:`~limbscan.data.geometry.detection_target`), ``masks`` uint8
    [N, h, w], ``image_id``. ``augment`` moves boxes and masks with the pixels and drops boxes pushed
    out of frame. ``unboxed``: ``"whole"`` boxes an abnormal image without lesion boxes whole,
    ``"skip"`` leaves it out.
    """

    def __init__(
        self,
        ds: Dataset,
        images: list[dict],
        cache_side: int,
        augment: torch.nn.Module | None = None,
        unboxed: str = "whole",
    ):
        if unboxed not in UNBOXED_POLICIES:
            raise LimbscanError(f"unboxed must be one of {', '.join(UNBOXED_POLICIES)}, got {unboxed!r}")
        if unboxed == "skip":
            images = [im for im in images if int(im["label"]) == 0 or ds.annotations_for(im["id"])]
        self.ds = ds
        self.images = list(images)
        self.cache_side = cache_side
        self.augment = augment
        self.unboxed = unboxed

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> list[int]:
        return [int(im["label"]) for im in self.images]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image = self.images[index]
        pixels = _load(self.ds, image, self.cache_side)
        h, w = pixels.shape[-2:]
        target = detection_target(self.ds, image, h, w, self.unboxed)
        if self.augment is not None:
            wrapped = {
                "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w)),
                "masks": tv_tensors.Mask(target["masks"]),
                "labels": target["labels"],
            }
            out, wrapped = self.augment(tv_tensors.Image(pixels), wrapped)
            pixels = _plain(out)
            target = {k: _plain(v) for k, v in wrapped.items() if k in ("boxes", "masks", "labels")}
            target = drop_degenerate(target)
        target["image_id"] = int(image["id"])
        return pixels, target


class CropDataset(TorchDataset):
    """(Tensor[1, c, c], float label): one box of one image, cut by :func:`~limbscan.data.geometry.crop_box`.

    ``items`` are ``(image dict, box XYXY in ORIGINAL image pixels, label)``: lesion boxes of
    abnormal images and detector proposals on normal ones, drawn the way inference draws
    them. The box is scaled to the cached image, cropped, then augmented (cheap at crop size).
    """

    def __init__(
        self,
        ds: Dataset,
        items: list[tuple[dict, list[float], int]],
        cache_side: int,
        crop_size: int,
        margin: float,
        augment: torch.nn.Module | None = None,
        min_side: int = MIN_CROP_SIDE,
    ):
        self.ds = ds
        self.items = list(items)
        self.cache_side = cache_side
        self.crop_size = crop_size
        self.margin = margin
        self.augment = augment
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [int(label) for _, _, label in self.items]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        image, box, label = self.items[index]
        pixels = _load(self.ds, image, self.cache_side)
        sx, sy = pixels.shape[-1] / image["width"], pixels.shape[-2] / image["height"]
        x0, y0, x1, y1 = (float(v) for v in box)
        try:
            crop = crop_box(pixels, [x0 * sx, y0 * sy, x1 * sx, y1 * sy], self.margin, self.crop_size, self.min_side)
        except ValueError as err:
            raise BadInputError(self.ds.image_path(image), f"cannot crop box {list(box)}: {err}") from err
        return _augment_image(self.augment, crop), float(label)


class JoinedDataset(ConcatDataset):
    """Several training sources' datasets end to end, the main one first: what a stage trains on
    when auxiliary data joins. Each source keeps its own limbscan Dataset (image ids, cache and
    lesions are per dataset); ``sizes`` tells :class:`~limbscan.data.samplers.SourceMixSampler`
    where each one's items lie."""

    @property
    def labels(self) -> list[int]:
        return [int(y) for d in self.datasets for y in d.labels]

    @property
    def sizes(self) -> list[int]:
        return [len(d) for d in self.datasets]


def join_sources(datasets: Sequence[TorchDataset]) -> TorchDataset:
    """The one source's dataset as it is (a run without auxiliary data trains exactly as before),
    or several joined."""
    if not datasets:
        raise LimbscanError("no training data: no source to train on")
    return datasets[0] if len(datasets) == 1 else JoinedDataset(list(datasets))


def detection_collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Images differ in size, so a detection batch stays a list (torchvision's convention)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


# -- statistics ----------------------------------------------------------------------------
def pixel_stats(ds: Dataset, images: list[dict], cache_side: int, max_images: int = 200) -> tuple[float, float]:
    """Mean and standard deviation of the pixels of up to ``max_images`` of ``images``.

    The subset is spread evenly over the images sorted by id, so it is the same whatever the
    list's order. Images that cannot be read are left out; if none can, LimbscanError.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    ordered = sorted(images, key=lambda im: im["id"])
    if not ordered:
        raise LimbscanError("cannot compute pixel statistics: no training images")
    if len(ordered) > max_images:
        picks = np.linspace(0, len(ordered) - 1, max_images).round().astype(int)
        ordered = [ordered[i] for i in np.unique(picks)]
    total, total_sq, count = 0.0, 0.0, 0
    for image in ordered:
        try:
            pixels = load_cached(ds, image, cache_side).astype(np.float64)
        except BadInputError:
            continue
        total += float(pixels.sum())
        total_sq += float(np.square(pixels).sum())
        count += pixels.size
    if count == 0:
        raise LimbscanError(f"cannot compute pixel statistics: none of {len(ordered)} images could be read")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    return mean, std
