"""The decoded-image cache: decode each radiograph once, so training epochs read arrays.

Under ``cache_dir(ds, longest_side)`` (default ``DS/cache/<longest_side>/``): ``ab/<digest>.npy``
per image (longest side at most ``longest_side``; uint8 where the source has 8 bits, else uint16)
and ``index/ab.json`` shards mapping (path hash, size, mtime_ns) to the digest. The digest hashes
the file's bytes, ``longest_side`` and :data:`CACHE_VERSION`: nothing in the cache names a patient.
Files are written atomically without fsync; a rerun checks each entry's header against its size
and redoes only what is missing or broken. Storage measured: docs/benchmarks.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from limbscan.data.dataset import Dataset
from limbscan.errors import BadInputError, LimbscanError, Skipped
from limbscan.io import read_image
from limbscan.utils.files import TEMP_SUFFIX, atomic_file, write_json_atomic

# Bump when the stored layout or what read_image returns changes: every entry's key changes.
CACHE_VERSION = 1
INDEX_VERSION = 1
# Images go to workers in chunks: one round trip per small image costs as much as decoding
# it. Enough chunks queued to keep each worker busy while the parent collects, few enough
# that in-flight work stays a fixed, small amount whatever the dataset's size.
CHUNK_SIZE = 16
TASKS_PER_WORKER = 2
# A build killed without warning (SIGKILL, power cut) loses at most this much index work.
INDEX_FLUSH_SECONDS = 60.0
# Temporary files older than this belong to a build that died, not to one still running.
STALE_TMP_SECONDS = 600.0
_DIGEST_BYTES = 20


@dataclass
class CacheReport:
    n_total: int
    n_built: int
    n_reused: int
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0


def cache_dir(ds: Dataset, longest_side: int) -> Path:
    return Path(ds.root) / "cache" / str(int(longest_side))


# -- arrays ------------------------------------------------------------------------------
def resize_longest(pixels: np.ndarray, longest_side: int) -> np.ndarray:
    """Shrink so the longest side is ``longest_side``, keeping the aspect; never enlarge.

    Lanczos (antialiased in PIL, its support widens with the reduction) keeps the few-pixel
    edges of a fracture line sharper than bilinear does; its overshoot is clipped to [0, 1].
    """
    if longest_side < 1:
        raise ValueError(f"longest_side must be a positive number of pixels, got {longest_side}")
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D (H x W) image, got shape {pixels.shape}")
    height, width = pixels.shape
    longest = max(height, width)
    if longest <= longest_side:
        return np.ascontiguousarray(pixels)
    scale = longest_side / longest
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    out = Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def _is_8bit(pixels: np.ndarray) -> bool:
    """True when every value sits on the 1/255 grid: the source held no more than 8 bits."""
    scaled = pixels * np.float32(255.0)
    return bool(np.all(np.abs(scaled - np.rint(scaled)) < 1e-3))


def _quantize(pixels: np.ndarray, eight_bit: bool) -> np.ndarray:
    top = 255.0 if eight_bit else 65535.0
    return np.rint(np.clip(pixels, 0.0, 1.0) * top).astype(np.uint8 if eight_bit else np.uint16)


def _dequantize(stored: np.ndarray) -> np.ndarray:
    return stored.astype(np.float32) / np.float32(np.iinfo(stored.dtype).max)


def quantize_for_cache(pixels: np.ndarray, longest_side: int) -> np.ndarray:
    """What the cache stores for a decoded image: resized, then uint8 or uint16 (see the module doc)."""
    return _quantize(resize_longest(pixels, longest_side), _is_8bit(pixels))


def as_cached(pixels: np.ndarray, longest_side: int) -> np.ndarray:
    """The pixels :func:`load_cached` returns for this decoded image: what every model trained on,
    so inference on a file outside any dataset sees exactly what training saw."""
    return _dequantize(quantize_for_cache(pixels, longest_side))


# -- keys and entries --------------------------------------------------------------------
def file_digest(path: str | Path) -> tuple[str, os.stat_result]:
    """blake2b of the file's bytes, streamed, and the stat of the very file that was hashed."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        digest = hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=_DIGEST_BYTES))
    return digest.hexdigest(), st


def entry_key(digest: str, longest_side: int) -> str:
    tag = f"limbscan-cache/v{CACHE_VERSION}/{int(longest_side)}/{digest}".encode()
    return hashlib.blake2b(tag, digest_size=_DIGEST_BYTES).hexdigest()


def _entry_path(root: Path, key: str) -> Path:
    # 256 sub-folders keep directory listings short at 61k entries.
    return root / key[:2] / f"{key}.npy"


def _entry_ok(path: Path) -> bool:
    """A whole .npy of a 2-D uint8/uint16 image: header readable and size as the header says."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return False
            data_start = fh.tell()
            size = os.fstat(fh.fileno()).st_size
    except (OSError, ValueError):
        return False
    if len(shape) != 2 or fortran or dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        return False
    return size == data_start + int(np.prod(shape)) * dtype.itemsize


def _write_entry(path: Path, stored: np.ndarray) -> None:
    try:
        # No fsync: a rerun checks each entry's header against its size instead (_entry_ok).
        with atomic_file(path, "wb", fsync=False) as fh:
            np.save(fh, stored, allow_pickle=False)
    except OSError as err:
        # A full disk or a read-only folder fails every image alike: stop, do not skip.
        raise LimbscanError(f"{path.parent.parent}: cannot write the cache ({err.strerror or err})") from err


def _read_entry(path: Path) -> np.ndarray | None:
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if stored.ndim != 2 or stored.dtype not in (np.uint8, np.uint16):
        return None
    return _dequantize(stored)


def _decode_to_entry(src: Path, entry: Path, longest_side: int) -> np.ndarray:
    """Decode, resize and store one image; returns what a later load will return."""
    try:
        pixels, _meta = read_image(src)
    except BadInputError:
        raise
    except Exception as err:  # noqa: BLE001 - one odd file must not end a 61k-image build
        # Only the type: a third-party message could quote a header value with patient data.
        raise BadInputError(src, f"could not decode the image ({type(err).__name__})") from err
    stored = quantize_for_cache(pixels, longest_side)
    _write_entry(entry, stored)
    return _dequantize(stored)


def _sweep_tmp(root: Path, older_than: float = STALE_TMP_SECONDS) -> None:
    """Remove temporary files a killed build left behind (never a live writer's)."""
    now = time.time()
    if not root.is_dir():
        return
    for sub in os.scandir(root):
        if not sub.is_dir():
            continue
        for item in os.scandir(sub.path):
            if item.name.startswith(".") and item.name.endswith(TEMP_SUFFIX):
                try:
                    if now - item.stat().st_mtime > older_than:
                        os.unlink(item.path)
                except FileNotFoundError:
                    pass


# -- the stat index ----------------------------------------------------------------------
class _StatIndex:
    """(path, size, mtime_ns) -> content digest, in 256 small JSON shards.

    Shards let ``load_cached`` look one file up by reading a few kilobytes rather than the
    whole index. Paths are stored hashed: a folder name may be a patient's name.
    """

    def __init__(self, root: Path):
        self.root = root
        self._shards: dict[str, dict[str, list]] = {}
        self._dirty: set[str] = set()

    @staticmethod
    def _path_key(path: Path) -> str:
        return hashlib.blake2b(os.fsencode(path.resolve()), digest_size=16).hexdigest()

    def _shard(self, shard: str) -> dict[str, list]:
        if shard not in self._shards:
            entries: dict[str, list] = {}
            try:
                payload = json.loads((self.root / f"{shard}.json").read_text())
                if payload.get("version") == INDEX_VERSION:
                    entries = payload["entries"]
            except (OSError, ValueError, KeyError, AttributeError, TypeError):
                pass  # a missing or damaged shard only costs re-hashing its files
            self._shards[shard] = entries
        return self._shards[shard]

    def lookup(self, path: Path, st: os.stat_result) -> str | None:
        key = self._path_key(path)
        hit = self._shard(key[:2]).get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        return None

    def record(self, path: Path, st: os.stat_result, digest: str) -> None:
        key = self._path_key(path)
        self._shard(key[:2])[key] = [st.st_size, st.st_mtime_ns, digest]
        self._dirty.add(key[:2])

    def flush(self) -> None:
        for shard in sorted(self._dirty):
            write_json_atomic(self.root / f"{shard}.json", {"version": INDEX_VERSION, "entries": self._shards[shard]})
        self._dirty.clear()


# -- one image, in a worker or in-process --------------------------------------------------
@dataclass(frozen=True)
class _Result:
    status: str  # "built", "reused" or "skipped"
    path: str
    digest: str | None = None
    size: int = 0
    mtime_ns: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class _StatLike:
    """The two stat fields the index keys on, as a worker reported them."""

    st_size: int
    st_mtime_ns: int


def _process(src: str, root: str, longest_side: int) -> _Result:
    """Hash one file and build its entry unless an identical file already did.

    Runs in a worker: it takes and returns only small picklable values, never pixels.
    """
    try:
        digest, st = file_digest(src)
    except OSError as err:
        return _Result("skipped", src, problem=f"cannot read the file ({err.strerror or type(err).__name__})")
    entry = _entry_path(Path(root), entry_key(digest, longest_side))
    if _entry_ok(entry):
        return _Result("reused", src, digest, st.st_size, st.st_mtime_ns)
    try:
        _decode_to_entry(Path(src), entry, longest_side)
    except BadInputError as err:
        return _Result("skipped", src, problem=err.problem)
    return _Result("built", src, digest, st.st_size, st.st_mtime_ns)


def _process_chunk(sources: list[str], root: str, longest_side: int) -> list[_Result]:
    return [_process(src, root, longest_side) for src in sources]


# -- public entry points -----------------------------------------------------------------
def build_cache(ds: Dataset, longest_side: int = 1024, workers: int = 2, progress: bool = True) -> CacheReport:
    """Decode, resize and store every image of ``ds`` that the cache does not already hold.

    Streams: at most ``workers * TASKS_PER_WORKER`` chunks of ``CHUNK_SIZE`` images are in
    flight, workers send back small records (never pixels), and nothing per image is kept
    but its index entry, so memory stays flat from a hundred images to the paper's 61,098.
    ``workers <= 1`` runs in this process. Safe to interrupt and rerun: finished entries and
    the index survive, and the rerun decodes only what is missing, stale or broken.
    """
    if longest_side < 1:
        raise ValueError(f"longest_side must be a positive number of pixels, got {longest_side}")
    started = time.perf_counter()
    root = cache_dir(ds, longest_side)
    root.mkdir(parents=True, exist_ok=True)
    _sweep_tmp(root)
    index = _StatIndex(root / "index")
    report = CacheReport(n_total=len(ds.images), n_built=0, n_reused=0)
    last_flush = time.monotonic()
    bar = Progress(
        TextColumn(f"caching at {longest_side}px"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not progress,
    )
    task = bar.add_task("cache", total=report.n_total)

    def advance() -> None:
        bar.advance(task)

    def todo() -> Iterator[str]:
        """The images that need a worker; the rest are counted here, without hashing."""
        for image in ds.images:
            path = ds.image_path(image)
            try:
                st = path.stat()
            except OSError as err:
                report.skipped.append(Skipped(str(path), f"cannot read the file ({err.strerror})"))
                advance()
                continue
            digest = index.lookup(path, st)
            if digest is not None and _entry_ok(_entry_path(root, entry_key(digest, longest_side))):
                report.n_reused += 1
                advance()
                continue
            yield str(path)

    def collect(result: _Result) -> None:
        nonlocal last_flush
        if result.status == "skipped":
            report.skipped.append(Skipped(result.path, result.problem or "could not decode the image"))
        else:
            index.record(Path(result.path), _StatLike(result.size, result.mtime_ns), result.digest or "")
            if result.status == "built":
                report.n_built += 1
            else:
                report.n_reused += 1
        advance()
        if time.monotonic() - last_flush > INDEX_FLUSH_SECONDS:
            index.flush()
            last_flush = time.monotonic()

    try:
        with bar:
            if workers <= 1:
                for src in todo():
                    collect(_process(src, str(root), longest_side))
            else:
                _run_pool(todo(), str(root), longest_side, workers, collect)
    finally:
        # Whatever finished is kept, including on Ctrl-C, so the rerun skips it.
        index.flush()
    report.seconds = time.perf_counter() - started
    return report


def _run_pool(
    sources: Iterator[str], root: str, longest_side: int, workers: int, collect: Callable[[_Result], None]
) -> None:
    # spawn, not fork: the parent may hold torch threads or open files a fork would copy.
    limit = workers * TASKS_PER_WORKER
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    pending: set[Future] = set()

    def drain(until: int) -> None:
        nonlocal pending
        while len(pending) > until:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                for result in fut.result():
                    collect(result)

    try:
        chunk: list[str] = []
        for src in sources:
            chunk.append(src)
            if len(chunk) == CHUNK_SIZE:
                pending.add(pool.submit(_process_chunk, chunk, root, longest_side))
                chunk = []
                drain(limit - 1)
        if chunk:
            pending.add(pool.submit(_process_chunk, chunk, root, longest_side))
        drain(0)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def load_cached(ds: Dataset, image: dict, longest_side: int = 1024) -> np.ndarray:
    """The image as float32 H x W in [0, 1], resized; builds its entry if missing or stale.

    Costs a stat, a few-kilobyte index read and a .npy read when the entry exists, so
    training never depends on ``build_cache`` having run. Raises BadInputError for a file
    that cannot be decoded.
    """
    src = ds.image_path(image)
    root = cache_dir(ds, longest_side)
    index = _StatIndex(root / "index")
    try:
        st = src.stat()
    except OSError as err:
        raise BadInputError(src, f"cannot read the file ({err.strerror})") from err
    digest = index.lookup(src, st)
    if digest is not None:
        pixels = _read_entry(_entry_path(root, entry_key(digest, longest_side)))
        if pixels is not None:
            return pixels
    try:
        digest, st = file_digest(src)
    except OSError as err:
        raise BadInputError(src, f"cannot read the file ({err.strerror})") from err
    entry = _entry_path(root, entry_key(digest, longest_side))
    pixels = _read_entry(entry)
    if pixels is None:
        pixels = _decode_to_entry(src, entry, longest_side)
    # Concurrent loaders (DataLoader workers) may each rewrite this shard; losing a record
    # to the race only means re-hashing that file next time.
    index.record(src, st, digest)
    index.flush()
    return pixels
