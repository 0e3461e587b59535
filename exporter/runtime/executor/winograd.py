"""3x3 unit-stride convolution by Winograd's minimal filtering F(2x2, 3x3), compiled with numba where numpy is slow.

Each 2x2 block of output pixels (a tile) is computed from the 4x4 block of input pixels under it:
``Y = A^T [(G g G^T) * (B^T d B)] A``. ``G g G^T`` (the kernel, 16 values per input and output channel) is computed
once, in float64, and rounded to float32; ``B^T d B`` (the input tile, 16 values per channel) and ``A^T m A`` (the
output tile) are sums and differences only. The products between them are 16 matrix products of (tiles, input
channels) by (input channels, output channels), one per tile position: 16 multiply-adds per 4 output pixels where
the direct convolution does 36, so 4/9 of the multiply-adds, in the same kind of long BLAS product.

Accuracy. The transforms of F(2x2, 3x3) have coefficients 0, +-1 and +-1/2, the smallest of any Winograd
convolution. Against a float64 direct convolution its float32 error is the direct (im2col, shifted-taps) path's within
a small factor (tests/executor/test_winograd.py: 0.7-2.7 float32 epsilons of the sum of |x * w|, the direct path
0.5-2.0). On whole networks (random weights, 24 photos of sample_models/heldout, the pooled features before the
classifier against the same Keras model in float64, max error relative to each image's largest feature): VGG16's
base, 13 convolutions all Winograd, 3.2e-7 (the direct path 3.9e-7, Keras float32 4.8e-7); DenseNet121 1.1e-6 either
way (Keras float32 8.9e-7); ResNet50 1.25e-6 (the direct path 1.06e-6, Keras float32 1.0e-6). The larger tiles
(F(4x4, 3x3), 1/4 of the multiply-adds) have transform coefficients up to 8 and down to 1/6, whose roundings grow
the error: not used.

Non-finite values. A Winograd tile mixes all 16 input values of its 4x4 block, so an inf or NaN in the input or the
kernel does not propagate as it does in the direct sum. Every output tile is checked as it is written; when any value
is not finite the caller recomputes the convolution directly (``conv3x3`` returns None), so an inf or NaN gives what
the direct product gives.

The input is read in place, its zero padding skipped, and a relu (relu6) the plan fused into the convolution is applied
to each value as it is read, as in the compiled depthwise convolution. ``nogil``: the executor's worker threads run
side by side.
"""

from __future__ import annotations

import numba
import numpy as np

from .compiled import clamp

_jit = numba.njit(nogil=True, cache=True, boundscheck=False, fastmath=False)

# G of F(2x2, 3x3): the kernel transform, applied in float64.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def kernel_transform(weight: np.ndarray) -> np.ndarray:
    """(O, I, 3, 3) kernel -> (16, I, O) float32: ``G g G^T`` per input and output channel, position-major
    (position 4 * row + column of the 4x4 tile), computed in float64 and rounded once."""
    g = np.asarray(weight, np.float64)
    u = np.einsum("ap,oipq,bq->abio", _G, g, _G)
    o, i = weight.shape[:2]
    return np.ascontiguousarray(u.reshape(16, i, o), dtype=np.float32)


@numba.njit(inline="always")
def _rows4(flat, step, at, width):  # pragma: no cover  (compiled)
    # the 1-D views of ``width`` floats at ``at`` in four consecutive of the 16 matrices (``step`` floats apart) of the
    # flat transform buffer; inlined, so each stays a view indexed by the channel loop alone
    return (
        flat[at : at + width],
        flat[step + at : step + at + width],
        flat[2 * step + at : 2 * step + at + width],
        flat[3 * step + at : 3 * step + at + width],
    )


@numba.njit(inline="always")
def _rows16(flat, step, at, width):  # pragma: no cover  (compiled)
    # the views of all 16 matrices at ``at``, row by row of the 4x4 tile (see _rows4)
    return (
        _rows4(flat, step, at, width)
        + _rows4(flat, step, at + 4 * step, width)
        + _rows4(flat, step, at + 8 * step, width)
        + _rows4(flat, step, at + 12 * step, width)
    )


@_jit
def _input_tile(x, b, ih0, iw0, v, step, k, act, alo, ahi):  # pragma: no cover  (compiled)
    # V = B^T d B of the 4x4 block of the NHWC x (C-contiguous, so the channel loop is vectorised) at (b, ih0, iw0)
    # into row k of the 16 (T, C) matrices in the flat v, ``step`` floats apart; B^T rows: (1, 0, -1, 0),
    # (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)
    # (each operand a 1-D view indexed by the loop variable alone: numba then drops its negative-index check, which
    # otherwise keeps LLVM from vectorising the loop)
    c = x.shape[3]
    r0, r1, r2, r3 = x[b, ih0], x[b, ih0 + 1], x[b, ih0 + 2], x[b, ih0 + 3]
    p00, p01, p02, p03 = r0[iw0], r0[iw0 + 1], r0[iw0 + 2], r0[iw0 + 3]
    p10, p11, p12, p13 = r1[iw0], r1[iw0 + 1], r1[iw0 + 2], r1[iw0 + 3]
    p20, p21, p22, p23 = r2[iw0], r2[iw0 + 1], r2[iw0 + 2], r2[iw0 + 3]
    p30, p31, p32, p33 = r3[iw0], r3[iw0 + 1], r3[iw0 + 2], r3[iw0 + 3]
    v0, v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14, v15 = _rows16(v, step, k * c, c)
    for ch in range(c):
        d00, d01, d02, d03 = p00[ch], p01[ch], p02[ch], p03[ch]
        d10, d11, d12, d13 = p10[ch], p11[ch], p12[ch], p13[ch]
        d20, d21, d22, d23 = p20[ch], p21[ch], p22[ch], p23[ch]
        d30, d31, d32, d33 = p30[ch], p31[ch], p32[ch], p33[ch]
        if act:
            d00, d01, d02, d03 = clamp(d00, alo, ahi), clamp(d01, alo, ahi), clamp(d02, alo, ahi), clamp(d03, alo, ahi)
            d10, d11, d12, d13 = clamp(d10, alo, ahi), clamp(d11, alo, ahi), clamp(d12, alo, ahi), clamp(d13, alo, ahi)
            d20, d21, d22, d23 = clamp(d20, alo, ahi), clamp(d21, alo, ahi), clamp(d22, alo, ahi), clamp(d23, alo, ahi)
            d30, d31, d32, d33 = clamp(d30, alo, ahi), clamp(d31, alo, ahi), clamp(d32, alo, ahi), clamp(d33, alo, ahi)
        # rows: t = B^T d
        t00, t01, t02, t03 = d00 - d20, d01 - d21, d02 - d22, d03 - d23
        t10, t11, t12, t13 = d10 + d20, d11 + d21, d12 + d22, d13 + d23
        t20, t21, t22, t23 = d20 - d10, d21 - d11, d22 - d12, d23 - d13
        t30, t31, t32, t33 = d10 - d30, d11 - d31, d12 - d32, d13 - d33
        # columns: V = t B
        v0[ch] = t00 - t02
        v1[ch] = t01 + t02
        v2[ch] = t02 - t01
        v3[ch] = t01 - t03
        v4[ch] = t10 - t12
        v5[ch] = t11 + t12
        v6[ch] = t12 - t11
        v7[ch] = t11 - t13
        v8[ch] = t20 - t22
        v9[ch] = t21 + t22
        v10[ch] = t22 - t21
        v11[ch] = t21 - t23
        v12[ch] = t30 - t32
        v13[ch] = t31 + t32
        v14[ch] = t32 - t31
        v15[ch] = t31 - t33


@_jit
def input_tiles(x, v, step, t0, t1, th, tw, top, left, act, alo, ahi):  # pragma: no cover  (compiled)
    """V of tiles t0..t1 (numbered image by image, row by row) of the NHWC ``x`` padded by (top, left) into the flat v
    (see _input_tile)."""
    n, h, w, c = x.shape
    block = np.zeros((1, 4, 4, c), np.float32)
    for t in range(t0, t1):
        b, rest = t // (th * tw), t % (th * tw)
        ih0, iw0 = 2 * (rest // tw) - top, 2 * (rest % tw) - left
        if ih0 >= 0 and ih0 + 4 <= h and iw0 >= 0 and iw0 + 4 <= w:
            _input_tile(x, b, ih0, iw0, v, step, t - t0, act, alo, ahi)
            continue
        # a tile over the padding (or past the input's end, which only dropped outputs read): zeros there
        for i in range(4):
            for j in range(4):
                ih, iw = ih0 + i, iw0 + j
                inside = ih >= 0 and ih < h and iw >= 0 and iw < w
                for ch in range(c):
                    value = x[b, ih, iw, ch] if inside else np.float32(0.0)
                    block[0, i, j, ch] = clamp(value, alo, ahi) if act and inside else value
        _input_tile(block, 0, 0, 0, v, step, t - t0, False, alo, ahi)


@_jit
def _output_tile(m, step, k, bias, y0, y1, y2, y3, check):  # pragma: no cover  (compiled)
    # Y = A^T M A + bias of row k of the 16 (T, O) matrices in the flat m, ``step`` floats apart, into y0..y3 (O,):
    # the tile's pixels (0, 0), (0, 1), (1, 0), (1, 1); A^T rows (1, 1, 1, 0), (0, 1, -1, -1). check[ch] += x - x
    # for every value x written: 0 while they are finite, NaN after one is not (per channel: the loop stays
    # vectorised)
    o = y0.shape[0]
    q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11, q12, q13, q14, q15 = _rows16(m, step, k * o, o)
    for ch in range(o):
        m00, m01, m02, m03 = q0[ch], q1[ch], q2[ch], q3[ch]
        m10, m11, m12, m13 = q4[ch], q5[ch], q6[ch], q7[ch]
        m20, m21, m22, m23 = q8[ch], q9[ch], q10[ch], q11[ch]
        m30, m31, m32, m33 = q12[ch], q13[ch], q14[ch], q15[ch]
        s00, s01, s02, s03 = m00 + m10 + m20, m01 + m11 + m21, m02 + m12 + m22, m03 + m13 + m23
        s10, s11, s12, s13 = m10 - m20 - m30, m11 - m21 - m31, m12 - m22 - m32, m13 - m23 - m33
        a = s00 + s01 + s02 + bias[ch]
        b = s01 - s02 - s03 + bias[ch]
        c = s10 + s11 + s12 + bias[ch]
        d = s11 - s12 - s13 + bias[ch]
        y0[ch], y1[ch], y2[ch], y3[ch] = a, b, c, d
        check[ch] += ((a - a) + (b - b)) + ((c - c) + (d - d))


@_jit
def output_tiles(m, step, out, bias, t0, t1, th, tw, check):  # pragma: no cover  (compiled)
    """Y = A^T M A + bias of tiles t0..t1 from the flat m (see _output_tile) into the NHWC ``out``; ``check`` (O,) as in
    _output_tile."""
    n, ho, wo, o = out.shape
    edge = np.empty((4, o), np.float32)
    for t in range(t0, t1):
        b, rest = t // (th * tw), t % (th * tw)
        oh, ow = 2 * (rest // tw), 2 * (rest % tw)
        if oh + 1 < ho and ow + 1 < wo:
            row0, row1 = out[b, oh], out[b, oh + 1]
            _output_tile(m, step, t - t0, bias, row0[ow], row0[ow + 1], row1[ow], row1[ow + 1], check)
            continue
        # a tile past the output's last row or column: its pixels there are dropped
        _output_tile(m, step, t - t0, bias, edge[0], edge[1], edge[2], edge[3], check)
        for i in range(2):
            for j in range(2):
                if oh + i < ho and ow + j < wo:
                    for ch in range(o):
                        out[b, oh + i, ow + j, ch] = edge[2 * i + j, ch]


# Floats between the 16 positions' matrices of a block, beyond their size: with matrices whose bytes are a multiple of
# 4 KB (a power of two tiles of a power of two channels) the 16 rows a tile's transform writes (reads) would fall in one
# set of the L1 cache, which holds 8-12 of them; one 64-byte line more per position spreads them over 16 sets.
# Measured on the input transform, single-threaded: 64 channels at 224 px 0.08 -> 0.024 s, 512 at 28 px 0.040 -> 0.020.
STAGGER = 16


def _staggered(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(flat, view, step): 16 (rows, cols) float32 matrices ``step`` floats apart, STAGGER more than their size, as a
    flat array (what the compiled transforms index: a contiguous array, whose loops numba vectorises) and as a
    (16, rows, cols) view of it (what the matrix products take)."""
    step = rows * cols + STAGGER
    flat = np.empty(16 * step, np.float32)
    return flat, np.lib.stride_tricks.as_strided(flat, (16, rows, cols), (4 * step, 4 * cols, 4)), step


# (low, high) of the activations applied to the input as it is read (plan.fuse_relus)
BOUNDS = {"relu": (0.0, np.inf), "relu6": (0.0, 6.0)}


def conv3x3(
    xh: np.ndarray, u: np.ndarray, bias: np.ndarray, pads: tuple[int, int, int, int], ho: int, wo: int, block: int, activation=None
) -> np.ndarray | None:
    """The 3x3 unit-stride convolution of the NHWC float32 ``xh`` zero-padded by ``pads`` (top, bottom, left, right;
    read in place) with the transformed kernel ``u`` (``kernel_transform``), plus ``bias`` (O,): a new (N, ho, wo, O)
    float32 array, or None when a value is not finite (see the module). ``block``: tiles per matrix product.
    ``activation`` (a key of BOUNDS) is applied to each input value as it is read."""
    n, c = xh.shape[0], xh.shape[3]
    o = u.shape[2]
    th, tw = -(-ho // 2), -(-wo // 2)
    tiles = n * th * tw
    block = max(1, min(block, tiles))
    x = np.ascontiguousarray(xh, np.float32)
    out = np.empty((n, ho, wo, o), np.float32)
    (vf, v, vstep), (mf, m, mstep) = _staggered(block, c), _staggered(block, o)
    bounds = BOUNDS.get(activation or "", (0.0, 0.0))
    act, lo, hi = activation is not None, np.float32(bounds[0]), np.float32(bounds[1])
    check = np.zeros(o, np.float32)
    for t0 in range(0, tiles, block):
        t1 = min(t0 + block, tiles)
        count = t1 - t0
        input_tiles(x, vf, vstep, t0, t1, th, tw, int(pads[0]), int(pads[2]), act, lo, hi)
        np.matmul(v[:, :count], u, out=m[:, :count])
        output_tiles(mf, mstep, out, bias, t0, t1, th, tw, check)
    return out if np.isfinite(check.sum()) else None
