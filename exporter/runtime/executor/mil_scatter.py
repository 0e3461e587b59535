"""ML Program ops that write into a copy of a tensor (scatter, scatter_along_axis, scatter_nd, slice_update) or build
one from indices and masks (one_hot, band_part), in numpy, each as its MIL definition states it (iOS15-iOS18)."""

from __future__ import annotations

import numpy as np

from .mil_shape import slice_index
from .registry import OpCall, axes_exclude_batch, op

# scatter modes: how an update combines with the value it lands on. Repeated indices accumulate (ufunc.at), except
# "update", where the last one written stays.
_MODES = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.maximum,
    "min": np.minimum,
}


def _indices(c: OpCall, key: str, size: int | np.ndarray) -> np.ndarray:
    """``c[key]`` as int64 indices into an axis of ``size`` (per position when an array): negative ones count from the
    end before iOS17, and from iOS17 are out of range (its definition; ``validate_indices`` only says whether Core ML
    checks). Out-of-range indices are undefined behaviour in Core ML and refused here."""
    indices = np.asarray(c[key]).astype(np.int64)
    low = 0 if c.opset >= 17 else -np.asarray(size)
    if indices.size and (np.any(indices < low) or np.any(indices >= size)):
        raise c.fail(f"has an index outside [{'0' if c.opset >= 17 else '-size'}, size) of the axis it scatters into")
    return np.where(indices < 0, indices + size, indices)


def along_axis(shape: tuple, indices: np.ndarray, updates: np.ndarray, axis: int, fail) -> tuple:
    """Where scatter-along-axis writes: ``indices`` in place of the ``axis`` coordinate of every update's own position,
    after checking that indices and updates share one shape of the container's rank, equal to it off ``axis``
    (``fail(message)`` makes the caller's error). Shared by the MIL op and the NeuralNetwork layer."""
    if indices.shape != updates.shape or indices.ndim != len(shape):
        raise fail(f"needs indices and updates of one shape and rank {len(shape)}, has {indices.shape} and {updates.shape}")
    if any(i != axis and indices.shape[i] != shape[i] for i in range(len(shape))):
        raise fail(f"needs indices of the container's shape {shape} off axis {axis}, has {indices.shape}")
    grid: list[np.ndarray] = list(np.indices(indices.shape, sparse=True))
    grid[axis] = indices
    return tuple(grid)


def combine(out: np.ndarray, where: tuple, updates: np.ndarray, mode: str) -> np.ndarray:
    """``out`` with ``updates`` written at ``where`` by ``mode`` ("update" or one of ``_MODES``; the caller checks)."""
    if mode == "update":
        out[where] = updates
    else:
        _MODES[mode].at(out, where, updates.astype(out.dtype, copy=False))
    return out


def _write(c: OpCall, out: np.ndarray, where: tuple, updates: np.ndarray, default_mode: str) -> np.ndarray:
    mode = c.const("mode", default_mode)
    if mode != "update" and mode not in _MODES:
        raise c.unsupported(f"has unknown mode {mode!r} (update, {', '.join(_MODES)})")
    return combine(out, where, updates, mode)


def _data(c: OpCall) -> np.ndarray:
    return np.array(c["data"], copy=True)


@op("scatter", batch=axes_exclude_batch("axis", default=0))
def _scatter(c: OpCall):
    """``data`` with slice ``indices[i]`` of ``axis`` combined with slice i of ``updates`` by ``mode`` (default
    "add" in the op's code, which the file records)."""
    out = _data(c)
    axis = int(c.const("axis", 0)) % out.ndim
    indices = _indices(c, "indices", out.shape[axis]).reshape(-1)
    updates = np.asarray(c["updates"])
    expected = out.shape[:axis] + (len(indices),) + out.shape[axis + 1 :]
    if updates.shape != expected:
        raise c.fail(f"needs updates of shape {expected}, has {updates.shape}")
    # moving the axis first makes each index address one slice, which ufunc.at accumulates when repeated
    front, moved = np.moveaxis(out, axis, 0), np.moveaxis(updates, axis, 0)
    _write(c, front, (indices,), moved, "add")
    return out


@op("scatter_along_axis", batch=axes_exclude_batch("axis", default=0))
def _scatter_along_axis(c: OpCall):
    """``out[..., indices[..., i, ...], ...]`` combined with ``updates[..., i, ...]`` along ``axis``."""
    out = _data(c)
    axis = int(c.const("axis", 0)) % out.ndim
    indices = _indices(c, "indices", out.shape[axis])
    updates = np.asarray(c["updates"])
    return _write(c, out, along_axis(out.shape, indices, updates, axis, c.fail), updates, "add")


@op("scatter_nd")
def _scatter_nd(c: OpCall):
    """``out[indices[i_0, ..., i_{K-2}]]`` combined with ``updates[i_0, ..., i_{K-2}]``, each index addressing the
    first ``indices.shape[-1]`` axes of ``data``."""
    out = _data(c)
    raw = np.asarray(c["indices"])
    depth = raw.shape[-1] if raw.ndim else 0
    if not 1 <= depth <= out.ndim:
        raise c.fail(f"needs indices whose last axis (1 to {out.ndim}) addresses data, has shape {raw.shape}")
    indices = _indices(c, "indices", np.asarray(out.shape[:depth]))
    updates = np.asarray(c["updates"])
    expected = raw.shape[:-1] + out.shape[depth:]
    if updates.shape != expected:
        raise c.fail(f"needs updates of shape {expected}, has {updates.shape}")
    flat = indices.reshape(-1, depth)
    return _write(c, out, tuple(flat.T), updates.reshape((len(flat),) + out.shape[depth:]), "add")


@op("slice_update")
def _slice_update(c: OpCall):
    """``x`` with the region slice_by_index would read (same begin, end, stride and masks) replaced by ``update``."""
    out = np.array(c["x"], copy=True)
    index, drop = slice_index(c)
    region = out[index]
    update = np.asarray(c["update"])
    if drop:
        update = np.expand_dims(update, drop)
    if update.shape != region.shape:
        raise c.fail(f"needs an update of the slice's shape {region.shape}, has {np.shape(c['update'])}")
    out[index] = update
    return out


@op("one_hot")
def _one_hot(c: OpCall):
    """A new axis at ``axis`` of ``one_hot_vector_size`` entries, ``on_value`` where it equals the index and
    ``off_value`` elsewhere (an index outside [0, size) gives a vector of ``off_value``, as TensorFlow's)."""
    indices = np.asarray(c["indices"]).astype(np.int64)
    size = int(c.value("one_hot_vector_size"))
    if size < 0:
        raise c.fail(f"has a negative one_hot_vector_size {size}")
    axis = int(c.const("axis", -1))
    if not -indices.ndim - 1 <= axis <= indices.ndim:
        raise c.fail(f"has axis {axis} outside [{-indices.ndim - 1}, {indices.ndim}]")
    on, off = np.asarray(c.get("on_value", 1)), np.asarray(c.get("off_value", 0))
    dtype = np.result_type(on, off)
    hot = np.expand_dims(indices, -1) == np.arange(size)
    return np.moveaxis(np.where(hot, on, off).astype(dtype), -1, axis % (indices.ndim + 1))


@op("band_part", batch=lambda c: (c.rank("x") or 0) > 2)
def _band_part(c: OpCall):
    """``x`` with everything outside the band of the last two axes set to 0: row m, column n is kept when
    (lower < 0 or m - n <= lower) and (upper < 0 or n - m <= upper)."""
    x = c["x"]
    if x.ndim < 2:
        raise c.fail(f"needs a tensor of rank 2 or more, has rank {x.ndim}")
    return band(x, int(c.const("lower", -1)), int(c.const("upper", -1)))


def band(x: np.ndarray, lower: int, upper: int) -> np.ndarray:
    """``x`` (rank 2 or more) with row m, column n of its last two axes kept when (lower < 0 or m - n <= lower) and
    (upper < 0 or n - m <= upper), 0 elsewhere."""
    m = np.arange(x.shape[-2])[:, None]
    n = np.arange(x.shape[-1])[None, :]
    keep = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))
