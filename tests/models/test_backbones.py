"""The backbone registry: every backbone runs forward and backward on grey input; weights load offline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from limbscan.errors import BadInputError, LimbscanError
from limbscan.models.backbones import (
    create_backbone,
    find_torchvision_weights,
    freeze_stages,
    get_spec,
    imagenet_state_dict,
    list_backbones,
)

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
CATS = set(range(281, 286))  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = {504, 967, 968}  # coffee mug, espresso, cup


def test_registry_lists_the_paper_and_offline_backbones():
    names = list_backbones()
    for name in ["resnet50", "resnet101", "densenet161", *LITES]:
        assert name in names
    assert any(get_spec(n).weights.startswith("none") for n in names), "a small CPU backbone for tests"


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(LimbscanError, match="unknown backbone 'resnet5'.*resnet50.*efficientnet_lite0"):
        get_spec("resnet5")


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_features_forward_and_backward(name):
    spec = get_spec(name)
    model = create_backbone(name, pretrained=False, features_only=True)
    x = torch.rand(2, 1, 64, 96, requires_grad=True)
    maps = model(x)
    assert [m.shape[1] for m in maps] == list(spec.feature_channels)
    assert [(m.shape[2], m.shape[3]) for m in maps] == [(64 // s, 96 // s) for s in spec.feature_strides]
    sum(m.mean() for m in maps).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_pooled_forward_and_backward(name):
    model = create_backbone(name, pretrained=False)
    out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, get_spec(name).num_features)
    out.sum().backward()
    first = next(p for p in model.parameters())
    assert first.shape[1] == 1 and first.grad is not None  # the 1-channel stem learns


@pytest.mark.parametrize("name", list_backbones())
def test_freeze_stages_leaves_only_the_last_stages_trainable(name):
    spec = get_spec(name)
    model = create_backbone(name, pretrained=False, features_only=True, frozen_bn=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    freeze_stages(model, name, 1)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    last = spec.stages[-1]
    assert all(any(f".{p}" in f".{n}" for p in last) for n in trainable)
    assert any(any(f".{p}" in f".{n}" for p in spec.stem) for n in frozen), "the stem is frozen"
    with pytest.raises(LimbscanError, match="trainable_layers"):
        freeze_stages(model, name, len(spec.stages) + 1)


def _grey_photo(name: str, size: int) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    rgb = torch.from_numpy(getattr(skimage_data, name)()).float().permute(2, 0, 1)[None] / 255
    return F.interpolate(rgb.mean(1, keepdim=True), size=(size, size), mode="bilinear", antialias=True)


@pytest.mark.parametrize("name", LITES)
def test_pretrained_lite_labels_natural_photos_on_grey_input(name):
    """The mapped weights AND the summed 1-channel stem: a grey cat is a cat, a grey cup a cup."""
    spec = get_spec(name)
    model = create_backbone(name, pretrained=True, num_classes=1000).eval()
    mean, std = spec.mean[0], spec.std[0]  # equal over RGB for the Lite release
    with torch.no_grad():
        cat = model((_grey_photo("chelsea", spec.default_size) - mean) / std).argmax(1).item()
        cup = model((_grey_photo("coffee", spec.default_size) - mean) / std).argmax(1).item()
    assert cat in CATS
    assert cup in CUPS


def test_summed_stem_equals_the_rgb_model_on_a_repeated_grey_image():
    import timm

    rgb = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    rgb.load_state_dict(imagenet_state_dict("efficientnet_lite0"))
    grey = create_backbone("efficientnet_lite0", pretrained=True, num_classes=1000).eval()
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)


def test_lite_features_carry_the_pretrained_weights():
    full = imagenet_state_dict("efficientnet_lite0")
    features = create_backbone("efficientnet_lite0", pretrained=True, features_only=True).state_dict()
    torch.testing.assert_close(features["blocks.6.0.conv_pw.weight"], full["blocks.6.0.conv_pw.weight"])
    torch.testing.assert_close(features["conv_stem.weight"], full["conv_stem.weight"].sum(1, keepdim=True))


@pytest.fixture
def no_weight_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("LIMBSCAN_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "weights").mkdir()
    return tmp_path / "weights"


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "densenet161"])
def test_missing_torchvision_weights_name_the_file_expected(name, no_weight_dirs):
    with pytest.raises(LimbscanError, match=rf"{name}-[0-9a-f]{{8}}\.pth.*never downloads") as err:
        create_backbone(name, pretrained=True)
    assert str(no_weight_dirs) in str(err.value)


def test_torchvision_weights_load_from_the_local_folder(no_weight_dirs):
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), no_weight_dirs / "resnet50-11ad3fa6.pth")
    model = create_backbone("resnet50", pretrained=True, features_only=True)
    state = model.state_dict()
    torch.testing.assert_close(state["body.conv1.weight"], reference.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(state["body.layer4.2.conv3.weight"], reference.layer4[2].conv3.weight)


def test_corrupt_weights_file_is_a_bad_input_naming_it(no_weight_dirs):
    bad = no_weight_dirs / "resnet50-0676ba61.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="resnet50-0676ba61.pth: cannot read weights"):
        create_backbone("resnet50", pretrained=True)


def test_tiny_backbone_has_no_pretrained_weights():
    with pytest.raises(LimbscanError, match="pretrained: false"):
        create_backbone("mobilenetv3_small_050", pretrained=True)


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "densenet161"])
def test_real_torchvision_weights_label_a_cat_when_present(name):
    try:
        find_torchvision_weights(name)
    except LimbscanError as err:
        pytest.skip(f"real weights absent: {err}")
    model = create_backbone(name, pretrained=True, num_classes=1000).eval()
    grey = _grey_photo("chelsea", 224)
    with torch.no_grad():
        logits = model((grey - 0.449) / 0.226)  # ImageNet's RGB statistics, averaged for grey
    assert logits.argmax(1).item() in CATS


def test_densenet_file_with_torchvision_legacy_key_names_loads(no_weight_dirs):
    reference = torchvision.models.densenet161(weights=None)
    legacy = {  # the 2017 file's names, and no num_batches_tracked (older than that buffer)
        k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v
        for k, v in reference.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, no_weight_dirs / "densenet161-8d451a50.pth")
    model = create_backbone("densenet161", pretrained=True)
    torch.testing.assert_close(
        model.features.denseblock4.denselayer24.conv2.weight, reference.features.denseblock4.denselayer24.conv2.weight
    )
