"""Versions of the libraries an artifact was made with, read without importing them."""

from __future__ import annotations

from functools import cache
from importlib import metadata

_PACKAGES = {
    "coremltools": "coremltools",
    "tensorflow": "tensorflow-cpu",
    "keras": "keras",
    "onnx": "onnx",
    "tf2onnx": "tf2onnx",
    "onnxruntime": "onnxruntime",
    "numpy": "numpy",
    "pillow": "pillow",
}


@cache
def library_versions() -> dict[str, str]:
    found = {}
    for name, dist in _PACKAGES.items():
        for candidate in (dist, name):
            try:
                found[name] = metadata.version(candidate)
                break
            except metadata.PackageNotFoundError:
                continue
    return found
