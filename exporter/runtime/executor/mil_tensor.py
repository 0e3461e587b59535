"""ML Program convolution, pooling, matrix products, normalisation, softmax and reductions in numpy
(MIL opsets iOS15-iOS18), each as its MIL definition states it."""

from __future__ import annotations

import numpy as np

from . import kernels
from .mil_elementwise import F32, scalar
from .registry import OpCall, always, axes_exclude_batch, op


# ------------------------------------------------------------------------------------------------ convolution, pooling
def _pads(c: OpCall, spatial: tuple[int, int], kernel, stride, dilation) -> tuple[int, int, int, int]:
    pad_type = c.const("pad_type", "valid")
    if pad_type == "valid":
        return (0, 0, 0, 0)
    if pad_type in ("same", "same_lower"):
        lower = pad_type == "same_lower"
        th, bh = kernels.same_padding(spatial[0], kernel[0], stride[0], dilation[0], lower)
        tw, bw = kernels.same_padding(spatial[1], kernel[1], stride[1], dilation[1], lower)
        return (th, bh, tw, bw)
    if pad_type == "custom":
        pad = [int(p) for p in c.const("pad")]
        if len(pad) != 4:
            raise c.unsupported(f"has {len(pad) // 2}-D padding; only 2-D is supported")
        return (pad[0], pad[1], pad[2], pad[3])
    raise c.unsupported(f"has unknown pad_type {pad_type!r}")


def _pair(c: OpCall, key: str, default) -> tuple[int, int]:
    value = c.const(key, None)
    if value is None:
        return default
    value = [int(v) for v in (value if isinstance(value, list) else [value])]
    if len(value) != 2:
        raise c.unsupported(f"has {len(value)}-D {key}; only 2-D is supported")
    return value[0], value[1]


def _conv_params(c: OpCall, spatial: tuple[int, int], kernel) -> tuple:
    """(strides, dilations, pads, groups) of a conv, read from its constants once per input size."""
    key = ("params", spatial)
    if key not in c.cache:
        stride = _pair(c, "strides", (1, 1))
        dilation = _pair(c, "dilations", (1, 1))
        c.cache[key] = (stride, dilation, _pads(c, spatial, kernel, stride, dilation), int(c.const("groups", 1)))
    return c.cache[key]


@op("conv", batch=always, fresh=True)
def _conv(c: OpCall):
    x, weight = c["x"], c["weight"]
    if x.ndim != 4 or weight.ndim != 4:
        raise c.unsupported(f"is a {x.ndim - 2}-D convolution; only 2-D is supported")
    stride, dilation, pads, groups = _conv_params(c, x.shape[2:], weight.shape[2:])
    cache = c.cache if c.is_const("weight") else None
    return kernels.conv2d(x, np.asarray(weight, F32), c.get("bias"), stride, dilation, pads, groups, cache)


def _pool(c: OpCall, kind: str):
    x = c["x"]
    if x.ndim != 4:
        raise c.unsupported(f"pools {x.ndim - 2}-D inputs; only 2-D is supported")
    kernel = _pair(c, "kernel_sizes", None)
    stride = _pair(c, "strides", (1, 1))
    pads = _pads(c, x.shape[2:], kernel, stride, (1, 1))
    if c.const("ceil_mode", False):
        plain = [kernels.output_size(x.shape[2 + i], kernel[i], stride[i], 1, pads[2 * i], pads[2 * i + 1])
                 for i in range(2)]
        ceil = [-(-(x.shape[2 + i] + pads[2 * i] + pads[2 * i + 1] - kernel[i]) // stride[i]) + 1 for i in range(2)]
        if plain != ceil:
            raise c.unsupported("uses ceil_mode where it changes the output size; that is not supported")
    exclude = bool(c.const("exclude_padding_from_average", False))
    return kernels.pool2d(x, kind, kernel, stride, pads, exclude, c.cache)


@op("max_pool", batch=always, fresh=True)
def _max_pool(c: OpCall):
    return _pool(c, "max")


@op("avg_pool", batch=always, fresh=True)
def _avg_pool(c: OpCall):
    return _pool(c, "avg")


# ------------------------------------------------------------------------------------------------ linear algebra
@op("linear", batch=lambda c: (c.rank("x") or 0) >= 2)
def _linear(c: OpCall):
    out = np.matmul(c["x"], np.asarray(c["weight"], F32).T)
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
    return np.matmul(x, y)


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


@op("layer_norm", batch=axes_exclude_batch("axes"))
def _layer_norm(c: OpCall):
    x = c["x"]
    axes = c.const("axes", None)
    axes = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in axes)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + scalar(c.get("epsilon", 1e-5)))
    if c.has("gamma"):
        y = y * np.asarray(c["gamma"], F32)
    if c.has("beta"):
        y = y + np.asarray(c["beta"], F32)
    return y


@op("softmax", batch=axes_exclude_batch("axis", default=-1))
def _softmax(c: OpCall):
    x, axis = c["x"], int(c.const("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


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
