"""The command as a whole (limbscan.cli): its verbs, --help everywhere, --version, errors, import cost."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from limbscan.cli import app

CLI = Path(__file__).resolve().parents[2] / "src" / "limbscan" / "cli"


def _commands(command, path=()):
    """Every command and group below ``command``, as its argument path."""
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_lists_the_contract_verbs(cli):
    out = cli("--help").stdout
    for verb in ("data", "anonymize"):
        assert verb in out
    out = cli("data", "--help").stdout
    for verb in ("import", "synth", "split", "stats", "cache", "download"):
        assert verb in out
    out = cli("data", "import", "--help").stdout
    for verb in ("fracatlas", "folder", "coco", "mura"):
        assert verb in out
    assert cli("--version").stdout.startswith("limbscan ")


def test_every_verb_keeps_its_place_and_answers_help():
    paths = list(_commands(get_command(app)))
    top = [p[0] for p in paths if len(p) == 1]
    assert top == ["train", "search", "cv", "evaluate", "benchmark", "compare", "anonymize", "predict", "serve",
                   "listen", "export", "data", "gate"]
    assert ("data", "import", "yolo") in paths and ("gate", "train") in paths
    for path in paths:
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, (path, result.output)


def test_help_imports_neither_numpy_nor_torch():
    script = ("import json, sys\nfrom limbscan.cli import main\nsys.argv = ['limbscan', '--help']\n"
              "try:\n    main()\nexcept SystemExit:\n    pass\n"
              "print(json.dumps([m for m in ('numpy', 'torch', 'limbscan.data.dataset') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_missing_dataset_is_a_clear_error(cli, tmp_path):
    proc = cli("data", "stats", tmp_path, ok=False)
    assert proc.returncode == 1 and "dataset.json" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("path", sorted(CLI.glob("*.py")), ids=lambda p: p.name)
def test_each_module_is_short_and_says_what_it_holds(path):
    assert len(path.read_text().splitlines()) <= 500
    assert ast.get_docstring(ast.parse(path.read_text()))
