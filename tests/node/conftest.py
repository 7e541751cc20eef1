"""Fixtures of the DICOM node's tests: a tiny bundle, free ports, phantom DICOM files, and the real
Orthanc and DCMTK (skipped, with the reason, where they are not installed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PATIENT_NAME = "Quixote^Alonso"  # in every phantom sent: must never reach a log line
PATIENT_ID = "PID-451-XYZ"


def _find(program: str) -> str | None:
    # Debian puts Orthanc in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port():
    return free_port


@pytest.fixture(scope="session")
def phantom_source(tiny_run) -> Path:
    """One phantom CR of the tiny run's dataset (320 x 224, uncompressed)."""
    return sorted((tiny_run[0] / "images").glob("*.dcm"))[0]


@pytest.fixture
def phantoms(phantom_source, tmp_path):
    """``make(n, study=None)``: n copies of a phantom CR, each a new SOP Instance (in one new study
    unless ``study`` is given), carrying a patient name and id that no log may show."""
    import pydicom
    from pydicom.uid import generate_uid

    counter = iter(range(10**6))

    def make(n: int, study: str | None = None) -> list[Path]:
        folder = tmp_path / f"phantoms-{next(counter)}"
        folder.mkdir()
        study = study or generate_uid()
        paths = []
        for i in range(n):
            ds = pydicom.dcmread(phantom_source)
            ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = i + 1
            paths.append(folder / f"{i:03d}.dcm")
            ds.save_as(paths[-1], enforce_file_format=True)
        return paths

    return make


# -- DCMTK ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def storescu():
    """``send(port, files, aet="STORESCU", extra=())``: dcmtk's storescu to the node; the finished process."""
    program = _find("storescu")
    if program is None:
        pytest.skip("dcmtk's storescu is not installed (apt-get install dcmtk; .ci/run does it as root)")

    def send(port: int, files, aet: str = "STORESCU", called: str = "LIMBSCAN", extra=(), check: bool = True):
        cmd = [program, "-aet", aet, "-aec", called, *extra, "127.0.0.1", str(port), *map(str, files)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    return send


# -- Orthanc -------------------------------------------------------------------------------------
@dataclass
class Orthanc:
    """A real Orthanc, run as a plain process on loopback with its own config and storage."""

    program: str
    folder: Path
    modalities: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # more configuration (e.g. LuaScripts)
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30.0) -> Orthanc:
        import requests

        config = {
            "Name": "limbscan-test", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"],
            "DicomModalities": self.modalities, "DicomCheckCalledAet": False, **self.extra,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=1))
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen([self.program, str(self.folder / "orthanc.json")], stdout=log,
                                        stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/system", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("Orthanc did not answer GET /system in time")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def get(self, path: str):
        import requests

        answer = requests.get(self.url + path, timeout=30)
        answer.raise_for_status()
        return answer

    def instances(self) -> list[dict]:
        return self.get("/instances?expand").json()

    def by_modality(self, modality: str) -> list[dict]:
        """Instances of one modality (SR, OT...), each with its Orthanc id and main tags."""
        found = []
        for inst in self.instances():
            series = self.get(f"/series/{inst['ParentSeries']}").json()
            if series["MainDicomTags"].get("Modality") == modality:
                found.append(inst)
        return found


@pytest.fixture
def orthanc(tmp_path):
    """``make(modalities=None, **extra)``: a configured, not yet started :class:`Orthanc`; stopped after the test."""
    program = _find("Orthanc")
    if program is None or not os.path.exists("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"):
        pytest.skip("Orthanc and its DICOMweb plugin are not installed (apt-get install orthanc orthanc-dicomweb; "
                    ".ci/run does it as root)")
    made: list[Orthanc] = []

    def make(modalities: dict | None = None, **extra) -> Orthanc:
        folder = tmp_path / f"orthanc-{len(made)}"
        folder.mkdir()
        made.append(Orthanc(program, folder, modalities or {}, extra))
        return made[-1]

    yield make
    for server in made:
        server.stop()
