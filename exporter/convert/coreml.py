"""Keras classifier -> Core ML: ML Program (.mlpackage) and NeuralNetwork (.mlmodel) with an image input whose
scale and bias reproduce the preprocessing contract exactly, the labels embedded through ClassifierConfig, and the
metadata Xcode shows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConversionError, first_line, translating
from ..preprocessing import Preprocessing
from ..provenance import ModelInfo, coreml_metadata
from .prologue import for_conversion, imagetype_scale_bias

if TYPE_CHECKING:
    from ..capabilities import Base, BuildContext, Format, Variant

__all__ = ["ModelInfo", "convert", "describe", "save"]

INPUT_NAME = "image"
LABEL_OUTPUT = "classLabel"
PROBABILITIES_OUTPUT = f"{LABEL_OUTPUT}_probs"  # what coremltools names it in an ML Program classifier
# ML Program needs iOS 15 / macOS 12; NeuralNetwork files from TF 2 need iOS 13 at least (rank-5 free mapping).
MLPROGRAM_TARGET = "iOS15"
NEURALNETWORK_TARGET = "iOS13"
# Core ML specification version -> the deployment target that introduced it (what the manifest records).
SPEC_VERSION_TO_TARGET = {4: "iOS13", 5: "iOS14", 6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18", 10: "iOS26"}
# coremltools graph passes the exporter skips, each because the file it writes computes something else than the Keras
# model. fuse_elementwise_to_batchnorm turns ``x * a + b`` (a and b per channel: what Keras' inference-time
# BatchNormalization becomes when it does not follow a convolution, e.g. DenseNet's and ResNetV2's pre-activation
# BN) into ``batch_norm(x, mean=0, variance=1, gamma=a, beta=b)`` without setting epsilon, so the op's default 1e-5
# applies and every such layer scales by 1/sqrt(1 + 1e-5) = 1 - 5e-6 more than the model does. Dozens in a row
# (62 in DenseNet121) moved fp32 probabilities by up to 1e-4 on Core ML itself, not just in our executor. Left
# unfused, the multiply and the add compute exactly what Keras computes (and a following conv still absorbs them
# through fuse_conv_scale / fuse_conv_bias).
SKIPPED_PASSES = ("common::fuse_elementwise_to_batchnorm",)


def _image_input(pre: Preprocessing):
    import coremltools as ct

    scale, bias, multiplier = imagetype_scale_bias(pre)
    layout = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR, "L": ct.colorlayout.GRAYSCALE}[pre.channel_order]
    height, width = pre.input_size
    image = ct.ImageType(
        name=INPUT_NAME,
        shape=(1, height, width, pre.channels),
        scale=scale,
        bias=bias[0] if pre.channels == 1 else bias,
        color_layout=layout,
    )
    return image, multiplier


def pass_pipeline():
    """coremltools' default pass pipeline without ``SKIPPED_PASSES``."""
    import coremltools as ct

    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes(set(SKIPPED_PASSES))
    return pipeline


def convert(model, info: ModelInfo, *, backend: str, precision: str = "fp32", target: str | None = None):
    """Convert a Keras model to an in-memory ``ct.models.MLModel`` (not compiled, so this works on Linux).

    backend: "mlprogram" or "neuralnetwork"; precision: "fp32" or "fp16" (ML Program compute precision; for
    NeuralNetwork files fp16 is applied afterwards as a weight transform, see ``quantize.coreml``); target: the
    minimum deployment target (default iOS15 for ML Program, iOS13 for NeuralNetwork)."""
    import coremltools as ct

    from . import rewrite, tf_ops

    tf_ops.register()
    image, multiplier = _image_input(info.preprocessing)
    source = for_conversion(rewrite.integer_input_as_float(rewrite.for_converters(model)), multiplier, INPUT_NAME)
    kwargs: dict[str, Any] = dict(
        source="tensorflow",
        inputs=[image],
        classifier_config=ct.ClassifierConfig(info.labels, predicted_feature_name=LABEL_OUTPUT),
        skip_model_load=True,
        convert_to=backend,
        pass_pipeline=pass_pipeline(),
    )
    if backend == "mlprogram":
        kwargs["compute_precision"] = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
        kwargs["minimum_deployment_target"] = getattr(ct.target, target or MLPROGRAM_TARGET)
    else:
        kwargs["minimum_deployment_target"] = getattr(ct.target, target or NEURALNETWORK_TARGET)
    try:
        with translating(ConversionError, f"coremltools could not convert the model to {backend}", path=info.source_file):
            try:
                converted = ct.convert(source, **kwargs)
            except Exception as exc:
                newer = _newer_target_needed(exc) if target is None else None
                if newer is None:
                    raise
                kwargs["minimum_deployment_target"] = getattr(ct.target, newer)
                converted = ct.convert(source, **kwargs)
    except ConversionError as exc:
        from .naming import describe_failure

        where = describe_failure(model, str(exc.__cause__ or ""))
        if not where:
            raise
        raise ConversionError(
            f"coremltools could not convert the model to {backend}{where}: {first_line(exc.__cause__ or exc)}", path=info.source_file
        ) from exc.__cause__
    return converted if backend == "mlprogram" else _named_probabilities(converted)


def _named_probabilities(mlmodel):
    """The NeuralNetwork classifier ``mlmodel`` with its probabilities output named PROBABILITIES_OUTPUT, as coremltools names it in
    an ML Program: the TensorFlow converter keeps the graph's output name (``Identity``), which became the property of
    the class Xcode generates for an .mlmodel, so the two Core ML files of one export answered under different names.
    Left as it is when a value of the network already has that name."""
    import coremltools as ct

    spec = mlmodel.get_spec()
    current = spec.description.predictedProbabilitiesName
    names = {name for layer in spec.neuralNetworkClassifier.layers for name in (*layer.input, *layer.output)}
    names |= {feature.name for feature in (*spec.description.input, *spec.description.output)}
    if not current or current == PROBABILITIES_OUTPUT or PROBABILITIES_OUTPUT in names:
        return mlmodel
    ct.utils.rename_feature(spec, current, PROBABILITIES_OUTPUT)
    return ct.models.MLModel(spec, skip_model_load=True)


# coremltools refuses a model that needs a newer file version than the default target (a NeuralNetwork file's bilinear
# resize with aligned corners, Keras' Resizing and UpSampling2D(interpolation="bilinear"), needs version 5, iOS 14);
# a channel reversal, x[..., ::-1] as in keras.applications' caffe-style preprocess_input, needs version 5 too, and the
# message then only names the version the converted model has. The file is then converted for the oldest target that
# has the feature, which its manifest entry, its checks and its Xcode package read back from the file
# (``deployment_target``).
_NEEDS_VERSION = re.compile(r"(?:available from version|converted model has version) (\d+)")


def _newer_target_needed(exc: BaseException) -> str | None:
    found = _NEEDS_VERSION.search(str(exc))
    return SPEC_VERSION_TO_TARGET.get(int(found.group(1))) if found else None


def convert_base(ctx: BuildContext, fmt: Format, base: Base):
    """The capability table's converter for the Core ML formats: ``fmt.backend`` at ``base``'s precision and target."""
    return convert(ctx.model, ctx.info, backend=fmt.backend, precision=base.precision, target=base.target)


def finish(mlmodel, ctx: BuildContext, variant: Variant, details: dict):
    """The last step before saving: descriptions and provenance (set here once), and the weights compression left in
    float, reported in ``details``."""
    describe(mlmodel, ctx.info, variant.key)
    if variant.weight_bits < 16:
        from ..quantize.coreml import MIN_WEIGHT_ELEMENTS, SMALL_WEIGHT_ELEMENTS, uncompressed_weights

        palette_bits = variant.weight_bits if variant.palettized else None
        threshold = SMALL_WEIGHT_ELEMENTS if variant.small_kernels_float else MIN_WEIGHT_ELEMENTS
        details["uncompressed_weights"] = uncompressed_weights(mlmodel, palette_bits, threshold)
    return mlmodel


def deployment_target(mlmodel, ctx: BuildContext) -> str:
    return SPEC_VERSION_TO_TARGET.get(mlmodel.get_spec().specificationVersion, "unknown")


def smoke_check(path: Path, ctx: BuildContext) -> None:
    """Core ML predicts on macOS only, so the saved file is read back instead: it must parse, take the contract's
    image size and name the export's labels in order (validate then runs it, through the executor off macOS)."""
    from ..runtime.coreml_spec import class_labels, load_spec

    with translating(ConversionError, "the saved Core ML file cannot be read back", path=path.name):
        spec = load_spec(path)
        image = spec.description.input[0].type.imageType
        labels = class_labels(spec)
    if (image.height, image.width) != tuple(ctx.info.preprocessing.input_size) or labels != list(ctx.info.labels):
        raise ConversionError(
            f"the saved file takes {image.height}x{image.width} images and {len(labels)} labels; "
            f"expected {ctx.info.preprocessing.input_size} and {len(ctx.info.labels)}",
            path=path.name,
        )


def describe(mlmodel, info: ModelInfo, variant_key: str) -> None:
    """Set the metadata Xcode shows and the provenance a later check needs."""
    pre = info.preprocessing
    h, w = pre.input_size
    mlmodel.short_description = info.description or (f"Image classifier ({len(info.labels)} classes) exported from {info.source_file}")
    mlmodel.author = info.author
    mlmodel.license = info.license
    mlmodel.version = info.version
    how = (
        "pixels are passed unchanged (the model normalises them itself)"
        if pre.in_model
        else (f"pixels are scaled by {list(pre.scale)} and shifted by {list(pre.bias)} per channel")
    )
    mlmodel.input_description[INPUT_NAME] = f"{w}x{h} {pre.channel_order} image; resize policy {pre.resize} ({pre.interpolation}); {how}"
    desc = mlmodel.get_spec().description
    mlmodel.output_description[desc.predictedFeatureName] = "Most likely class label"
    mlmodel.output_description[desc.predictedProbabilitiesName] = "Probability of each class label"
    for key, value in coreml_metadata(info, variant_key).items():
        mlmodel.user_defined_metadata[key] = value


def save(mlmodel, path) -> None:
    """Save, then rewrite the protobuf with small constants shared, short value names and deterministic map order: protobuf serialises the
    user-defined metadata map in arbitrary order, so two identical exports would otherwise differ byte for byte (and by
    SHA-256)."""
    from coremltools.proto import Model_pb2

    from ..quantize.names import share_constants, shorten_names

    path = Path(path)
    mlmodel.save(str(path))
    spec_file = path / "Data" / "com.apple.CoreML" / "model.mlmodel" if path.is_dir() else path
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    share_constants(spec)  # one const op per repeated strides/pad/... value (quantize/names.py)
    shorten_names(spec)  # ML Program value names from 80 characters to 2-4
    spec_file.write_bytes(spec.SerializeToString(deterministic=True))
