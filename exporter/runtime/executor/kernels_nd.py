"""Convolution, transposed convolution, pooling and resampling kernels for any number of spatial axes (1 to 3), in
numpy, built on the 2-D kernels of ``kernels`` where they apply. Shared by the ML Program ops and the NeuralNetwork
layers. Tensors are (N, C, *spatial)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ...errors import ConversionError
from . import kernels

F32 = np.float32


def same_pads(spatial, kernel, strides, dilations, lower: bool = False) -> list[int]:
    """Flat (before, after, ...) padding of "same" (``lower``: the odd pixel before) for every spatial axis."""
    pads: list[int] = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        pads.extend(kernels.same_padding(size, k, s, d, lower))
    return pads


def conv(x: np.ndarray, weight: np.ndarray, bias, strides, dilations, pads, groups: int, cache: dict | None = None) -> np.ndarray:
    """Convolution of (N, C, *D) with an (O, C/groups, *K) kernel, 1 to 3 spatial axes; ``pads`` flat
    (before, after) per axis."""
    rank = x.ndim - 2
    cache = {} if cache is None else cache
    if rank == 2:
        return kernels.conv2d(x, weight, bias, tuple(strides), tuple(dilations), tuple(pads), groups, cache)
    if rank == 1:  # a 2-D convolution over a height of 1
        out = kernels.conv2d(
            x[:, :, None, :], weight[:, :, None, :], bias, (1, strides[0]), (1, dilations[0]), (0, 0, pads[0], pads[1]), groups, cache
        )
        return out[:, :, 0, :]
    if rank != 3:
        raise ConversionError(f"a convolution over {rank} spatial axes is not defined (1 to 3 are)")
    # 3-D: for each depth tap, a 2-D convolution of the depth slices it reads (depth folded into the batch), summed.
    n, c, depth = x.shape[:3]
    kd, sd, dd = weight.shape[2], strides[0], dilations[0]
    do = kernels.output_size(depth, kd, sd, dd, pads[0], pads[1])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[1]), (0, 0), (0, 0)))
    total: np.ndarray = np.zeros(0, F32)
    for j in range(kd):
        start = j * dd
        part = xp[:, :, start : start + (do - 1) * sd + 1 : sd]  # (N, C, do, H, W)
        part = part.transpose(0, 2, 1, 3, 4).reshape(n * do, c, *x.shape[3:])
        out = kernels.conv2d(
            part,
            weight[:, :, j],
            None,
            tuple(strides[1:]),
            tuple(dilations[1:]),
            tuple(pads[2:]),
            groups,
            cache.setdefault(("depth tap", j), {}),
        )
        total = out if j == 0 else total + out
    total = np.ascontiguousarray(total).reshape(n, do, *total.shape[1:]).transpose(0, 2, 1, 3, 4)
    if bias is not None:
        total = total + np.asarray(bias, F32).reshape((1, -1, 1, 1, 1))
    return total


def conv_transpose(x: np.ndarray, weight: np.ndarray, bias, strides, dilations, crop, groups: int, output_spatial=None) -> np.ndarray:
    """Transposed convolution of (N, C_in, *D) with a (C_in, C_out/groups, *K) kernel: every input value scatters
    ``value * kernel`` into the output at ``position * stride + tap * dilation``. The full result, of size
    ``(D - 1) * stride + (K - 1) * dilation + 1``, loses ``crop`` (flat before/after per axis); ``output_spatial``,
    if given, then fixes the size (zeros added, or values dropped, at the end)."""
    rank = x.ndim - 2
    n, cin = x.shape[:2]
    kernel = weight.shape[2:]
    cog = weight.shape[1]
    if cin % groups or weight.shape[0] != cin:
        raise ConversionError(
            f"transposed convolution kernel {list(weight.shape)} with {groups} groups does not fit an input of {cin} channels"
        )
    cig = cin // groups
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(x.shape[2:], strides, kernel, dilations, strict=True)]
    out = np.zeros((n, cog * groups, *full), F32)
    xf = np.asarray(x, F32)
    for g in range(groups):
        xg = xf[:, g * cig : (g + 1) * cig]
        wg = np.asarray(weight[g * cig : (g + 1) * cig], F32)
        # (N, *D, C_out/g, *K): every input position's contribution to every tap at once
        contrib = np.tensordot(np.moveaxis(xg, 1, -1), wg, axes=([-1], [0]))
        for tap in np.ndindex(*kernel):
            index = [slice(None), slice(g * cog, (g + 1) * cog)]
            for axis in range(rank):
                start = tap[axis] * dilations[axis]
                index.append(slice(start, start + (x.shape[2 + axis] - 1) * strides[axis] + 1, strides[axis]))
            values = contrib[(Ellipsis,) + tuple(tap)]  # (N, *D, C_out/g)
            out[tuple(index)] += np.moveaxis(values, -1, 1)
    index = [slice(None), slice(None)]
    for axis in range(rank):
        before, after = crop[2 * axis], crop[2 * axis + 1]
        index.append(slice(before, full[axis] - after))
    out = out[tuple(index)]
    if output_spatial is not None:
        fitted = np.zeros(out.shape[:2] + tuple(output_spatial), F32)
        common = tuple(slice(0, min(a, b)) for a, b in zip(out.shape[2:], output_spatial, strict=True))
        fitted[(slice(None), slice(None)) + common] = out[(slice(None), slice(None)) + common]
        out = fitted
    if bias is not None:
        out = out + np.asarray(bias, F32).reshape((1, -1) + (1,) * rank)
    return out


def pool_output_size(size: int, kernel: int, stride: int, before: int, after: int, ceil_mode: bool) -> int:
    """MIL's pooling output size (coremltools ops/defs/_utils.py ``spatial_dimensions_out_shape``)."""
    if not ceil_mode:
        return kernels.output_size(size, kernel, stride, 1, before, after)
    out = (size + before + after - kernel + stride - 1) // stride + 1
    if (out - 1) * stride >= size + before and (before > 0 or after > 0):
        out -= 1
    if out < 1:
        raise ConversionError(f"a {kernel}-wide pooling window does not fit an input of {size}")
    return out


def pool(x: np.ndarray, kind: str, kernel, strides, pads, exclude_padding: bool, ceil_mode: bool = False) -> np.ndarray:
    """Max, average or L2 pooling over 1 to 3 spatial axes. Padded positions never win a max and add nothing to a
    sum; an average divides by the window's positions inside the input (``exclude_padding``) or inside the padded
    input (otherwise; a ceil_mode window's overhang past the padding is never counted)."""
    rank = x.ndim - 2
    spatial = x.shape[2:]
    outs = [pool_output_size(spatial[i], kernel[i], strides[i], pads[2 * i], pads[2 * i + 1], ceil_mode) for i in range(rank)]
    # Extra room at the end for ceil_mode windows that run past the padding.
    extra = [max(0, (outs[i] - 1) * strides[i] + kernel[i] - (spatial[i] + pads[2 * i] + pads[2 * i + 1])) for i in range(rank)]
    widths = [(0, 0), (0, 0)] + [(pads[2 * i], pads[2 * i + 1] + extra[i]) for i in range(rank)]
    fill = -np.inf if kind == "max" else 0.0
    xf = np.asarray(x, F32)
    if kind == "l2":
        xf = xf * xf
    xp = np.pad(xf, widths, constant_values=fill)
    axes = tuple(range(2, 2 + rank))
    windows = sliding_window_view(xp, tuple(kernel), axis=axes)
    windows = windows[(slice(None), slice(None)) + tuple(slice(0, (o - 1) * s + 1, s) for o, s in zip(outs, strides, strict=True))]
    tap_axes = tuple(range(-rank, 0))
    if kind == "max":
        return windows.max(axis=tap_axes)
    total = windows.sum(axis=tap_axes, dtype=F32)
    if kind == "l2":
        return np.sqrt(total)
    if kind != "avg":
        raise ConversionError(f"{kind} pooling is not defined")
    # Divisor per output position: the window's overlap with the counted region, axis by axis.
    divisor = np.ones((1, 1) + tuple(outs), F32)
    for i in range(rank):
        starts = np.arange(outs[i]) * strides[i]  # in padded coordinates
        low, high = (pads[2 * i], pads[2 * i] + spatial[i]) if exclude_padding else (0, spatial[i] + pads[2 * i] + pads[2 * i + 1])
        count = np.minimum(starts + kernel[i], high) - np.maximum(starts, low)
        shape = [1] * (rank + 2)
        shape[2 + i] = outs[i]
        divisor = divisor * np.maximum(count, 1).astype(F32).reshape(shape)
    return total / divisor


# ------------------------------------------------------------------------------------------------ resampling
SAMPLING_MODES = ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS", "UNALIGN_CORNERS")


def grid(size_in: int, size_out: int, mode: str) -> np.ndarray:
    """Sample positions (in input pixel coordinates, clipped to [0, size_in - 1]) of MIL's sampling modes
    (coremltools ops/defs/iOS15/image_resizing.py, ``resize_bilinear``)."""
    i = np.arange(size_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size_out == 1:
            points = np.full(1, (size_in - 1) / 2 if mode == "ALIGN_CORNERS" else 0.0)
        else:
            points = i * ((size_in - 1) / (size_out - 1))
    elif mode == "DEFAULT":
        points = i * (size_in / size_out)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, size_in - 1) / size_out
        points = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        spacing = size_in / size_out
        points = i * spacing + 0.5 * spacing - 0.5
    else:
        raise ConversionError(f"sampling mode {mode!r} is not one of {list(SAMPLING_MODES)}")
    return np.clip(points, 0, size_in - 1)


def linear_along(x: np.ndarray, axis: int, points: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` at the (clipped) positions ``points``."""
    size = x.shape[axis]
    lo = np.floor(points).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    frac = (points - lo).astype(F32)
    shape = [1] * x.ndim
    shape[axis] = len(points)
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (F32(1) - frac) + np.take(x, hi, axis=axis) * frac


def bilinear(x: np.ndarray, out_h: int, out_w: int, mode: str) -> np.ndarray:
    """Resize the last two axes to (out_h, out_w) by linear interpolation on ``mode``'s grid."""
    x = np.asarray(x, F32)
    x = linear_along(x, x.ndim - 2, grid(x.shape[-2], out_h, mode))
    return linear_along(x, x.ndim - 1, grid(x.shape[-1], out_w, mode))


def nearest(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The last two axes indexed by the source ``rows`` and ``cols``."""
    return np.take(np.take(x, rows, axis=-2), cols, axis=-1)


def nearest_floor(size_in: int, size_out: int) -> np.ndarray:
    """Source index ``floor(i * size_in / size_out)`` (TensorFlow's resize without half-pixel centers)."""
    return (np.arange(size_out) * size_in) // size_out


def nearest_half_pixel(size_in: int, size_out: int) -> np.ndarray:
    """Source index ``floor((i + 0.5) * size_in / size_out)`` (half-pixel centers), at most size_in - 1."""
    return np.minimum(((2 * np.arange(size_out) + 1) * size_in) // (2 * size_out), size_in - 1)


# ------------------------------------------------------------------------------------------------ rearrangements
def depth_to_space(x: np.ndarray, b: int) -> np.ndarray:
    """TensorFlow's DepthToSpace in NCHW: ``out[n, c, h*b + i, w*b + j] = x[n, (i*b + j)*C + c, h, w]``."""
    n, channels, h, w = x.shape
    out_c = channels // (b * b)
    return x.reshape(n, b, b, out_c, h, w).transpose(0, 3, 4, 1, 5, 2).reshape(n, out_c, h * b, w * b)


def space_to_depth(x: np.ndarray, b: int) -> np.ndarray:
    """The inverse of depth_to_space: (N, C, H*b, W*b) -> (N, C*b*b, H, W)."""
    n, channels, h, w = x.shape
    return x.reshape(n, channels, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4).reshape(n, channels * b * b, h // b, w // b)


def pixel_shuffle(x: np.ndarray, f: int) -> np.ndarray:
    """PyTorch's pixel_shuffle: ``out[n, c, h*f + i, w*f + j] = x[n, c*f*f + i*f + j, h, w]``."""
    n, channels, h, w = x.shape
    return x.reshape(n, channels // (f * f), f, f, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(n, channels // (f * f), h * f, w * f)


def pixel_unshuffle(x: np.ndarray, f: int) -> np.ndarray:
    """The inverse of pixel_shuffle: (N, C, H*f, W*f) -> (N, C*f*f, H, W)."""
    n, channels, h, w = x.shape
    return x.reshape(n, channels, h // f, f, w // f, f).transpose(0, 1, 3, 5, 2, 4).reshape(n, channels * f * f, h // f, w // f)
