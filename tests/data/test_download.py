"""download.py against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import random
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from rich.console import Console

from limbscan.data import download as dl
from limbscan.errors import BadInputError, LimbscanError

ARTICLE_PATH = "/v2/articles/22363012"
ZIP_PATH = "/files/FracAtlas.zip"


def fracatlas_zip() -> bytes:
    """A small zip laid out like the real archive; the image is random bytes so the zip has some size."""
    rng = random.Random(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("FracAtlas/dataset.csv", "image_id,hip,leg,fractured\nx.jpg,0,1,1\n")
        zf.writestr("FracAtlas/images/Fractured/x.jpg", bytes(rng.randrange(256) for _ in range(20000)))
        zf.writestr("FracAtlas/images/Non_fractured/", b"")
    return buf.getvalue()


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours Range unless ``server.ignore_range``; cuts the first ``server.drops`` bodies."""

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        payload = body[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if srv.drops > 0 and self.path == ZIP_PATH:
            srv.drops -= 1
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.log, srv.ignore_range, srv.drops = [], False, 0
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    body = fracatlas_zip()
    srv.zip_body = body
    srv.zip_md5 = hashlib.md5(body).hexdigest()
    srv.base = base
    srv.files = {
        ZIP_PATH: body,
        ARTICLE_PATH: json.dumps(
            {
                "id": 22363012,
                "files": [
                    {"name": "README.txt", "size": 3, "download_url": f"{base}/files/README.txt", "computed_md5": "x"},
                    {
                        "name": "FracAtlas.zip",
                        "size": len(body),
                        "download_url": base + ZIP_PATH,
                        "computed_md5": srv.zip_md5,
                        "supplied_md5": srv.zip_md5,
                        "is_link_only": False,
                    },
                ],
            }
        ).encode(),
    }
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def session():
    with requests.Session() as s:
        s.trust_env = False  # a proxy from the environment must not capture 127.0.0.1
        yield s


def zip_requests(srv) -> list[str | None]:
    return [rng for path, rng in srv.log if path == ZIP_PATH]


def test_full_download_verifies_and_unpacks(server, session, tmp_path):
    out = io.StringIO()
    root = dl.download_fracatlas(
        tmp_path / "dl", server.base + ARTICLE_PATH, progress=False, session=session,
        backoff=0, console=Console(file=out, width=400),
    )
    assert root == tmp_path / "dl" / "FracAtlas"
    assert (root / "dataset.csv").read_text().startswith("image_id")
    with zipfile.ZipFile(io.BytesIO(server.zip_body)) as zf:
        assert (root / "images/Fractured/x.jpg").read_bytes() == zf.read("FracAtlas/images/Fractured/x.jpg")
    assert (tmp_path / "dl" / "FracAtlas.zip").read_bytes() == server.zip_body
    assert not (tmp_path / "dl" / "README.txt").exists()  # only the archive is fetched
    text = out.getvalue()
    assert "CC BY 4.0" in text and "10.1038/s41597-023-02432-4" in text and str(root) in text

    # A second run finds the verified archive and the unpacked root: no new download.
    before = len(zip_requests(server))
    again = dl.download_fracatlas(tmp_path / "dl", server.base + ARTICLE_PATH, progress=False, session=session,
                                  backoff=0, console=Console(file=io.StringIO()))
    assert again == root and len(zip_requests(server)) == before


def test_download_file_resumes_from_part(server, session, tmp_path):
    body, half = server.zip_body, len(server.zip_body) // 2
    dest = tmp_path / "FracAtlas.zip"
    (tmp_path / "FracAtlas.zip.part").write_bytes(body[:half])
    got = dl.download_file(server.base + ZIP_PATH, dest, len(body), server.zip_md5, progress=False, session=session)
    assert zip_requests(server) == [f"bytes={half}-"]
    assert got.read_bytes() == body
    assert not (tmp_path / "FracAtlas.zip.part").exists()


def test_server_ignoring_range_restarts_cleanly(server, session, tmp_path):
    body = server.zip_body
    server.ignore_range = True
    # Garbage in the part: appending the full 200 body to it would give a wrong file.
    (tmp_path / "a.zip.part").write_bytes(b"\xff" * (len(body) // 3))
    got = dl.download_file(server.base + ZIP_PATH, tmp_path / "a.zip", len(body), server.zip_md5,
                           progress=False, session=session)
    assert zip_requests(server)[0] is not None  # it did ask to resume
    assert got.read_bytes() == body


def test_dropped_connection_is_retried_with_range(server, session, tmp_path):
    body = server.zip_body
    server.drops = 1
    got = dl.download_file(server.base + ZIP_PATH, tmp_path / "a.zip", len(body), server.zip_md5,
                           progress=False, session=session, backoff=0, chunk_bytes=1024)
    ranges = zip_requests(server)
    assert len(ranges) == 2 and ranges[0] is None and ranges[1] is not None
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0
    assert got.read_bytes() == body


def test_dropped_connection_without_size_still_resumes(server, session, tmp_path):
    server.drops = 1
    got = dl.download_file(server.base + ZIP_PATH, tmp_path / "a.zip", None, server.zip_md5,
                           progress=False, session=session, backoff=0, chunk_bytes=1024)
    assert got.read_bytes() == server.zip_body
    assert zip_requests(server)[-1] is not None  # the retry resumed rather than starting over


def test_md5_mismatch_deletes_the_bad_file(server, session, tmp_path):
    dest = tmp_path / "a.zip"
    with pytest.raises(LimbscanError, match="checksum mismatch.*deleted"):
        dl.download_file(server.base + ZIP_PATH, dest, len(server.zip_body), "0" * 32,
                         progress=False, session=session)
    assert not dest.exists() and not (tmp_path / "a.zip.part").exists()


def test_http_404_fails_fast_without_retries(server, session, tmp_path):
    with pytest.raises(dl.NetworkError, match="404"):
        dl.download_file(server.base + "/files/missing.zip", tmp_path / "m.zip", None, None,
                         progress=False, session=session, retries=3, backoff=0)
    assert [p for p, _ in server.log] == ["/files/missing.zip"]


def test_unreachable_server_names_the_manual_route(session, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is closed now: connecting is refused at once.
    with pytest.raises(LimbscanError) as info:
        dl.download_fracatlas(tmp_path, f"http://127.0.0.1:{port}{ARTICLE_PATH}", progress=False,
                              session=session, retries=1, backoff=0, console=Console(file=io.StringIO()))
    message = str(info.value)
    assert "by hand" in message and dl.FIGSHARE_URL in message and "limbscan data import fracatlas" in message


def test_disk_full_keeps_the_part_and_says_so(server, session, tmp_path, monkeypatch):
    real_open = open

    class FullDisk:
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            if self.written:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += self.fh.write(data)
            return len(data)

    monkeypatch.setattr(dl, "open", lambda path, mode="r", *a, **k: FullDisk(real_open(path, mode, *a, **k)),
                        raising=False)
    with pytest.raises(LimbscanError, match="disk full.*resume"):
        dl.download_file(server.base + ZIP_PATH, tmp_path / "a.zip", len(server.zip_body), server.zip_md5,
                         progress=False, session=session, chunk_bytes=4096)
    part = tmp_path / "a.zip.part"
    assert part.read_bytes() == server.zip_body[:4096]
    monkeypatch.undo()
    got = dl.download_file(server.base + ZIP_PATH, tmp_path / "a.zip", len(server.zip_body), server.zip_md5,
                           progress=False, session=session)
    assert got.read_bytes() == server.zip_body and zip_requests(server)[-1] == "bytes=4096-"


@pytest.mark.parametrize("member", ["../evil.txt", "FracAtlas/../../evil.txt", "/abs/evil.txt", "C:/evil.txt",
                                    "..\\evil.txt"])
def test_unpack_refuses_path_traversal(tmp_path, member):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("FracAtlas/dataset.csv", "x")
        zf.writestr(member, "pwned")
    dest = tmp_path / "out" / "inner"
    dest.mkdir(parents=True)
    with pytest.raises(BadInputError, match="outside"):
        dl.unpack_zip(archive, dest)
    assert list(dest.iterdir()) == []  # refused before anything was written
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_unpack_reports_a_corrupt_archive(tmp_path):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(b"not a zip at all")
    with pytest.raises(BadInputError, match="not a readable zip"):
        dl.unpack_zip(archive, tmp_path)


def test_archive_files_picks_zips_and_rejects_odd_names():
    article = {"files": [
        {"name": "notes.pdf", "size": 1, "download_url": "u1"},
        {"name": "A.zip", "size": 5, "download_url": "u2", "computed_md5": "", "supplied_md5": "abc"},
        {"name": "L.zip", "size": 5, "download_url": "u3", "is_link_only": True},
    ]}
    assert dl.archive_files(article) == [dl.RemoteFile("A.zip", "u2", 5, "abc")]
    with pytest.raises(LimbscanError, match="no zip"):
        dl.archive_files({"files": [{"name": "notes.pdf", "download_url": "u"}]})
    with pytest.raises(LimbscanError, match="plain file name"):
        dl.archive_files({"files": [{"name": "../x.zip", "download_url": "u"}]})


def test_find_root_needs_csv_beside_images(tmp_path):
    (tmp_path / "a" / "FracAtlas").mkdir(parents=True)
    (tmp_path / "a" / "FracAtlas" / "dataset.csv").write_text("x")
    with pytest.raises(LimbscanError, match="dataset.csv"):
        dl.find_fracatlas_root(tmp_path)
    (tmp_path / "a" / "FracAtlas" / "images").mkdir()
    assert dl.find_fracatlas_root(tmp_path) == tmp_path / "a" / "FracAtlas"
