"""Core ML weight compression as pure transforms on an in-memory ``MLModel``.

coremltools skips weights with fewer than 2,048 elements by default, which leaves most depthwise kernels (3x3xC) in
float. We set ``weight_threshold`` to ``MIN_WEIGHT_ELEMENTS`` so every convolution and dense kernel is compressed, and
``uncompressed_weights`` reports whatever constant is still stored in float and why.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

from ..errors import ConfigError, ConversionError

# Compress every kernel with at least this many elements. Biases are inputs of their op, not weights, and stay fp16:
# they are a fraction of a percent of the bytes and quantizing them buys nothing but error.
MIN_WEIGHT_ELEMENTS = 1
# Grouped-channel palettization keeps 4-bit accuracy far better than one table per tensor; 16 output channels per
# lookup table is the group size Apple recommends for 4 bits (coremltools optimization guide).
PALETTE_GROUP_SIZE = 16


@dataclass(frozen=True)
class CompressionSpec:
    kind: str  # "linear" or "palettize"
    nbits: int = 8
    grouped: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "palettize"):
            raise ConfigError(f"compression kind must be 'linear' or 'palettize', got {self.kind!r}")
        allowed = (8,) if self.kind == "linear" else (1, 2, 3, 4, 6, 8)
        if self.nbits not in allowed:
            raise ConfigError(f"{self.kind} compression bits must be one of {list(allowed)}, got {self.nbits}")


def compress(mlmodel, spec: CompressionSpec):
    """Return a new MLModel with compressed weights; ``mlmodel`` is not modified."""
    import coremltools.optimize.coreml as cto

    if spec.kind == "linear":
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                                weight_threshold=MIN_WEIGHT_ELEMENTS)
        fn = cto.linear_quantize_weights
    else:
        extra = dict(granularity="per_grouped_channel", group_size=PALETTE_GROUP_SIZE) if spec.grouped else dict(
            granularity="per_tensor")
        op_config = cto.OpPalettizerConfig(nbits=spec.nbits, mode="kmeans", weight_threshold=MIN_WEIGHT_ELEMENTS,
                                           **extra)
        fn = cto.palettize_weights
    try:
        with warnings.catch_warnings():
            # k-means on a small kernel finds fewer distinct values than table entries: harmless, entries repeat.
            warnings.filterwarnings("ignore", message="Number of distinct clusters")
            return fn(mlmodel, cto.OptimizationConfig(global_config=op_config))
    except Exception as exc:
        raise ConversionError(f"{spec.kind} {spec.nbits}-bit compression failed: {str(exc).splitlines()[0][:300]}"
                              ) from None


def neuralnetwork_weights(mlmodel, nbits: int):
    """NeuralNetwork (.mlmodel) weights to fp16 (nbits=16) or 8-bit linear; a new model, the input is unchanged."""
    from coremltools.models.neural_network import quantization_utils

    if nbits not in (16, 8):
        raise ConfigError(f"NeuralNetwork weight bits must be 16 or 8, got {nbits}")
    mode = "linear" if nbits == 8 else None
    kwargs = {"quantization_mode": mode} if mode else {}
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per layer
            return quantization_utils.quantize_weights(mlmodel, nbits=nbits, **kwargs)
    except Exception as exc:
        raise ConversionError(f"NeuralNetwork {nbits}-bit weight quantization failed: {str(exc).splitlines()[0][:300]}"
                              ) from None


def uncompressed_weights(mlmodel, min_elements: int = 64) -> list[dict]:
    """Float constants of at least ``min_elements`` that feed a conv/linear/matmul as weight, left uncompressed."""
    prog = getattr(mlmodel, "_mil_program", None)
    if prog is None:
        return []
    left = []
    for op in prog.functions["main"].operations:
        if op.op_type not in ("conv", "linear", "matmul", "conv_transpose"):
            continue
        weight = op.inputs.get("weight") if hasattr(op, "inputs") else None
        producer = getattr(weight, "op", None)
        if producer is not None and producer.op_type == "const" and weight.val is not None \
                and weight.val.size >= min_elements:
            left.append({"op": op.name, "elements": int(weight.val.size),
                         "reason": "kept in float by coremltools (below its size threshold or unsupported)"})
    return left


def w8a8(mlmodel, calibration, channel_order: str, input_name: str = "image"):
    """int8 weights and int8 activations (iOS 17+), activation ranges calibrated on ``calibration`` (uint8 NHWC
    batches in the contract's channel order). coremltools calibrates by running the model, so this needs macOS."""
    import numpy as np
    from PIL import Image

    import coremltools.optimize.coreml as cto
    from coremltools.optimize.coreml.experimental import OpActivationLinearQuantizerConfig, linear_quantize_activations

    if not calibration:
        raise ConversionError("W8A8 needs calibration images")
    samples = []
    for batch in calibration:
        for x in batch:
            rgb = x[:, :, ::-1] if channel_order == "BGR" else x  # the image input takes RGB; Core ML reorders
            samples.append({input_name: Image.fromarray(np.ascontiguousarray(rgb).squeeze())})
    act = cto.OptimizationConfig(global_config=OpActivationLinearQuantizerConfig(mode="linear_symmetric"))
    try:
        quantized = linear_quantize_activations(mlmodel, act, samples)
    except Exception as exc:
        raise ConversionError(f"W8A8 activation calibration failed: {str(exc).splitlines()[0][:300]}") from None
    return compress(quantized, CompressionSpec("linear", 8))
