"""benchmarks.train_speed: a quick run on the tiny phantom dataset times every network in
both memory formats and writes its JSON report. No timing is asserted: the numbers belong to
whatever machine runs it."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import train_speed

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_times_each_network_in_both_formats(tiny_run, tmp_path):
    out = tmp_path / "train_speed.json"
    tiny = ["classifier.backbone=mobilenetv3_small_050", "classifier.pretrained=false",
            "detector.backbone=mobilenetv3_small_050", "detector.pretrained=false",
            "classifier.image_size=48", "classifier.crop_size=32", "stages.whole-image.classifier.image_size=48",
            "detector.min_size=64", "detector.max_size=96", "train.batch_size=2"]
    report = train_speed.main([str(tiny_run[0]), "--config", str(ROOT / "configs" / "cpu.yaml"), *tiny,
                         "--steps", "1", "--warmup", "0", "--repeats", "1", "--threads", "1",
                         "--skip-torchvision", "--out", str(out)])

    assert json.loads(out.read_text()) == report
    rows = {(r["model"], r["memory_format"]): r for r in report["rows"]}
    models = {"whole-image classifier (48 px)", "crop classifier (32 px)", "detector"}
    assert set(rows) == {(m, f) for m in models for f in ("channels-last", "contiguous")}
    for m in models:
        assert all(r["images_per_s"] > 0 for (name, _), r in rows.items() if name == m)
        assert rows[(m, "channels-last")]["x_contiguous"] > 0
    assert report["machine"]["threads"] == 1
