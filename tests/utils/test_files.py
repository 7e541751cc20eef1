"""limbscan.utils.files: a file appears whole or not at all, with the permissions asked for."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from limbscan.utils import files as files_mod
from limbscan.utils.files import (
    atomic_file,
    fsync_dir,
    sha256_file,
    temp_glob,
    write_json_atomic,
    write_text_atomic,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_block_that_raises_leaves_the_old_file_whole_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    path.write_text("old content\n")
    with pytest.raises(RuntimeError, match="mid-write"), atomic_file(path) as fh:
        fh.write("new content that never lands " * 1000)
        fh.flush()  # the bytes are on disk, in the temp file
        raise RuntimeError("mid-write")
    assert path.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_interrupt_cleans_up_too(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    with pytest.raises(KeyboardInterrupt), atomic_file(path) as fh:
        fh.write("{")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_content_appears_only_when_the_block_ends(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "x.pt"  # missing folders are made
    with atomic_file(path, "wb") as fh:
        fh.write(b"\x00\x01payload")
        assert not path.exists()
        [tmp] = path.parent.glob(temp_glob("*.pt"))  # the pattern a sweep of killed writes looks for
        assert tmp.name.startswith(".x.pt.") and tmp.name.endswith(".tmp")
    assert path.read_bytes() == b"\x00\x01payload"
    assert [p.name for p in path.parent.iterdir()] == ["x.pt"]


def test_a_killed_write_leaves_the_old_file_and_a_temp_the_checkpoint_sweep_removes(tmp_path: Path) -> None:
    from limbscan.train.checkpoint import sweep_temp_files

    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint")
    keep = tmp_path / ".hidden.json.tmp"  # not a checkpoint's temp file: left alone
    keep.write_text("{}")
    code = (
        "import os, sys; from limbscan.utils.files import atomic_file\n"
        "with atomic_file(sys.argv[1], 'wb') as fh:\n"
        "    fh.write(b'half a checkpoint'); fh.flush(); os._exit(9)\n"  # a SIGKILL mid-write
    )
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    assert run.returncode == 9, run.stderr[-2000:]
    assert path.read_bytes() == b"the previous checkpoint"
    [stray] = tmp_path.glob(temp_glob("last.pt"))
    assert stray.read_bytes() == b"half a checkpoint"
    sweep_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.json.tmp", "last.pt"]


@pytest.mark.parametrize(("permissions", "expected"), [(None, 0o600), (0o644, 0o644), (0o640, 0o640)])
def test_permissions_are_applied_whatever_the_umask(tmp_path: Path, permissions, expected) -> None:
    old_umask = os.umask(0o077)  # a umask that would hide the file from the group
    try:
        path = tmp_path / "out.bin"
        with atomic_file(path, "wb", permissions=permissions) as fh:
            fh.write(b"x")
    finally:
        os.umask(old_umask)
    assert _mode(path) == expected


def test_default_permissions_let_a_group_read(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "r.md", "# report\n")
    assert _mode(tmp_path / "r.md") == 0o644


def test_replace_keeps_no_trace_of_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    write_text_atomic(path, "a much longer first version\n")
    write_text_atomic(path, "short\n")
    assert path.read_text() == "short\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_file_and_folder_are_fsynced_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.json"
    synced_files: list[int] = []
    synced_dirs: list[tuple[Path, bool]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced_files.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(files_mod.os, "fsync", fsync)
    monkeypatch.setattr(files_mod, "fsync_dir", lambda folder: synced_dirs.append((Path(folder), path.exists())))
    write_json_atomic(path, {"a": 1})
    assert len(synced_files) == 1
    assert synced_dirs == [(tmp_path, True)]  # the folder is synced once the rename is done

    synced_files.clear()
    synced_dirs.clear()
    with atomic_file(tmp_path / "e.npy", "wb", fsync=False) as fh:
        fh.write(b"x")
    assert synced_files == [] and synced_dirs == []
    assert (tmp_path / "e.npy").read_bytes() == b"x"


def test_failed_block_syncs_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[Path] = []
    monkeypatch.setattr(files_mod, "fsync_dir", called.append)
    with pytest.raises(ValueError), atomic_file(tmp_path / "f.txt") as fh:
        fh.write("x")
        raise ValueError
    assert called == []


def test_fsync_dir_on_a_real_folder_and_a_missing_one(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        os.open(tmp_path / "missing", os.O_RDONLY)
    fsync_dir(tmp_path / "missing")  # cannot open: a no-op, not an error


def test_write_json_atomic_round_trips_and_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    payload = {"images": [{"id": 1, "file_name": "a b/ü.png", "label": None}], "n": 2.5, "ok": True}
    path = tmp_path / "dataset.json"
    write_json_atomic(path, payload)
    assert json.loads(path.read_text()) == payload
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not serialisable: nothing is written
    assert json.loads(path.read_text()) == payload
    assert [p.name for p in tmp_path.iterdir()] == ["dataset.json"]


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks, and a ragged end
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()
    with pytest.raises(FileNotFoundError):
        sha256_file(tmp_path / "missing")


def test_old_imports_are_the_same_functions() -> None:
    import limbscan.utils
    from limbscan.data import dataset

    for name in ("atomic_file", "sha256_file", "write_json_atomic", "write_text_atomic"):
        assert getattr(dataset, name) is getattr(files_mod, name), name
        assert getattr(limbscan.utils, name) is getattr(files_mod, name), name


def test_files_module_stays_light() -> None:
    code = (
        "import sys, limbscan.utils.files, limbscan.utils; "
        "heavy = [m for m in ('torch', 'numpy', 'limbscan.data', 'limbscan.train') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
