"""The probe of the input gate limbscan ships (limbscan/gate/gate.npz), on images it never trained on:

- pydicom-data's chest CR (two transfer syntaxes), NM, CT and MR files: all out of scope;
- ten photographs and drawings from scikit-image: all out of scope;
- 120 hand and shoulder radiographs of FracAtlas' upper-limb test split (the gate trained on its
  train and val splits): at least 95 % out of scope;
- FracAtlas' lower-limb test split (236; the gate trained on the train split): at least 99 % scored;
- every image of hip-roboflow-dev (354 hip radiographs of another source, some turned by 90 or
  180 degrees; never trained on): at least 97 % scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from limbscan.config import Config
from limbscan.gate.model import PixelGate, builtin_gate_path, gate_counts, judge_files

REPO = Path(__file__).resolve().parents[2]
HIP = REPO.parent / "shared" / "data" / "hip-roboflow-dev" / "train" / "images"
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket", "page", "text", "horse", "coins", "brick")
OTHER_DICOM = ("RG1_UNCI.dcm", "RG1_J2KR.dcm", "JPEG2000.dcm", "J2K_pixelrep_mismatch.dcm", "examples_overlay.dcm",
               "CT_small.dcm", "MR_small.dcm")
N_UPPER = 120


@pytest.fixture(scope="module")
def gate() -> PixelGate:
    return PixelGate.load(builtin_gate_path())


def _test_split(root: Path, out: Path) -> list[Path]:
    from limbscan.data.importers import import_fracatlas
    from limbscan.data.split import split_dataset

    ds = split_dataset(import_fracatlas(root, out, progress=False).dataset, Config().data.split)
    return [ds.image_path(im) for im in sorted(ds.split_images("test"), key=lambda im: im["id"])]


def _scored_share(gate, paths) -> tuple[float, list]:
    verdicts = judge_files(gate, paths)
    counts = gate_counts(verdicts)
    assert counts["n"] == len(paths)  # every file read
    return 1 - counts["out_of_scope_share"], [(p, v.reason) for p, v in zip(paths, verdicts) if not v.in_scope]


def test_the_gate_says_what_it_trained_on(gate):
    trained = gate.meta["trained_on"]
    assert trained["lower_limb"]["split"] == "train"
    assert all(o["splits"] == ["train", "val"] for o in trained["other"])
    assert gate.meta["refuse_target"] == 0.97 and gate.meta["accept_distance_target"] == 0.995
    assert 0 < gate.meta["distance_threshold"] < 2  # a distance between unit vectors
    # What `limbscan gate train` measured on the held-out splits stays within what this probe asserts.
    held = gate.meta["held_out"]
    assert held["lower_limb_test"]["accepted_share"] >= 0.99 and held["fracatlas-upper_test"]["accepted_share"] <= 0.05


def test_other_modalities_parts_and_pictures_are_out_of_scope(gate, pydicom_data, tmp_path):
    from skimage import data

    pictures = []
    for name in PHOTOS:
        pixels = getattr(data, name)()
        pictures.append(tmp_path / f"{name}.png")
        Image.fromarray(np.asarray(pixels)).save(pictures[-1])
    dicoms = [pydicom_data(name) for name in OTHER_DICOM]
    verdicts = judge_files(gate, [*dicoms, *pictures])
    kept = [(p.name, v.reason) for p, v in zip([*dicoms, *pictures], verdicts) if v.in_scope]
    assert not kept
    assert all(v.decided_by == "header" for v in verdicts[: len(dicoms)])
    assert all(v.decided_by == "pixels" for v in verdicts[len(dicoms):])


@pytest.mark.realdata
@pytest.mark.slow
def test_hand_and_shoulder_radiographs_are_out_of_scope(gate, fracatlas_upper_root, tmp_path):
    paths = _test_split(fracatlas_upper_root, tmp_path / "upper")[:N_UPPER]
    assert len(paths) == N_UPPER
    scored, _ = _scored_share(gate, paths)
    assert 1 - scored >= 0.95


@pytest.mark.realdata
@pytest.mark.slow
def test_lower_limb_test_split_is_scored(gate, fracatlas_root, tmp_path):
    paths = _test_split(fracatlas_root, tmp_path / "lower")
    assert len(paths) == 236
    scored, refused = _scored_share(gate, paths)
    assert scored >= 0.99, refused


@pytest.mark.slow
def test_hip_radiographs_of_another_source_are_scored(gate):
    if not HIP.is_dir():
        pytest.skip(f"real data absent: no hip-roboflow-dev at {HIP}")
    paths = sorted(HIP.glob("*.jpg"))
    assert len(paths) == 354
    scored, refused = _scored_share(gate, paths)
    assert scored >= 0.97, refused
