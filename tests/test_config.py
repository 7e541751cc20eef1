from pathlib import Path

import pytest

from limbscan.config import AugmentConfig, Config, load_config
from limbscan.errors import LimbscanError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["cpu.yaml", "paper.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, Config)
    assert sum(cfg.data.augment.probabilities().values()) == pytest.approx(1.0)
    assert cfg.data.split.train + cfg.data.split.val + cfg.data.split.test == pytest.approx(1.0)
    assert isinstance(cfg.data.augment.scale_range, tuple)


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(None, ["data.cache.longest_side=512", "data.augment.scale_range=[0.5, 2]"])
    assert cfg.data.cache.longest_side == 512
    assert cfg.data.augment.scale_range == (0.5, 2)
    assert cfg.data.split == Config().data.split


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  cache:\n    longest_sid: 3\n")
    with pytest.raises(LimbscanError, match="data.cache.longest_sid"):
        load_config(path)
    with pytest.raises(LimbscanError, match="key=value"):
        load_config(None, ["data.cache.workers"])


def test_missing_and_broken_files_name_the_file(tmp_path):
    with pytest.raises(LimbscanError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(LimbscanError, match="bad.yaml"):
        load_config(bad)


def test_paper_policy_is_the_default():
    probs = AugmentConfig().probabilities()
    assert probs == {"none": 0.8, "flip": 0.05, "rotate": 0.05, "shift": 0.05, "scale": 0.05}
