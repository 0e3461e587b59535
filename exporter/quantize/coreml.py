"""Core ML weight compression as pure transforms on an in-memory ``MLModel``.

coremltools skips weights with fewer than 2,048 elements by default. The low-bit palettes set ``weight_threshold`` to
``MIN_WEIGHT_ELEMENTS`` so every convolution and dense kernel is compressed; the 8-bit files keep the small kernels
(up to ``SMALL_WEIGHT_ELEMENTS`` elements) in float16, which is where their lost decisions came from (see there).
``uncompressed_weights`` reports whatever constant is still stored in float and why.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass

from ..errors import ConfigError, ConversionError, translating
from ..upstream import apply_graph_pass, mil_program

# Compress every kernel with at least this many elements. Biases are inputs of their op, not weights, and stay fp16:
# they are a fraction of a percent of the bytes and quantizing them buys nothing but error.
MIN_WEIGHT_ELEMENTS = 1
# 8-bit files (int8, palette8, W8A8) keep every conv/dense kernel with at most this many elements in float16
# (coremltools' ``weight_threshold``: kernels of that size or smaller are left as they are). The small
# kernels are the first layers (a 3x3 stem, the depthwise kernels and pointwise convs of the early blocks): few
# channels, so one rounding error moves every later activation, and on images outside the model's classes, whose margins
# are small, that flips decisions. Measured one kernel at a time on the MobileNet v1 sample (int8 affine, the rest in
# float16): the six kernels that moved decisions on held-out photos all have at most 1,024 elements, the kernels above
# 4,096 elements moved none; KL on the in-class calibration digits ranks them the same way. Whole files, agreement on
# photos outside the classes (digits model) / on digits outside the classes (transfer model), every kernel compressed
# -> up to 2,048 elements float -> up to 4,096 float: int8 0.940 -> 0.985 -> 0.995 and 0.987 -> 0.993 -> 0.997, palette8
# 0.970 -> 0.980 -> 0.985 and 0.990 -> 0.997 -> 0.993, for 1-3 % more bytes (2-3 % of fp32 on the samples, under 1 % on a
# full-size MobileNetV2). 4,096 is also coremltools' NeuralNetwork default (minimum_conv_weight_count), which the
# NeuralNetwork int8 file already used (0.985 there).
SMALL_WEIGHT_ELEMENTS = 4096
# Grouped-channel palettization keeps 4-bit accuracy far better than one table per tensor; 16 output channels per
# lookup table is the group size Apple recommends for 4 bits (coremltools optimization guide).
PALETTE_GROUP_SIZE = 16
# Activation quantization ops need Core ML 7 (iOS 17), the specification version the passes are run at.
IOS17_SPEC_VERSION = 8


@dataclass(frozen=True)
class CompressionSpec:
    kind: str  # "linear" or "palettize"
    nbits: int = 8
    grouped: bool = False
    # linear only: symmetric (scale per channel, no zero point; what int8 x int8 compute in W8A8 needs) or affine
    # (scale and zero point per channel; the better fit for a weight-only variant, see WEIGHT_ONLY_INT8)
    symmetric: bool = True
    # kernels with at most this many elements stay float16 (MIN_WEIGHT_ELEMENTS: none; SMALL_WEIGHT_ELEMENTS: 8-bit)
    min_elements: int = MIN_WEIGHT_ELEMENTS

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "palettize"):
            raise ConfigError(f"compression kind must be 'linear' or 'palettize', got {self.kind!r}")
        allowed = (8,) if self.kind == "linear" else (1, 2, 3, 4, 6, 8)
        if self.nbits not in allowed:
            raise ConfigError(f"{self.kind} compression bits must be one of {list(allowed)}, got {self.nbits}")
        if self.min_elements < 1:
            raise ConfigError(f"compression min_elements must be >= 1, got {self.min_elements}")


# The weight-only int8 variant is affine (a zero point per output channel): trained kernels are rarely centred, and a
# symmetric range wastes part of the 256 levels on values that do not occur. Measured against symmetric on the
# held-out images: max |dp| 0.105 -> 0.057 (MobileNet v1), 0.171 -> 0.048 (v2), 0.295 -> 0.096 (transfer model, top-1
# agreement 0.965 -> 0.990, from failing its 0.98 gate to passing); SqueezeNet 0.039 either way but one image more
# flipped (0.997 vs 1.000). Files 1 % larger.
WEIGHT_ONLY_INT8 = CompressionSpec("linear", 8, symmetric=False, min_elements=SMALL_WEIGHT_ELEMENTS)
PALETTE8 = CompressionSpec("palettize", 8, min_elements=SMALL_WEIGHT_ELEMENTS)
# The default 6-bit file keeps the same small kernels in float16 as the 8-bit files. Measured 2026-12-01 (one table per
# tensor, data-free k-means; Core ML files through the executor): top-1 agreement outside the classes, every kernel
# palettized -> kernels of up to 4,096 elements float16: MobileNet v1 sample 0.925 -> 0.980, v2 0.940 -> 0.995,
# SqueezeNet 0.960 -> 0.965, transfer 0.927 -> 0.977; the transfer sample's flips on 1,000 fresh held-out crops
# (benchmarks/fresh_crops.py) 22 -> 15-17 (k-means runs differ by a few), mean per-image max |dp| 0.028 -> 0.012; the
# digit samples' held-out digits 0-1 -> 0 flips. Bytes +4 % to +17 % (v2 370,244 -> 433,860, 0.225 -> 0.263 of fp32),
# still below palette8's 0.304. Not applied to the 4-bit tables: the same rule took the transfer sample's per-tensor
# 4-bit file from 132 to 35 flips of 1,000, but issue 18 bounds palette4's size (MobileNetV2 224 at 0.135 of fp32) and
# those kernels would spend it. kmeans1d (exact 1-D k-means, which coremltools uses for kernels of 10,000+ float16
# elements when it is installed) was measured and not added: 21 against 22 flips at 6 bits, 58 against 35 at 4.
PALETTE6 = CompressionSpec("palettize", 6, min_elements=SMALL_WEIGHT_ELEMENTS)
W8A8_WEIGHTS = CompressionSpec("linear", 8, symmetric=True, min_elements=SMALL_WEIGHT_ELEMENTS)


def compress(mlmodel, spec: CompressionSpec):
    """Return a new MLModel with compressed weights; ``mlmodel`` is not modified."""
    import coremltools.optimize.coreml as cto

    per_const = {}
    if spec.kind == "linear":
        op_config = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric" if spec.symmetric else "linear",
            dtype="int8",
            granularity="per_channel",
            weight_threshold=spec.min_elements,
        )
        fn = cto.linear_quantize_weights
    elif spec.grouped:

        def grouped(size: int):
            return cto.OpPalettizerConfig(
                nbits=spec.nbits, mode="kmeans", granularity="per_grouped_channel", group_size=size, weight_threshold=spec.min_elements
            )

        op_config = grouped(PALETTE_GROUP_SIZE)
        # Groups must divide the output channels; a layer with 24 or 56 channels gets groups of 8 instead of
        # being left in float.
        for name, channels in _weight_output_channels(mlmodel).items():
            if channels % PALETTE_GROUP_SIZE:
                per_const[name] = grouped(math.gcd(channels, PALETTE_GROUP_SIZE))
        fn = cto.palettize_weights
    else:
        op_config = cto.OpPalettizerConfig(nbits=spec.nbits, mode="kmeans", granularity="per_tensor", weight_threshold=spec.min_elements)
        fn = cto.palettize_weights
    with translating(ConversionError, f"{spec.kind} {spec.nbits}-bit compression failed"), warnings.catch_warnings():
        # k-means on a small kernel finds fewer distinct values than table entries: harmless, entries repeat.
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        return fn(mlmodel, cto.OptimizationConfig(global_config=op_config, op_name_configs=per_const or None))


def _float_weights(mlmodel):
    """(consuming op, const op, value, output channels) for every conv/linear/matmul weight still stored as a plain
    constant. conv and linear keep output channels on axis 0; a matmul's constant ``y`` on its last axis (axis 0
    when ``transpose_y``), which is the axis coremltools groups on."""
    prog = mil_program(mlmodel)
    for op in prog.functions["main"].operations if prog is not None else []:
        if op.op_type in ("conv", "linear", "conv_transpose"):
            names, axis = ["weight"], 0
        elif op.op_type == "matmul":
            transposed = op.inputs.get("transpose_y")
            names, axis = ["y"], 0 if (transposed is not None and transposed.val) else -1
        else:
            continue
        for name in names:
            var = op.inputs.get(name)
            producer = getattr(var, "op", None)
            if producer is not None and producer.op_type == "const" and var.val is not None and var.val.ndim >= 2:
                yield op, producer, var.val, int(var.val.shape[axis])


def small_weight_ops(mlmodel, min_elements: int = SMALL_WEIGHT_ELEMENTS) -> list[str]:
    """Names of the conv/linear/matmul ops whose float weight has at most ``min_elements`` elements."""
    return [op.name for op, _const, value, _channels in _float_weights(mlmodel) if value.size <= min_elements]


def _weight_output_channels(mlmodel) -> dict[str, int]:
    return {const.name: channels for _op, const, _val, channels in _float_weights(mlmodel)}


def neuralnetwork_weights(mlmodel, nbits: int, selector=None):
    """NeuralNetwork (.mlmodel) weights to fp16 (nbits=16) or 8-bit linear; a new model, the input is unchanged.
    ``selector`` (a coremltools QuantizedLayerSelector) replaces the layer choice; by default 16 bits takes every
    layer and 8 bits the one below."""
    from coremltools.models.neural_network import quantization_utils

    if nbits not in (16, 8):
        raise ConfigError(f"NeuralNetwork weight bits must be 16 or 8, got {nbits}")
    mode = "linear" if nbits == 8 else None
    kwargs: dict = {"quantization_mode": mode} if mode else {}
    if selector is not None:
        kwargs["selector"] = selector
    elif nbits == 8:
        # coremltools' default selector also quantizes batchnorm parameters and biases, each vector with ONE 8-bit
        # range (a vector is one "channel"): means and variances of every channel share 256 levels. Kept float, like
        # the ML Program files' biases, and convolutions up to SMALL_WEIGHT_ELEMENTS stay float as there.
        kwargs["selector"] = quantization_utils.AdvancedQuantizedLayerSelector(
            skip_layer_types=["batchnorm", "bias"], minimum_conv_kernel_channels=1, minimum_conv_weight_count=SMALL_WEIGHT_ELEMENTS + 1
        )
    with (
        translating(ConversionError, f"NeuralNetwork {nbits}-bit weight quantization failed"),
        contextlib.redirect_stdout(io.StringIO()),
    ):  # it prints a line per layer
        return quantization_utils.quantize_weights(mlmodel, nbits=nbits, **kwargs)


def uncompressed_weights(mlmodel, palette_bits: int | None = None, min_elements: int = MIN_WEIGHT_ELEMENTS) -> list[dict]:
    """Every conv/linear/matmul weight still stored as a plain float constant after compression, and why
    (``min_elements``: the compression's own threshold, SMALL_WEIGHT_ELEMENTS for the 8-bit files and palette6)."""
    left = []
    for op, _const, value, _channels in _float_weights(mlmodel):
        size = int(value.size)
        if min_elements > MIN_WEIGHT_ELEMENTS and size <= min_elements:
            reason = (
                f"{size} elements, at most the {min_elements} up to which this file keeps a kernel in float16: "
                "the small early kernels are where 8-bit rounding moved decisions (quantize/coreml.py)"
            )
        elif palette_bits is not None and size <= 2**palette_bits:
            reason = (
                f"{size} elements, no more than the {2**palette_bits} entries of a {palette_bits}-bit "
                "lookup table: palettizing would not make it smaller, so coremltools keeps it"
            )
        else:
            reason = "kept in float by coremltools"
        left.append({"op": op.name, "elements": size, "reason": reason})
    return left


# W8A8 activations are affine int8 (a scale and a zero point per tensor; coremltools' "linear" mode), weights stay
# symmetric. A symmetric range [-m, m] spends half of the 256 levels on negative values a ReLU output never takes, so
# every activation after a ReLU/ReLU6 was held at 7 bits. Measured against symmetric activations (calibration: 64
# in-class held-out images; mean per-image max |dp| and top-1 agreement on the other task's held-out images, Core ML
# files through the executor), symmetric -> affine: MobileNet v1 sample 0.0283 -> 0.0159 (agreement 0.960 -> 0.945),
# transfer sample 0.0163 -> 0.0125 (0.980 -> 0.997), MobileNetV2 sample 0.0209 -> 0.0178 (0.975 -> 0.985), SqueezeNet
# sample 0.0202 -> 0.0104 (0.950 -> 0.990; in-class 0.996 -> 1.000), and the quant_defaults family stand-ins
# MobileNetV2 nested 0.0356 -> 0.0317 (0.955 both) and EfficientNet nested 0.0424 -> 0.0248 (0.950 -> 0.970; in-class
# 0.996 -> 1.000). The error falls on every model; agreement outside the classes is decided by the few images whose
# top-2 margin is under 0.02-0.05 (2-9 of 200 on the digit models) and moves by a few of them either way (MobileNet v1:
# 3 images lost while its error halved). Core ML's quantize op takes the zero point (iOS 17; coremltools' own PyTorch
# flow also offers affine activations); whether the Neural Engine's int8 path runs zero points as fast as symmetric
# activations could not be measured here (no Mac).
ACTIVATION_MODE = "linear"


def w8a8(mlmodel, calibration, channel_order: str, input_name: str = "image", mode: str = ACTIVATION_MODE):
    """int8 weights and int8 activations (iOS 17+), activation ranges calibrated on ``calibration`` (uint8 NHWC
    batches in the contract's channel order); ``mode``: the activations' quantization, affine (ACTIVATION_MODE) or
    "linear_symmetric" (what the affine default is measured against).

    On macOS coremltools calibrates by running the model in Core ML. Elsewhere the ranges come from this project's
    Core ML executor running the same saved program. Either way coremltools' own passes insert the quantize/dequantize
    pairs from those ranges (degenerate ones widened, ``nonzero_ranges``), so the file is what coremltools would write
    given the same statistics."""
    import platform

    if not calibration:
        raise ConversionError("W8A8 needs calibration images")
    rgb_batches = [b[..., ::-1] if channel_order == "BGR" else b for b in calibration]  # image inputs take RGB
    config = _activation_config(small_weight_ops(mlmodel, W8A8_WEIGHTS.min_elements), mode)
    if platform.system() == "Darwin":
        ranges = _coremltools_ranges(mlmodel, rgb_batches, input_name)
    else:
        ranges = activation_ranges(mlmodel, rgb_batches, input_name)
    # Both paths widen degenerate ranges: coremltools replaces a symmetric scale of 0 by 1 itself, but an affine range
    # of zero width has no zero point (0 / 0) and its scale 0 fails the quantize op.
    quantized = _insert_activation_quantization(mlmodel, nonzero_ranges(ranges, mode), config)
    return compress(quantized, W8A8_WEIGHTS)


# Per-op exclusion beyond the small-weight ops (issue 18), measured and not adopted. The K most sensitive of the
# remaining activation-quantized ops also left float (op_name_configs None), ranked on the 64 in-class calibration
# images only, two ways: "proxy", calibrated range width / tensor std (coarsest int8 step first); "KL", leave-one-out
# mean KL vs the float file (each op alone left float). Agreement outside the classes (200 photos / 300 digits) for
# K = 0, 1, 2, 4, 8; in-class agreement 1.000 in every row; "float MACs": share of conv MACs left in float.
#   MobileNet v1 sample, proxy: 0.945, 0.965, 0.970, 0.970, 0.990 (pw_6; +pw_9; +pw_11, pw_10; all 8 large convs)
#                        KL:    0.945, 0.965, 0.970, 0.965, 0.980 (pw_6; +pw_9; +pw_13, pw_11; +pw_8, the pooling
#                               mean and two input-prologue ops). Float MACs 45 %, 49, 57, 73, 100 (KL K=8: 80 %).
#   transfer sample, proxy:     0.997, 0.993, 0.993, 0.993, 0.990 (pw_11; +pw_7; +pw_9, pw_6; +pw_12, 8, 10, conv_0)
#                        KL:    0.997, 0.993, 0.990, 0.993, 0.990 (pw_6; +pw_8; +pw_9, pw_7; +pw_11, 10, 12, conv_0)
# MobileNet v1 reaches 0.98 only when 80-100 % of the MACs compute in float, which is the weight-only int8 file (0.995)
# under another name; K = 1-4 gains 4-5 of 200 photos, the size of the swings ACTIVATION_MODE's note describes. The
# transfer sample already passes at K = 0 and loses 1-2 of 300 digits with any K. Both rankings agree on the first
# ops (pw_6, pw_9 on v1), but calibration KL is tiny (3e-5 mean on v1) because in-class margins are wide.
#
# Quantization-aware fine-tuning, measured and not adopted (2026-12-01, MobileNet v1 sample, quant_defaults' split):
# the Keras weights distilled (KL to the float model, BN in inference mode, Adam, batches of 128) through fake
# quantization at every Conv2D / DepthwiseConv2D / Dense input (uint8 affine, ranges from the calibration images),
# their kernels (int8 symmetric per output channel, straight-through gradient) and the logits; then exported as
# usual and compared with the ORIGINAL Keras model. Agreement outside the classes, fp32 / W8A8 / ONNX int8-static:
# before 1.000 / 0.945 / 0.955; 2,048 augmented calibration inputs (mixed.distillation_images), 400 steps at 1e-4: 0.965 /
# 0.940 / 0.950, and 0.870 / 0.870 / 0.870 in a second run of the same recipe (benchmarks/qat_probe.py; TF's
# multithreaded sums differ run to run and 400 steps amplify it); 300 steps at 2e-5: 0.970 / 0.945 / 0.955; plus 2,048
# synthetic smooth-noise images (out-of-class stand-ins), 400 steps at 5e-5: 0.960 / 0.955 / 0.955. In-class agreement
# stayed 0.996-1.000. The fine-tuning moves the float model's own decisions on outside images (their margins are as
# small as the quantization noise) at least as much as it removes quantization error there: in-class images carry no
# signal about the outside images' flips.
def _activation_config(float_ops: list[str], mode: str = ACTIVATION_MODE):
    """int8 activations in ``mode`` (ACTIVATION_MODE: affine) everywhere except around ``float_ops``: the ops whose
    small kernels stay float16 (SMALL_WEIGHT_ELEMENTS) compute in float from float inputs too. Measured on held-out
    images outside the classes, calibration on the in-class held-out folder (symmetric activations then): MobileNet v1
    sample 0.915 with those kernels in float but their activations int8 -> 0.965 with both in float; transfer sample
    0.960 -> 0.983. Widening every calibrated range instead (x1.5, x2, x3) lowered agreement (0.930, 0.920, 0.870 on
    MobileNet v1): what is lost is resolution, not clipped values."""
    import coremltools.optimize.coreml as cto
    from coremltools.optimize.coreml.experimental import OpActivationLinearQuantizerConfig

    return cto.OptimizationConfig(
        global_config=OpActivationLinearQuantizerConfig(mode=mode, dtype="int8"), op_name_configs=dict.fromkeys(float_ops) or None
    )


# coremltools stores activation ranges and scales in float16 and refuses a quantize op whose scale is 0. A tensor that
# is constant zero over the calibration set (a dead ReLU channel, a layer that a random or pruned model never
# activates) has range [0, 0], so its symmetric int8 scale max(|rmin|, |rmax|) / 127 is 0 and the whole export used to
# fail. Such a tensor gets the smallest range whose int8 step is a normal float16 number (2**-14, the smallest step the
# float16 scale can hold without going subnormal, which some accelerators flush to zero): 127 * 2**-14 = 0.00775.
# Any value the tensor takes on the calibration set stays exactly representable (0 is), and a value that appears later
# is clipped to that small range, which is what a range estimated from data always does.
MIN_ACTIVATION_BOUND = 127 * 2.0**-14
# The same floor for affine activations: their scale is (max(rmax, 0) - min(rmin, 0)) / 255 (a zero-width range would
# also divide by zero in the zero point), so the range is at least 255 steps of 2**-14.
MIN_AFFINE_RANGE = 255 * 2.0**-14


def nonzero_ranges(stats: dict[str, dict[str, float]], mode: str = "linear_symmetric") -> dict[str, dict[str, float]]:
    """A copy of ``stats`` in which every range too small for a normal float16 scale is widened; other ranges are kept
    as they are. ``mode`` "linear_symmetric": a symmetric bound max(|rmin|, |rmax|) below MIN_ACTIVATION_BOUND (constant
    zero included) becomes [-MIN_ACTIVATION_BOUND, MIN_ACTIVATION_BOUND]; "linear" (affine): a range [min(rmin, 0),
    max(rmax, 0)] narrower than MIN_AFFINE_RANGE becomes [min(rmin, 0), min(rmin, 0) + MIN_AFFINE_RANGE], which still
    holds every value seen."""
    if mode not in ("linear_symmetric", "linear"):
        raise ConfigError(f"activation quantization mode must be 'linear_symmetric' or 'linear', got {mode!r}")
    out = {}
    for name, r in stats.items():
        if mode == "linear":
            lo, hi = min(r["rmin"], 0.0), max(r["rmax"], 0.0)
            out[name] = dict(r) if hi - lo >= MIN_AFFINE_RANGE else {"rmin": lo, "rmax": lo + MIN_AFFINE_RANGE}
            continue
        bound = max(abs(r["rmin"]), abs(r["rmax"]))
        out[name] = dict(r) if bound >= MIN_ACTIVATION_BOUND else {"rmin": -MIN_ACTIVATION_BOUND, "rmax": MIN_ACTIVATION_BOUND}
    return out


def _coremltools_ranges(mlmodel, rgb_batches, input_name: str) -> dict[str, dict[str, float]]:
    """macOS: the activation ranges coremltools' ``linear_quantize_activations`` calibrates by running the model in
    Core ML (its ``_get_activation_calibration_stats``), before it inserts the quantize/dequantize pairs."""
    import numpy as np
    from coremltools.optimize.coreml.experimental import _post_training_quantization as ptq
    from PIL import Image

    from ..upstream import _read

    calibrate = _read(ptq, "_get_activation_calibration_stats", "coremltools")
    samples = [{input_name: Image.fromarray(np.ascontiguousarray(x).squeeze())} for b in rgb_batches for x in b]
    with translating(ConversionError, "W8A8 activation calibration failed"):
        return calibrate(mlmodel, samples)


def activation_ranges(mlmodel, rgb_batches, input_name: str = "image") -> dict[str, dict[str, float]]:
    """{tensor name: {"rmin", "rmax"}} over the calibration images, for the input and every op output, measured by
    running the saved program in the project's Core ML executor (float32 compute)."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from ..runtime.executor import CoreMLExecutor

    stats: dict[str, dict[str, float]] = {input_name: {"rmin": 0.0, "rmax": 255.0}}

    def observe(name: str, value) -> None:
        if value.dtype.kind != "f" or value.size == 0:
            return
        lo, hi = float(np.min(value)), float(np.max(value))
        seen = stats.setdefault(name, {"rmin": lo, "rmax": hi})
        seen["rmin"], seen["rmax"] = min(seen["rmin"], lo), max(seen["rmax"], hi)

    with tempfile.TemporaryDirectory(prefix="exporter-w8a8-") as tmp:
        path = Path(tmp) / "base.mlpackage"
        mlmodel.save(str(path))
        executor = CoreMLExecutor(path)
        for batch in rgb_batches:
            executor.predict(batch, observe=observe)
    return stats


def _insert_activation_quantization(mlmodel, stats, config):
    """coremltools' own activation-quantization passes (the ones ``linear_quantize_activations`` runs after its
    calibration), fed with our ranges. These are coremltools-internal entry points, pinned by coremltools < 10 and
    exercised by tests/executor/test_executor_models.py's W8A8 parity test."""
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    passes = []
    for name in ("compression::insert_prefix_quantize_dequantize_pair", "compression::insert_suffix_quantize_dequantize_pair"):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", config), PassOption("activation_stats", stats)])
        passes.append(graph_pass)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    with translating(ConversionError, "W8A8 activation quantization failed"):
        return apply_graph_pass(mlmodel, passes, spec_version=IOS17_SPEC_VERSION)
