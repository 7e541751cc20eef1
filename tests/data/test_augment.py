"""The paper's augmentation policy: op frequencies, and boxes/masks that follow the pixels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from limbscan.config import AugmentConfig
from limbscan.data.augment import OPS, PaperAugment
from limbscan.errors import LimbscanError

H, W = 64, 80



def forced(op: str, **ranges) -> AugmentConfig:
    probs = {f"p_{name}": 0.0 for name in OPS}
    probs[f"p_{op}"] = 1.0
    return AugmentConfig(**probs, **ranges)


def lesion_sample(centres=((30, 24),), radii=(9, 6)) -> tuple[tv_tensors.Image, dict]:
    """A dark image with bright elliptical lesions, their masks and tight XYXY boxes."""
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    masks, boxes = [], []
    for cx, cy in centres:
        m = ((xx - cx) / radii[0]) ** 2 + ((yy - cy) / radii[1]) ** 2 <= 1
        ys, xs = torch.nonzero(m, as_tuple=True)
        masks.append(m.to(torch.uint8))
        boxes.append([xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1])
    image = 0.1 + 0.8 * torch.stack(masks).amax(0).float()
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY", canvas_size=(H, W)),
        "masks": tv_tensors.Mask(torch.stack(masks)),
        "labels": torch.arange(1, len(centres) + 1),
    }
    return tv_tensors.Image(image[None]), target


def dilate(m: torch.Tensor, px: int) -> torch.Tensor:
    return F.max_pool2d(m.float()[None], 2 * px + 1, stride=1, padding=px)[0] > 0


def assert_masks_in_boxes(target: dict, tol: float = 1.5) -> None:
    assert len(target["boxes"]) == len(target["masks"]) == len(target["labels"])
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert len(xs) > 0
        x0, y0, x1, y1 = box.tolist()
        assert xs.min() >= x0 - tol and xs.max() + 1 <= x1 + tol, (box, xs.min(), xs.max())
        assert ys.min() >= y0 - tol and ys.max() + 1 <= y1 + tol, (box, ys.min(), ys.max())


@pytest.mark.parametrize(
    "probs",
    [
        None,  # the paper's 80/5/5/5/5
        dict(p_none=0.5, p_flip=0.2, p_rotate=0.1, p_shift=0.1, p_scale=0.1),
    ],
)
def test_op_frequencies_follow_config(probs):
    cfg = AugmentConfig(**probs) if probs else AugmentConfig()
    aug = PaperAugment(cfg)
    torch.manual_seed(0)
    # Left-right asymmetric, so "none" and "flip" can be told apart from the pixels.
    image = tv_tensors.Image(torch.linspace(0, 1, 32).repeat(32, 1)[None])
    target = {
        "boxes": tv_tensors.BoundingBoxes([[2.0, 4.0, 10.0, 12.0]], format="XYXY", canvas_size=(32, 32)),
        "labels": torch.tensor([1]),
    }
    n = 4000
    seen = dict.fromkeys(OPS, 0)
    for _ in range(n):
        out, _ = aug(image, target)
        seen[aug.last_op] += 1
        if aug.last_op == "none":
            assert torch.equal(out, image)
        elif aug.last_op == "flip":
            assert torch.equal(out, image.flip(-1))
    for op, p in cfg.probabilities().items():
        # 4.5 sigma: a false alarm about once in 150,000 runs, yet a 5 % op drawn at 8 % fails.
        assert abs(seen[op] - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)), (op, seen[op], n * p)


def test_identity_leaves_everything_unchanged():
    aug = PaperAugment(forced("none"))
    image, target = lesion_sample()
    out, tgt = aug(image, target)
    assert aug.last_op == "none"
    assert torch.equal(out, image)
    for key in ("boxes", "masks", "labels"):
        assert torch.equal(tgt[key], target[key])


def test_flip_mirrors_box_exactly():
    aug = PaperAugment(forced("flip"))
    image, target = lesion_sample(centres=((20, 24), (60, 40)))
    out, tgt = aug(image, target)
    assert aug.last_op == "flip"
    assert torch.equal(out, image.flip(-1))
    assert torch.equal(tgt["masks"], target["masks"].flip(-1))
    x0, y0, x1, y1 = target["boxes"].unbind(-1)
    expected = torch.stack([W - x1, y0, W - x0, y1], dim=-1)
    assert torch.equal(tgt["boxes"], expected)
    assert torch.equal(tgt["labels"], target["labels"])
    assert_masks_in_boxes(tgt, tol=0)


@pytest.mark.parametrize("op", ["rotate", "shift", "scale"])
def test_boxes_and_masks_follow_the_lesion(op):
    aug = PaperAugment(forced(op, rotate_degrees=30.0, shift_fraction=0.15, scale_range=(0.7, 1.3)))
    torch.manual_seed(1)
    moved = 0
    for _ in range(25):
        image, target = lesion_sample(centres=((40, 30),))
        out, tgt = aug(image, target)
        assert aug.last_op == op
        assert out.shape == image.shape
        assert_masks_in_boxes(tgt)
        # The bright pixels are where the mask says the lesion is (give or take resampling).
        mask = tgt["masks"][0]
        bright, lit = out[0] > 0.75, out[0] > 0.25
        assert not (bright & ~dilate(mask, 1)).any()
        assert not (mask.bool() & ~dilate(lit, 1)).any()
        moved += not torch.equal(tgt["masks"], target["masks"])
    assert moved >= 20  # the op really transforms, not just passes through


def test_lesion_shifted_out_of_frame_is_dropped_with_mask_and_label():
    aug = PaperAugment(forced("shift", shift_fraction=0.5))
    torch.manual_seed(2)
    dropped = 0
    for _ in range(60):
        # A lesion tucked in the corner leaves the frame under large shifts; the central one stays.
        image, target = lesion_sample(centres=((5, 4), (40, 32)), radii=(4, 3))
        _, tgt = aug(image, target)
        assert_masks_in_boxes(tgt)
        assert isinstance(tgt["boxes"], tv_tensors.BoundingBoxes)
        assert isinstance(tgt["masks"], tv_tensors.Mask)
        if len(tgt["labels"]) < 2:
            dropped += 1
            # Only the corner lesion can leave: a half-frame shift keeps the central one in view.
            assert tgt["labels"].tolist() == [2]
    assert dropped > 0


@pytest.mark.parametrize("op", OPS)
def test_normal_image_without_lesions(op):
    aug = PaperAugment(forced(op))
    image = torch.rand(1, H, W)  # plain tensors are wrapped
    target = {"boxes": torch.zeros((0, 4)), "masks": torch.zeros((0, H, W), dtype=torch.uint8),
              "labels": torch.zeros(0, dtype=torch.int64)}
    out, tgt = aug(image, target)
    assert isinstance(out, tv_tensors.Image) and out.shape == image.shape
    assert tgt["boxes"].shape == (0, 4) and tgt["masks"].shape == (0, H, W) and len(tgt["labels"]) == 0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(p_none=0.7), "sum to 1"),
        (dict(p_none=0.9, p_flip=0.1, p_rotate=0.05, p_shift=0.0, p_scale=-0.05), "[0, 1]"),
        (dict(scale_range=(1.2, 0.8)), "scale_range"),
        (dict(rotate_degrees=-5.0), "rotate_degrees"),
    ],
)
def test_bad_config_raises_clear_error(kwargs, words):
    with pytest.raises(LimbscanError, match="data.augment") as err:
        PaperAugment(AugmentConfig(**kwargs))
    assert words in str(err.value)


def test_yaml_style_probabilities_that_sum_to_one_in_decimal_are_accepted():
    # 0.8 + 4 * 0.05 is 1.0000000000000002 in binary floats.
    PaperAugment(AugmentConfig(p_none=0.8, p_flip=0.05, p_rotate=0.05, p_shift=0.05, p_scale=0.05))
