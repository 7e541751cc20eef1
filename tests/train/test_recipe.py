"""Per-scenario config overrides, the whole-image input (squash, mirrored test-time average) and
the cross-hospital augmentation (AdamW and one-cycle: test_optim.py)."""

from __future__ import annotations

import math

import pytest
import torch

from limbscan.config import AugmentConfig, Config, load_config, stage_config
from limbscan.data.augment import PaperAugment
from limbscan.data.geometry import letterbox, square_input, squash
from limbscan.data.split import split_dataset
from limbscan.data.synth import synthesize
from limbscan.errors import LimbscanError
from limbscan.models.loading import load_checkpoint
from limbscan.rundir import RunDir
from limbscan.scenarios.base import Batch, ImageInput
from limbscan.scenarios.whole_image import WholeImageScenario
from limbscan.train.runner import train

# -- per-scenario overrides -----------------------------------------------------------------


def test_stage_overrides_apply_to_their_scenario_alone():
    cfg = load_config(None, ["stages.whole-image.train.optimizer=adamw", "stages.whole-image.train.epochs=3"])
    whole = stage_config(cfg, "whole-image")
    assert (whole.train.optimizer, whole.train.epochs) == ("adamw", 3)
    assert stage_config(cfg, "detector") is cfg and cfg.train.optimizer == "sgd"
    assert whole.stages == {}  # the stage's own config holds no further overrides
    # dotted keys inside a stage's mapping mean the same as nested ones
    dotted = Config(stages={"whole-image": {"train.optimizer": "adamw", "train.epochs": 3}})
    assert stage_config(dotted, "whole-image").train == whole.train


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.whole-image.train.optimiser=adamw", r"stages\.whole-image: unknown key train\.optimiser"),
        ("stages.whole-image.train.optimizer=adam", r"stages\.whole-image: train\.optimizer 'adam' is not one of"),
        ("stages.wholeimage.train.epochs=1", r"stages\.wholeimage: unknown scenario"),
        ("stages.detector.data.cache.longest_side=512", r"stages\.detector\.data\.cache\.longest_side: every stage"),
        ("stages.cascade.train.scenario=all", r"every stage of a run shares"),
        ("data.augment.p_invert=1.5", r"data\.augment\.p_invert 1\.5 must be a probability"),
        ("data.augment.gamma_range=[2, 1]", r"gamma_range .* 0 < low <= high"),
        ("classifier.image_resize=crop", r"classifier\.image_resize 'crop' is not one of letterbox, squash"),
        ("train.schedule=one-cycle", r"onecycle"),
    ],
)
def test_bad_overrides_are_refused_at_load_naming_the_key(override, message):
    with pytest.raises(LimbscanError, match=message):
        load_config(None, [override])


# -- augmentation ---------------------------------------------------------------------------


def _untouched_policy(**extra) -> AugmentConfig:
    return AugmentConfig(p_none=1.0, p_flip=0.0, p_rotate=0.0, p_shift=0.0, p_scale=0.0, **extra)


def test_source_augmentation_is_off_by_default():
    aug = PaperAugment(_untouched_policy())
    x = torch.rand(1, 30, 40)
    for _ in range(20):
        y, _ = aug(x, {"boxes": torch.zeros((0, 4))})
        assert torch.equal(y, x) and aug.source.last == []


def test_invert_flip_gamma_and_contrast_change_the_pixels_as_named():
    x = torch.rand(1, 30, 40)
    y, _ = PaperAugment(_untouched_policy(p_invert=1.0))(x, {})
    assert torch.allclose(y, 1 - x)
    y, _ = PaperAugment(_untouched_policy(p_hflip=1.0))(x, {})
    assert torch.equal(y, x.flip(-1))
    torch.manual_seed(0)
    aug = PaperAugment(_untouched_policy(p_source=1.0, gamma_range=(2.0, 2.0), contrast_range=(0.5, 0.5),
                                         aspect_range=(1.0, 1.0)))
    seen = set()
    for _ in range(30):
        y, _ = aug(x, {})
        (kind,) = aug.source.last
        seen.add(kind)
        if kind == "gamma":
            assert torch.allclose(y, x**2, atol=1e-6)
        elif kind == "contrast":
            assert torch.allclose(y, (0.5 * x + 0.5 * x.mean()).clamp(0, 1), atol=1e-5)
    assert seen == {"aspect", "gamma", "contrast"}


def test_an_aspect_stretch_moves_the_lesion_box_with_the_lesion():
    torch.manual_seed(1)
    x = torch.zeros(1, 60, 80)
    x[:, 20:30, 40:60] = 1.0  # the "lesion"
    aug = PaperAugment(_untouched_policy(p_source=1.0, aspect_range=(1.6, 1.6), gamma_range=(1.0, 1.0),
                                         contrast_range=(1.0, 1.0)))
    for _ in range(20):
        y, t = aug(x, {"boxes": torch.tensor([[40.0, 20.0, 60.0, 30.0]]), "masks": (x > 0.5).to(torch.uint8)})
        if aug.source.last == ["aspect"]:
            break
    assert aug.source.last == ["aspect"]
    h, w = y.shape[-2:]
    assert w / h == pytest.approx(1.6 * 80 / 60, rel=0.03)  # width / height stretched by the ratio
    x0, y0, x1, y1 = t["boxes"][0].tolist()
    bright = (y[0] > 0.5).nonzero()
    assert (bright[:, 1].min().item(), bright[:, 0].min().item()) == pytest.approx((x0, y0), abs=1.5)
    assert (bright[:, 1].max().item() + 1, bright[:, 0].max().item() + 1) == pytest.approx((x1, y1), abs=1.5)
    assert t["masks"].shape[-2:] == y.shape[-2:]


# -- the whole-image input ------------------------------------------------------------------


def test_squash_fills_the_square_and_letterbox_pads_it():
    x = torch.rand(1, 40, 80)
    assert squash(x, 32).shape == (1, 32, 32) and (squash(x, 32) > 0).float().mean() > 0.99
    assert torch.equal(square_input(x, 32, "letterbox"), letterbox(x, 32))
    assert (letterbox(x, 32)[:, :4] == 0).all()  # the padding band
    with pytest.raises(ValueError, match="letterbox or squash"):
        square_input(x, 32, "crop")


class _LeftBright(torch.nn.Module):
    """logit = mean of the left half minus the right half: a mirror changes it."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        half = x.shape[-1] // 2
        return (x[..., :half].mean((1, 2, 3)) - x[..., half:].mean((1, 2, 3))) * 10


def test_mirrored_test_time_average_is_the_mean_of_both_probabilities():
    pixels = torch.zeros(1, 40, 40)
    pixels[..., :20] = 1.0
    batch = Batch([ImageInput(pixels, 40, 40)])
    plain = WholeImageScenario(_LeftBright(), 32, 160).score(batch)[0].score
    mirrored = WholeImageScenario(_LeftBright(), 32, 160, tta_flip=True).score(batch)[0].score
    assert plain > 0.99
    assert mirrored == pytest.approx((plain + (1 - plain)) / 2)  # sigmoid(-z) = 1 - sigmoid(z)


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, tiny_config_factory):
    root = tmp_path_factory.mktemp("recipe_ds")
    ds = split_dataset(synthesize(root, n=24, seed=3, abnormal_fraction=0.5, progress=False), Config().data.split)
    ds.save()
    cfg = tiny_config_factory()
    cfg.train.scenario = "whole-image,detector"
    cfg.train.epochs = cfg.train.detector_epochs = 1
    cfg.stages = {"whole-image": {
        "train": {"optimizer": "adamw", "schedule": "onecycle", "balance": "loss", "lr_backbone": 5e-4,
                  "lr_heads": 5e-4, "weight_decay": 0.01},
        "classifier": {"image_resize": "squash", "tta_flip": True},
        "data.augment.p_hflip": 0.5,
    }}
    out = tmp_path_factory.mktemp("recipe_run")
    train(root, cfg, out, progress=False)
    return root, out


def test_a_stage_trains_and_records_its_own_overrides(recipe_run):
    _, out = recipe_run
    run = RunDir(out)
    whole, detector = load_checkpoint(run.best("whole-image")), load_checkpoint(run.best("detector"))
    assert whole["config"]["train"]["optimizer"] == "adamw" and whole["config"]["train"]["schedule"] == "onecycle"
    assert whole["config"]["data"]["augment"]["p_hflip"] == 0.5
    assert detector["config"]["train"]["optimizer"] == "sgd" and detector["config"]["data"]["augment"]["p_hflip"] == 0
    assert whole["extra"]["image_resize"] == "squash" and whole["extra"]["tta_flip"] is True
    opt_state = load_checkpoint(run.last("whole-image"))["optimizer"]
    assert "exp_avg" in next(iter(opt_state["state"].values()))  # AdamW's moments, not SGD's momentum


def test_the_scenario_loaded_from_the_run_scores_as_it_was_trained(recipe_run):
    from limbscan.scenarios.base import ModelStore

    _, out = recipe_run
    scenario = WholeImageScenario.load(ModelStore(out))
    assert (scenario.input_resize, scenario.tta_flip) == ("squash", True)
    pixels = torch.rand(1, 50, 70)
    got = scenario.score(Batch([ImageInput(pixels, 70, 50)]))[0].score
    scenario.classifier.eval()
    with torch.no_grad():
        x = squash(pixels, scenario.input_size)[None]
        want = (torch.sigmoid(scenario.classifier(x)) + torch.sigmoid(scenario.classifier(x.flip(-1)))) / 2
    assert got == pytest.approx(float(want), abs=1e-6)
    assert not math.isnan(got)
