"""limbscan: find and triage lesions in lower-limb radiographs.

Follows Amiri et al. (2022): Mask R-CNN proposes the lesion box, a CNN classifies the crop.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("limbscan")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from limbscan.errors import BadInputError, LimbscanError  # noqa: E402

__all__ = ["BadInputError", "LimbscanError", "__version__"]
