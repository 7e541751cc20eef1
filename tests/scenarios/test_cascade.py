"""The cascade's image score from its best crop and the detector's image score."""

from __future__ import annotations

import pytest

from limbscan.errors import LimbscanError
from limbscan.scenarios.cascade import cascade_score


def test_cascade_score_rules():
    assert cascade_score(0.8, 0.2, "crop") == pytest.approx(0.8)
    assert cascade_score(0.8, 0.2, "geomean") == pytest.approx(0.4)
    assert cascade_score(0.8, 0.0, "geomean") == 0.0
    with pytest.raises(LimbscanError, match="cascade score rule 'max'"):
        cascade_score(0.8, 0.2, "max")


def test_a_checkpoint_without_its_score_rule_is_refused_by_name():
    from limbscan.scenarios.cascade import rule_of

    assert rule_of({"cascade_score": "geomean"}) == "geomean"
    with pytest.raises(LimbscanError, match="m.limbscan/cascade/best.pt: records no 'cascade_score'; retrain the "
                                            "cascade stage .* and export the bundle again"):
        rule_of({"top_k": 2}, "m.limbscan/cascade/best.pt")
