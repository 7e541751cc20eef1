from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from limbscan.errors import LimbscanError
from limbscan.operating_points import level_of
from limbscan.predict import WORKLIST_COLUMNS, collect_inputs, run_predict

# Names like the ones hospital exports carry: none may reach an output's name.
IDENTIFYING = ["Doe^John_123456", "Roe^Jane_654321", "Poe^Ann_777", "Moe^Max_888"]


@pytest.fixture(scope="module")
def bundle(tiny_bundle) -> Path:
    return tiny_bundle


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def inputs(tiny_run, tmp_path_factory) -> Path:
    """Two PNG and two DICOM phantoms under identifying names (one in a sub-folder), a note
    the folder walk must skip, and three bad files: a corrupt PNG, a truncated DICOM, a .txt."""
    root = tmp_path_factory.mktemp("inputs")
    images = sorted((tiny_run[0] / "images").iterdir())
    pngs = [p for p in images if p.suffix == ".png"][:2]
    dcms = [p for p in images if p.suffix == ".dcm"][:2]
    folder = root / "scans"
    (folder / "ward b").mkdir(parents=True)
    for src, name in zip(pngs + dcms, IDENTIFYING, strict=True):
        dst = folder / ("ward b" if name.startswith("Poe") else "") / f"{name}{src.suffix}"
        shutil.copyfile(src, dst)
    (folder / "notes.md").write_text("not an image\n")
    bad = root / "bad"
    bad.mkdir()
    (bad / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    data = dcms[0].read_bytes()
    (bad / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (bad / "report.txt").write_text("patient report\n")
    return root


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _worklist(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def predicted(model, inputs, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("out")
    bad = inputs / "bad"
    summary = run_predict(model, [str(inputs / "scans"), str(bad / "corrupt.png"), str(bad / "truncated.dcm"),
                                  str(bad / "report.txt")], out, progress=False)
    return out, summary


def test_scores_the_good_files_and_lists_the_bad_with_a_reason(predicted, inputs):
    out, summary = predicted
    records = _jsonl(out / "predictions.jsonl")
    files = [r["file"] for r in records]
    assert len(files) == 4 and files == sorted(files)
    assert all(Path(f).parent.name in ("scans", "ward b") for f in files)  # notes.md skipped silently
    errors = {Path(e["file"]).name: e["error"] for e in _jsonl(out / "errors.jsonl")}
    assert set(errors) == {"corrupt.png", "truncated.dcm", "report.txt"}
    assert "PNG" in errors["corrupt.png"]
    assert "not a DICOM, PNG or JPEG" in errors["report.txt"]
    assert errors["truncated.dcm"]
    assert (summary.n_inputs, summary.n_scored, summary.n_errors) == (7, 4, 3)
    assert summary.n_abnormal == sum(r["label"] == "abnormal" for r in records)
    assert summary.n_suspected == sum(r["level"] == "suspected" for r in records)
    for r in records:
        assert r["scenario"] == summary.scenario == "cascade"
        assert r["label"] == ("abnormal" if r["probability"] >= r["threshold"] else "normal")
        assert r["level"] == level_of(r["probability"], r["threshold"], r["suspected_threshold"])
        assert (r["threshold"], r["suspected_threshold"]) == (summary.threshold, summary.suspected_threshold)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_scored"] == 4 and saved["bundle"]["default_scenario"] == "cascade"
    assert "files" not in saved["bundle"] and saved["seconds"] > 0
    assert not (out / ".parts").exists()


def test_same_scores_as_the_python_api(predicted, model):
    out, _ = predicted
    records = _jsonl(out / "predictions.jsonl")
    direct = model.predict([r["file"] for r in records])
    for r, p in zip(records, direct, strict=True):
        assert r["probability"] == pytest.approx(p.probability, abs=1e-6)
        assert r["width"] == p.width and r["height"] == p.height


def test_worklist_is_sorted_most_likely_abnormal_first(predicted):
    out, _ = predicted
    rows = _worklist(out / "worklist.csv")
    assert list(rows[0]) == ["rank", "file", "body_part", "probability", "label", "scenario", "n_detections",
                             "overlay", "level", "study", "not_analysed_because", "boxes_from"] == list(WORKLIST_COLUMNS)
    probabilities = [float(r["probability"]) for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    by_file = {r["file"]: r for r in _jsonl(out / "predictions.jsonl")}
    for row in rows:
        assert row["label"] == by_file[row["file"]]["label"]
        assert row["level"] == by_file[row["file"]]["level"]
        assert int(row["n_detections"]) == len(by_file[row["file"]]["detections"])


def test_worklist_predictions_and_summary_carry_all_three_levels(predicted, bundle, inputs, with_operating_points,
                                                                 tmp_path):
    out, _ = predicted
    p = sorted(float(r["probability"]) for r in _jsonl(out / "predictions.jsonl"))
    likely, suspected = (p[2] + p[3]) / 2, (p[0] + p[1]) / 2  # one likely, two suspected, one normal
    assert p[0] < suspected < p[1] and p[2] < likely < p[3]
    summary = run_predict(with_operating_points(bundle, likely, suspected), [str(inputs / "scans")], tmp_path,
                          progress=False)
    records = _jsonl(tmp_path / "predictions.jsonl")
    assert sorted(r["level"] for r in records) == ["likely", "normal", "suspected", "suspected"]
    rows = _worklist(tmp_path / "worklist.csv")
    assert [r["level"] for r in rows] == ["likely", "suspected", "suspected", "normal"]  # sorted by probability
    assert [r["label"] for r in rows] == ["abnormal", "normal", "normal", "normal"]
    assert (summary.threshold, summary.suspected_threshold) == (likely, suspected)
    assert (summary.n_abnormal, summary.n_suspected) == (1, 2)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert (saved["n_abnormal"], saved["n_suspected"], saved["n_normal"]) == (1, 2, 3)
    assert sum(part["n_suspected"] for part in saved["by_body_part"].values()) == 2


def test_overlays_are_pngs_of_the_image_with_the_top_box_in_red(predicted):
    out, _ = predicted
    for r in _jsonl(out / "predictions.jsonl"):
        with Image.open(out / r["overlay"]) as im:
            assert im.format == "PNG"
            rgb = np.asarray(im.convert("RGB"))
        assert rgb.shape == (r["height"], r["width"], 3)  # phantoms are under max_side: full size
        x0, y0, x1, y1 = (round(v) for v in r["detections"][0]["box"])
        x1, y1 = min(x1, r["width"]) - 1, min(y1, r["height"]) - 1
        # the whole bottom edge: a suspected or normal image's box is dashed or dotted (tests/test_overlay.py)
        bottom_edge = rgb[max(0, y1 - 2) : y1 + 1, x0 : x1 + 1]
        red = (bottom_edge[..., 0] > 200) & (bottom_edge[..., 1] < 60) & (bottom_edge[..., 2] < 60)
        assert red.any(), r["overlay"]


def test_no_output_is_named_after_an_input(predicted):
    out, _ = predicted
    names = [p.name for p in out.rglob("*")]
    assert names and not [n for n in names if any(part in n for part in ("Doe", "Roe", "Poe", "Moe", "corrupt"))]
    overlays = sorted(r["overlay"] for r in _jsonl(out / "predictions.jsonl"))
    assert overlays == sorted(f"overlays/{p.name}" for p in (out / "overlays").iterdir())
    assert all(re.fullmatch(r"overlays/\d{6}\.png", o) for o in overlays) and len(set(overlays)) == 4


def test_collect_inputs_expands_folders_and_globs_sorted_without_duplicates(inputs):
    scans = inputs / "scans"
    by_folder, errors = collect_inputs([str(scans)])
    assert errors == [] and len(by_folder) == 4 and by_folder == sorted(by_folder)
    by_glob, _ = collect_inputs([str(inputs / "**" / "*.dcm")])
    assert [Path(p).name for p in by_glob] == ["truncated.dcm", "Moe^Max_888.dcm", "Poe^Ann_777.dcm"]  # by path
    # The same files named three ways, twice over: each once.
    mixed, _ = collect_inputs([str(scans / "*.png"), str(scans), str(scans / "Doe^John_123456.png"),
                               str(scans / "." / "Doe^John_123456.png")])
    assert sorted(map(os.path.realpath, mixed)) == sorted(map(os.path.realpath, by_folder))
    assert len(mixed) == 4


def test_collect_inputs_refuses_nothing_to_score(tmp_path, inputs):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(LimbscanError, match="no DICOM, PNG or JPEG file in this folder"):
        collect_inputs([str(tmp_path / "empty")])
    with pytest.raises(LimbscanError, match="matches this pattern"):
        collect_inputs([str(tmp_path / "*.png")])
    with pytest.raises(LimbscanError, match="no input"):
        collect_inputs([])
    # The output folder inside an input folder is never scored (its overlays are PNGs).
    out = tmp_path / "mixed"
    shutil.copytree(inputs / "scans", out)
    (out / "result" / "overlays").mkdir(parents=True)
    shutil.copyfile(out / "Doe^John_123456.png", out / "result" / "overlays" / "000001.png")
    found, _ = collect_inputs([str(out)], exclude=out / "result")
    assert len(found) == 4 and not [f for f in found if "result" in f]


def test_gradcam_and_dicom_outputs(model, inputs, tmp_path):
    import highdicom as hd
    import pydicom

    from limbscan.io.dicom_out import LEVEL, LEVEL_CODES

    scans = inputs / "scans"
    files = [str(scans / "Doe^John_123456.png"), str(scans / "ward b" / "Poe^Ann_777.dcm")]
    out = tmp_path / "out"
    plain = run_predict(model, files, tmp_path / "plain", progress=False)
    summary = run_predict(model, files, out, gradcam=True, dicom_out=["sc", "sr"], progress=False)
    assert summary.n_scored == 2 and plain.n_scored == 2
    records = {Path(r["file"]).suffix: r for r in _jsonl(out / "predictions.jsonl")}
    assert "dicom" not in records[".png"]  # only DICOM inputs get DICOM outputs
    written = [out / p for p in records[".dcm"]["dicom"]]
    assert len(written) == 2 and all(p.parent == out / "dicom" for p in written)
    sop_classes = {pydicom.dcmread(p).SOPClassUID.name for p in written}
    assert any("Secondary Capture" in c for c in sop_classes) and any("SR" in c for c in sop_classes)
    (sr,) = [p for p in written if pydicom.dcmread(p).Modality == "SR"]
    group = hd.sr.srread(sr).content.get_image_measurement_groups()[0]
    (level,) = group.get_qualitative_evaluations(name=LEVEL)
    assert level.value == LEVEL_CODES[records[".dcm"]["level"]]  # the level predictions.jsonl gives
    for r in records.values():  # the heatmap changed the overlay
        a = np.asarray(Image.open(out / r["overlay"]).convert("RGB"))
        b = np.asarray(Image.open(tmp_path / "plain" / r["overlay"]).convert("RGB"))
        assert a.shape == b.shape and not np.array_equal(a, b)
    # A rerun into the same folder leaves no overlay of the earlier run behind.
    run_predict(model, files[:1], out, progress=False)
    assert [p.name for p in (out / "overlays").iterdir()] == [Path(records[".png"]["overlay"]).name]
    with pytest.raises(LimbscanError, match="Grad-CAM needs a classifier"):
        run_predict(model, files, tmp_path / "det", scenario="detector", gradcam=True, progress=False)
    with pytest.raises(LimbscanError, match="--dicom-out"):
        run_predict(model, files, tmp_path / "x", dicom_out=["pdf"], progress=False)


def test_cli_exit_code_says_whether_anything_was_scored(bundle, inputs, tmp_path):
    from typer.testing import CliRunner

    from limbscan.cli import app

    runner = CliRunner()
    good = runner.invoke(app, ["predict", str(bundle), str(inputs / "scans" / "*.png"), "-o", str(tmp_path / "a"),
                               "--no-overlays", "-q", "--batch-size", "2"])
    assert good.exit_code == 0, good.output
    assert "images scored" in good.output and "2" in good.output
    assert not (tmp_path / "a" / "overlays").exists()
    assert len(_worklist(tmp_path / "a" / "worklist.csv")) == 2
    bad = runner.invoke(app, ["predict", str(bundle), str(inputs / "bad" / "report.txt"), "-o", str(tmp_path / "b"),
                              "-q"])
    assert bad.exit_code == 1
    assert len(_jsonl(tmp_path / "b" / "errors.jsonl")) == 1


SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
from limbscan.predict import run_predict
run_predict(sys.argv[1], sys.argv[2:-1], sys.argv[-1], batch_size=1, progress=False)
"""


@pytest.mark.slow
def test_torchrun_shards_give_the_single_process_outputs(bundle, inputs, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / "dist"
    bad = inputs / "bad"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           str(bundle), str(inputs / "scans"), str(bad / "corrupt.png"), str(bad / "truncated.dcm"),
           str(bad / "report.txt"), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Batches of one on both sides: the detector pads a batch to its largest image, which moves
    # scores by ~1e-4, and sharding changes which images share a batch.
    single = tmp_path / "single"
    run_predict(bundle, cmd[-5:-1], single, batch_size=1, progress=False)
    a, b = _jsonl(single / "predictions.jsonl"), _jsonl(out / "predictions.jsonl")
    assert [r["file"] for r in a] == [r["file"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        assert ra["probability"] == pytest.approx(rb["probability"], abs=1e-5)
        assert ra["label"] == rb["label"] and ra["overlay"] == rb["overlay"]
    assert [r["file"] for r in _worklist(single / "worklist.csv")] == [r["file"] for r in _worklist(out / "worklist.csv")]
    assert _jsonl(single / "errors.jsonl") == _jsonl(out / "errors.jsonl")
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(p.name for p in (single / "overlays").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_scored"] == 4 and summary["options"]["world_size"] == 2
    assert not (out / ".parts").exists()


def test_a_folder_file_named_like_an_image_but_not_one_is_listed_not_skipped(model, inputs, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    good = inputs / "scans" / "Doe^John_123456.png"
    shutil.copyfile(good, scans / "good.png")
    (scans / "empty.dcm").write_bytes(b"")
    (scans / "noise.png").write_bytes(os.urandom(300))
    (scans / "text.JPG").write_text("a typed report, not a picture\n")
    (scans / "notes.md").write_text("not named like an image: passed over\n")
    found, errors = collect_inputs([str(scans)])
    assert [Path(f).name for f in found] == ["good.png"]
    problems = {Path(e["file"]).name: e["error"] for e in errors}
    assert set(problems) == {"empty.dcm", "noise.png", "text.JPG"}
    assert "empty file" in problems["empty.dcm"]
    assert "not a DICOM, PNG or JPEG" in problems["noise.png"] and "not a DICOM, PNG or JPEG" in problems["text.JPG"]
    # A pattern meets them the same way.
    _, by_glob = collect_inputs([str(scans / "*.png")])
    assert [Path(e["file"]).name for e in by_glob] == ["noise.png"]

    out = tmp_path / "out"
    summary = run_predict(model, [str(scans)], out, overlays=False, progress=False)
    assert (summary.n_inputs, summary.n_scored, summary.n_errors) == (4, 1, 3)
    assert {Path(e["file"]).name for e in _jsonl(out / "errors.jsonl")} == {"empty.dcm", "noise.png", "text.JPG"}

    # A folder holding only such files is scored (nothing) and listed, not refused as empty.
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.dcm").write_text("hello")
    summary = run_predict(model, [str(only_bad)], tmp_path / "out2", overlays=False, progress=False)
    assert (summary.n_scored, summary.n_errors) == (0, 1)
    assert "named like DICOM" in _jsonl(tmp_path / "out2" / "errors.jsonl")[0]["error"]


def _record(index, probability, study=None, reason=None):
    level = "out_of_scope" if probability is None else ("likely" if probability >= 0.5 else "normal")
    return {"index": index, "file": f"f{index}.dcm", "probability": probability, "level": level,
            "label": level if probability is None else ("abnormal" if probability >= 0.5 else "normal"),
            "scenario": "whole-image", "study": study, "detections": [],
            "scope": {"in_scope": probability is not None, "reason": reason or "in scope"}}


def test_studies_rank_by_their_highest_in_scope_image_and_list_refused_ones_last():
    from limbscan.predict import STUDY_COLUMNS, studies_csv, study_rows

    records = [_record(0, 0.2, "A"), _record(1, 0.9, "A"), _record(2, None, "A", "BodyPartExamined names the chest"),
               _record(3, 0.6, "B"), _record(4, None, "C", "Modality CT"), _record(5, 0.7)]
    rows = study_rows(records)
    assert [r["study"] for r in rows] == ["A", None, "B", "C"]  # 0.9, 0.7 (a study of its own), 0.6, none scored
    first = rows[0]
    assert first["probability"] == 0.9 and first["top_file"] == "f1.dcm" and first["level"] == "likely"
    assert (first["n_images"], first["n_scored"], first["n_out_of_scope"]) == (3, 2, 1)
    assert first["files"] == ["f1.dcm", "f0.dcm", "f2.dcm"]  # its images, most likely first, refused last
    assert rows[-1]["probability"] is None and rows[-1]["level"] == "out_of_scope"
    table = list(csv.DictReader(studies_csv(records).splitlines()))
    assert list(table[0]) == list(STUDY_COLUMNS)
    assert [t["rank"] for t in table] == ["1", "2", "3", ""]


def test_the_worklist_ranks_scored_images_and_lists_refused_ones_unranked_with_the_reason():
    from limbscan.predict import worklist_csv

    records = [_record(0, None, reason="Modality CT: limbscan reads radiographs"), _record(1, 0.3), _record(2, 0.8)]
    rows = list(csv.DictReader(worklist_csv(records).splitlines()))
    assert [(r["rank"], r["file"], r["level"]) for r in rows] == [
        ("1", "f2.dcm", "likely"), ("2", "f1.dcm", "normal"), ("", "f0.dcm", "out_of_scope")]
    assert rows[2]["probability"] == "" and rows[2]["not_analysed_because"].startswith("Modality CT")


def test_studies_by_folder_for_files_and_by_study_uid_for_dicom(model, inputs, tmp_path):
    run_predict(model, [str(inputs / "scans")], tmp_path / "by-folder", progress=False, studies="folder")
    records = _jsonl(tmp_path / "by-folder" / "predictions.jsonl")
    for r in records:
        if r["file"].endswith(".png"):
            assert r["study"] == str(Path(r["file"]).parent)
        else:  # DICOM: its StudyInstanceUID, whatever the folder
            assert r["study"] and r["study"][0].isdigit()
    summary = json.loads((tmp_path / "by-folder" / "summary.json").read_text())
    assert summary["n_studies"] == len({r["study"] for r in records}) and summary["outputs"]["studies"] == "studies.csv"
    run_predict(model, [str(inputs / "scans")], tmp_path / "by-file", progress=False)
    pngs = [r for r in _jsonl(tmp_path / "by-file" / "predictions.jsonl") if r["file"].endswith(".png")]
    assert pngs and all(r["study"] is None for r in pngs)  # each its own study
