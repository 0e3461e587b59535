"""Export trained Keras image classifiers to Core ML and ONNX with labels and preprocessing embedded,
quantized variants, and parity checked on real held-out images.

Public API: ``export``, ``validate``, ``xcode``, ``predict``, ``ExportOptions``, ``Preprocessing``, the results
``Manifest`` and ``Report``, and the errors (``ExporterError`` and its children, also in ``exporter.errors``).
Heavy libraries (TensorFlow, coremltools, onnxruntime) are imported only when a function needs them.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy __getattr__ below returns, for type checkers and editors
    from .api import ExportOptions, export, validate, xcode
    from .predict import predict
    from .preprocessing import Preprocessing
    from .results import Manifest, Report

from .errors import (
    ConfigError,
    ConversionError,
    DestinationError,
    ExporterError,
    ImageError,
    LabelsError,
    ModelLoadError,
    NotCheckedError,
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
    "NotCheckedError",
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


def _callable_as(module_name: str, function: str) -> None:
    """Make the submodule ``module_name`` callable as the API function ``function`` ("module:name").

    ``exporter.xcode`` and ``exporter.predict`` are API functions (``__getattr__`` below) and submodules at once, and
    Python sets the attribute to the submodule as soon as anything imports it (the function itself does), so a
    notebook's second ``exporter.predict(...)`` found a module: "'module' object is not callable". The submodule is
    therefore made callable: calling it calls the function, whichever of the two the attribute holds."""
    import importlib
    import sys
    import types

    module_path, name = function.split(":")

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(module_path), name)(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule


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
