"""Auxiliary training data (``data.auxiliary``): training images of every stage, never validation or test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from limbscan.config import Config, add_auxiliary, load_config
from limbscan.data.dataset import Dataset
from limbscan.data.datasets import JoinedDataset, WholeImageDataset
from limbscan.data.split import split_dataset
from limbscan.data.synth import synthesize
from limbscan.errors import LimbscanError
from limbscan.train.runner import load_auxiliary, prepare, train
from limbscan.train.stages import make_stage
from limbscan.utils.files import sha256_file


@pytest.fixture(scope="module")
def main_ds(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("main")
    split_dataset(synthesize(root, n=30, seed=5, abnormal_fraction=0.5, progress=False), Config().data.split).save()
    return root


@pytest.fixture(scope="module")
def aux_ds(tmp_path_factory) -> Path:
    """Phantoms of other patients, split on purpose: an auxiliary dataset's splits are ignored."""
    root = tmp_path_factory.mktemp("aux")
    split_dataset(synthesize(root, n=16, seed=9, abnormal_fraction=0.25, progress=False), Config().data.split).save()
    return root


@pytest.fixture(scope="module")
def cfg_with(tiny_config_factory):
    """The tiny config with ``data.auxiliary`` = the folders given, and the share."""

    def make(*aux: Path, share: float | None = None) -> Config:
        cfg = tiny_config_factory()
        cfg.data.auxiliary, cfg.data.auxiliary_share = tuple(str(p) for p in aux), share
        return cfg

    return make


def test_without_auxiliary_data_a_stage_trains_on_the_main_split_alone(main_ds, cfg_with):
    run = prepare(Dataset.load(main_ds), cfg_with())
    stage = make_stage("whole-image", run, "unused")
    assert isinstance(stage.train_set, WholeImageDataset) and stage.train_set.images == run.train_images
    assert [s.role for s in run.train_sources] == ["main"]


@pytest.mark.parametrize("share", [0.25, 0.5, None])
def test_auxiliary_images_fill_their_share_of_each_epoch(main_ds, aux_ds, share, cfg_with):
    main, aux = Dataset.load(main_ds), Dataset.load(aux_ds)
    run = prepare(main, cfg_with(aux_ds, share=share))
    n_main, n_aux = len(main.split_images("train")), len(aux.images)
    # every auxiliary image, whatever split it carries; pixel statistics still the main split's
    assert [len(s.images) for s in run.train_sources] == [n_main, n_aux]
    assert {im.get("split") for im in run.auxiliary[0].images} > {"train"}
    alone = prepare(main, cfg_with())
    assert (run.pixel_mean, run.pixel_std) == (alone.pixel_mean, alone.pixel_std)
    stage = make_stage("whole-image", run, "unused")
    assert isinstance(stage.train_set, JoinedDataset) and stage.train_set.sizes == [n_main, n_aux]
    drawn = list(stage.train_loader(0, 0, 1).sampler)
    from_aux = sum(i >= n_main for i in drawn)
    expected = n_aux / (n_main + n_aux) if share is None else share
    assert from_aux / len(drawn) == pytest.approx(expected, abs=1 / len(drawn))
    assert len(drawn) - from_aux == n_main  # an epoch: as many main draws as main images
    # the joined items come from the dataset they belong to (ids collide across datasets)
    assert stage.train_set.datasets[1].ds.root == aux.root
    assert drawn == list(stage.train_loader(0, 0, 1).sampler) != list(stage.train_loader(1, 0, 1).sampler)


def test_auxiliary_folders_are_checked_with_errors_naming_them(main_ds, aux_ds, tmp_path, cfg_with):
    main = Dataset.load(main_ds)
    with pytest.raises(LimbscanError, match=rf"data.auxiliary: {tmp_path / 'nowhere'}: no such dataset folder"):
        load_auxiliary(cfg_with(tmp_path / "nowhere"), main)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LimbscanError, match=r"data.auxiliary: .*empty: no dataset.json here"):
        load_auxiliary(cfg_with(tmp_path / "empty"), main)
    with pytest.raises(LimbscanError, match=r"is the main dataset .*joins training once"):
        load_auxiliary(cfg_with(main_ds), main)
    with pytest.raises(LimbscanError, match="listed already as"):
        load_auxiliary(cfg_with(aux_ds, Path(str(aux_ds) + "/")), main)
    # A copy of the main dataset.json elsewhere still points at its images: their val / test
    # images would be trained on.
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(main_ds / "dataset.json", copy / "dataset.json")
    moved = json.loads((copy / "dataset.json").read_text())
    for im in moved["images"]:
        im["file_name"] = str(main_ds / im["file_name"])
    (copy / "dataset.json").write_text(json.dumps(moved))
    with pytest.raises(LimbscanError, match=r"holds 30 image file\(s\) of the main dataset .*--exclude-parts leg,hip"):
        load_auxiliary(cfg_with(copy), main)
    assert [d.root for d in load_auxiliary(cfg_with(aux_ds), main)] == [aux_ds]


def test_aux_option_adds_absolute_folders_once(aux_ds, monkeypatch):
    monkeypatch.chdir(aux_ds.parent)
    cfg = add_auxiliary(load_config(None, [f"data.auxiliary=[{aux_ds}]"]), [Path(aux_ds.name), aux_ds])
    assert cfg.data.auxiliary == (str(aux_ds),)
    cfg = add_auxiliary(load_config(), [Path(aux_ds.name)])
    assert cfg.data.auxiliary == (str(aux_ds.resolve()),)
    assert add_auxiliary(load_config(), None).data.auxiliary == ()


@pytest.fixture(scope="module")
def aux_run(main_ds, aux_ds, tmp_path_factory, cfg_with):
    out = tmp_path_factory.mktemp("aux_run")
    return out, train(main_ds, cfg_with(aux_ds, share=0.4), out, progress=False)


@pytest.mark.slow
def test_a_run_with_auxiliary_data_trains_every_stage_and_says_what_it_trained_on(aux_run, main_ds, aux_ds):
    out, results = aux_run
    assert list(results) == ["whole-image", "detector", "cascade", "fused"]
    main, aux = Dataset.load(main_ds), Dataset.load(aux_ds)
    # validation (where thresholds are chosen) is the main val split, nothing else
    val = json.loads((out / "val_scores.json").read_text())
    assert val["image_ids"] == [im["id"] for im in main.split_images("val")]
    assert val["dataset"] == str(main_ds.resolve())
    # provenance: both datasets, their roles, hashes, images used, body parts
    summary = json.loads((out / "train.json").read_text())
    assert summary["training_data"] == val["training_data"] and summary["auxiliary_share"] == 0.4
    first, second = summary["training_data"]
    assert (first["role"], first["path"], first["split"]) == ("main", str(main_ds.resolve()), "train")
    assert (second["role"], second["path"], second["split"]) == ("auxiliary", str(aux_ds.resolve()), "all")
    assert first["dataset_sha256"] == sha256_file(main_ds / "dataset.json")
    assert second["dataset_sha256"] == sha256_file(aux_ds / "dataset.json")
    assert (first["images"], second["images"]) == (len(main.split_images("train")), len(aux.images))
    assert second["abnormal"] == sum(im["label"] for im in aux.images)
    parts = {im["body_part"] for im in main.split_images("train") + aux.images}
    assert set(val["train_body_parts"]) == parts == set(first["body_parts"]) | set(second["body_parts"])
    # the cascade's crops: the detector's boxes on the auxiliary normal images too
    proposals = json.loads((out / "cascade" / "proposals.json").read_text())
    (saved,) = proposals["auxiliary"]
    assert saved["dataset"] == str(aux_ds.resolve())
    assert set(saved["train"]) == {str(im["id"]) for im in aux.images if im["label"] == 0}
    report = (out / "report.md").read_text()
    assert "## Training data" in report and str(aux_ds.resolve()) in report and "40% of each batch" in report


@pytest.mark.slow
def test_detector_and_cascade_stages_draw_auxiliary_items(aux_run, main_ds, aux_ds, cfg_with):
    out, _ = aux_run
    main, aux = Dataset.load(main_ds), Dataset.load(aux_ds)
    run = prepare(main, cfg_with(aux_ds, share=0.4))
    n_main = len(main.split_images("train"))
    assert make_stage("detector", run, out).train_set.sizes == [n_main, len(aux.images)]
    cascade = make_stage("cascade", run, out, resume=True)  # the saved proposals, no detector pass
    saved = json.loads((out / "cascade" / "proposals.json").read_text())["auxiliary"][0]["train"]
    lesions = sum(len(aux.annotations_for(im["id"])) for im in aux.images if im["label"])
    boxes = sum(len(saved[str(im["id"])]) or 1 for im in aux.images if not im["label"])
    loader = cascade.train_loader(0, 0, 1)
    assert loader.dataset.sizes[1] == lesions + boxes  # a crop per lesion and per proposal
    assert loader.dataset.datasets[1].ds.root == aux.root
    drawn = list(loader.sampler)
    assert sum(i >= loader.dataset.sizes[0] for i in drawn) / len(drawn) == pytest.approx(0.4, abs=1 / len(drawn))


@pytest.mark.slow
def test_bundle_and_evaluation_name_every_dataset_and_refuse_the_auxiliary_one(aux_run, main_ds, aux_ds, tmp_path):
    from limbscan.bundle import export_bundle, read_manifest
    from limbscan.eval.evaluate import measure

    out, _ = aux_run
    manifest = read_manifest(export_bundle(out, tmp_path / "aux.limbscan"))
    assert [(d["role"], d["path"], d["now"]) for d in manifest["training_data"]] == [
        ("main", str(main_ds.resolve()), "unchanged"), ("auxiliary", str(aux_ds.resolve()), "unchanged")]
    assert manifest["data_hash"] == sha256_file(main_ds / "dataset.json")
    metrics = measure(out, main_ds, "test", n_boot=10, gallery=False, progress=False).metrics
    assert [d["role"] for d in metrics["training_data"]] == ["main", "auxiliary"]
    with pytest.raises(LimbscanError, match="auxiliary training data of this run"):
        measure(out, aux_ds, "all", n_boot=10, gallery=False, progress=False)


def test_train_cli_takes_aux_folders_beside_overrides(main_ds, aux_ds, cfg_with, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from limbscan.cli import app
    from limbscan.config import save_config

    config = save_config(cfg_with(), tmp_path / "tiny.yaml")
    monkeypatch.chdir(aux_ds.parent)
    args = ["train", str(main_ds), "-c", str(config), "-o", str(tmp_path / "run"), "--scenario", "whole-image",
            "-q", "--aux", aux_ds.name, "train.epochs=1", "data.auxiliary_share=0.3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = load_config(tmp_path / "run" / "config.yaml")
    assert cfg.data.auxiliary == (str(aux_ds.resolve()),) and cfg.data.auxiliary_share == 0.3
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert [d["role"] for d in summary["training_data"]] == ["main", "auxiliary"]
    result = CliRunner().invoke(app, [*args[:-4], "--aux", "missing"])
    assert isinstance(result.exception, LimbscanError) and "missing: no such dataset folder" in str(result.exception)
