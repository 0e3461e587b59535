"""The NeuralNetwork (.mlmodel) layer table, and the numpy layers for convolution, pooling, padding, dense
products and normalisation, each as ``NeuralNetwork.proto`` defines it.

A builder reads one layer's parameters (decoding its weights once) and returns ``(run, batch_rule)``: ``run`` maps
the layer's input arrays to its output array(s); ``batch_rule`` takes the input shapes seen at batch 1 and says
whether the layer computes the same thing image by image when the leading axis is a batch of N.
"""

from __future__ import annotations

import numpy as np

from ...errors import ConversionError, UnsupportedOperationError
from . import blas, kernels, kernels_nd, nnweights
from .blob import bounded_count
from .live import Constants
from .registry import layer

F32 = np.float32
BATCHNORM_EPSILON = 1e-5  # NeuralNetwork.proto: batchnorm epsilon "defaults to 1e-5 if not set or set to 0"


def always(_shapes) -> bool:
    return True


def axes_rule(axes, reduce_all: bool = False):
    def rule(shapes) -> bool:
        if reduce_all or not axes:
            return False
        rank = len(shapes[0])
        return all(int(a) % rank != 0 for a in axes)

    return rule


class LayerContext:
    """What a builder needs besides the layer's parameters: weight decoding in the compute precision, errors."""

    def __init__(
        self,
        name: str,
        kind: str,
        where: str,
        fp16: bool,
        rank5: bool = False,
        outputs: int = 1,
        inputs: int = 1,
        constants: Constants | None = None,
    ):
        self.name, self.kind, self.where, self.fp16 = name, kind, where, fp16
        self.outputs = outputs  # how many outputs the file names (a recurrent layer's final states are optional)
        self.inputs = inputs  # how many inputs it names (a convolution's second input is its weights)
        # the file maps its image to rank 5: rank-5 blobs are held (Batch, Seq, C, H, W), see neuralnetwork
        self.rank5 = rank5
        self.batched = False  # set by the network: the layer's first input derives from the image
        self.constants = constants  # the network's decoded weights together, bounded

    def vector(self, wp):
        """A 1-D parameter whose length only its WeightParams tells (float32 or float16 values)."""
        size = len(wp.floatValue) or len(wp.float16Value) // 2
        if not size:
            raise self.unsupported("has a quantized or empty vector parameter, which the executor does not read")
        return self.weights(wp, (size,))

    def weights(self, wp, shape, channel_axis: int = 0, optional: bool = False):
        w = nnweights.decode(wp, tuple(int(s) for s in shape), self.where, channel_axis, optional=optional)
        if w is not None and self.fp16:
            w = w.astype(np.float16).astype(F32)
        if self.constants is not None:
            self.constants.add(w, f"{self.kind} layer {self.name!r}")
        return w

    def unsupported(self, message: str) -> UnsupportedOperationError:
        return UnsupportedOperationError(f"{self.kind} layer {self.name!r} {message}", path=self.where)

    def fail(self, message: str) -> ConversionError:
        return ConversionError(f"{self.kind} layer {self.name!r} {message}", path=self.where)


def on_images(run, ctx: LayerContext, min_rank: int = 4):
    """``run`` on (N, C, H, W) for an input of rank ``min_rank`` or more: NeuralNetwork.proto's convolution, pooling
    and rearranging layers treat every axis before the channel as batch (a rank-5 blob [Seq, Batch, C, H, W] is
    Seq * Batch images; a rank-3 [C, H, W] is one)."""

    def wrapped(inputs):
        x = inputs[0]
        if x.ndim < min_rank:
            raise ctx.unsupported(f"gets a rank-{x.ndim} input; it needs rank {min_rank} or more")
        if x.ndim == 4:
            return run(x)
        out = run(x.reshape((-1,) + x.shape[-3:]))
        return out.reshape(x.shape[:-3] + out.shape[1:])

    return wrapped


def _pair(values, default) -> tuple[int, int]:
    values = [int(v) for v in values]
    return (values[0], values[1]) if len(values) == 2 else default


def _borders(padding) -> tuple[int, int, int, int]:
    amounts = list(padding.paddingAmounts.borderAmounts)
    if not amounts:
        return (0, 0, 0, 0)
    return (int(amounts[0].startEdgeSize), int(amounts[0].endEdgeSize), int(amounts[1].startEdgeSize), int(amounts[1].endEdgeSize))


def _same_pads(shape, kernel, stride, dilation, mode: int) -> tuple[int, int, int, int]:
    lower = mode == 1  # SamePadding.TOP_LEFT_HEAVY
    th, bh = kernels.same_padding(shape[-2], kernel[0], stride[0], dilation[0], lower)
    tw, bw = kernels.same_padding(shape[-1], kernel[1], stride[1], dilation[1], lower)
    return (th, bh, tw, bw)


# ------------------------------------------------------------------------------------------------ convolution, pooling
def _deconvolution(p, ctx: LayerContext):
    """Transposed convolution: output ``(H - 1) * stride + kernel`` less the valid padding, ``H * stride`` for
    same padding (cropped as TensorFlow does, the odd pixel after), or ``outputShape`` when set."""
    groups = int(p.nGroups) or 1
    kernel = _pair(p.kernelSize, (3, 3))
    stride = _pair(p.stride, (1, 1))
    weight = ctx.weights(p.weights, (p.kernelChannels, p.outputChannels // groups) + kernel)
    bias = ctx.weights(p.bias, (p.outputChannels,)) if p.hasBias else None
    padding = p.WhichOneof("ConvolutionPaddingType")
    target = [int(v) for v in p.outputShape] or None

    def run(x):
        full = [(d - 1) * s + k for d, s, k in zip(x.shape[2:], stride, kernel, strict=True)]
        if target is None and padding != "same":
            crop = list(_borders(p.valid))
        else:
            out = target or [d * s for d, s in zip(x.shape[2:], stride, strict=True)]
            crop = []
            for size, f in zip(out, full, strict=True):
                total = max(f - size, 0)
                crop.extend((total // 2, total - total // 2))
        return kernels_nd.conv_transpose(x, weight, bias, stride, (1, 1), crop, groups, target)

    return on_images(run, ctx), always


@layer("convolution")
def _convolution(p, ctx: LayerContext):
    if p.isDeconvolution:
        return _deconvolution(p, ctx)
    groups = int(p.nGroups) or 1
    kernel = _pair(p.kernelSize, (3, 3))
    stride = _pair(p.stride, (1, 1))
    dilation = _pair(p.dilationFactor, (1, 1))
    shape = (int(p.outputChannels), int(p.kernelChannels)) + kernel
    # a second input, when the file gives one, is the weight blob [outputChannels, kernelChannels, kH, kW]
    # (NeuralNetwork.proto, iOS 13); the WeightParams are then empty
    weight = None if ctx.inputs > 1 else ctx.weights(p.weights, shape)
    bias = ctx.weights(p.bias, (p.outputChannels,)) if p.hasBias else None
    padding = p.WhichOneof("ConvolutionPaddingType")
    cache: dict = {}

    def run(x, w):
        pads = _same_pads(x.shape, kernel, stride, dilation, p.same.asymmetryMode) if padding == "same" else _borders(p.valid)
        return kernels.conv2d(x, w, bias, stride, dilation, pads, groups, cache if weight is not None else {})

    if weight is not None:
        return on_images(lambda x: run(x, weight), ctx), always

    def dynamic(inputs):
        w = np.asarray(inputs[1], F32)
        if w.shape != shape:
            raise ctx.fail(f"gets a weight input of shape {w.shape}; its parameters say {shape}")
        return on_images(lambda x: run(x, w), ctx)(inputs[:1])

    return dynamic, lambda shapes: False  # the weight blob may derive from the image too: one image a pass


@layer("pooling")
def _pooling(p, ctx: LayerContext):
    """MAX, AVERAGE or L2 pooling; ``includeLastPixel`` is symmetric padding with the output rounded up (the last
    window always reaching the last pixel), as MIL's ceil_mode."""
    kind = {0: "max", 1: "avg", 2: "l2"}.get(p.type)
    if kind is None:
        raise ctx.unsupported(f"uses pooling type {p.type}, which NeuralNetwork.proto does not define")
    padding = p.WhichOneof("PoolingPaddingType")
    stride = _pair(p.stride, (1, 1))
    kernel = _pair(p.kernelSize, (3, 3))
    exclude = bool(p.avgPoolExcludePadding)
    cache: dict = {}

    def run(x):
        if p.globalPooling:
            return (
                kernels_nd.pool(x, kind, x.shape[2:], (1, 1), (0, 0, 0, 0), False)
                if kind == "l2"
                else kernels.pool2d(x, kind, x.shape[2:], (1, 1), (0, 0, 0, 0), False, cache)
            )
        if padding == "includeLastPixel":
            amounts = [int(v) for v in p.includeLastPixel.paddingAmounts] or [0, 0]
            pads = (amounts[0], amounts[0], amounts[1], amounts[1])
            return kernels_nd.pool(x, kind, kernel, stride, pads, exclude, ceil_mode=True)
        pads = _same_pads(x.shape, kernel, stride, (1, 1), p.same.asymmetryMode) if padding == "same" else _borders(p.valid)
        if kind == "l2":
            return kernels_nd.pool(x, kind, kernel, stride, pads, exclude)
        return kernels.pool2d(x, kind, kernel, stride, pads, exclude, cache)

    return on_images(run, ctx), always


@layer("padding")
def _padding(p, ctx: LayerContext):
    kind = p.WhichOneof("PaddingType")
    amounts = list(p.paddingAmounts.borderAmounts)
    pairs = [(int(a.startEdgeSize), int(a.endEdgeSize)) for a in amounts] or [(0, 0), (0, 0)]

    def run(inputs):
        x = inputs[0]
        if kind == "constant":
            return kernels.pad_constant(x, pairs, F32(p.constant.value))
        full = [(0, 0)] * (x.ndim - 2) + pairs
        return np.pad(x, full, mode="reflect" if kind == "reflection" else "edge")

    return run, always


@layer("constantPad")
def _constant_pad(p, ctx: LayerContext):
    """``value`` padded before and after each axis by ``padAmounts`` (or the second input's values), the pairs
    aligned with the last axes; with ``padToGivenOutputSizeMode`` a pair's non-zero entry is the size that axis is
    padded to (before or after the values, as the entry's place says), never below the input's size."""
    static = [int(v) for v in p.padAmounts]

    def run(inputs):
        x = inputs[0]
        raw = np.asarray(inputs[1]).reshape(-1) if len(inputs) > 1 else np.asarray(static)
        flat = [int(v) for v in raw]
        if len(flat) % 2 or len(flat) // 2 > x.ndim or any(v < 0 for v in flat) or np.any(raw != np.asarray(flat)):
            raise ctx.fail(f"has pad amounts {raw.tolist()}; it needs whole non-negative pairs for at most {x.ndim} axes")
        pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        if p.padToGivenOutputSizeMode:
            sizes = x.shape[x.ndim - len(pairs) :]
            if any(a and b for a, b in pairs):
                raise ctx.fail(f"pads to a given size with both entries of a pair set ({pairs})")
            pairs = [(max(a - size, 0), 0) if a else (0, max(b - size, 0)) for (a, b), size in zip(pairs, sizes, strict=True)]
        out_shape = x.shape[: x.ndim - len(pairs)] + tuple(
            d + a + b for d, (a, b) in zip(x.shape[x.ndim - len(pairs) :], pairs, strict=True)
        )
        bounded_count(out_shape, ctx.where, f"constantPad {ctx.name!r} output")
        return kernels.pad_constant(x, pairs, F32(p.value))

    def rule(shapes) -> bool:
        if len(shapes) > 1:
            return False
        pairs = len(static) // 2
        return pairs < len(shapes[0]) or static[:2] == [0, 0]

    return run, rule


LINEAR_UPSAMPLE_MODES = {0: "DEFAULT", 1: "STRICT_ALIGN_CORNERS", 2: "UNALIGN_CORNERS"}  # UpsampleLayerParams


@layer("upsample")
def _upsample(p, ctx: LayerContext):
    """Output ``floor(H * factor)`` (integer ``scalingFactor`` or ``fractionalScalingFactor``): nearest neighbour
    copies pixel ``floor(i * H / H_out)``; bilinear samples the grid of ``linearUpsampleMode`` (DEFAULT
    ``i * H / H_out``, ALIGN_CORNERS_TRUE corners on corners, ALIGN_CORNERS_FALSE pixel centres)."""
    factors = [float(v) for v in p.fractionalScalingFactor] or [float(v) for v in p.scalingFactor] or [1.0, 1.0]
    if len(factors) != 2:
        raise ctx.fail(f"has {len(factors)} scaling factors; NeuralNetwork.proto says 2")
    if p.mode not in (0, 1):
        raise ctx.unsupported(f"uses interpolation mode {p.mode}, which NeuralNetwork.proto does not define")
    mode = LINEAR_UPSAMPLE_MODES.get(p.linearUpsampleMode)
    if mode is None:
        raise ctx.unsupported(f"uses linear upsample mode {p.linearUpsampleMode}")

    def run(inputs):
        x = inputs[0]
        h, w = x.shape[-2:]
        out_h, out_w = int(np.floor(h * factors[0])), int(np.floor(w * factors[1]))
        bounded_count((*x.shape[:-2], out_h, out_w), ctx.where, f"upsample {ctx.name!r} output")  # before allocating
        if p.mode == 0:
            return kernels_nd.nearest(x, kernels_nd.nearest_floor(h, out_h), kernels_nd.nearest_floor(w, out_w))
        return kernels_nd.bilinear(x, out_h, out_w, mode)

    return run, always


# ------------------------------------------------------------------------------------------------ normalisation, dense
@layer("batchnorm")
def _batchnorm(p, ctx: LayerContext):
    c = int(p.channels)
    eps = F32(p.epsilon or BATCHNORM_EPSILON)
    gamma, beta = ctx.weights(p.gamma, (c,)), ctx.weights(p.beta, (c,))
    if p.computeMeanVar:
        # statistics computed at run time: over each instance's H and W (instanceNormalization), or over the whole
        # batch, every axis but the channel; a prediction is one image, so the batch is that image's blob (run image
        # by image: the batch rule is False)
        instance = bool(p.instanceNormalization)

        def normalise(inputs):
            x = inputs[0]
            axes = (-2, -1) if instance else tuple(a for a in range(x.ndim) if a != x.ndim - 3)
            mean = x.mean(axis=axes, keepdims=True)
            var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
            return (x - mean) / np.sqrt(var + eps) * gamma.reshape(-1, 1, 1) + beta.reshape(-1, 1, 1)

        return normalise, (always if instance else (lambda shapes: False))
    mean, var = ctx.weights(p.mean, (c,)), ctx.weights(p.variance, (c,))
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    return (lambda inputs: inputs[0] * scale.reshape(-1, 1, 1) + shift.reshape(-1, 1, 1)), always


@layer("innerProduct")
def _inner_product(p, ctx: LayerContext):
    if p.int8DynamicQuantize:
        raise ctx.unsupported("quantizes its input to int8 at run time, which the executor does not reproduce")
    cin, cout = int(p.inputChannels), int(p.outputChannels)
    weight = ctx.weights(p.weights, (cout, cin)).T.copy()
    bias = ctx.weights(p.bias, (cout,)) if p.hasBias else None

    def run(inputs):
        x = inputs[0]
        rank = x.ndim
        if rank in (1, 2, 3):
            out = blas.matmul(x, weight)
        elif rank == 4:
            out = blas.matmul(x.reshape(x.shape[0], -1), weight).reshape(x.shape[0], cout, 1, 1)
        elif rank == 5:
            flat = x.reshape(x.shape[0] * x.shape[1], -1)
            out = blas.matmul(flat, weight).reshape(x.shape[0], x.shape[1], cout, 1, 1)
        else:
            raise ctx.unsupported(f"gets a rank-{rank} input")
        if bias is not None:
            out = out + (bias.reshape(-1, 1, 1) if rank >= 4 else bias)
        return out

    return run, lambda shapes: len(shapes[0]) >= 2


@layer("batchedMatmul")
def _batched_matmul(p, ctx: LayerContext):
    if p.int8DynamicQuantize:
        raise ctx.unsupported("quantizes its input to int8 at run time, which the executor does not reproduce")
    x1, x2 = int(p.weightMatrixFirstDimension), int(p.weightMatrixSecondDimension)
    # Stored column-major as NeuralNetwork.proto says: the flat values are W^T (x2 rows of x1), quantized per x2.
    weight = ctx.weights(p.weights, (x2, x1), optional=True)
    weight = None if weight is None else weight.T.copy()
    bias = ctx.weights(p.bias, (x2,)) if p.hasBias else None

    def run(inputs):
        if len(inputs) == 2:
            a, b = inputs
            if p.transposeA:
                a = np.swapaxes(a, -1, -2)
            if p.transposeB:
                b = np.swapaxes(b, -1, -2)
            return blas.matmul(a, b)
        if weight is None:
            raise ctx.fail("has one input and no weights")
        out = blas.matmul(inputs[0], weight)
        return out if bias is None else out + bias

    def rule(shapes) -> bool:
        return len(shapes) == 1 and len(shapes[0]) >= 2

    return run, rule


@layer("softmaxND")
def _softmax_nd(p, ctx: LayerContext):
    axis = int(p.axis)

    def run(inputs):
        x = inputs[0]
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    return run, lambda shapes: axis % len(shapes[0]) != 0


@layer("softmax")
def _softmax(p, ctx: LayerContext):
    def run(inputs):
        x = inputs[0]
        e = np.exp(x - x.max(axis=-3, keepdims=True))
        return e / e.sum(axis=-3, keepdims=True)

    return run, lambda shapes: len(shapes[0]) > 3
