import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from limbscan.config import AugmentConfig, Config, check_config, config_from_dict, config_to_dict, load_config
from limbscan.errors import LimbscanError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
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


@pytest.mark.parametrize(
    "override, words",
    [
        ("classifier.cascade_score=geomen", "classifier.cascade_score 'geomen' is not one of crop, geomean"),
        ("classifier.cascade_init=coco", "classifier.cascade_init 'coco' is not one of imagenet, whole-image"),
        ("train.schedule=cosin", "train.schedule 'cosin' is not one of cosine, step, constant"),
        ("train.balance=sampeler", "train.balance 'sampeler' is not one of sampler, loss, none"),
        ("train.balance=false", "train.balance False is not one of sampler, loss, none"),
        ("train.scenario=mask-rcnn", "train.scenario 'mask-rcnn': use all or one of whole-image, detector, cascade"),
        ("train.scenario=detector,casade", "train.scenario 'detector,casade': use all or one of whole-image"),
        ("train.epochs=six", "train.epochs 'six' must be an integer"),
        ("train.epochs=6.5", "train.epochs 6.5 must be an integer"),
        ("train.batch_size=true", "train.batch_size True must be an integer"),  # a bool is not an int
        ("train.amp=1", "train.amp 1 must be true or false"),
        ("train.lr_heads=fast", "train.lr_heads 'fast' must be a number"),
        ("classifier.backbone=3", "classifier.backbone 3 must be a string"),
        ("train.epochs=-1", "train.epochs -1 must be >= 0"),
        ("train.batch_size=0", "train.batch_size 0 must be > 0"),
        ("train.momentum=1.5", "train.momentum 1.5 must be in [0, 1]"),
        ("data.cache.longest_side=0", "data.cache.longest_side 0 must be > 0"),
        ("classifier.crop_size=-200", "classifier.crop_size -200 must be > 0"),
        ("detector.min_size=0", "detector.min_size 0 must be > 0"),
        ("data.augment.p_flip=-0.05", "data.augment.p_flip -0.05 must be a probability in [0, 1]"),
        ("data.augment.p_none=0.7", "data.augment probabilities must sum to 1"),
        ("data.augment.scale_range=[1.2, 0.8]", "data.augment.scale_range (1.2, 0.8) must be 0 < low <= high"),
        ("data.augment.scale_range=0.9", "data.augment.scale_range 0.9 must be a list of 2 values, each a number"),
        ("data.split.test=0.3", "data.split fractions must sum to 1"),
        ("search.lr_backbone=[0, 0.01]", "search.lr_backbone (0, 0.01) must be 0 < low <= high"),
        ("search.image_size=[]", "search.image_size [] must be a non-empty list"),
        ("data.auxiliary_share=1", "data.auxiliary_share 1 must be in (0, 1), or null"),
        ("data.auxiliary_share=0", "data.auxiliary_share 0 must be in (0, 1), or null"),
        ("data.auxiliary_share=half", "data.auxiliary_share 'half' must be a number or null"),
        ("data.auxiliary=ds/aux", "data.auxiliary 'ds/aux' must be a list, each a string"),
        ("data.auxiliary=[ds/aux, '']", "data.auxiliary ['ds/aux', ''] must be a list of dataset folders"),
        ("search.image_size=[256, big]", "search.image_size[1] 'big' must be an integer"),
    ],
)
def test_bad_values_are_errors_naming_key_value_and_allowed(override, words):
    with pytest.raises(LimbscanError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert message.startswith("config: ") and "\n" not in message
    assert words in message


def test_bad_value_in_a_yaml_file_is_caught_at_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  scenario: all\n  schedule: cosin\n")
    with pytest.raises(LimbscanError, match="train.schedule 'cosin' is not one of cosine, step, constant"):
        load_config(path)


def test_yaml_exponent_numbers_become_floats():
    # PyYAML (YAML 1.1) reads 1e-3 without a dot as the string '1e-3'.
    assert yaml.safe_load("x: 1e-3") == {"x": "1e-3"}
    cfg = load_config(None, ["train.lr_backbone=1e-3", "train.weight_decay=5E-5", "search.lr_backbone=[1e-5, 1e-1]"])
    assert cfg.train.lr_backbone == 0.001 and isinstance(cfg.train.lr_backbone, float)
    assert cfg.train.weight_decay == 5e-5
    assert cfg.search.lr_backbone == (1e-5, 0.1)
    with pytest.raises(LimbscanError, match="train.epochs '1e3' must be an integer"):
        load_config(None, ["train.epochs=1e3"])  # numeric strings only where a float is declared


def test_valid_overrides_still_work_and_lists_become_tuples():
    cfg = load_config(
        REPO / "configs" / "cpu.yaml",
        ["train.schedule=step", "train.balance=none", "classifier.cascade_score=crop",
         "classifier.cascade_init=whole-image", "train.scenario=cascade,detector", "train.lr_heads=1",
         "search.image_size=[128, 160]", "data.split.train=0.6", "data.split.test=0.3"],
    )
    assert (cfg.train.schedule, cfg.train.balance, cfg.train.scenario) == ("step", "none", "cascade,detector")
    assert cfg.classifier.cascade_init == "whole-image" and cfg.train.lr_heads == 1  # an int where a float is declared
    assert cfg.search.image_size == (128, 160) and isinstance(cfg.search.image_size, tuple)
    assert isinstance(cfg.data.augment.scale_range, tuple)


def test_auxiliary_data_keys_default_to_none_and_round_trip():
    assert (Config().data.auxiliary, Config().data.auxiliary_share) == ((), None)
    cfg = load_config(None, ["data.auxiliary=[ds/hand, ds/shoulder]", "data.auxiliary_share=0.25"])
    assert cfg.data.auxiliary == ("ds/hand", "ds/shoulder") and cfg.data.auxiliary_share == 0.25
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert load_config(None, ["data.auxiliary=[]", "data.auxiliary_share=null"]).data == Config().data


def test_config_from_dict_checks_values_and_round_trips():
    cfg = load_config(REPO / "configs" / "paper.yaml")
    assert config_from_dict(config_to_dict(cfg)) == cfg
    tree = config_to_dict(cfg)
    tree["train"]["schedule"] = "linear"
    with pytest.raises(LimbscanError, match="train.schedule 'linear' is not one of cosine, step, constant"):
        config_from_dict(tree)


def test_check_config_checks_a_config_changed_in_python():
    cfg = Config()
    assert check_config(cfg) is cfg
    cfg.train.schedule = "cosin"  # assignment is not checked ...
    with pytest.raises(LimbscanError, match="train.schedule 'cosin' is not one of cosine, step, constant"):
        check_config(cfg)  # ... check_config is
    cfg = Config()
    cfg.train.lr_backbone = "1e-3"  # from Python a string is a mistake, not YAML's reading of a number
    with pytest.raises(LimbscanError, match="train.lr_backbone '1e-3' must be a number"):
        check_config(cfg)
    # A section alone is named by its place in Config, changed in Python ...
    augment = AugmentConfig()
    augment.p_flip = -0.1
    with pytest.raises(LimbscanError, match="data.augment.p_flip -0.1 must be a probability"):
        check_config(augment)
    # ... or built in Python, which checks it.
    with pytest.raises(LimbscanError, match="data.augment.p_flip -0.1 must be a probability"):
        AugmentConfig(p_flip=-0.1)
    with pytest.raises(LimbscanError, match="unknown key data.augment.p_flop"):
        AugmentConfig(p_flop=0.1)


def test_a_saved_config_reads_as_written():
    # An int in a number field stays an int, so a run folder's config.yaml round-trips unchanged.
    cfg = load_config(None, ["fusion.C=2", "train.lr_heads=1e-3"])
    tree = config_to_dict(cfg)
    assert type(tree["fusion"]["C"]) is int and type(tree["train"]["lr_heads"]) is float
    assert yaml.safe_dump(config_to_dict(config_from_dict(tree))) == yaml.safe_dump(tree)


def test_importing_config_does_not_import_torch():
    code = "import limbscan.config, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
