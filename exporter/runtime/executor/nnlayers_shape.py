"""NeuralNetwork (.mlmodel) softmax, reduction and shape layers in numpy, each as ``NeuralNetwork.proto`` defines it."""

from __future__ import annotations

import numpy as np

from . import kernels
from .blob import bounded_count
from .nnlayers import LayerContext, axes_rule, layer
from .nnlayers_legacy import batch_first, file_order

# ------------------------------------------------------------------------------------------------ reductions, shapes
# NeuralNetwork's names for the shared reduction kernels
_REDUCE = {
    "reduceMean": "mean",
    "reduceSum": "sum",
    "reduceMax": "max",
    "reduceMin": "min",
    "reduceProd": "prod",
    "reduceSumSquare": "sum_square",
    "reduceL1": "l1_norm",
    "reduceL2": "l2_norm",
}


def _reduce_builder(fn):
    def build(p, ctx: LayerContext):
        axes = [int(a) for a in p.axes]

        def run(inputs):
            x = inputs[0]
            a = None if p.reduceAll or not axes else tuple(v % x.ndim for v in axes)
            return np.asarray(fn(x, a, bool(p.keepDims)))

        return run, axes_rule(axes, p.reduceAll)

    return build


for _name, _kernel in _REDUCE.items():
    layer(_name)(_reduce_builder(kernels.REDUCTIONS[_kernel]))


@layer("transpose")
def _transpose(p, ctx: LayerContext):
    axes = [int(a) for a in p.axes]
    return (lambda inputs: np.transpose(inputs[0], axes)), (lambda shapes: axes[0] == 0)


@layer("reshapeStatic")
def _reshape_static(p, ctx: LayerContext):
    target = [int(s) for s in p.targetShape]

    # a target that infers another axis (-1 after the first, as [1, -1] flattening) cannot also infer the batch axis:
    # such a reshape runs image by image, with the file's shape
    inferred = -1 in target[1:]

    def run(inputs):
        x = inputs[0]
        shape = list(target)
        if ctx.batched and shape and shape[0] == 1 and not inferred:
            # the batch axis, 1 in the file, N here: inferred from the size, since the input's first axis need not
            # be the batch (Dense on 4-D input reshapes (1, H, W, C) to (H*W, C) and back)
            shape[0] = -1
        return x.reshape(shape)

    return run, lambda shapes: bool(target) and target[0] in (1, -1) and not inferred


@layer("flattenTo2D")
def _flatten_2d(p, ctx: LayerContext):
    axis = int(p.axis)

    def run(inputs):
        x = inputs[0]
        a = axis % x.ndim if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:a])), -1)

    return run, lambda shapes: axis % len(shapes[0]) != 0


@layer("flatten")
def _flatten(p, ctx: LayerContext):
    def run(inputs):
        x = inputs[0]
        if p.mode == 1:  # CHANNEL_LAST: flatten in (H, W, C) order
            x = np.moveaxis(x, -3, -1)
        return x.reshape(x.shape[:-3] + (-1, 1, 1))

    return run, lambda shapes: len(shapes[0]) > 3


@layer("squeeze")
def _squeeze(p, ctx: LayerContext):
    axes = [int(a) for a in p.axes]

    def run(inputs):
        x = inputs[0]
        if p.squeezeAll:
            return np.squeeze(x)
        return np.squeeze(x, axis=tuple(a % x.ndim for a in axes))

    return run, axes_rule(axes, p.squeezeAll)


@layer("expandDims")
def _expand_dims(p, ctx: LayerContext):
    axes = [int(a) for a in p.axes]

    def run(inputs):
        rank = inputs[0].ndim + len(axes)
        return np.expand_dims(inputs[0], tuple(sorted(a % rank for a in axes)))

    return run, lambda shapes: all(a % (len(shapes[0]) + len(axes)) != 0 for a in axes)


@layer("concat")
def _concat(p, ctx: LayerContext):
    """Along the channel axis (-3), or with ``sequenceConcat`` along the sequence axis of rank-5 blobs (-5 in the
    file's order; see nnlayers_legacy for the executor's)."""
    if p.sequenceConcat:

        def sequence(inputs):
            return file_order(np.concatenate([batch_first(x, ctx) for x in inputs], axis=1), ctx)

        return sequence, lambda shapes: ctx.rank5
    return (lambda inputs: np.concatenate(inputs, axis=-3)), (lambda shapes: len(shapes[0]) > 3)


@layer("concatND")
def _concat_nd(p, ctx: LayerContext):
    """Inputs joined along ``axis``; with ``interleave`` (iOS 14; inputs of one shape) one slice of each in turn."""
    axis = int(p.axis)

    def run(inputs):
        if not p.interleave:
            return np.concatenate(inputs, axis=axis)
        if any(x.shape != inputs[0].shape for x in inputs):
            raise ctx.fail(f"interleaves inputs of shapes {[x.shape for x in inputs]}; they must be one shape")
        a = axis % inputs[0].ndim
        stacked = np.stack(inputs, axis=a + 1)  # slice i of every input, then slice i + 1 ...
        return stacked.reshape(inputs[0].shape[:a] + (-1,) + inputs[0].shape[a + 1 :])

    return run, lambda shapes: axis % len(shapes[0]) != 0


@layer("sliceStatic")
def _slice_static(p, ctx: LayerContext):
    begin, end = [int(v) for v in p.beginIds], [int(v) for v in p.endIds]
    rank = len(begin)
    begin_mask = list(p.beginMasks) or [False] * rank
    end_mask = list(p.endMasks) or [False] * rank
    strides = [int(v) for v in p.strides] or [1] * rank
    squeeze = list(p.squeezeMasks) or [False] * rank
    index = tuple(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], strides[i]) for i in range(rank))
    drop = tuple(i for i in range(rank) if squeeze[i])

    def run(inputs):
        out = inputs[0][index]
        return out.squeeze(axis=drop) if drop else out

    def rule(shapes) -> bool:
        return (begin_mask[0] or begin[0] == 0) and end_mask[0] and strides[0] == 1 and not squeeze[0]

    return run, rule


@layer("tile")
def _tile(p, ctx: LayerContext):
    """The input repeated ``reps`` times along its last axes (the second input's values, when there is one)."""
    static = [int(r) for r in p.reps]

    def run(inputs):
        x = inputs[0]
        raw = np.asarray(inputs[1]).reshape(-1) if len(inputs) > 1 else np.asarray(static)
        reps = [int(r) for r in raw]
        if not 1 <= len(reps) <= x.ndim or any(r < 1 for r in reps) or np.any(raw != np.asarray(reps)):
            raise ctx.fail(f"has reps {raw.tolist()}; it needs 1 to {x.ndim} whole positive counts")
        lead = x.ndim - len(reps)
        bounded_count(
            x.shape[:lead] + tuple(d * r for d, r in zip(x.shape[lead:], reps, strict=True)), ctx.where, f"tile {ctx.name!r} output"
        )
        return np.tile(x, reps)

    return run, lambda shapes: len(shapes) == 1 and (len(static) < len(shapes[0]) or static[0] == 1)
