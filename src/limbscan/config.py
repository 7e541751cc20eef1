"""Configuration: dataclasses with one home for every number that matters, loaded from YAML.

``load_config("configs/cpu.yaml", ["data.cache.longest_side=512"])`` reads the file, applies
``key=value`` overrides (values parsed as YAML, so ``0.1``, ``true`` and ``[1, 2]`` work) and
checks every key exists, so a typo is an error rather than a silently ignored setting.
Values are checked too (:func:`check_config`): types, the closed sets of ``Literal`` fields,
``train.scenario`` against the scenario table, and ranges where a value can only be a mistake,
so ``train.schedule=cosin`` fails at load, not after two stages have trained.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from limbscan.errors import LimbscanError

# The closed sets of values (``typing.get_args(Schedule)`` gives the tuple of names).
Schedule = Literal["cosine", "step", "constant", "onecycle"]  # after warm-up (onecycle: its own)
Optimizer = Literal["sgd", "adamw"]
Resize = Literal["letterbox", "squash"]  # how an image becomes the whole-image classifier's square input
Balance = Literal["sampler", "loss", "none"]  # class imbalance
CascadeInit = Literal["imagenet", "whole-image"]
CascadeScore = Literal["crop", "geomean"]
FusionRule = Literal["logistic", "rank"]  # how the fused scenario combines the others' scores


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
    # Beyond the paper, each drawn independently after its one op (0 = off, the paper's policy):
    p_hflip: float = 0.0  # a horizontal flip (left and right limbs look alike)
    # "Another hospital": with probability p_source, one of aspect / gamma / contrast, each from
    # its range, and independently an inverted exposure with probability p_invert.
    p_source: float = 0.0
    aspect_range: tuple[float, float] = (0.8, 1.25)  # width / height stretch (boxes follow)
    gamma_range: tuple[float, float] = (0.7, 1.5)
    contrast_range: tuple[float, float] = (0.7, 1.3)
    p_invert: float = 0.0  # a MONOCHROME1-looking image: 1 - pixels

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
    # Auxiliary training data: dataset folders whose every image, whatever split it carries,
    # joins the training images of every stage; never validation or test (`limbscan train --aux`).
    auxiliary: tuple[str, ...] = ()
    # Share of each training batch drawn from the auxiliary images, 0 < share < 1, classes
    # balanced within each dataset; null: their natural share (every image once an epoch).
    auxiliary_share: float | None = None


@dataclass
class ClassifierConfig:
    """The CNN of the whole-image baseline and of the cascade's second stage."""

    backbone: str = "efficientnet_lite0"  # a name in limbscan.models.backbones
    pretrained: bool = True  # ImageNet weights from a local source; never downloaded
    image_size: int = 320  # whole-image input, square
    # letterbox: longest side to image_size, padded (keeps the aspect ratio); squash: resized to
    # image_size x image_size (every input pixel is image, the aspect ratio is lost).
    image_resize: Resize = "letterbox"
    tta_flip: bool = False  # whole-image: average the probability of the image and its mirror
    crop_size: int = 200  # cascade crop input, square (the paper's 200 x 200)
    crop_margin: float = 0.15  # share of the box's width / height added on each side
    top_k: int = 1  # cascade: crops per image; image score from the best of them (see cascade_score)
    crop_jitter: float = 0.1  # cascade training: lesion boxes moved / resized by up to this share, like a detector's
    # Cascade training: also show each lesion inside a wider box, its size drawn from the
    # detector's boxes on normal images, so the crop's scale alone does not tell the label.
    context_crops: bool = False
    # Cascade: start the crop classifier from ImageNet weights ("imagenet") or from this run's
    # trained whole-image classifier ("whole-image", which must be trained first).
    cascade_init: CascadeInit = "imagenet"
    # Cascade image score: "crop" (the paper's: the best crop's probability) or "geomean"
    # (sqrt of that times the detector's image score: an ensemble of the two stages).
    cascade_score: CascadeScore = "crop"
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
    scenario: str = "all"  # all, or a comma list of limbscan.scenarios names
    epochs: int = 6  # whole-image and cascade classifiers
    detector_epochs: int = 4
    batch_size: int = 16
    detector_batch_size: int = 2
    lr_backbone: float = 1e-3  # the paper: backbone (+ RPN) 1e-3 ...
    lr_heads: float = 1e-4  # ... heads 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: Schedule = "cosine"  # cosine | step | constant (after warm-up) | onecycle
    optimizer: Optimizer = "sgd"  # sgd (momentum) | adamw
    balance: Balance = "sampler"  # sampler | loss | none (class imbalance)
    amp: bool = True  # CUDA only
    channels_last: bool = True  # CUDA: the whole model and batches (the CNN backbones always are)
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
class FusionConfig:
    """The fused scenario: the other scenarios' scores of one image combined, fitted on the
    validation split (see :mod:`limbscan.train.stages.fused`)."""

    # "logistic": L2 logistic regression on the scores' logits; "rank": a weighted average of
    # their ranks among the validation scores, then Platt-scaled. Both are measured; this one is used.
    rule: FusionRule = "logistic"
    C: float = 1.0  # inverse L2 strength (scikit-learn's C): on the logits (logistic), the standardised average (rank)
    folds: int = 5  # stratified k-fold within the validation split (fewer where a class has fewer images)
    repeats: int = 10  # of the k-fold, reshuffled, for the cross-validated AUC's mean and sd


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # Per-scenario overrides of the keys above, e.g. ``{"whole-image": {"train": {"optimizer":
    # "adamw"}}}`` or dotted ``{"whole-image": {"train.optimizer": "adamw"}}``: that scenario's
    # stage trains (and its checkpoint records) the config with them applied (:func:`stage_config`).
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)


# Keys every stage of a run must share: the cache the images are read from, the split, the
# training sources and the scenario list.
_SHARED_KEYS = ("stages", "data.cache", "data.split", "data.auxiliary", "data.auxiliary_share", "train.scenario")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def stage_config(cfg: Config, name: str) -> Config:
    """The config scenario ``name``'s stage trains with: ``cfg`` with ``cfg.stages[name]`` applied
    (``cfg`` itself when there are none). An override of a shared key (the cache, the split, the
    training data, the scenario list) is refused, as is an unknown key or a bad value."""
    overrides = _flatten(cfg.stages.get(name) or {})
    if not overrides:
        return cfg
    tree = config_to_dict(cfg)
    tree["stages"] = {}
    for key, value in overrides.items():
        if any(key == k or key.startswith(k + ".") for k in _SHARED_KEYS):
            raise LimbscanError(f"config: stages.{name}.{key}: every stage of a run shares this key; set it at the top")
        _set_dotted(tree, key, value)
    try:
        return check_config(_build(Config, tree, ""))
    except LimbscanError as err:
        raise LimbscanError(str(err).replace("config: ", f"config: stages.{name}: ", 1)) from None


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
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _leaf(hint, value, key, from_text=True)
    return cls(**kwargs)


# What PyYAML's safe_load (YAML 1.1) leaves a string although it is a number: ``1e-3``, ``1e3``
# (its float pattern needs a dot). Only float fields take these, and only when built from a tree.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _leaf(hint: Any, value: Any, key: str, from_text: bool = False) -> Any:
    """``value`` checked against the field type ``hint``; lists become tuples, and with
    ``from_text`` a numeric string becomes a float where a float is declared."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        if not isinstance(value, dict) or not all(isinstance(k, key_type) for k in value):
            raise LimbscanError(f"config: {key} {value!r} must be a mapping")
        return {k: _leaf(value_type, v, f"{key}.{k}", from_text) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):  # X | None: null allowed
        if value is None and type(None) in typing.get_args(hint):
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        try:
            return _leaf(hint, value, key, from_text)
        except LimbscanError as err:
            raise LimbscanError(f"{err} or null") from None
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed or not isinstance(value, str):
            raise LimbscanError(f"config: {key} {value!r} is not one of {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        args = typing.get_args(hint)
        if args[-1] is Ellipsis:
            item_types, size = (args[0],), None
        else:
            item_types, size = args, len(args)
        if not isinstance(value, (list, tuple)) or (size is not None and len(value) != size):
            what = f"a list of {size} values" if size is not None else "a list"
            raise LimbscanError(f"config: {key} {value!r} must be {what}, each {_type_name(item_types[0])}")
        return tuple(
            _leaf(item_types[i if size is not None else 0], item, f"{key}[{i}]", from_text)
            for i, item in enumerate(value)
        )
    if hint is float:
        if from_text and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint in (bool, str):
        ok = isinstance(value, hint)
    else:  # pragma: no cover - a field type this function does not know yet
        raise TypeError(f"config: {key}: no check for type {hint!r}")
    if not ok:
        raise LimbscanError(f"config: {key} {value!r} must be {_type_name(hint)}")
    return value


def _type_name(hint: Any) -> str:
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _range(key: str, value: Any, ok: bool, rule: str) -> None:
    if not ok:
        raise LimbscanError(f"config: {key} {value!r} must be {rule}")


def _positive(where: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _range(f"{where}.{name}", value, value > 0, "> 0")


def _non_negative(where: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _range(f"{where}.{name}", value, value >= 0, ">= 0")


# Probabilities typed by hand in YAML: 0.8 + 4 * 0.05 is not exactly 1 in floats.
_SUM_TOLERANCE = 1e-6


def _check_augment(cfg: AugmentConfig, where: str) -> None:
    probs = cfg.probabilities()
    for name, p in probs.items():
        _range(f"{where}.p_{name}", p, 0 <= p <= 1, "a probability in [0, 1]")
    total = sum(probs.values())
    if not math.isclose(total, 1.0, abs_tol=_SUM_TOLERANCE):
        listed = ", ".join(f"p_{k}={v:g}" for k, v in probs.items())
        raise LimbscanError(
            f"config: {where} probabilities must sum to 1 (exactly one op per sample), got {total:g} ({listed})"
        )
    _non_negative(where, cfg, "rotate_degrees")
    _range(f"{where}.shift_fraction", cfg.shift_fraction, 0 <= cfg.shift_fraction <= 1, "in [0, 1]")
    lo, hi = cfg.scale_range
    _range(f"{where}.scale_range", cfg.scale_range, 0 < lo <= hi, "0 < low <= high")
    for name in ("p_hflip", "p_source", "p_invert"):
        p = getattr(cfg, name)
        _range(f"{where}.{name}", p, 0 <= p <= 1, "a probability in [0, 1]")
    for name in ("aspect_range", "gamma_range", "contrast_range"):
        lo, hi = getattr(cfg, name)
        _range(f"{where}.{name}", getattr(cfg, name), 0 < lo <= hi, "0 < low <= high")


def _check_split(cfg: SplitConfig, where: str) -> None:
    fractions = {"train": cfg.train, "val": cfg.val, "test": cfg.test}
    for name, f in fractions.items():
        _range(f"{where}.{name}", f, 0 <= f <= 1, "a fraction in [0, 1]")
    total = sum(fractions.values())
    if not math.isclose(total, 1.0, abs_tol=_SUM_TOLERANCE):
        listed = ", ".join(f"{k}={v:g}" for k, v in fractions.items())
        raise LimbscanError(f"config: {where} fractions must sum to 1, got {total:g} ({listed})")


def _check_classifier(cfg: ClassifierConfig, where: str) -> None:
    _positive(where, cfg, "image_size", "crop_size", "top_k")
    _non_negative(where, cfg, "crop_margin", "crop_jitter")
    _range(f"{where}.dropout", cfg.dropout, 0 <= cfg.dropout < 1, "in [0, 1)")


def _check_detector(cfg: DetectorConfig, where: str) -> None:
    _positive(
        where, cfg, "fpn_channels", "min_size", "max_size", "rpn_batch_size_per_image", "box_batch_size_per_image",
        "rpn_pre_nms_top_n_train", "rpn_post_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test",
        "box_detections_per_img",
    )  # fmt: skip
    _non_negative(where, cfg, "trainable_layers")  # its upper bound depends on the backbone


def _check_train(cfg: TrainConfig, where: str) -> None:
    from limbscan.scenarios import parse_scenarios  # torch-free; its error lists the names

    parse_scenarios(cfg.scenario)
    _positive(where, cfg, "batch_size", "detector_batch_size")
    _non_negative(
        where, cfg, "epochs", "detector_epochs", "lr_backbone", "lr_heads", "weight_decay", "warmup_steps",
        "workers", "grad_clip", "max_steps_per_epoch",
    )  # fmt: skip
    _range(f"{where}.momentum", cfg.momentum, 0 <= cfg.momentum <= 1, "in [0, 1]")


def _check_search(cfg: SearchConfig, where: str) -> None:
    _non_negative(where, cfg, "trials", "epochs")
    for name in ("lr_backbone", "weight_decay"):  # sampled log-uniform
        lo, hi = getattr(cfg, name)
        _range(f"{where}.{name}", getattr(cfg, name), 0 < lo <= hi, "0 < low <= high")
    for name in ("crop_margin", "augment_strength"):
        lo, hi = getattr(cfg, name)
        _range(f"{where}.{name}", getattr(cfg, name), 0 <= lo <= hi, "0 <= low <= high")
    sizes = list(cfg.image_size)
    _range(f"{where}.image_size", sizes, bool(sizes) and all(s > 0 for s in sizes), "a non-empty list of sizes > 0")


def _check_data(cfg: DataConfig, where: str) -> None:
    share = cfg.auxiliary_share
    _range(f"{where}.auxiliary_share", share, share is None or 0 < share < 1, "in (0, 1), or null")
    _range(f"{where}.auxiliary", list(cfg.auxiliary), all(str(p).strip() for p in cfg.auxiliary),
           "a list of dataset folders")


def _check_stages(cfg: Config, where: str) -> None:
    from limbscan.scenarios import info  # torch-free; its error lists the names

    for name in cfg.stages:
        try:
            info(name)
        except LimbscanError as err:
            raise LimbscanError(f"config: stages.{name}: {err}") from None
        stage_config(cfg, name)


def _check_fusion(cfg: FusionConfig, where: str) -> None:
    _positive(where, cfg, "C", "repeats")
    _range(f"{where}.folds", cfg.folds, cfg.folds >= 2, ">= 2")


def _check_cache(cfg: CacheConfig, where: str) -> None:
    _positive(where, cfg, "longest_side")
    _non_negative(where, cfg, "workers")


_RULES: dict[type, Any] = {
    Config: _check_stages,
    DataConfig: _check_data,
    AugmentConfig: _check_augment,
    CacheConfig: _check_cache,
    SplitConfig: _check_split,
    ClassifierConfig: _check_classifier,
    DetectorConfig: _check_detector,
    TrainConfig: _check_train,
    SearchConfig: _check_search,
    FusionConfig: _check_fusion,
}


def _home(cls: type, root: type | None = None, where: str = "") -> str:
    """The dotted key a section class sits at in :class:`Config` (``AugmentConfig`` -> data.augment)."""
    root = root or Config
    for name, hint in typing.get_type_hints(root).items():
        if dataclasses.is_dataclass(hint):
            key = f"{where}.{name}" if where else name
            found = key if hint is cls else _home(cls, hint, key)
            if found:
                return found
    return ""


def check_config(cfg: Any, where: str = "") -> Any:
    """Check every value of a built Config, or of one section (``check_config(cfg.data.augment)``),
    and return it; a LimbscanError names the first bad key in full (data.augment.p_flip), the value
    and what is allowed. :func:`load_config` runs it; code that changes a Config in Python can too."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"check_config wants a config dataclass, got {cfg!r}")
    if not where and type(cfg) is not Config:
        where = _home(type(cfg))
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key = f"{where}.{f.name}" if where else f.name
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            if not isinstance(value, hints[f.name]):
                raise LimbscanError(f"config: {key} must be a mapping, got {value!r}")
            check_config(value, key)
        else:
            _leaf(hints[f.name], value, key)
    rule = _RULES.get(type(cfg))
    if rule is not None:
        rule(cfg, where)
    return cfg


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
    return check_config(_build(Config, tree, ""))


def add_auxiliary(cfg: Config, folders: list[str | Path] | None) -> Config:
    """``cfg`` with the dataset ``folders`` (``--aux``) added to ``data.auxiliary``, each as an
    absolute path (a resumed run finds it from anywhere) and once (``--resume --aux DS`` again
    adds nothing)."""
    listed = {Path(p).resolve() for p in cfg.data.auxiliary}
    added = []
    for folder in folders or []:
        path = Path(folder).resolve()
        if path not in listed:
            listed.add(path)
            added.append(str(path))
    cfg.data.auxiliary = (*cfg.data.auxiliary, *added)
    return check_config(cfg)


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
    return check_config(_build(Config, tree, ""))


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config beside a run, so the run can be repeated from it."""
    from limbscan.utils.files import write_text_atomic

    path = Path(path)
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
