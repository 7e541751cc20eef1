"""RunDir: each of its names is the file training writes, and ``--resume`` goes on with the run's config."""

from __future__ import annotations

import os
import shutil

import pytest

from limbscan.config import Config, load_config, save_config
from limbscan.rundir import RunDir
from limbscan.scenarios import names


def test_every_name_is_a_file_the_trained_run_holds(tiny_run):
    _, out = tiny_run
    run = RunDir(out)
    assert os.fspath(run) == str(out) and RunDir(str(out)) == run
    for path in (run.summary, run.val_scores, run.metrics, run.report):
        assert path.is_file(), path
    for name in names():
        assert run.stage(name).is_dir()
        assert run.best(name).is_file() and run.last(name).is_file()
    assert run.stage_file("cascade", "proposals.json").is_file()
    assert run.trained() == list(names()) == ["whole-image", "detector", "cascade", "fused"]


def test_trained_lists_only_the_scenarios_with_a_best_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    assert run.trained() == []
    run.last("detector").parent.mkdir()
    run.last("detector").write_bytes(b"")  # a stage killed before its first validation
    assert run.trained() == []
    for name in ("cascade", "whole-image"):
        run.best(name).parent.mkdir()
        run.best(name).write_bytes(b"")
    assert run.trained() == ["whole-image", "cascade"]  # registry order, not creation order


def test_train_cli_writes_its_config_there_and_resume_goes_on_with_it(tiny_run, tiny_config, tmp_path):
    from typer.testing import CliRunner

    from limbscan.cli import app

    root, out = tiny_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(out, run.root)
    assert not run.config.exists()  # the Python API writes none; the CLI does
    save_config(tiny_config, run.config)
    written = {name: run.last(name).stat().st_mtime_ns for name in names()}
    # No -c: the run's own (tiny) settings, so every stage is found finished and none retrains.
    # Were the defaults used instead, the checkpoints would not even load into the default models.
    result = CliRunner().invoke(app, ["train", str(root), "-o", str(run.root), "--resume", "-q"])
    assert result.exit_code == 0, result.output
    assert load_config(run.config) == tiny_config
    assert {name: run.last(name).stat().st_mtime_ns for name in names()} == written  # nothing retrained
    assert run.trained() == list(names()) and run.summary.is_file() and run.report.is_file()


@pytest.fixture
def saved(tmp_path) -> RunDir:
    """A run folder whose config.yaml holds non-default values."""
    run = RunDir(tmp_path / "run")
    cfg = Config()
    cfg.train.epochs, cfg.train.seed = 7, 123
    run.root.mkdir()
    save_config(cfg, run.config)
    return run


def test_config_for_a_resumed_run_given_no_file_is_the_runs_config(saved):
    cfg = saved.config_for(None, None, resume=True)
    assert (cfg.train.epochs, cfg.train.seed) == (7, 123)
    # an edit to the saved file is what the resumed run gets
    saved.config.write_text(saved.config.read_text().replace("epochs: 7", "epochs: 11"))
    assert saved.config_for(None, [], resume=True).train.epochs == 11
    # overrides still apply, on top of the run's config
    cfg = saved.config_for(None, ["train.epochs=9"], resume=True)
    assert (cfg.train.epochs, cfg.train.seed) == (9, 123)


def test_config_for_uses_what_it_is_given(saved, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("train:\n  epochs: 3\n")
    for resume in (True, False):
        cfg = saved.config_for(other, None, resume=resume)
        assert cfg.train.epochs == 3 and cfg.train.seed == Config().train.seed  # not the run's seed
        assert saved.config_for(other, ["train.seed=5"], resume=resume).train.seed == 5
    # a fresh (not resumed) run given no file starts from the defaults, whatever the folder holds
    assert saved.config_for(None, None, resume=False) == Config()
    assert saved.config_for(None, ["train.epochs=2"], resume=False).train.epochs == 2
    # resuming into a folder without a config.yaml (e.g. trained through the Python API): defaults
    assert RunDir(tmp_path / "empty").config_for(None, None, resume=True) == Config()
