"""The decoded-image cache: reuse, staleness, bad files, interrupts, resizing, workers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from limbscan.data import cache as cache_mod
from limbscan.data.cache import build_cache, cache_dir, load_cached, resize_longest
from limbscan.data.dataset import Dataset, DatasetBuilder
from limbscan.errors import BadInputError, LimbscanError
from limbscan.io import read_image

SIDE = 64
# (width, height): some larger than SIDE, some smaller, both orientations.
SIZES = [(120, 90), (30, 20), (50, 200), (77, 77), (64, 48), (200, 40)]
EIGHT_BIT_TOL = 0.5 / 255 + 1e-6  # stored as uint8 when the source is 8-bit


def _draw(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 80, size=(size[1], size[0]), dtype=np.uint8)
    im = Image.fromarray(noise, mode="L")
    draw = ImageDraw.Draw(im)
    w, h = size
    draw.ellipse([w * 0.2, h * 0.2, w * 0.7, h * 0.8], fill=int(rng.integers(150, 255)))
    draw.line([0, 0, w - 1, h - 1], fill=255, width=2)
    im.save(path)


def _make_dataset(root: Path, image_dir: Path, n_bad: int = 0) -> Dataset:
    image_dir.mkdir(parents=True, exist_ok=True)
    builder = DatasetBuilder(root=root, source="test")
    for i, size in enumerate(SIZES):
        path = image_dir / f"img{i}.png"
        if not path.exists():
            _draw(path, size, seed=i)
        _, meta = read_image(path)
        builder.add_image(path, meta, label=i % 2, body_part="leg")
    ds = builder.build()
    for j in range(n_bad):
        bad = image_dir / f"bad{j}.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
        ds.images.append({**ds.images[0], "id": len(ds.images) + 1, "file_name": str(bad)})
    ds.save()
    return Dataset.load(root)


@pytest.fixture
def ds(tmp_path: Path) -> Dataset:
    return _make_dataset(tmp_path / "ds", tmp_path / "ds" / "images")


def _fresh(ds: Dataset, image: dict) -> np.ndarray:
    pixels, _ = read_image(ds.image_path(image))
    return resize_longest(pixels, SIDE)


def _entries(ds: Dataset) -> list[Path]:
    return sorted(cache_dir(ds, SIDE).glob("*/*.npy"))


def test_build_then_rebuild_reuses_everything(ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    assert (first.n_total, first.n_built, first.n_reused, first.skipped) == (len(SIZES), len(SIZES), 0, [])
    assert len(_entries(ds)) == len(SIZES)

    # The rerun must neither decode nor even re-hash unchanged files.
    def fail(*args, **kwargs):
        raise AssertionError("rerun touched an unchanged file")

    monkeypatch.setattr(cache_mod, "read_image", fail)
    monkeypatch.setattr(cache_mod, "file_digest", fail)
    second = build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    assert (second.n_built, second.n_reused, second.skipped) == (0, len(SIZES), [])


def test_load_cached_equals_fresh_decode_and_resize(ds: Dataset) -> None:
    build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    for image in ds.images:
        got = load_cached(ds, image, longest_side=SIDE)
        want = _fresh(ds, image)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert max(got.shape) <= SIDE
        np.testing.assert_allclose(got, want, atol=EIGHT_BIT_TOL)


def test_load_cached_builds_on_demand(ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    image = ds.images[0]
    got = load_cached(ds, image, longest_side=SIDE)  # no build_cache first
    np.testing.assert_allclose(got, _fresh(ds, image), atol=EIGHT_BIT_TOL)
    assert len(_entries(ds)) == 1

    monkeypatch.setattr(cache_mod, "read_image", lambda p: (_ for _ in ()).throw(AssertionError("decoded twice")))
    np.testing.assert_array_equal(load_cached(ds, image, longest_side=SIDE), got)


def test_on_demand_entry_is_reused_by_build(ds: Dataset) -> None:
    load_cached(ds, ds.images[0], longest_side=SIDE)
    report = build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    assert (report.n_built, report.n_reused) == (len(SIZES) - 1, 1)


def test_more_than_8_bits_are_kept(ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 16-bit-like source: values off the 1/255 grid must survive to within uint16 steps.
    h, w = 40, 50
    smooth = np.linspace(0.0, 1.0, h * w, dtype=np.float32).reshape(h, w) ** 1.7
    monkeypatch.setattr(cache_mod, "read_image", lambda p: (smooth, None))
    got = load_cached(ds, ds.images[1], longest_side=SIDE)
    np.testing.assert_allclose(got, smooth, atol=0.5 / 65535 + 1e-7)
    assert np.abs(got - smooth).max() < 0.5 / 255  # better than 8-bit storage could do


def test_edited_file_is_rebuilt_touched_file_is_only_rehashed(ds: Dataset) -> None:
    build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    edited, touched = ds.images[0], ds.images[2]
    path = ds.image_path(edited)
    before = load_cached(ds, edited, longest_side=SIDE)
    _draw(path, SIZES[0], seed=999)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    tpath = ds.image_path(touched)
    tst = tpath.stat()
    os.utime(tpath, ns=(tst.st_atime_ns, tst.st_mtime_ns + 10**9))

    report = build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    assert (report.n_built, report.n_reused) == (1, len(SIZES) - 1)
    after = load_cached(ds, edited, longest_side=SIDE)
    assert not np.allclose(after, before)
    np.testing.assert_allclose(after, _fresh(ds, edited), atol=EIGHT_BIT_TOL)


def test_bad_file_is_skipped_and_named(tmp_path: Path) -> None:
    ds = _make_dataset(tmp_path / "ds", tmp_path / "ds" / "images", n_bad=1)
    missing = dict(ds.images[0], id=len(ds.images) + 1, file_name=str(tmp_path / "gone.png"))
    ds.images.append(missing)
    report = build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    assert report.n_total == len(SIZES) + 2
    assert report.n_built == len(SIZES)
    named = sorted(Path(s.path).name for s in report.skipped)
    assert named == ["bad0.png", "gone.png"]
    assert all(s.problem for s in report.skipped)
    with pytest.raises(BadInputError, match="bad0.png"):
        load_cached(ds, ds.images[len(SIZES)], longest_side=SIDE)


def test_interrupted_build_resumes(ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def flaky(path):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return read_image(path)

    monkeypatch.setattr(cache_mod, "read_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    monkeypatch.undo()
    done = _entries(ds)
    assert len(done) == 3

    # What a kill mid-write leaves: a stale temp file and an entry cut short.
    root = cache_dir(ds, SIDE)
    stale = done[0].parent / f".{done[0].name}.1.2.tmp"
    stale.write_bytes(b"half")
    old = time.time() - 2 * cache_mod.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    done[1].write_bytes(done[1].read_bytes()[:100])

    report = build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    assert (report.n_built, report.n_reused, report.skipped) == (len(SIZES) - 2, 2, [])
    assert not stale.exists()
    assert not list(root.rglob("*.tmp"))
    for image in ds.images:
        np.testing.assert_allclose(load_cached(ds, image, SIDE), _fresh(ds, image), atol=EIGHT_BIT_TOL)


def test_damaged_index_costs_a_rehash_not_a_decode(ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    shards = sorted(cache_dir(ds, SIDE).glob("index/*.json"))
    assert shards
    for shard in shards:
        shard.write_text('{"version": 1, "entries": {"trunc')
    monkeypatch.setattr(cache_mod, "read_image", lambda p: (_ for _ in ()).throw(AssertionError("re-decoded")))
    report = build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    assert (report.n_built, report.n_reused, report.skipped) == (0, len(SIZES), [])


def test_unwritable_cache_stops_the_build(ds: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod.np, "save", full)
    with pytest.raises(LimbscanError, match="cannot write the cache"):
        build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    assert not list(cache_dir(ds, SIDE).rglob("*.tmp"))


def test_two_workers_give_the_same_arrays(tmp_path: Path) -> None:
    images = tmp_path / "shared-images"
    one = _make_dataset(tmp_path / "one", images, n_bad=1)
    two = _make_dataset(tmp_path / "two", images, n_bad=1)
    r1 = build_cache(one, longest_side=SIDE, workers=1, progress=False)
    r2 = build_cache(two, longest_side=SIDE, workers=2, progress=False)
    assert (r2.n_built, r2.n_reused) == (r1.n_built, r1.n_reused) == (len(SIZES), 0)
    assert [s.path for s in r2.skipped] == [s.path for s in r1.skipped]
    assert [p.name for p in _entries(one)] == [p.name for p in _entries(two)]
    for a, b in zip(_entries(one), _entries(two)):
        np.testing.assert_array_equal(np.load(a), np.load(b))
    again = build_cache(two, longest_side=SIDE, workers=2, progress=False)
    assert (again.n_built, again.n_reused) == (0, len(SIZES))


def test_cache_holds_no_names(ds: Dataset) -> None:
    build_cache(ds, longest_side=SIDE, workers=1, progress=False)
    root = cache_dir(ds, SIDE)
    assert root == ds.root / "cache" / str(SIDE)
    text = "".join(p.read_text() for p in root.glob("index/*.json"))
    for image in ds.images:
        assert Path(image["file_name"]).name not in text
        assert str(ds.image_path(image).parent) not in text
    for path in root.rglob("*"):
        if path.is_file():
            stem = path.stem
            assert all(c in "0123456789abcdef" for c in stem), path.name


@pytest.mark.parametrize(
    ("shape", "side", "want"),
    [((100, 50), 40, (40, 20)), ((50, 100), 40, (20, 40)), ((1000, 3), 100, (100, 1)), ((33, 33), 10, (10, 10))],
)
def test_resize_shrinks_to_longest_side_keeping_aspect(shape, side, want) -> None:
    pixels = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = resize_longest(pixels, side)
    assert out.shape == want and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("shape", [(30, 20), (64, 64), (1, 64)])
def test_resize_never_upsamples(shape) -> None:
    pixels = np.random.default_rng(1).random(shape, dtype=np.float32)
    out = resize_longest(pixels, 64)
    np.testing.assert_array_equal(out, pixels)


def test_resize_is_antialiased() -> None:
    # A one-pixel checkerboard shrunk 8x: point sampling gives all 0 or all 1; a proper
    # low-pass filter gives mid-grey everywhere.
    board = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)
    out = resize_longest(board, 32)
    assert abs(float(out.mean()) - 0.5) < 0.02
    assert float(out.std()) < 0.05


def test_resize_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        resize_longest(np.zeros((4, 4, 3), np.float32), 2)
    with pytest.raises(ValueError):
        resize_longest(np.zeros((4, 4), np.float32), 0)


def test_real_dicom_keeps_its_bit_depth(tmp_path: Path, pydicom_data) -> None:
    # A real 10-bit CR: cached as uint16, so the cache adds no more than half a uint16 step.
    src = pydicom_data("RG3_UNCR.dcm")
    pixels, meta = read_image(src)
    builder = DatasetBuilder(root=tmp_path / "ds", source="test")
    builder.add_image(src, meta, label=0, body_part=None)
    ds = builder.build()
    report = build_cache(ds, longest_side=256, workers=1, progress=False)
    assert (report.n_built, report.skipped) == (1, [])
    (entry,) = cache_dir(ds, 256).glob("*/*.npy")
    assert np.load(entry).dtype == np.uint16
    got = load_cached(ds, ds.images[0], longest_side=256)
    want = resize_longest(pixels, 256)
    assert got.shape == want.shape and max(got.shape) == 256
    np.testing.assert_allclose(got, want, atol=0.5 / 65535 + 1e-7)
