"""The Mask R-CNN detector on registry backbones: it learns phantoms' fractures; scores and boxes follow the rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from limbscan.config import DetectorConfig
from limbscan.data.synth import make_phantom
from limbscan.models.backbones import get_spec, set_memory_format
from limbscan.models.detector import (
    ABNORMAL,
    NORMAL,
    anchor_sizes,
    build_detector,
    detector_param_groups,
    image_scores,
    top_boxes,
)

TINY = "mobilenetv3_small_050"


def _phantoms(n: int, seed: int = 0) -> tuple[list[torch.Tensor], list[dict]]:
    """Fractured phantoms with their lesion boxes (xyxy) and polygon masks, as the detector takes them."""
    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(n):
        image, lesions = make_phantom(rng, size=(256, 192), fracture=True)
        h, w = image.shape
        boxes, masks = [], []
        for lesion in lesions:
            x, y, bw, bh = lesion["bbox"]
            boxes.append([x, y, x + bw, y + bh])
            mask = Image.new("L", (w, h), 0)
            ImageDraw.Draw(mask).polygon(lesion["polygon"], fill=1)
            masks.append(np.asarray(mask))
        images.append(torch.from_numpy(image)[None])
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.full((len(boxes),), ABNORMAL, dtype=torch.int64),
                "masks": torch.from_numpy(np.stack(masks)),
            }
        )
    return images, targets


def _cfg(backbone: str, **kw) -> DetectorConfig:
    # Lite0 with its offline ImageNet weights (the frozen-BN path); the tiny one random (trainable BN).
    kw.setdefault("pretrained", backbone != TINY)
    return DetectorConfig(backbone=backbone, min_size=192, max_size=256, **kw)


def _train(model: nn.Module, images, targets, steps: int) -> list[float]:
    torch.manual_seed(0)
    opt = torch.optim.SGD(detector_param_groups(model, 5e-3, 5e-3, 1e-4), momentum=0.9)
    model.train()
    losses = []
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(("backbone", "steps"), [(TINY, 15), ("efficientnet_lite0", 12)])
def test_loss_falls_on_phantom_fractures_and_eval_gives_boxes_and_masks(backbone, steps):
    torch.manual_seed(0)
    images, targets = _phantoms(2)
    model = build_detector(_cfg(backbone), pixel_mean=0.3, pixel_std=0.2)
    losses = _train(model, images, targets, steps)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out, image in zip(outputs, images, strict=True):
        n = len(out["boxes"])
        assert 0 < n <= model.roi_heads.detections_per_img
        assert out["boxes"].shape == (n, 4) and out["scores"].shape == (n,)
        assert set(out["labels"].tolist()) <= {NORMAL, ABNORMAL}
        assert out["masks"].shape == (n, 1, *image.shape[1:])  # masks in the input image's pixels
        assert (out["boxes"][:, 2] <= image.shape[2] + 1e-3).all() and (
            out["boxes"][:, 3] <= image.shape[1] + 1e-3
        ).all()
        assert ((out["scores"] >= 0) & (out["scores"] <= 1)).all()


def test_boxes_only_detector_trains_and_returns_no_masks():
    images, targets = _phantoms(2, seed=1)
    model = build_detector(_cfg(TINY, masks=False), pixel_mean=0.3, pixel_std=0.2)
    losses = _train(model, images, targets, 2)
    assert np.isfinite(losses).all()
    model.eval()
    with torch.no_grad():
        out = model(images)[0]
    assert "masks" not in out and len(out["boxes"]) > 0


def test_structure_follows_the_config():
    cfg = _cfg("efficientnet_lite0", fpn_channels=32, trainable_layers=2)
    model = build_detector(cfg, pixel_mean=0.42, pixel_std=0.17)
    assert model.transform.image_mean == [0.42] and model.transform.image_std == [0.17]
    assert model.transform.min_size == (192,) and model.transform.max_size == 256
    assert model.backbone.out_channels == 32
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # background, normal, abnormal
    # one anchor size pair per feature map: the backbone's maps plus the pooled level
    levels = len(get_spec("efficientnet_lite0").feature_channels) + 1
    assert len(model.rpn.anchor_generator.sizes) == levels
    assert model.rpn.head.cls_logits.out_channels == model.rpn.anchor_generator.num_anchors_per_location()[0]
    # pretrained: frozen batch norms everywhere in the backbone; stem and early stages frozen
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())
    body = dict(model.backbone.body.named_parameters())
    assert not body["conv_stem.weight"].requires_grad
    stages = get_spec("efficientnet_lite0").stages
    assert any(p.requires_grad for n, p in body.items() if n.startswith(stages[-2]))
    assert not any(p.requires_grad for n, p in body.items() if n.startswith(stages[-3]))
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())


def test_backbone_runs_channels_last_and_hands_contiguous_maps_to_the_heads():
    model = build_detector(_cfg(TINY), pixel_mean=0.3, pixel_std=0.2).eval()
    convs = [p for p in model.backbone.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    x = torch.rand(1, 1, 192, 256)
    with torch.no_grad():
        maps = model.backbone(x)
        plain = set_memory_format(model, torch.contiguous_format).backbone(x)
    assert all(p.is_contiguous() for p in model.parameters())
    assert all(m.is_contiguous() for m in maps.values())
    for name, m in maps.items():
        torch.testing.assert_close(m, plain[name], rtol=1e-4, atol=1e-4)


def test_random_init_trains_every_layer_with_live_batch_norms():
    model = build_detector(_cfg(TINY, trainable_layers=1), pixel_mean=0.3, pixel_std=0.2)
    assert all(p.requires_grad for p in model.backbone.body.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())


def test_anchor_sizes_grow_with_stride():
    assert anchor_sizes((8, 16, 32)) == ((32, 64), (64, 128), (128, 256), (256, 512))


def test_param_groups_put_backbone_and_rpn_at_backbone_lr_heads_at_head_lr():
    model = build_detector(_cfg("efficientnet_lite0"), pixel_mean=0.3, pixel_std=0.2)
    groups = detector_param_groups(model, lr_backbone=1e-3, lr_heads=1e-4, weight_decay=1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert all(lr_of[id(p)] == 1e-3 for p in model.rpn.parameters())
    assert all(lr_of[id(p)] == 1e-3 for p in model.backbone.fpn.parameters())
    assert all(lr_of[id(p)] == 1e-4 for p in model.roi_heads.parameters())
    assert not any(id(p) in lr_of for p in model.backbone.body.conv_stem.parameters())  # frozen: no group


def _output(boxes, labels, scores) -> dict:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def test_image_scores_take_the_best_abnormal_box_and_zero_without_one():
    outputs = [
        _output([[0, 0, 9, 9], [1, 1, 5, 5], [2, 2, 4, 4]], [NORMAL, ABNORMAL, ABNORMAL], [0.95, 0.3, 0.6]),
        _output([[0, 0, 9, 9]], [NORMAL], [0.9]),
        _output([], [], []),
    ]
    torch.testing.assert_close(image_scores(outputs), torch.tensor([0.6, 0.0, 0.0]))
    assert image_scores([]).shape == (0,)


def test_top_boxes_prefer_abnormal_then_fall_back_to_any_then_empty():
    out = _output(
        [[0, 0, 9, 9], [1, 1, 5, 5], [2, 2, 4, 4], [3, 3, 6, 6]],
        [NORMAL, ABNORMAL, ABNORMAL, ABNORMAL],
        [0.99, 0.3, 0.6, 0.1],
    )
    torch.testing.assert_close(top_boxes(out, 2), torch.tensor([[2.0, 2, 4, 4], [1, 1, 5, 5]]))
    assert top_boxes(out, 10).shape == (3, 4)  # only as many as there are
    normal_only = _output([[0, 0, 9, 9], [1, 1, 8, 8]], [NORMAL, NORMAL], [0.4, 0.8])
    torch.testing.assert_close(top_boxes(normal_only, 3), torch.tensor([[1.0, 1, 8, 8]]))
    assert top_boxes(_output([], [], []), 1).shape == (0, 4)
    with pytest.raises(ValueError):
        top_boxes(out, 0)
