"""NeuralNetwork (.mlmodel) layers of specification 4 and later (iOS 13+): elementwise unary functions, comparisons
and logical layers (which output 1.0 or 0.0), gathers, selections, sorting and the N-D tensor manipulations, in numpy,
each as ``NeuralNetwork.proto`` defines it."""

from __future__ import annotations

import numpy as np

from . import kernels
from .nnlayers import F32, LayerContext, always, axes_rule, layer

L2_NORMALIZE_EPSILON = 1e-6  # NeuralNetwork.proto: l2normalize epsilon when not set


def _one(fn):
    """A builder for a parameterless one-input layer computing ``fn(x)``."""

    def build(p, ctx: LayerContext):
        return (lambda inputs: fn(inputs[0])), always

    return build


def _erf(x):
    from scipy.special import erf

    return erf(x).astype(F32)


for _name, _fn in {
    **kernels.UNARY_FUNCTIONS,
    "ceil": np.ceil,
    "floor": np.floor,
    "round": np.round,
    "tanh": np.tanh,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "erf": _erf,
}.items():
    layer(_name)(_one(_fn))


@layer("clampedReLU")
def _clamped_relu(p, ctx: LayerContext):
    """``min(beta, x)`` for ``x >= 0``, ``min(beta, alpha * x)`` otherwise."""
    alpha, beta = F32(p.alpha), F32(p.beta)
    return (lambda inputs: np.minimum(np.where(inputs[0] >= 0, inputs[0], alpha * inputs[0]), beta)), always


# ------------------------------------------------------------------------------------------------ comparisons, logic
def _compare(fn):
    """x1 (op) x2, or x1 (op) alpha with one input; 1.0 where true, 0.0 elsewhere."""

    def build(p, ctx: LayerContext):
        alpha = F32(p.alpha)

        def run(inputs):
            other = inputs[1] if len(inputs) > 1 else alpha
            return fn(inputs[0], other).astype(F32)

        return run, always

    return build


for _name, _fn in {
    "equal": np.equal,
    "notEqual": np.not_equal,
    "lessThan": np.less,
    "lessEqual": np.less_equal,
    "greaterThan": np.greater,
    "greaterEqual": np.greater_equal,
}.items():
    layer(_name)(_compare(_fn))


def _logical(fn):
    """Inputs are false where 0.0, true elsewhere; the output is 1.0 or 0.0."""

    def build(p, ctx: LayerContext):
        return (lambda inputs: fn(*[x != 0 for x in inputs]).astype(F32)), always

    return build


layer("logicalAnd")(_logical(np.logical_and))
layer("logicalOr")(_logical(np.logical_or))
layer("logicalXor")(_logical(np.logical_xor))
layer("logicalNot")(_logical(np.logical_not))


def _binary(fn):
    def build(p, ctx: LayerContext):
        return (lambda inputs: fn(inputs[0], inputs[1])), always

    return build


layer("modBroadcastable")(_binary(np.mod))
layer("floorDivBroadcastable")(_binary(lambda x, y: np.floor(x / y)))


@layer("whereBroadcastable")
def _where(p, ctx: LayerContext):
    """``x2`` where ``x1`` is non-zero, ``x3`` elsewhere, broadcast together."""
    return (lambda inputs: np.where(inputs[0] != 0, inputs[1], inputs[2])), always


# ------------------------------------------------------------------------------------------------ gathers, sorting
def _indices(x, size: int, ctx: LayerContext) -> np.ndarray:
    """Float index values as integers; negative ones count from the end."""
    index = np.asarray(x).astype(np.int64)
    if index.size and (index.min() < -size or index.max() >= size):
        raise ctx.fail(f"has an index outside [-{size}, {size})")
    return index


@layer("gather")
def _gather(p, ctx: LayerContext):
    axis = int(p.axis)

    def run(inputs):
        x = inputs[0]
        a = axis % x.ndim
        return np.take(x, _indices(inputs[1], x.shape[a], ctx), axis=a)

    return run, lambda shapes: axis % len(shapes[0]) != 0


@layer("gatherAlongAxis")
def _gather_along_axis(p, ctx: LayerContext):
    axis = int(p.axis)

    def run(inputs):
        x = inputs[0]
        a = axis % x.ndim
        return np.take_along_axis(x, _indices(inputs[1], x.shape[a], ctx), axis=a)

    return run, lambda shapes: axis % len(shapes[0]) != 0


@layer("gatherND")
def _gather_nd(p, ctx: LayerContext):
    """``out[i] = x[indices[i]]``, each index addressing the first ``indices.shape[-1]`` axes."""

    def run(inputs):
        x, indices = inputs[0], np.asarray(inputs[1]).astype(np.int64)
        depth = indices.shape[-1]
        flat = indices.reshape(-1, depth)
        for axis in range(depth):
            _indices(flat[:, axis], x.shape[axis], ctx)
        return x[tuple(flat.T)].reshape(indices.shape[:-1] + x.shape[depth:])

    return run, lambda shapes: False


def _order(x: np.ndarray, axis: int, ascending: bool) -> np.ndarray:
    return np.argsort(x if ascending else -x, axis=axis, kind="stable")


@layer("topK")
def _topk(p, ctx: LayerContext):
    """The K largest values (``useBottomK``: smallest) along ``axis`` and their indices (as floats); K from the
    second input when there is one."""
    axis = int(p.axis)

    def run(inputs):
        x = inputs[0]
        a = axis % x.ndim
        k = int(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 else int(p.K)
        index = np.take(_order(x, a, bool(p.useBottomK)), np.arange(k), axis=a)
        return [np.take_along_axis(x, index, axis=a), index.astype(F32)]

    return run, lambda shapes: axis % len(shapes[0]) != 0


def _arg(pick):
    def build(p, ctx: LayerContext):
        axis = int(p.axis)

        def run(inputs):
            x = inputs[0]
            a = axis % x.ndim
            out = pick(x, axis=a).astype(F32)
            return out if p.removeDim else np.expand_dims(out, a)

        return run, lambda shapes: axis % len(shapes[0]) != 0

    return build


layer("argMax")(_arg(np.argmax))
layer("argMin")(_arg(np.argmin))


@layer("argSort")
def _argsort(p, ctx: LayerContext):
    axis = int(p.axis)

    def run(inputs):
        x = inputs[0]
        return _order(x, axis % x.ndim, not p.descending).astype(F32)

    return run, lambda shapes: axis % len(shapes[0]) != 0


@layer("cumSum")
def _cumsum(p, ctx: LayerContext):
    """Running sum along ``axis``; ``excludeFinalSum`` shifts it by one (starting from 0), ``reverse`` runs from the
    end."""

    def run(inputs):
        x = inputs[0]
        axis = int(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 else int(p.axis)  # the second input, if any
        if not -x.ndim <= axis < x.ndim:
            raise ctx.fail(f"has axis {axis} outside a rank-{x.ndim} input")
        a = axis % x.ndim
        if p.reverse:
            x = np.flip(x, axis=a)
        out = np.cumsum(x, axis=a, dtype=F32)
        if p.excludeFinalSum:
            out = np.concatenate([np.zeros_like(np.take(out, [0], axis=a)), np.take(out, np.arange(x.shape[a] - 1), axis=a)], axis=a)
        return np.flip(out, axis=a) if p.reverse else out

    return run, lambda shapes: len(shapes) == 1 and int(p.axis) % len(shapes[0]) != 0


def _reduce_axes(p, x):
    axes = [int(a) for a in p.axes]
    return None if p.reduceAll or not axes else tuple(a % x.ndim for a in axes)


@layer("reduceLogSum")
def _reduce_log_sum(p, ctx: LayerContext):
    def run(inputs):
        x = inputs[0]
        return np.log(kernels.REDUCTIONS["sum"](x, _reduce_axes(p, x), bool(p.keepDims)))

    return run, axes_rule([int(a) for a in p.axes], p.reduceAll)


@layer("reduceLogSumExp")
def _reduce_log_sum_exp(p, ctx: LayerContext):
    """``log(sum(exp(x)))``, computed around the maximum so that large values do not overflow."""

    def run(inputs):
        x = inputs[0]
        axes = _reduce_axes(p, x)
        axes = tuple(range(x.ndim)) if axes is None else axes
        top = x.max(axis=axes, keepdims=True)
        out = np.log(np.exp(x - top).sum(axis=axes, keepdims=True, dtype=F32)) + top
        return out if p.keepDims else np.squeeze(out, axis=axes)

    return run, axes_rule([int(a) for a in p.axes], p.reduceAll)


# ------------------------------------------------------------------------------------------------ tensor manipulation
@layer("stack")
def _stack(p, ctx: LayerContext):
    axis = int(p.axis)
    return (lambda inputs: np.stack(inputs, axis=axis)), (lambda shapes: axis % (len(shapes[0]) + 1) != 0)


@layer("reverse")
def _reverse(p, ctx: LayerContext):
    """Flips the axes whose ``reverseDim`` flag is set (all of them when no flags are given)."""
    flags = [bool(v) for v in p.reverseDim]

    def run(inputs):
        x = inputs[0]
        axes = tuple(i for i, f in enumerate(flags) if f) if flags else tuple(range(x.ndim))
        return np.flip(x, axis=axes)

    return run, lambda shapes: not flags or not flags[0]


@layer("getShape")
def _get_shape(p, ctx: LayerContext):
    return (lambda inputs: np.asarray(inputs[0].shape, F32)), (lambda shapes: False)


@layer("fillLike")
def _fill_like(p, ctx: LayerContext):
    value = F32(p.value)
    return (lambda inputs: np.full(inputs[0].shape, value, F32)), always


@layer("fillStatic")
def _fill_static(p, ctx: LayerContext):
    value, shape = F32(p.value), [int(s) for s in p.targetShape]
    return (lambda inputs: np.full(shape, value, F32)), always


@layer("fillDynamic")
def _fill_dynamic(p, ctx: LayerContext):
    value = F32(p.value)
    return (lambda inputs: np.full([int(s) for s in np.asarray(inputs[0]).reshape(-1)], value, F32)), (lambda shapes: False)


@layer("rangeStatic")
def _range_static(p, ctx: LayerContext):
    start, end, step = float(p.startValue), float(p.endValue), float(p.stepSizeValue)
    return (lambda inputs: np.arange(start, end, step, dtype=F32)), always


@layer("broadcastToStatic")
def _broadcast_static(p, ctx: LayerContext):
    shape = [int(s) for s in p.targetShape]
    return (lambda inputs: np.broadcast_to(inputs[0], shape).copy()), (lambda shapes: False)


@layer("broadcastToLike")
def _broadcast_like(p, ctx: LayerContext):
    return (lambda inputs: np.broadcast_to(inputs[0], inputs[1].shape).copy()), (lambda shapes: False)


@layer("reshapeLike")
def _reshape_like(p, ctx: LayerContext):
    return (lambda inputs: inputs[0].reshape(inputs[1].shape)), (lambda shapes: False)


@layer("reshapeDynamic")
def _reshape_dynamic(p, ctx: LayerContext):
    def run(inputs):
        return inputs[0].reshape([int(s) for s in np.asarray(inputs[1]).reshape(-1)])

    return run, lambda shapes: False


@layer("rankPreservingReshape")
def _rank_preserving_reshape(p, ctx: LayerContext):
    """A reshape to ``targetShape`` of the input's rank: 0 keeps the dimension, -1 is inferred."""
    target = [int(s) for s in p.targetShape]

    def run(inputs):
        x = inputs[0]
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
        return x.reshape(shape)

    return run, lambda shapes: bool(target) and target[0] in (0, -1)


@layer("splitND")
def _split_nd(p, ctx: LayerContext):
    axis = int(p.axis)
    sizes = [int(s) for s in p.splitSizes]

    def run(inputs):
        x = inputs[0]
        if sizes:
            return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))
        return list(np.split(x, int(p.numSplits), axis=axis))

    return run, lambda shapes: axis % len(shapes[0]) != 0


def _mask(inputs, index: int, static, rank: int) -> list[bool]:
    if len(inputs) > index:
        return [bool(v) for v in np.asarray(inputs[index]).reshape(-1)]
    return [bool(v) for v in static] or [False] * rank


@layer("sliceDynamic")
def _slice_dynamic(p, ctx: LayerContext):
    """As sliceStatic, with begin (and, when given, end, strides) read from the second (third, fourth) input."""

    def run(inputs):
        x = inputs[0]
        rank = x.ndim
        begin = [int(v) for v in np.asarray(inputs[1]).reshape(-1)]
        end = [int(v) for v in np.asarray(inputs[2]).reshape(-1)] if len(inputs) > 2 else [int(v) for v in p.endIds]
        strides = [int(v) for v in np.asarray(inputs[3]).reshape(-1)] if len(inputs) > 3 else ([int(v) for v in p.strides] or [1] * rank)
        # the fifth to seventh inputs, when present, replace beginMasks, endMasks and squeezeMasks
        begin_mask = _mask(inputs, 4, p.beginMasks, rank)
        end_mask = _mask(inputs, 5, p.endMasks, rank)
        squeeze = _mask(inputs, 6, p.squeezeMasks, rank)
        if not len(begin) == len(end) == len(strides) == len(begin_mask) == len(end_mask) == len(squeeze) == rank:
            raise ctx.fail(f"needs begin, end, strides and masks of the input's rank {rank}")
        index = tuple(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], strides[i]) for i in range(rank))
        out = x[index]
        drop = tuple(i for i in range(rank) if squeeze[i])
        return out.squeeze(axis=drop) if drop else out

    return run, lambda shapes: False


@layer("sliceBySize")
def _slice_by_size(p, ctx: LayerContext):
    """``size`` values along ``axis`` from the begin index given by the second input."""
    axis, size = int(p.axis), int(p.size)

    def run(inputs):
        x = inputs[0]
        begin = int(np.asarray(inputs[1]).reshape(-1)[0])
        index = [slice(None)] * x.ndim
        index[axis] = slice(begin, begin + size)
        return x[tuple(index)]

    return run, lambda shapes: axis % len(shapes[0]) != 0


@layer("l2normalize")
def _l2_normalize(p, ctx: LayerContext):
    """``x / sqrt(sum(x^2) + epsilon)`` over the last three axes."""
    eps = F32(p.epsilon or L2_NORMALIZE_EPSILON)

    def run(inputs):
        x = inputs[0]
        return x / np.sqrt((x * x).sum(axis=(-3, -2, -1), keepdims=True, dtype=F32) + eps)

    return run, lambda shapes: len(shapes[0]) > 3
