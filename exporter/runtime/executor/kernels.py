"""Convolution, pooling and padding kernels in numpy, shared by the ML Program and NeuralNetwork interpreters.

Tensors are logically NCHW (Core ML's layout) but held in memory as NHWC: a kernel returns
``nhwc_array.transpose(0, 3, 1, 2)``, a free view, and the next kernel's ``transpose(0, 2, 3, 1)`` gets the
contiguous NHWC array back without a copy. Elementwise numpy operations keep that memory order. In NHWC a
convolution is one matrix product over (pixels, kernel taps x channels) and a depthwise convolution is a
channel-vectorised sum over kernel taps (compiled: see ``compiled``); a 3x3 unit-stride convolution over enough
channels is computed by Winograd's F(2x2, 3x3), 16 products over (tiles, channels) (see ``winograd``).
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ...errors import ConversionError, UnsupportedOperationError

# im2col patch matrix built at once: at most IM2COL_BYTES (the patches, written and at once read by the product,
# stay in the last-level cache instead of going out to memory and back), but at least IM2COL_MIN_ROWS rows (a
# shorter product wastes more of the BLAS kernel's packing than the cache saves). Measured single-threaded against
# 64 MB chunks: 3x3 80 -> 192 at 73 px over 7 images 0.64, 32 -> 64 at 147 px over 2 images 0.71, 5x5 48 -> 64 at
# 35 px 0.89; 0.94-1.05 on small maps with wide channels (448 -> 384 at 8 px, 1x7 192 -> 192 at 17 px), where
# the minimum rows decide.
IM2COL_BYTES = 16 * 1024 * 1024
IM2COL_MIN_ROWS = 2048


def nhwc(x: np.ndarray) -> np.ndarray:
    """The NHWC view of a logically NCHW tensor (contiguous when the tensor came from one of these kernels)."""
    return x.transpose(0, 2, 3, 1)


def nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2)


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1, lower: bool = False) -> tuple[int, int]:
    """(before, after) padding of TensorFlow/Core ML "same": output ceil(size / stride), the odd pixel after
    (``lower``: before, as MIL ``same_lower`` and NeuralNetwork ``TOP_LEFT_HEAVY``)."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    small = total // 2
    return (total - small, small) if lower else (small, total - small)


def output_size(size: int, kernel: int, stride: int, dilation: int, before: int, after: int) -> int:
    effective = (kernel - 1) * dilation + 1
    out = (size + before + after - effective) // stride + 1
    if out < 1:
        raise ConversionError(f"a {kernel}-wide window (dilation {dilation}) does not fit an input of {size} padded by {before}+{after}")
    return out


# Activations a convolution can apply to its input as it copies it into its padded buffer (plan.fuse_relus): both
# keep the zero padding zero.
INPUT_ACTIVATIONS = {
    "relu": lambda x, out: np.maximum(x, np.float32(0), out=out),
    "relu6": lambda x, out: np.clip(x, np.float32(0), np.float32(6), out=out),
}


def pad_nhwc(
    xh: np.ndarray,
    pads: tuple[int, int, int, int],
    value: float | np.floating = 0.0,
    scratch: dict | None = None,
    activation: str | None = None,
) -> np.ndarray:
    """Contiguous NHWC copy of ``xh`` padded by (top, bottom, left, right) with ``value``; with ``activation`` (one
    of INPUT_ACTIVATIONS, ``value`` then 0) of the activation of ``xh``.

    With ``scratch`` (a kernel's private cache) the padded buffer is kept and reused, one per thread: its border is
    written once and each call only copies the interior. Only for buffers that never leave the kernel."""
    top, bottom, left, right = pads
    if not any(pads):
        return INPUT_ACTIVATIONS[activation](xh, None) if activation else np.ascontiguousarray(xh)
    n, h, w, c = xh.shape
    shape = (n, h + top + bottom, w + left + right, c)
    key = ("padded", threading.get_ident(), value)
    out = None if scratch is None else scratch.get(key)
    if out is None or out.shape != shape or out.dtype != xh.dtype:
        out = np.full(shape, value, dtype=xh.dtype)
        if scratch is not None:
            scratch[key] = out
    if activation:
        INPUT_ACTIVATIONS[activation](xh, out[:, top : top + h, left : left + w])
    else:
        out[:, top : top + h, left : left + w] = xh
    return out


def _windows(xh: np.ndarray, ho: int, wo: int, kh: int, kw: int, stride, dilation) -> np.ndarray:
    """Read-only (N, Ho, Wo, kh, kw, C) view of every kernel window of a contiguous NHWC array."""
    sn, sh, sw, sc = xh.strides
    shape = (xh.shape[0], ho, wo, kh, kw, xh.shape[3])
    strides = (sn, sh * stride[0], sw * stride[1], sh * dilation[0], sw * dilation[1], sc)
    return as_strided(xh, shape, strides, writeable=False)


def dense_weight(weight: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) kernel -> the (kh*kw*I, O) matrix that multiplies im2col patches."""
    o, i, kh, kw = weight.shape
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(kh * kw * i, o), dtype=np.float32)


def depthwise_weight(weight: np.ndarray) -> np.ndarray:
    """(C, 1, kh, kw) kernel -> (kh, kw, C) for the tap sum."""
    return np.ascontiguousarray(weight[:, 0].transpose(1, 2, 0), dtype=np.float32)


def _dense(xh, wmat, kh, kw, stride, dilation, ho, wo) -> np.ndarray:
    n, _, _, c = xh.shape
    out = np.empty((n, ho, wo, wmat.shape[1]), np.float32)
    flat = out.reshape(-1, wmat.shape[1])
    if kh == kw == 1:
        src = xh[:, : (ho - 1) * stride[0] + 1 : stride[0], : (wo - 1) * stride[1] + 1 : stride[1], :]
        np.matmul(src.reshape(-1, c), wmat, out=flat)
        return out
    windows = _windows(xh, ho, wo, kh, kw, stride, dilation)
    k = kh * kw * c
    pixels = max(IM2COL_MIN_ROWS, IM2COL_BYTES // (k * 4))  # patch rows per product
    rows = max(1, pixels // wo)  # output rows (of one image) per chunk
    if rows >= ho:
        images = max(1, rows // ho)
        for i in range(0, n, images):
            patches = windows[i : i + images].reshape(-1, k)
            np.matmul(patches, wmat, out=out[i : i + images].reshape(-1, wmat.shape[1]))
        return out
    for i in range(n):
        for r in range(0, ho, rows):
            patches = windows[i, r : r + rows].reshape(-1, k)
            np.matmul(patches, wmat, out=out[i, r : r + rows].reshape(-1, wmat.shape[1]))
    return out


# Rows of the flattened padded input per block of the shifted-taps convolution: the block's float32 accumulator and
# product (rows x output channels each) stay in the core's cache while the taps are summed into it.
SHIFTED_BLOCK_ROWS = 2048
# When the shifted-taps convolution replaces im2col: it computes every position of the padded grid and adds one
# product per tap into the output, so it wins when im2col's copy of kh*kw times the input outweighs the product
# (few output channels for the input's) and loses on small maps with wide channels, where the grid's border is a large
# share. Measured single-threaded, batch 3, time relative to im2col (a busy machine: +-15 %): 3x3 128 -> 32 at 56 px
# 0.43-0.51, at 28 px 0.93; 64 -> 64 at 56 px 0.82-0.98; 128 -> 128 at 28 px 0.9-1.28; 256 -> 256 at 14 px 1.04-1.49;
# 512 -> 512 at 7 px 1.08-1.41.
SHIFTED_NARROW_GRID = 2.0  # largest grid / output area when the output has at most half the input's channels
SHIFTED_GRID = 1.1  # otherwise, and then only below SHIFTED_WIDE_CHANNELS input channels:
# from 128 channels in and out, im2col's one long product wins at any grid. Measured single-threaded (taps / im2col):
# 3x3 128 -> 128 at 112 px 1.26 and at 28 px 1.15-1.19, 256 -> 256 at 56 px 1.20 and at 14 px 1.32-1.35; but 64 -> 64
# at 224 px 0.82-0.87, at 112 px 0.92, at 56 px 0.74-0.94, 32 -> 32 at 147 px 0.88-0.91.
SHIFTED_WIDE_CHANNELS = 128


def _shifted_pays(c: int, o: int, grid: int, out: int) -> bool:
    # A convolution that widens the channels does not: its product per tap is short (few input channels) against
    # blocked im2col's one long product. Measured against im2col in IM2COL_BYTES blocks: 3x3 80 -> 192 at 73 px 1.29,
    # 32 -> 64 at 147 px 1.03; but 32 -> 32 at 149 px 0.73, 64 -> 64 at 56 px 0.82-0.96, 128 -> 32 at 28 px 0.66.
    if o > c:
        return False
    if 2 * o <= c:
        return grid <= SHIFTED_NARROW_GRID * out
    return c < SHIFTED_WIDE_CHANNELS and grid <= SHIFTED_GRID * out


def tap_weights(weight: np.ndarray) -> np.ndarray:
    """(O, I, kh, kw) kernel -> (kh*kw, I, O): one (I, O) matrix per tap."""
    o, i, kh, kw = weight.shape
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0).reshape(kh * kw, i, o), dtype=np.float32)


def _dense_shifted(xh, taps, kh, kw, dilation, ho, wo) -> np.ndarray:
    """A unit-stride convolution as a sum over taps of one matrix product each, with no im2col copy.

    Flattened to (pixels, channels), the padded input read at tap (i, j) is the same array shifted by
    ``i * dh * width + j * dw`` rows, a contiguous slice. Each output pixel is computed at its position on the padded
    grid, so the few columns (and rows, between images) past the output's edge are computed and dropped. Worth it
    when the kernel has many taps and few output channels (DenseNet's 3x3 growth convolutions: 128 -> 32), where
    im2col writes kh*kw copies of the input to feed a narrow product."""
    n, hp, wp, c = xh.shape
    o = taps.shape[2]
    flat = xh.reshape(-1, c)
    offsets = [i * dilation[0] * wp + j * dilation[1] for i in range(kh) for j in range(kw)]
    rows = flat.shape[0] - offsets[-1]  # every valid output position p has p + offset < n * hp * wp
    full = np.empty((n * hp * wp, o), np.float32)
    product = np.empty((min(SHIFTED_BLOCK_ROWS, rows), o), np.float32)
    for start in range(0, rows, SHIFTED_BLOCK_ROWS):
        stop = min(start + SHIFTED_BLOCK_ROWS, rows)
        acc = full[start:stop]
        np.matmul(flat[start + offsets[0] : stop + offsets[0]], taps[0], out=acc)
        part = product[: stop - start]
        for t in range(1, len(offsets)):
            np.matmul(flat[start + offsets[t] : stop + offsets[t]], taps[t], out=part)
            acc += part
    return np.ascontiguousarray(full.reshape(n, hp, wp, o)[:, :ho, :wo])


def _pointwise_biased(xh, wmat_bias, stride, ho, wo) -> np.ndarray:
    """A 1x1 convolution that widens the channels, its bias folded in as one more input channel of ones: one matrix
    product, and no second pass over the (wider) output to add the bias."""
    n, _, _, c = xh.shape
    widened = np.empty((n, ho, wo, c + 1), np.float32)
    widened[..., :c] = xh[:, : (ho - 1) * stride[0] + 1 : stride[0], : (wo - 1) * stride[1] + 1 : stride[1], :]
    widened[..., c] = 1.0
    out = np.empty((n, ho, wo, wmat_bias.shape[1]), np.float32)
    np.matmul(widened.reshape(-1, c + 1), wmat_bias, out=out.reshape(-1, wmat_bias.shape[1]))
    return out


def _depthwise(x, weight, bias, stride, dilation, pads, size, cache: dict, input_activation) -> np.ndarray:
    from . import compiled  # numba, imported on the first depthwise convolution

    o = weight.shape[0]
    if "depthwise" not in cache:  # the key tested last: a worker thread that finds it finds the others
        wdw = depthwise_weight(weight)
        cache["depthwise_bias"] = np.zeros(o, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(o)
        cache["depthwise_finite"] = bool(np.isfinite(wdw).all())
        cache["depthwise"] = wdw
    xh = nhwc(x).astype(np.float32, copy=False)
    multiplier = o // x.shape[1]
    if multiplier > 1:
        xh = np.repeat(xh, multiplier, axis=3)  # output channel j reads input channel j // multiplier
    if not cache["depthwise_finite"]:
        # The compiled kernel skips the taps on the zero padding, which add 0 * w: nothing for a finite w, but NaN for
        # an inf or NaN one, as the zero-padded product gives. With such a weight the input is padded here instead
        # (the activation applied first, as the kernel would), so that those taps are summed.
        xh = pad_nhwc(xh, pads, activation=input_activation)
        pads, input_activation = (0, 0, 0, 0), None
    out = compiled.depthwise(xh, cache["depthwise"], cache["depthwise_bias"], stride, dilation, pads, size[0], size[1], input_activation)
    return nchw(out)


# Winograd F(2x2, 3x3) for 3x3 unit-stride undilated convolutions (see ``winograd``): 4/9 of the multiply-adds, in 16
# matrix products of (tiles, input channels) by (input channels, output channels). Measured single-threaded, time
# relative to the im2col or shifted-taps path it replaces (a machine at load 5-6 on 2 cores: +-10 %): 3x3 512 -> 512
# at 28 px 0.54, at 14 px 0.53, 256 -> 256 at 56 px 0.51, 128 -> 128 at 112 px 0.47, 64 -> 64 at 224 px 0.53,
# 64 -> 128 at 112 px 0.54, 128 -> 256 at 56 px 0.73, DenseNet's 128 -> 32 at 56 px 0.52, at 28 px 0.69, at 14 px 0.72,
# at 7 px 0.70; 512 -> 512 at 7 px 0.67, 32 -> 32 at 112 px 0.57 and at 32 px 0.55. Used from WINOGRAD_MIN_CHANNELS
# input and output channels: below, the products are too narrow for BLAS to repay the transforms (16 -> 16 at 112 px
# 1.10, at 32 px 0.68; 8 -> 8 at 32 px 1.14; 3 -> 64 at 224 px 2.2).
WINOGRAD_MIN_CHANNELS = 32
# Tiles per product: longer products run nearer BLAS's speed, shorter blocks keep the transformed input and output
# (16 x tiles x channels floats each) in cache. Measured as above, blocks of 96 / 192 / 384 / 768 tiles:
# 512 -> 512 at 28 px 0.67 / 0.64 / 0.56 / 0.54, 256 -> 256 at 56 px 0.61 / 0.58 / 0.52 / 0.51, 128 -> 128 at 112 px
# 0.53 / 0.47 / 0.53 / 0.51, 64 -> 64 at 224 px 0.56 / 0.53 / 0.69 / 0.78, 128 -> 32 at 56 px 0.52 / 0.82 / 0.95 / 1.0,
# 64 -> 128 at 112 px 0.54 / 0.74 / 0.80 / 0.80. Rows (at most this many input + output channels, tiles per product):
# the first row that fits.
WINOGRAD_BLOCKS = ((192, 96), (511, 192), (1 << 30, 768))


def winograd_block(c: int, o: int) -> int:
    return next(tiles for most, tiles in WINOGRAD_BLOCKS if c + o <= most)


def _winograd_applies(weight: np.ndarray, stride, dilation, groups: int) -> bool:
    o, cg, kh, kw = weight.shape
    return (
        groups == 1 and (kh, kw) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and min(cg, o) >= WINOGRAD_MIN_CHANNELS
    )


def _winograd(x, weight, bias, pads, size, cache: dict, input_activation) -> np.ndarray | None:
    """The convolution by ``winograd``, or None when it cannot give what the direct sum gives (a kernel or a result
    value that is not finite: see winograd)."""
    from . import winograd  # numba, imported on the first such convolution

    if "winograd" not in cache:  # the key tested last: a worker thread that finds it finds the bias
        o = weight.shape[0]
        cache["winograd_bias"] = np.zeros(o, np.float32) if bias is None else np.asarray(bias, np.float32).reshape(o)
        cache["winograd"] = winograd.kernel_transform(weight) if np.isfinite(weight).all() else None
    if cache["winograd"] is None:
        return None
    block = winograd_block(weight.shape[1], weight.shape[0])
    out = winograd.conv3x3(nhwc(x), cache["winograd"], cache["winograd_bias"], pads, size[0], size[1], block, input_activation)
    return None if out is None else nchw(out)


def conv2d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride,
    dilation,
    pads: tuple[int, int, int, int],
    groups: int,
    cache: dict | None = None,
    input_activation: str | None = None,
) -> np.ndarray:
    """2-D convolution of logically NCHW ``x`` with an (O, I/groups, kh, kw) kernel; returns logical NCHW.

    ``pads`` is (top, bottom, left, right) of zeros. ``cache``, when given, keeps the rearranged kernel between
    calls (pass it only for a constant kernel). ``input_activation`` (relu, relu6): convolve that activation of x,
    applied as x is copied into the padded buffer."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if cg * groups != c or o % groups:
        raise ConversionError(f"convolution kernel {list(weight.shape)} with {groups} groups does not fit an input of {c} channels")
    ho = output_size(h, kh, stride[0], dilation[0], pads[0], pads[1])
    wo = output_size(w, kw, stride[1], dilation[1], pads[2], pads[3])
    cache = {} if cache is None else cache
    if groups == c and cg == 1:  # depthwise, o // groups outputs per input channel: compiled, reads x in place
        return _depthwise(x, weight, bias, stride, dilation, pads, (ho, wo), cache, input_activation)
    if _winograd_applies(weight, stride, dilation, groups):
        out = _winograd(x, weight, bias, pads, (ho, wo), cache, input_activation)
        if out is not None:
            return out
    xh = pad_nhwc(nhwc(x).astype(np.float32, copy=False), pads, scratch=cache, activation=input_activation)
    if groups == 1 and kh == kw == 1 and bias is not None and c < o:
        if "dense_bias" not in cache:
            rows = np.concatenate([dense_weight(weight), np.asarray(bias, np.float32).reshape(1, o)])
            cache["dense_bias"] = np.ascontiguousarray(rows)
        return nchw(_pointwise_biased(xh, cache["dense_bias"], stride, ho, wo))
    if groups == 1 and kh * kw > 1 and stride == (1, 1) and _shifted_pays(c, o, xh.shape[1] * xh.shape[2], ho * wo):
        if "taps" not in cache:
            cache["taps"] = tap_weights(weight)
        out = _dense_shifted(xh, cache["taps"], kh, kw, dilation, ho, wo)
    elif groups == 1:
        if "dense" not in cache:
            cache["dense"] = dense_weight(weight)
        out = _dense(xh, cache["dense"], kh, kw, stride, dilation, ho, wo)
    else:
        og = o // groups
        if "grouped" not in cache:
            cache["grouped"] = [dense_weight(weight[g * og : (g + 1) * og]) for g in range(groups)]
        out = np.empty((n, ho, wo, o), np.float32)
        for g, wmat in enumerate(cache["grouped"]):
            part = np.ascontiguousarray(xh[..., g * cg : (g + 1) * cg])
            out[..., g * og : (g + 1) * og] = _dense(part, wmat, kh, kw, stride, dilation, ho, wo)
    if bias is not None:
        # Added along whole output rows (the bias tiled over the width): one long vector loop per row instead of
        # one short loop per pixel.
        if cache.get("bias_width") != wo:
            row = np.tile(np.asarray(bias, np.float32).reshape(-1), wo)
            cache["bias_row"], cache["bias_width"] = row, wo
        out.reshape(n * ho, wo * o)[...] += cache["bias_row"]
    return nchw(out)


def pool2d(
    x: np.ndarray, kind: str, kernel, stride, pads: tuple[int, int, int, int], exclude_padding: bool, cache: dict | None = None
) -> np.ndarray:
    """Max or average pooling of logically NCHW ``x`` over (kh, kw) windows; returns logical NCHW.

    Padded positions never win a max; for averages they count as zeros unless ``exclude_padding``."""
    if kind not in ("max", "avg"):
        raise UnsupportedOperationError(f"{kind} pooling is not supported by the executor")
    n, c, h, w = x.shape
    kh, kw = kernel
    ho = output_size(h, kh, stride[0], 1, pads[0], pads[1])
    wo = output_size(w, kw, stride[1], 1, pads[2], pads[3])
    from . import compiled  # numba, imported on the first pooling

    out = compiled.pool(nhwc(x), kind == "max", (kh, kw), stride, pads, ho, wo, exclude_padding)
    return nchw(out)


def pad_constant(x: np.ndarray, pairs: list[tuple[int, int]], value: float | np.floating) -> np.ndarray:
    """Constant padding of the trailing ``len(pairs)`` axes; keeps the NHWC memory order for spatial padding."""
    lead = x.ndim - len(pairs)
    full = [(0, 0)] * lead + list(pairs)
    if x.ndim == 4 and full[0] == (0, 0) and full[1] == (0, 0):
        (top, bottom), (left, right) = full[2], full[3]
        return nchw(pad_nhwc(nhwc(x), (top, bottom, left, right), value))
    return np.pad(x, full, mode="constant", constant_values=value)


# Elements per block of ``blockwise``: a block and its temporary (256 KB each) stay in the core's L2 cache while the
# passes of a chain of elementwise functions run over it. Measured single-threaded, SiLU (five passes) over 2.4M and
# 1.8M floats: 0.56-0.6 of the time of whole-array passes, 64K-element blocks against 16K (0.7) and 4K (0.9).
ELEMENTWISE_BLOCK = 65536


def memory_flat(x: np.ndarray) -> np.ndarray | None:
    """A 1-D view of all of ``x``'s elements in memory order, or None when they are not one contiguous run (a logically
    NCHW value held as NHWC gives its NHWC order)."""
    order = sorted(range(x.ndim), key=lambda axis: -x.strides[axis])
    view = x.transpose(order)
    return view.reshape(-1) if view.flags.c_contiguous else None


def blockwise(fn, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``fn(x_block, out_block, scratch_block)`` over blocks of ``x``, writing into ``out`` (new if None, may be ``x``):
    a chain of elementwise passes runs block by block in cache instead of each pass streaming the whole array
    through memory. Elementwise, so every value is the one a whole-array pass gives. ``scratch_block`` is a float32
    buffer of the block's size for ``fn``'s intermediate."""
    if out is None:
        out = np.empty_like(x)  # the same memory order as x
    flat_x, flat_out = memory_flat(x), memory_flat(out)
    if flat_x is None or flat_out is None or (out is not x and out.strides != x.strides):
        fn(x, out, np.empty_like(x))
        return out
    scratch = np.empty(min(ELEMENTWISE_BLOCK, flat_x.size), np.float32)
    for start in range(0, flat_x.size, ELEMENTWISE_BLOCK):
        part = flat_x[start : start + ELEMENTWISE_BLOCK]
        fn(part, flat_out[start : start + ELEMENTWISE_BLOCK], scratch[: part.size])
    return out


# ------------------------------------------------------------------------------------------------ reductions
# (x, axes or None, keep_dims) -> array; ML Program (reduce_*) and NeuralNetwork (reduce*) layers name the same eight.
# Sums accumulate in float32 whatever the input's precision, as Core ML's CPU does.
REDUCTIONS = {
    "mean": lambda x, a, k: x.mean(axis=a, keepdims=k, dtype=np.float32),
    "sum": lambda x, a, k: x.sum(axis=a, keepdims=k, dtype=np.float32),
    "max": lambda x, a, k: x.max(axis=a, keepdims=k),
    "min": lambda x, a, k: x.min(axis=a, keepdims=k),
    "prod": lambda x, a, k: x.prod(axis=a, keepdims=k, dtype=np.float32),
    "sum_square": lambda x, a, k: (x * x).sum(axis=a, keepdims=k, dtype=np.float32),
    "l1_norm": lambda x, a, k: np.abs(x).sum(axis=a, keepdims=k, dtype=np.float32),
    "l2_norm": lambda x, a, k: np.sqrt((x * x).sum(axis=a, keepdims=k, dtype=np.float32)),
}


# Elementwise numpy functions that ML Program ops and NeuralNetwork unary layers both name the same way: one table,
# each interpreter registers it under its own protocol (like REDUCTIONS).
UNARY_FUNCTIONS = {
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "atanh": np.arctanh,
    "exp2": np.exp2,
    "sign": np.sign,
}
