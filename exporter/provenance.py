"""What every artifact records about where it came from: one metadata builder per format family.

Both families carry the same exporter keys (labels, preprocessing contract, source file and its SHA-256, the variant,
the versions of the exporter, Keras and TensorFlow); each adds the versions of the libraries that wrote it. Only Core ML
files carry ``com.apple.coreml.model.preview.type`` (it tells Xcode to show the image-classifier preview).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .preprocessing import Preprocessing


@dataclass(frozen=True)
class ModelInfo:
    """What every artifact records about where it came from."""

    name: str
    labels: list[str]
    preprocessing: Preprocessing
    source_sha256: str
    source_file: str
    author: str = ""
    license: str = ""
    version: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        # Every text field goes into protobuf strings (ONNX metadata_props, Core ML metadata), which must be valid
        # UTF-8: a model file whose name is not (b"m\xff.keras" reaches Python as "m\udcff.keras") ended the export in
        # an internal error. Such characters are written as backslash escapes, as error lines show them.
        for name in ("name", "source_file", "author", "license", "version", "description"):
            value = getattr(self, name)
            object.__setattr__(self, name, value.encode("utf-8", "backslashreplace").decode("utf-8"))


def _versions(*names: str) -> dict[str, str]:
    from .versions import library_versions

    found = library_versions()
    return {f"exporter.{name}_version": found.get(name, "") for name in names}


def _common(info: ModelInfo, variant_key: str) -> dict[str, str]:
    from . import __version__

    return {
        "exporter.labels": json.dumps(info.labels, ensure_ascii=False),
        "exporter.preprocessing": info.preprocessing.to_json(),
        "exporter.source_sha256": info.source_sha256,
        "exporter.source_file": info.source_file,
        "exporter.version": __version__,
        "exporter.variant": variant_key,
    }


def coreml_metadata(info: ModelInfo, variant_key: str) -> dict[str, str]:
    """user_defined_metadata of a Core ML artifact."""
    return {
        "com.apple.coreml.model.preview.type": "imageClassifier",
        **_common(info, variant_key),
        **_versions("coremltools", "tensorflow", "keras"),
    }


def onnx_metadata(info: ModelInfo, variant_key: str) -> dict[str, str]:
    """metadata_props of an ONNX artifact (after the image keys the wrapper sets)."""
    return {**_common(info, variant_key), **_versions("tf2onnx", "onnx", "onnxruntime", "tensorflow", "keras")}
