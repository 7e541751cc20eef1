"""limbscan: find and triage lesions in lower-limb radiographs.

Follows Amiri et al. (2022): Mask R-CNN proposes the lesion box, a CNN classifies the crop.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("limbscan")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from limbscan.errors import BadInputError, LimbscanError  # noqa: E402

# Loaded on first use: `import limbscan` (and every CLI call) must not pay for torch.
_LAZY = {
    "load": "limbscan.inference",
    "Predictor": "limbscan.inference",
    "Model": "limbscan.inference",
    "Prediction": "limbscan.inference",
    "Detection": "limbscan.inference",
    "export_bundle": "limbscan.bundle",
}

__all__ = ["BadInputError", "LimbscanError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'limbscan' has no attribute {name!r}")
