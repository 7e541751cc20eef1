"""benchmarks._common: memory from /proc, the report, and a measurement in a fresh interpreter that
finds the package from any working directory."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks import _common


def test_status_mb_reads_this_process_and_gives_zero_for_one_gone():
    assert _common.status_mb("VmHWM") >= _common.status_mb("VmRSS") > 0
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert _common.status_mb("VmHWM", int(done.stdout)) == 0.0  # exited and reaped: no /proc entry
    assert _common.status_mb("NoSuchField") == 0.0
    assert set(_common.memory()) == {"peak_rss_mb", "ru_maxrss_mb"}


def test_report_and_command_line(tmp_path, capsys):
    out = tmp_path / "deep" / "r.json"
    report = {"benchmark": "x", "command": _common.command("benchmarks.x", ["--out", str(out)])}
    assert _common.write_report(out, report) is report
    assert json.loads(out.read_text()) == report and out.read_text().endswith("\n")
    assert report["command"] == f"python -m benchmarks.x --out {out}"
    assert f"wrote {out}" in capsys.readouterr().out


def test_a_child_finds_the_package_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # neither the working directory nor PYTHONPATH leads to the package
    monkeypatch.delenv("PYTHONPATH", raising=False)
    done = _common.run_module("benchmarks.ingest", ["--help"])
    assert done.returncode == 0, done.stderr
    assert "Ingest benchmark" in done.stdout
