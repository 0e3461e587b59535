"""Export trained Keras image classifiers to Core ML and ONNX with labels and preprocessing embedded,
quantized variants, and parity checked on real held-out images.

Public API: ``export``, ``validate``, ``ExportOptions``, ``Preprocessing`` and the errors in ``exporter.errors``.
Heavy libraries (TensorFlow, coremltools, onnxruntime) are imported only when a function needs them.
"""

__version__ = "0.1.0"

__all__ = ["ExportOptions", "Preprocessing", "__version__", "export", "validate"]


def __getattr__(name):
    if name in ("export", "validate", "ExportOptions"):
        from . import api

        return getattr(api, name)
    if name == "Preprocessing":
        from .preprocessing import Preprocessing

        return Preprocessing
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")
