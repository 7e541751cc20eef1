"""benchmarks.inference: picks a mixed image list, writes faithful DICOM copies, and a quick
run on a tiny bundle writes a complete JSON report. No timing is asserted: the numbers belong
to whatever machine runs it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import inference


def _fake_fracatlas(root: Path, fractured: int, normal: int) -> Path:
    """FracAtlas's folder layout with small noise images (grey and RGB, two sizes)."""
    rng = np.random.default_rng(0)
    for folder, count, start in (("Fractured", fractured, 100), ("Non_fractured", normal, 1)):
        (root / "images" / folder).mkdir(parents=True)
        for i in range(count):
            shape = (90, 70) if i % 2 else (64, 80)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            image = Image.fromarray(pixels) if i % 3 else Image.fromarray(np.dstack([pixels] * 3))
            image.save(root / "images" / folder / f"IMG{start + i:07d}.jpg", quality=90)
    return root


def test_pick_images_takes_from_both_folders_in_sorted_order(tmp_path):
    root = _fake_fracatlas(tmp_path / "fa", fractured=3, normal=5)
    picked = inference.pick_images(root, 4)
    assert [p.parent.name for p in picked].count("Fractured") == 2
    assert [p.name for p in picked] == sorted(p.name for p in picked)
    # Too few fractured ones: normal ones fill the list.
    assert len(inference.pick_images(root, 7)) == 7
    assert len(inference.pick_images(root, 50)) == 8


def test_dicom_copies_read_back_as_the_same_pixels(tmp_path):
    from limbscan.io.images import read_image

    root = _fake_fracatlas(tmp_path / "fa", fractured=2, normal=1)
    jpegs = inference.pick_images(root, 3)
    dicoms = inference.write_dicoms(jpegs, tmp_path / "dicom")
    for jpeg, dicom in zip(jpegs, dicoms, strict=True):
        a, _ = read_image(jpeg)
        b, meta = read_image(dicom)
        assert meta.format == "dicom" and meta.photometric == "MONOCHROME2" and meta.bits_stored == 8
        np.testing.assert_allclose(b, a, atol=1e-6)


def test_ratios_compare_each_row_with_torchvision_on_its_own_format():
    tv = inference.TORCHVISION
    rows = [
        {"scenario": tv, "format": "jpeg", "batch": 1, "images_per_s": 0.5},
        {"scenario": tv, "format": "dicom", "batch": 1, "images_per_s": 0.25},
        {
            "scenario": "cascade",
            "format": "jpeg",
            "batch": 1,
            "masks": True,
            "images_per_s": 5.0,
            "probabilities": [0.1, 0.9],
        },
        {
            "scenario": "cascade",
            "format": "dicom",
            "batch": 1,
            "masks": True,
            "images_per_s": 5.0,
            "probabilities": [0.1, 0.7],
        },
        {
            "scenario": "cascade",
            "format": "jpeg",
            "batch": 8,
            "masks": True,
            "images_per_s": 6.0,
            "probabilities": [0.15, 0.9],
        },
        {"scenario": "cascade", "format": "dicom", "batch": 8, "error": "boom"},
    ]
    inference.add_ratios(rows)
    assert [r["ratio_vs_torchvision"] for r in rows] == [1.0, 1.0, 10.0, 20.0, 12.0, None]
    assert rows[3]["max_abs_diff_vs_jpeg"] == pytest.approx(0.2)
    assert rows[4]["max_abs_diff_vs_batch1"] == pytest.approx(0.05)
    assert "max_abs_diff_vs_jpeg" not in rows[2] and all("probabilities" not in r for r in rows)


def test_torchvision_peer_reads_both_formats_and_reports_memory(tmp_path):
    jpegs = inference.pick_images(_fake_fracatlas(tmp_path / "fa", fractured=0, normal=1), 1)
    dicoms = inference.write_dicoms(jpegs, tmp_path / "dicom")
    for fmt, paths in (("jpeg", jpegs), ("dicom", dicoms)):
        # In-process and at 64 px: the peer's code path, not its speed (the script runs it at 800).
        spec = {"paths": [str(p) for p in paths], "format": fmt, "batch": 1, "threads": 1, "size": [64, 64]}
        result = inference.measure_torchvision(spec)
        assert result["images"] == 1 and result["seconds"] > 0 and result["peak_rss_mb"] > 0
        assert 0 <= result["detections_per_image"] <= 100  # torchvision's box_detections_per_img


def test_quick_run_on_a_tiny_bundle_writes_a_full_report(tiny_run, tmp_path):
    from limbscan.bundle import export_bundle

    bundle = export_bundle(tiny_run[1], tmp_path / "tiny.limbscan")
    root = _fake_fracatlas(tmp_path / "fa", fractured=2, normal=2)
    out = tmp_path / "inference.json"
    # One scenario, one batch size, no torchvision (tested above): two child processes, each
    # paying torch's import, which is most of this test's time.
    report = inference.main(
        [
            "--bundle",
            str(bundle),
            "--fracatlas",
            str(root),
            "--quick",
            "--scenarios",
            "cascade",
            "--batch-sizes",
            "2",
            "--threads",
            "1",
            "--no-torchvision",
            "--out",
            str(out),
        ]
    )

    assert json.loads(out.read_text()) == report
    assert report["n"] == 3 and report["machine"]["threads"] == 1 and report["machine"]["cpu_count"] >= 1
    rows = report["rows"]
    assert not [r for r in rows if "error" in r], rows
    # Each format: the scenario asked for with the input gate, the default without it, the gate alone.
    assert [(r["scenario"], r["format"], r["batch"], r["gate"]) for r in rows] == [
        ("cascade", "jpeg", 2, True), ("cascade", "jpeg", 1, False), ("input gate alone", "jpeg", 1, True),
        ("cascade", "dicom", 2, True), ("cascade", "dicom", 1, False), ("input gate alone", "dicom", 1, True)]
    for row in rows:
        assert row["images"] == 3 and row["images_per_s"] > 0 and row["seconds"] > 0 and row["peak_rss_mb"] > 0
        assert row["ratio_vs_torchvision"] is None  # no peer in this run
    # The fake FracAtlas holds drawings: the gate refuses them, by pixels in both formats (the
    # secondary captures say Modality OT, which leaves the decision to the pixels).
    assert rows[2]["in_scope"] == rows[5]["in_scope"] == 0
    assert rows[4]["max_abs_diff_vs_jpeg"] < 1e-4  # same pixels, same scores (without the gate)


def test_profile_rows_come_from_cprofile_and_print(capsys):
    import cProfile
    import pstats

    from benchmarks import inference_profile as profile

    prof = cProfile.Profile()
    prof.runcall(profile._short, "/x/site-packages/PIL/ImageFile.py")
    steps, functions = profile._pstats_rows(pstats.Stats(prof))
    assert steps == [] and any("_short" in f["function"] for f in functions)
    assert profile._short("/a/src/limbscan/io/images.py") == "limbscan/io/images.py"
    profile.print_profile({"error": "boom"})
    part = {"part": "backbone", "calls": 1, "seconds": 0.5, "share": 0.5}
    profile.print_profile({"scenario": "cascade", "masks": True, "images": 2, "threads": 1, "wall_s": 1.0,
                           "images_per_s": 2.0, "peak_rss_mb": 300.0, "modules": [part], "steps": [],
                           "top_functions": [], "top_ops": []})
    shown = capsys.readouterr().out
    assert "profile failed: boom" in shown and "backbone" in shown and "2.00 images/s" in shown
