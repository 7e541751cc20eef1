"""Inference benchmark: images/s end to end and peak memory, limbscan against torchvision.

For every scenario of a bundle, every input format (the FracAtlas JPEGs and the same pixels
written as uncompressed DICOM) and every batch size, one fresh process loads the bundle, warms
up on one image (not timed), then times ``Model.predict`` over the whole list: reading,
decoding, preprocessing and both stages. torchvision's ``maskrcnn_resnet50_fpn`` at its
defaults runs on the same images in the same way, and every row gets its ratio to it on the
same format. Its weights are random (no download); they change its speed only through the
number of boxes its mask head draws, which random weights push to the maximum (100 per image,
reported as ``detections_per_image``).

Peak memory is the child's ``VmHWM`` (peak resident set of its own address space), not
``getrusage(RUSAGE_SELF).ru_maxrss``: Python starts children with vfork/exec, and Linux carries
the parent's high-water mark across the exec into the child's ``ru_maxrss`` (measured: a
child of a 300 MB parent reports 311 MB there and 9 MB in ``VmHWM``). ``ru_maxrss`` is kept in
the JSON for reference.

Default run (under 5 minutes on 2 idle cores)::

    .venv/bin/python -m benchmarks.inference --bundle model.limbscan \\
        --fracatlas ../shared/data/fracatlas-lowerlimb --out benchmarks/results/inference.json

On a CPU shared with other work, measure with ``--env OMP_WAIT_POLICY=PASSIVE`` or
``--threads 1`` and say so: torch's OpenMP threads spin while they wait, and a spinning thread
whose core another process holds stalls the rest (measured here at load 4 on 2 cores: the
cascade at 2 threads ran 0.17 images/s plain, 4.1 with PASSIVE). ``loadavg_start`` /
``loadavg_end`` in the JSON tell a quiet run from a busy one.

Where the time goes (cProfile + torch.profiler + per-module timers, cascade at batch 1)::

    .venv/bin/python -m benchmarks.inference --bundle model.limbscan --fracatlas ... \\
        --profile --skip-timing --out /tmp/profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    TORCHVISION,
    command,
    console,
    last_json_line,
    loadavg,
    machine_info,
    memory,
    run_module,
    set_threads,
    status_mb,
    write_report,
)
from benchmarks.inference_profile import print_profile, profile_limbscan
from limbscan.bundle.default import default_scenario
from limbscan.scenarios import names

SCENARIOS = names()  # the registered scenarios (torch-free table)
FORMATS = ("jpeg", "dicom")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# -- inputs ----------------------------------------------------------------------------------
def pick_images(root: Path, n: int) -> list[Path]:
    """The first ``n`` JPEGs in sorted order, half from ``Fractured`` and half from ``Non_fractured``.

    FracAtlas's two folders hold different scanners' output (the first fractured files are
    mostly 373 x 454, the first normal ones 2304 x 2880), so taking from both keeps the mix of
    small and large decodes a real worklist has. A folder without those two subfolders gives
    its own first ``n`` JPEGs (any depth).
    """
    images = root / "images" if (root / "images").is_dir() else root
    groups = [images / "Fractured", images / "Non_fractured"]
    if all(g.is_dir() for g in groups):
        fractured, normal = (sorted(p for p in g.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")) for g in groups)
        take = min(n // 2, len(fractured))
        chosen = fractured[:take] + normal[: n - take]
        chosen += fractured[take : take + n - len(chosen)]  # too few normal ones: top up
    else:
        chosen = sorted(p for p in images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:n]
    if not chosen:
        raise SystemExit(f"no JPEG found under {root}")
    return sorted(chosen, key=lambda p: p.name)


def write_dicoms(jpegs: Sequence[Path], folder: Path) -> list[Path]:
    """The same pixels as MONOCHROME2 8-bit Secondary Capture files, uncompressed.

    The window (centre 128, width 256) maps stored 0..255 onto exactly v/255, what the JPEG
    reader gives, so both formats carry the same image and the scores can be compared.
    No patient module values: the files hold pixels and nothing about anyone.
    """
    import numpy as np
    from PIL import Image
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    out = []
    for i, jpeg in enumerate(jpegs):
        with Image.open(jpeg) as im:
            pixels = np.asarray(im.convert("L"), dtype=np.uint8)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(jpeg.stem, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = SECONDARY_CAPTURE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.ConversionType = "OT", "WSD"
        ds.PatientName, ds.PatientID = "", ""
        ds.InstanceNumber = i + 1
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.WindowCenter, ds.WindowWidth = 128, 256
        ds.PixelData = pixels.tobytes()
        path = folder / f"{jpeg.stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


# -- measurements, each in its own process ---------------------------------------------------
def measure_limbscan(spec: dict) -> dict:
    """Load the bundle, warm up on one image, time ``iter_predict`` over every path.

    ``iter_predict``, each result dropped once its probability is noted, as a batch job (``limbscan
    predict``) streams them: ``predict`` returns every Prediction at once, full-size masks
    included (6.6 MB per mask on a 2304 x 2880 radiograph), and the peak would then measure the
    list the caller chose to keep rather than the inference.
    """
    set_threads(spec["threads"])
    start = time.perf_counter()
    import limbscan.inference as inference

    model = inference.load(spec["bundle"], runtime=spec.get("runtime", "torch"))
    load_s = time.perf_counter() - start
    paths = spec["paths"]
    kwargs = {"scenario": spec["scenario"], "batch_size": spec["batch"], "masks": spec["masks"],
              "gate": spec.get("gate", True)}
    model.predict(paths[:1], **kwargs)
    rss_warm = status_mb("VmRSS")
    probabilities = []
    start = time.perf_counter()
    for path, result in model.iter_predict(paths, **kwargs):
        if isinstance(result, Exception):
            raise RuntimeError(f"{Path(path).name}: {result}")
        probabilities.append(result.probability)
    seconds = time.perf_counter() - start
    if model.gate is None and kwargs["gate"]:
        raise RuntimeError("the bundle has no input gate's pixel check: export it with the gate to time it")
    return {
        "images": len(paths),
        "seconds": seconds,
        "load_s": round(load_s, 2),
        "rss_after_warmup_mb": round(rss_warm, 1),
        "probabilities": [None if p is None else round(float(p), 5) for p in probabilities],
        **memory(),
    }


def measure_gate(spec: dict) -> dict:
    """The input gate alone, as predict asks it: read each file, its header, then its pixels."""
    set_threads(spec["threads"])
    from limbscan.gate.model import PixelGate, judge_files

    start = time.perf_counter()
    gate = PixelGate.load(Path(spec["bundle"]) / "gate.npz")
    judge_files(gate, spec["paths"][:1])  # warm-up: the backbone loads on first use
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    verdicts = judge_files(gate, spec["paths"])
    seconds = time.perf_counter() - start
    return {"images": len(spec["paths"]), "seconds": seconds, "load_s": round(load_s, 2),
            "in_scope": sum(bool(v and v.in_scope) for v in verdicts), **memory()}


def _torchvision_reader(fmt: str) -> Callable[[str], Any]:
    """The plainest way to get the file into torchvision's input: a 3 x H x W float in [0, 1]."""
    import numpy as np
    import torch
    from torchvision.transforms.functional import pil_to_tensor

    def read_jpeg(path: str) -> torch.Tensor:
        from PIL import Image

        with Image.open(path) as im:
            return pil_to_tensor(im.convert("RGB")).float().div_(255)

    def read_dicom(path: str) -> torch.Tensor:
        import pydicom

        grey = torch.from_numpy(np.asarray(pydicom.dcmread(path).pixel_array, dtype=np.float32) / 255)
        return grey.expand(3, *grey.shape)

    return read_jpeg if fmt == "jpeg" else read_dicom


def measure_torchvision(spec: dict) -> dict:
    """torchvision's Mask R-CNN at its defaults (min_size 800, max_size 1333), random weights."""
    set_threads(spec["threads"])
    import torch
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    start = time.perf_counter()
    # Sizes other than the defaults (800, 1333) only for smoke tests: the ratio means nothing then.
    min_size, max_size = spec.get("size") or (800, 1333)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=min_size, max_size=max_size).eval()
    load_s = time.perf_counter() - start
    read = _torchvision_reader(spec["format"])
    paths, batch = spec["paths"], spec["batch"]
    detections = []
    with torch.inference_mode():
        model([read(paths[0])])
        rss_warm = status_mb("VmRSS")
        start = time.perf_counter()
        for i in range(0, len(paths), batch):
            detections += [len(out["boxes"]) for out in model([read(p) for p in paths[i : i + batch]])]
        seconds = time.perf_counter() - start
    return {
        "images": len(paths),
        "seconds": seconds,
        # Random weights keep every one of its 100 boxes (scores ~0.9), so its mask head runs on
        # 100 RoIs per image; trained weights on a radiograph would keep fewer. Shown, not hidden.
        "detections_per_image": round(sum(detections) / len(detections), 1),
        "load_s": round(load_s, 2),
        "rss_after_warmup_mb": round(rss_warm, 1),
        **memory(),
    }


CHILDREN = {"limbscan": measure_limbscan, "torchvision": measure_torchvision, "profile": profile_limbscan,
            "gate": measure_gate}


def run_child(spec: dict, workdir: Path, timeout: float, extra_env: dict[str, str] | None = None) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is its JSON result."""
    spec_file = Path(tempfile.mkstemp(suffix=".json", dir=workdir)[1])
    spec_file.write_text(json.dumps(spec))
    threads = str(spec["threads"])
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **(extra_env or {})}
    try:
        done = run_module(__spec__.name, ["--child", str(spec_file)], env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        spec_file.unlink(missing_ok=True)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return {"error": lines[-1] if lines else f"exit status {done.returncode}", "stderr_tail": lines[-15:]}
    return last_json_line(done.stdout)


def add_ratios(rows: list[dict]) -> None:
    """ratio_vs_torchvision (same format, torchvision at batch 1), and score agreement between rows.

    ``max_abs_diff_vs_jpeg`` (DICOM rows): the largest probability difference against the same
    scenario and batch on JPEG; the DICOM files hold the same pixels, so anything above ~1e-4
    means the two readers disagree. ``max_abs_diff_vs_batch1`` (batched rows): the same against
    batch 1 on the same format (torchvision's detector pads a batch to its largest image).
    """
    peer = {
        r["format"]: r["images_per_s"]
        for r in rows
        if r["scenario"] == TORCHVISION and r.get("batch") == 1 and r.get("images_per_s")
    }
    probs = {
        (r["scenario"], r["format"], r["batch"], r.get("masks"), r.get("gate")): r["probabilities"]
        for r in rows
        if r.get("probabilities")
    }

    def diff(a: list[float] | None, b: list[float] | None) -> float | None:
        if not a or not b or len(a) != len(b):
            return None
        pairs = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]  # gate: unscored
        return round(max(abs(x - y) for x, y in pairs), 5) if pairs else None

    for r in rows:
        tv = peer.get(r["format"])
        r["ratio_vs_torchvision"] = round(r["images_per_s"] / tv, 2) if tv and r.get("images_per_s") else None
        mine = r.pop("probabilities", None)
        key = (r["scenario"], r["format"], r["batch"], r.get("masks"), r.get("gate"))
        if r["format"] != "jpeg" and (d := diff(mine, probs.get((key[0], "jpeg", *key[2:])))) is not None:
            r["max_abs_diff_vs_jpeg"] = d
        if r["batch"] != 1 and (d := diff(mine, probs.get((*key[:2], 1, *key[3:])))) is not None:
            r["max_abs_diff_vs_batch1"] = d


def print_rows(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="inference: images/s end to end (read + preprocess + model)")
    for col in ("scenario", "format", "batch", "masks", "gate", "images", "seconds", "images/s", "peak RSS MB",
                "x torchvision"):
        table.add_column(col, justify="left" if col in ("scenario", "format") else "right")
    for r in rows:
        name = "torchvision" if r["scenario"] == TORCHVISION else r["scenario"]
        if "error" in r:
            table.add_row(name, r["format"], str(r["batch"]), "", "", "", "", f"[red]{r['error'][:60]}", "", "")
            continue
        table.add_row(
            name, r["format"], str(r["batch"]), "" if r.get("masks") is None else str(r["masks"]),
            "" if r.get("gate") is None else str(r["gate"]), str(r["images"]), f"{r['seconds']:.2f}",
            f"{r['images_per_s']:.2f}", f"{r['peak_rss_mb']:.0f}",
            "" if r.get("ratio_vs_torchvision") is None else f"{r['ratio_vs_torchvision']:.1f}")
    console().print(table)


# -- driver ----------------------------------------------------------------------------------
def bundle_scenarios(bundle: Path) -> list[str]:
    """The bundle's scenarios from bundle.json, read directly: the parent stays free of torch."""
    manifest = bundle / "bundle.json"
    if not manifest.is_file():
        raise SystemExit(f"{bundle}: not a bundle (no bundle.json); make one with `limbscan export RUN -o BUNDLE`")
    return [s for s in json.loads(manifest.read_text())["scenarios"] if s in SCENARIOS]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, help="a bundle folder (limbscan export)")
    ap.add_argument("--fracatlas", type=Path, help="FracAtlas root (images/Fractured, images/Non_fractured)")
    ap.add_argument("--n", type=int, default=40, help="images per measurement")
    ap.add_argument("--batch-sizes", type=_ints, default=[1, 8])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scenarios", type=lambda s: s.split(","), help="default: every scenario in the bundle")
    ap.add_argument("--formats", type=lambda s: s.split(","), default=list(FORMATS))
    ap.add_argument("--masks", choices=("on", "off", "both"), default="on",
                    help="predict masks (on), boxes only (off), or measure both")
    ap.add_argument("--runtime", choices=("torch", "onnx"), default="torch",
                    help="limbscan.load's runtime for the classifiers (onnx: the bundle must hold ONNX files)")
    ap.add_argument("--torchvision-n", type=int, default=8, help="images timed for torchvision (~3.5 s each)")
    ap.add_argument("--torchvision-batch", type=int, default=0, help="also time torchvision at this batch size")
    ap.add_argument("--no-torchvision", action="store_true")
    ap.add_argument("--torchvision-size", type=_ints, default=[800, 1333], metavar="MIN,MAX",
                    help="torchvision's min_size,max_size; anything but its defaults only for smoke tests")
    ap.add_argument("--profile", action="store_true", help="also profile one scenario at batch 1")
    ap.add_argument("--profile-n", type=int, default=6, help="images in the profile")
    ap.add_argument("--profile-scenario", default=None, help="default: cascade, else the bundle's first")
    ap.add_argument("--skip-timing", action="store_true", help="with --profile: profile only")
    ap.add_argument("--quick", action="store_true", help="3 images, 1 torchvision image: a smoke test")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="set in every measured process, e.g. OMP_WAIT_POLICY=PASSIVE (repeatable)")
    ap.add_argument("--child-timeout", type=float, default=600)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/inference.json"))
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: one measurement
    args = ap.parse_args(argv)
    if args.child is None and (args.bundle is None or args.fracatlas is None):
        ap.error("--bundle and --fracatlas are required")
    if args.quick:
        args.n, args.torchvision_n, args.profile_n = min(args.n, 3), 1, min(args.profile_n, 2)
    if bad := [e for e in args.env if "=" not in e]:
        ap.error(f"--env takes KEY=VALUE, got {bad[0]!r}")
    args.env = dict(e.split("=", 1) for e in args.env)
    if len(args.torchvision_size) != 2:
        ap.error("--torchvision-size takes MIN,MAX")
    if unknown := set(args.formats) - set(FORMATS):
        ap.error(f"unknown format(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        spec = json.loads(args.child.read_text())
        print(json.dumps(CHILDREN[spec["kind"]](spec)))
        return None

    scenarios = args.scenarios or bundle_scenarios(args.bundle)
    if unknown := set(scenarios) - set(SCENARIOS):
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    masks = {"on": [True], "off": [False], "both": [True, False]}[args.masks]
    jpegs = pick_images(args.fracatlas, args.n)
    work = Path(tempfile.mkdtemp(prefix="limbscan-bench-inference-"))
    report: dict[str, Any] = {
        "benchmark": "inference",
        "command": command(__spec__.name, argv),
        "machine": machine_info(args.threads),
        "loadavg_start": loadavg(),
        "bundle": args.bundle.name,
        "runtime": args.runtime,
        # what changes CPU threading besides --threads (OMP_WAIT_POLICY: spinning threads on a
        # shared CPU can cost 10x), as the measured processes saw it
        "env": {
            k: v
            for k, v in {**os.environ, **args.env}.items()
            if k.startswith(("OMP_", "MKL_", "KMP_", "GOMP_", "TORCH_"))
        },
        "n": len(jpegs),
        "images": [p.name for p in jpegs],  # FracAtlas file names: no patient data in them
        "torchvision": {
            "model": "maskrcnn_resnet50_fpn",
            "weights": None,
            "min_size": args.torchvision_size[0],
            "max_size": args.torchvision_size[1],
            "images": min(len(jpegs), args.torchvision_n),
        },
        "rows": [],
    }
    rows: list[dict] = report["rows"]
    try:
        start = time.perf_counter()
        inputs = {"jpeg": [str(p) for p in jpegs]}
        if "dicom" in args.formats:
            inputs["dicom"] = [str(p) for p in write_dicoms(jpegs, work / "dicom")]
        print(f"{len(jpegs)} images ({len(inputs)} formats) ready in {time.perf_counter() - start:.1f} s", flush=True)

        def measure(spec: dict, label: dict) -> None:
            result = run_child({**spec, "threads": args.threads}, work, args.child_timeout, args.env)
            row = {**label, **result}
            if "seconds" in row:
                row["images_per_s"] = round(row["images"] / row["seconds"], 3)
                row["seconds"] = round(row["seconds"], 3)
            rows.append(row)
            shown = {k: v for k, v in row.items() if k not in ("probabilities", "stderr_tail")}
            print(json.dumps(shown), flush=True)

        if not args.skip_timing:
            for fmt in args.formats:
                if not args.no_torchvision:
                    paths = inputs[fmt][: args.torchvision_n]
                    for batch in sorted({1, args.torchvision_batch} - {0}):
                        measure({"kind": "torchvision", "paths": paths, "format": fmt, "batch": batch,
                                 "size": args.torchvision_size},
                                {"scenario": TORCHVISION, "format": fmt, "batch": batch, "masks": True})
                for scenario in scenarios:
                    for batch in args.batch_sizes:
                        for with_masks in masks:
                            if scenario == "whole-image" and not with_masks and True in masks:
                                continue  # no masks in that scenario: the row would repeat
                            measure({"kind": "limbscan", "bundle": str(args.bundle), "paths": inputs[fmt],
                                     "scenario": scenario, "batch": batch, "masks": with_masks, "runtime": args.runtime},
                                    {"scenario": scenario, "format": fmt, "batch": batch, "masks": with_masks,
                                     "gate": True})
                # The gate's cost: the default scenario without it, and the gate alone, in the same run.
                default = default_scenario(scenarios)
                measure({"kind": "limbscan", "bundle": str(args.bundle), "paths": inputs[fmt], "scenario": default,
                         "batch": 1, "masks": True, "runtime": args.runtime, "gate": False},
                        {"scenario": default, "format": fmt, "batch": 1, "masks": True, "gate": False})
                measure({"kind": "gate", "bundle": str(args.bundle), "paths": inputs[fmt]},
                        {"scenario": "input gate alone", "format": fmt, "batch": 1, "masks": None, "gate": True})
            add_ratios(rows)
            print_rows(rows)

        if args.profile:
            scenario = args.profile_scenario or default_scenario(scenarios)
            for with_masks in masks:
                # half fractured, half normal as in the timed list: small and large decodes alike
                paths = [str(p) for p in pick_images(args.fracatlas, min(args.profile_n, len(jpegs)))]
                spec = {
                    "kind": "profile",
                    "bundle": str(args.bundle),
                    "paths": paths,
                    "scenario": scenario,
                    "masks": with_masks,
                    "threads": args.threads,
                    "runtime": args.runtime,
                }
                result = run_child(spec, work, args.child_timeout, args.env)
                report.setdefault("profiles", []).append(result)
                print_profile(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    report["loadavg_end"] = loadavg()
    return write_report(args.out, report)


if __name__ == "__main__":
    main()
