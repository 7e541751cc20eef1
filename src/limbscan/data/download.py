"""Fetch the FracAtlas archive from figshare, resumably, and unpack it.

For users with internet only: nothing else in limbscan downloads at run time, and the tests
serve a fake article from 127.0.0.1. Offline users download the zip by hand and pass the
unpacked folder to ``limbscan data import fracatlas``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from limbscan import __version__
from limbscan.errors import BadInputError, LimbscanError

FIGSHARE_ARTICLE_ID = 22363012
FIGSHARE_API_URL = f"https://api.figshare.com/v2/articles/{FIGSHARE_ARTICLE_ID}"
FIGSHARE_URL = "https://doi.org/10.6084/m9.figshare.22363012"
FRACATLAS_CITATION = (
    "FracAtlas: Abedeen I., Rahman M.A., Prottyasha F.Z., Ahmed T., Chowdhury T.M., Shatabda S. "
    "FracAtlas: A Dataset for Fracture Classification, Localization and Segmentation of "
    "Musculoskeletal Radiographs. Scientific Data 10, 521 (2023), doi:10.1038/s41597-023-02432-4. "
    f"Data: {FIGSHARE_URL}. Licence: CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); "
    "cite the paper when you use or share the data."
)
MANUAL_ROUTE = (
    f"download it by hand from {FIGSHARE_URL}, unzip it, and pass the folder to "
    "`limbscan data import fracatlas`"
)

# (connect, read) seconds: figshare redirects to S3, which can pause between chunks.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)
CHUNK_BYTES = 1 << 20
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}

T = TypeVar("T")


class NetworkError(LimbscanError):
    """The server could not be reached, or kept failing, after every retry."""


class _Retryable(Exception):
    """A failure worth another try (server busy, connection dropped, transfer cut short)."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a figshare article."""

    name: str
    url: str
    size: int | None
    md5: str | None


def _new_session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = f"limbscan/{__version__} (+{FIGSHARE_URL})"
    return session


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def _with_retries(fn: Callable[[], T], what: str, retries: int, backoff: float) -> T:
    """Call ``fn``; on a connection failure wait ``backoff * 2**k`` seconds and call it again."""
    last: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            return fn()
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Retryable) as err:
            last = err
    raise NetworkError(f"cannot reach {what} after {retries + 1} tries ({_reason(last)})")


def _reason(err: BaseException | None) -> str:
    if isinstance(err, _Retryable):
        return str(err)
    if isinstance(err, requests.Timeout):
        return "timed out"
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return "connection dropped mid-transfer"
    if isinstance(err, requests.ConnectionError):
        return "connection failed: no network, or the server is down"
    return type(err).__name__


def _check_status(response: requests.Response, url: str) -> None:
    if response.status_code in _RETRY_STATUS:
        raise _Retryable(f"HTTP {response.status_code} from {urlsplit(url).netloc}")
    if response.status_code >= 400:
        raise NetworkError(f"{url}: HTTP {response.status_code} {response.reason}")


def file_md5(path: Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _matches(path: Path, size: int | None, md5: str | None) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return md5 is None or file_md5(path) == md5.lower()


def _check_free_space(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise LimbscanError(
            f"{folder}: not enough disk space: the download needs {needed / 1e6:.0f} MB more, "
            f"{free / 1e6:.0f} MB are free"
        )


def _content_range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _fetch_once(
    session: requests.Session,
    url: str,
    part: Path,
    size: int | None,
    progress: Progress,
    task: Any,
    timeout: tuple[float, float],
    chunk_bytes: int,
) -> None:
    """One GET: append to ``part`` from where it stops, or rewrite it when the server cannot resume."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset:
            # Nothing past our offset: either the part is whole (size unknown) or it is not this file.
            if size is None:
                return
            part.unlink()
            raise _Retryable("the server refused to resume; starting over")
        _check_status(response, url)
        resumed = offset > 0 and response.status_code == 206
        if resumed and _content_range_start(response) != offset:
            part.unlink()
            raise _Retryable("the server resumed from the wrong byte; starting over")
        if not resumed:
            offset = 0  # server ignored Range (200): its body starts at byte 0
        if size is None and response.headers.get("Content-Length", "").isdigit():
            size = offset + int(response.headers["Content-Length"])
        if size is not None:
            _check_free_space(part.parent, size - offset)
        progress.update(task, completed=offset, total=size)
        try:
            with open(part, "ab" if resumed else "wb") as fh:
                for chunk in response.iter_content(chunk_bytes):
                    fh.write(chunk)
                    progress.advance(task, len(chunk))
        except requests.RequestException:
            raise  # an OSError too, but a network one: the retry loop resumes it
        except OSError as err:
            kept = part.stat().st_size if part.exists() else 0
            if err.errno == errno.ENOSPC:
                raise LimbscanError(
                    f"{part}: disk full after {kept} bytes; the partial file is kept: "
                    "free some space and run the same command again to resume"
                ) from err
            raise LimbscanError(f"{part}: cannot write: {err.strerror or err}") from err


def download_file(
    url: str,
    dest: Path,
    size: int | None,
    md5: str | None,
    progress: bool = True,
    session: requests.Session | None = None,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    chunk_bytes: int = CHUNK_BYTES,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a part left by an earlier run.

    Connection failures and cut transfers are retried with exponential backoff, each try
    resuming with an HTTP Range request. ``dest`` appears only once its size and md5 (when
    given) match; a mismatching download is deleted. Raises NetworkError when the server
    stays unreachable, LimbscanError on a checksum mismatch or a full disk.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if _matches(dest, size, md5):
            return dest
        dest.unlink()  # left by another tool or corrupted since: fetch it again
    part = dest.with_name(dest.name + ".part")
    if size is not None and part.exists() and part.stat().st_size > size:
        part.unlink()  # longer than the file itself: not a prefix of it

    own_session = session is None
    session = session or _new_session()
    try:
        with _progress_bar(progress) as bar:
            task = bar.add_task(dest.name, total=size)

            def attempt() -> None:
                if size is None or not part.exists() or part.stat().st_size < size:
                    _fetch_once(session, url, part, size, bar, task, timeout, chunk_bytes)
                if size is not None and (not part.exists() or part.stat().st_size < size):
                    raise _Retryable("the transfer ended early")

            _with_retries(attempt, urlsplit(url).netloc or url, retries, backoff)
    finally:
        if own_session:
            session.close()

    got = part.stat().st_size
    if size is not None and got != size:
        part.unlink()
        raise LimbscanError(f"{dest}: size mismatch ({got} bytes, expected {size}); the bad file was deleted, run again")
    if md5 is not None:
        actual = file_md5(part)
        if actual != md5.lower():
            part.unlink()
            raise LimbscanError(
                f"{dest}: checksum mismatch (md5 {actual}, expected {md5.lower()}); "
                "the bad file was deleted, run again to download it afresh"
            )
    os.replace(part, dest)
    return dest


def archive_files(article: dict[str, Any]) -> list[RemoteFile]:
    """The zip archives a figshare article JSON lists, with their sizes and checksums."""
    found = []
    for entry in article.get("files") or []:
        name = str(entry.get("name", ""))
        if entry.get("is_link_only") or not name.lower().endswith(".zip"):
            continue
        if name != PurePosixPath(name).name or name in {".", ".."}:
            raise LimbscanError(f"figshare lists a file named {name!r}, which is not a plain file name")
        size = entry.get("size")
        found.append(
            RemoteFile(
                name=name,
                url=str(entry["download_url"]),
                size=int(size) if size is not None else None,
                md5=entry.get("computed_md5") or entry.get("supplied_md5") or None,
            )
        )
    if not found:
        names = [str(e.get("name")) for e in article.get("files") or []]
        raise LimbscanError(f"the figshare article lists no zip archive (files: {names}); {MANUAL_ROUTE}")
    return found


def _member_is_safe(name: str) -> bool:
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        return False
    return ".." not in PurePosixPath(posix).parts


def unpack_zip(archive: Path, dest: Path, progress: bool = False) -> Path:
    """Extract ``archive`` into ``dest``, refusing the whole archive if any member would land outside it."""
    archive, dest = Path(archive), Path(dest)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise BadInputError(archive, f"not a readable zip archive ({err}); delete it and download again") from err
    with zf:
        members = zf.infolist()
        root = dest.resolve()
        for info in members:
            target = (root / info.filename).resolve()
            if not _member_is_safe(info.filename) or not target.is_relative_to(root):
                raise BadInputError(archive, f"member {info.filename!r} would land outside {dest}; refusing to unpack")
        _check_free_space(dest, sum(i.file_size for i in members))
        with Progress(disable=not progress) as bar:
            for info in bar.track(members, description=f"unpacking {archive.name}"):
                try:
                    zf.extract(info, dest)
                except zipfile.BadZipFile as err:
                    raise BadInputError(archive, f"corrupt member {info.filename!r} ({err})") from err
    return dest


def _candidate_roots(folder: Path) -> Iterator[Path]:
    for csv in folder.rglob("dataset.csv"):
        if "__MACOSX" not in csv.parts and (csv.parent / "images").is_dir():
            yield csv.parent


def find_fracatlas_root(folder: Path) -> Path:
    """The shallowest folder under ``folder`` holding ``dataset.csv`` beside ``images/``."""
    roots = sorted(_candidate_roots(Path(folder)), key=lambda p: (len(p.parts), str(p)))
    if not roots:
        raise LimbscanError(f"{folder}: no folder with dataset.csv and images/ found; is this the FracAtlas archive?")
    return roots[0]


def download_fracatlas(
    dest: Path,
    api_url: str = FIGSHARE_API_URL,
    progress: bool = True,
    unpack: bool = True,
    *,
    session: requests.Session | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    console: Console | None = None,
) -> Path:
    """Download FracAtlas (CC BY 4.0) into ``dest`` and return its root (the folder with dataset.csv).

    Running it again resumes an interrupted download and skips work already done. With
    ``unpack=False`` it returns ``dest``, which then holds the verified zip archive(s).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    own_session = session is None
    session = session or _new_session()
    try:

        def get_article() -> dict[str, Any]:
            with session.get(api_url, timeout=timeout) as response:
                _check_status(response, api_url)
                try:
                    return response.json()
                except ValueError as err:
                    raise NetworkError(f"{api_url}: the answer is not JSON") from err

        try:
            article = _with_retries(get_article, urlsplit(api_url).netloc or api_url, retries, backoff)
            archives = []
            for remote in archive_files(article):
                archives.append(
                    download_file(
                        remote.url, dest / remote.name, remote.size, remote.md5, progress, session,
                        retries=retries, backoff=backoff, timeout=timeout,
                    )
                )
        except NetworkError as err:
            raise LimbscanError(f"{err}; {MANUAL_ROUTE}") from err
    finally:
        if own_session:
            session.close()

    console.print(FRACATLAS_CITATION, highlight=False)
    if not unpack:
        console.print(f"archive(s) in {dest}; unzip, then run `limbscan data import fracatlas <folder>`", highlight=False)
        return dest
    for archive in archives:
        marker = dest / f".{archive.name}.unpacked"
        # The marker alone is not enough: the user may have deleted the unpacked folder since.
        if not (marker.exists() and any(_candidate_roots(dest))):
            unpack_zip(archive, dest, progress=progress)
            marker.write_text(f"{archive.stat().st_size}\n")
    root = find_fracatlas_root(dest)
    console.print(f"FracAtlas root: {root}\nnext: limbscan data import fracatlas {root} -o DATASET", highlight=False)
    return root
