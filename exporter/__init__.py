"""Export trained Keras image classifiers to Core ML and ONNX with labels and preprocessing embedded,
quantized variants, and parity checked on real held-out images.

Public API: ``export``, ``validate``, ``xcode``, ``predict``, ``ExportOptions``, ``Preprocessing``, the results
``Manifest`` and ``Report``, and the errors (``ExporterError`` and its children, also in ``exporter.errors``).
Heavy libraries (TensorFlow, coremltools, onnxruntime) are imported only when a function needs them.
"""

__version__ = "0.1.0"

from .errors import (
    ConfigError,
    ConversionError,
    DestinationError,
    ExporterError,
    ImageError,
    LabelsError,
    ModelLoadError,
    ParityError,
    UnsafeModelError,
)

__all__ = [
    "ConfigError",
    "ConversionError",
    "DestinationError",
    "ExportOptions",
    "ExporterError",
    "ImageError",
    "LabelsError",
    "Manifest",
    "ModelLoadError",
    "ParityError",
    "Preprocessing",
    "Report",
    "UnsafeModelError",
    "__version__",
    "export",
    "predict",
    "validate",
    "xcode",
]


def __getattr__(name):
    if name in ("export", "validate", "xcode", "ExportOptions"):
        from . import api

        return getattr(api, name)
    if name == "predict":
        from .predict import predict

        return predict
    if name in ("Manifest", "Report"):
        from . import results

        return getattr(results, name)
    if name == "Preprocessing":
        from .preprocessing import Preprocessing

        return Preprocessing
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")
