"""The classifier: one logit per grey image, normalised by the training set's pixel statistics."""

from __future__ import annotations

import pytest
import torch

from limbscan.config import ClassifierConfig
from limbscan.errors import LimbscanError
from limbscan.models.backbones import set_memory_format
from limbscan.models.classifier import Classifier, build_classifier

TINY = "mobilenetv3_small_050"


def test_forward_gives_one_logit_per_image():
    model = Classifier(TINY, pretrained=False)
    logits = model(torch.rand(3, 1, 64, 80))
    assert logits.shape == (3,)
    assert logits.dtype == torch.float32


def test_runs_channels_last_and_a_loaded_checkpoint_gives_the_contiguous_models_logits():
    model = Classifier(TINY, pretrained=False).eval()
    convs = [p for p in model.backbone.parameters() if p.ndim == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    x = torch.rand(2, 1, 64, 80)
    reference = set_memory_format(Classifier(TINY, pretrained=False).eval(), torch.contiguous_format)
    reference.load_state_dict(model.state_dict())
    assert all(p.is_contiguous() for p in reference.parameters())
    with torch.no_grad():
        expected = reference.head(reference.backbone((x - 0.5) / 0.25)).squeeze(1)
        torch.testing.assert_close(reference(x), expected)
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    loaded = Classifier(TINY, pretrained=False).eval()
    loaded.load_state_dict(reference.state_dict())  # a contiguous checkpoint, as older runs wrote
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in loaded.backbone.parameters() if p.ndim == 4)


def test_rejects_colour_input_with_a_clear_message():
    with pytest.raises(ValueError, match=r"\[B, 1, H, W\]"):
        Classifier(TINY, pretrained=False)(torch.rand(2, 3, 64, 64))


def test_pixel_statistics_normalise_inside_and_travel_in_the_state_dict():
    model = Classifier(TINY, pretrained=False, pixel_mean=0.3, pixel_std=0.2).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected = model.head(model.backbone((x - 0.3) / 0.2)).squeeze(1)
        torch.testing.assert_close(model(x), expected)
    state = model.state_dict()
    assert state["pixel_mean"].item() == pytest.approx(0.3)
    assert state["pixel_std"].item() == pytest.approx(0.2)
    other = Classifier(TINY, pretrained=False)
    other.load_state_dict(state)
    assert other.pixel_mean.item() == pytest.approx(0.3)


def test_bad_pixel_std_is_refused():
    with pytest.raises(LimbscanError, match="pixel_std"):
        Classifier(TINY, pretrained=False, pixel_std=0.0)


def test_build_from_config_uses_its_backbone_and_dropout():
    cfg = ClassifierConfig(backbone="efficientnet_lite0", pretrained=True, dropout=0.4)
    model = build_classifier(cfg, pixel_mean=0.4, pixel_std=0.2)
    assert model.backbone_name == "efficientnet_lite0"
    assert model.dropout.p == 0.4
    assert model.head.in_features == 1280
    assert model.backbone.conv_stem.weight.shape[1] == 1
    # pretrained: the stem is the ImageNet one summed, not a random init
    from limbscan.models.backbones import imagenet_state_dict

    stem = imagenet_state_dict("efficientnet_lite0")["conv_stem.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(model.backbone.conv_stem.weight, stem)


def test_param_groups_split_backbone_and_head_and_cover_every_parameter_once():
    model = Classifier(TINY, pretrained=False)
    groups = model.param_groups(lr_backbone=1e-3, lr_heads=1e-4, weight_decay=1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in model.parameters() if p.requires_grad)
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == 1e-3 and by_name["head"]["lr"] == 1e-4
    assert any(p is model.head.weight for p in by_name["head"]["params"])
    assert any(p is model.head.bias for p in by_name["head_no_decay"]["params"])
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("_no_decay"))
    assert all(p.ndim > 1 for g in groups if not g["name"].endswith("_no_decay") for p in g["params"])
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # torch accepts them as they are


def test_loss_falls_when_training_on_a_separable_task():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 64, 64) * 0.5
    y = torch.tensor([0.0, 1.0] * 4)
    x[y == 1, :, 20:44, 28:36] += 0.5  # a bright bar marks the positives
    model = Classifier(TINY, pretrained=False, dropout=0.0, pixel_mean=float(x.mean()), pixel_std=float(x.std()))
    opt = torch.optim.SGD(model.param_groups(0.05, 0.05, 0.0), momentum=0.9)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
