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


def _joins_computed_values(c: OpCall) -> bool:
    """Every joined value derives from the image: a constant (everything else is computed from the image; constant
    expressions are folded) keeps its leading 1 on a pass of N images, which the join could not match."""
    return not any(name in c.consts for name in c.args.get("values", []))


def _concat_batch(c: OpCall) -> bool:
    rank = c.rank("values")
    axis = int(c.const("axis"))
    return rank is not None and axis % rank != 0 and _joins_computed_values(c)


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


def slice_index(c: OpCall) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """slice_by_index's (and slice_update's) region as numpy slices, and the axes ``squeeze_mask`` drops."""
    begin, end = [int(v) for v in c.value("begin")], [int(v) for v in c.value("end")]
    rank = len(begin)
    stride = [int(v) for v in c.value("stride", [1] * rank)]
    begin_mask = c.const("begin_mask", [False] * rank)
    end_mask = c.const("end_mask", [False] * rank)
    squeeze = c.const("squeeze_mask", [False] * rank)
    index = tuple(
        # a squeezed axis takes the one index at begin, its end neglected (the definition)
        slice(0, 1)
        if squeeze[i] and begin_mask[i]
        else slice(begin[i], begin[i] + 1 or None)
        if squeeze[i]
        else slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i])
        for i in range(rank)
    )
    return index, tuple(i for i in range(rank) if squeeze[i])


@op("slice_by_index", batch=_slice_index_batch)
def _slice_by_index(c: OpCall):
    index, drop = slice_index(c)
    out = c["x"][index]
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


def _block(c: OpCall, key: str) -> tuple[tuple[int, int], list[list[int]]]:
    block = [int(v) for v in c.const("block_shape")]
    margins = [[int(v) for v in row] for row in c.const(key)]
    if len(block) != 2 or [len(row) for row in margins] != [2, 2] or min(block) < 1 or min(min(margins)) < 0:
        raise c.fail(f"needs a block_shape of 2 positive values and {key} of 2x2 non-negative values")
    return (block[0], block[1]), margins


@op("space_to_batch")
def _space_to_batch(c: OpCall):
    """TensorFlow's SpaceToBatchND on NCHW: H and W padded by ``paddings``, cut into blocks of ``block_shape``; the
    offset (i, j) inside a block becomes batch entry (i * block_w + j) * N + n."""
    x = c["x"]
    (bh, bw), ((top, bottom), (left, right)) = _block(c, "paddings")
    n, channels, h, w = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    ph, pw = padded.shape[2:]
    if ph % bh or pw % bw:
        raise c.fail(f"pads {h}x{w} to {ph}x{pw}, not a multiple of block_shape {bh}x{bw}")
    blocks = padded.reshape(n, channels, ph // bh, bh, pw // bw, bw)
    return np.ascontiguousarray(blocks.transpose(3, 5, 0, 1, 2, 4)).reshape(bh * bw * n, channels, ph // bh, pw // bw)


@op("batch_to_space")
def _batch_to_space(c: OpCall):
    """TensorFlow's BatchToSpaceND on NCHW, the inverse of space_to_batch: batch entry (i * block_w + j) * N + n
    becomes offset (i, j) of every block, then ``crops`` are cut from H and W."""
    x = c["x"]
    (bh, bw), ((top, bottom), (left, right)) = _block(c, "crops")
    total, channels, h, w = x.shape
    if total % (bh * bw):
        raise c.fail(f"has a batch of {total}, not a multiple of block_shape {bh}x{bw}")
    n = total // (bh * bw)
    out = x.reshape(bh, bw, n, channels, h, w).transpose(2, 3, 4, 0, 5, 1).reshape(n, channels, h * bh, w * bw)
    if top + bottom > h * bh or left + right > w * bw:
        raise c.fail(f"crops more than the {h * bh}x{w * bw} it rebuilds")
    return np.ascontiguousarray(out[:, :, top : h * bh - bottom, left : w * bw - right])


@op("reshape_like")
def _reshape_like(c: OpCall):
    """``x`` reshaped to the concatenation of ``ref_tensors[i].shape[begins[i]:ends[i]]`` (to the end when
    ``end_masks[i]``)."""
    refs = c.values("ref_tensors")
    # tuples of scalars, one file value per element
    begins, ends, masks = ([np.asarray(v).item() for v in c.values(k)] for k in ("begins", "ends", "end_masks"))
    if not len(refs) == len(begins) == len(ends) == len(masks):
        raise c.fail("needs as many begins, ends and end_masks as ref_tensors")
    shape: list[int] = []
    for ref, begin, end, mask in zip(refs, begins, ends, masks, strict=True):
        dims = np.shape(ref)
        shape += dims[int(begin) :] if mask else dims[int(begin) : int(end)]
    x = c["x"]
    if int(np.prod(shape)) != x.size:
        raise c.fail(f"cannot reshape {x.shape} to {tuple(shape)}")
    return x.reshape(shape)


@op("sliding_windows", batch=axes_exclude_batch("axis"))
def _sliding_windows(c: OpCall):
    """Windows of ``size`` elements every ``stride`` along ``axis``: that axis becomes (windows, size)."""
    x = c["x"]
    axis, size, stride = int(c.const("axis")) % x.ndim, int(c.const("size")), int(c.const("stride", 1))
    if size < 1 or stride < 1 or size > x.shape[axis]:
        raise c.fail(f"needs 1 <= size <= {x.shape[axis]} and stride >= 1, has size {size}, stride {stride}")
    starts = np.arange(0, x.shape[axis] - size + 1, stride)
    index = starts[:, None] + np.arange(size)[None, :]  # (windows, size)
    return np.take(x, index, axis=axis)


@op("reverse_sequence")
def _reverse_sequence(c: OpCall):
    """For each index b along ``batch_axis``, the first ``lengths[b]`` elements along ``seq_axis`` reversed
    (TensorFlow's reverse_sequence)."""
    x = c["x"]
    seq_axis, batch_axis = int(c.const("seq_axis", 0)) % x.ndim, int(c.const("batch_axis", 0)) % x.ndim
    lengths = np.asarray(c["lengths"]).astype(np.int64).reshape(-1)
    if seq_axis == batch_axis or len(lengths) != x.shape[batch_axis]:
        raise c.fail(f"needs distinct axes and one length per entry of axis {batch_axis} ({x.shape[batch_axis]})")
    if lengths.size and (lengths.min() < 0 or lengths.max() > x.shape[seq_axis]):
        raise c.fail(f"has a length outside [0, {x.shape[seq_axis]}]")
    out = np.array(x, copy=True)
    for b, length in enumerate(lengths):
        where = [slice(None)] * x.ndim
        where[batch_axis] = slice(b, b + 1)
        where[seq_axis] = slice(0, int(length))
        out[tuple(where)] = np.flip(x[tuple(where)], axis=seq_axis)
    return out


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


@op("stack", batch=lambda c: int(c.const("axis")) % ((c.rank("values") or 0) + 1) != 0 and _joins_computed_values(c))
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
