"""The REST service: one FastAPI app per loaded model, plus the web page that uses it.

Uploads are treated as patient data: they are written under the server's work folder with a
name the server makes up (never the client's), deleted once predicted, and neither their
names, their DICOM headers nor the request headers ever reach a log line or an answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from limbscan.analysis import AnalyseOptions, Analyser
from limbscan.errors import BadInputError
from limbscan.io.images import sniff_bytes

if TYPE_CHECKING:
    from limbscan.inference import Model

log = logging.getLogger("limbscan.serve")

MIB = 1024 * 1024
KEEP_OVERLAYS = 500
MAX_FILES = 16  # per request, for the several-files form
# Room for the multipart boundaries and part headers around the image's own bytes.
_MULTIPART_SLACK = 64 * 1024
_SUFFIX = {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg"}
_SNIFF_BYTES = 132
_STATIC = ("limbscan.serve", "static")
# The page loads nothing from elsewhere; overlays arrive as blob: URLs (fetched with the token).
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PREDICT_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "One DICOM, PNG or JPEG image (told by its bytes, not its name)."},
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": f"Or up to {MAX_FILES} images; answered as {{'results': [...]}}."},
                    },
                }
            }
        },
    },
    "responses": {
        "401": {"description": "Missing or wrong bearer token."},
        "413": {"description": "Upload larger than the server accepts."},
        "415": {"description": "Not a DICOM, PNG or JPEG file, or not multipart/form-data."},
        "422": {"description": "The image cannot be decoded; `detail` says why."},
    },
}


class _TooLarge(Exception):
    """The request body passed the upload limit while it was being read."""


class _Overlays:
    """The overlay PNGs on disk, newest last; the oldest go once there are more than ``keep``."""

    def __init__(self, folder: Path, keep: int):
        self.folder, self.keep = folder, keep
        self._lock = threading.Lock()
        self._ids: OrderedDict[str, None] = OrderedDict()
        # A work folder reused across restarts: what is already there is served and evicted in turn.
        for png in sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime):
            if _canonical_uuid(png.stem):
                self._ids[png.stem] = None
        self._evict()

    def path(self, overlay_id: str) -> Path:
        return self.folder / f"{overlay_id}.png"

    def add(self, overlay_id: str) -> None:
        with self._lock:
            self._ids[overlay_id] = None
            self._evict()

    def _evict(self) -> None:
        while len(self._ids) > self.keep:
            old, _ = self._ids.popitem(last=False)
            self.path(old).unlink(missing_ok=True)


class _Service:
    """Everything one app holds: the model, its limits, its work folder and its worker threads."""

    def __init__(self, model: Model, token: str | None, max_upload_bytes: int, max_concurrency: int,
                 workdir: Path | None, keep_overlays: int, decode_lock: threading.Lock | None = None,
                 gate: bool = True):
        if max_upload_bytes < 1 or max_concurrency < 1:
            raise ValueError("max_upload_bytes and max_concurrency must be positive")
        self.model = model
        self.gate = gate
        self.token = token.encode() if token else None
        self.max_upload_bytes = max_upload_bytes
        self.max_concurrency = max_concurrency
        self.owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="limbscan-serve-")) if workdir is None else Path(workdir)
        self.uploads, overlay_dir = self.workdir / "uploads", self.workdir / "overlays"
        self.prepare_folders()
        self.overlays = _Overlays(overlay_dir, keep_overlays)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        # io.dicom collects pydicom's warnings with warnings.catch_warnings, which is process-wide
        # before Python 3.14: two decodes at once could let a warning quoting a header value out.
        self._decode_lock = decode_lock or threading.Lock()

    def prepare_folders(self) -> None:
        # Only this user may look inside: the uploads are patient images, and so are the overlays.
        self.uploads.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.workdir / "overlays").mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in self.uploads.iterdir():  # left by a crash: patient data with no answer to give
            stale.unlink(missing_ok=True)

    @property
    def executor(self) -> ThreadPoolExecutor:
        # A pool of max_concurrency threads is the semaphore: further uploads wait their turn
        # while the event loop goes on answering health checks.
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="limbscan-predict")
            return self._executor

    def shutdown(self) -> None:
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(value.strip().encode(), self.token)

    def analyser(self, scenario: str | None) -> Analyser:
        """The one per-image path (limbscan.analysis), with this service's options for ``scenario``."""
        return Analyser(self.model, AnalyseOptions(scenario=scenario, gate=self.gate), self._decode_lock)

    def predict_upload(self, upload: UploadFile, fmt: str, scenario: str | None) -> dict:
        """Copy one upload to a server-named file, then the one per-image path (worker thread)."""
        overlay_id = str(uuid.uuid4())
        path = self.uploads / f"{overlay_id}{_SUFFIX[fmt]}"
        analyser = self.analyser(scenario)
        try:
            upload.file.seek(0)
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
                shutil.copyfileobj(upload.file, out)
            # The record's "file" stays null: the client's name is never echoed.
            analysis = analyser.one(path, name="")
            analyser.write(analysis, overlay=self.overlays.path(overlay_id), overlay_ref=f"/v1/overlays/{overlay_id}.png")
        except BadInputError as err:
            raise HTTPException(422, f"upload: {err.problem.replace(str(path), 'upload')}") from None
        finally:
            path.unlink(missing_ok=True)
        answer = analysis.record
        if "overlay" in answer:
            self.overlays.add(overlay_id)
            answer.update(id=overlay_id, overlay_url=answer.pop("overlay"))
        return answer


def create_app(
    model: Model | str | Path,
    *,
    token: str | None = None,
    max_upload_bytes: int = 64 * MIB,
    max_concurrency: int = 2,
    workdir: Path | None = None,
    keep_overlays: int = KEEP_OVERLAYS,
    node: Path | None = None,
    decode_lock: threading.Lock | None = None,
    gate: bool = True,
) -> FastAPI:
    """The service for one model (a loaded :class:`~limbscan.inference.Model` or a bundle path).

    ``token``: a bearer token every ``/v1`` call but health needs. ``max_upload_bytes``: a body's cap,
    enforced as it arrives. ``workdir``: uploads (deleted once predicted) and the last
    ``keep_overlays`` overlays (default: a temporary folder). ``node``: a ``limbscan listen`` folder
    shown at ``/v1/node``; ``decode_lock``: its decode lock when both share a process.
    ``gate=False`` scores every upload, in scope or not.
    """
    if isinstance(model, (str, Path)):
        from limbscan.inference import load

        model = load(model)
    service = _Service(model, token, max_upload_bytes, max_concurrency, workdir, keep_overlays, decode_lock, gate)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.prepare_folders()
        try:
            yield
        finally:
            service.shutdown()

    from limbscan import __version__

    app = FastAPI(
        title="limbscan",
        version=__version__,
        summary="Flags abnormal lower-limb radiographs and localises the lesion. Research software, not a medical device.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(_RequestLog)

    def require_token(request: Request) -> None:
        if not service.authorised(request):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/v1/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model", dependencies=[Depends(require_token)])
    async def model_info() -> dict:
        """The bundle's manifest (bundle.json): scenarios, operating points, preprocessing, file hashes."""
        return service.model.manifest

    @app.post("/v1/predict", dependencies=[Depends(require_token)], openapi_extra=_PREDICT_DOC)
    async def predict(request: Request, scenario: str | None = None) -> JSONResponse:
        """Predict one image (field ``file``) or several (field ``files``); content decides the format."""
        if scenario is not None and scenario not in service.model.scenarios:
            raise HTTPException(400, f"scenario {scenario!r} is not in this bundle: {', '.join(service.model.scenarios)}")
        limit = service.max_upload_bytes + _MULTIPART_SLACK
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise HTTPException(413, _too_large(service.max_upload_bytes))
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise HTTPException(415, "send the image as multipart/form-data, field 'file'")
        # Starlette's parser has no cap on file parts: the byte count happens under it, on receive.
        limited = Request(request.scope, _limited_receive(request.receive, limit))
        try:
            async with limited.form(max_files=MAX_FILES, max_fields=MAX_FILES) as form:
                single = form.getlist("file")
                several = form.getlist("files")
                uploads = [u for u in [*single, *several] if isinstance(u, UploadFile)]
                if not uploads:
                    raise HTTPException(400, "no image: send it as multipart/form-data field 'file' (or 'files')")
                if len(single) == 1 and not several:
                    return JSONResponse(await _predict_one(service, uploads[0], scenario))
                results = []
                for upload in uploads:
                    try:
                        results.append(await _predict_one(service, upload, scenario))
                    except HTTPException as err:
                        results.append({"status": err.status_code, "detail": err.detail})
                return JSONResponse({"results": results})
        except _TooLarge:
            raise HTTPException(413, _too_large(service.max_upload_bytes)) from None
        except ClientDisconnect:
            raise HTTPException(400, "the client left before the upload was complete") from None

    @app.get("/v1/overlays/{overlay_id}.png", dependencies=[Depends(require_token)],
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def overlay(overlay_id: str) -> Response:
        """The overlay of an earlier prediction (the last few hundred are kept)."""
        if not _canonical_uuid(overlay_id):
            raise HTTPException(404, "no such overlay")
        try:
            data = await asyncio.to_thread(service.overlays.path(overlay_id).read_bytes)
        except FileNotFoundError:
            raise HTTPException(404, "no such overlay (evicted or never made)") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/v1/node", dependencies=[Depends(require_token)])
    async def node_status() -> Response:
        """The DICOM node's status and latest results, newest first (``limbscan listen``'s node.json);
        404 when this service shows no node."""
        if node is None:
            raise HTTPException(404, "this service shows no DICOM node (start it with --node OUT or listen --http-port)")
        try:
            data = await asyncio.to_thread((Path(node) / "node.json").read_bytes)
        except FileNotFoundError:
            raise HTTPException(503, "the node has not started yet") from None
        return Response(data, media_type="application/json", headers={"Cache-Control": "no-store"})

    @app.get("/v1/node/overlays/{uid}.png", dependencies=[Depends(require_token)],
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def node_overlay(uid: str) -> Response:
        """The overlay of an image the node scored, by its SOP Instance UID."""
        if node is None or not _is_uid(uid):
            raise HTTPException(404, "no such overlay")
        try:
            data = await asyncio.to_thread((Path(node) / "overlays" / f"{uid}.png").read_bytes)
        except FileNotFoundError:
            raise HTTPException(404, "no such overlay") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        from importlib.resources import files

        html = (files(_STATIC[0]) / _STATIC[1] / "index.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": _PAGE_POLICY, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(packages=[_STATIC]), name="static")
    return app


@contextmanager
def background_server(app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning",
                      start_timeout: float = 30.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a thread for the block; yields its base URL (``port=0``: a free port).

    For tests, scripts and notebooks; ``limbscan serve`` runs uvicorn in the foreground instead.
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, name="limbscan-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{host}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout)


async def _predict_one(service: _Service, upload: UploadFile, scenario: str | None) -> dict:
    if upload.size is not None and upload.size > service.max_upload_bytes:
        raise HTTPException(413, _too_large(service.max_upload_bytes))
    head = await upload.read(_SNIFF_BYTES)
    if not head:
        raise HTTPException(422, "upload: empty file (0 bytes)")
    fmt = sniff_bytes(head)
    if fmt is None:
        raise HTTPException(415, "upload: not a DICOM, PNG or JPEG file (content not recognised)")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(service.executor, service.predict_upload, upload, fmt, scenario)


def _limited_receive(receive, limit: int):
    seen = 0

    async def counted():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return counted


def _too_large(limit: int) -> str:
    size = f"{limit / MIB:g} MiB" if limit >= MIB else f"{limit} bytes"
    return f"upload too large: the limit is {size}"


def _is_uid(text: str) -> bool:
    """A DICOM UID (digits and dots): nothing else names a node overlay."""
    parts = text.split(".")
    return 0 < len(text) <= 64 and all(part.isdigit() and part.isascii() for part in parts)


def _canonical_uuid(text: str) -> bool:
    """Only the form the server writes (lower-case, hyphenated): no braces, URNs or other spellings."""
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


class _RequestLog:
    """One log line per request: id, method, route template, status, milliseconds.

    Never the query, the headers or the body; the route's template rather than the raw path,
    so nothing a client puts in a URL is written down. An unexpected error is answered here
    (500, JSON) and logged by its frames only: its message may quote the input, and letting it
    through would have the server log it in full.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex[:12]
        scope.setdefault("state", {})["request_id"] = request_id
        start, status, started = time.perf_counter(), 500, False

        async def send_with_id(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as err:  # noqa: BLE001 - the last stop before the server's own logging
            frames = "".join(traceback.format_tb(err.__traceback__))
            log.error("request %s failed with %s\n%s", request_id, type(err).__name__, frames)
            if not started:
                answer = JSONResponse({"detail": "internal error", "request_id": request_id}, status_code=500)
                await answer(scope, receive, send_with_id)
        finally:
            log.info("request %s %s %s %d %.0f ms", request_id, scope["method"], _route_name(scope), status,
                     (time.perf_counter() - start) * 1000)


def _route_name(scope) -> str:
    route = getattr(scope.get("route"), "path", None)
    if route:
        return route
    return "/static/*" if scope["path"].startswith("/static/") else "-"
