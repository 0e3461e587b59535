"""The Winograd F(2x2, 3x3) convolution (executor/winograd.py, chosen by kernels.conv2d) against a float64 direct
convolution computed here with numpy, and the choice of path on both sides of each threshold."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.runtime.executor import kernels

EPS32 = float(np.finfo(np.float32).eps)
# Error allowed against the float64 direct sum, in float32 epsilons times the sum of |x * w| over the window (the
# scale every rounding of a float32 dot product is relative to). A float32 dot product of K terms is within about
# sqrt(K) eps of it in practice; F(2x2, 3x3) adds the roundings of its transforms, whose coefficients are at most 1 in
# size and which sum at most 4 (input) and 9 (output) values: measured on these cases (and 256 -> 256 at 14 px,
# 512 -> 512 at 7 px) 0.7-2.7 eps, the direct im2col / shifted-taps path 0.5-2.0 eps. A wrong tap, sign or padding
# gives errors of order 1 / eps.
WINOGRAD_EPS = 8.0

ACTIVATIONS = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0.0), "relu6": lambda v: np.clip(v, 0.0, 6.0)}


def direct64(x, weight, bias, pads, activation=None, magnitude=False):
    """float64 3x3 unit-stride convolution of NCHW x zero-padded by (top, bottom, left, right); with ``magnitude``
    the sum of |x * w| instead (the error scale)."""
    x = ACTIVATIONS[activation](np.asarray(x, np.float64))
    w = np.asarray(weight, np.float64)
    if magnitude:
        x, w = np.abs(x), np.abs(w)
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho, wo = xp.shape[2] - 2, xp.shape[3] - 2
    out = sum(np.einsum("nchw,oc->nohw", xp[:, :, i : i + ho, j : j + wo], w[:, :, i, j]) for i in range(3) for j in range(3))
    if bias is not None and not magnitude:
        out = out + np.asarray(bias, np.float64)[None, :, None, None]
    return out


def _case(n, c, o, h, w, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, c, h, w)) * scale).astype(np.float32)
    weight = (rng.normal(size=(o, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    bias = rng.normal(size=o).astype(np.float32)
    return x, weight, bias


@pytest.mark.parametrize(
    "n, c, o, h, w, pads, activation, with_bias",
    [
        (2, 32, 32, 9, 11, (1, 1, 1, 1), None, True),  # "same", odd sizes: the last tile row and column half outside
        (3, 40, 33, 8, 8, (0, 0, 0, 0), "relu", True),  # "valid": output 6 x 6, no padding read
        (1, 32, 48, 7, 6, (1, 0, 2, 1), "relu6", False),  # asymmetric custom padding, no bias
        (2, 64, 32, 5, 5, (0, 1, 0, 1), None, True),  # padding after only (TensorFlow's odd "same" pixel)
        (2, 32, 32, 1, 1, (1, 1, 1, 1), None, True),  # one pixel: a single tile, all padding but its centre
        (1, 32, 32, 4, 3, (2, 2, 2, 2), "relu", True),  # padding wider than the kernel's reach: all-zero tiles
    ],
)
def test_winograd_matches_float64_direct(n, c, o, h, w, pads, activation, with_bias):
    x, weight, bias = _case(n, c, o, h, w)
    bias = bias if with_bias else None
    cache: dict = {}
    got = kernels.conv2d(x, weight, bias, (1, 1), (1, 1), pads, 1, cache, input_activation=activation)
    assert cache.get("winograd") is not None  # the Winograd path ran
    want = direct64(x, weight, bias, pads, activation)
    assert got.shape == want.shape and got.dtype == np.float32
    bound = WINOGRAD_EPS * EPS32 * direct64(x, weight, bias, pads, activation, magnitude=True) + 1e-30
    assert (np.abs(got - want) <= bound).all(), float((np.abs(got - want) / bound).max())


@pytest.mark.parametrize("blocks", [((1 << 30, 1),), ((1 << 30, 7),)])
def test_winograd_blocks_across_images(monkeypatch, blocks):
    # blocks of 1 and 7 tiles: products that start and end inside a tile row and span two images
    x, weight, bias = _case(3, 32, 32, 7, 9, seed=1)
    want = kernels.conv2d(x, weight, bias, (1, 1), (1, 1), (1, 1, 1, 1), 1, {})
    monkeypatch.setattr(kernels, "WINOGRAD_BLOCKS", blocks)
    got = kernels.conv2d(x, weight, bias, (1, 1), (1, 1), (1, 1, 1, 1), 1, {})
    bound = WINOGRAD_EPS * EPS32 * direct64(x, weight, bias, (1, 1, 1, 1), magnitude=True)
    assert (np.abs(got - want) <= bound).all()


@pytest.mark.parametrize(
    "c, o, stride, dilation, groups, kernel, winograd",
    [
        (32, 32, (1, 1), (1, 1), 1, 3, True),
        (31, 32, (1, 1), (1, 1), 1, 3, False),  # input channels one below WINOGRAD_MIN_CHANNELS
        (32, 31, (1, 1), (1, 1), 1, 3, False),  # output channels one below
        (32, 32, (2, 2), (1, 1), 1, 3, False),  # strided
        (32, 32, (1, 2), (1, 1), 1, 3, False),
        (32, 32, (1, 1), (2, 2), 1, 3, False),  # dilated
        (64, 64, (1, 1), (1, 1), 2, 3, False),  # grouped
        (32, 32, (1, 1), (1, 1), 1, 5, False),  # another kernel size
    ],
)
def test_winograd_chosen_only_where_it_applies(c, o, stride, dilation, groups, kernel, winograd):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, c, 9, 8)).astype(np.float32)
    weight = (rng.normal(size=(o, c // groups, kernel, kernel)) / np.sqrt(c * kernel * kernel)).astype(np.float32)
    pads = (kernel // 2,) * 4
    cache: dict = {}
    got = kernels.conv2d(x, weight, None, stride, dilation, pads, groups, cache)
    assert ("winograd" in cache) == winograd
    # whichever path: the convolution's definition, from float64 (grouped: each group on its own channels)
    og, cg = o // groups, c // groups
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    ho, wo = got.shape[2:]
    want = np.zeros(got.shape)
    for g in range(groups):
        for i in range(kernel):
            for j in range(kernel):
                r0, c0 = i * dilation[0], j * dilation[1]
                rows = slice(r0, r0 + (ho - 1) * stride[0] + 1, stride[0])
                tap = xp[:, g * cg : (g + 1) * cg, rows, c0 : c0 + (wo - 1) * stride[1] + 1 : stride[1]]
                want[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", tap, weight[g * og : (g + 1) * og, :, i, j].astype(np.float64))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _direct(monkeypatch, *args, **kwargs):
    """kernels.conv2d with the Winograd path switched off: the direct (im2col / shifted taps) result."""
    with monkeypatch.context() as m:
        m.setattr(kernels, "WINOGRAD_MIN_CHANNELS", 1 << 30)
        return kernels.conv2d(*args, **kwargs)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 and inf - inf, as intended
def test_non_finite_input_gives_what_the_direct_sum_gives(monkeypatch, value):
    # a Winograd tile mixes its 16 inputs (inf - inf = NaN where the direct sum keeps inf): the result must not show it
    x, weight, bias = _case(2, 32, 32, 8, 8, seed=3)
    weight = np.abs(weight)  # positive weights: an inf input gives inf (not NaN) in the direct sum
    x[1, 4, 3, 5] = value
    cache: dict = {}
    got = kernels.conv2d(x, weight, bias, (1, 1), (1, 1), (1, 1, 1, 1), 1, cache)
    assert cache.get("winograd") is not None
    want = direct64(x, weight, bias, (1, 1, 1, 1))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
    np.testing.assert_array_equal(got, _direct(monkeypatch, x, weight, bias, (1, 1), (1, 1), (1, 1, 1, 1), 1, {}))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_non_finite_kernel_gives_what_the_direct_sum_gives(monkeypatch):
    x, weight, bias = _case(1, 32, 32, 6, 7, seed=4)
    weight[3, 7, 0, 0] = np.inf  # its top-left tap also meets the zero padding: 0 * inf = NaN on the top row
    cache: dict = {}
    got = kernels.conv2d(x, weight, bias, (1, 1), (1, 1), (1, 1, 1, 1), 1, cache)
    assert cache["winograd"] is None  # a non-finite kernel is never transformed
    want = direct64(x, weight, bias, (1, 1, 1, 1))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0, 3, 0]).all()
    np.testing.assert_array_equal(got, _direct(monkeypatch, x, weight, bias, (1, 1), (1, 1), (1, 1, 1, 1), 1, {}))


@pytest.mark.parametrize("stride", [(1, 1), (2, 2)])
def test_depthwise_inf_weight_meets_the_padding_as_zero_times_inf(stride):
    # the compiled depthwise kernel reads x in place and skips the taps on the padding; with an inf or NaN weight those
    # taps must still add 0 * w = NaN, as the zero-padded product of every other path does
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 7, 6)).astype(np.float32)
    weight = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    weight[1, 0, 0, 2] = np.inf  # channel 1, top-right tap: on the padding for the top row and the right column
    weight[2, 0, 1, 1] = np.nan  # channel 2, centre tap: never on the padding, NaN everywhere
    pads = (1, 1, 1, 1)
    got = kernels.conv2d(x, weight, None, stride, (1, 1), pads, 4)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ho, wo = got.shape[2:]
    with np.errstate(invalid="ignore"):
        want = sum(
            xp[:, :, i : i + (ho - 1) * stride[0] + 1 : stride[0], j : j + (wo - 1) * stride[1] + 1 : stride[1]]
            * weight[:, 0, i, j].astype(np.float64)[None, :, None, None]
            for i in range(3)
            for j in range(3)
        )
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    assert np.isnan(got[:, 1, 0]).all() and np.isnan(got[:, 2]).all() and np.isfinite(got[:, [0, 3]]).all()
