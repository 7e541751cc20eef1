"""``limbscan data ...`` and ``limbscan anonymize`` (limbscan.cli.data), end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def test_synth_split_stats_cache(cli, tmp_path):
    ds = tmp_path / "ds"
    cli("data", "synth", "-o", ds, "-n", "30", "--seed", "1", "-q")
    cli("data", "split", ds, "--seed", "1")
    stats = json.loads(cli("data", "stats", ds, "--json").stdout)
    assert stats["n_images"] == 30 and stats["synthetic"] is True
    assert sum(s["n_images"] for s in stats["by_split"].values()) == 30
    assert stats["by_split"]["unsplit"]["n_images"] == 0
    assert stats["by_split"]["train"]["n_images"] > stats["by_split"]["test"]["n_images"] > 0
    proc = cli("data", "cache", ds, "--longest-side", "128", "-q")
    assert "30 decoded" in proc.stdout
    assert "30 reused" in cli("data", "cache", ds, "--longest-side", "128", "-q").stdout
    report = tmp_path / "report.md"
    cli("data", "stats", ds, "--markdown", report)
    assert "SYNTHETIC" in report.read_text()


def test_empty_folder_is_one_clear_error(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = cli("data", "import", "folder", empty, "-o", tmp_path / "ds", ok=False)
    assert proc.returncode == 1
    assert "error" in proc.stderr and "empty" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_files_are_listed_and_the_rest_imported(cli, tmp_path):
    root = tmp_path / "root" / "knee"
    for label in ("normal", "abnormal"):
        (root / label).mkdir(parents=True)
        Image.fromarray((np.random.default_rng(0).random((40, 30)) * 255).astype(np.uint8)).save(root / label / "a.png")
    (root / "normal" / "broken.dcm").write_bytes(b"this is not a DICOM file")
    proc = cli("data", "import", "folder", tmp_path / "root", "-o", tmp_path / "ds", "-q")
    assert "broken.dcm" in proc.stderr
    stats = json.loads(cli("data", "stats", tmp_path / "ds", "--json").stdout)
    assert (stats["n_normal"], stats["n_abnormal"]) == (1, 1)
    report = json.loads((tmp_path / "ds" / "import_report.json").read_text())
    assert [Path(s["path"]).name for s in report["skipped"]] == ["broken.dcm"]


def test_anonymize_with_nothing_usable_fails(cli, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.dcm").write_bytes(b"\0" * 10)
    proc = cli("anonymize", tmp_path / "in", "-o", tmp_path / "out", "-q", ok=False)
    assert proc.returncode == 1
    assert "x.dcm" in proc.stderr


@pytest.mark.realdata
def test_fracatlas_import_and_split(cli, fracatlas_root, tmp_path):
    ds = tmp_path / "fa"
    proc = cli("data", "import", "fracatlas", fracatlas_root, "-o", ds, "-q")
    stats = json.loads(cli("data", "stats", ds, "--json").stdout)
    assert stats["n_abnormal"] == 180
    # every kept truncated JPEG is named in a warning
    assert proc.stderr.count("truncated") >= stats["n_truncated"]
    assert stats["n_normal"] == 1000
    cli("data", "split", ds, "--seed", "0")
    stats = json.loads(cli("data", "stats", ds, "--json").stdout)
    for label, n in (("n_normal", 1000), ("n_abnormal", 180)):
        shares = [stats["by_split"][s][label] / n for s in ("train", "val", "test")]
        assert shares == pytest.approx([0.7, 0.1, 0.2], abs=0.02)
