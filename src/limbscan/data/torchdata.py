"""PyTorch datasets over a limbscan dataset: what the three scenarios train on.

Pixels come from the decoded-image cache (:func:`limbscan.data.cache.load_cached`), so an item
costs a ``.npy`` read and a resize, never a DICOM decode. Every model input is a 1-channel
float32 tensor in [0, 1]; normalisation happens inside the models.

- :class:`WholeImageDataset`: the whole image letterboxed to a square, for the baseline.
- :class:`DetectionDataset`: the image at cached scale with Mask R-CNN targets. The paper's
  rule: a normal image is one whole-image NORMAL box with a full mask; an abnormal image is
  its lesion boxes, ABNORMAL, with polygon masks (box-shaped where there is no polygon).
- :class:`CropDataset`: box crops through :func:`crop_box`, the one crop function that
  cascade training and inference share, so the classifier sees the same kind of input in both.
- :func:`join_sources`: one of these per training source (the main dataset's train split and
  each auxiliary dataset) end to end; :class:`SourceMixSampler` draws them in their shares.

Geometry conventions: boxes are XYXY in continuous pixel coordinates (pixel ``i`` spans
``[i, i + 1)``), as torchvision's detection models use; letterboxing pads with 0 (black, the
usual background of a radiograph) and centres the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import ConcatDataset, Sampler, WeightedRandomSampler
from torch.utils.data import Dataset as TorchDataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from limbscan.data.cache import load_cached
from limbscan.data.dataset import Dataset
from limbscan.errors import BadInputError, LimbscanError
from limbscan.models.labels import ABNORMAL, NORMAL

# A crop never shrinks below this many pixels a side (at the scale of the image it is cut
# from): a 3-pixel box of a hairline fracture still comes with the bone around it.
MIN_CROP_SIDE = 16
# Lesion boxes are at least this many pixels a side at cache scale: PaperAugment drops boxes
# under 1 px, and its smallest scale (0.85) must not turn a hairline lesion into one.
MIN_BOX_SIDE = 2.0
# What DetectionDataset does with an abnormal image that has no lesion box (MURA-style labels).
UNBOXED_POLICIES = ("whole", "skip")


# -- geometry ------------------------------------------------------------------------------
def _as_chw(image: torch.Tensor) -> torch.Tensor:
    if image.ndim == 2:
        return image[None]
    if image.ndim != 3:
        raise ValueError(f"expected a [C, H, W] (or [H, W]) image tensor, got shape {tuple(image.shape)}")
    return image


def _fit(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the longest side ``size`` and the aspect kept (each side at least 1)."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _pad_centred(image: torch.Tensor, size: int) -> torch.Tensor:
    _, h, w = image.shape
    out = image.new_zeros((image.shape[0], size, size))
    top, left = (size - h) // 2, (size - w) // 2
    out[:, top : top + h, left : left + w] = image
    return out


def letterbox(image: torch.Tensor, size: int) -> torch.Tensor:
    """[C, H, W] -> [C, size, size]: longest side resized to ``size``, centred, padded with 0.

    Enlarges as well as shrinks (a small crop fills the square). Antialiased when shrinking,
    so a 1024-px image does not alias into moire at 320 px.
    """
    if size < 1:
        raise ValueError(f"letterbox size must be a positive number of pixels, got {size}")
    image = _as_chw(image)
    h, w = image.shape[-2:]
    nh, nw = _fit(h, w, size)
    if (nh, nw) != (h, w):
        image = TF.resize(image, [nh, nw], antialias=True)
    return _pad_centred(image, size)


def squash(image: torch.Tensor, size: int) -> torch.Tensor:
    """[C, H, W] -> [C, size, size]: resized to the square, aspect ratio not kept (antialiased)."""
    if size < 1:
        raise ValueError(f"squash size must be a positive number of pixels, got {size}")
    image = _as_chw(image)
    if tuple(image.shape[-2:]) != (size, size):
        image = TF.resize(image, [size, size], antialias=True)
    return image


def square_input(image: torch.Tensor, size: int, resize: str = "letterbox") -> torch.Tensor:
    """The whole-image classifier's square input: :func:`letterbox` or :func:`squash` (``classifier.image_resize``)."""
    if resize == "squash":
        return squash(image, size)
    if resize != "letterbox":
        raise ValueError(f"image_resize must be letterbox or squash, got {resize!r}")
    return letterbox(image, size)


def crop_window(
    box_xyxy: Sequence[float] | torch.Tensor,
    image_hw: tuple[int, int],
    margin: float,
    min_side: int = MIN_CROP_SIDE,
) -> tuple[int, int, int, int]:
    """The integer window ``(x0, y0, x1, y1)`` that :func:`crop_box` cuts for a box.

    The box grows by ``margin`` times its width (height) on the left and right (top and
    bottom) and is clamped to the image (clamping shrinks the window, never shifts it). A
    window still shorter than ``min_side`` (or the image) becomes that long, centred on the
    box and slid inside the image.
    """
    if margin < 0:
        raise ValueError(f"crop margin must be >= 0, got {margin}")
    coords = [float(v) for v in (box_xyxy.tolist() if isinstance(box_xyxy, torch.Tensor) else box_xyxy)]
    if len(coords) != 4 or not all(math.isfinite(v) for v in coords):
        raise ValueError(f"expected a finite box [x0, y0, x1, y1], got {coords}")
    x0, y0, x1, y1 = coords
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box {coords} is not XYXY (x1 < x0 or y1 < y0)")
    height, width = image_hw
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        raise ValueError(f"box {coords} lies outside the {width}x{height} image")
    window = []
    for lo, hi, extent in ((x0, x1, width), (y0, y1, height)):
        grow = margin * (hi - lo)
        lo, hi = lo - grow, hi + grow
        side = min(min_side, extent)
        if hi - lo < side:
            # Centred on the box, then slid inside the image: a tiny box at the border
            # still gets its full share of context.
            lo = min(max(0.0, (lo + hi - side) / 2), extent - side)
            hi = lo + side
        window.append((max(0, math.floor(lo)), min(extent, math.ceil(hi))))
    (cx0, cx1), (cy0, cy1) = window
    if cx1 <= cx0 or cy1 <= cy0:
        raise ValueError(f"box {coords} lies outside the {width}x{height} image")
    return cx0, cy0, cx1, cy1


def crop_box(
    image: torch.Tensor,
    box_xyxy: Sequence[float] | torch.Tensor,
    margin: float,
    size: int,
    min_side: int = MIN_CROP_SIDE,
) -> torch.Tensor:
    """Cut ``box_xyxy`` (in ``image``'s pixels) with a margin and letterbox it to [C, size, size].

    THE crop function: cascade training and inference both call it, so the classifier sees
    the same kind of input in both. See :func:`crop_window` for how the window is chosen.

    Slicing then an antialiased resize, rather than ``torchvision.ops.roi_align``: measured
    for 200-px crops of a 1024 x 768 image (2 cores), 0.1-0.5 ms against 0.5-5.5 ms (roi_align
    gets slower as the box grows), and roi_align stretches the box to the output's shape
    instead of keeping its aspect.
    """
    image = _as_chw(image)
    x0, y0, x1, y1 = crop_window(box_xyxy, tuple(image.shape[-2:]), margin, min_side)
    return letterbox(image[:, y0:y1, x0:x1], size)


# -- targets -------------------------------------------------------------------------------
def _box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """The pixels a box covers (at least one), as a uint8 H x W mask."""
    x0, y0, x1, y1 = box
    c0, r0 = min(width - 1, max(0, math.floor(x0))), min(height - 1, max(0, math.floor(y0)))
    c1, r1 = max(c0 + 1, min(width, math.ceil(x1))), max(r0 + 1, min(height, math.ceil(y1)))
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[r0:r1, c0:c1] = 1
    return mask


def _at_least_min_side(box: list[float], height: int, width: int) -> list[float]:
    """Grow a box thinner than MIN_BOX_SIDE (a hairline lesion shrunk to cache scale) about
    its centre, kept inside the image, so augmentation's sanitising does not drop it."""
    out = list(box)
    for lo, hi, extent in ((0, 2, width), (1, 3, height)):
        side = min(MIN_BOX_SIDE, float(extent))
        if out[hi] - out[lo] < side:
            start = min(max(0.0, (out[lo] + out[hi] - side) / 2), extent - side)
            out[lo], out[hi] = start, start + side
    return out


def _polygon_mask(
    polygons: list[list[float]], sx: float, sy: float, box: Sequence[float], height: int, width: int
) -> np.ndarray:
    """COCO polygons rasterised at scale (sx, sy), kept inside the box; box-shaped if empty."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if len(poly) < 6:  # fewer than three vertices encloses nothing
            continue
        # PIL fills a pixel when its integer coordinate is inside; COCO's pixel i is centred
        # on i + 0.5, hence the half-pixel shift.
        xy = [(x * sx - 0.5, y * sy - 0.5) for x, y in zip(poly[0::2], poly[1::2])]
        draw.polygon(xy, fill=1, outline=1)
    box_mask = _box_mask(box, height, width)
    # The polygon's outline can reach one pixel past its box; the box is the truth the
    # detector's mask head is cropped to.
    mask = np.asarray(canvas, dtype=np.uint8) & box_mask
    return mask if mask.any() else box_mask


def detection_target(
    ds: Dataset, image: dict, height: int, width: int, unboxed: str = "whole"
) -> dict[str, torch.Tensor]:
    """Mask R-CNN's target for ``image`` drawn on an ``height`` x ``width`` version of it.

    Normal: one whole-image NORMAL box, full mask. Abnormal: each lesion box (scaled from
    original pixels), ABNORMAL, its polygons as mask. An abnormal image without any box gets
    a whole-image ABNORMAL box under ``unboxed="whole"``: the image-level label still teaches
    the detector, and the image score (best ABNORMAL box) stays defined for it.
    """
    sx, sy = width / image["width"], height / image["height"]
    boxes, masks, labels = [], [], []
    if int(image["label"]) == 1:
        for ann in ds.annotations_for(image["id"]):
            x, y, w, h = (float(v) for v in ann["bbox"])
            box = _at_least_min_side([x * sx, y * sy, (x + w) * sx, (y + h) * sy], height, width)
            boxes.append(box)
            masks.append(_polygon_mask(ann.get("segmentation") or [], sx, sy, box, height, width))
            labels.append(ABNORMAL)
    if not boxes:
        if int(image["label"]) == 1 and unboxed != "whole":
            raise LimbscanError(f"abnormal image {image['id']} has no lesion box (unboxed={unboxed!r})")
        boxes.append([0.0, 0.0, float(width), float(height)])
        masks.append(np.ones((height, width), dtype=np.uint8))
        labels.append(ABNORMAL if int(image["label"]) == 1 else NORMAL)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "masks": torch.from_numpy(np.stack(masks)),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _drop_degenerate(target: dict[str, Any], min_size: float = 1.0) -> dict[str, Any]:
    """Keep boxes at least ``min_size`` px a side, with their masks and labels."""
    boxes = target["boxes"]
    keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    if bool(keep.all()):
        return target
    return {k: (v[keep] if k in ("boxes", "masks", "labels") else v) for k, v in target.items()}


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
        nh, nw = (self.image_size, self.image_size) if self.resize == "squash" else _fit(h, w, self.image_size)
        if (nh, nw) != (h, w):
            pixels = TF.resize(pixels, [nh, nw], antialias=True)
        pixels = _augment_image(self.augment, pixels)
        return square_input(pixels, self.image_size, self.resize), float(image["label"])


class DetectionDataset(TorchDataset):
    """(Tensor[1, h, w], target) at cached scale, for torchvision's Mask R-CNN.

    ``target``: ``boxes`` float32 [N, 4] XYXY in the cached image's pixels, ``labels`` int64
    [N] (:data:`~limbscan.models.labels.NORMAL` / ``ABNORMAL``), ``masks`` uint8 [N, h, w],
    ``image_id`` int. See :func:`detection_target` for the labelling rule. ``augment``
    (a :class:`~limbscan.data.augment.PaperAugment`) moves boxes and masks with the pixels,
    the whole-image box of a normal image included; boxes it pushes out of frame are
    dropped, so an abnormal image can come back with none (a negative sample for that step).

    ``unboxed``: ``"whole"`` boxes an abnormal image without lesion boxes whole, ABNORMAL;
    ``"skip"`` leaves such images out of ``self.images``.
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
            target = _drop_degenerate(target)
        target["image_id"] = int(image["id"])
        return pixels, target


class CropDataset(TorchDataset):
    """(Tensor[1, c, c], float label): one box of one image, cut by :func:`crop_box`.

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
    lesions are per dataset); ``sizes`` tells :class:`SourceMixSampler` where each one's items lie."""

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


# -- sampling ------------------------------------------------------------------------------
def class_weights(labels: Sequence[int]) -> dict[int, float]:
    """scikit-learn's "balanced" weights, n / (k * n_class), for the classes present."""
    # Imported here: scikit-learn takes about a second to import, and DataLoader workers
    # started by spawn import this module without ever drawing a sample.
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        raise LimbscanError("cannot weight classes: no training labels")
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
    return {int(c): float(w) for c, w in zip(classes, weights)}


def class_balanced_sampler(
    labels: Sequence[int], num_samples: int | None, generator: torch.Generator
) -> WeightedRandomSampler:
    """Draw with replacement so each class comes up about equally often.

    ``num_samples`` defaults to ``len(labels)`` (one epoch's worth). The draw depends only on
    the generator's state, and each pass advances it: for an order that is a function of
    (seed, epoch), seed a fresh generator per epoch. Under DDP, give every rank the same
    seed and wrap the sampler in :class:`ShardedSampler`.
    """
    weights = class_weights(labels)
    per_sample = torch.tensor([weights[int(y)] for y in labels], dtype=torch.float64)
    n = len(labels) if num_samples is None else int(num_samples)
    if n < 1:
        raise LimbscanError(f"num_samples must be at least 1, got {n}")
    return WeightedRandomSampler(per_sample, n, replacement=True, generator=generator)


def source_counts(sizes: Sequence[int], share: float | None) -> list[int]:
    """Draws per source in one epoch: the first source (main) ``1 - share`` of them, the others
    ``share`` together, split by their sizes; an epoch holds as many main draws as main items.
    ``share`` None: every item once (each source its natural share)."""
    sizes = [int(n) for n in sizes]
    if not sizes or sizes[0] < 1:
        raise LimbscanError("no training data: the main dataset gives no training item")
    aux_total = sum(sizes[1:])
    if share is None or aux_total == 0:
        return sizes
    if not 0 < share < 1:
        raise LimbscanError(f"auxiliary share {share!r} must lie in (0, 1)")
    total = max(round(sizes[0] / (1 - share)), sizes[0] + 1)
    n_aux = min(max(round(total * share), 1), total - 1)
    # Largest remainder: the auxiliary draws split by size, summing exactly to n_aux.
    exact = [n_aux * n / aux_total for n in sizes[1:]]
    counts = [int(math.floor(x)) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: n_aux - sum(counts)]:
        counts[i] += 1
    return [total - n_aux, *counts]


class SourceMixSampler(Sampler[int]):
    """Indices into sources laid end to end (a :class:`JoinedDataset`), each source drawn
    :func:`source_counts` times, in a random order: about ``share`` of every batch is auxiliary.

    Within a source: ``balanced`` draws classes about equally often (with replacement, as
    :func:`class_balanced_sampler`); otherwise each item once per pass (shuffled, passes
    repeated when a source is drawn more often than it has items). The draw depends only on
    the generator's state: seed a fresh one per epoch, the same on every DDP rank, and wrap the
    sampler in :class:`ShardedSampler`.
    """

    def __init__(
        self, labels: Sequence[int], sizes: Sequence[int], share: float | None, balanced: bool,
        generator: torch.Generator,
    ):
        if sum(sizes) != len(labels):
            raise ValueError(f"source sizes {list(sizes)} do not add up to {len(labels)} labels")
        self.labels, self.sizes = list(labels), [int(n) for n in sizes]
        self.counts = source_counts(self.sizes, share)
        self.balanced, self.generator = balanced, generator

    def __len__(self) -> int:
        return sum(self.counts)

    def __iter__(self) -> Iterator[int]:
        drawn, start = [], 0
        for size, count in zip(self.sizes, self.counts, strict=True):
            if count:
                drawn.append(start + self._draw(self.labels[start : start + size], count))
            start += size
        order = torch.cat(drawn)
        return iter(order[torch.randperm(len(order), generator=self.generator)].tolist())

    def _draw(self, labels: list[int], count: int) -> torch.Tensor:
        if self.balanced:
            weights = class_weights(labels)
            per_sample = torch.tensor([weights[int(y)] for y in labels], dtype=torch.float64)
            return torch.multinomial(per_sample, count, replacement=True, generator=self.generator)
        passes = [torch.randperm(len(labels), generator=self.generator) for _ in range(-(-count // len(labels)))]
        return torch.cat(passes)[:count]


def shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """This rank's share of ``indices``: every ``world_size``-th from ``rank``, padded by
    wrapping around so every rank gets the same count (DDP hangs on uneven batches)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    indices = list(indices)
    if not indices:
        return []
    per_rank = math.ceil(len(indices) / world_size)
    padded = indices + indices[: per_rank * world_size - len(indices)]
    return padded[rank::world_size]


class ShardedSampler(Sampler[int]):
    """Any sampler split across DDP ranks, like DistributedSampler does for a plain dataset.

    Every rank draws the same sequence from ``base`` (same generator seed on all ranks) and
    keeps its :func:`shard` of it, so the ranks together see one epoch's draw exactly once.
    """

    def __init__(self, base: Sampler[int], rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.base, self.rank, self.world_size = base, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(shard(list(self.base), self.rank, self.world_size))

    def __len__(self) -> int:
        return math.ceil(len(self.base) / self.world_size)


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
