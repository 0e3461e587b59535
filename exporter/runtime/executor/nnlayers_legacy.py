"""NeuralNetwork (.mlmodel) layers of specifications 1-3 (iOS 11-12) that address the rank-5 blob ``[Seq, Batch, C,
H, W]`` by its notational axes: permute, reshape, reduce, embedding, dot and sequenceRepeat, in numpy, each as
``NeuralNetwork.proto`` defines it.

In a file with the rank-5 image layout the executor holds rank-5 blobs batch first, ``(Batch, Seq, C, H, W)`` (see
neuralnetwork); in a rank-4 file a rank-5 blob is in the file's order. ``batch_first`` and ``file_order`` convert
between the two, so each layer computes on ``(Batch, Seq, ...)``.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .blob import bounded_count
from .nnlayers import F32, LayerContext, layer

REDUCE_LOGSUM_EPSILON = 1e-6  # NeuralNetwork.proto: reduce epsilon (LOGSUM) "defaults to 1e-6 if not set or is set to 0"
RESHAPE_CHANNEL_LAST = 1  # ReshapeLayerParams.ReshapeOrder
# ReduceLayerParams.ReduceAxis -> the axes it names: CHW, HW, C, H, W
REDUCE_AXES = {0: (-3, -2, -1), 1: (-2, -1), 2: (-3,), 3: (-2,), 4: (-1,)}
# ReduceLayerParams.ReduceOperation -> shared reduction kernels (LOGSUM and ARGMAX are computed below)
REDUCE_KERNELS = {0: "sum", 1: "mean", 2: "prod", 4: "sum_square", 5: "l1_norm", 6: "l2_norm", 7: "max", 8: "min"}
REDUCE_LOGSUM, REDUCE_ARGMAX = 3, 9


def batch_first(x: np.ndarray, ctx: LayerContext) -> np.ndarray:
    """A rank-5 input as (Batch, Seq, C, H, W)."""
    if x.ndim != 5:
        raise ctx.unsupported(f"gets a rank-{x.ndim} input; NeuralNetwork.proto defines it on rank-5 blobs [Seq, Batch, C, H, W]")
    return x if ctx.rank5 else np.swapaxes(x, 0, 1)


def file_order(y: np.ndarray, ctx: LayerContext) -> np.ndarray:
    """A (Batch, Seq, C, H, W) result in the order the executor holds rank-5 blobs of this file."""
    return y if ctx.rank5 else np.swapaxes(y, 0, 1)


@layer("permute")
def _permute(p, ctx: LayerContext):
    """The axes ``[Seq, C, H, W]`` reordered as ``axis`` says; the batch axis stays where it is."""
    axes = [int(a) for a in p.axis] or [0, 1, 2, 3]
    if sorted(axes) != [0, 1, 2, 3]:
        raise ctx.fail(f"has axis {axes}; NeuralNetwork.proto says a permutation of [0, 1, 2, 3]")
    order = [0] + [1 + a for a in axes]

    def run(inputs):
        return file_order(np.transpose(batch_first(inputs[0], ctx), order), ctx)

    return run, lambda shapes: ctx.rank5 or axes[0] == 0


@layer("reshape")
def _reshape(p, ctx: LayerContext):
    """Each image's ``[Seq, C, H, W]`` (with a 3-long ``targetShape``, each sequence step's ``[C, H, W]``) laid out
    again as ``targetShape``: in row-major order (CHANNEL_FIRST), or flattened as (H, W, C), reshaped to (H_out,
    W_out, C_out) and permuted back (CHANNEL_LAST)."""
    target = [int(v) for v in p.targetShape]
    if len(target) not in (3, 4) or any(v <= 0 for v in target):
        raise ctx.fail(f"has target shape {target}; NeuralNetwork.proto says 3 or 4 positive sizes")
    if p.mode not in (0, RESHAPE_CHANNEL_LAST):
        raise ctx.unsupported(f"uses reshape order {p.mode}, which NeuralNetwork.proto does not define")
    last = p.mode == RESHAPE_CHANNEL_LAST

    def run(inputs):
        x = batch_first(inputs[0], ctx)
        batch, seq = x.shape[:2]
        shape = ([seq] + target) if len(target) == 3 else target
        if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
            raise ctx.fail(f"reshapes {list(x.shape[1:])} (Seq, C, H, W) to {shape}, a different number of values")
        if last:
            flat = np.transpose(x, (0, 1, 3, 4, 2))  # (Batch, Seq, H, W, C)
            out = flat.reshape(batch, shape[0], shape[2], shape[3], shape[1])
            return file_order(np.transpose(out, (0, 1, 4, 2, 3)), ctx)
        return file_order(x.reshape([batch] + shape), ctx)

    return run, lambda shapes: ctx.rank5 or len(target) == 3


@layer("reduce")
def _reduce(p, ctx: LayerContext):
    """SUM, AVG, PROD, LOGSUM (``sum(log(x + epsilon))``), SUMSQUARE, L1, L2, MAX, MIN or ARGMAX over the axes
    ``axis`` names (CHW, HW, C, H or W), each kept with size 1."""
    axes = REDUCE_AXES.get(p.axis)
    if axes is None:
        raise ctx.unsupported(f"uses reduce axis {p.axis}, which NeuralNetwork.proto does not define")
    mode = int(p.mode)
    if mode not in REDUCE_KERNELS and mode not in (REDUCE_LOGSUM, REDUCE_ARGMAX):
        raise ctx.unsupported(f"uses reduce operation {mode}, which NeuralNetwork.proto does not define")
    if mode == REDUCE_ARGMAX and len(axes) != 1:
        raise ctx.fail("takes ARGMAX over several axes; NeuralNetwork.proto allows it over C, H or W only")
    eps = F32(p.epsilon or REDUCE_LOGSUM_EPSILON)

    def run(inputs):
        x = inputs[0]
        if x.ndim < len(axes):
            raise ctx.fail(f"reduces {len(axes)} trailing axes of a rank-{x.ndim} input")
        if mode == REDUCE_ARGMAX:
            return np.expand_dims(np.argmax(x, axis=axes[0]), axes[0]).astype(F32)
        if mode == REDUCE_LOGSUM:
            return np.log(x + eps).sum(axis=axes, keepdims=True, dtype=F32)
        return np.asarray(kernels.REDUCTIONS[REDUCE_KERNELS[mode]](x, axes, True))

    return run, lambda shapes: len(shapes[0]) > len(axes)


def lookup_rows(table: np.ndarray, index, ctx: LayerContext) -> np.ndarray:
    """Rows of ``table`` (vocabulary x size) for the float index values, cast to integers (truncated, as the
    NeuralNetwork gather layers cast theirs); one outside the vocabulary is refused (Core ML leaves it undefined)."""
    rows = np.asarray(index).astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= len(table)):
        raise ctx.fail(f"gets an index outside [0, {len(table) - 1}]")
    bounded_count(rows.shape + table.shape[1:], ctx.where, f"{ctx.kind} {ctx.name!r} output")
    return table[rows]


@layer("embedding")
def _embedding(p, ctx: LayerContext):
    """Input (x1, 1, 1, 1) or (x1, x2, 1, 1, 1) of indices into ``inputDim`` rows: output (x1[, x2], outputChannels,
    1, 1), each the weight column of its index (plus the bias)."""
    dim, channels = int(p.inputDim), int(p.outputChannels)
    table = ctx.weights(p.weights, (channels, dim)).T.copy()  # [outputChannels, inputDim] stored: one row per index
    if p.hasBias:
        table = table + ctx.weights(p.bias, (channels,))

    def run(inputs):
        x = inputs[0]
        if x.ndim not in (4, 5) or x.shape[-3:] != (1, 1, 1):
            raise ctx.fail(f"gets shape {x.shape}; NeuralNetwork.proto says rank 4 or 5 with the last three axes 1")
        out = lookup_rows(table, x.reshape(x.shape[:-3]), ctx)
        return out.reshape(x.shape[:-3] + (channels, 1, 1))

    return run, lambda shapes: len(shapes[0]) >= 4


@layer("dot")
def _dot(p, ctx: LayerContext):
    """``sum(x1 * x2)`` over the channel axis of two [..., C, 1, 1] blobs (each divided by its L2 norm first with
    ``cosineSimilarity``): [..., 1, 1, 1]."""

    def run(inputs):
        a, b = inputs
        if a.shape != b.shape or a.ndim < 3 or a.shape[-2:] != (1, 1):
            raise ctx.fail(f"gets shapes {a.shape} and {b.shape}; NeuralNetwork.proto says two equal [..., C, 1, 1]")
        if p.cosineSimilarity:
            a = a / np.sqrt((a * a).sum(axis=-3, keepdims=True, dtype=F32))
            b = b / np.sqrt((b * b).sum(axis=-3, keepdims=True, dtype=F32))
        return (a * b).sum(axis=-3, keepdims=True, dtype=F32)

    return run, lambda shapes: len(shapes[0]) > 3


@layer("sequenceRepeat")
def _sequence_repeat(p, ctx: LayerContext):
    """The sequence repeated ``nRepetitions`` times (``[n * Seq, Batch, C, H, W]``)."""
    count = int(p.nRepetitions) or 1

    def run(inputs):
        x = batch_first(inputs[0], ctx)
        bounded_count((x.shape[0], x.shape[1] * count) + x.shape[2:], ctx.where, f"sequenceRepeat {ctx.name!r} output")
        return file_order(np.tile(x, (1, count, 1, 1, 1)), ctx)

    return run, lambda shapes: ctx.rank5
