"""The REST service end to end: a bundle exported from the tiny run, phantom and real DICOM uploads."""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from limbscan.io import read_image
from limbscan.operating_points import level_of
from limbscan.serve import background_server, create_app

TOKEN = "s3cret-token"
# What the DICOM upload's header and file name carry, and what must never come back out.
PHI = ("Doe^John", "Doe", "PHI-0042", "passwd")


@pytest.fixture(scope="module")
def model(tiny_run, tmp_path_factory):
    from limbscan.bundle import export_bundle
    from limbscan.inference import load

    _, run = tiny_run
    return load(export_bundle(run, tmp_path_factory.mktemp("serve_api") / "m.limbscan", gate=None))


@pytest.fixture(scope="module")
def phantoms(tiny_run) -> list[Path]:
    root, _ = tiny_run
    return sorted((root / "images").glob("*.png"))[:6]


@pytest.fixture(scope="module")
def dicom_with_phi(pydicom_data, tmp_path_factory) -> bytes:
    """RG3_UNCR (a real MONOCHROME1 CR of a tibia) with a patient's name and id written in."""
    ds = pydicom.dcmread(pydicom_data("RG3_UNCR.dcm"))
    ds.PatientName, ds.PatientID = "Doe^John", "PHI-0042"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _client(model, tmp_path: Path, **kwargs) -> TestClient:
    return TestClient(create_app(model, workdir=tmp_path / "work", **kwargs))


def _jpeg(png: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(png).convert("L").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _check_prediction(answer: dict, model) -> None:
    assert 0.0 <= answer["probability"] <= 1.0
    assert answer["scenario"] == model.default_scenario
    assert answer["threshold"] == pytest.approx(model.threshold())
    assert answer["label"] == ("abnormal" if answer["probability"] >= answer["threshold"] else "normal")
    assert answer["suspected_threshold"] == pytest.approx(model.suspected_threshold())
    assert answer["level"] == level_of(answer["probability"], answer["threshold"], answer["suspected_threshold"])
    assert str(uuid.UUID(answer["id"])) == answer["id"]
    assert answer["overlay_url"] == f"/v1/overlays/{answer['id']}.png"
    assert answer["file"] is None  # the client's file name is never echoed


def test_health_model_and_page(model, tmp_path):
    with _client(model, tmp_path) as client:
        assert client.get("/v1/health").json() == {"status": "ok"}
        manifest = client.get("/v1/model")
        assert manifest.status_code == 200
        assert manifest.json()["default_scenario"] == model.default_scenario
        # and why: the page shows it (#model-reason, filled from default_reason by app.js)
        assert manifest.json()["default_reason"] == model.default_reason
        assert model.default_reason.startswith(f"{model.default_scenario}: best validation AUC")
        assert manifest.json()["thresholds"] == pytest.approx(model.manifest["thresholds"])
        assert manifest.json()["operating_points"] == model.manifest["operating_points"]  # what the page shows
        assert str(model.path) not in manifest.text and str(tmp_path) not in manifest.text
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        # Everything the page loads comes from this server: it must work offline.
        for ref in ("/static/app.js", "/static/style.css"):
            assert ref in page.text
            assert client.get(ref).status_code == 200
        assert 'id="model-reason"' in page.text and "manifest.default_reason" in client.get("/static/app.js").text
        assert "http://" not in page.text and "https://" not in page.text
        assert client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]


def test_predict_png_jpeg_dicom_match_the_library(model, phantoms, pydicom_data, tmp_path):
    dicom = pydicom_data("RG3_UNCR.dcm")
    uploads = [
        ("a.png", phantoms[0].read_bytes(), phantoms[0]),
        ("b.jpg", _jpeg(phantoms[1]), None),
        ("c.dcm", dicom.read_bytes(), dicom),
    ]
    with _client(model, tmp_path) as client:
        for name, data, source in uploads:
            # The client's content type is wrong on purpose: the bytes decide.
            response = client.post("/v1/predict", files={"file": (name, data, "text/plain")})
            assert response.status_code == 200, response.text
            answer = response.json()
            _check_prediction(answer, model)
            if source is not None:
                pixels, meta = read_image(source)
                [expected] = model.predict([source])
                assert answer["probability"] == pytest.approx(expected.probability, abs=1e-5)
                assert (answer["height"], answer["width"]) == pixels.shape
                assert answer["body_part"] == meta.body_part
            overlay = client.get(answer["overlay_url"])
            assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
            image = Image.open(io.BytesIO(overlay.content))
            assert image.format == "PNG" and image.mode == "RGB"
            assert max(image.size) <= 1024


def test_errors_are_json_and_the_service_keeps_answering(model, phantoms, tmp_path):
    good = phantoms[0].read_bytes()
    limit = len(good) + 10_000
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with _client(model, tmp_path, token=TOKEN, max_upload_bytes=limit) as client:
        cases = [
            (401, {}, {"file": ("a.png", good)}),
            (401, {"Authorization": "Bearer wrong"}, {"file": ("a.png", good)}),
            (401, {"Authorization": TOKEN}, {"file": ("a.png", good)}),  # no scheme
            (415, auth, {"file": ("a.png", b"just some text, not an image " * 20)}),
            (413, auth, {"file": ("a.png", good[:64] + bytes(limit + 100_000))}),  # refused on Content-Length
            (413, auth, {"file": ("a.png", good[:64] + bytes(limit + 1_000))}),  # on the file's own size
            (422, auth, {"file": ("a.png", good[:40])}),  # cut short in its header
            (422, auth, {"file": ("a.png", good[:33] + b"\0\0\x10\0IDAT" + bytes(4096))}),  # corrupt pixel data
            (422, auth, {"file": ("a.dcm", bytes(128) + b"DICM" + bytes(300))}),  # a DICOM preamble, no data set
            (422, auth, {"file": ("a.png", b"")}),
        ]
        for status, headers, files in cases:
            response = client.post("/v1/predict", headers=headers, files=files)
            assert response.status_code == status, (status, response.text)
            detail = response.json()["detail"]
            assert isinstance(detail, str) and detail
            if status == 422:
                assert detail.startswith("upload: ") and len(detail) > len("upload: ") + 5  # the reader's reason
                assert str(tmp_path) not in detail and "a.png" not in detail and "a.dcm" not in detail
            if status == 401:
                assert response.headers["www-authenticate"] == "Bearer"
            assert client.get("/v1/health").json() == {"status": "ok"}
        assert client.get("/v1/model").status_code == 401
        not_multipart = client.post("/v1/predict", headers=auth, content=good)
        assert not_multipart.status_code == 415 and "multipart" in not_multipart.json()["detail"]
        # The service is still whole: a good upload after all of that.
        response = client.post("/v1/predict", headers=auth, files={"file": ("a.png", good)})
        assert response.status_code == 200
        overlay = response.json()["overlay_url"]
        assert client.get(overlay).status_code == 401
        assert client.get(overlay, headers=auth).status_code == 200
        for bad in ("../../etc/passwd", "not-a-uuid", str(uuid.uuid4()).upper(), "{" + str(uuid.uuid4()) + "}",
                    str(uuid.uuid4())):
            assert client.get(f"/v1/overlays/{bad}.png", headers=auth).status_code == 404
        assert client.post("/v1/predict?scenario=nope", headers=auth, files={"file": ("a.png", good)}).status_code == 400


def test_upload_too_large_is_refused_while_it_arrives(model, phantoms, tmp_path):
    """A chunked body with no Content-Length: the server stops reading once past the limit."""
    app = create_app(model, workdir=tmp_path / "work", max_upload_bytes=100_000)
    chunk, n_chunks, served = bytes(64 * 1024), 200, 0
    boundary = "limbscan-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + phantoms[0].read_bytes()[:64]
    sent: list[dict] = []

    async def receive():
        nonlocal served
        served += 1
        if served == 1:
            return {"type": "http.request", "body": head, "more_body": True}
        return {"type": "http.request", "body": chunk, "more_body": served < n_chunks}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/predict", "raw_path": b"/v1/predict", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
                    (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1), "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    assert b"limit" in b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert served <= 100_000 // len(chunk) + 3  # stopped near the limit, not after 200 chunks (12.5 MiB)


def test_upload_names_and_headers_never_reach_disk_logs_or_answers(model, phantoms, dicom_with_phi, tmp_path, caplog):
    work = tmp_path / "work"
    seen: set[str] = set()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def listing() -> set[str]:
        return {str(p.relative_to(work)) for p in work.rglob("*")}

    caplog.set_level(logging.DEBUG)
    with _client(model, tmp_path, token=TOKEN) as client:
        answers, codes = [], []
        for name, data in [("../../etc/passwd.png", phantoms[0].read_bytes()), ("Doe^John.dcm", dicom_with_phi),
                           ("../Doe^John.png", b"\x89PNG\r\n\x1a\n" + bytes(200))]:
            response = client.post("/v1/predict", headers=auth, files={"file": (name, data, "application/dicom")})
            answers.append(response.text)
            codes.append(response.status_code)
            seen |= listing()
        assert codes == [200, 200, 422]
        assert not list((work / "uploads").iterdir())  # each upload deleted once predicted
    for text in [*seen, *answers, caplog.text]:
        for secret in (*PHI, TOKEN, "Bearer"):
            assert secret not in text, (secret, text[:200])
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "etc").exists()
    assert (work / "uploads").stat().st_mode & 0o077 == 0 and (work / "overlays").stat().st_mode & 0o077 == 0
    assert {Path(p).name for p in seen} >= {"uploads", "overlays"}
    overlays = [p for p in seen if p.startswith("overlays/")]
    assert len(overlays) == 2 and all(str(uuid.UUID(Path(p).stem)) == Path(p).stem for p in overlays)
    lines = [r.getMessage() for r in caplog.records if r.name == "limbscan.serve"]
    assert len(lines) == 3 and all(" POST /v1/predict " in line for line in lines)


def test_old_overlays_are_evicted(model, phantoms, tmp_path):
    with _client(model, tmp_path, keep_overlays=2) as client:
        urls = [client.post("/v1/predict", files={"file": ("a.png", p.read_bytes())}).json()["overlay_url"]
                for p in phantoms[:3]]
        assert [client.get(u).status_code for u in urls] == [404, 200, 200]
        assert len(list((tmp_path / "work" / "overlays").glob("*.png"))) == 2


def test_several_files_in_one_request(model, phantoms, tmp_path):
    with _client(model, tmp_path) as client:
        files = [("files", ("a.png", phantoms[0].read_bytes())), ("files", ("b.bin", b"nothing to see " * 20)),
                 ("files", ("c.png", phantoms[1].read_bytes()))]
        response = client.post("/v1/predict", files=files)
        assert response.status_code == 200
        results = response.json()["results"]
        assert [r.get("status", 200) for r in results] == [200, 415, 200]
        _check_prediction(results[0], model)
        assert results[0]["id"] != results[2]["id"]


def test_a_bundle_without_operating_points_answers_likely_or_normal(model, phantoms, tmp_path, with_operating_points):
    from limbscan.inference import load

    old = load(with_operating_points(model.path, None, None))  # exported before operating points
    with _client(old, tmp_path) as client:
        assert "operating_points" not in client.get("/v1/model").json()
        for phantom in phantoms[:3]:
            answer = client.post("/v1/predict", files={"file": ("a.png", phantom.read_bytes())}).json()
            assert answer["suspected_threshold"] is None
            assert answer["level"] == ("likely" if answer["probability"] >= answer["threshold"] else "normal")


def test_default_workdir_is_removed_on_shutdown(model):
    app = create_app(model)
    work = app.state.service.workdir
    with TestClient(app) as client:
        assert client.get("/v1/health").status_code == 200
        assert work.is_dir()
    assert not work.exists()


def test_load_on_a_real_server(model, phantoms, tmp_path):
    """200 uploads, 16 at a time, one in ten corrupt: every good one scored, every bad one 422."""
    uploads = [p.read_bytes() for p in phantoms]
    rng = np.random.default_rng(0)
    corrupt = set(rng.choice(200, size=20, replace=False).tolist())
    app = create_app(model, workdir=tmp_path / "work", max_concurrency=2)

    async def hammer(base: str) -> tuple[list[int], list[dict], list[int]]:
        limiter = asyncio.Semaphore(16)
        timeout = httpx.Timeout(120.0)
        async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
            async def one(i: int):
                data = uploads[i % len(uploads)]
                if i in corrupt:
                    data = data[:8] + bytes(100 + i)  # a PNG signature, then nothing PNG
                async with limiter:
                    response = await client.post("/v1/predict", files={"file": (f"{i}.png", data)})
                return response.status_code, response.json()

            async def probe():
                codes = []
                for _ in range(5):
                    codes.append((await client.get("/v1/health")).status_code)
                    await asyncio.sleep(0.2)
                return codes

            results, health = await asyncio.gather(asyncio.gather(*(one(i) for i in range(200))), probe())
            after = (await client.get("/v1/health")).status_code
        return [code for code, _ in results], [body for _, body in results], [*health, after]

    with background_server(app) as base:  # wait_for fails the test past 120 s
        codes, bodies, health = asyncio.run(asyncio.wait_for(hammer(base), timeout=120))
    for i, (code, body) in enumerate(zip(codes, bodies)):
        if i in corrupt:
            assert code == 422 and body["detail"].startswith("upload: "), (i, code, body)
        else:
            assert code == 200 and 0.0 <= body["probability"] <= 1.0, (i, code, body)
    assert health == [200] * 6
    # Two predictions at a time share one model: the same bytes still get the same score.
    by_image: dict[int, set[float]] = {}
    for i, body in enumerate(bodies):
        if i not in corrupt:
            by_image.setdefault(i % len(uploads), set()).add(round(body["probability"], 6))
    assert len(by_image) == len(uploads) and all(len(scores) == 1 for scores in by_image.values())
    assert not list((tmp_path / "work" / "uploads").iterdir())


@pytest.mark.parametrize(("host", "env_token", "warned"), [
    ("127.0.0.1", None, False), ("localhost", None, False), ("0.0.0.0", None, True), ("0.0.0.0", "from-env", False),
])
def test_serve_command(host, env_token, warned, tmp_path, monkeypatch):
    import uvicorn
    from typer.testing import CliRunner

    import limbscan.serve
    from limbscan.cli import app

    built, ran = {}, {}
    monkeypatch.setattr(limbscan.serve, "create_app", lambda bundle, **kw: built.update(bundle=bundle, **kw) or "APP")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    env = {"LIMBSCAN_TOKEN": env_token} if env_token else {}
    monkeypatch.delenv("LIMBSCAN_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["serve", str(tmp_path), "--host", host, "--port", "8123", "--max-upload-mb", "2"],
                                env=env)
    assert result.exit_code == 0, result.output
    assert ("without a token" in result.stderr) is warned
    assert built["bundle"] == tmp_path and built["token"] == env_token and built["max_upload_bytes"] == 2 * 1024 * 1024
    assert ran == {"app": "APP", "host": host, "port": 8123, "access_log": False, "log_level": "info"}
