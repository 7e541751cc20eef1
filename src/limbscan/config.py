"""Configuration: pydantic models with one home for every number that matters, loaded from YAML.

``load_config("configs/cpu.yaml", ["data.cache.longest_side=512"])`` reads the file, applies
``key=value`` overrides (values parsed as YAML) and validates the whole: unknown keys, types, the
closed sets of ``Literal`` fields, ranges and ``train.scenario``. A mistake is a one-line
LimbscanError naming the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, StrictBool, StrictInt, StrictStr, ValidationError

from limbscan.errors import LimbscanError
from limbscan.utils.validation import (
    FROM_TEXT,
    LIST,
    STR_KEYS,
    Checked,
    Fraction,
    NonNegativeInt,
    NonNegativeNumber,
    Number,
    PositiveInt,
    PositiveNumber,
    Probability,
    Span,
    Span0,
    one_line,
    rule,
    whole_error,
)

# The closed sets of values (``typing.get_args(Schedule)`` gives the tuple of names).
Schedule = Literal["cosine", "step", "constant", "onecycle"]  # after warm-up (onecycle: its own)
Optimizer = Literal["sgd", "adamw"]
Resize = Literal["letterbox", "squash"]  # how an image becomes the whole-image classifier's square input
Balance = Literal["sampler", "loss", "none"]  # class imbalance
CascadeInit = Literal["imagenet", "whole-image"]
CascadeScore = Literal["crop", "geomean"]
FusionRule = Literal["logistic", "rank"]  # how the fused scenario combines the others' scores


class _Section(Checked):
    """A config section: see :class:`~limbscan.utils.validation.Checked`; call :func:`check_config`
    after changing one in Python."""

    @classmethod
    def _failed(cls, err: ValidationError) -> Exception:
        return LimbscanError(f"config: {one_line(err, cls, _home(cls))}")


def _passed_on(err: LimbscanError) -> Exception:
    """A LimbscanError from a check (``config: ...``) as a validation error with its message."""
    return whole_error(str(err).removeprefix("config: "), verbatim=True)


# Probabilities typed by hand in YAML: 0.8 + 4 * 0.05 is not exactly 1 in floats.
_SUM_TOLERANCE = 1e-6


def _sums_to_one(values: dict[str, float], what: str) -> None:
    total = sum(values.values())
    if not math.isclose(total, 1.0, abs_tol=_SUM_TOLERANCE):
        listed = ", ".join(f"{k}={v:g}" for k, v in values.items())
        raise whole_error(f"{what}, got {total:g} ({listed})")


class AugmentConfig(_Section):
    """The paper's run-time policy: each sample, each epoch, exactly one of these happens."""

    p_none: Probability = 0.80
    p_flip: Probability = 0.05
    p_rotate: Probability = 0.05
    p_shift: Probability = 0.05
    p_scale: Probability = 0.05
    rotate_degrees: NonNegativeNumber = 15.0  # uniform in [-d, d]
    shift_fraction: Annotated[Number, rule(lambda f: 0 <= f <= 1, "in [0, 1]")] = 0.10  # of width / height, each axis uniform in [-f, f]
    scale_range: Span = (0.85, 1.15)
    # Beyond the paper, each drawn independently after its one op (0 = off, the paper's policy):
    p_hflip: Probability = 0.0  # a horizontal flip (left and right limbs look alike)
    # "Another hospital": with probability p_source, one of aspect / gamma / contrast, each from
    # its range, and independently an inverted exposure with probability p_invert.
    p_source: Probability = 0.0
    aspect_range: Span = (0.8, 1.25)  # width / height stretch (boxes follow)
    gamma_range: Span = (0.7, 1.5)
    contrast_range: Span = (0.7, 1.3)
    p_invert: Probability = 0.0  # a MONOCHROME1-looking image: 1 - pixels

    def probabilities(self) -> dict[str, float]:
        return {"none": self.p_none, "flip": self.p_flip, "rotate": self.p_rotate, "shift": self.p_shift,
                "scale": self.p_scale}

    def _check_across(self) -> None:
        probs = {f"p_{k}": v for k, v in self.probabilities().items()}
        _sums_to_one(probs, "probabilities must sum to 1 (exactly one op per sample)")


class CacheConfig(_Section):
    longest_side: PositiveInt = 1024  # images are stored resized so their longest side is this
    workers: NonNegativeInt = 2


class SplitConfig(_Section):
    train: Fraction = 0.70
    val: Fraction = 0.10
    test: Fraction = 0.20
    seed: StrictInt = 0

    def _check_across(self) -> None:
        _sums_to_one({"train": self.train, "val": self.val, "test": self.test}, "fractions must sum to 1")


class DataConfig(_Section):
    cache: CacheConfig = Field(default_factory=CacheConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    # Auxiliary training data: dataset folders whose every image, whatever split it carries,
    # joins the training images of every stage; never validation or test (`limbscan train --aux`).
    auxiliary: Annotated[
        tuple[StrictStr, ...], LIST,
        rule(lambda ps: all(p.strip() for p in ps), "a list of dataset folders", list),
    ] = ()
    # Share of each training batch drawn from the auxiliary images, 0 < share < 1, classes
    # balanced within each dataset; null: their natural share (every image once an epoch).
    auxiliary_share: Annotated[Number | None, rule(lambda s: s is None or 0 < s < 1, "in (0, 1), or null")] = None


class ClassifierConfig(_Section):
    """The CNN of the whole-image baseline and of the cascade's second stage."""

    backbone: StrictStr = "efficientnet_lite0"  # a name in limbscan.models.backbones
    pretrained: StrictBool = True  # ImageNet weights from a local source; never downloaded
    image_size: PositiveInt = 320  # whole-image input, square
    # letterbox: longest side to image_size, padded (keeps the aspect ratio); squash: resized to
    # image_size x image_size (every input pixel is image, the aspect ratio is lost).
    image_resize: Resize = "letterbox"
    tta_flip: StrictBool = False  # whole-image: average the probability of the image and its mirror
    crop_size: PositiveInt = 200  # cascade crop input, square (the paper's 200 x 200)
    crop_margin: NonNegativeNumber = 0.15  # share of the box's width / height added on each side
    top_k: PositiveInt = 1  # cascade: crops per image; image score from the best of them (see cascade_score)
    crop_jitter: NonNegativeNumber = 0.1  # cascade training: lesion boxes moved / resized by up to this share, like a detector's
    # Cascade training: also show each lesion inside a wider box, its size drawn from the
    # detector's boxes on normal images, so the crop's scale alone does not tell the label.
    context_crops: StrictBool = False
    # Cascade: start the crop classifier from ImageNet weights ("imagenet") or from this run's
    # trained whole-image classifier ("whole-image", which must be trained first).
    cascade_init: CascadeInit = "imagenet"
    # Cascade image score: "crop" (the paper's: the best crop's probability) or "geomean"
    # (sqrt of that times the detector's image score: an ensemble of the two stages).
    cascade_score: CascadeScore = "crop"
    dropout: Annotated[Number, rule(lambda d: 0 <= d < 1, "in [0, 1)")] = 0.2


class DetectorConfig(_Section):
    """Mask R-CNN (torchvision) on an FPN over a registry backbone; classes bg / normal / abnormal."""

    backbone: StrictStr = "efficientnet_lite0"
    pretrained: StrictBool = True
    fpn_channels: PositiveInt = 128
    min_size: PositiveInt = 384  # torchvision's GeneralizedRCNNTransform sizes
    max_size: PositiveInt = 512
    # Backbone stages left trainable (the stem is always frozen); the upper bound depends on the backbone.
    trainable_layers: NonNegativeInt = 3
    rpn_batch_size_per_image: PositiveInt = 128
    box_batch_size_per_image: PositiveInt = 128  # RoIs sampled per image for the box head
    rpn_pre_nms_top_n_train: PositiveInt = 1000  # torchvision's 2000 / 2000 cost ~18 % more per step here
    rpn_post_nms_top_n_train: PositiveInt = 500
    rpn_pre_nms_top_n_test: PositiveInt = 300
    rpn_post_nms_top_n_test: PositiveInt = 100
    box_detections_per_img: PositiveInt = 20
    masks: StrictBool = True


def _known_scenarios(value: str) -> str:
    from limbscan.scenarios import parse_scenarios  # torch-free; its error lists the names

    try:
        parse_scenarios(value)
    except LimbscanError as err:
        raise _passed_on(err) from None
    return value


class TrainConfig(_Section):
    scenario: Annotated[StrictStr, AfterValidator(_known_scenarios)] = "all"  # all, or a comma list of limbscan.scenarios names
    epochs: NonNegativeInt = 6  # whole-image and cascade classifiers
    detector_epochs: NonNegativeInt = 4
    batch_size: PositiveInt = 16
    detector_batch_size: PositiveInt = 2
    lr_backbone: NonNegativeNumber = 1e-3  # the paper: backbone (+ RPN) 1e-3 ...
    lr_heads: NonNegativeNumber = 1e-4  # ... heads 1e-4
    momentum: Annotated[Number, rule(lambda m: 0 <= m <= 1, "in [0, 1]")] = 0.9
    weight_decay: NonNegativeNumber = 1e-4
    warmup_steps: NonNegativeInt = 50
    schedule: Schedule = "cosine"  # cosine | step | constant (after warm-up) | onecycle
    optimizer: Optimizer = "sgd"  # sgd (momentum) | adamw
    balance: Balance = "sampler"  # sampler | loss | none (class imbalance)
    amp: StrictBool = True  # CUDA only
    channels_last: StrictBool = True  # CUDA: the whole model and batches (the CNN backbones always are)
    seed: StrictInt = 0
    workers: NonNegativeInt = 2  # DataLoader processes
    grad_clip: NonNegativeNumber = 10.0  # total L2 norm over all parameters; 0 turns clipping off
    max_steps_per_epoch: NonNegativeInt = 0  # 0 = the whole training split; > 0 for demos and tests
    tensorboard: StrictBool = False


class SearchConfig(_Section):
    """Random search: each key samples from its range; each trial trains on a short budget."""

    trials: NonNegativeInt = 8
    epochs: NonNegativeInt = 2
    lr_backbone: Span = (1e-4, 1e-2)  # log-uniform
    weight_decay: Span = (1e-6, 1e-3)  # log-uniform
    image_size: Annotated[
        tuple[StrictInt, ...], LIST,
        rule(lambda s: bool(s) and all(n > 0 for n in s), "a non-empty list of sizes > 0", list),
    ] = (256, 320, 384)
    crop_margin: Span0 = (0.0, 0.4)
    augment_strength: Span0 = (0.5, 2.0)  # multiplies rotate / shift / scale ranges


class FusionConfig(_Section):
    """The fused scenario: the other scenarios' scores of one image combined, fitted on the
    validation split (see :mod:`limbscan.train.stages.fused`)."""

    # "logistic": L2 logistic regression on the scores' logits; "rank": a weighted average of
    # their ranks among the validation scores, then Platt-scaled. Both are measured; this one is used.
    rule: FusionRule = "logistic"
    C: PositiveNumber = 1.0  # inverse L2 strength (scikit-learn's C): on the logits (logistic), the standardised average (rank)
    folds: Annotated[StrictInt, Field(ge=2)] = 5  # stratified k-fold within the validation split (fewer where a class has fewer images)
    repeats: PositiveInt = 10  # of the k-fold, reshuffled, for the cross-validated AUC's mean and sd


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    # Per-scenario overrides of the keys above, e.g. ``{"whole-image": {"train": {"optimizer":
    # "adamw"}}}`` or dotted ``{"whole-image": {"train.optimizer": "adamw"}}``: that scenario's
    # stage trains (and its checkpoint records) the config with them applied (:func:`stage_config`).
    stages: Annotated[dict[str, Annotated[dict[str, Any], STR_KEYS]], STR_KEYS] = Field(default_factory=dict)

    def _check_across(self) -> None:
        from limbscan.scenarios import info  # torch-free; its error lists the names

        for name in self.stages:
            try:
                info(name)
            except LimbscanError as err:
                raise whole_error(f"stages.{name}: {err}", verbatim=True) from None
            try:
                stage_config(self, name)
            except LimbscanError as err:
                raise _passed_on(err) from None


def _validate(cls: type[_Section], tree: Any, where: str = "", from_text: bool = True) -> Any:
    try:
        return cls.model_validate(tree, context={FROM_TEXT: from_text})
    except ValidationError as err:
        raise LimbscanError(f"config: {one_line(err, cls, where)}") from None


def _home(cls: type, root: type | None = None, where: str = "") -> str:
    """The dotted key a section class sits at in :class:`Config` (``AugmentConfig`` -> data.augment)."""
    for name, info in (root or Config).model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, _Section):
            key = f"{where}.{name}" if where else name
            found = key if info.annotation is cls else _home(cls, info.annotation, key)
            if found:
                return found
    return ""


def _fields(cfg: _Section) -> dict[str, Any]:
    """A config's values as they are, sections as dicts, for validating again."""
    return {name: _fields(v) if isinstance(v, _Section) else v
            for name, v in ((n, getattr(cfg, n)) for n in type(cfg).model_fields)}


def check_config(cfg: Any, where: str = "") -> Any:
    """Check every value of a Config, or of one section (``check_config(cfg.data.augment)``), and
    return it; a LimbscanError names the first bad key in full (data.augment.p_flip), the value and
    what is allowed. For a config changed in Python (assignment is not checked)."""
    if not isinstance(cfg, _Section):
        raise TypeError(f"check_config wants a config model, got {cfg!r}")
    _validate(type(cfg), _fields(cfg), where or _home(type(cfg)), from_text=False)
    return cfg


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


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LimbscanError(f"config: override {key} goes through a non-mapping value")
    node[parts[-1]] = value


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
        return _validate(Config, tree)
    except LimbscanError as err:
        raise LimbscanError(str(err).replace("config: ", f"config: stages.{name}: ", 1)) from None


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
    return _validate(Config, tree)


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

    return plain(config.model_dump(warnings=False))


def config_from_dict(tree: dict[str, Any]) -> Config:
    """A Config from :func:`config_to_dict`'s output (a run folder's or a bundle's), checked."""
    return _validate(Config, tree)


def save_config(config: Config, path: str | Path) -> Path:
    """Write the resolved config beside a run, so the run can be repeated from it."""
    from limbscan.utils.files import write_text_atomic

    path = Path(path)
    write_text_atomic(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return path
