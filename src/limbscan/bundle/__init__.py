"""Bundles: a trained model as one self-checking folder, written by ``limbscan export``.

:mod:`.export` writes one from a run, :mod:`.manifest` reads its ``bundle.json`` back checked,
:mod:`.onnx` adds ONNX copies of its models, :mod:`.default` chooses its default scenario.
"""

from limbscan.bundle.default import choose_default, default_from_cv, default_from_validation, default_scenario
from limbscan.bundle.export import export_bundle
from limbscan.bundle.manifest import BUNDLE_FORMAT, MANIFEST, is_bundle, read_manifest

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST",
    "choose_default",
    "default_from_cv",
    "default_from_validation",
    "default_scenario",
    "export_bundle",
    "is_bundle",
    "read_manifest",
]
