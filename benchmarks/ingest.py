"""Ingest benchmark: decode + resize + cache throughput and peak memory, JPEG and DICOM.

Writes a synthetic set of small images (noise, no patient data) into a temporary folder,
one dataset per format and size, then for each (format, n, workers) runs ``build_cache`` in
a fresh process and records images/s, the warm rerun (everything reused), the read speed
of ``load_cached``, and peak RSS of the parent and of its workers. Memory is flat when the
peak at n=61,098 (the paper's set) matches the peak at n=6,000.

Full run (about 10 minutes on 2 cores)::

    .venv/bin/python -m benchmarks.ingest --out benchmarks/results/ingest.json

Quick run::

    .venv/bin/python -m benchmarks.ingest --n 500 2000 --out /tmp/ingest.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import command, last_json_line, machine_info, run_module, status_mb, write_report

PAPER_N = 61_098
FILES_PER_FOLDER = 1000  # keeps directory listings short


# -- synthetic data ------------------------------------------------------------------------
def _pixels(rng: np.random.Generator, size: int, top: int) -> np.ndarray:
    """Distinct content per image (so no two files share a cache entry), smooth plus noise."""
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = np.outer(ramp, ramp[::-1]) * rng.uniform(0.3, 0.9)
    noise = rng.random((size, size), dtype=np.float32) * 0.2
    return np.rint(np.clip(base + noise, 0, 1) * top)


def _dicom_template(size: int) -> bytes:
    """A minimal CR image, 12 bits stored, with an empty patient module."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("synthetic.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.BodyPartExamined = "LEG"
    ds.PatientName = ""
    ds.PatientID = ""
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((size, size), np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_images(folder: Path, fmt: str, n: int, size: int, seed: int = 0) -> list[Path]:
    """n distinct files; a DICOM is the template with its pixel bytes (the file's tail) swapped."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    template = _dicom_template(size) if fmt == "dicom" else b""
    head = template[: len(template) - size * size * 2]
    paths = []
    for i in range(n):
        sub = folder / f"{i // FILES_PER_FOLDER:03d}"
        if i % FILES_PER_FOLDER == 0:
            sub.mkdir(parents=True, exist_ok=True)
        if fmt == "dicom":
            path = sub / f"{i:06d}.dcm"
            path.write_bytes(head + _pixels(rng, size, 4095).astype("<u2").tobytes())
        else:
            path = sub / f"{i:06d}.jpg"
            Image.fromarray(_pixels(rng, size, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def write_dataset(root: Path, paths: list[Path], fmt: str, size: int) -> None:
    from limbscan.data.dataset import DatasetBuilder
    from limbscan.io.meta import LOWER_LIMB_PARTS, ImageMeta

    builder = DatasetBuilder(root=root, source="synthetic ingest benchmark", synthetic=True)
    meta = ImageMeta(width=size, height=size, format=fmt)
    for i, path in enumerate(paths):
        builder.add_image(path, meta, label=i % 2, body_part=LOWER_LIMB_PARTS[i % len(LOWER_LIMB_PARTS)])
    builder.build().save()


# -- one measurement, in its own process so peak RSS belongs to it alone ---------------------
class PeakRss:
    """Peak RSS of this process and of its children, from /proc (VmHWM; see ``status_mb``)."""

    def __init__(self, every_s: float = 0.2):
        self.every_s = every_s
        self.workers_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[str]:
        pids = []
        for task in Path(f"/proc/{os.getpid()}/task").iterdir():
            try:
                pids += (task / "children").read_text().split()
            except OSError:
                pass
        return pids

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for pid in self._children():
                self.workers_mb = max(self.workers_mb, status_mb("VmHWM", pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def parent_mb(self) -> float:
        return status_mb("VmHWM")


def measure(ds_root: Path, workers: int, longest_side: int, n_read: int) -> dict:
    from limbscan.data.cache import build_cache, cache_dir, load_cached
    from limbscan.data.dataset import Dataset

    ds = Dataset.load(ds_root)
    rss_loaded = status_mb("VmRSS")
    shutil.rmtree(cache_dir(ds, longest_side), ignore_errors=True)
    with PeakRss() as peak:
        cold = build_cache(ds, longest_side=longest_side, workers=workers, progress=False)
    warm = build_cache(ds, longest_side=longest_side, workers=workers, progress=False)
    n_read = min(n_read, len(ds.images))
    read_s = float("nan")
    if cold.n_built and n_read:
        start = time.perf_counter()
        for image in ds.images[:n_read]:
            load_cached(ds, image, longest_side)
        read_s = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in cache_dir(ds, longest_side).rglob("*") if p.is_file())
    return {
        "n": cold.n_total,
        "workers": workers,
        "built": cold.n_built,
        "skipped": len(cold.skipped),
        "skipped_examples": sorted({s.problem for s in cold.skipped})[:3],
        "cold_seconds": round(cold.seconds, 2),
        "cold_images_per_s": round(cold.n_total / cold.seconds, 1),
        "warm_reused": warm.n_reused,
        "warm_seconds": round(warm.seconds, 2),
        "warm_images_per_s": round(warm.n_total / warm.seconds, 1),
        "load_cached_images_per_s": round(n_read / read_s, 1) if read_s == read_s else None,
        "cache_mb": round(disk / 2**20, 1),
        "parent_rss_after_dataset_load_mb": round(rss_loaded, 1),
        "parent_peak_rss_mb": round(peak.parent_mb, 1),
        "worker_peak_rss_mb": round(peak.workers_mb, 1),  # the largest worker; 0 when in-process
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[6000, PAPER_N], help="dataset sizes")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--formats", nargs="+", default=["jpeg", "dicom"], choices=["jpeg", "dicom"])
    ap.add_argument("--size", type=int, default=128, help="side of the synthetic square images")
    ap.add_argument("--longest-side", type=int, default=64, help="cache size (below --size, so resize runs)")
    ap.add_argument("--n-read", type=int, default=2000, help="images read back through load_cached")
    ap.add_argument("--workdir", type=Path, help="where the synthetic set goes (default: a temp dir, removed)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.json"))
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: one run, JSON on stdout
    args = ap.parse_args(argv)

    if args.measure:
        print(json.dumps(measure(args.measure, args.workers[0], args.longest_side, args.n_read)))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="limbscan-ingest-"))
    runs = []
    try:
        for fmt in args.formats:
            start = time.perf_counter()
            paths = write_images(work / fmt / "images", fmt, max(args.n), args.size)
            print(f"{fmt}: wrote {len(paths)} files in {time.perf_counter() - start:.0f} s", flush=True)
            for n in sorted(args.n):
                ds_root = work / fmt / f"ds-{n}"
                write_dataset(ds_root, paths[:n], fmt, args.size)
                for workers in args.workers:
                    done = run_module(__spec__.name, ["--measure", str(ds_root), "--workers", str(workers),
                                                      "--longest-side", str(args.longest_side),
                                                      "--n-read", str(args.n_read)], check=True)
                    result = {"format": fmt, **last_json_line(done.stdout)}
                    runs.append(result)
                    print(json.dumps(result), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    write_report(args.out, {
        "benchmark": "ingest",
        "command": command(__spec__.name, argv),
        "machine": machine_info(),
        "image_size": args.size,
        "longest_side": args.longest_side,
        "runs": runs,
    })


if __name__ == "__main__":
    main()
