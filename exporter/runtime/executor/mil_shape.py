"""ML Program shape operations (reshape, transpose, concat, slices, padding) and resampling in numpy
(MIL opsets iOS15-iOS18), each as its MIL definition states it."""

from __future__ import annotations

import numpy as np

from . import kernels, kernels_nd
from .mil_elementwise import scalar
from .registry import OpCall, always, axes_exclude_batch, op


# ------------------------------------------------------------------------------------------------ shapes
def _reshape_batch(c: OpCall) -> bool:
    if not c.is_const("shape"):
        return False
    shape = c.const("shape")
    return bool(shape) and shape[0] in (1, -1)


def reshape_zeros(x_shape, shape: list[int], opset: int) -> list[int]:
    """MIL reshape's 0 entries: the dimension of x at the same index (iOS15/16, which need len(shape) == rank);
    from iOS17 aligned from the right, and 1 where x has no such dimension."""
    if 0 not in shape:
        return shape
    if opset >= 17:
        out = list(shape)
        for i in range(1, len(shape) + 1):
            if out[-i] == 0:
                out[-i] = x_shape[-i] if i <= len(x_shape) else 1
        return out
    if len(shape) != len(x_shape):
        raise ValueError(f"shape {shape} has a 0 and {len(shape)} entries for a rank-{len(x_shape)} input (before iOS17 they must match)")
    return [x_shape[i] if s == 0 else s for i, s in enumerate(shape)]


@op("reshape", batch=_reshape_batch)
def _reshape(c: OpCall):
    x, shape = c["x"], [int(s) for s in np.asarray(c["shape"]).reshape(-1)]
    declared = c.shape("x")  # zeros copy the file's dimensions (batch 1), not those of a batch being run
    try:
        shape = reshape_zeros(x.shape if declared is None else declared, shape, c.opset)
    except ValueError as exc:
        raise c.fail(str(exc)) from exc
    if c.batched and shape[0] == 1:
        shape[0] = x.shape[0]
    return x.reshape(shape)


@op("transpose", batch=lambda c: c.const("perm")[0] == 0)
def _transpose(c: OpCall):
    return np.transpose(c["x"], [int(p) for p in c.const("perm")])


def _concat_batch(c: OpCall) -> bool:
    rank = c.rank("values")
    axis = int(c.const("axis"))
    return rank is not None and axis % rank != 0


@op("concat", batch=_concat_batch)
def _concat(c: OpCall):
    """Inputs joined along ``axis``; ``interleave`` (inputs of one shape) takes one slice of each in turn."""
    values, axis = c.values("values"), int(c.const("axis"))
    if not c.const("interleave", False):
        return np.concatenate(values, axis=axis)
    axis %= values[0].ndim
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


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


def _flatten_axis(axis: int, rank: int) -> int:
    """flatten2d's axis in [0, rank]: negative values count from rank (so -rank is 0, and rank itself is allowed)."""
    return axis + rank if axis < 0 else axis


@op("flatten2d", batch=lambda c: c.rank("x") is not None and _flatten_axis(int(c.const("axis", 1)), c.rank("x")) == 1)
def _flatten2d(c: OpCall):
    """(prod(shape[:axis]), prod(shape[axis:])); axis == rank gives (size, 1)."""
    x = c["x"]
    axis = _flatten_axis(int(c.const("axis", 1)), x.ndim)
    if not 0 <= axis <= x.ndim:
        raise c.fail(f"has axis {c.const('axis', 1)} for a rank-{x.ndim} input")
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), int(np.prod(x.shape[axis:], dtype=np.int64)))


def _slice_index_batch(c: OpCall) -> bool:
    if not (c.is_const("begin") and c.is_const("end") and c.is_const("stride")):
        return False
    begin, end = c.const("begin"), c.const("end")
    begin_mask = c.const("begin_mask", [False] * len(begin))
    end_mask = c.const("end_mask", [False] * len(end))
    stride = c.const("stride", [1] * len(begin))
    squeeze = c.const("squeeze_mask", [False] * len(begin))
    return (begin_mask[0] or begin[0] == 0) and end_mask[0] and stride[0] == 1 and not squeeze[0]


@op("slice_by_index", batch=_slice_index_batch)
def _slice_by_index(c: OpCall):
    x = c["x"]
    begin, end = [int(v) for v in c.value("begin")], [int(v) for v in c.value("end")]
    rank = len(begin)
    stride = [int(v) for v in c.value("stride", [1] * rank)]
    begin_mask = c.const("begin_mask", [False] * rank)
    end_mask = c.const("end_mask", [False] * rank)
    squeeze = c.const("squeeze_mask", [False] * rank)
    index = []
    for i in range(rank):
        index.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    out = x[tuple(index)]
    drop = tuple(i for i in range(rank) if squeeze[i])
    return out.squeeze(axis=drop) if drop else out


def _slice_size_batch(c: OpCall) -> bool:
    return c.is_const("begin") and c.is_const("size") and c.const("begin")[0] == 0 and c.const("size")[0] == -1


@op("slice_by_size", batch=_slice_size_batch)
def _slice_by_size(c: OpCall):
    x = c["x"]
    begin, size = [int(v) for v in c.value("begin")], [int(v) for v in c.value("size")]
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


# ------------------------------------------------------------------------------------------------ gathers
def _batched_take(x: np.ndarray, indices: np.ndarray, batch_dims: int, take) -> np.ndarray:
    """``take(x_b, indices_b)`` for every index b of the leading ``batch_dims`` axes (shared by x and indices)."""
    if batch_dims == 0:
        return take(x, indices)
    parts = [take(x[b], indices[b]) for b in np.ndindex(*indices.shape[:batch_dims])]
    out = np.stack(parts) if parts else np.zeros((0,), x.dtype)
    return out.reshape(indices.shape[:batch_dims] + out.shape[1:])


@op("gather", batch=lambda c: int(c.const("axis", 0)) % max(c.rank("x") or 1, 1) != 0 and not c.const("batch_dims", 0))
def _gather(c: OpCall):
    """``x`` indexed along ``axis`` by ``indices`` (negative ones count from the end); the leading ``batch_dims``
    axes of x and indices are taken together."""
    x, indices = c["x"], np.asarray(c["indices"]).astype(np.int64)
    axis = int(c.const("axis", 0)) % x.ndim
    batch_dims = int(c.const("batch_dims", 0))
    batch_dims = batch_dims + indices.ndim if batch_dims < 0 else batch_dims
    _check_range(c, indices, x.shape[axis])
    return _batched_take(x, indices, batch_dims, lambda a, i: np.take(a, i, axis=axis - batch_dims))


def _check_range(c: OpCall, indices: np.ndarray, size: int) -> None:
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise c.fail(f"has an index outside [-{size}, {size})")


@op("gather_along_axis", batch=axes_exclude_batch("axis", default=0))
def _gather_along_axis(c: OpCall):
    """``out[..., i, ...] = x[..., indices[..., i, ...], ...]`` along ``axis``."""
    x, indices = c["x"], np.asarray(c["indices"]).astype(np.int64)
    axis = int(c.const("axis", 0)) % x.ndim
    _check_range(c, indices, x.shape[axis])
    return np.take_along_axis(x, indices, axis=axis)


@op("gather_nd")
def _gather_nd(c: OpCall):
    """``out[i] = x[indices[i]]`` where each ``indices[i]`` addresses the first ``indices.shape[-1]`` axes (after
    ``batch_dims`` shared leading axes)."""
    x, indices = c["x"], np.asarray(c["indices"]).astype(np.int64)
    batch_dims = int(c.const("batch_dims", 0))

    def take(a, i):
        depth = i.shape[-1]
        flat = i.reshape(-1, depth)
        for axis in range(depth):
            _check_range(c, flat[:, axis], a.shape[axis])
        return a[tuple(flat.T)].reshape(i.shape[:-1] + a.shape[depth:])

    return _batched_take(x, indices, batch_dims, take)


# ------------------------------------------------------------------------------------------------ rearrangements
@op("pixel_shuffle", batch=always)
def _pixel_shuffle(c: OpCall):
    """(N, C*f*f, H, W) -> (N, C, H*f, W*f) as PyTorch's pixel_shuffle."""
    return kernels_nd.pixel_shuffle(c["x"], int(c.const("upscale_factor")))


@op("pixel_unshuffle", batch=always)
def _pixel_unshuffle(c: OpCall):
    return kernels_nd.pixel_unshuffle(c["x"], int(c.const("downscale_factor")))


@op("depth_to_space", batch=always)
def _depth_to_space(c: OpCall):
    """TensorFlow's DepthToSpace (NCHW)."""
    return kernels_nd.depth_to_space(c["x"], int(c.const("block_size")))


@op("space_to_depth", batch=always)
def _space_to_depth(c: OpCall):
    return kernels_nd.space_to_depth(c["x"], int(c.const("block_size")))


@op("crop", batch=always)
def _crop(c: OpCall):
    """The last two axes less ``crop_height`` (top, bottom) and ``crop_width`` (left, right)."""
    x = c["x"]
    top, bottom = [int(v) for v in c.const("crop_height")]
    left, right = [int(v) for v in c.const("crop_width")]
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


@op("stack", batch=lambda c: int(c.const("axis")) % ((c.rank("values") or 0) + 1) != 0)
def _stack(c: OpCall):
    return np.stack(c.values("values"), axis=int(c.const("axis")))


@op("reverse", batch=axes_exclude_batch("axes"))
def _reverse(c: OpCall):
    x, axes = c["x"], c.const("axes", None)
    return np.flip(x, axis=None if axes is None else tuple(int(a) for a in axes))


@op("shape")
def _shape(c: OpCall):
    return np.asarray(c["x"].shape, np.int32)


@op("fill")
def _fill(c: OpCall):
    value = np.asarray(c.get("value", 0.0))
    return np.full([int(v) for v in np.asarray(c["shape"]).reshape(-1)], value, value.dtype)


@op("fill_like", batch=always)
def _fill_like(c: OpCall):
    value = np.asarray(c.get("value", 0.0))
    return np.full(c["ref_tensor"].shape, value, value.dtype)


@op("range_1d")
def _range_1d(c: OpCall):
    start, end, step = (np.asarray(c[k]) for k in ("start", "end", "step"))
    return np.arange(start.item(), end.item(), step.item()).astype(np.result_type(start, end, step))
