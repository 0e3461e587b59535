"""Keras classifier -> Core ML: ML Program (.mlpackage) and NeuralNetwork (.mlmodel) with an image input whose
scale and bias reproduce the preprocessing contract exactly, the labels embedded through ClassifierConfig, and the
metadata Xcode shows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import ConversionError
from ..preprocessing import Preprocessing
from .prologue import for_conversion, imagetype_scale_bias

INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
# ML Program needs iOS 15 / macOS 12; NeuralNetwork files from TF 2 need iOS 13 at least (rank-5 free mapping).
MLPROGRAM_TARGET = "iOS15"
NEURALNETWORK_TARGET = "iOS13"


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

    def user_metadata(self) -> dict[str, str]:
        from .. import __version__
        from ..versions import library_versions

        versions = library_versions()
        return {
            "com.apple.coreml.model.preview.type": "imageClassifier",
            "exporter.labels": json.dumps(self.labels, ensure_ascii=False),
            "exporter.preprocessing": self.preprocessing.to_json(),
            "exporter.source_sha256": self.source_sha256,
            "exporter.source_file": self.source_file,
            "exporter.version": __version__,
            "exporter.coremltools_version": versions.get("coremltools", ""),
            "exporter.tensorflow_version": versions.get("tensorflow", ""),
            "exporter.keras_version": versions.get("keras", ""),
        }


def _image_input(pre: Preprocessing):
    import coremltools as ct

    scale, bias, multiplier = imagetype_scale_bias(pre)
    layout = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR, "L": ct.colorlayout.GRAYSCALE}[pre.channel_order]
    height, width = pre.input_size
    image = ct.ImageType(name=INPUT_NAME, shape=(1, height, width, pre.channels), scale=scale,
                         bias=bias[0] if pre.channels == 1 else bias, color_layout=layout)
    return image, multiplier


def convert(model, info: ModelInfo, *, backend: str, precision: str = "fp32", target: str | None = None):
    """Convert a Keras model to an in-memory ``ct.models.MLModel`` (not compiled, so this works on Linux).

    backend: "mlprogram" or "neuralnetwork"; precision: "fp32" or "fp16" (ML Program compute precision; for
    NeuralNetwork files fp16 is applied afterwards as a weight transform, see ``quantize.coreml``); target: the
    minimum deployment target (default iOS15 for ML Program, iOS13 for NeuralNetwork)."""
    import coremltools as ct

    image, multiplier = _image_input(info.preprocessing)
    source = for_conversion(model, multiplier, INPUT_NAME)
    kwargs: dict[str, Any] = dict(source="tensorflow", inputs=[image], classifier_config=ct.ClassifierConfig(
        info.labels, predicted_feature_name=LABEL_OUTPUT), skip_model_load=True, convert_to=backend)
    if backend == "mlprogram":
        kwargs["compute_precision"] = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
        kwargs["minimum_deployment_target"] = getattr(ct.target, target or MLPROGRAM_TARGET)
    else:
        kwargs["minimum_deployment_target"] = getattr(ct.target, target or NEURALNETWORK_TARGET)
    try:
        mlmodel = ct.convert(source, **kwargs)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ConversionError(f"coremltools could not convert the model to {backend}: "
                              f"{(text[0] if text else type(exc).__name__)[:400]}", path=info.source_file) from None
    describe(mlmodel, info)
    return mlmodel


def describe(mlmodel, info: ModelInfo) -> None:
    """Set the metadata Xcode shows and the provenance a later check needs."""
    pre = info.preprocessing
    h, w = pre.input_size
    mlmodel.short_description = info.description or (
        f"Image classifier ({len(info.labels)} classes) exported from {info.source_file}")
    mlmodel.author = info.author
    mlmodel.license = info.license
    mlmodel.version = info.version
    how = "pixels are passed unchanged (the model normalises them itself)" if pre.in_model else (
        f"pixels are scaled by {list(pre.scale)} and shifted by {list(pre.bias)} per channel")
    mlmodel.input_description[INPUT_NAME] = (
        f"{w}x{h} {pre.channel_order} image; resize policy {pre.resize} ({pre.interpolation}); {how}")
    desc = mlmodel.get_spec().description
    mlmodel.output_description[desc.predictedFeatureName] = "Most likely class label"
    mlmodel.output_description[desc.predictedProbabilitiesName] = "Probability of each class label"
    for key, value in info.user_metadata().items():
        mlmodel.user_defined_metadata[key] = value




def save(mlmodel, path) -> None:
    """Save, then rewrite the protobuf with deterministic map order: protobuf serialises the user-defined metadata
    map in arbitrary order, so two identical exports would otherwise differ byte for byte (and by SHA-256)."""
    from pathlib import Path

    from coremltools.proto import Model_pb2

    path = Path(path)
    mlmodel.save(str(path))
    spec_file = path / "Data" / "com.apple.CoreML" / "model.mlmodel" if path.is_dir() else path
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    spec_file.write_bytes(spec.SerializeToString(deterministic=True))
