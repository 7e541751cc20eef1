"""Run-time augmentation: the policy of Amiri et al. 2022, and what it leaves out.

Each sample, each epoch, exactly one of: untouched (80 %), horizontal flip, rotation, shift or
scale (5 % each; :class:`limbscan.config.AugmentConfig`); :class:`SourceAugment` adds what
differs between hospitals, off unless configured. torchvision ``transforms.v2`` on ``tv_tensors``
moves lesion boxes (XYXY) and masks with the image, dropping a lesion moved out of frame.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from limbscan.config import AugmentConfig, check_config

OPS = ("none", "flip", "rotate", "shift", "scale")


def _check(cfg: AugmentConfig) -> list[float]:
    """The policy's probabilities, in ``OPS`` order, after the config's own value checks."""
    check_config(cfg)
    probs = cfg.probabilities()
    return [float(probs[name]) for name in OPS]


class PaperAugment(torch.nn.Module):
    """Apply one op of the paper's policy to ``(image, target)``.

    ``target`` holds ``boxes`` (``tv_tensors.BoundingBoxes``, XYXY), ``masks``
    (``tv_tensors.Mask``, N x H x W) and ``labels`` (N); other keys pass through. Plain tensors
    are wrapped (the image as ``tv_tensors.Image``, boxes as XYXY on the image's canvas).
    ``last_op`` names the op applied to the latest sample, for tests and logging.
    """

    def __init__(self, cfg: AugmentConfig | None = None):
        super().__init__()
        cfg = cfg or AugmentConfig()
        self.p = torch.tensor(_check(cfg), dtype=torch.float64)
        # Bilinear for pixels; v2 always resamples masks with nearest, so labels stay crisp.
        bilinear = v2.InterpolationMode.BILINEAR
        self.ops = torch.nn.ModuleDict(
            {
                "none": v2.Identity(),
                "flip": v2.RandomHorizontalFlip(p=1.0),
                "rotate": v2.RandomAffine(degrees=cfg.rotate_degrees, interpolation=bilinear),
                "shift": v2.RandomAffine(
                    degrees=0, translate=(cfg.shift_fraction, cfg.shift_fraction), interpolation=bilinear
                ),
                "scale": v2.RandomAffine(degrees=0, scale=tuple(cfg.scale_range), interpolation=bilinear),
            }
        )
        self.sanitize = v2.SanitizeBoundingBoxes()  # finds target["labels"] itself
        self.last_op = "none"
        self.source = SourceAugment(cfg)

    def forward(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        image, target = _wrap(image, target)
        # Drawn from torch's generator like every v2 transform, so torch.manual_seed and
        # DataLoader worker seeding govern the op and its parameters alike.
        op = OPS[int(torch.multinomial(self.p, 1))]
        self.last_op = op
        if op != "none":
            image, target = self.ops[op](image, target)
            if op != "flip":  # a flip keeps every box inside the frame
                image, target = self.sanitize(image, target)
        return self.source(image, target)

    def extra_repr(self) -> str:
        return ", ".join(f"p_{name}={p:g}" for name, p in zip(OPS, self.p.tolist()))


class SourceAugment(torch.nn.Module):
    """What the paper's policy leaves out, each drawn independently (all off by default).

    ``p_hflip``: a horizontal flip. ``p_source``: one of an aspect-ratio stretch (``aspect_range``;
    boxes and masks follow), a gamma or a contrast change, as another hospital would give.
    ``p_invert``: ``1 - pixels``, an exposure that looks MONOCHROME1. ``last`` names what was applied
    to the latest sample.
    """

    KINDS = ("aspect", "gamma", "contrast")

    def __init__(self, cfg: AugmentConfig):
        super().__init__()
        self.cfg = cfg
        self.flip = v2.RandomHorizontalFlip(p=1.0)
        self.last: list[str] = []

    @property
    def active(self) -> bool:
        return bool(self.cfg.p_hflip or self.cfg.p_source or self.cfg.p_invert)

    def forward(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        self.last = []
        if not self.active:
            return image, target
        cfg = self.cfg
        if _chance(cfg.p_hflip):
            image, target = self.flip(image, target)
            self.last.append("hflip")
        if _chance(cfg.p_source):
            kind = self.KINDS[int(torch.randint(len(self.KINDS), ()))]
            self.last.append(kind)
            if kind == "aspect":
                lo, hi = (math.log(v) for v in cfg.aspect_range)
                ratio = math.exp(_uniform(lo, hi))
                h, w = image.shape[-2:]
                size = [max(1, round(h / math.sqrt(ratio))), max(1, round(w * math.sqrt(ratio)))]
                image, target = v2.Resize(size, antialias=True)(image, target)
            elif kind == "gamma":
                image = F.adjust_gamma(image, _uniform(*cfg.gamma_range))
            else:
                image = F.adjust_contrast(image, _uniform(*cfg.contrast_range))
        if _chance(cfg.p_invert):
            image = F.invert(image)
            self.last.append("invert")
        return image, target


def _chance(p: float) -> bool:
    return p > 0 and float(torch.rand(())) < p


def _uniform(lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand(()))


def _wrap(image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    if not isinstance(image, tv_tensors.Image):
        image = tv_tensors.Image(image)
    canvas = tuple(image.shape[-2:])
    target = dict(target)
    boxes = target.get("boxes")
    if boxes is None:
        boxes = torch.zeros((0, 4))
    if not isinstance(boxes, tv_tensors.BoundingBoxes):
        boxes = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=canvas)
    target["boxes"] = boxes
    if "masks" in target and not isinstance(target["masks"], tv_tensors.Mask):
        target["masks"] = tv_tensors.Mask(target["masks"])
    if "labels" not in target:
        target["labels"] = torch.ones(len(boxes), dtype=torch.int64)
    return image, target
