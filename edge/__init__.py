"""edgeseg: an edge deployment kit for nuclei segmentation on portable microscopes.

The top-level package is the torch-free core (readers, preprocessing, post-processing, metrics,
cards, the zoo). Training lives in ``edgeseg.train``, export in ``edgeseg.export`` and the on-device
runtime in ``edgeseg.device``.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("edgeseg")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+src"


def __getattr__(name: str):
    """``from edgeseg import Segmenter`` without importing OpenCV/ONNX Runtime for ``edgeseg --help``."""
    if name in ("Segmenter", "Segmentation"):
        from . import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'edgeseg' has no attribute {name!r}")
