"""ML Program convolution, pooling, matrix products, normalisation, softmax and reductions in numpy
(MIL opsets iOS15-iOS18), each as its MIL definition states it."""

from __future__ import annotations

import numpy as np

from . import blas, kernels, kernels_nd
from .mil_elementwise import F32, scalar
from .plan import FUSED_RELU
from .registry import OpCall, always, axes_exclude_batch, op


# ------------------------------------------------------------------------------------------------ convolution, pooling
def _ints(c: OpCall, key: str, rank: int, default: int) -> list[int]:
    """A per-spatial-axis parameter (strides, dilations, kernel_sizes) of ``rank`` values."""
    value = c.const(key, None)
    if value is None:
        return [default] * rank
    value = [int(v) for v in (value if isinstance(value, list) else [value])]
    if len(value) != rank:
        raise c.fail(f"has {len(value)} {key} for {rank} spatial axes")
    return value


def _pads(c: OpCall, spatial, kernel, strides, dilations) -> list[int]:
    """Flat (before, after) padding per spatial axis, from pad_type (valid, same, same_lower, custom) and pad."""
    pad_type = c.const("pad_type", "valid")
    rank = len(spatial)
    if pad_type == "valid":
        return [0] * (2 * rank)
    if pad_type in ("same", "same_lower"):
        return kernels_nd.same_pads(spatial, kernel, strides, dilations, pad_type == "same_lower")
    if pad_type == "custom":
        pad = [int(p) for p in c.const("pad", [0] * (2 * rank))]
        if len(pad) != 2 * rank:
            raise c.fail(f"has {len(pad)} pad values for {rank} spatial axes")
        return pad
    raise c.unsupported(f"has unknown pad_type {pad_type!r}")


def _spatial_rank(c: OpCall, x) -> int:
    rank = x.ndim - 2
    if not 1 <= rank <= 3:
        raise c.unsupported(f"gets a rank-{x.ndim} input; 1 to 3 spatial axes are defined")
    return rank


def _conv_params(c: OpCall, spatial, kernel) -> tuple:
    """(strides, dilations, pads, groups) of a conv, read from its constants once per input size."""
    key = ("params", tuple(spatial))
    if key not in c.cache:
        rank = len(spatial)
        strides = _ints(c, "strides", rank, 1)
        dilations = _ints(c, "dilations", rank, 1)
        c.cache[key] = (strides, dilations, _pads(c, spatial, kernel, strides, dilations), int(c.const("groups", 1)))
    return c.cache[key]


@op("conv", batch=always, fresh=True)
def _conv(c: OpCall):
    x, weight = c["x"], c["weight"]
    _spatial_rank(c, x)
    if weight.ndim != x.ndim:
        raise c.fail(f"has a rank-{weight.ndim} kernel for a rank-{x.ndim} input")
    strides, dilations, pads, groups = _conv_params(c, x.shape[2:], weight.shape[2:])
    cache = c.cache if c.is_const("weight") else None
    if c.has(FUSED_RELU):  # plan.fuse_relus: x is the input of a relu (relu6) this conv applies (2-D only)
        args = (tuple(strides), tuple(dilations), tuple(pads), groups, cache, c.const(FUSED_RELU))
        return kernels.conv2d(x, np.asarray(weight, F32), c.get("bias"), *args)
    return kernels_nd.conv(x, np.asarray(weight, F32), c.get("bias"), strides, dilations, pads, groups, cache)


@op("conv_transpose", batch=always)
def _conv_transpose(c: OpCall):
    """MIL conv_transpose: output ``(D - 1) * stride + (K - 1) * dilation + 1`` less the padding; ``same`` gives
    ``D * stride`` (the padding of the convolution it transposes, its odd pixel after); ``output_shape`` fixes the
    size."""
    x, weight = c["x"], np.asarray(c["weight"], F32)
    rank = _spatial_rank(c, x)
    kernel = weight.shape[2:]
    strides = _ints(c, "strides", rank, 1)
    dilations = _ints(c, "dilations", rank, 1)
    full = [(d - 1) * s + (k - 1) * dl + 1 for d, s, k, dl in zip(x.shape[2:], strides, kernel, dilations, strict=True)]
    output_shape = c.const("output_shape", None)
    target = None if output_shape is None else [int(v) for v in output_shape][-rank:]
    pad_type = c.const("pad_type", "valid")
    if pad_type == "valid":
        crop = [0] * (2 * rank)
    elif pad_type == "custom":
        crop = [int(p) for p in c.const("pad", [0] * (2 * rank))]
    elif pad_type in ("same", "same_lower"):
        out = target or [d * s for d, s in zip(x.shape[2:], strides, strict=True)]
        crop = []
        for size, f in zip(out, full, strict=True):
            total = max(f - size, 0)
            small = total // 2
            crop.extend((total - small, small) if pad_type == "same_lower" else (small, total - small))
    else:
        raise c.unsupported(f"has unknown pad_type {pad_type!r}")
    return kernels_nd.conv_transpose(x, weight, c.get("bias"), strides, dilations, crop, int(c.const("groups", 1)), target)


def _pool_params(c: OpCall, kind: str, spatial: tuple[int, ...]) -> tuple:
    """(kernel, strides, pads, exclude, ceil_mode, fast) of a pooling op for one input size; ``fast`` when the 2-D
    kernel computes exactly this (its output size is the floor one)."""
    key = ("pool", spatial)
    if key not in c.cache:
        rank = len(spatial)
        kernel = _ints(c, "kernel_sizes", rank, 1)
        strides = _ints(c, "strides", rank, 1)
        pads = _pads(c, spatial, kernel, strides, [1] * rank)
        ceil_mode = bool(c.const("ceil_mode", False))
        exclude = bool(c.const("exclude_padding_from_average", False))
        fast = (
            rank == 2
            and kind != "l2"
            and all(
                kernels_nd.pool_output_size(spatial[i], kernel[i], strides[i], pads[2 * i], pads[2 * i + 1], ceil_mode)
                == kernels.output_size(spatial[i], kernel[i], strides[i], 1, pads[2 * i], pads[2 * i + 1])
                for i in range(2)
            )
        )
        c.cache[key] = (kernel, strides, pads, exclude, ceil_mode, fast)
    return c.cache[key]


def _pool(c: OpCall, kind: str):
    x = c["x"]
    _spatial_rank(c, x)
    kernel, strides, pads, exclude, ceil_mode, fast = _pool_params(c, kind, x.shape[2:])
    if fast:
        return kernels.pool2d(x, kind, tuple(kernel), tuple(strides), tuple(pads), exclude, c.cache)
    return kernels_nd.pool(x, kind, kernel, strides, pads, exclude, ceil_mode)


@op("max_pool", batch=always, fresh=True)
def _max_pool(c: OpCall):
    return _pool(c, "max")


@op("avg_pool", batch=always, fresh=True)
def _avg_pool(c: OpCall):
    return _pool(c, "avg")


@op("l2_pool", batch=always)
def _l2_pool(c: OpCall):
    """The square root of each window's sum of squares (padding adds nothing)."""
    return _pool(c, "l2")


# ------------------------------------------------------------------------------------------------ linear algebra
@op("linear", batch=lambda c: (c.rank("x") or 0) >= 2)
def _linear(c: OpCall):
    out = blas.matmul(c["x"], np.asarray(c["weight"], F32).T)
    bias = c.get("bias")
    return out if bias is None else out + bias


def _matmul_batch(c: OpCall) -> bool:
    # The batch must stay a leading axis of x that is not contracted: x rank >= 2, not transposed when rank 2.
    rank = c.rank("x") or 0
    return c.is_const("y") and rank >= 2 and not (rank == 2 and c.const("transpose_x", False))


@op("matmul", batch=_matmul_batch)
def _matmul(c: OpCall):
    x, y = c["x"], c["y"]
    if c.const("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if c.const("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return blas.matmul(x, y)


@op("batch_norm", batch=always)
def _batch_norm(c: OpCall):
    x, mean = c["x"], np.asarray(c["mean"], F32)
    scale = np.asarray(c.get("gamma", 1.0), F32) / np.sqrt(np.asarray(c["variance"], F32) + scalar(c.get("epsilon", 1e-5)))
    shift = np.asarray(c.get("beta", 0.0), F32) - mean * scale
    shape = (1, -1) + (1,) * (x.ndim - 2)  # per channel, axis 1
    return x * np.broadcast_to(scale, mean.shape).reshape(shape) + np.broadcast_to(shift, mean.shape).reshape(shape)


@op("instance_norm", batch=always)
def _instance_norm(c: OpCall):
    x = c["x"]
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + scalar(c.get("epsilon", 1e-5)))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if c.has("gamma"):
        y = y * np.asarray(c["gamma"], F32).reshape(shape)
    if c.has("beta"):
        y = y + np.asarray(c["beta"], F32).reshape(shape)
    return y


def _along_axes(param, x: np.ndarray, axes: tuple[int, ...], given: list[int]) -> np.ndarray:
    """gamma or beta of shape ``x.shape[given]`` laid along ``axes`` (sorted) of x, ready to broadcast."""
    param = np.asarray(param, F32)
    order = sorted(range(len(given)), key=lambda i: given[i])
    if param.ndim == len(given) and param.shape == tuple(x.shape[given[i]] for i in range(len(given))):
        param = param.transpose(order)
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    return param.reshape(shape)


@op("layer_norm", batch=axes_exclude_batch("axes"))
def _layer_norm(c: OpCall):
    """``gamma * (x - mean) / sqrt(var + epsilon) + beta`` over ``axes`` (default: all); gamma and beta have the
    shape ``x.shape[axes]`` and lie along those axes."""
    x = c["x"]
    given = c.const("axes", None)
    given = list(range(x.ndim)) if given is None else [int(a) % x.ndim for a in given]
    axes = tuple(sorted(given))
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=axes, keepdims=True)
    y = centred / np.sqrt(var + scalar(c.get("epsilon", 1e-5)))
    if c.has("gamma"):
        y = y * _along_axes(c["gamma"], x, axes, given)
    if c.has("beta"):
        y = y + _along_axes(c["beta"], x, axes, given)
    return y


L2_NORM_EPSILON = 1e-6  # MIL l2_norm's default epsilon
LRN_ALPHA, LRN_BETA, LRN_K = 1e-4, 0.75, 1.0  # MIL local_response_norm's defaults


@op("l2_norm", batch=lambda c: (c.rank("x") or 0) > 3)
def _l2_norm(c: OpCall):
    """``x / sqrt(sum(x^2) + epsilon)`` over the last three axes (each leading index separately)."""
    x = c["x"]
    if x.ndim < 3:
        raise c.fail(f"gets a rank-{x.ndim} input; l2_norm needs rank 3 or more")
    axes = (-3, -2, -1)
    total = (x * x).sum(axis=axes, keepdims=True, dtype=F32)
    return x / np.sqrt(total + scalar(c.get("epsilon", L2_NORM_EPSILON)))


@op("local_response_norm", batch=always)
def _local_response_norm(c: OpCall):
    """``x / (k + alpha / size * sum of x^2 over size neighbouring channels)^beta``; the window holds
    ``(size - 1) // 2`` channels before and the rest after (as NeuralNetwork's LRN)."""
    x = np.asarray(c["x"], F32)
    size = int(c.const("size"))
    alpha, beta = scalar(c.get("alpha", LRN_ALPHA)), scalar(c.get("beta", LRN_BETA))
    k = scalar(c.get("k", LRN_K))
    before = (size - 1) // 2
    after = size - 1 - before
    squares = np.pad(x * x, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    cumulative = np.concatenate([np.zeros_like(squares[:, :1]), np.cumsum(squares, axis=1, dtype=F32)], axis=1)
    window = cumulative[:, size:] - cumulative[:, :-size]
    return x / np.power(k + alpha / F32(size) * window, beta)


@op("softmax", batch=axes_exclude_batch("axis", default=-1))
def _softmax(c: OpCall):
    x, axis = c["x"], int(c.const("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _attention_batch(c: OpCall) -> bool:
    # image by image unless every operand, the mask included, carries the batch as its leading axis
    mask = c.shape("attn_mask")
    return mask is None or len(mask) == (c.rank("query") or 0)


@op("scaled_dot_product_attention", batch=_attention_batch)
def _scaled_dot_product_attention(c: OpCall):
    """softmax(Q K^T / sqrt(E) + mask) V over the last two axes (iOS18; PyTorch's definition): a bool ``attn_mask``
    keeps the scores where it is True and sets the others to -inf, a float one is added to the scores."""
    q, k, v = (np.asarray(c[name]) for name in ("query", "key", "value"))
    if not q.ndim == k.ndim == v.ndim >= 3 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise c.fail(f"needs query, key and value of one rank >= 3 that agree, has {q.shape}, {k.shape}, {v.shape}")
    scores = blas.matmul(q, np.swapaxes(k, -1, -2)) * F32(1.0 / np.sqrt(q.shape[-1]))
    mask = c.get("attn_mask")
    if mask is not None:
        mask = np.asarray(mask)
        scores = np.where(mask, scores, F32(-np.inf)) if mask.dtype == np.bool_ else scores + mask.astype(F32)
    with np.errstate(invalid="ignore"):  # a row masked everywhere is NaN, as in PyTorch
        e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights = e / e.sum(axis=-1, keepdims=True)
    return blas.matmul(weights.astype(F32), v)


# ------------------------------------------------------------------------------------------------ reductions
def _reduce(fn):
    def run(c: OpCall):
        x = c["x"]
        axes = c.const("axes", None)
        axes = None if axes is None else tuple(int(a) % x.ndim for a in (axes if isinstance(axes, list) else [axes]))
        return np.asarray(fn(x, axes, bool(c.const("keep_dims", False))))

    return run


for _name, _fn in kernels.REDUCTIONS.items():
    op(f"reduce_{_name}", batch=axes_exclude_batch("axes"))(_reduce(_fn))


@op("reduce_log_sum", batch=axes_exclude_batch("axes"))
def _reduce_log_sum(c: OpCall):
    return np.log(_reduce(kernels.REDUCTIONS["sum"])(c))


@op("reduce_log_sum_exp", batch=axes_exclude_batch("axes"))
def _reduce_log_sum_exp(c: OpCall):
    """``log(sum(exp(x)))``, computed around the maximum so that large values do not overflow."""
    x = c["x"]
    axes = c.const("axes", None)
    axes = tuple(range(x.ndim)) if axes is None else tuple(int(a) % x.ndim for a in (axes if isinstance(axes, list) else [axes]))
    top = x.max(axis=axes, keepdims=True)
    out = np.log(np.exp(x - top).sum(axis=axes, keepdims=True, dtype=F32)) + top
    return out if c.const("keep_dims", False) else np.squeeze(out, axis=axes)


def _arg_reduce(pick):
    def run(c: OpCall):
        x = c["x"]
        axis = int(c.const("axis", -1)) % x.ndim
        out = pick(x, axis=axis).astype(np.int32)
        return np.expand_dims(out, axis) if c.const("keep_dims", False) else out

    return run


op("reduce_argmax", batch=axes_exclude_batch("axis", default=-1))(_arg_reduce(np.argmax))
op("reduce_argmin", batch=axes_exclude_batch("axis", default=-1))(_arg_reduce(np.argmin))


def _order(x: np.ndarray, axis: int, ascending: bool) -> np.ndarray:
    """Indices that sort x along axis; equal values keep their order (a stable sort)."""
    return np.argsort(x if ascending else -x, axis=axis, kind="stable")


@op("topk", batch=axes_exclude_batch("axis", default=-1))
def _topk(c: OpCall):
    """The k largest (``ascending``: smallest) values along ``axis`` and their int32 indices; iOS16's ``sort=False``
    keeps them in input order, ``return_indices=False`` returns the values only."""
    x = c["x"]
    axis = int(c.const("axis", -1)) % x.ndim
    k = int(c.const("k", 1))
    k = x.shape[axis] if k == -1 else k
    index = np.take(_order(x, axis, bool(c.const("ascending", False))), np.arange(k), axis=axis)
    if not c.const("sort", True):
        index = np.sort(index, axis=axis)
    values = np.take_along_axis(x, index, axis=axis)
    if not c.const("return_indices", True):
        return values
    dtype = c.const("output_indices_dtype", "int32")
    return values, index.astype(np.uint16 if dtype == "uint16" else np.int32)


@op("argsort", batch=axes_exclude_batch("axis", default=-1))
def _argsort(c: OpCall):
    x = c["x"]
    axis = int(c.const("axis", -1)) % x.ndim
    return _order(x, axis, bool(c.const("ascending", False))).astype(np.int32)


@op("cumsum", batch=axes_exclude_batch("axis", default=0))
def _cumsum(c: OpCall):
    """Running sum along ``axis``; ``exclusive`` starts from 0, ``reverse`` runs from the end."""
    x = c["x"]
    axis = int(c.const("axis", 0)) % x.ndim
    if c.const("reverse", False):
        x = np.flip(x, axis=axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)
    if c.const("exclusive", False):
        out = np.concatenate(
            [np.zeros_like(np.take(out, [0], axis=axis)), np.take(out, np.arange(x.shape[axis] - 1), axis=axis)], axis=axis
        )
    return np.flip(out, axis=axis) if c.const("reverse", False) else out


@op("einsum")
def _einsum(c: OpCall):
    """The two ``values`` contracted by the ``equation`` (numpy's einsum notation, which MIL's follows)."""
    equation = c.const("equation")
    return np.einsum(equation, *c.values("values"))
