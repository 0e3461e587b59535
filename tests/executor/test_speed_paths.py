"""The executor's speed paths compute what the plain ones do: stages (passes of different sizes, values regrouped
between them), block-by-block elementwise chains, im2col in blocks."""

from __future__ import annotations

import numpy as np
import pytest
from executor_helpers import ct, image_pixels, mb  # noqa: F401  (ct: skips without coremltools)

from exporter.runtime import executor as executor_pkg
from exporter.runtime.executor import CoreMLExecutor, kernels, stages

# Staged and one-pass runs multiply the same numbers in the same order; only the number of rows of a matrix product
# differs, which a BLAS may block differently: a few float32 roundings at most.
SAME_RTOL = 1e-6
SAME_ATOL = 1e-7
SIDE = 32


@pytest.fixture(scope="module")
def staged_program(tmp_path_factory):
    """32-px image -> conv + silu (64 KB an image) -> stride-2 conv (16 KB) -> stride-2 conv (4 KB) -> residual 1x1
    conv, plus a pooled branch taken at 16 px and added at the end, so that two values cross the last boundary."""
    from executor_helpers import program_file

    rng = np.random.default_rng(5)

    def w(o, i, k):
        return (rng.normal(size=(o, i, k, k)) / np.sqrt(i * k * k)).astype(np.float32)

    def body(x):
        a = mb.silu(x=mb.conv(x=x, weight=w(16, 3, 3), pad_type="same"))
        b = mb.conv(x=a, weight=w(16, 16, 3), strides=[2, 2], pad_type="same")
        pooled = mb.max_pool(x=b, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid")
        c = mb.relu(x=mb.conv(x=b, weight=w(16, 16, 3), strides=[2, 2], pad_type="same"))
        e = mb.add(x=mb.conv(x=c, weight=w(16, 16, 1), bias=rng.normal(size=16).astype(np.float32)), y=c)
        return mb.reduce_mean(x=mb.add(x=e, y=pooled), axes=[2, 3])

    return program_file(tmp_path_factory.mktemp("staged"), body, name="staged", shape=(1, 3, SIDE, SIDE))


@pytest.mark.parametrize("workers", [1, 2])
def test_staged_run_matches_one_pass_per_chunk(staged_program, monkeypatch, workers):
    # a budget that makes the 64 KB activations two images a pass, the 16 KB ones eight and the rest sixteen
    monkeypatch.setattr(executor_pkg, "CHUNK_ACTIVATION_BYTES", 128 * 1024)
    monkeypatch.setattr(executor_pkg, "WORKERS", workers)
    executor = CoreMLExecutor(staged_program)
    assert [images for _, _, images in executor._engine.stages] == [2, 8, 16]
    pixels = image_pixels(13, SIDE, SIDE)  # uneven passes in every stage
    staged = executor.predict(pixels)
    # an observer makes predict run every pass through all the steps (one pass of two images at a time)
    plain = executor.predict(pixels, observe=lambda name, value: None)
    np.testing.assert_allclose(staged, plain, rtol=SAME_RTOL, atol=SAME_ATOL)
    single = np.concatenate([executor.predict(pixels[i : i + 1]) for i in (0, 6, 12)])
    np.testing.assert_allclose(staged[[0, 6, 12]], single, rtol=SAME_RTOL, atol=SAME_ATOL)


def test_join_keeps_the_memory_order():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(k, 5, 4, 6)).astype(np.float32).transpose(0, 3, 1, 2) for k in (2, 3)]  # NHWC memory
    joined = stages._join(parts)
    np.testing.assert_array_equal(joined, np.concatenate(parts))
    assert joined.transpose(0, 2, 3, 1).flags.c_contiguous  # still NHWC in memory, as the kernels expect


def _silu(x, out, scratch):
    np.multiply(x, np.reciprocal(np.exp(-x, out=scratch) + np.float32(1), out=scratch), out=out)


@pytest.mark.parametrize("inplace", [False, True])
def test_blockwise_equals_the_whole_array(monkeypatch, inplace):
    monkeypatch.setattr(kernels, "ELEMENTWISE_BLOCK", 7)  # blocks that straddle rows and pixels
    x = np.random.default_rng(1).normal(size=(2, 5, 3, 4)).astype(np.float32).transpose(0, 3, 1, 2)
    want = np.empty_like(x)
    _silu(x, want, np.empty_like(x))
    got = kernels.blockwise(_silu, x, x if inplace else None)
    np.testing.assert_array_equal(got, want)
    assert got.transpose(0, 2, 3, 1).flags.c_contiguous
    if inplace:
        assert got is x


def test_im2col_in_small_blocks_matches_float64(monkeypatch):
    monkeypatch.setattr(kernels, "IM2COL_BYTES", 1)
    monkeypatch.setattr(kernels, "IM2COL_MIN_ROWS", 5)  # one output row per product
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 9, 7)).astype(np.float32)
    weight = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    cache: dict = {}
    got = kernels.conv2d(x, weight, None, (1, 1), (1, 1), (1, 1, 1, 1), 1, cache)
    assert "dense" in cache  # widening: im2col, not the shifted taps
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = sum(
        np.einsum("nchw,oc->nohw", xp[:, :, i : i + 9, j : j + 7], weight[:, :, i, j].astype(np.float64))
        for i in range(3)
        for j in range(3)
    )
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


ACTIVATIONS = {
    None: lambda v: v,
    "relu": lambda v: np.maximum(v, np.float32(0)),
    "relu6": lambda v: np.clip(v, np.float32(0), np.float32(6)),
}


def _depthwise_in_tap_order(x, weight, bias, stride, dilation, pads, activation):
    """float32 numpy: each product rounded, added to the running sum tap by tap (row by row), the bias last: the
    order compiled.depthwise promises (see its docstring)."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[2:]
    (sh, sw), (dh, dw), (top, bottom, left, right) = stride, dilation, pads
    xp = np.pad(ACTIVATIONS[activation](x), ((0, 0), (0, 0), (top, bottom), (left, right)))
    ho = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1
    wo = (w + left + right - (kw - 1) * dw - 1) // sw + 1
    acc = np.zeros((n, c, ho, wo), np.float32)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh : i * dh + (ho - 1) * sh + 1 : sh, j * dw : j * dw + (wo - 1) * sw + 1 : sw]
            acc = acc + tap * weight[:, 0, i, j][None, :, None, None]
    return acc + bias[None, :, None, None]


@pytest.mark.parametrize(
    "kernel, stride, dilation, pads, activation",
    [
        ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1), None),
        ((3, 3), (2, 2), (1, 1), (0, 1, 0, 1), "relu6"),  # TensorFlow's "same" at stride 2: the odd pixel after
        ((3, 3), (1, 2), (2, 1), (2, 0, 1, 3), "relu"),  # dilated, asymmetric padding
        ((5, 5), (2, 2), (1, 1), (2, 2, 2, 2), "relu6"),  # any other kernel: the general loop
        ((1, 3), (1, 1), (1, 1), (0, 0, 1, 1), None),
    ],
)
def test_compiled_depthwise_sums_taps_in_order(kernel, stride, dilation, pads, activation):
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(2, 5, 9, 11)) * 4).astype(np.float32)  # relu6 clips some values at both ends
    weight = rng.normal(size=(5, 1, *kernel)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    got = kernels.conv2d(x, weight, bias, stride, dilation, pads, 5, input_activation=activation)
    want = _depthwise_in_tap_order(x, weight, bias, stride, dilation, pads, activation)
    np.testing.assert_array_equal(got, want)  # the same float32 operations in the same order: the same bits


def test_compiled_depthwise_keeps_nan():
    # a NaN input stays NaN through the fused relu6, as numpy's clip keeps it
    x = np.ones((1, 2, 4, 4), np.float32)
    x[0, 1, 2, 2] = np.nan
    weight = np.ones((2, 1, 3, 3), np.float32)
    got = kernels.conv2d(x, weight, None, (1, 1), (1, 1), (1, 1, 1, 1), 2, input_activation="relu6")
    assert np.isnan(got[0, 1, 1:4, 1:4]).all() and not np.isnan(got[0, 0]).any()


def test_exact_gelu_in_blocks_equals_the_whole_array_expression(monkeypatch):
    from scipy.special import erf

    from exporter.runtime.executor import mil_elementwise

    monkeypatch.setattr(kernels, "ELEMENTWISE_BLOCK", 7)
    x = (np.random.default_rng(2).normal(size=(2, 6, 5, 3)) * 3).astype(np.float32).transpose(0, 3, 1, 2)
    x[0, 0, 0, :2] = [np.inf, -np.inf]
    f32 = np.float32
    with np.errstate(invalid="ignore"):  # -inf * 0 in the expression itself
        want = f32(0.5) * x * (f32(1) + erf(x / f32(np.sqrt(2.0))).astype(f32))
        got = kernels.blockwise(lambda part, out, scratch: mil_elementwise._gelu_exact_block(erf, part, out, scratch), x)
    np.testing.assert_array_equal(got, want)
