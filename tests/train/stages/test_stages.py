"""The training stages on tiny synthetic phantoms with a tiny random-init backbone: they train, their loss
falls; the runner trains them in order."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from limbscan.config import Config
from limbscan.data.dataset import Dataset
from limbscan.data.split import split_dataset
from limbscan.data.synth import synthesize
from limbscan.errors import LimbscanError
from limbscan.scenarios import names
from limbscan.train.records import read_metrics
from limbscan.train.runner import prepare, scenario_names, train
from limbscan.train.stages import STAGES, make_stage
from limbscan.train.stages import cascade as cascade_module
from limbscan.train.stages.base import auc_or_none, train_loader
from limbscan.train.stages.cascade import context_box, jitter_box

TINY = "mobilenetv3_small_050"


def _cfg(**train_keys) -> Config:
    cfg = Config()
    cfg.data.cache.longest_side = 160
    for section in (cfg.classifier, cfg.detector):
        section.backbone, section.pretrained = TINY, False
    cfg.classifier.image_size, cfg.classifier.crop_size = 64, 48
    cfg.detector.min_size, cfg.detector.max_size, cfg.detector.fpn_channels = 128, 160, 32
    cfg.detector.rpn_batch_size_per_image, cfg.detector.box_batch_size_per_image = 64, 32
    # No augmentation and a constant rate: on a few steps, the loss must fall from learning alone.
    aug = cfg.data.augment
    aug.p_none, aug.p_flip, aug.p_rotate, aug.p_shift, aug.p_scale = 1.0, 0.0, 0.0, 0.0, 0.0
    t = cfg.train
    t.workers, t.warmup_steps, t.schedule, t.batch_size = 0, 0, "constant", 8
    t.lr_backbone = t.lr_heads = 0.01
    t.epochs, t.detector_epochs = 8, 4
    for key, value in train_keys.items():
        setattr(t, key, value)
    return cfg



@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    ds = split_dataset(synthesize(root, n=24, seed=0, abnormal_fraction=0.5, progress=False), Config().data.split)
    ds.save()
    return root


@pytest.fixture(scope="module")
def trained(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    results = train(phantoms, _cfg(scenario="all"), out, progress=False)
    return out, results


def _falls(losses: list[float], n: int = 4) -> bool:
    return float(np.mean(losses[-n:])) < float(np.mean(losses[:n]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["whole-image", "detector", "cascade"])
def test_each_scenario_trains_and_its_loss_falls(trained, name):
    out, results = trained
    result = results[name]
    expected_epochs = 4 if name == "detector" else 8
    assert result.epochs == expected_epochs
    assert len(result.step_losses) == expected_epochs * (1 if name == "detector" else 2) * (8 if name == "detector" else 1)
    assert all(np.isfinite(result.step_losses))
    assert _falls(result.step_losses), result.step_losses
    assert (out / name / "last.pt").is_file() and (out / name / "best.pt").is_file()
    lines = [r for r in read_metrics(out / "metrics.jsonl") if r["stage"] == name]
    assert [r["epoch"] for r in lines] == list(range(1, expected_epochs + 1))
    summary = json.loads((out / "train.json").read_text())["scenarios"][name]
    assert summary["epochs"] == expected_epochs and summary["checkpoint"] == f"{name}/best.pt"


@pytest.mark.slow
def test_detector_logs_its_loss_components(trained):
    out, _ = trained
    record = next(r for r in read_metrics(out / "metrics.jsonl") if r["stage"] == "detector")
    for part in ("classifier", "box_reg", "mask", "objectness", "rpn_box_reg"):
        assert f"train_{part}" in record, record


@pytest.mark.slow
def test_cascade_proposals_come_from_the_detector_on_normal_train_and_all_val_images(trained, phantoms):
    out, _ = trained
    ds = Dataset.load(phantoms)
    saved = json.loads((out / "cascade" / "proposals.json").read_text())
    normals = {str(im["id"]) for im in ds.split_images("train") if im["label"] == 0}
    assert set(saved["train"]) == normals
    assert set(saved["val"]) == {str(im["id"]) for im in ds.split_images("val")}
    by_id = {str(im["id"]): im for im in ds.images}
    for split in ("train", "val"):
        for image_id, boxes in saved[split].items():
            assert len(boxes) <= 1  # classifier.top_k = 1
            for x0, y0, x1, y1 in boxes:  # ORIGINAL pixels: inside the image, not the cached one
                im = by_id[image_id]
                assert 0 <= x0 < x1 <= im["width"] + 0.01 and 0 <= y0 < y1 <= im["height"] + 0.01


@pytest.mark.slow
def test_cascade_resume_reuses_the_saved_proposals(trained, phantoms, monkeypatch):
    out, _ = trained
    proposals = out / "cascade" / "proposals.json"
    before = proposals.stat().st_mtime_ns

    def no_detector(*args, **kwargs):
        raise AssertionError("the detector ran again")

    # the proposals' pass (scoring val_scores.json at the end still loads the detector, as evaluate does)
    monkeypatch.setattr(cascade_module, "detector_proposals", no_detector)
    results = train(phantoms, _cfg(scenario="cascade", epochs=9), out, resume=True, progress=False)
    assert results["cascade"].epochs == 9 and len(results["cascade"].step_losses) == 2  # only epoch 9 ran
    assert proposals.stat().st_mtime_ns == before


@pytest.mark.slow
def test_cascade_options_context_crops_whole_image_start_and_geomean_score(trained, phantoms, tmp_path):
    import shutil

    from limbscan.scenarios.scoring import score_run
    from limbscan.train.checkpoint import load_checkpoint

    out, _ = trained
    for stage in ("detector", "whole-image"):
        shutil.copytree(out / stage, tmp_path / stage)
    cfg = _cfg(scenario="cascade", epochs=1)
    cfg.classifier.context_crops, cfg.classifier.cascade_init, cfg.classifier.cascade_score = True, "whole-image", "geomean"
    seen: list[str] = []
    original = cascade_module.CascadeStage._draw

    def spy(self, image, box, how, rng):
        seen.append(how)
        return original(self, image, box, how, rng)

    cascade_module.CascadeStage._draw = spy
    try:
        stage = make_stage("cascade", prepare(Dataset.load(phantoms), cfg), tmp_path)
        start = load_checkpoint(out / "whole-image" / "best.pt")["model"]
        assert all(torch.equal(stage.model.state_dict()[k], v) for k, v in start.items())  # starts from whole-image
        train(phantoms, cfg, tmp_path, progress=False)
    finally:
        cascade_module.CascadeStage._draw = original
    assert {"jitter", "context", "fixed"} <= set(seen)
    assert seen.count("jitter") == seen.count("context")  # one widened box per lesion box
    assert load_checkpoint(tmp_path / "cascade" / "best.pt")["extra"]["cascade_score"] == "geomean"
    ds = Dataset.load(phantoms)
    images = ds.split_images("val")
    scored = score_run(tmp_path, ds, images, ["detector", "cascade"])
    crop_only = {i: max(entry["scores"]) for i, entry in scored["cascade"].boxes.items()}
    for image_id, fused, det in zip(scored["cascade"].image_ids, scored["cascade"].scores, scored["detector"].scores, strict=True):
        assert fused == pytest.approx((crop_only[image_id] * det) ** 0.5)


def test_cascade_init_must_be_known_and_trained_first(trained, phantoms, tmp_path):
    import shutil

    shutil.copytree(trained[0] / "detector", tmp_path / "detector")
    cfg = _cfg(scenario="cascade")
    cfg.classifier.cascade_init = "whole-image"
    with pytest.raises(LimbscanError, match="whole-image stage trained first"):
        make_stage("cascade", prepare(Dataset.load(phantoms), cfg), tmp_path)
    cfg.classifier.cascade_init = "coco"
    with pytest.raises(LimbscanError, match="classifier.cascade_init 'coco' is not one of imagenet, whole-image"):
        make_stage("cascade", prepare(Dataset.load(phantoms), cfg), tmp_path)
    cfg.classifier.cascade_init, cfg.classifier.cascade_score = "imagenet", "max"
    with pytest.raises(LimbscanError, match="classifier.cascade_score 'max' is not one of crop, geomean"):
        make_stage("cascade", prepare(Dataset.load(phantoms), cfg), tmp_path)


def test_cascade_without_a_trained_detector_says_what_is_missing(phantoms, tmp_path):
    with pytest.raises(LimbscanError, match=r"detector.best\.pt.*train scenario detector"):
        train(phantoms, _cfg(scenario="cascade"), tmp_path, progress=False)


def test_unsplit_dataset_is_refused(tmp_path):
    synthesize(tmp_path / "ds", n=4, seed=1, abnormal_fraction=0.5, progress=False)
    with pytest.raises(LimbscanError, match="limbscan data split"):
        train(tmp_path / "ds", _cfg(scenario="whole-image"), tmp_path / "run", progress=False)


def test_balance_loss_weighs_positives_by_the_class_ratio(phantoms):
    ds = Dataset.load(phantoms)
    stage = make_stage("whole-image", prepare(ds, _cfg(balance="loss")), "unused")
    labels = stage.train_set.labels
    assert stage._pos_weight == pytest.approx(labels.count(0) / labels.count(1))
    assert make_stage("whole-image", prepare(ds, _cfg(balance="sampler")), "unused")._pos_weight is None
    with pytest.raises(LimbscanError, match="balance"):
        prepare(ds, _cfg(balance="oversample"))


def test_pixel_statistics_come_from_the_training_split(phantoms):
    ds = Dataset.load(phantoms)
    run = prepare(ds, _cfg())
    stage = make_stage("whole-image", run, "unused")
    assert float(stage.model.pixel_mean) == pytest.approx(run.pixel_mean)
    assert 0 < run.pixel_mean < 1 and run.pixel_std > 0


def _labels_drawn(loader) -> Counter:
    return Counter(int(y) for _, ys in loader for y in ys)


def test_train_loader_balances_classes_and_repeats_per_epoch():
    labels = [0] * 90 + [1] * 10
    data = TensorDataset(torch.arange(100).float(), torch.tensor(labels))
    cfg = _cfg()
    sampled = _labels_drawn(train_loader(data, labels, cfg, 0, 0, 1, 10, "sampler"))
    assert sum(sampled.values()) == 100 and 30 <= sampled[1] <= 70  # ~50 %, not 10 %
    plain = [int(x) for x, _ in train_loader(data, labels, cfg, 0, 0, 1, 10, "none") for x in x]
    assert sorted(plain) == list(range(100))

    def order(epoch: int, balance: str, rank: int = 0, world: int = 1) -> list[int]:
        return [int(v) for x, _ in train_loader(data, labels, cfg, epoch, rank, world, 10, balance) for v in x]

    for balance in ("sampler", "none"):
        assert order(3, balance) == order(3, balance)
        assert order(3, balance) != order(4, balance)
        halves = order(3, balance, 0, 2) + order(3, balance, 1, 2)
        assert sorted(halves) == sorted(order(3, balance))  # two ranks share one epoch's draw


def test_jitter_box_stays_near_the_box_and_inside_the_image():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0, x1, y1 = jitter_box([5, 90, 45, 100], 50, 100, 0.1, rng)
        assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 100
        assert abs(x0 - 5) <= 4.0 + 1e-9 and abs(y1 - 100) <= 1.0 + 1e-9


def test_context_box_holds_the_lesion_inside_the_image_at_the_drawn_size():
    rng = np.random.default_rng(0)
    for share in [(0.5, 0.3), (0.01, 0.01), (1.0, 1.0)]:
        for _ in range(200):
            x0, y0, x1, y1 = context_box([10, 80, 40, 100], 50, 100, share, rng)
            assert 0 <= x0 <= 10 and 40 <= x1 <= 50 + 1e-9 and 0 <= y0 <= 80 and 100 - 1e-9 <= y1 <= 100 + 1e-9
            # never smaller than the lesion, otherwise the drawn share of the image
            assert x1 - x0 == pytest.approx(max(share[0] * 50, 30))
            assert y1 - y0 == pytest.approx(max(share[1] * 100, 20))


def test_scenario_names_and_auc_helpers():
    assert scenario_names("all") == ["whole-image", "detector", "cascade", "fused"]
    assert scenario_names("cascade,detector") == ["detector", "cascade"]
    with pytest.raises(LimbscanError, match="whole-image"):
        scenario_names("mask-rcnn")
    assert auc_or_none([1, 1], [0.2, 0.9]) is None
    assert auc_or_none([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8]) == 1.0


def test_every_registered_scenario_has_its_stage_under_its_name(phantoms):
    assert list(STAGES) == list(names())  # the table follows the registry, in training order
    assert all(stage.name == name for name, stage in STAGES.items())  # checkpoints' "stage", folder names
    with pytest.raises(LimbscanError, match="no training stage for scenario 'mask-rcnn'"):
        make_stage("mask-rcnn", prepare(Dataset.load(phantoms), _cfg()), "unused")


def test_undecodable_images_are_left_out_and_named(tmp_path, capsys):
    from limbscan.config import load_config
    from limbscan.data.dataset import Dataset
    from limbscan.data.split import split_dataset
    from limbscan.data.synth import synthesize
    from limbscan.train.runner import cached_dataset
    from limbscan.utils.distributed import DistInfo

    ds = synthesize(tmp_path / "ds", n=6, seed=3, progress=False)
    cfg = load_config(None, ["data.cache.longest_side=64", "data.cache.workers=1"])
    ds = split_dataset(ds, cfg.data.split)
    ds.save()
    broken = ds.image_path(ds.images[0])
    broken.write_bytes(broken.read_bytes()[:40])  # truncated after the fact
    ds = cached_dataset(Dataset.load(tmp_path / "ds"), cfg, DistInfo(0, 1, 0, torch.device("cpu")), progress=False)
    assert len(ds.images) == 5 and all(ds.image_path(im) != broken for im in ds.images)
    assert broken.name in capsys.readouterr().err


@pytest.mark.slow
def test_run_report_lists_every_stage_and_says_synthetic(trained):
    out, _ = trained
    text = (out / "report.md").read_text()
    assert "SYNTHETIC" in text.split("|")[0]  # before any figure
    # a later call that trains (or resumes) one stage into the folder keeps the others listed
    summary = json.loads((out / "train.json").read_text())["scenarios"]
    assert list(summary) == ["whole-image", "detector", "cascade", "fused"]
    for name, r in summary.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        best = "undefined" if r["best_val_auc"] is None else f"{r['best_val_auc']:.3f}"
        assert f"| {r['epochs']} | {r['best_epoch']} | {best} |" in row
    assert "not a test result" in text
    assert "## Dataset" in text
