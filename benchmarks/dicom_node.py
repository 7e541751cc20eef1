"""DICOM node benchmark: images/s and latency from C-STORE received to SR stored in the destination.

A ``limbscan listen`` node (in this process, as the tests run it) receives N radiographs from one
or several senders at once (DCMTK's ``storescu``, one process and one association per sender),
scores them and sends the SR and SC to a real Orthanc by C-STORE. Per image:

- received: when the node stored the object (its C-STORE answered right after);
- delivered: when Orthanc acknowledged the SR (its C-STORE response: the SR is stored there);
- latency = delivered - received; throughput = N / (last delivered - first received).

With all N sent at once the latency is mostly waiting in the queue (one worker scores one image
at a time); the ``paced`` run sends one image at a time, each once the previous SR is stored,
and so measures the pipeline alone.

Every image is a copy of one source (default: pydicom-data's RG3_UNCR, a 1760 x 1760 CR of
6 MB) under a new SOP Instance UID. Needs Orthanc (+ its DICOMweb plugin) and DCMTK on PATH
(``apt-get install orthanc orthanc-dicomweb dcmtk``); the node's whole folder, Orthanc's storage
and the JSON's ``loadavg`` are kept for inspection::

    .venv/bin/python -m benchmarks.dicom_node --bundle model.limbscan --images 40 --senders 1,4 \\
        --out benchmarks/results/dicom_node.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._common import command, loadavg, machine_info, write_report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _program(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        sys.exit(f"{name} is not installed: apt-get install orthanc orthanc-dicomweb dcmtk")
    return found


def make_images(source: Path, n: int, folder: Path) -> list[Path]:
    """``n`` copies of ``source``, each a new SOP Instance (one study per copy)."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(source)
    paths = []
    for i in range(n):
        ds = template.copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(folder / f"{i:05d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def start_orthanc(folder: Path) -> tuple[subprocess.Popen, int, int]:
    import requests

    http, dicom = _free_port(), _free_port()
    config = {"StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"), "HttpPort": http,
              "DicomPort": dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen([_program("Orthanc"), str(folder / "orthanc.json")],
                               stdout=open(folder / "orthanc.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{http}/system", timeout=1).ok:
                return process, http, dicom
        except requests.RequestException:
            time.sleep(0.1)
    process.kill()
    sys.exit("Orthanc did not start")


def run_once(model, images: list[Path], senders: int, work: Path, paced: bool = False) -> dict[str, Any]:
    from limbscan.node import Node, NodeConfig, parse_forward

    orthanc, http, dicom = start_orthanc(work / "orthanc")
    storescu = _program("storescu")
    config = NodeConfig(out=work / "node", allowed=["BENCH"], port=0,
                        forward=[parse_forward(f"ORTHANC@127.0.0.1:{dicom}")])
    shares = [images[i::senders] for i in range(senders)]
    try:
        with Node(model, config) as node:
            started = time.time()

            def send(files: list[Path]) -> int:
                cmd = [storescu, "-aet", "BENCH", "-aec", "LIMBSCAN", "127.0.0.1", str(node.port), *map(str, files)]
                return subprocess.run(cmd, capture_output=True).returncode

            if paced:  # one at a time, each once the previous one's SR is stored
                codes = []
                for path in images:
                    codes.append(send([path]))
                    node.wait_idle(timeout=600, poll=0.01)
            else:
                with ThreadPoolExecutor(senders) as pool:
                    codes = list(pool.map(send, shares))
            sent_s = time.time() - started
            if any(codes) or not node.wait_idle(timeout=3600):
                raise RuntimeError(f"senders' exit codes {codes}; node idle: {node.idle()}")
        records = [json.loads(line) for line in (config.out / "predictions.jsonl").read_text().splitlines()]
        delivered = {}
        for line in (config.out / "delivered.jsonl").read_text().splitlines():
            row = json.loads(line)
            delivered.setdefault(row["uid"], row["time"])
    finally:
        orthanc.terminate()
        orthanc.wait(timeout=30)
    latencies, received, done = [], [], []
    for r in records:
        sr_uid = Path(r["dicom"][-1]).stem  # --dicom-out sc,sr: the SR is the last
        received.append(r["received_at"])
        done.append(delivered[sr_uid])
        latencies.append(delivered[sr_uid] - r["received_at"])
    latencies.sort()
    span = max(done) - min(received)

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3)

    return {
        "senders": "1, paced" if paced else senders, "images": len(records), "send_seconds": round(sent_s, 3),
        "seconds_first_received_to_last_sr_stored": round(span, 3),
        "images_per_second": round(len(records) / span, 3),
        "latency_s": {"mean": round(sum(latencies) / len(latencies), 3), "p50": pct(0.5), "p95": pct(0.95),
                      "max": round(latencies[-1], 3), "min": round(latencies[0], 3)},
        "scoring_s_mean": round(sum(r["seconds"] for r in records) / len(records), 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--senders", default="1,4", help="comma list: senders at once, one run each")
    parser.add_argument("--paced", type=int, default=5, help="images of the paced run (0: none)")
    parser.add_argument("--source", type=Path, help="DICOM file to copy (default: pydicom-data's RG3_UNCR)")
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a temporary folder, kept)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dicom_node.json"))
    args = parser.parse_args(argv)

    from pydicom.data import get_testdata_file

    import limbscan

    source = args.source or get_testdata_file("RG3_UNCR.dcm")
    if source is None:
        sys.exit("no --source and no pydicom-data (pip install pydicom-data)")
    work = args.work or Path(tempfile.mkdtemp(prefix="limbscan-node-bench-"))
    model = limbscan.load(args.bundle)
    images = make_images(Path(source), args.images, work / "images")
    start = loadavg()
    rows = []
    if args.paced:
        rows.append(run_once(model, images[: args.paced], 1, work / "paced", paced=True))
    for senders in (int(s) for s in args.senders.split(",")):
        rows.append(run_once(model, images, senders, work / f"senders-{senders}"))
    for row in rows:
        print(f"{row['senders']} sender(s): {row['images_per_second']} images/s, latency p50 {row['latency_s']['p50']} s, "
              f"p95 {row['latency_s']['p95']} s", flush=True)
    result = {
        "what": "C-STORE received by limbscan listen -> scored -> SR + SC stored in Orthanc by C-STORE",
        "command": command(__spec__.name, argv), "bundle": str(args.bundle),
        "default_scenario": model.default_scenario, "source": Path(source).name, "machine": machine_info(),
        "loadavg_start": start, "loadavg_end": loadavg(), "work": str(work), "runs": rows,
    }
    print("| senders | images | images/s | latency mean | p50 | p95 | max | scoring per image |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lat = r["latency_s"]
        print(f"| {r['senders']} | {r['images']} | {r['images_per_second']} | {lat['mean']} s | {lat['p50']} s | "
              f"{lat['p95']} s | {lat['max']} s | {r['scoring_s_mean']} s |")
    write_report(args.out, result)


if __name__ == "__main__":
    main()
