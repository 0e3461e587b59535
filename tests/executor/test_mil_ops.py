"""ML Program ops of the executor against their MIL definitions (coremltools ops/defs/iOS15..iOS18): each case builds a
small program with the MIL builder around the op, runs the saved file through the executor and compares with an
independent computation (numpy formulas, explicit loops, or TensorFlow doing the same operation). Each case also
checks that the op it is named after is really in the file (coremltools' graph passes are skipped so that no op is
folded away)."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest
from executor_helpers import (
    OP_ATOL,
    OP_RTOL,
    SIDE,
    CoreMLExecutor,
    as_input,
    check_op_case,
    ct,
    image_pixels,
    mb,
    program_file,
    run_program,
    tf,
)

from exporter.errors import ConfigError, ConversionError, UnsupportedOperationError

# The ops the tests of this module run (each case named "op" or "op:variant"); test_registry checks that every
# registered op is in this set or another module's.
COVERS: set[str] = set()


# ---------------------------------------------------------------------------------------------------------- convolution (2-D)
CONV_CASES = {  # name -> (out channels, in channels per group, kernel, strides, dilations, pad_type, pad, groups)
    "valid": (4, 3, (3, 3), (1, 1), (1, 1), "valid", None, 1),
    "same_odd_stride2": (5, 3, (3, 3), (2, 2), (1, 1), "same", None, 1),
    "same_lower": (4, 3, (2, 2), (2, 2), (1, 1), "same_lower", None, 1),
    "custom_asymmetric": (4, 3, (3, 2), (2, 1), (1, 1), "custom", [1, 0, 2, 1], 1),
    "dilated": (4, 3, (3, 3), (1, 1), (2, 3), "same", None, 1),
    "dilated_strided": (2, 3, (3, 3), (2, 1), (1, 2), "custom", [1, 1, 0, 2], 1),
    "pointwise_strided": (6, 3, (1, 1), (2, 2), (1, 1), "valid", None, 1),
    "depthwise": (3, 1, (3, 3), (1, 1), (1, 1), "same", None, 3),
    "depthwise_stride2": (3, 1, (3, 3), (2, 2), (1, 1), "valid", None, 3),
    "depthwise_multiplier": (6, 1, (3, 3), (1, 2), (1, 1), "same", None, 3),
    "depthwise_dilated": (3, 1, (3, 3), (1, 1), (2, 2), "custom", [2, 2, 1, 3], 3),
}


def _conv_reference(x, weight, bias, strides, dilations, pads, groups):
    t = tf()
    xp = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (pads[0], pads[1]), (pads[2], pads[3]), (0, 0)))
    cg, og = weight.shape[1], weight.shape[0] // groups
    parts = [
        t.nn.conv2d(
            xp[..., g * cg : (g + 1) * cg],
            weight[g * og : (g + 1) * og].transpose(2, 3, 1, 0),
            strides=[1, *strides, 1],
            padding="VALID",
            dilations=[1, *dilations, 1],
        ).numpy()
        for g in range(groups)
    ]
    return np.concatenate(parts, axis=-1).transpose(0, 3, 1, 2) + bias.reshape(1, -1, 1, 1)


def _same(size, kernel, stride, dilation, lower):
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return (total - total // 2, total // 2) if lower else (total // 2, total - total // 2)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(tmp_path, case):
    out, cg, kernel, strides, dilations, pad_type, pad, groups = CONV_CASES[case]
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(out, cg) + kernel).astype(np.float32)
    bias = rng.normal(size=out).astype(np.float32)
    kwargs = dict(pad_type=pad_type, strides=list(strides), dilations=list(dilations), groups=groups)
    if pad is not None:
        kwargs["pad"] = pad
    target = ct.target.iOS16 if pad_type == "same_lower" else None  # same_lower is iOS16+
    got, x = run_program(tmp_path, lambda v: mb.conv(x=v, weight=weight, bias=bias, **kwargs), target=target)
    if pad_type == "valid":
        pads = (0, 0, 0, 0)
    elif pad_type == "custom":
        pads = tuple(pad)
    else:
        lower = pad_type == "same_lower"
        pads = _same(SIDE, kernel[0], strides[0], dilations[0], lower) + _same(SIDE, kernel[1], strides[1], dilations[1], lower)
    want = _conv_reference(x, weight, bias, strides, dilations, pads, groups)
    np.testing.assert_allclose(got, want.reshape(len(x), -1), atol=OP_ATOL)


# ---------------------------------------------------------------------------------------------------------- pooling
POOL_CASES = {  # name -> (kind, kernel, strides, pad_type, pad, exclude padding)
    "max_valid_overlap": ("max", (3, 3), (2, 2), "valid", None, False),
    "max_same": ("max", (3, 3), (2, 2), "same", None, False),
    "max_custom": ("max", (2, 3), (1, 2), "custom", [1, 0, 1, 1], False),
    "avg_valid_remainder": ("avg", (2, 2), (2, 2), "valid", None, False),
    "avg_same_exclude": ("avg", (3, 3), (2, 2), "same", None, True),
    "avg_same_include": ("avg", (3, 3), (2, 2), "same", None, False),
    "avg_custom_exclude": ("avg", (3, 2), (1, 1), "custom", [1, 2, 0, 1], True),
    # unit stride along the width: the separable window sum (kernels._window_reduce), not the tap-by-tap one
    "max_same_unit_stride": ("max", (3, 3), (1, 1), "same", None, False),
    "avg_same_exclude_unit_stride": ("avg", (3, 3), (1, 1), "same", None, True),
    "avg_custom_include_row_stride": ("avg", (2, 3), (2, 1), "custom", [0, 1, 1, 1], False),
}


def _pool_reference(x, kind, kernel, strides, pads, exclude):
    """Plain loops over output positions, padding tracked per window."""
    n, c, h, w = x.shape
    ho = (h + pads[0] + pads[1] - kernel[0]) // strides[0] + 1
    wo = (w + pads[2] + pads[3] - kernel[1]) // strides[1] + 1
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            r0, c0 = i * strides[0] - pads[0], j * strides[1] - pads[2]
            rows = [r for r in range(r0, r0 + kernel[0]) if 0 <= r < h]
            cols = [q for q in range(c0, c0 + kernel[1]) if 0 <= q < w]
            window = x[:, :, rows][:, :, :, cols]
            if kind == "max":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                count = len(rows) * len(cols) if exclude else kernel[0] * kernel[1]
                out[:, :, i, j] = window.sum(axis=(2, 3)) / count
    return out


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pool(tmp_path, case):
    kind, kernel, strides, pad_type, pad, exclude = POOL_CASES[case]
    kwargs = dict(kernel_sizes=list(kernel), strides=list(strides), pad_type=pad_type)
    if pad is not None:
        kwargs["pad"] = pad
    if kind == "avg":
        kwargs["exclude_padding_from_average"] = exclude
    got, x = run_program(tmp_path, lambda v: (mb.max_pool if kind == "max" else mb.avg_pool)(x=v, **kwargs))
    pads = (
        tuple(pad)
        if pad_type == "custom"
        else (0, 0, 0, 0)
        if pad_type == "valid"
        else (_same(SIDE, kernel[0], strides[0], 1, False) + _same(SIDE, kernel[1], strides[1], 1, False))
    )
    want = _pool_reference(x, kind, kernel, strides, pads, exclude)
    np.testing.assert_allclose(got, want.reshape(len(x), -1), atol=OP_ATOL)


# ---------------------------------------------------------------------------------------------------------- references
def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _nhwc(x):
    return x.transpose(0, 2, 3, 1)


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def _erf(x):
    import math

    return np.vectorize(math.erf)(x)


def _bilinear_loops(x, out_h, out_w, grid):
    """Bilinear interpolation by explicit loops over output pixels, at the positions ``grid(size_in, size_out)``."""
    rows, cols = grid(x.shape[-2], out_h), grid(x.shape[-1], out_w)
    out = np.zeros(x.shape[:-2] + (out_h, out_w))
    for i, r in enumerate(rows):
        r = min(max(r, 0.0), x.shape[-2] - 1)
        r0 = int(np.floor(r))
        r1, fr = min(r0 + 1, x.shape[-2] - 1), r - r0
        for j, c in enumerate(cols):
            c = min(max(c, 0.0), x.shape[-1] - 1)
            c0 = int(np.floor(c))
            c1, fc = min(c0 + 1, x.shape[-1] - 1), c - c0
            out[..., i, j] = (1 - fr) * ((1 - fc) * x[..., r0, c0] + fc * x[..., r0, c1]) + fr * (
                (1 - fc) * x[..., r1, c0] + fc * x[..., r1, c1]
            )
    return out


def _offset_corners(size_in, size_out):  # resize_bilinear OFFSET_CORNERS, from its definition
    delta = max(1, size_in - 1) / size_out
    return [0.5 * delta + i * delta for i in range(size_out)]


def _align_corners(size_in, size_out):  # ALIGN_CORNERS: the middle when one point is asked for
    return [(size_in - 1) / 2] if size_out == 1 else [i * (size_in - 1) / (size_out - 1) for i in range(size_out)]


def _tf_resize(x, size, method="bilinear", align_corners=False, half_pixel_centers=True):
    """TensorFlow's raw resize ops on the NCHW tensor."""
    t = tf()
    op = t.raw_ops.ResizeBilinear if method == "bilinear" else t.raw_ops.ResizeNearestNeighbor
    return _nchw(
        op(images=_nhwc(x).astype(np.float32), size=size, align_corners=align_corners, half_pixel_centers=half_pixel_centers).numpy()
    )


def _pool_loops(x, kind, kernel, strides, pads, exclude=False, ceil_mode=False):
    """Pooling over any number of spatial axes by explicit loops over output positions; the output size of
    MIL's definition (coremltools ops/defs/_utils.py), the divisor counting positions inside the input
    (``exclude``) or inside the padded input."""
    spatial = x.shape[2:]
    outs = []
    for d, k, s, (a, b) in zip(spatial, kernel, strides, zip(pads[::2], pads[1::2], strict=False), strict=False):
        if ceil_mode:
            o = -(-(d + a + b - k) // s) + 1
            if (o - 1) * s >= d + a and (a or b):
                o -= 1
        else:
            o = (d + a + b - k) // s + 1
        outs.append(o)
    out = np.zeros(x.shape[:2] + tuple(outs))
    for pos in itertools.product(*[range(o) for o in outs]):
        ranges, counted = [], 1
        for axis, p in enumerate(pos):
            start = p * strides[axis] - pads[2 * axis]
            inside = [i for i in range(start, start + kernel[axis]) if 0 <= i < spatial[axis]]
            ranges.append(inside)
            padded_end = spatial[axis] + pads[2 * axis + 1]
            counted *= len(inside) if exclude else len([i for i in range(start, start + kernel[axis]) if -pads[2 * axis] <= i < padded_end])
        window = x[(slice(None), slice(None)) + np.ix_(*ranges)]
        axes = tuple(range(2, x.ndim))
        if kind == "max":
            value = window.max(axis=axes)
        elif kind == "l2":
            value = np.sqrt((window**2).sum(axis=axes))
        else:
            value = window.sum(axis=axes) / counted
        out[(slice(None), slice(None)) + pos] = value
    return out


def _conv_transpose_loops(x, weight, strides, dilations, crop, groups, output_spatial=None):
    """Transposed convolution by scattering every input value times the kernel, as its definition states."""
    n, cin = x.shape[:2]
    cog = weight.shape[1]
    cig = cin // groups
    kernel = weight.shape[2:]
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(x.shape[2:], strides, kernel, dilations, strict=False)]
    out = np.zeros((n, cog * groups, *full))
    for ci in range(cin):
        g = ci // cig
        for pos in itertools.product(*[range(d) for d in x.shape[2:]]):
            for tap in itertools.product(*[range(k) for k in kernel]):
                target = tuple(p * s + t * dl for p, s, t, dl in zip(pos, strides, tap, dilations, strict=False))
                out[(slice(None), slice(g * cog, (g + 1) * cog)) + target] += (
                    x[(slice(None), ci) + pos][:, None] * weight[(ci, slice(None)) + tap][None]
                )
    index = tuple(slice(crop[2 * a], full[a] - crop[2 * a + 1]) for a in range(len(kernel)))
    out = out[(slice(None), slice(None)) + index]
    if output_spatial is not None:
        fitted = np.zeros(out.shape[:2] + tuple(output_spatial))
        common = tuple(slice(0, min(a, b)) for a, b in zip(out.shape[2:], output_spatial, strict=False))
        fitted[(slice(None), slice(None)) + common] = out[(slice(None), slice(None)) + common]
        out = fitted
    return out


# ---------------------------------------------------------------------------------------------------------- op table
RNG = np.random.default_rng(2)
C = RNG.normal(size=(1, 3, 1, 1)).astype(np.float32)
GAMMA, BETA = RNG.normal(size=3).astype(np.float32), RNG.normal(size=3).astype(np.float32)
MEAN, VAR = RNG.normal(size=3).astype(np.float32), RNG.uniform(0.5, 2, 3).astype(np.float32)
W_LIN = RNG.normal(size=(5, SIDE)).astype(np.float32)
B_LIN = RNG.normal(size=5).astype(np.float32)
ALPHA3 = np.array([0.1, 0.2, 0.3], np.float32)
GAMMA_HW, BETA_HW = RNG.normal(size=(SIDE, SIDE)).astype(np.float32), RNG.normal(size=(SIDE, SIDE)).astype(np.float32)
W_T = RNG.normal(size=(3, 2, 3, 3)).astype(np.float32)  # conv_transpose: (C_in, C_out/groups, kh, kw)
W_T_GROUPED = RNG.normal(size=(3, 2, 2, 3)).astype(np.float32)  # 3 groups of one input channel, 2 outputs each
B_T = RNG.normal(size=2).astype(np.float32)
W_1D = RNG.normal(size=(4, 3, 3)).astype(np.float32)
W_3D = RNG.normal(size=(2, 1, 2, 3, 3)).astype(np.float32)
BOXES = np.array([[0.1, 0.2, 0.8, 0.7], [0.0, 0.0, 1.0, 1.0], [-0.2, 0.3, 0.6, 1.2]], np.float32)


def _int(v, factor=5.0):
    """An int32 tensor derived from the image: trunc(factor * x)."""
    return mb.cast(x=mb.mul(x=v, y=factor), dtype="int32")


def _scaled_pixels(v, k):
    return mb.mul(x=v, y=float(k))


def _ln(x, axes, gamma=None, beta=None, eps=1e-3):
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    return y * (1 if gamma is None else gamma) + (0 if beta is None else beta)


def _cases():
    """case -> (MIL body, reference on the float64 NCHW input, options for program_file). A case is named after the
    op it tests ("op" or "op:variant")."""
    t = tf
    i16, i17 = ct.target.iOS16, ct.target.iOS17
    return {
        # arithmetic, broadcasting, integer rules
        "add": (lambda v: mb.add(x=v, y=C), lambda x: x + C, {}),
        "sub": (lambda v: mb.sub(x=v, y=C), lambda x: x - C, {}),
        "mul": (lambda v: mb.mul(x=v, y=C), lambda x: x * C, {}),
        "real_div": (lambda v: mb.real_div(x=v, y=np.float32(3.0)), lambda x: x / 3, {}),
        "real_div:int32_floors": (
            lambda v: mb.real_div(x=_int(v), y=np.int32(2)),
            lambda x: np.floor_divide(np.trunc(5 * np.float32(x)), 2),
            {},
        ),
        "real_div:int32_negative_divisor": (
            lambda v: mb.real_div(x=_int(v), y=np.int32(-3)),
            lambda x: np.floor_divide(np.trunc(5 * np.float32(x)), -3),
            {},
        ),
        "floor_div": (lambda v: mb.floor_div(x=_scaled_pixels(v, 5), y=np.float32(2.0)), lambda x: np.floor(5 * x / 2), {}),
        "floor_div:int32": (
            lambda v: mb.floor_div(x=_int(v), y=np.int32(-3)),
            lambda x: np.floor_divide(np.trunc(5 * np.float32(x)), -3),
            {},
        ),
        "mod": (lambda v: mb.mod(x=_scaled_pixels(v, 5), y=np.float32(1.5)), lambda x: np.mod(5 * x, 1.5), {}),
        "maximum": (lambda v: mb.maximum(x=v, y=C), lambda x: np.maximum(x, C), {}),
        "minimum": (lambda v: mb.minimum(x=v, y=C), lambda x: np.minimum(x, C), {}),
        "pow": (lambda v: mb.pow(x=mb.add(x=v, y=2.0), y=np.float32(1.5)), lambda x: (x + 2) ** 1.5, {}),
        "cast:int32_truncates": (lambda v: mb.cast(x=_scaled_pixels(v, 2.5), dtype="int32"), lambda x: np.trunc(2.5 * np.float32(x)), {}),
        "cast:bool": (lambda v: mb.cast(x=mb.floor(x=_scaled_pixels(v, 2)), dtype="bool"), lambda x: np.floor(2 * x) != 0, {}),
        # comparisons, logic, selection
        "equal": (lambda v: mb.equal(x=mb.floor(x=_scaled_pixels(v, 3)), y=0.0), lambda x: np.floor(3 * x) == 0, {}),
        "not_equal": (lambda v: mb.not_equal(x=mb.floor(x=_scaled_pixels(v, 3)), y=0.0), lambda x: np.floor(3 * x) != 0, {}),
        "greater": (lambda v: mb.greater(x=v, y=C), lambda x: x > C, {}),
        "greater_equal": (lambda v: mb.greater_equal(x=mb.floor(x=_scaled_pixels(v, 3)), y=1.0), lambda x: np.floor(3 * x) >= 1, {}),
        "less": (lambda v: mb.less(x=v, y=C), lambda x: x < C, {}),
        "less_equal": (lambda v: mb.less_equal(x=mb.floor(x=_scaled_pixels(v, 3)), y=-1.0), lambda x: np.floor(3 * x) <= -1, {}),
        "logical_and": (lambda v: mb.logical_and(x=mb.greater(x=v, y=0.0), y=mb.less(x=v, y=0.5)), lambda x: (x > 0) & (x < 0.5), {}),
        "logical_or": (lambda v: mb.logical_or(x=mb.greater(x=v, y=0.5), y=mb.less(x=v, y=-0.5)), lambda x: (x > 0.5) | (x < -0.5), {}),
        "logical_xor": (lambda v: mb.logical_xor(x=mb.greater(x=v, y=0.0), y=mb.greater(x=v, y=C)), lambda x: (x > 0) ^ (x > C), {}),
        "logical_not": (lambda v: mb.logical_not(x=mb.greater(x=v, y=0.0)), lambda x: ~(x > 0), {}),
        "select": (
            lambda v: mb.select(cond=mb.greater(x=v, y=0.0), a=v, b=_scaled_pixels(v, -2)),
            lambda x: np.where(x > 0, x, -2 * x),
            {},
        ),
        # activations
        "relu": (lambda v: mb.relu(x=v), lambda x: t().nn.relu(x).numpy(), {}),
        "relu6": (lambda v: mb.relu6(x=_scaled_pixels(v, 8)), lambda x: t().nn.relu6(8 * x).numpy(), {}),
        "clip": (lambda v: mb.clip(x=v, alpha=-0.3, beta=0.4), lambda x: np.clip(x, -0.3, 0.4), {}),
        "sigmoid": (lambda v: mb.sigmoid(x=v), lambda x: t().math.sigmoid(x).numpy(), {}),
        "sigmoid_hard": (
            lambda v: mb.sigmoid_hard(x=_scaled_pixels(v, 4), alpha=0.2, beta=0.5),
            lambda x: np.clip(0.8 * x + 0.5, 0, 1),
            {},
        ),
        "silu": (lambda v: mb.silu(x=v), lambda x: t().nn.silu(x).numpy(), {}),
        "tanh": (lambda v: mb.tanh(x=v), np.tanh, {}),
        "scaled_tanh": (lambda v: mb.scaled_tanh(x=v, alpha=1.5, beta=0.7), lambda x: 1.5 * np.tanh(0.7 * x), {}),
        "leaky_relu": (lambda v: mb.leaky_relu(x=v, alpha=0.2), lambda x: t().nn.leaky_relu(x, 0.2).numpy(), {}),
        "elu": (lambda v: mb.elu(x=v, alpha=1.3), lambda x: np.where(x > 0, x, 1.3 * np.expm1(x)), {}),
        "prelu": (lambda v: mb.prelu(x=v, alpha=ALPHA3), lambda x: np.where(x >= 0, x, ALPHA3.reshape(1, 3, 1, 1) * x), {}),
        "softplus": (lambda v: mb.softplus(x=_scaled_pixels(v, 5)), lambda x: t().math.softplus(5 * x).numpy(), {}),
        "softplus_parametric": (
            lambda v: mb.softplus_parametric(x=_scaled_pixels(v, 3), alpha=ALPHA3 * 10, beta=ALPHA3 + 0.5),
            lambda x: (ALPHA3 * 10).reshape(1, 3, 1, 1) * np.log1p(np.exp((ALPHA3 + 0.5).reshape(1, 3, 1, 1) * 3 * x)),
            {},
        ),
        "softsign": (lambda v: mb.softsign(x=v), lambda x: t().math.softsign(x).numpy(), {}),
        "clamped_relu": (
            lambda v: mb.clamped_relu(x=_scaled_pixels(v, 2), alpha=0.1, beta=0.5),
            lambda x: np.minimum(np.where(x >= 0, 2 * x, 0.2 * x), 0.5),
            {},
        ),
        "thresholded_relu": (lambda v: mb.thresholded_relu(x=v, alpha=0.3), lambda x: np.where(x >= 0.3, x, 0), {}),
        "threshold": (lambda v: mb.threshold(x=v, alpha=0.2), lambda x: np.maximum(x, 0.2), {}),
        "linear_activation": (lambda v: mb.linear_activation(x=v, alpha=2.0, beta=-0.5), lambda x: 2 * x - 0.5, {}),
        "gelu": (lambda v: mb.gelu(x=_scaled_pixels(v, 3)), lambda x: t().nn.gelu(3 * x).numpy(), {}),
        "gelu:tanh": (
            lambda v: mb.gelu(x=_scaled_pixels(v, 3), mode="TANH_APPROXIMATION"),
            lambda x: t().nn.gelu(3 * x, approximate=True).numpy(),
            {},
        ),
        "gelu:sigmoid": (lambda v: mb.gelu(x=v, mode="SIGMOID_APPROXIMATION"), lambda x: x * _sigmoid(1.702 * x), {}),
        # unary functions
        "exp": (lambda v: mb.exp(x=v), np.exp, {}),
        "exp2": (lambda v: mb.exp2(x=_scaled_pixels(v, 3)), lambda x: 2.0 ** (3 * x), {}),
        "log": (lambda v: mb.log(x=mb.add(x=v, y=1.5)), lambda x: np.log(x + 1.5), {}),
        "sqrt": (lambda v: mb.sqrt(x=mb.add(x=v, y=1.5)), lambda x: np.sqrt(x + 1.5), {}),
        "rsqrt": (lambda v: mb.rsqrt(x=mb.add(x=v, y=1.5)), lambda x: 1 / np.sqrt(x + 1.5), {}),
        "inverse": (lambda v: mb.inverse(x=mb.add(x=v, y=1.5)), lambda x: 1 / (x + 1.5 + 1e-4), {}),
        "square": (lambda v: mb.square(x=v), np.square, {}),
        "abs": (lambda v: mb.abs(x=v), np.abs, {}),
        "floor": (lambda v: mb.floor(x=_scaled_pixels(v, 3)), lambda x: np.floor(3 * x), {}),
        "ceil": (lambda v: mb.ceil(x=_scaled_pixels(v, 2)), lambda x: np.ceil(2 * x), {}),
        "round:halves_to_even": (
            lambda v: mb.round(x=mb.mul(x=mb.floor(x=_scaled_pixels(v, 6)), y=0.5)),
            lambda x: np.round(np.floor(6 * x) / 2),
            {},
        ),
        "sign": (lambda v: mb.sign(x=mb.floor(x=_scaled_pixels(v, 3))), lambda x: np.sign(np.floor(3 * x)), {}),
        "erf": (lambda v: mb.erf(x=_scaled_pixels(v, 2)), lambda x: _erf(2 * x), {}),
        "sin": (lambda v: mb.sin(x=_scaled_pixels(v, 3)), lambda x: np.sin(3 * x), {}),
        "cos": (lambda v: mb.cos(x=_scaled_pixels(v, 3)), lambda x: np.cos(3 * x), {}),
        "tan": (lambda v: mb.tan(x=v), np.tan, {}),
        "asin": (lambda v: mb.asin(x=_scaled_pixels(v, 0.9)), lambda x: np.arcsin(0.9 * x), {}),
        "acos": (lambda v: mb.acos(x=_scaled_pixels(v, 0.9)), lambda x: np.arccos(0.9 * x), {}),
        "atan": (lambda v: mb.atan(x=_scaled_pixels(v, 3)), lambda x: np.arctan(3 * x), {}),
        "sinh": (lambda v: mb.sinh(x=_scaled_pixels(v, 2)), lambda x: np.sinh(2 * x), {}),
        "cosh": (lambda v: mb.cosh(x=_scaled_pixels(v, 2)), lambda x: np.cosh(2 * x), {}),
        "atanh": (lambda v: mb.atanh(x=_scaled_pixels(v, 0.9)), lambda x: np.arctanh(0.9 * x), {}),
        "identity": (lambda v: mb.identity(x=v), lambda x: x, {}),
        # normalisation, softmax, linear algebra
        "softmax": (lambda v: mb.softmax(x=v, axis=1), lambda x: t().nn.softmax(x, axis=1).numpy(), {}),
        "softmax:last_axis": (lambda v: mb.softmax(x=v, axis=-1), lambda x: t().nn.softmax(x, axis=-1).numpy(), {}),
        "batch_norm": (
            lambda v: mb.batch_norm(x=v, mean=MEAN, variance=VAR, gamma=GAMMA, beta=BETA, epsilon=1e-3),
            lambda x: (
                t()
                .nn.batch_normalization(
                    x, MEAN.reshape(1, 3, 1, 1), VAR.reshape(1, 3, 1, 1), BETA.reshape(1, 3, 1, 1), GAMMA.reshape(1, 3, 1, 1), 1e-3
                )
                .numpy()
            ),
            {},
        ),
        "instance_norm": (
            lambda v: mb.instance_norm(x=v, gamma=GAMMA, beta=BETA, epsilon=1e-3),
            lambda x: _ln(x, (2, 3), GAMMA.reshape(1, 3, 1, 1), BETA.reshape(1, 3, 1, 1)),
            {},
        ),
        "layer_norm": (lambda v: mb.layer_norm(x=v, axes=[-1], epsilon=1e-3), lambda x: _ln(x, -1), {}),
        "layer_norm:channel_axis_gamma_beta": (
            lambda v: mb.layer_norm(x=v, axes=[1], gamma=GAMMA, beta=BETA, epsilon=1e-3),
            lambda x: _ln(x, 1, GAMMA.reshape(1, 3, 1, 1), BETA.reshape(1, 3, 1, 1)),
            {},
        ),
        "layer_norm:last_two_axes_gamma_beta": (
            lambda v: mb.layer_norm(x=v, axes=[-2, -1], gamma=GAMMA_HW, beta=BETA_HW, epsilon=1e-3),
            lambda x: _ln(x, (2, 3), GAMMA_HW, BETA_HW),
            {},
        ),
        "l2_norm": (lambda v: mb.l2_norm(x=v, epsilon=1e-2), lambda x: x / np.sqrt((x**2).sum(axis=(1, 2, 3), keepdims=True) + 1e-2), {}),
        "local_response_norm": (
            lambda v: mb.local_response_norm(x=_scaled_pixels(v, 3), size=3, alpha=0.5, beta=0.75, k=2.0),
            lambda x: _nchw(
                t()
                .nn.local_response_normalization(_nhwc(3 * x).astype(np.float32), depth_radius=1, bias=2.0, alpha=0.5 / 3, beta=0.75)
                .numpy()
            ),
            {},
        ),
        "local_response_norm:even_size": (
            lambda v: mb.local_response_norm(x=_scaled_pixels(v, 3), size=2),
            lambda x: 3 * x / (1 + 1e-4 / 2 * (9 * x**2 + 9 * np.concatenate([x[:, 1:], 0 * x[:, :1]], 1) ** 2)) ** 0.75,
            {},
        ),
        "linear": (lambda v: mb.linear(x=v, weight=W_LIN, bias=B_LIN), lambda x: x @ W_LIN.T + B_LIN, {}),
        "matmul": (lambda v: mb.matmul(x=v, y=W_LIN, transpose_y=True), lambda x: x @ W_LIN.T, {}),
        "matmul:int32_with_float_weight_stays_int32": (
            lambda v: mb.matmul(x=_int(v, 2.0), y=np.full((SIDE, 2), 0.75, np.float32)),
            lambda x: np.trunc(np.trunc(2 * np.float32(x)) @ np.full((SIDE, 2), 0.75)),
            {"target": i17},
        ),
        "einsum": (
            lambda v: mb.einsum(values=(v, mb.transpose(x=v, perm=[0, 3, 2, 1])), equation="nchw,nwhu->nchu"),
            lambda x: np.einsum("nchw,nwhu->nchu", x, x.transpose(0, 3, 2, 1)),
            {},
        ),
        # reductions
        "reduce_mean": (lambda v: mb.reduce_mean(x=v, axes=[2, 3], keep_dims=True), lambda x: x.mean((2, 3)), {}),
        "reduce_sum": (lambda v: mb.reduce_sum(x=v, axes=[1]), lambda x: x.sum(1), {}),
        "reduce_max": (lambda v: mb.reduce_max(x=v, axes=[-1]), lambda x: x.max(-1), {}),
        "reduce_min": (lambda v: mb.reduce_min(x=v, axes=[2], keep_dims=True), lambda x: x.min(2), {}),
        "reduce_l2_norm": (lambda v: mb.reduce_l2_norm(x=v, axes=[2, 3]), lambda x: np.sqrt((x * x).sum((2, 3))), {}),
        "reduce_prod": (lambda v: mb.reduce_prod(x=mb.add(x=v, y=1.5), axes=[1]), lambda x: (x + 1.5).prod(1), {}),
        "reduce_sum_square": (lambda v: mb.reduce_sum_square(x=v, axes=[3]), lambda x: (x * x).sum(3), {}),
        "reduce_l1_norm": (lambda v: mb.reduce_l1_norm(x=v, axes=[2, 3], keep_dims=True), lambda x: np.abs(x).sum((2, 3)), {}),
        "reduce_log_sum": (lambda v: mb.reduce_log_sum(x=mb.add(x=v, y=1.5), axes=[1]), lambda x: np.log((x + 1.5).sum(1)), {}),
        "reduce_log_sum_exp": (
            lambda v: mb.reduce_log_sum_exp(x=_scaled_pixels(v, 40), axes=[2, 3], keep_dims=True),
            lambda x: np.log(np.exp(40 * x).sum((2, 3))),
            {},
        ),
        "reduce_argmax": (lambda v: mb.reduce_argmax(x=v, axis=1, keep_dims=True), lambda x: x.argmax(1), {}),
        "reduce_argmin": (lambda v: mb.reduce_argmin(x=v, axis=-1), lambda x: x.argmin(-1), {}),
        "argsort": (lambda v: mb.argsort(x=v, axis=-1), lambda x: np.argsort(-x, axis=-1, kind="stable"), {}),
        "argsort:ascending": (lambda v: mb.argsort(x=v, axis=2, ascending=True), lambda x: np.argsort(x, axis=2, kind="stable"), {}),
        "topk": (
            lambda v: mb.concat(values=list(_topk_parts(mb.topk(x=v, k=3, axis=-1))), axis=-1),
            lambda x: np.concatenate([-np.sort(-x, -1)[..., :3], np.argsort(-x, -1, kind="stable")[..., :3]], -1),
            {},
        ),
        "topk:ascending_channels": (
            lambda v: mb.concat(values=list(_topk_parts(mb.topk(x=v, k=2, axis=1, ascending=True))), axis=1),
            lambda x: np.concatenate([np.sort(x, 1)[:, :2], np.argsort(x, 1, kind="stable")[:, :2]], 1),
            {},
        ),
        "topk:unsorted": (
            lambda v: mb.topk(x=v, k=3, axis=-1, sort=False)[0],
            lambda x: np.take_along_axis(x, np.sort(np.argsort(-x, -1, kind="stable")[..., :3], -1), -1),
            {"target": i16},
        ),
        "cumsum": (lambda v: mb.cumsum(x=v, axis=2), lambda x: np.cumsum(x, 2), {}),
        "cumsum:exclusive_reverse": (
            lambda v: mb.cumsum(x=v, axis=-1, exclusive=True, reverse=True),
            lambda x: np.flip(np.cumsum(np.flip(x, -1), -1), -1) - x,
            {},
        ),
        # shapes
        "concat": (lambda v: mb.concat(values=[v, _scaled_pixels(v, 2)], axis=1), lambda x: np.concatenate([x, 2 * x], 1), {}),
        "concat:interleave": (
            lambda v: mb.concat(values=[v, _scaled_pixels(v, 2)], axis=1, interleave=True),
            lambda x: np.stack([x, 2 * x], 2).reshape(len(x), 6, SIDE, SIDE),
            {},
        ),
        "transpose": (lambda v: mb.transpose(x=v, perm=[0, 3, 1, 2]), lambda x: x.transpose(0, 3, 1, 2), {}),
        "squeeze": (lambda v: mb.squeeze(x=mb.reduce_mean(x=v, axes=[1], keep_dims=True), axes=[1]), lambda x: x.mean(1), {}),
        "expand_dims": (lambda v: mb.expand_dims(x=v, axes=[-1]), lambda x: x[..., None], {}),
        "reshape": (
            lambda v: mb.reduce_sum(x=mb.reshape(x=v, shape=[1, 3, 3, 27]), axes=[2]),
            lambda x: x.reshape(len(x), 3, 3, 27).sum(2),
            {},
        ),
        "reshape:ios17_zero_aligned_right": (
            lambda v: mb.reduce_sum(x=mb.reshape(x=v, shape=[1, 0, -1, 0, 0]), axes=[2]),
            lambda x: x.reshape(len(x), 1, 3, SIDE, SIDE).sum(2),
            {"target": i17},
        ),
        "reshape:zero_same_rank": (
            lambda v: mb.reduce_sum(x=mb.reshape(x=v, shape=[1, 0, 3, -1]), axes=[2]),
            lambda x: x.reshape(len(x), 3, 3, 27).sum(2),
            {},
        ),
        "reshape:computed_shape": (
            lambda v: mb.reduce_max(x=mb.reshape(x=v, shape=mb.slice_by_index(x=mb.shape(x=v), begin=[1], end=[4])), axes=[0]),
            lambda x: x.max(1),
            {},
        ),
        "shape": (lambda v: mb.shape(x=v), lambda x: np.tile([1, 3, SIDE, SIDE], (len(x), 1)), {}),
        "fill": (lambda v: mb.add(x=v, y=mb.fill(shape=mb.shape(x=v), value=2.5)), lambda x: x + 2.5, {}),
        "fill_like": (lambda v: mb.add(x=v, y=mb.fill_like(ref_tensor=v, value=-1.5)), lambda x: x - 1.5, {"target": i16}),
        "range_1d": (lambda v: mb.add(x=v, y=mb.range_1d(start=1.0, end=5.5, step=0.5)), lambda x: x + np.arange(1.0, 5.5, 0.5), {}),
        "flatten2d": (lambda v: mb.flatten2d(x=v, axis=2), lambda x: x.reshape(len(x) * 3, -1), {}),
        "flatten2d:axis_equals_rank": (lambda v: mb.reduce_sum(x=mb.flatten2d(x=v, axis=4), axes=[1]), lambda x: x.reshape(len(x), -1), {}),
        "flatten2d:negative_axis": (lambda v: mb.reduce_max(x=mb.flatten2d(x=v, axis=-1), axes=[1]), lambda x: x.max(-1), {}),
        "slice_by_index": (
            lambda v: mb.slice_by_index(
                x=v, begin=[0, 1, 1, 0], end=[1, 3, 8, 9], stride=[1, 1, 2, 3], end_mask=[True, False, False, False]
            ),
            lambda x: x[:, 1:3, 1:8:2, 0:9:3],
            {},
        ),
        "slice_by_index:squeeze_negative": (
            lambda v: mb.slice_by_index(
                x=v,
                begin=[0, -1, 0, 8],
                end=[1, 3, 9, 2],
                stride=[1, 1, 1, -2],
                squeeze_mask=[False, True, False, False],
                end_mask=[True, False, True, False],
            ),
            lambda x: x[:, -1, :, 8:2:-2],
            {},
        ),
        "slice_by_index:squeeze_end_neglected": (  # a squeezed axis reads begin alone, whatever end says
            lambda v: mb.slice_by_index(x=v, begin=[0, 1, 0, 0], end=[1, 0, 9, 9], squeeze_mask=[False, True, False, False]),
            lambda x: x[:, 1],
            {},
        ),
        "slice_by_index:computed_begin": (
            lambda v: mb.slice_by_index(x=v, begin=mb.sub(x=mb.shape(x=v), y=np.array([1, 3, 7, 7], np.int32)), end=[1, 3, 9, 9]),
            lambda x: x[:, :, 2:, 2:],
            {},
        ),
        "slice_by_size": (lambda v: mb.slice_by_size(x=v, begin=[0, 0, 2, 3], size=[-1, 2, 4, -1]), lambda x: x[:, 0:2, 2:6, 3:], {}),
        "slice_by_size:computed_begin": (
            lambda v: mb.slice_by_size(x=v, begin=mb.sub(x=mb.shape(x=v), y=np.array([1, 2, 6, 8], np.int32)), size=[-1, 2, 3, 4]),
            lambda x: x[:, 1:3, 3:6, 1:5],
            {},
        ),
        "split": (
            lambda v: mb.concat(values=list(mb.split(x=v, split_sizes=[4, 5], axis=2))[::-1], axis=2),
            lambda x: np.concatenate([x[:, :, 4:], x[:, :, :4]], 2),
            {},
        ),
        "split:num_splits": (
            lambda v: mb.concat(values=list(mb.split(x=v, num_splits=3, axis=-1))[::-1], axis=-1),
            lambda x: np.concatenate([x[..., 6:], x[..., 3:6], x[..., :3]], -1),
            {},
        ),
        "tile": (lambda v: mb.tile(x=v, reps=[1, 2, 1, 2]), lambda x: np.tile(x, (1, 2, 1, 2)), {}),
        "stack": (lambda v: mb.stack(values=[v, _scaled_pixels(v, 3)], axis=2), lambda x: np.stack([x, 3 * x], 2), {}),
        "reverse": (lambda v: mb.reverse(x=v, axes=[1, -1]), lambda x: x[:, ::-1, :, ::-1], {}),
        "pad": (
            lambda v: mb.pad(x=v, pad=[1, 2, 0, 3], mode="constant", constant_val=0.5),
            lambda x: np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 3)), constant_values=0.5),
            {},
        ),
        "pad:reflect": (
            lambda v: mb.pad(x=v, pad=[2, 1, 1, 2], mode="reflect"),
            lambda x: np.pad(x, ((0, 0), (0, 0), (2, 1), (1, 2)), mode="reflect"),
            {},
        ),
        "pad:replicate": (
            lambda v: mb.pad(x=v, pad=[0, 2, 3, 1], mode="replicate"),
            lambda x: np.pad(x, ((0, 0), (0, 0), (0, 2), (3, 1)), mode="edge"),
            {},
        ),
        "gather": (lambda v: mb.gather(x=v, indices=np.array([2, 0, 2, 1], np.int32), axis=1), lambda x: x[:, [2, 0, 2, 1]], {}),
        "gather:negative_indices_last_axis": (
            lambda v: mb.gather(x=v, indices=np.array([-1, 0, 3], np.int32), axis=-1),
            lambda x: x[..., [-1, 0, 3]],
            {},
        ),
        "gather:batch_dims": (
            lambda v: mb.gather(x=v, indices=np.array([[2, 0]], np.int32), axis=1, batch_dims=1),
            lambda x: x[:, [2, 0]],
            {"target": i16},
        ),
        "gather_along_axis": (
            lambda v: mb.gather_along_axis(x=v, indices=RNG_IDX, axis=3),
            lambda x: np.take_along_axis(x, np.broadcast_to(RNG_IDX, (len(x),) + RNG_IDX.shape[1:]), 3),
            {},
        ),
        "gather_nd": (
            lambda v: mb.gather_nd(x=v, indices=np.array([[[2, 3], [0, 0], [1, 8]]], np.int32), batch_dims=1),
            lambda x: np.stack([x[:, 2, 3], x[:, 0, 0], x[:, 1, 8]], 1),
            {"target": i16},
        ),
        # rearrangements
        "pixel_shuffle": (
            lambda v: mb.pixel_shuffle(x=_four(v), upscale_factor=2),
            lambda x: _shuffle_loops(np.concatenate([x, 2 * x, 3 * x, 4 * x], 1), 2),
            {"target": i16},
        ),
        "pixel_unshuffle": (
            lambda v: mb.pixel_unshuffle(x=mb.slice_by_size(x=v, begin=[0, 0, 0, 0], size=[-1, -1, 8, 8]), downscale_factor=np.uint32(2)),
            lambda x: _unshuffle_loops(x[..., :8, :8], 2),
            {"target": i16},
        ),
        "depth_to_space": (
            lambda v: mb.depth_to_space(x=_four(v), block_size=2),
            lambda x: _nchw(t().nn.depth_to_space(_nhwc(np.concatenate([x, 2 * x, 3 * x, 4 * x], 1)), 2).numpy()),
            {},
        ),
        "space_to_depth": (lambda v: mb.space_to_depth(x=v, block_size=3), lambda x: _nchw(t().nn.space_to_depth(_nhwc(x), 3).numpy()), {}),
        "crop": (lambda v: mb.crop(x=v, crop_height=[1, 2], crop_width=[0, 3]), lambda x: x[..., 1:7, 0:6], {}),
        # resampling
        "upsample_nearest_neighbor": (
            lambda v: mb.upsample_nearest_neighbor(x=v, scale_factor_height=2, scale_factor_width=3),
            lambda x: x.repeat(2, 2).repeat(3, 3),
            {},
        ),
        "upsample_nearest_neighbor:fractional": (
            lambda v: mb.upsample_nearest_neighbor(x=v, scale_factor_height=1.5, scale_factor_width=0.7),
            lambda x: _tf_resize(x, (13, 6), "nearest", half_pixel_centers=False),
            {},
        ),
        "upsample_bilinear": (
            lambda v: mb.upsample_bilinear(x=v, scale_factor_height=2, scale_factor_width=2, align_corners=False),
            lambda x: _tf_resize(x, (18, 18)),
            {},
        ),
        "upsample_bilinear:align_corners": (
            lambda v: mb.upsample_bilinear(x=v, scale_factor_height=2.0, scale_factor_width=1.5, align_corners=True),
            lambda x: _tf_resize(x, (18, 13), align_corners=True, half_pixel_centers=False),
            {},
        ),
        "upsample_bilinear:no_half_pixel_centers": (
            lambda v: mb.upsample_bilinear(
                x=v, scale_factor_height=3.0, scale_factor_width=1.5, align_corners=False, half_pixel_centers=False
            ),
            lambda x: _tf_resize(x, (27, 13), half_pixel_centers=False),
            {"target": i16},
        ),
        "upsample_bilinear:fractional_half_pixel": (
            lambda v: mb.upsample_bilinear(x=v, scale_factor_height=1.5, scale_factor_width=0.5, align_corners=False),
            lambda x: _tf_resize(x, (13, 4)),
            {},
        ),
        "resize_nearest_neighbor": (
            lambda v: mb.resize_nearest_neighbor(x=v, target_size_height=13, target_size_width=5),
            lambda x: _tf_resize(x, (13, 5), "nearest"),
            {},
        ),
        "resize_bilinear": (
            lambda v: mb.resize_bilinear(x=v, target_size_height=13, target_size_width=5),
            lambda x: _tf_resize(x, (13, 5), half_pixel_centers=False),
            {},
        ),
        "resize_bilinear:strict_align_corners": (
            lambda v: mb.resize_bilinear(x=v, target_size_height=13, target_size_width=5, sampling_mode="STRICT_ALIGN_CORNERS"),
            lambda x: _tf_resize(x, (13, 5), align_corners=True, half_pixel_centers=False),
            {},
        ),
        "resize_bilinear:unalign_corners": (
            lambda v: mb.resize_bilinear(x=v, target_size_height=13, target_size_width=5, sampling_mode="UNALIGN_CORNERS"),
            lambda x: _tf_resize(x, (13, 5)),
            {},
        ),
        "resize_bilinear:offset_corners": (
            lambda v: mb.resize_bilinear(x=v, target_size_height=13, target_size_width=5, sampling_mode="OFFSET_CORNERS"),
            lambda x: _bilinear_loops(x, 13, 5, _offset_corners),
            {},
        ),
        "resize_bilinear:align_corners_single_row": (
            lambda v: mb.resize_bilinear(x=v, target_size_height=1, target_size_width=4, sampling_mode="ALIGN_CORNERS"),
            lambda x: _bilinear_loops(x, 1, 4, _align_corners),
            {},
        ),
        "resize": (
            lambda v: mb.resize(x=v, shape=np.array([0, 13, 5], np.int32), resized_dims=np.uint32(2)),
            lambda x: _tf_resize(x, (13, 5), half_pixel_centers=False),
            {"target": i17},
        ),
        "resize:nearest": (
            lambda v: mb.resize(x=v, shape=np.array([13, 5], np.int32), resized_dims=np.uint32(2), interpolation_mode="NEAREST_NEIGHBOR"),
            lambda x: _tf_resize(x, (13, 5), "nearest"),
            {"target": i17},
        ),
        "crop_resize": (
            lambda v: mb.crop_resize(
                x=v,
                boxes=BOXES,
                box_indices=np.zeros(3, np.int32),
                target_height=4,
                target_width=5,
                normalized_coordinates=True,
                sampling_mode="STRICT_ALIGN_CORNERS",
                pad_value=0.25,
            ),
            lambda x: _crop_and_resize(x, BOXES, (4, 5), 0.25),
            {"target": i17},
        ),
        "crop_resize:ios15_roi": (
            lambda v: mb.crop_resize(
                x=v,
                roi=np.concatenate([BOXES * (SIDE - 1)], 0).reshape(3, 1, 4, 1, 1),
                target_height=4,
                target_width=5,
                sampling_mode="STRICT_ALIGN_CORNERS",
            ),
            lambda x: _crop_and_resize(x, BOXES, (4, 5), 0.0),
            {},
        ),
        # convolution and pooling beyond 2-D
        "conv:1d": (
            lambda v: mb.conv(x=mb.reshape(x=v, shape=[1, 3, 81]), weight=W_1D, strides=[2], pad_type="same"),
            lambda x: (
                t()
                .nn.conv1d(np.float32(x).reshape(len(x), 3, 81).transpose(0, 2, 1), W_1D.transpose(2, 1, 0), 2, "SAME")
                .numpy()
                .transpose(0, 2, 1)
            ),
            {},
        ),
        "conv:3d": (
            lambda v: mb.conv(
                x=mb.reshape(x=v, shape=[1, 1, 3, 9, 9]), weight=W_3D, strides=[1, 2, 1], pad_type="custom", pad=[0, 1, 1, 1, 0, 2]
            ),
            lambda x: (
                t()
                .nn.conv3d(
                    np.pad(x.reshape(len(x), 1, 3, 9, 9), ((0, 0), (0, 0), (0, 1), (1, 1), (0, 2))).transpose(0, 2, 3, 4, 1),
                    W_3D.transpose(2, 3, 4, 1, 0),
                    [1, 1, 2, 1, 1],
                    "VALID",
                )
                .numpy()
                .transpose(0, 4, 1, 2, 3)
            ),
            {},
        ),
        "conv_transpose": (
            lambda v: mb.conv_transpose(x=v, weight=W_T, bias=B_T, strides=[2, 2], pad_type="valid"),
            lambda x: (
                _nchw(t().nn.conv2d_transpose(_nhwc(x), W_T.transpose(2, 3, 1, 0), (len(x), 19, 19, 2), 2, "VALID").numpy())
                + B_T.reshape(1, 2, 1, 1)
            ),
            {},
        ),
        "conv_transpose:same_output_shape": (
            lambda v: mb.conv_transpose(x=v, weight=W_T, strides=[2, 2], pad_type="same", output_shape=[1, 2, 18, 18]),
            lambda x: _nchw(t().nn.conv2d_transpose(_nhwc(x), W_T.transpose(2, 3, 1, 0), (len(x), 18, 18, 2), 2, "SAME").numpy()),
            {},
        ),
        "conv_transpose:groups_dilation_custom_pad": (
            lambda v: mb.conv_transpose(
                x=v, weight=W_T_GROUPED, strides=[1, 2], dilations=[2, 1], groups=3, pad_type="custom", pad=[1, 0, 2, 1]
            ),
            lambda x: _conv_transpose_loops(x, W_T_GROUPED, (1, 2), (2, 1), (1, 0, 2, 1), 3),
            {},
        ),
        "max_pool:1d": (
            lambda v: mb.max_pool(x=mb.reshape(x=v, shape=[1, 3, 81]), kernel_sizes=[4], strides=[3], pad_type="same"),
            lambda x: _pool_loops(x.reshape(len(x), 3, 81), "max", (4,), (3,), (0, 1)),
            {},
        ),
        "avg_pool:3d_exclude_padding": (
            lambda v: mb.avg_pool(
                x=mb.reshape(x=v, shape=[1, 1, 3, 9, 9]),
                kernel_sizes=[2, 3, 2],
                strides=[1, 2, 2],
                pad_type="custom",
                pad=[1, 0, 1, 1, 0, 1],
                exclude_padding_from_average=True,
            ),
            lambda x: _pool_loops(x.reshape(len(x), 1, 3, 9, 9), "avg", (2, 3, 2), (1, 2, 2), (1, 0, 1, 1, 0, 1), exclude=True),
            {},
        ),
        "max_pool:ceil_mode": (
            lambda v: mb.max_pool(x=v, kernel_sizes=[2, 2], strides=[2, 2], pad_type="valid", ceil_mode=True),
            lambda x: _pool_loops(x, "max", (2, 2), (2, 2), (0, 0, 0, 0), ceil_mode=True),
            {},
        ),
        "avg_pool:ceil_mode_padded": (
            lambda v: mb.avg_pool(x=v, kernel_sizes=[3, 2], strides=[2, 3], pad_type="custom", pad=[1, 1, 1, 1], ceil_mode=True),
            lambda x: _pool_loops(x, "avg", (3, 2), (2, 3), (1, 1, 1, 1), ceil_mode=True),
            {},
        ),
        "l2_pool": (
            lambda v: mb.l2_pool(x=v, kernel_sizes=[3, 2], strides=[2, 2], pad_type="same"),
            lambda x: _pool_loops(x, "l2", (3, 2), (2, 2), (1, 1, 0, 1)),
            {},
        ),
    }


RNG_IDX = np.random.default_rng(9).integers(0, SIDE, (1, 3, SIDE, 4)).astype(np.int32)


def _four(v):
    return mb.concat(values=[v, _scaled_pixels(v, 2), _scaled_pixels(v, 3), _scaled_pixels(v, 4)], axis=1)


def _topk_parts(outs):
    values, indices = outs
    return values, mb.cast(x=indices, dtype="fp32")


def _shuffle_loops(x, f):
    n, c, h, w = x.shape
    out = np.zeros((n, c // (f * f), h * f, w * f))
    for ch, i, j in itertools.product(range(c // (f * f)), range(f), range(f)):
        out[:, ch, i::f, j::f] = x[:, ch * f * f + i * f + j]
    return out


def _unshuffle_loops(x, f):
    n, c, h, w = x.shape
    out = np.zeros((n, c * f * f, h // f, w // f))
    for ch, i, j in itertools.product(range(c), range(f), range(f)):
        out[:, ch * f * f + i * f + j] = x[:, ch, i::f, j::f]
    return out


def _crop_and_resize(x, boxes, size, pad):
    """TensorFlow's crop_and_resize (normalized [y1, x1, y2, x2] boxes scaled by size - 1, corners on corners), every
    box from every image: [N boxes, images, C, h, w] flattened per image as the program's output is."""
    t = tf()
    per_image = []
    for image in x:
        crops = t.image.crop_and_resize(
            _nhwc(image[None]).astype(np.float32), boxes, np.zeros(len(boxes), np.int32), size, extrapolation_value=pad
        ).numpy()
        per_image.append(_nchw(crops))
    return np.stack(per_image)  # (images, boxes, C, h, w)


def _case_names() -> list[str]:
    return list(_cases())


@pytest.mark.parametrize("case", _case_names())
def test_op(tmp_path, case):
    check_op_case(tmp_path, case, *_cases()[case])


COVERS |= {name.split(":")[0] for name in _case_names()}


# ---------------------------------------------------------------------------------------------------------- batching, observing
def test_program_that_moves_the_batch_axis_runs_image_by_image(tmp_path):
    body = lambda v: mb.transpose(x=mb.reduce_mean(x=v, axes=[1], keep_dims=True), perm=[1, 0, 2, 3])  # noqa: E731
    path = program_file(tmp_path, body)
    executor = CoreMLExecutor(path)
    assert not executor.batchable
    pixels = image_pixels(3)
    np.testing.assert_allclose(executor.predict(pixels), as_input(pixels).mean(1).reshape(3, -1), atol=OP_ATOL)


def test_batch_equals_one_image_at_a_time(tmp_path):
    weight = np.random.default_rng(3).normal(size=(4, 3, 3, 3)).astype(np.float32)
    path = program_file(tmp_path, lambda v: mb.relu(x=mb.conv(x=v, weight=weight, pad_type="same")))
    executor = CoreMLExecutor(path)
    assert executor.batchable
    pixels = image_pixels(5)
    together = executor.predict(pixels)
    alone = np.concatenate([executor.predict(pixels[i : i + 1]) for i in range(5)])
    np.testing.assert_array_equal(together, alone)
    executor.chunk = 2  # three passes, run by the worker threads
    np.testing.assert_array_equal(executor.predict(pixels), alone)


def test_w8a8_quantize_and_dequantize(tmp_path):
    """Activation quantization as W8A8 programs hold it (iOS17 ops): per tensor int8 and per channel uint8."""
    scale_c = np.array([0.01, 0.02, 0.005], np.float32)
    zero_c = np.array([120, 128, 135], np.uint8)
    weight = np.random.default_rng(4).normal(size=(2, 3, 1, 1)).astype(np.float32)

    def body(v):
        q = mb.quantize(input=v, scale=np.float32(0.013), zero_point=np.int8(3), output_dtype="int8")
        a = mb.dequantize(input=q, scale=np.float32(0.013), zero_point=np.int8(3))
        q2 = mb.quantize(input=v, scale=scale_c, zero_point=zero_c, axis=1, output_dtype="uint8")
        b = mb.dequantize(input=q2, scale=scale_c, zero_point=zero_c, axis=1)
        return mb.concat(values=[a, b, mb.conv(x=a, weight=weight)], axis=1)

    got, x = run_program(tmp_path, body, target=ct.target.iOS17)
    a = (np.clip(np.round(x / np.float32(0.013)) + 3, -128, 127) - 3) * np.float32(0.013)
    sc, zc = scale_c.reshape(1, 3, 1, 1), zero_c.reshape(1, 3, 1, 1).astype(np.float64)
    b = (np.clip(np.round(x / sc) + zc, 0, 255) - zc) * sc
    conv = np.einsum("nchw,oc->nohw", a, weight[:, :, 0, 0])
    want = np.concatenate([a, b, conv], axis=1)
    np.testing.assert_allclose(got, want.reshape(len(x), -1), atol=OP_ATOL)


def test_observe_sees_every_op_output_even_a_pad_folded_into_its_convolution(tmp_path):
    weight = np.random.default_rng(6).normal(size=(2, 3, 3, 3)).astype(np.float32)

    def body(v):
        padded = mb.pad(x=v, pad=[1, 1, 1, 1], mode="constant", constant_val=0.0, name="padded")
        return mb.relu(x=mb.conv(x=padded, weight=weight, pad_type="valid", name="convolved"), name="rectified")

    path = program_file(tmp_path, body)
    executor = CoreMLExecutor(path)
    seen: dict[str, tuple] = {}
    observed = executor.predict(image_pixels(2), observe=lambda name, value: seen.setdefault(name, value.shape))
    assert {"padded", "convolved", "rectified"} <= set(seen)
    assert seen["padded"] == (2, 3, SIDE + 2, SIDE + 2) and seen["convolved"] == (2, 2, SIDE, SIDE)
    np.testing.assert_array_equal(observed, executor.predict(image_pixels(2)))  # observing changes nothing


RELU6_SPREAD = 16.0  # scales the test image (about [-1, 1]) well past relu6's 0 and 6


def test_relu_read_only_by_a_convolution_is_applied_as_the_convolution_pads(tmp_path):
    """plan.fuse_relus: relu -> 3x3 conv (same padding), relu -> zero pad -> depthwise conv (both fused) and relu6 ->
    depthwise conv give conv(activation(x)) against TensorFlow; a relu that a second op also reads, or one before a
    1x1 conv, is left as it is; an observer still sees every relu output."""
    from exporter.runtime.executor.plan import FUSED_RELU

    rng = np.random.default_rng(7)
    weight = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    depthwise = rng.normal(size=(3, 1, 3, 3)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)

    shifts = np.float32([0.5, 0.4, 0.6, 0.3])  # negative values for relu to clip; distinct, so no relu is merged

    def body(v):
        centred = [mb.sub(x=v, y=shift) for shift in shifts]
        a = mb.conv(x=mb.relu(x=centred[0], name="r1"), weight=weight, bias=bias, pad_type="same")
        padded = mb.pad(x=mb.relu(x=centred[1], name="r2"), pad=[1, 1, 1, 1], mode="constant", constant_val=0.0)
        b = mb.conv(x=padded, weight=depthwise, groups=3, pad_type="valid")
        shared = mb.relu(x=centred[2], name="r3")
        c = mb.add(x=mb.conv(x=shared, weight=weight, pad_type="same"), y=mb.reduce_mean(x=shared, axes=[1], keep_dims=True))
        d = mb.conv(x=mb.relu(x=centred[3], name="r4"), weight=weight[:, :, :1, :1])
        wide = mb.sub(x=mb.mul(x=v, y=np.float32(RELU6_SPREAD)), y=np.float32(RELU6_SPREAD / 4))  # below 0 and above 6
        e = mb.conv(x=mb.relu6(x=wide, name="r5"), weight=depthwise, groups=3, pad_type="same")
        return mb.concat(values=[a, b, c, d, e], axis=1)

    path = program_file(tmp_path, body)
    executor = CoreMLExecutor(path)
    fused = [s.call.name for s in executor._engine.steps if s.call.has(FUSED_RELU)]
    skipped = {s.call.name for s in executor._engine.steps if s.observe_only}
    assert len(fused) == 3 and {"r1", "r2", "r5"} <= skipped and not {"r3", "r4"} & skipped
    pixels = image_pixels(2)
    got = executor.predict(pixels)
    x = as_input(pixels)
    r = [np.maximum(x - shift, 0) for shift in shifts]
    no_bias = np.zeros(4, np.float32)
    want = np.concatenate(
        [
            _conv_reference(r[0], weight, bias, (1, 1), (1, 1), (1, 1, 1, 1), 1),
            _conv_reference(r[1], depthwise, np.zeros(3, np.float32), (1, 1), (1, 1), (1, 1, 1, 1), 3),
            _conv_reference(r[2], weight, no_bias, (1, 1), (1, 1), (1, 1, 1, 1), 1) + r[2].mean(axis=1, keepdims=True),
            _conv_reference(r[3], weight[:, :, :1, :1], no_bias, (1, 1), (1, 1), (0, 0, 0, 0), 1),
            _conv_reference(
                np.clip(x * RELU6_SPREAD - RELU6_SPREAD / 4, 0, 6), depthwise, np.zeros(3, np.float32), (1, 1), (1, 1), (1, 1, 1, 1), 3
            ),
        ],
        axis=1,
    )
    np.testing.assert_allclose(got, want.reshape(2, -1), atol=OP_ATOL, rtol=OP_RTOL)
    seen: dict[str, float] = {}
    observed = executor.predict(pixels, observe=lambda name, value: seen.setdefault(name, float(value.min())))
    assert {"r1", "r2", "r3", "r4", "r5"} <= set(seen) and seen["r1"] == 0.0
    np.testing.assert_array_equal(observed, got)


def test_grayscale_program_input(tmp_path):
    got, x = run_program(tmp_path, lambda v: mb.mul(x=v, y=2.0), shape=(1, 1, SIDE, SIDE))
    np.testing.assert_allclose(got, (2 * x).reshape(len(x), -1), atol=OP_ATOL)


COVERS |= {"conv", "max_pool", "avg_pool", "quantize", "dequantize"}


# ---------------------------------------------------------------------------------------------------------- refusals
def test_unknown_op_is_refused_naming_it_the_file_and_the_list(tmp_path):
    def body(v):  # random sampling: an op the executor does not run
        return mb.add(x=mb.reduce_mean(x=v, axes=[1, 2, 3]), y=mb.random_normal(shape=np.array([1, 4], np.int32)))

    path = program_file(tmp_path, body, name="noisy", optimize=False)
    with pytest.raises(UnsupportedOperationError) as info:
        CoreMLExecutor(path)
    message = str(info.value)
    assert "'random_normal'" in message and "noisy.mlpackage" in message and "README.md" in message


def test_reshape_zero_before_ios17_needs_the_rank(tmp_path):
    """Before iOS17 a 0 in the shape copies the dimension at its index, which needs len(shape) == rank."""
    from exporter.runtime.executor.mil_shape import reshape_zeros

    assert reshape_zeros((2, 50), [1, 0, -1, 0], 17) == [1, 1, -1, 50]  # the iOS17 definition's own example
    assert reshape_zeros((2, 50), [0, -1], 15) == [2, -1]
    with pytest.raises(ValueError, match="before iOS17"):
        reshape_zeros((2, 50), [1, 0, -1, 0], 16)


def test_bad_files_and_pixels_are_refused(tmp_path):
    path = program_file(tmp_path, lambda v: mb.conv(x=v, weight=np.ones((2, 3, 5, 5), np.float32)))
    executor = CoreMLExecutor(path)
    with pytest.raises(ConfigError, match="shape"):
        executor.predict(image_pixels(1, SIDE + 1, SIDE))
    with pytest.raises(ConfigError, match="uint8"):
        executor.predict(image_pixels(1).astype(np.float32))
    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(path, broken)
    weights = next(broken.rglob("weight.bin"))
    data = bytearray(weights.read_bytes())
    data[64:68] = b"\0\0\0\0"  # the first record's sentinel
    weights.write_bytes(bytes(data))
    with pytest.raises(ConversionError, match="no blob record"):
        CoreMLExecutor(broken)
    (broken / "Manifest.json").unlink()
    with pytest.raises(ConversionError, match="Manifest.json"):
        CoreMLExecutor(broken)
    with pytest.raises(ConversionError):
        CoreMLExecutor(tmp_path / "missing.mlmodel")
