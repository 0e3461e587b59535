"""NeuralNetwork (.mlmodel) resampling, cropping, rearranging, normalisation and 3-D layers in numpy, each as
``NeuralNetwork.proto`` defines it; the arithmetic is shared with the ML Program ops (``kernels_nd``,
``mil_resample``)."""

from __future__ import annotations

import numpy as np

from . import kernels_nd
from .blob import bounded_count
from .mil_resample import BOX_MODES, crop_box
from .nnlayers import F32, LayerContext, always, layer, on_images

# SamplingMode.Method -> the MIL sampling mode with the same grid (coremltools' MIL -> NeuralNetwork mapping).
SAMPLING_METHODS = {0: "STRICT_ALIGN_CORNERS", 1: "ALIGN_CORNERS", 2: "DEFAULT", 3: "OFFSET_CORNERS"}
LRN_K = 1.0  # NeuralNetwork.proto: LRN k "defaults to 1 if not set or 0"
MVN_EPSILON = 1e-6  # NeuralNetwork.proto: mvn epsilon "defaults to 1e-6 if not set or set to 0"
REORGANIZE = {0: kernels_nd.space_to_depth, 1: kernels_nd.depth_to_space, 2: kernels_nd.pixel_shuffle}
PAD_CUSTOM, PAD_VALID, PAD_SAME = 0, 1, 2  # Convolution3D / Pooling3D padding types


def _sampling(mode, ctx: LayerContext) -> str:
    method = SAMPLING_METHODS.get(mode.samplingMethod)
    if method is None:
        raise ctx.unsupported(f"uses sampling method {mode.samplingMethod}, which NeuralNetwork.proto does not define")
    return method


@layer("resizeBilinear")
def _resize_bilinear(p, ctx: LayerContext):
    size = [int(v) for v in p.targetSize] or [1, 1]
    method = _sampling(p.mode, ctx)
    return (lambda inputs: kernels_nd.bilinear(inputs[0], size[0], size[1], method)), always


@layer("cropResize")
def _crop_resize(p, ctx: LayerContext):
    """Boxes (second input, [N, 1, 4 or 5, 1, 1]) cut from the feature map (first input, [1, B, C, H, W]) and
    resized bilinearly: output [N, B, C, h, w], or [N, 1, C, h, w] when each box names its image."""
    target = [int(v) for v in p.targetSize] or [1, 1]
    size = (target[0], target[1])
    method = _sampling(p.mode, ctx)
    box_mode = BOX_MODES[p.boxIndicesMode.boxMode]
    scale = float(p.spatialScale or 1.0)

    def run(inputs):
        x = np.asarray(inputs[0], F32)
        images = x.reshape((-1,) + x.shape[-3:])
        rois = np.asarray(inputs[1], np.float64).reshape(len(inputs[1]), -1)
        outs = []
        for row in rois:
            if len(row) == 5:
                crops = [crop_box(images[int(row[0])], row[1:], box_mode, p.normalizedCoordinates, scale, size, method)]
            else:
                crops = [crop_box(image, row, box_mode, p.normalizedCoordinates, scale, size, method) for image in images]
            outs.append(np.stack(crops))
        return np.stack(outs)

    return run, lambda shapes: False


@layer("crop")
def _crop(p, ctx: LayerContext):
    """One input: the border amounts cropped from H and W. Two inputs: the second input's H and W, starting at
    ``offset`` (H, W)."""

    def run(inputs):
        x = inputs[0]
        h, w = x.shape[-2:]
        if len(inputs) == 2:
            top, left = [int(v) for v in p.offset] or [0, 0]
            th, tw = inputs[1].shape[-2:]
            return x[..., top : top + th, left : left + tw]
        amounts = list(p.cropAmounts.borderAmounts)
        top, bottom = int(amounts[0].startEdgeSize), int(amounts[0].endEdgeSize)
        left, right = int(amounts[1].startEdgeSize), int(amounts[1].endEdgeSize)
        return x[..., top : h - bottom, left : w - right]

    return run, always


@layer("reorganizeData")
def _reorganize(p, ctx: LayerContext):
    """SPACE_TO_DEPTH / DEPTH_TO_SPACE (TensorFlow's channel order) or PIXEL_SHUFFLE (PyTorch's)."""
    fn, block = REORGANIZE.get(p.mode), int(p.blockSize)
    if fn is None:
        raise ctx.unsupported(f"uses reorganization mode {p.mode}")
    return on_images(lambda x: fn(x, block), ctx, min_rank=3), always


@layer("lrn")
def _lrn(p, ctx: LayerContext):
    """``x / (k + alpha / localSize * sum of x^2 over localSize channels)^beta``, the window holding
    ``(localSize - 1) // 2`` channels before and the rest after (as MIL's local_response_norm)."""
    size, alpha, beta, k = int(p.localSize), F32(p.alpha), F32(p.beta), F32(p.k or LRN_K)
    before = (size - 1) // 2

    def run(inputs):
        x = np.asarray(inputs[0], F32)
        axis = x.ndim - 3
        widths = [(0, 0)] * x.ndim
        widths[axis] = (before, size - 1 - before)
        squares = np.pad(x * x, widths)
        cumulative = np.cumsum(squares, axis=axis, dtype=F32)
        cumulative = np.concatenate([np.zeros_like(np.take(cumulative, [0], axis=axis)), cumulative], axis=axis)
        window = np.take(cumulative, np.arange(size, cumulative.shape[axis]), axis=axis) - np.take(
            cumulative, np.arange(cumulative.shape[axis] - size), axis=axis
        )
        return x / np.power(k + alpha / F32(size) * window, beta)

    return run, always


@layer("mvn")
def _mvn(p, ctx: LayerContext):
    """Mean (and, with ``normalizeVariance``, variance) normalisation over H, W, or C, H, W with
    ``acrossChannels``: ``(x - mean) / sqrt(var + epsilon)``."""
    axes = (-3, -2, -1) if p.acrossChannels else (-2, -1)
    eps = F32(p.epsilon or MVN_EPSILON)

    def run(inputs):
        x = inputs[0]
        centred = x - x.mean(axis=axes, keepdims=True)
        if not p.normalizeVariance:
            return centred
        return centred / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + eps)

    return run, lambda shapes: len(shapes[0]) > 3 or not p.acrossChannels


@layer("layerNormalization")
def _layer_normalization(p, ctx: LayerContext):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` over the trailing axes of ``normalizedShape``."""
    shape = tuple(int(s) for s in p.normalizedShape)
    gamma, beta = ctx.weights(p.gamma, shape), ctx.weights(p.beta, shape)
    eps = F32(p.eps)
    axes = tuple(range(-len(shape), 0))

    def run(inputs):
        x = inputs[0]
        centred = x - x.mean(axis=axes, keepdims=True)
        return centred / np.sqrt((centred * centred).mean(axis=axes, keepdims=True) + eps) * gamma + beta

    return run, lambda shapes: len(shape) < len(shapes[0])


@layer("scale")
def _scale(p, ctx: LayerContext):
    """``x * scale (+ bias)``, each of shape [1], [C], [1, H, W] or [C, H, W], broadcast over the last three axes."""
    scale = ctx.weights(p.scale, tuple(int(s) for s in p.shapeScale))
    bias = ctx.weights(p.bias, tuple(int(s) for s in p.shapeBias)) if p.hasBias else None

    scale = _channelwise(scale)
    bias = None if bias is None else _channelwise(bias)

    def run(inputs):
        out = inputs[0] * scale
        return out if bias is None else out + bias

    return run, always


def _channelwise(value: np.ndarray) -> np.ndarray:
    """A [C] parameter laid along axis -3; [1], [1, H, W] and [C, H, W] broadcast as they are."""
    return value.reshape(-1, 1, 1) if value.ndim == 1 and value.size > 1 else value


@layer("bias")
def _bias(p, ctx: LayerContext):
    bias = _channelwise(ctx.weights(p.bias, tuple(int(s) for s in p.shape)))
    return (lambda inputs: inputs[0] + bias), always


@layer("loadConstant")
def _load_constant(p, ctx: LayerContext):
    """The [C, H, W] constant; in a file with the rank-5 image layout, as the rank-5 blob [1, 1, C, H, W]
    NeuralNetwork.proto says it is (a permute or reshape of it needs rank 5)."""
    value = ctx.weights(p.data, tuple(int(s) for s in p.shape))
    if ctx.rank5 and value.ndim == 3:
        value = value[None, None]
    return (lambda inputs: value), always


@layer("split")
def _split(p, ctx: LayerContext):
    count = int(p.nOutputs)
    return (lambda inputs: list(np.split(inputs[0], count, axis=-3))), (lambda shapes: len(shapes[0]) > 3)


@layer("slice")
def _slice(p, ctx: LayerContext):
    """``x[start:end:stride]`` (numpy's meaning, negative indices from the end) along channel, height or width."""
    axis = {0: -3, 1: -2, 2: -1}[p.axis]
    start, end, stride = int(p.startIndex), int(p.endIndex), int(p.stride) or 1

    def run(inputs):
        x = inputs[0]
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, end, stride)
        return x[tuple(index)]

    return run, lambda shapes: len(shapes[0]) > 3


# ------------------------------------------------------------------------------------------------ 3-D
def _pads_3d(p, x, kernel, strides, dilations) -> list[int]:
    if p.paddingType == PAD_VALID:
        return [0] * 6
    if p.paddingType == PAD_SAME:
        return kernels_nd.same_pads(x.shape[2:], kernel, strides, dilations)
    return [
        int(p.customPaddingFront),
        int(p.customPaddingBack),
        int(p.customPaddingTop),
        int(p.customPaddingBottom),
        int(p.customPaddingLeft),
        int(p.customPaddingRight),
    ]


def _deconvolution3d(p, ctx: LayerContext, groups: int, kernel, strides, dilations):
    """Transposed 3-D convolution. Weights stored [outputChannels / nGroups, inputChannels, kD, kH, kW]
    (NeuralNetwork.proto; coremltools' MIL conv_transpose lowering stores the same). The full output, ``(D - 1) *
    stride + (K - 1) * dilation + 1`` per axis, loses the custom padding, nothing (valid), or what exceeds ``D *
    stride`` (same) or ``outputShape``, split as for 2-D (the odd value after)."""
    cout, cin = int(p.outputChannels), int(p.inputChannels)
    if groups < 1 or cout % groups or cin % groups:
        raise ctx.fail(f"has {groups} groups for {cin} input and {cout} output channels")
    weight = ctx.weights(p.weights, (cout // groups, cin) + kernel).transpose(1, 0, 2, 3, 4).copy()  # (C_in, C_out/g, K)
    bias = ctx.weights(p.bias, (cout,)) if p.hasBias else None
    target = [int(v) for v in p.outputShape] or None
    if target is not None and len(target) != 3:
        raise ctx.fail(f"has output shape {target}; NeuralNetwork.proto says [D_out, H_out, W_out]")

    def run(inputs):
        x = inputs[0]
        if x.ndim != 5:
            raise ctx.unsupported(f"gets a rank-{x.ndim} input; rank 5 (N, C, D, H, W) is supported")
        full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(x.shape[2:], strides, kernel, dilations, strict=True)]
        if target is not None or p.paddingType == PAD_SAME:
            sizes = target or [d * s for d, s in zip(x.shape[2:], strides, strict=True)]
            crop: list[int] = []
            for size, f in zip(sizes, full, strict=True):
                total = max(f - size, 0)
                crop.extend((total // 2, total - total // 2))
        elif p.paddingType == PAD_VALID:
            crop = [0] * 6
        else:
            crop = _pads_3d(p, x, kernel, strides, dilations)
        bounded_count((x.shape[0], cout, *full), ctx.where, f"convolution3d {ctx.name!r} output")
        return kernels_nd.conv_transpose(x, weight, bias, strides, dilations, crop, groups, target)

    return run, always


@layer("convolution3d")
def _convolution3d(p, ctx: LayerContext):
    groups = int(p.nGroups) or 1
    kernel = (int(p.kernelDepth), int(p.kernelHeight), int(p.kernelWidth))
    strides = [int(p.strideDepth) or 1, int(p.strideHeight) or 1, int(p.strideWidth) or 1]
    dilations = [int(p.dilationDepth) or 1, int(p.dilationHeight) or 1, int(p.dilationWidth) or 1]
    if p.isDeconvolution:
        return _deconvolution3d(p, ctx, groups, kernel, strides, dilations)
    weight = ctx.weights(p.weights, (p.outputChannels, p.inputChannels // groups) + kernel)
    bias = ctx.weights(p.bias, (p.outputChannels,)) if p.hasBias else None
    cache: dict = {}

    def run(inputs):
        x = inputs[0]
        if x.ndim != 5:
            raise ctx.unsupported(f"gets a rank-{x.ndim} input; rank 5 (N, C, D, H, W) is supported")
        pads = _pads_3d(p, x, kernel, strides, dilations)
        return kernels_nd.conv(x, weight, bias, strides, dilations, pads, groups, cache)

    return run, always


@layer("pooling3d")
def _pooling3d(p, ctx: LayerContext):
    kind = {0: "max", 1: "avg"}[p.type]
    kernel = [int(p.kernelDepth), int(p.kernelHeight), int(p.kernelWidth)]
    strides = [int(p.strideDepth) or 1, int(p.strideHeight) or 1, int(p.strideWidth) or 1]

    def run(inputs):
        x = inputs[0]
        pads = _pads_3d(p, x, kernel, strides, [1, 1, 1])
        return kernels_nd.pool(x, kind, kernel, strides, pads, bool(p.countExcludePadding))

    return run, always


@layer("globalPooling3d")
def _global_pooling3d(p, ctx: LayerContext):
    reduce = np.max if p.type == 0 else np.mean
    return (lambda inputs: reduce(inputs[0], axis=(-3, -2, -1), keepdims=True)), always
