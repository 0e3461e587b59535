"""Compressed constants and activation quantization: the ``constexpr_*`` ops (iOS16 and iOS18 forms), and the iOS17
``quantize``/``dequantize`` pair of W8A8 programs. Constexpr ops only read constants, so the interpreter evaluates
them once at load time; quantize/dequantize run on activations at predict time."""

from __future__ import annotations

import numpy as np

from .blob import bounded_count, unpack_bits
from .registry import OpCall, op

F32 = np.float32
INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def _along(param: np.ndarray, rank: int, axis: int | None) -> np.ndarray:
    """A scalar, or a vector laid along ``axis`` of a rank-``rank`` tensor, ready to broadcast."""
    param = np.asarray(param)
    if param.ndim == 0 or axis is None:
        return param
    shape = [1] * rank
    shape[axis % rank] = -1
    return param.reshape(shape)


def _repeat_blocks(param: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Blockwise parameters (same rank as the data, each dimension dividing it) repeated to the data's shape."""
    for axis, (size, blocks) in enumerate(zip(shape, param.shape, strict=True)):
        if size % blocks:
            raise ValueError(f"{blocks} blocks do not divide an axis of {size}")
        if blocks != size:
            param = np.repeat(param, size // blocks, axis=axis)
    return param


@op("constexpr_affine_dequantize")
def _affine_dequantize(c: OpCall):
    """iOS16: ``scale * (quantized_data - zero_point)``, scale/zero_point scalars or vectors along ``axis``."""
    q = np.asarray(c["quantized_data"])
    axis = int(c.const("axis", 0))
    zero = _along(np.asarray(c["zero_point"], F32), q.ndim, axis)
    scale = _along(np.asarray(c["scale"], F32), q.ndim, axis)
    return (q.astype(F32) - zero) * scale


@op("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(c: OpCall):
    """iOS18: ``scale * (data - offset)`` with one scale (and offset) per block of the data."""
    data = np.asarray(c["data"])
    scale = np.asarray(c["scale"], F32)
    if scale.ndim != data.ndim:
        raise c.fail(f"has scale of rank {scale.ndim} for data of rank {data.ndim}")
    out = data.astype(F32)
    if c.has("offset"):
        out = out - _repeat_blocks(np.asarray(c["offset"], F32), data.shape)
    return out * _repeat_blocks(scale, data.shape)


@op("constexpr_lut_to_dense")
def _lut_to_dense(c: OpCall):
    if c.has("shape"):  # iOS16: one flat table, indices packed into uint8 bytes (LSB first), explicit shape
        lut = np.asarray(c["lut"]).reshape(-1)
        shape = tuple(int(s) for s in np.asarray(c["shape"]).reshape(-1))
        nbits = int(np.log2(lut.size))
        if lut.size != 1 << nbits:
            raise c.fail(f"has a lookup table of {lut.size} entries, not a power of two")
        count = bounded_count(shape, c.where)
        return lut[unpack_bits(np.asarray(c["indices"], np.uint8), nbits, count)].reshape(shape)
    return _lut_ios18(c, np.asarray(c["indices"]))


def _lut_ios18(c: OpCall, indices: np.ndarray) -> np.ndarray:
    """iOS18: indices typed uintN of the output's shape; lut [*blocks per axis, 2^N, vector size]."""
    indices, lut = indices.astype(np.int64), np.asarray(c["lut"])
    rank = indices.ndim
    if lut.ndim != rank + 2:
        raise c.fail(f"has a lookup table of rank {lut.ndim} for indices of rank {rank}")
    groups = []
    for axis in range(rank):
        size, blocks = indices.shape[axis], lut.shape[axis]
        if size % blocks:
            raise c.fail(f"has {blocks} tables along axis {axis} of size {size}")
        shape = [1] * rank
        shape[axis] = size
        groups.append((np.arange(size) // (size // blocks)).reshape(shape))
    out = lut[tuple(groups) + (indices,)]  # indices.shape + (vector size,)
    vector = lut.shape[-1]
    if vector == 1:
        return out[..., 0]
    axis = int(c.const("vector_axis")) % rank
    moved = np.moveaxis(out, -1, axis + 1)
    shape = list(indices.shape)
    shape[axis] *= vector
    return moved.reshape(shape)


@op("constexpr_sparse_to_dense")
def _sparse_to_dense(c: OpCall):
    data = np.asarray(c["nonzero_data"]).reshape(-1)
    mask = np.asarray(c["mask"])
    if c.has("shape"):  # iOS16: mask packed into uint8 bytes, LSB first
        shape = tuple(int(s) for s in np.asarray(c["shape"]).reshape(-1))
        bits = unpack_bits(mask.astype(np.uint8), 1, bounded_count(shape, c.where))
    else:  # iOS18: mask is a uint1 tensor of the output's shape
        shape, bits = mask.shape, mask.reshape(-1)
    if int(bits.sum()) != data.size:
        raise c.fail(f"has {int(bits.sum())} set mask bits for {data.size} values")
    out = np.zeros(bounded_count(shape, c.where), dtype=data.dtype)
    out[bits.astype(bool)] = data
    return out.reshape(shape)


def _scatter(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A dense tensor of ``mask``'s shape holding ``values`` at the set bits (row-major order), zeros elsewhere."""
    bits = np.asarray(mask).astype(bool)
    values = np.asarray(values).reshape(-1)
    if int(bits.sum()) != values.size:
        raise ValueError(f"{int(bits.sum())} set mask bits for {values.size} values")
    dense = np.zeros(bits.shape, values.dtype)
    dense[bits] = values
    return dense


@op("constexpr_lut_to_sparse")
def _lut_to_sparse(c: OpCall):
    """iOS18: palettized non-zero values -> (mask, values). With vector palettes (vector size V) every non-zero
    index becomes V values along ``vector_axis`` and the mask is widened to match."""
    mask = np.asarray(c["indices_mask"])
    try:
        dense_indices = _scatter(mask, c["indices_nonzero_data"])
    except ValueError as exc:
        raise c.fail(str(exc)) from exc
    dense = _lut_ios18(c, dense_indices)
    vector = np.asarray(c["lut"]).shape[-1]
    if vector > 1:
        axis = int(c.const("vector_axis")) % mask.ndim
        mask = np.repeat(mask, vector, axis=axis)
    return mask, dense[mask.astype(bool)]


@op("constexpr_sparse_blockwise_shift_scale")
def _sparse_blockwise_shift_scale(c: OpCall):
    """iOS18: ``scale * (data - offset)`` on the non-zero values only, each value taking the scale (and offset)
    of the block its position in the dense layout falls in -> (mask, values)."""
    mask = np.asarray(c["data_mask"])
    try:
        dense = _scatter(mask, c["nonzero_data"]).astype(F32)
        scale = _repeat_blocks(np.asarray(c["scale"], F32), mask.shape)
        if c.has("offset"):
            dense = dense - _repeat_blocks(np.asarray(c["offset"], F32), mask.shape)
    except ValueError as exc:
        raise c.fail(str(exc)) from exc
    return mask, (dense * scale)[mask.astype(bool)]


@op("constexpr_cast")
def _constexpr_cast(c: OpCall):
    return np.asarray(c["source_val"], F32)


def _axis_ok(c: OpCall) -> bool:
    axis, rank = c.const("axis", None), c.rank("input")
    return axis is None or (rank is not None and int(axis) % rank != 0)


@op("quantize", batch=_axis_ok)
def _quantize(c: OpCall):
    """iOS17: ``clip(round_half_even(input / scale) + zero_point)`` to int8 or uint8."""
    x = c["input"]
    dtype = c.const("output_dtype")
    if dtype not in INT_RANGES:
        raise c.unsupported(f"quantizes to {dtype!r}")
    axis = c.const("axis", None)
    q = np.round(x / _along(np.asarray(c["scale"], F32), x.ndim, axis))
    if c.has("zero_point"):
        q = q + _along(np.asarray(c["zero_point"], F32), x.ndim, axis)
    low, high = INT_RANGES[dtype]
    return np.clip(q, low, high).astype(np.int8 if dtype == "int8" else np.uint8)


@op("dequantize", batch=_axis_ok)
def _dequantize(c: OpCall):
    """iOS17: ``scale * (input - zero_point)``."""
    x = c["input"]
    axis = c.const("axis", None)
    out = np.asarray(x, F32)
    if c.has("zero_point"):
        out = out - _along(np.asarray(c["zero_point"], F32), x.ndim, axis)
    return out * _along(np.asarray(c["scale"], F32), x.ndim, axis)
