"""ML Program shape operations (reshape, transpose, concat, slices, padding) and resampling in numpy
(MIL opsets iOS15-iOS18), each as its MIL definition states it."""

from __future__ import annotations

import numpy as np

from . import kernels
from .mil_elementwise import F32, scalar
from .registry import OpCall, always, axes_exclude_batch, op


# ------------------------------------------------------------------------------------------------ shapes
def _reshape_batch(c: OpCall) -> bool:
    shape = c.const("shape")
    return bool(shape) and shape[0] in (1, -1)


@op("reshape", batch=_reshape_batch)
def _reshape(c: OpCall):
    x, shape = c["x"], [int(s) for s in c.const("shape")]
    if len(shape) == x.ndim:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if c.batched and shape[0] == 1:
        shape[0] = x.shape[0]
    return x.reshape(shape)


@op("transpose", batch=lambda c: c.const("perm")[0] == 0)
def _transpose(c: OpCall):
    return np.transpose(c["x"], [int(p) for p in c.const("perm")])


def _concat_batch(c: OpCall) -> bool:
    rank = c.rank("values")
    axis = int(c.const("axis"))
    return not c.const("interleave", False) and rank is not None and axis % rank != 0


@op("concat", batch=_concat_batch)
def _concat(c: OpCall):
    if c.const("interleave", False):
        raise c.unsupported("interleaves its inputs; that is not supported")
    return np.concatenate(c.values("values"), axis=int(c.const("axis")))


@op("squeeze", batch=axes_exclude_batch("axes"))
def _squeeze(c: OpCall):
    x, axes = c["x"], c.const("axes", None)
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(int(a) % x.ndim for a in axes))


def _expand_batch(c: OpCall) -> bool:
    rank = c.rank("x")
    if rank is None:
        return False
    return all(int(a) % (rank + len(c.const("axes"))) != 0 for a in c.const("axes"))


@op("expand_dims", batch=_expand_batch)
def _expand_dims(c: OpCall):
    x, axes = c["x"], [int(a) for a in c.const("axes")]
    rank = x.ndim + len(axes)
    return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


@op("flatten2d", batch=lambda c: int(c.const("axis", 1)) % max(c.rank("x") or 1, 1) != 0)
def _flatten2d(c: OpCall):
    x, axis = c["x"], int(c.const("axis", 1))
    axis %= x.ndim
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _slice_index_batch(c: OpCall) -> bool:
    begin, end = c.const("begin"), c.const("end")
    begin_mask = c.const("begin_mask", [False] * len(begin))
    end_mask = c.const("end_mask", [False] * len(end))
    stride = c.const("stride", [1] * len(begin))
    squeeze = c.const("squeeze_mask", [False] * len(begin))
    return (begin_mask[0] or begin[0] == 0) and end_mask[0] and stride[0] == 1 and not squeeze[0]


@op("slice_by_index", batch=_slice_index_batch)
def _slice_by_index(c: OpCall):
    x = c["x"]
    begin, end = [int(v) for v in c.const("begin")], [int(v) for v in c.const("end")]
    rank = len(begin)
    stride = [int(v) for v in c.const("stride", [1] * rank)]
    begin_mask = c.const("begin_mask", [False] * rank)
    end_mask = c.const("end_mask", [False] * rank)
    squeeze = c.const("squeeze_mask", [False] * rank)
    index = []
    for i in range(rank):
        index.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    out = x[tuple(index)]
    drop = tuple(i for i in range(rank) if squeeze[i])
    return out.squeeze(axis=drop) if drop else out


@op("slice_by_size", batch=lambda c: c.const("begin")[0] == 0 and c.const("size")[0] == -1)
def _slice_by_size(c: OpCall):
    x = c["x"]
    begin, size = [int(v) for v in c.const("begin")], [int(v) for v in c.const("size")]
    return x[tuple(slice(b, None if s == -1 else b + s) for b, s in zip(begin, size, strict=True))]


@op("tile", batch=lambda c: c.const("reps")[0] == 1)
def _tile(c: OpCall):
    return np.tile(c["x"], [int(r) for r in c.const("reps")])


@op("split", batch=axes_exclude_batch("axis"))
def _split(c: OpCall):
    x, axis = c["x"], int(c.const("axis"))
    sizes = c.const("split_sizes", None)
    if sizes is None:
        return tuple(np.split(x, int(c.const("num_splits")), axis=axis))
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _pad_batch(c: OpCall) -> bool:
    pad, rank = c.const("pad"), c.rank("x")
    return rank is not None and (len(pad) < 2 * rank or pad[0] == pad[1] == 0)


@op("pad", batch=_pad_batch)
def _pad(c: OpCall):
    x = c["x"]
    flat = [int(p) for p in c.const("pad")]
    pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    mode = c.const("mode", "constant")
    if mode == "constant":
        return kernels.pad_constant(x, pairs, scalar(c.get("constant_val", 0.0)))
    full = [(0, 0)] * (x.ndim - len(pairs)) + pairs
    if mode == "reflect":
        return np.pad(x, full, mode="reflect")
    if mode == "replicate":
        return np.pad(x, full, mode="edge")
    raise c.unsupported(f"has unknown mode {mode!r}")


# ------------------------------------------------------------------------------------------------ resampling
@op("upsample_nearest_neighbor", batch=always)
def _upsample_nearest(c: OpCall):
    x = c["x"]
    sh, sw = c.const("scale_factor_height", 1), c.const("scale_factor_width", 1)
    if sh != int(sh) or sw != int(sw):
        raise c.unsupported("has a fractional scale factor; only integer factors are supported")
    return np.repeat(np.repeat(x, int(sh), axis=-2), int(sw), axis=-1)


def _bilinear_axis(x: np.ndarray, axis: int, out_size: int, align_corners: bool) -> np.ndarray:
    size = x.shape[axis]
    if align_corners:
        grid = np.arange(out_size) * ((size - 1) / (out_size - 1) if out_size > 1 else 0.0)
    else:
        spacing = size / out_size
        grid = np.arange(out_size) * spacing + 0.5 * spacing - 0.5
    grid = np.clip(grid, 0, size - 1)
    lo = np.floor(grid).astype(np.int64)
    hi = np.minimum(lo + 1, size - 1)
    frac = (grid - lo).astype(F32)
    shape = [1] * x.ndim
    shape[axis] = out_size
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (F32(1) - frac) + np.take(x, hi, axis=axis) * frac


@op("upsample_bilinear", batch=always)
def _upsample_bilinear(c: OpCall):
    x = c["x"]
    sh, sw = float(c.const("scale_factor_height", 1)), float(c.const("scale_factor_width", 1))
    align = bool(c.const("align_corners", True))
    out_h, out_w = int(np.floor(x.shape[-2] * sh)), int(np.floor(x.shape[-1] * sw))
    return _bilinear_axis(_bilinear_axis(x, x.ndim - 2, out_h, align), x.ndim - 1, out_w, align)
