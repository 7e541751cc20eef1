"""Shared fixtures: real data where it is present, a clear skip where it is not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRACATLAS = Path(os.environ.get("LIMBSCAN_FRACATLAS", REPO.parent / "shared" / "data" / "fracatlas-lowerlimb"))


@pytest.fixture(scope="session")
def fracatlas_root() -> Path:
    """The shared FracAtlas lower-limb subset (never copied into the project)."""
    if not (FRACATLAS / "dataset.csv").is_file():
        pytest.skip(f"real data absent: no FracAtlas subset at {FRACATLAS} (set LIMBSCAN_FRACATLAS)")
    return FRACATLAS


@pytest.fixture(scope="session")
def pydicom_data():
    """Return a getter for pydicom-data's real files (e.g. 'RG3_UNCR.dcm'), or skip."""
    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover
        pytest.skip("pydicom is not installed")

    def get(name: str) -> Path:
        path = get_testdata_file(name)
        if path is None:
            pytest.skip(f"real DICOM {name} absent: `pip install pydicom-data` brings it")
        return Path(path)

    return get


def pytest_configure(config):
    # Every test's tensors are small: one intra-op thread is as fast as two, and immune to the
    # many-fold slowdown of OpenMP threads spinning on a core another process (or the other
    # `pytest -n 2` worker) is using. Subprocesses inherit OMP_NUM_THREADS.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)
