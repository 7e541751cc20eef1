"""Configuration: dataclasses with one home for every number that matters, loaded from YAML.

``load_config("configs/cpu.yaml", ["data.cache.longest_side=512"])`` reads the file, applies
``key=value`` overrides (values parsed as YAML, so ``0.1``, ``true`` and ``[1, 2]`` work) and
checks every key exists, so a typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from limbscan.errors import LimbscanError


@dataclass
class AugmentConfig:
    """The paper's run-time policy: each sample, each epoch, exactly one of these happens."""

    p_none: float = 0.80
    p_flip: float = 0.05
    p_rotate: float = 0.05
    p_shift: float = 0.05
    p_scale: float = 0.05
    rotate_degrees: float = 15.0  # uniform in [-d, d]
    shift_fraction: float = 0.10  # of width / height, each axis uniform in [-f, f]
    scale_range: tuple[float, float] = (0.85, 1.15)

    def probabilities(self) -> dict[str, float]:
        return {
            "none": self.p_none,
            "flip": self.p_flip,
            "rotate": self.p_rotate,
            "shift": self.p_shift,
            "scale": self.p_scale,
        }


@dataclass
class CacheConfig:
    longest_side: int = 1024  # images are stored resized so their longest side is this
    workers: int = 2


@dataclass
class SplitConfig:
    train: float = 0.70
    val: float = 0.10
    test: float = 0.20
    seed: int = 0


@dataclass
class DataConfig:
    cache: CacheConfig = field(default_factory=CacheConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class ClassifierConfig:
    """The CNN of the whole-image baseline and of the cascade's second stage."""

    backbone: str = "efficientnet_lite0"  # a name in limbscan.models.backbones
    pretrained: bool = True  # ImageNet weights from a local source; never downloaded
    image_size: int = 320  # whole-image input, square (letterboxed)
    crop_size: int = 200  # cascade crop input, square (the paper's 200 x 200)
    crop_margin: float = 0.15  # share of the box's width / height added on each side
    top_k: int = 1  # cascade: crops per image; image score from the best of them (see cascade_score)
    crop_jitter: float = 0.1  # cascade training: lesion boxes moved / resized by up to this share, like a detector's
    # Cascade training: also show each lesion inside a wider box, its size drawn from the
    # detector's boxes on normal images, so the crop's scale alone does not tell the label.
    context_crops: bool = False
    # Cascade: start the crop classifier from ImageNet weights ("imagenet") or from this run's
    # trained whole-image classifier ("whole-image", which must be trained first).
    cascade_init: str = "imagenet"
    # Cascade image score: "crop" (the paper's: the best crop's probability) or "geomean"
    # (sqrt of that times the detector's image score: an ensemble of the two stages).
    cascade_score: str = "crop"
    dropout: float = 0.2


@dataclass
class DetectorConfig:
    """Mask R-CNN (torchvision) on an FPN over a registry backbone; classes bg / normal / abnormal."""

    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    fpn_channels: int = 128
    min_size: int = 384  # torchvision's GeneralizedRCNNTransform sizes
    max_size: int = 512
    trainable_layers: int = 3  # backbone stages left trainable (the stem is always frozen)
    rpn_batch_size_per_image: int = 128
    box_batch_size_per_image: int = 128  # RoIs sampled per image for the box head
    rpn_pre_nms_top_n_train: int = 1000  # torchvision's 2000 / 2000 cost ~18 % more per step here
    rpn_post_nms_top_n_train: int = 500
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 100
    box_detections_per_img: int = 20
    masks: bool = True


@dataclass
class TrainConfig:
    scenario: str = "all"  # whole-image | detector | cascade | all
    epochs: int = 6  # whole-image and cascade classifiers
    detector_epochs: int = 4
    batch_size: int = 16
    detector_batch_size: int = 2
    lr_backbone: float = 1e-3  # the paper: backbone (+ RPN) 1e-3 ...
    lr_heads: float = 1e-4  # ... heads 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | step | constant (after warm-up)
    balance: str = "sampler"  # sampler | loss | none (class imbalance)
    amp: bool = True  # CUDA only
    channels_last: bool = True  # CUDA only
    seed: int = 0
    workers: int = 2  # DataLoader processes
    grad_clip: float = 10.0  # total L2 norm over all parameters; 0 turns clipping off
    max_steps_per_epoch: int = 0  # 0 = the whole training split; > 0 for demos and tests
    tensorboard: bool = False


@dataclass
class SearchConfig:
    """Random search: each key samples from its range; each trial trains on a short budget."""

    trials: int = 8
    epochs: int = 2
    lr_backbone: tuple[float, float] = (1e-4, 1e-2)  # log-uniform
    weight_decay: tuple[float, float] = (1e-6, 1e-3)  # log-uniform
    image_size: tuple[int, ...] = (256, 320, 384)
    crop_margin: tuple[float, float] = (0.0, 0.4)
    augment_strength: tuple[float, float] = (0.5, 2.0)  # multiplies rotate / shift / scale ranges


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise LimbscanError(f"config: {where or 'top level'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise LimbscanError(
            f"config: unknown key {where + '.' if where else ''}{unknown[0]} "
            f"(known: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{where}.{name}" if where else name)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LimbscanError(f"config: override {key} goes through a non-mapping value")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path``, then ``key=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise LimbscanError(f"{path}: config file not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise LimbscanError(f"{path}: not valid YAML ({err})") from err
    for item in overrides or []:
        if "=" not in item:
            raise LimbscanError(f"config override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return _build(Config, tree, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain dicts and lists (tuples become lists), ready for YAML or JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def config_from_dict(tree: dict[str, Any]) -> Config:
    return _build(Config, tree, "")


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config beside a run, so the run can be repeated from it."""
    from limbscan.data.dataset import write_text_atomic

    path = Path(path)
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
