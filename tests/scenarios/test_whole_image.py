"""The whole-image scenario loads the input settings its checkpoint records, and names one it lacks."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn

from limbscan.errors import LimbscanError
from limbscan.scenarios.whole_image import WholeImageScenario


def _store(extra: dict) -> SimpleNamespace:
    model = nn.Identity()
    return SimpleNamespace(classifier=lambda name: (model, extra), classify=lambda name: model,
                           folder=SimpleNamespace(best=lambda name: Path("m.limbscan") / name / "best.pt"))


def test_load_takes_resize_and_mirroring_from_the_checkpoint():
    extra = {"input_size": 64, "cache_side": 160, "image_resize": "squash", "tta_flip": True}
    scenario = WholeImageScenario.load(_store(extra))
    assert scenario.settings() == {"input_size": 64, "image_resize": "squash", "tta_flip": True}


@pytest.mark.parametrize("missing", ["image_resize", "tta_flip"])
def test_a_checkpoint_without_a_setting_is_refused_by_name(missing):
    extra = {"input_size": 64, "cache_side": 160, "image_resize": "letterbox", "tta_flip": False}
    del extra[missing]
    with pytest.raises(LimbscanError, match=f"whole-image/best.pt: records no '{missing}'; retrain the whole-image "
                                            "stage .* and export the bundle again"):
        WholeImageScenario.load(_store(extra))
