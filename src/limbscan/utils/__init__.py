"""Shared plumbing at the bottom of the package: atomic file writes and digests
(:mod:`limbscan.utils.files`, stdlib only), the ``torchrun`` process group
(:mod:`limbscan.utils.distributed`) and pydantic pieces for settings read from YAML
(:mod:`limbscan.utils.validation`). Nothing here imports the rest of limbscan.
"""

from limbscan.utils.files import (
    atomic_file,
    fsync_dir,
    sha256_file,
    temp_glob,
    write_json_atomic,
    write_text_atomic,
)

# Loaded on first use: the file helpers must not pay for torch.
_LAZY = {
    "DistInfo": "limbscan.utils.distributed",
    "all_gather_objects": "limbscan.utils.distributed",
    "barrier": "limbscan.utils.distributed",
    "init_distributed": "limbscan.utils.distributed",
    "shutdown_distributed": "limbscan.utils.distributed",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DistInfo",
    "all_gather_objects",
    "atomic_file",
    "barrier",
    "fsync_dir",
    "init_distributed",
    "sha256_file",
    "shutdown_distributed",
    "temp_glob",
    "write_json_atomic",
    "write_text_atomic",
]
