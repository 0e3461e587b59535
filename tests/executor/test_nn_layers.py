"""NeuralNetwork layers of the executor against NeuralNetwork.proto: each case builds a small .mlmodel classifier with
coremltools' NeuralNetworkBuilder around the layer, runs the saved file through the executor and compares with an
independent computation (numpy formulas, explicit loops, or TensorFlow). Each case is named after the layer type it
tests ("layer" or "layer:variant") and checks that the layer is in the file."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from executor_helpers import (
    NN_SIDE,
    OP_ATOL,
    OP_RTOL,
    CoreMLExecutor,
    as_input,
    ct,
    image_pixels,
    nn_file,
    op_types,
    tf,
)

from exporter.errors import UnsupportedOperationError

# The layer types the tests of this module run; test_registry checks that every registered layer is covered.
COVERS: set[str] = set()

K3 = np.array([0.5, -1.0, 2.0], np.float32).reshape(1, 3, 1, 1)
RNG = np.random.default_rng(4)
W_CONV = RNG.normal(size=(3, 3, 3, 4)).astype(np.float32)  # builder layout (kh, kw, in, out)
W_DECONV = RNG.normal(size=(3, 3, 3, 2)).astype(np.float32)  # builder layout (kh, kw, in, out / groups)
B2 = RNG.normal(size=2).astype(np.float32)
W_3D = RNG.normal(size=(2, 1, 2, 3, 3)).astype(np.float32)  # (out, in / groups, kd, kh, kw)
GAMMA_LN, BETA_LN = RNG.normal(size=(NN_SIDE, NN_SIDE)).astype(np.float32), RNG.normal(size=(NN_SIDE, NN_SIDE)).astype(np.float32)
SCALE_C, BIAS_C = RNG.normal(size=3).astype(np.float32), RNG.normal(size=3).astype(np.float32)
ROIS = np.array([[0.1, 0.2, 0.8, 0.7], [0.0, 0.0, 1.0, 1.0]], np.float32)


def _named(_layer, blob: str) -> str:
    """The builder's add_* methods return the layer; the cases want the name of the blob it writes."""
    return blob


def _const(builder, value, name="k"):
    value = np.asarray(value, np.float32)
    builder.add_load_constant_nd(name, name, value, shape=list(value.shape))
    return name


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def _nhwc(x):
    return np.float32(x).transpose(0, 2, 3, 1)


def _tf_resize(x, size, method="bilinear", align_corners=False, half_pixel_centers=True):
    t = tf()
    op = t.raw_ops.ResizeBilinear if method == "bilinear" else t.raw_ops.ResizeNearestNeighbor
    return _nchw(op(images=_nhwc(x), size=size, align_corners=align_corners, half_pixel_centers=half_pixel_centers).numpy())


def _pool_loops(x, kind, kernel, strides, pads, exclude=False, ceil_mode=False):
    """Pooling by explicit loops (see test_mil_ops); pads flat (before, after) per axis."""
    spatial = x.shape[2:]
    outs = []
    for d, k, s, a, b in zip(spatial, kernel, strides, pads[::2], pads[1::2], strict=True):
        o = (-(-(d + a + b - k) // s) + 1) if ceil_mode else (d + a + b - k) // s + 1
        if ceil_mode and (o - 1) * s >= d + a and (a or b):
            o -= 1
        outs.append(o)
    out = np.zeros(x.shape[:2] + tuple(outs))
    for pos in itertools.product(*[range(o) for o in outs]):
        ranges, counted = [], 1
        for axis, p in enumerate(pos):
            start = p * strides[axis] - pads[2 * axis]
            ranges.append([i for i in range(start, start + kernel[axis]) if 0 <= i < spatial[axis]])
            counted *= (
                len(ranges[-1])
                if exclude
                else len([i for i in range(start, start + kernel[axis]) if -pads[2 * axis] <= i < spatial[axis] + pads[2 * axis + 1]])
            )
        window = x[(slice(None), slice(None)) + np.ix_(*ranges)]
        axes = tuple(range(2, x.ndim))
        value = (
            window.max(axis=axes)
            if kind == "max"
            else np.sqrt((window**2).sum(axis=axes))
            if kind == "l2"
            else window.sum(axis=axes) / counted
        )
        out[(slice(None), slice(None)) + pos] = value
    return out


def _cases():
    """case -> (build(builder, input blob) -> output blob, reference on the NCHW float input)."""

    def unary(mode, ref, **kw):
        return (lambda b, x: _named(b.add_unary("u", x, "u", mode, **kw), "u"), ref)

    def act(kind, ref, params=None):
        return (lambda b, x: _named(b.add_activation("a", kind, x, "a", params=params), "a"), ref)

    def broadcast(method, ref):
        return (lambda b, x: _named(getattr(b, method)("o", [x, _const(b, K3)], "o"), "o"), lambda x: ref(x, K3))

    def reduce(method, ref, axes):
        return (lambda b, x: _named(getattr(b, method)("r", x, "r", axes=axes, keepdims=False), "r"), ref)

    def one(method, ref, scale=1.0):
        def build(b, x):
            if scale != 1.0:
                b.add_elementwise("s", [x], "s", "MULTIPLY", alpha=scale)
                x = "s"
            return _named(getattr(b, method)("f", x, "f"), "f")

        return (build, ref)

    half = lambda b, x: _named(b.add_elementwise("h", [x], "h", "MULTIPLY", alpha=0.5), "h")  # noqa: E731
    three = lambda b, x: _named(b.add_elementwise("t", [x], "t", "MULTIPLY", alpha=3.0), "t")  # noqa: E731
    t = tf
    return {
        # elementwise (NeuralNetwork.proto's limited broadcasting)
        "add": (lambda b, x: _named(b.add_elementwise("e", [x, half(b, x)], "e", "ADD"), "e"), lambda x: 1.5 * x),
        "add:scalar": (lambda b, x: _named(b.add_elementwise("e", [x], "e", "ADD", alpha=0.7), "e"), lambda x: x + 0.7),
        "multiply": (lambda b, x: _named(b.add_elementwise("e", [x, half(b, x)], "e", "MULTIPLY"), "e"), lambda x: 0.5 * x * x),
        "max": (lambda b, x: _named(b.add_elementwise("e", [x, half(b, x)], "e", "MAX"), "e"), lambda x: np.maximum(x, x / 2)),
        "min": (lambda b, x: _named(b.add_elementwise("e", [x, half(b, x)], "e", "MIN"), "e"), lambda x: np.minimum(x, x / 2)),
        "average": (lambda b, x: _named(b.add_elementwise("e", [x, half(b, x)], "e", "AVE"), "e"), lambda x: 0.75 * x),
        "unary:sqrt": unary("sqrt", lambda x: np.sqrt(2 * x + 2.5), shift=2.5, scale=2.0),
        "unary:rsqrt": unary("rsqrt", lambda x: 1 / np.sqrt(x + 1.5 + 1e-3), shift=1.5, epsilon=1e-3),
        "unary:inverse": unary("inverse", lambda x: 1 / (x + 1.5 + 1e-3), shift=1.5, epsilon=1e-3),
        "unary:power": unary("power", lambda x: x**2, alpha=2.0),
        "unary:exp": unary("exp", np.exp),
        "unary:log": unary("log", lambda x: np.log(x + 1.5), shift=1.5),
        "unary:abs": unary("abs", np.abs),
        "unary:threshold": unary("threshold", lambda x: np.maximum(x, 0.2), alpha=0.2),
        "activation:scaled_tanh": act("SCALED_TANH", lambda x: 1.7 * np.tanh(0.6 * x), params=[1.7, 0.6]),
        "activation:thresholded_relu": act("THRESHOLDEDRELU", lambda x: np.where(x >= 0.3, x, 0), params=0.3),
        "activation:linear": act("LINEAR", lambda x: 2 * x - 0.5, params=[2.0, -0.5]),
        "activation:sigmoid_hard": act("SIGMOID_HARD", lambda x: np.clip(0.3 * x + 0.4, 0, 1), params=[0.3, 0.4]),
        "activation:softsign": act("SOFTSIGN", lambda x: x / (1 + np.abs(x))),
        "activation:softplus": act("SOFTPLUS", lambda x: np.log1p(np.exp(x))),
        "activation:elu": act("ELU", lambda x: np.where(x > 0, x, 0.8 * np.expm1(x)), params=0.8),
        "activation:leaky_relu": act("LEAKYRELU", lambda x: np.where(x >= 0, x, 0.1 * x), params=[0.1]),
        "activation:prelu": act("PRELU", lambda x: np.where(x >= 0, x, SCALE_C.reshape(1, 3, 1, 1) * x), params=SCALE_C),
        "activation:parametric_softplus": act(
            "PARAMETRICSOFTPLUS",
            lambda x: SCALE_C.reshape(1, 3, 1, 1) * np.log1p(np.exp(BIAS_C.reshape(1, 3, 1, 1) * x)),
            params=[SCALE_C, BIAS_C],
        ),
        "activation:relu": act("RELU", lambda x: np.maximum(x, 0)),
        "activation:sigmoid": act("SIGMOID", lambda x: 1 / (1 + np.exp(-x))),
        "activation:tanh": act("TANH", np.tanh),
        "clip": (lambda b, x: _named(b.add_clip("c", x, "c", -0.2, 0.3), "c"), lambda x: np.clip(x, -0.2, 0.3)),
        "clampedReLU": (
            lambda b, x: _named(b.add_clamped_relu("c", x, "c", alpha=0.1, beta=0.5), "c"),
            lambda x: np.minimum(np.where(x >= 0, x, 0.1 * x), 0.5),
        ),
        "gelu:exact": (
            lambda b, x: _named(b.add_gelu("g", x, "g", "EXACT"), "g"),
            lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
        ),
        "gelu:tanh": (
            lambda b, x: _named(b.add_gelu("g", x, "g", "TANH_APPROXIMATION"), "g"),
            lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
        ),
        "gelu:sigmoid": (
            lambda b, x: _named(b.add_gelu("g", x, "g", "SIGMOID_APPROXIMATION"), "g"),
            lambda x: x / (1 + np.exp(-1.702 * x)),
        ),
        "ceil": one("add_ceil", lambda x: np.ceil(3 * x), 3.0),
        "floor": one("add_floor", lambda x: np.floor(3 * x), 3.0),
        "sign": (
            lambda b, x: _named(b.add_sign("s2", _named(b.add_floor("f", three(b, x), "f"), "f"), "s2"), "s2"),
            lambda x: np.sign(np.floor(3 * x)),
        ),
        "floor:then_round_halves": (
            lambda b, x: _named(
                b.add_round(
                    "r",
                    _named(
                        b.add_elementwise(
                            "h2",
                            [_named(b.add_floor("f", _named(b.add_elementwise("s6", [x], "s6", "MULTIPLY", alpha=6.0), "s6"), "f"), "f")],
                            "h2",
                            "MULTIPLY",
                            alpha=0.5,
                        ),
                        "h2",
                    ),
                    "r",
                ),
                "r",
            ),
            lambda x: np.round(np.floor(6 * x) / 2),
        ),
        "round": one("add_round", lambda x: np.round(3 * x), 3.0),
        "exp2": one("add_exp2", lambda x: 2.0**x),
        "sin": one("add_sin", lambda x: np.sin(3 * x), 3.0),
        "cos": one("add_cos", lambda x: np.cos(3 * x), 3.0),
        "tan": one("add_tan", np.tan),
        "asin": one("add_asin", lambda x: np.arcsin(0.9 * x), 0.9),
        "acos": one("add_acos", lambda x: np.arccos(0.9 * x), 0.9),
        "atan": one("add_atan", lambda x: np.arctan(3 * x), 3.0),
        "sinh": one("add_sinh", lambda x: np.sinh(2 * x), 2.0),
        "cosh": one("add_cosh", lambda x: np.cosh(2 * x), 2.0),
        "tanh": one("add_tanh", lambda x: np.tanh(2 * x), 2.0),
        "asinh": one("add_asinh", lambda x: np.arcsinh(3 * x), 3.0),
        "acosh": (
            lambda b, x: _named(b.add_acosh("f", _named(b.add_elementwise("s", [x], "s", "ADD", alpha=2.0), "s"), "f"), "f"),
            lambda x: np.arccosh(x + 2),
        ),
        "atanh": one("add_atanh", lambda x: np.arctanh(0.9 * x), 0.9),
        "erf": one("add_erf", lambda x: np.vectorize(math.erf)(2 * x), 2.0),
        # comparisons, logic, selection (outputs are 1.0 / 0.0)
        "greaterThan": (lambda b, x: _named(b.add_greater_than("c", [x, _const(b, K3)], "c"), "c"), lambda x: (x > K3).astype(float)),
        "greaterEqual": (
            lambda b, x: _named(b.add_greater_than("c", [x], "c", use_greater_than_equal=True, alpha=0.2), "c"),
            lambda x: (x >= 0.2) * 1.0,
        ),
        "lessThan": (lambda b, x: _named(b.add_less_than("c", [x], "c", alpha=-0.3), "c"), lambda x: (x < -0.3) * 1.0),
        "lessEqual": (
            lambda b, x: _named(b.add_less_than("c", [x, _const(b, K3)], "c", use_less_than_equal=True), "c"),
            lambda x: (x <= K3) * 1.0,
        ),
        "equal": (
            lambda b, x: _named(b.add_equal("c", [_named(b.add_floor("f", three(b, x), "f"), "f")], "c", alpha=1.0), "c"),
            lambda x: (np.floor(3 * x) == 1) * 1.0,
        ),
        "notEqual": (
            lambda b, x: _named(b.add_not_equal("c", [_named(b.add_floor("f", three(b, x), "f"), "f")], "c", alpha=0.0), "c"),
            lambda x: (np.floor(3 * x) != 0) * 1.0,
        ),
        "logicalAnd": (lambda b, x: _logic(b, x, "AND"), lambda x: ((x > 0) & (x < 0.5)) * 1.0),
        "logicalOr": (lambda b, x: _logic(b, x, "OR"), lambda x: ((x > 0) | (x < 0.5)) * 1.0),
        "logicalXor": (lambda b, x: _logic(b, x, "XOR"), lambda x: ((x > 0) ^ (x < 0.5)) * 1.0),
        "logicalNot": (
            lambda b, x: _named(b.add_logical("n", [_named(b.add_greater_than("g", [x], "g"), "g")], "n", "NOT"), "n"),
            lambda x: (x <= 0) * 1.0,
        ),
        "whereBroadcastable": (
            lambda b, x: _named(
                b.add_where_broadcastable("w", [_named(b.add_greater_than("g", [x], "g"), "g"), x, _const(b, K3)], "w"), "w"
            ),
            lambda x: np.where(x > 0, x, K3),
        ),
        "addBroadcastable": broadcast("add_add_broadcastable", np.add),
        "subtractBroadcastable": broadcast("add_subtract_broadcastable", np.subtract),
        "multiplyBroadcastable": broadcast("add_multiply_broadcastable", np.multiply),
        "divideBroadcastable": broadcast("add_divide_broadcastable", np.divide),
        "maxBroadcastable": broadcast("add_max_broadcastable", np.maximum),
        "minBroadcastable": broadcast("add_min_broadcastable", np.minimum),
        "modBroadcastable": broadcast("add_mod_broadcastable", np.mod),
        "floorDivBroadcastable": broadcast("add_floor_div_broadcastable", lambda x, k: np.floor(x / k)),
        "powBroadcastable": (
            lambda b, x: _named(b.add_pow_broadcastable("o", [_named(b.add_unary("u", x, "u", "abs"), "u"), _const(b, K3)], "o"), "o"),
            lambda x: np.abs(x) ** K3,
        ),
        # reductions, sorting
        "reduceSum": reduce("add_reduce_sum", lambda x: x.sum((2, 3)), [2, 3]),
        "reduceMean": reduce("add_reduce_mean", lambda x: x.mean(1), [1]),
        "reduceMax": reduce("add_reduce_max", lambda x: x.max(2), [2]),
        "reduceProd": reduce("add_reduce_prod", lambda x: x.prod(1), [1]),
        "reduceMin": reduce("add_reduce_min", lambda x: x.min(-1), [-1]),
        "reduceL1": reduce("add_reduce_l1", lambda x: np.abs(x).sum(1), [1]),
        "reduceL2": reduce("add_reduce_l2", lambda x: np.sqrt((x * x).sum(2)), [2]),
        "reduceSumSquare": reduce("add_reduce_sumsquare", lambda x: (x * x).sum(3), [3]),
        "reduceLogSum": (
            lambda b, x: _named(
                b.add_reduce_logsum("r", _named(b.add_elementwise("s", [x], "s", "ADD", alpha=1.5), "s"), "r", axes=[1], keepdims=False),
                "r",
            ),
            lambda x: np.log((x + 1.5).sum(1)),
        ),
        "reduceLogSumExp": (
            lambda b, x: _named(
                b.add_reduce_logsumexp(
                    "r", _named(b.add_elementwise("s", [x], "s", "MULTIPLY", alpha=50.0), "s"), "r", axes=[2, 3], keepdims=True
                ),
                "r",
            ),
            lambda x: np.log(np.exp(50 * x).sum((2, 3))),
        ),
        "argMax": (lambda b, x: _named(b.add_argmax("a", x, "a", axis=1, keepdims=True), "a"), lambda x: x.argmax(1)),
        "argMin": (lambda b, x: _named(b.add_argmin("a", x, "a", axis=-1, keepdims=False), "a"), lambda x: x.argmin(-1)),
        "argSort": (
            lambda b, x: _named(b.add_argsort("a", x, "a", axis=-1, descending=True), "a"),
            lambda x: np.argsort(-x, -1, kind="stable"),
        ),
        "argSort:ascending": (lambda b, x: _named(b.add_argsort("a", x, "a", axis=2), "a"), lambda x: np.argsort(x, 2, kind="stable")),
        "topK": (
            lambda b, x: _topk(b, x, k=3, axis=-1, bottom=False),
            lambda x: np.concatenate([-np.sort(-x, -1)[..., :3], np.argsort(-x, -1, kind="stable")[..., :3]], -1),
        ),
        "topK:bottom": (
            lambda b, x: _topk(b, x, k=2, axis=1, bottom=True),
            lambda x: np.concatenate([np.sort(x, 1)[:, :2], np.argsort(x, 1, kind="stable")[:, :2]], 1),
        ),
        "cumSum": (lambda b, x: _named(b.add_cumsum("c", [x], "c", axis=2), "c"), lambda x: np.cumsum(x, 2)),
        "cumSum:exclusive_reverse": (
            lambda b, x: _named(b.add_cumsum("c", [x], "c", axis=-1, reverse=True, exclusive=True), "c"),
            lambda x: np.flip(np.cumsum(np.flip(x, -1), -1), -1) - x,
        ),
        "softmax": (lambda b, x: _named(b.add_softmax("s", x, "s"), "s"), lambda x: np.exp(x) / np.exp(x).sum(1, keepdims=True)),
        "softmaxND": (
            lambda b, x: _named(b.add_softmax_nd("s", x, "s", axis=-1), "s"),
            lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
        ),
        # shapes
        "padding:reflect": (
            lambda b, x: _named(b.add_padding("p", 1, 2, 2, 0, input_name=x, output_name="p", padding_type="reflection"), "p"),
            lambda x: np.pad(x, ((0, 0), (0, 0), (2, 0), (1, 2)), mode="reflect"),
        ),
        "padding:replicate": (
            lambda b, x: _named(b.add_padding("p", 0, 1, 1, 2, input_name=x, output_name="p", padding_type="replication"), "p"),
            lambda x: np.pad(x, ((0, 0), (0, 0), (1, 2), (0, 1)), mode="edge"),
        ),
        "padding:value": (
            lambda b, x: _named(b.add_padding("p", 1, 0, 0, 1, value=0.25, input_name=x, output_name="p"), "p"),
            lambda x: np.pad(x, ((0, 0), (0, 0), (0, 1), (1, 0)), constant_values=0.25),
        ),
        "constantPad": (
            lambda b, x: _named(b.add_constant_pad("p", [x], "p", value=-0.5, pad_amounts=[0, 0, 0, 0, 1, 2, 3, 0]), "p"),
            lambda x: np.pad(x, ((0, 0), (0, 0), (1, 2), (3, 0)), constant_values=-0.5),
        ),
        "flatten:channel_last": (
            lambda b, x: _named(b.add_flatten("f", 1, x, "f"), "f"),
            lambda x: x.transpose(0, 2, 3, 1).reshape(len(x), -1),
        ),
        "flatten:channel_first": (lambda b, x: _named(b.add_flatten("f", 0, x, "f"), "f"), lambda x: x.reshape(len(x), -1)),
        "squeeze": (
            lambda b, x: _named(
                b.add_squeeze("s", _named(b.add_reduce_mean("m", x, "m", axes=[1], keepdims=True), "m"), "s", axes=[1]), "s"
            ),
            lambda x: x.mean(1),
        ),
        "expandDims": (lambda b, x: _named(b.add_expand_dims("e", x, "e", axes=[-1]), "e"), lambda x: x[..., None]),
        "tile": (lambda b, x: _named(b.add_tile("t", x, "t", reps=[1, 2, 1, 2]), "t"), lambda x: np.tile(x, (1, 2, 1, 2))),
        "copy": (lambda b, x: _named(b.add_copy("c", x, "c"), "c"), lambda x: x),
        "transpose": (lambda b, x: _named(b.add_transpose("t", [0, 3, 1, 2], x, "t"), "t"), lambda x: x.transpose(0, 3, 1, 2)),
        "reshapeStatic": (
            lambda b, x: _named(b.add_reshape_static("r", x, "r", [1, 3, 4, 16]), "r"),
            lambda x: x.reshape(len(x), 3, 4, 16),
        ),
        "rankPreservingReshape": (
            lambda b, x: _named(b.add_rank_preserving_reshape("r", x, "r", [0, 0, 4, -1]), "r"),
            lambda x: x.reshape(len(x), 3, 4, 16),
        ),
        "concat": (
            lambda b, x: _named(b.add_elementwise("c", [x, half(b, x)], "c", "CONCAT"), "c"),
            lambda x: np.concatenate([x, x / 2], 1),
        ),
        "concatND": (
            lambda b, x: _named(b.add_concat_nd("c", [x, half(b, x)], "c", axis=-1), "c"),
            lambda x: np.concatenate([x, x / 2], -1),
        ),
        "stack": (lambda b, x: _named(b.add_stack("s", [x, half(b, x)], "s", axis=2), "s"), lambda x: np.stack([x, x / 2], 2)),
        "split": (
            lambda b, x: _split_back(
                b, b.add_split("s", _named(b.add_concat_nd("c", [x, half(b, x)], "c", axis=1), "c"), ["s0", "s1"]), ["s1", "s0"], 1
            ),
            lambda x: np.concatenate([x / 2, x], 1),
        ),
        "splitND": (
            lambda b, x: _split_back(b, b.add_split_nd("s", x, ["s0", "s1"], axis=-1, split_sizes=[3, 5]), ["s1", "s0"], -1),
            lambda x: np.concatenate([x[..., 3:], x[..., :3]], -1),
        ),
        "sliceStatic": (
            lambda b, x: _named(
                b.add_slice_static(
                    "s", x, "s", [0, 1, 1, 0], [1, 3, 7, 8], [1, 1, 2, 3], [True, False, False, False], [True, False, False, False]
                ),
                "s",
            ),
            lambda x: x[:, 1:3, 1:7:2, 0:8:3],
        ),
        "slice": (
            lambda b, x: _named(b.add_slice("s", x, "s", "height", start_index=1, end_index=-2, stride=2), "s"),
            lambda x: x[:, :, 1:-2:2],
        ),
        "slice:channel": (lambda b, x: _named(b.add_slice("s", x, "s", "channel", start_index=1, end_index=3), "s"), lambda x: x[:, 1:3]),
        "sliceDynamic": (
            lambda b, x: _named(
                b.add_slice_dynamic(
                    "s",
                    [x, _const(b, [0, 1, 2, 3], "begin")],
                    "s",
                    end_ids=[1, 3, 7, 8],
                    strides=[1, 1, 2, 1],
                    begin_masks=[True, False, False, False],
                    end_masks=[True, False, False, False],
                ),
                "s",
            ),
            lambda x: x[:, 1:3, 2:7:2, 3:8],
        ),
        "sliceBySize": (
            lambda b, x: _named(b.add_slice_by_size("s", [x, _const(b, [2], "begin")], "s", axis=2, size=4), "s"),
            lambda x: x[:, :, 2:6],
        ),
        "reverse": (
            lambda b, x: _named(b.add_reverse("r", x, "r", reverse_dim=[False, True, False, True]), "r"),
            lambda x: x[:, ::-1, :, ::-1],
        ),
        "gather": (lambda b, x: _named(b.add_gather("g", [x, _const(b, [2, 0, 2], "i")], "g", axis=1), "g"), lambda x: x[:, [2, 0, 2]]),
        "gather:negative_last_axis": (
            lambda b, x: _named(b.add_gather("g", [x, _const(b, [-1, 3], "i")], "g", axis=-1), "g"),
            lambda x: x[..., [-1, 3]],
        ),
        "gatherAlongAxis": (
            lambda b, x: _named(b.add_gather_along_axis("g", [x, _const(b, IDX, "i")], "g", axis=3), "g"),
            lambda x: np.take_along_axis(x, np.broadcast_to(IDX.astype(int), (len(x),) + IDX.shape[1:]), 3),
        ),
        "gatherND": (
            lambda b, x: _named(b.add_gather_nd("g", [x, _const(b, [[0, 2, 3], [0, 0, 7]], "i")], "g"), "g"),
            lambda x: np.stack([x[:, 2, 3], x[:, 0, 7]], 1),
        ),
        "getShape": (lambda b, x: _named(b.add_get_shape("s", x, "s"), "s"), lambda x: np.tile([1, 3, NN_SIDE, NN_SIDE], (len(x), 1))),
        "fillLike": (
            lambda b, x: _named(b.add_add_broadcastable("o", [x, _named(b.add_fill_like("f", x, "f", 2.5), "f")], "o"), "o"),
            lambda x: x + 2.5,
        ),
        "fillStatic": (
            lambda b, x: _named(
                b.add_add_broadcastable("o", [x, _named(b.add_fill_static("f", "f", [1, 1, NN_SIDE], -0.5), "f")], "o"), "o"
            ),
            lambda x: x - 0.5,
        ),
        "fillDynamic": (
            lambda b, x: _named(
                b.add_add_broadcastable(
                    "o", [x, _named(b.add_fill_dynamic("f", _named(b.add_get_shape("s", x, "s"), "s"), "f", 0.75), "f")], "o"
                ),
                "o",
            ),
            lambda x: x + 0.75,
        ),
        "rangeStatic": (
            lambda b, x: _named(
                b.add_add_broadcastable("o", [x, _named(b.add_range_static("r", "r", end=4.0, start=0.0, step=0.5), "r")], "o"), "o"
            ),
            lambda x: x + np.arange(0, 4, 0.5),
        ),
        "broadcastToStatic": (
            lambda b, x: _named(
                b.add_broadcast_to_static(
                    "o", _named(b.add_reduce_mean("m", x, "m", axes=[1], keepdims=True), "m"), "o", [1, 3, NN_SIDE, NN_SIDE]
                ),
                "o",
            ),
            lambda x: np.broadcast_to(x.mean(1, keepdims=True), x.shape),
        ),
        "broadcastToLike": (
            lambda b, x: _named(
                b.add_broadcast_to_like("o", [_named(b.add_reduce_mean("m", x, "m", axes=[1], keepdims=True), "m"), x], "o"), "o"
            ),
            lambda x: np.broadcast_to(x.mean(1, keepdims=True), x.shape),
        ),
        "reshapeLike": (
            lambda b, x: _named(b.add_reshape_like("o", [x, _const(b, np.zeros((1, 3, 4, 16)), "ref")], "o"), "o"),
            lambda x: x.reshape(len(x), 3, 4, 16),
        ),
        "reshapeDynamic": (
            lambda b, x: _named(b.add_reshape_dynamic("o", [x, _const(b, [1, 3, 16, 4], "shape")], "o"), "o"),
            lambda x: x.reshape(len(x), 3, 16, 4),
        ),
        "loadConstant": (
            lambda b, x: _named(
                b.add_add_broadcastable("o", [x, _named(b.add_load_constant("c", "c", K3.reshape(-1), [3, 1, 1]), "c")], "o"), "o"
            ),
            lambda x: x + K3,
        ),
        "loadConstantND": (lambda b, x: _named(b.add_add_broadcastable("o", [x, _const(b, K3)], "o"), "o"), lambda x: x + K3),
        "scale": (
            lambda b, x: _named(b.add_scale("s", SCALE_C, BIAS_C, True, x, "s", shape_scale=[3], shape_bias=[3]), "s"),
            lambda x: x * SCALE_C.reshape(1, 3, 1, 1) + BIAS_C.reshape(1, 3, 1, 1),
        ),
        "bias": (
            lambda b, x: _named(b.add_bias("s", GAMMA_LN.reshape(1, NN_SIDE, NN_SIDE), x, "s", shape_bias=[1, NN_SIDE, NN_SIDE]), "s"),
            lambda x: x + GAMMA_LN,
        ),
        # normalisation
        "batchnorm:instance": (
            lambda b, x: _named(
                b.add_batchnorm(
                    "n",
                    3,
                    K3.ravel(),
                    -K3.ravel(),
                    input_name=x,
                    output_name="n",
                    compute_mean_var=True,
                    instance_normalization=True,
                    epsilon=1e-3,
                ),
                "n",
            ),
            lambda x: (x - x.mean((2, 3), keepdims=True)) / np.sqrt(x.var((2, 3), keepdims=True) + 1e-3) * K3 - K3,
        ),
        "batchnorm": (
            lambda b, x: _named(
                b.add_batchnorm(
                    "n", 3, SCALE_C, BIAS_C, mean=K3.ravel(), variance=np.abs(SCALE_C) + 0.5, input_name=x, output_name="n", epsilon=1e-3
                ),
                "n",
            ),
            lambda x: (
                t()
                .nn.batch_normalization(
                    x, K3, (np.abs(SCALE_C) + 0.5).reshape(1, 3, 1, 1), BIAS_C.reshape(1, 3, 1, 1), SCALE_C.reshape(1, 3, 1, 1), 1e-3
                )
                .numpy()
            ),
        ),
        "mvn": (
            lambda b, x: _named(b.add_mvn("m", x, "m", across_channels=False, epsilon=1e-3), "m"),
            lambda x: (x - x.mean((2, 3), keepdims=True)) / np.sqrt(x.var((2, 3), keepdims=True) + 1e-3),
        ),
        "mvn:across_channels_mean_only": (
            lambda b, x: _named(b.add_mvn("m", x, "m", normalize_variance=False), "m"),
            lambda x: x - x.mean((1, 2, 3), keepdims=True),
        ),
        "l2normalize": (
            lambda b, x: _named(b.add_l2_normalize("l", x, "l", epsilon=1e-2), "l"),
            lambda x: x / np.sqrt((x * x).sum((1, 2, 3), keepdims=True) + 1e-2),
        ),
        "lrn": (
            lambda b, x: _named(b.add_lrn("l", three(b, x), "l", alpha=0.5, beta=0.75, local_size=3, k=2.0), "l"),
            lambda x: _nchw(t().nn.local_response_normalization(_nhwc(3 * x), depth_radius=1, bias=2.0, alpha=0.5 / 3, beta=0.75).numpy()),
        ),
        "layerNormalization": (
            lambda b, x: _named(b.add_layer_normalization("l", x, "l", [NN_SIDE, NN_SIDE], GAMMA_LN, BETA_LN, eps=1e-3), "l"),
            lambda x: (x - x.mean((2, 3), keepdims=True)) / np.sqrt(x.var((2, 3), keepdims=True) + 1e-3) * GAMMA_LN + BETA_LN,
        ),
        # resampling, cropping, rearranging
        "upsample": (lambda b, x: _named(b.add_upsample("up", 2, 3, x, "up"), "up"), lambda x: x.repeat(2, 2).repeat(3, 3)),
        "upsample:bilinear_default": (
            lambda b, x: _named(b.add_upsample("up", 2, 3, x, "up", mode="BILINEAR"), "up"),
            lambda x: _tf_resize(x, (16, 24), half_pixel_centers=False),
        ),
        "upsample:bilinear_align_corners_true": (
            lambda b, x: _named(b.add_upsample("up", 1.5, 2.0, x, "up", mode="BILINEAR", linear_upsample_mode="ALIGN_CORNERS_TRUE"), "up"),
            lambda x: _tf_resize(x, (12, 16), align_corners=True, half_pixel_centers=False),
        ),
        "upsample:bilinear_align_corners_false": (
            lambda b, x: _named(b.add_upsample("up", 1.5, 2.0, x, "up", mode="BILINEAR", linear_upsample_mode="ALIGN_CORNERS_FALSE"), "up"),
            lambda x: _tf_resize(x, (12, 16)),
        ),
        "resizeBilinear": (
            lambda b, x: _named(b.add_resize_bilinear("r", x, "r", 11, 5, mode="UPSAMPLE_MODE"), "r"),
            lambda x: _tf_resize(x, (11, 5), half_pixel_centers=False),
        ),
        "resizeBilinear:strict_align": (
            lambda b, x: _named(b.add_resize_bilinear("r", x, "r", 11, 5, mode="STRICT_ALIGN_ENDPOINTS_MODE"), "r"),
            lambda x: _tf_resize(x, (11, 5), align_corners=True, half_pixel_centers=False),
        ),
        "cropResize": (
            lambda b, x: _named(
                b.add_crop_resize(
                    "c",
                    [_named(b.add_expand_dims("e", x, "e", axes=[0]), "e"), _const(b, ROIS.reshape(2, 1, 4, 1, 1), "roi")],
                    "c",
                    3,
                    4,
                    normalized_roi=True,
                ),
                "c",
            ),
            lambda x: np.stack(
                [_nchw(t().image.crop_and_resize(_nhwc(image[None]), ROIS, np.zeros(2, np.int32), (3, 4)).numpy()) for image in x]
            ),
        ),
        "crop": (lambda b, x: _named(b.add_crop("c", 1, 0, 2, 3, [], [x], "c"), "c"), lambda x: x[:, :, 2:5, 1:8]),
        "crop:like_second_input": (
            lambda b, x: _named(b.add_crop("c", 0, 0, 0, 0, [1, 2], [x, _const(b, np.zeros((1, 3, 5, 4)), "ref")], "c"), "c"),
            lambda x: x[:, :, 1:6, 2:6],
        ),
        "reorganizeData:depth_to_space": (
            lambda b, x: _named(b.add_reorganize_data("r", _four(b, x), "r", "DEPTH_TO_SPACE", 2), "r"),
            lambda x: _nchw(t().nn.depth_to_space(_nhwc(np.concatenate([x, x / 2, x, x / 2], 1)), 2).numpy()),
        ),
        "reorganizeData:space_to_depth": (
            lambda b, x: _named(b.add_reorganize_data("r", x, "r", "SPACE_TO_DEPTH", 2), "r"),
            lambda x: _nchw(t().nn.space_to_depth(_nhwc(x), 2).numpy()),
        ),
        "reorganizeData:pixel_shuffle": (
            lambda b, x: _named(b.add_reorganize_data("r", _four(b, x), "r", "PIXEL_SHUFFLE", 2), "r"),
            lambda x: _shuffle_loops(np.concatenate([x, x / 2, x, x / 2], 1), 2),
        ),
        # convolution, pooling
        "convolution": (
            lambda b, x: _named(
                b.add_convolution("c", 3, 4, 3, 3, 2, 1, "same", 1, W_CONV, None, False, input_name=x, output_name="c"), "c"
            ),
            lambda x: _nchw(t().nn.conv2d(_nhwc(x), W_CONV, [1, 2, 1, 1], "SAME").numpy()),
        ),
        "convolution:deconvolution_valid": (
            lambda b, x: _named(
                b.add_convolution("c", 3, 2, 3, 3, 2, 2, "valid", 1, W_DECONV, B2, True, is_deconv=True, input_name=x, output_name="c"), "c"
            ),
            lambda x: (
                _nchw(t().nn.conv2d_transpose(_nhwc(x), W_DECONV.transpose(0, 1, 3, 2), (len(x), 17, 17, 2), 2, "VALID").numpy())
                + B2.reshape(1, 2, 1, 1)
            ),
        ),
        "convolution:deconvolution_output_shape": (
            lambda b, x: _named(
                b.add_convolution(
                    "c",
                    3,
                    2,
                    3,
                    3,
                    2,
                    2,
                    "same",
                    1,
                    W_DECONV,
                    None,
                    False,
                    is_deconv=True,
                    output_shape=(16, 16),
                    input_name=x,
                    output_name="c",
                ),
                "c",
            ),
            lambda x: _nchw(t().nn.conv2d_transpose(_nhwc(x), W_DECONV.transpose(0, 1, 3, 2), (len(x), 16, 16, 2), 2, "SAME").numpy()),
        ),
        "pooling:l2": (
            lambda b, x: _named(b.add_pooling("p", 3, 2, 2, 2, "L2", "VALID", x, "p"), "p"),
            lambda x: _pool_loops(x, "l2", (3, 2), (2, 2), (0, 0, 0, 0)),
        ),
        "pooling:include_last_pixel": (
            lambda b, x: _named(
                b.add_pooling(
                    "p",
                    3,
                    3,
                    2,
                    2,
                    "AVERAGE",
                    "INCLUDE_LAST_PIXEL",
                    x,
                    "p",
                    exclude_pad_area=False,
                    padding_top=1,
                    padding_bottom=1,
                    padding_left=1,
                    padding_right=1,
                ),
                "p",
            ),
            lambda x: _pool_loops(x, "avg", (3, 3), (2, 2), (1, 1, 1, 1), ceil_mode=True),
        ),
        "pooling:max_same": (
            lambda b, x: _named(b.add_pooling("p", 3, 3, 2, 2, "MAX", "SAME", x, "p"), "p"),
            lambda x: _pool_loops(x, "max", (3, 3), (2, 2), (0, 1, 0, 1)),
        ),
        "pooling:global_average": (
            lambda b, x: _named(b.add_pooling("p", 0, 0, 1, 1, "AVERAGE", "VALID", x, "p", is_global=True), "p"),
            lambda x: x.mean((2, 3)),
        ),
        "convolution3d": (
            lambda b, x: _named(
                b.add_convolution3d(
                    "c",
                    1,
                    2,
                    2,
                    3,
                    3,
                    W_3D,
                    None,
                    False,
                    stride_height=2,
                    padding_mode="custom",
                    padding_back=1,
                    padding_top=1,
                    padding_bottom=1,
                    padding_right=2,
                    input_name=_named(b.add_expand_dims("e", x, "e", axes=[1]), "e"),
                    output_name="c",
                ),
                "c",
            ),
            lambda x: (
                t()
                .nn.conv3d(
                    np.pad(np.float32(x)[:, None], ((0, 0), (0, 0), (0, 1), (1, 1), (0, 2))).transpose(0, 2, 3, 4, 1),
                    W_3D.transpose(2, 3, 4, 1, 0),
                    [1, 1, 2, 1, 1],
                    "VALID",
                )
                .numpy()
                .transpose(0, 4, 1, 2, 3)
            ),
        ),
        "pooling3d": (
            lambda b, x: _named(
                b.add_pooling3d(
                    "p",
                    _named(b.add_expand_dims("e", x, "e", axes=[1]), "e"),
                    "p",
                    "AVERAGE",
                    2,
                    3,
                    2,
                    1,
                    2,
                    2,
                    padding_mode="custom",
                    custom_padding_front=1,
                    custom_padding_top=1,
                    custom_padding_bottom=1,
                    custom_padding_right=1,
                    average_pooling_count_excludes_padding=True,
                ),
                "p",
            ),
            lambda x: _pool_loops(x[:, None], "avg", (2, 3, 2), (1, 2, 2), (1, 0, 1, 1, 0, 1), exclude=True),
        ),
        "globalPooling3d": (
            lambda b, x: _named(b.add_global_pooling3d("p", _named(b.add_expand_dims("e", x, "e", axes=[1]), "e"), "p", "MAX"), "p"),
            lambda x: x.max((1, 2, 3)),
        ),
        "innerProduct": (
            lambda b, x: _named(
                b.add_inner_product(
                    "i",
                    W_CONV.reshape(27, 4).T[:, :3].copy(),
                    B2.repeat(2),
                    3,
                    4,
                    True,
                    _named(b.add_reduce_mean("m", x, "m", axes=[2, 3], keepdims=True), "m"),
                    "i",
                ),
                "i",
            ),
            lambda x: x.mean((2, 3)) @ W_CONV.reshape(27, 4)[:3] + B2.repeat(2),
        ),
        "batchedMatmul": (
            lambda b, x: _named(
                b.add_batched_mat_mul(
                    "m",
                    [x],
                    "m",
                    weight_matrix_rows=NN_SIDE,
                    weight_matrix_columns=2,
                    W=W_CONV.reshape(-1)[:16].reshape(NN_SIDE, 2),
                    bias=B2,
                ),
                "m",
            ),
            lambda x: x @ W_CONV.reshape(-1)[:16].reshape(NN_SIDE, 2) + B2,
        ),
        "flattenTo2D": (lambda b, x: _named(b.add_flatten_to_2d("f", x, "f", axis=2), "f"), lambda x: x.reshape(len(x) * 3, -1)),
    }


IDX = np.random.default_rng(5).integers(0, NN_SIDE, (1, 3, NN_SIDE, 3)).astype(np.float32)


def _logic(b, x, mode):
    positive = _named(b.add_greater_than("g", [x], "g"), "g")
    small = _named(b.add_less_than("l", [x], "l", alpha=0.5), "l")
    return _named(b.add_logical("o", [positive, small], "o", mode), "o")


def _topk(b, x, k, axis, bottom):
    b.add_topk("t", [x], ["tv", "ti"], k=k, axis=axis, use_bottom_k=bottom)
    return _named(b.add_concat_nd("c", ["tv", "ti"], "c", axis=axis), "c")


def _split_back(b, _layer, order, axis):
    return _named(b.add_concat_nd("back", order, "back", axis=axis), "back")


def _four(b, x):
    half = _named(b.add_elementwise("h4", [x], "h4", "MULTIPLY", alpha=0.5), "h4")
    return _named(b.add_concat_nd("f4", [x, half, x, half], "f4", axis=1), "f4")


def _shuffle_loops(x, f):
    n, c, h, w = x.shape
    out = np.zeros((n, c // (f * f), h * f, w * f))
    for ch, i, j in itertools.product(range(c // (f * f)), range(f), range(f)):
        out[:, ch, i::f, j::f] = x[:, ch * f * f + i * f + j]
    return out


@pytest.mark.parametrize("case", list(_cases()))
def test_nn_layer(tmp_path, case):
    build, reference = _cases()[case]
    pix = image_pixels(2, NN_SIDE, NN_SIDE)
    x = as_input(pix).astype(np.float64)
    want = np.asarray(reference(x), np.float64).reshape(len(x), -1)
    path = nn_file(tmp_path, build, want.shape[1])
    assert case.split(":")[0] in op_types(path), f"the file has no {case.split(':')[0]} layer"
    got = CoreMLExecutor(path).predict(pix)
    np.testing.assert_allclose(got, want, atol=OP_ATOL, rtol=OP_RTOL)


COVERS |= {name.split(":")[0] for name in _cases()}


def test_unknown_layer_is_refused_naming_it_the_file_and_the_list(tmp_path):
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    builder = NeuralNetworkBuilder(
        [("image", datatypes.Array(3, 4, 4))], [("probs", None)], mode="classifier", disable_rank5_shape_mapping=True
    )
    builder.add_copy("band", "image", "banded")
    builder.spec.neuralNetworkClassifier.layers[0].ClearField("copy")  # a type this proto does not know reads as none
    builder.add_softmax("softmax", "banded", "probs")
    builder.set_class_labels(["a", "b", "c"], predicted_feature_name="label", prediction_blob="probs")
    builder.set_pre_processing_parameters(image_input_names=["image"])
    path = tmp_path / "band.mlmodel"
    ct.utils.save_spec(builder.spec, str(path))
    with pytest.raises(UnsupportedOperationError) as info:
        CoreMLExecutor(path)
    message = str(info.value)
    assert "'band' has no layer type" in message and "band.mlmodel" in message and "README.md" in message
