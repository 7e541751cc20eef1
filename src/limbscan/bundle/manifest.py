"""A bundle's manifest, ``bundle.json``: its format number, and reading it back checked.

:func:`read_manifest` refuses a folder that is not a bundle, a format newer than this limbscan
reads, a missing key, operating points that contradict ``thresholds``, and (with ``verify``) any
file whose sha256 differs from the one the manifest lists; :func:`file_hashes` makes that list.
A manifest without ``operating_points`` is valid: it loads with no suspected threshold.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath
from typing import Any

from limbscan.errors import BadInputError, LimbscanError
from limbscan.operating_points import LIKELY, SUSPECTED
from limbscan.utils.files import sha256_file

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1
MANIFEST = "bundle.json"


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """The bundle's ``bundle.json``, checked: a bundle, a format this limbscan reads, and (with
    ``verify``) every file present with the sha256 the manifest records. A bundle written by
    another limbscan version loads with a logged warning."""
    from limbscan import __version__

    root = Path(path)
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        what = "does not exist" if not root.exists() else f"is not a limbscan bundle (no {MANIFEST})"
        raise LimbscanError(f"{root}: {what}; make one with `limbscan export RUN -o BUNDLE`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInputError(manifest_path, f"not readable JSON ({type(err).__name__})") from err
    if not isinstance(manifest, dict):
        raise BadInputError(manifest_path, "not a bundle manifest (expected a JSON object)")
    fmt = manifest.get("format")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise BadInputError(manifest_path, f"no valid 'format' (got {fmt!r})")
    if fmt > BUNDLE_FORMAT:
        raise LimbscanError(
            f"{root}: bundle format {fmt} is newer than this limbscan ({__version__}) reads "
            f"(format {BUNDLE_FORMAT}); upgrade limbscan"
        )
    for key in ("scenarios", "thresholds", "preprocessing", "files", "default_scenario"):
        if key not in manifest:
            raise BadInputError(manifest_path, f"missing the key {key!r}")
    _check_operating_points(manifest, manifest_path)
    made_by = manifest.get("limbscan_version")
    if made_by != __version__:
        log.warning("%s: made by limbscan %s, loaded by %s", root, made_by, __version__)
    if verify:
        for rel, digest in manifest["files"].items():
            _check_file(root, rel, digest)
    return manifest


def file_hashes(root: Path) -> dict[str, str]:
    """The manifest's ``files``: every file under ``root`` (relative POSIX path) -> its sha256, sorted."""
    return {path.relative_to(root).as_posix(): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()}


def _check_operating_points(manifest: dict[str, Any], manifest_path: Path) -> None:
    """A manifest's two operating points agree with its ``thresholds`` and are in order, so
    "likely" and "suspected" mean what they say; a manifest without them passes."""
    points = manifest.get("operating_points")
    if points is None:
        return
    for name in manifest["scenarios"]:
        try:
            likely = float(points[name][LIKELY]["threshold"])
            suspected = float(points[name][SUSPECTED]["threshold"])
        except (KeyError, TypeError, ValueError):
            raise BadInputError(manifest_path, f"operating_points: no likely and suspected threshold for {name}") from None
        if likely != float(manifest["thresholds"][name]):
            raise BadInputError(manifest_path, f"operating_points: {name}'s likely threshold {likely:g} differs from "
                                               f"its entry in thresholds ({manifest['thresholds'][name]:g})")
        if suspected > likely:
            raise BadInputError(manifest_path, f"operating_points: {name}'s suspected threshold {suspected:g} lies "
                                               f"above its likely one ({likely:g})")


def _check_file(root: Path, rel: str, digest: str) -> None:
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise BadInputError(root / MANIFEST, f"lists a file outside the bundle: {rel!r}")
    path = root.joinpath(*parts)
    if not path.is_file():
        raise BadInputError(path, "missing from the bundle (listed in bundle.json)")
    if sha256_file(path) != digest:
        raise BadInputError(path, "sha256 differs from bundle.json: the file was damaged or edited")
