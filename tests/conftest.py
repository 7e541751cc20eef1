"""Shared fixtures: real data where it is present, a clear skip where it is not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRACATLAS = Path(os.environ.get("LIMBSCAN_FRACATLAS", REPO.parent / "shared" / "data" / "fracatlas-lowerlimb"))
FRACATLAS_UPPER = Path(
    os.environ.get("LIMBSCAN_FRACATLAS_UPPER", REPO.parent / "shared" / "data" / "fracatlas-upperlimb")
)


@pytest.fixture(scope="session")
def fracatlas_root() -> Path:
    """The shared FracAtlas lower-limb subset (never copied into the project)."""
    if not (FRACATLAS / "dataset.csv").is_file():
        pytest.skip(f"real data absent: no FracAtlas subset at {FRACATLAS} (set LIMBSCAN_FRACATLAS)")
    return FRACATLAS


@pytest.fixture(scope="session")
def fracatlas_upper_root() -> Path:
    """The shared FracAtlas upper-limb subset: hand / shoulder images, auxiliary training data."""
    if not (FRACATLAS_UPPER / "dataset.csv").is_file():
        pytest.skip(f"real data absent: no FracAtlas upper-limb subset at {FRACATLAS_UPPER} "
                    "(set LIMBSCAN_FRACATLAS_UPPER)")
    return FRACATLAS_UPPER


TINY_BACKBONE = "mobilenetv3_small_050"  # random init: no weights needed, a second per epoch


def make_tiny_config():
    """A config small enough to train all three scenarios on a few phantoms in seconds."""
    from limbscan.config import Config

    cfg = Config()
    cfg.data.cache.longest_side = 160
    for section in (cfg.classifier, cfg.detector):
        section.backbone, section.pretrained = TINY_BACKBONE, False
    cfg.classifier.image_size, cfg.classifier.crop_size, cfg.classifier.top_k = 64, 48, 2
    cfg.classifier.cascade_score = "geomean"  # configs/cpu.yaml's
    cfg.detector.min_size, cfg.detector.max_size, cfg.detector.fpn_channels = 128, 160, 32
    cfg.detector.rpn_batch_size_per_image, cfg.detector.box_batch_size_per_image = 64, 32
    t = cfg.train
    t.workers, t.warmup_steps, t.batch_size, t.epochs, t.detector_epochs = 0, 0, 8, 2, 2
    return cfg


@pytest.fixture
def tiny_config():
    """A fresh :func:`make_tiny_config` per test (tests may change it)."""
    return make_tiny_config()


@pytest.fixture(scope="session")
def tiny_config_factory():
    """:func:`make_tiny_config` itself, for module-scoped fixtures (test modules cannot import conftest)."""
    return make_tiny_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset folder, run folder): 30 split phantoms and all three scenarios trained on them,
    once per test process. Treat both as read-only; copy them to change anything."""
    from limbscan.config import Config
    from limbscan.data.split import split_dataset
    from limbscan.data.synth import synthesize
    from limbscan.train.runner import train

    root = tmp_path_factory.mktemp("tiny_ds")
    ds = split_dataset(synthesize(root, n=30, seed=5, abnormal_fraction=0.5, progress=False), Config().data.split)
    ds.save()
    out = tmp_path_factory.mktemp("tiny_run")
    train(root, make_tiny_config(), out, progress=False)
    return root, out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory) -> Path:
    """``tiny_run`` exported as a bundle, once per test process. Read-only: copy it to change it.

    Without the input gate's pixel check: the phantoms the tests score are drawings, which the
    gate rightly keeps out of scope. DICOM headers still decide; ``gated_bundle`` has the gate."""
    from limbscan.bundle import export_bundle

    return export_bundle(tiny_run[1], tmp_path_factory.mktemp("tiny_bundle") / "m.limbscan", gate=None)


@pytest.fixture(scope="session")
def gated_bundle(tiny_run, tmp_path_factory) -> Path:
    """``tiny_run`` exported with the input gate limbscan ships, as ``limbscan export`` does by default."""
    from limbscan.bundle import export_bundle

    return export_bundle(tiny_run[1], tmp_path_factory.mktemp("gated_bundle") / "m.limbscan")


@pytest.fixture(scope="session")
def tiny_model(tiny_bundle):
    """``tiny_bundle`` loaded (``limbscan.load``), shared by the tests that only predict with it."""
    from limbscan.inference import load

    return load(tiny_bundle)


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


@pytest.fixture(scope="session")
def with_operating_points(tmp_path_factory):
    """``make(bundle, likely, suspected)``: a copy of ``bundle`` whose manifest stores these two
    thresholds for every scenario, so a test can put images on each side of them. ``suspected``
    None strips the operating points (and ``likely`` None keeps the stored thresholds): the
    manifest of a bundle exported before operating points existed. bundle.json is not among
    the files it hashes, so the copy loads."""
    import json
    import shutil

    def make(bundle: Path, likely: float | None, suspected: float | None) -> Path:
        dst = tmp_path_factory.mktemp("operating_points") / Path(bundle).name
        shutil.copytree(bundle, dst)
        manifest = json.loads((dst / "bundle.json").read_text())
        if likely is not None:
            manifest["thresholds"] = {name: likely for name in manifest["scenarios"]}
        if suspected is None:
            manifest.pop("operating_points", None)
            manifest.pop("suspected_sensitivity", None)
        else:
            for name in manifest["scenarios"]:
                points = manifest["operating_points"][name]
                points["likely"]["threshold"] = manifest["thresholds"][name]
                points["suspected"]["threshold"] = suspected
        (dst / "bundle.json").write_text(json.dumps(manifest, indent=1))
        return dst

    return make


# The web page in a real browser: Debian's chromium driven by Playwright (never `playwright install`).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """A chromium browser, or a skip that says why there is none."""
    if not CHROMIUM.exists():
        pytest.skip(f"no browser: {CHROMIUM} is absent (`apt-get install -y chromium`)")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (`pip install playwright`)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
