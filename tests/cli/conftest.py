"""The command line as a user runs it: ``python -m limbscan.cli``, a subprocess per command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "limbscan.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if ok and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def cli():
    """``cli("data", "stats", DS)``: run limbscan, fail on a non-zero exit unless ``ok=False``."""
    return run
