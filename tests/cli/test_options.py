"""The shared options (limbscan.cli.options): closed sets refuse other values, naming the allowed
ones; their values are the library's; one config loader serves every command."""

from __future__ import annotations

import ast
import re
from enum import Enum
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from limbscan.analysis import STUDY_KEYS
from limbscan.cli import app
from limbscan.cli.options import Localiser, ScenarioName, Split, Studies, load_settings
from limbscan.config import Config, save_config
from limbscan.data.dataset import SPLITS
from limbscan.localise import AUTO, LOCALISERS
from limbscan.rundir import RunDir
from limbscan.scenarios import names

CLI = Path(__file__).resolve().parents[2] / "src" / "limbscan" / "cli"
# Every option with a closed set of values: (command, option) -> the values it takes.
CLOSED = {
    (("evaluate",), "--split"): [*SPLITS[::-1], "all"],
    (("predict",), "--studies"): list(STUDY_KEYS),
    (("predict",), "--scenario"): list(names()),
    (("listen",), "--scenario"): list(names()),
    (("compare",), "--scenario"): list(names()),
    (("export",), "--localiser"): [AUTO, *LOCALISERS],
}


def _choice_options(command, path=()):
    """(command path, option) of every option whose values are a closed set (an Enum)."""
    for param in getattr(command, "params", []):
        kind = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        if isinstance(kind, type) and issubclass(kind, Enum):
            yield path, param.opts[0]
    for name, sub in getattr(command, "commands", {}).items():
        yield from _choice_options(sub, (*path, name))


def test_the_closed_sets_are_the_librarys():
    assert [s.value for s in Split] == [*SPLITS[::-1], "all"]
    assert [s.value for s in Studies] == list(STUDY_KEYS)
    assert [s.value for s in ScenarioName] == list(names())
    assert [s.value for s in Localiser] == [AUTO, *LOCALISERS]
    assert set(_choice_options(get_command(app))) == set(CLOSED)  # no closed-set option left untested


@pytest.mark.parametrize(("where", "allowed"), CLOSED.items(), ids=lambda v: " ".join(v[0]) + v[1]
                         if isinstance(v, tuple) else None)
def test_a_closed_set_option_refuses_another_value_naming_the_allowed(where, allowed):
    (path, option) = where
    result = CliRunner().invoke(app, [*path, option, "bogus"], env={"COLUMNS": "200"})
    said = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in said and "'bogus' is not one of" in said
    for value in allowed:
        assert f"'{value}'" in said, (value, said)


def test_a_closed_set_option_passes_its_value_as_a_string(monkeypatch, tmp_path):
    import limbscan.eval.evaluate

    seen = {}

    def evaluate(run, dataset, split, out, **kw):
        seen["split"] = split
        return {"scenarios": {}, "comparisons": []}

    monkeypatch.setattr(limbscan.eval.evaluate, "evaluate", evaluate)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path), str(tmp_path), "-o", str(tmp_path), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert seen["split"] == "val" and type(seen["split"]) is str


def test_one_config_loader_applies_file_overrides_aux_and_the_resume_rule(tmp_path):
    cfg = Config()
    cfg.train.epochs = 7
    path = save_config(cfg, tmp_path / "c.yaml")
    (tmp_path / "aux").mkdir()
    got = load_settings(path, ["train.seed=5"], [tmp_path / "aux"])
    assert (got.train.epochs, got.train.seed) == (7, 5)
    assert got.data.auxiliary == (str((tmp_path / "aux").resolve()),)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    save_config(cfg, run.config)
    assert load_settings(None, run=run, resume=True).train.epochs == 7  # a resumed run goes on with its config
    assert load_settings(None, run=run, resume=False).train.epochs == Config().train.epochs


def test_no_command_loads_a_config_but_through_the_one_loader():
    loaders = {"load_config", "add_auxiliary", "config_for"}
    for path in CLI.glob("*.py"):
        called = {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                  for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)}
        assert path.name == "options.py" or not called & loaders, path.name
