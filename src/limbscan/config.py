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
class Config:
    data: DataConfig = field(default_factory=DataConfig)


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
    return dataclasses.asdict(config)
