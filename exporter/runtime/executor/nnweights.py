"""NeuralNetwork ``WeightParams`` to float32 numpy, decoded from the protobuf fields themselves.

A WeightParams holds exactly one of: ``floatValue`` (float32), ``float16Value`` (little-endian float16 bytes),
``rawValue`` with ``quantization`` (n-bit unsigned integers packed most significant bit first, 8-bit as plain bytes;
linear ``w = scale[c] * q + bias[c]`` per output channel or one scale/bias for all, or a lookup table ``w = lut[q]``),
or ``int8RawValue`` (signed 8-bit, ``w = scale * q``, the int8 matrix products of ``int8DynamicQuantize`` layers).
"""

from __future__ import annotations

import numpy as np

from ...errors import ConversionError, UnsupportedOperationError
from .blob import bounded_count, unpack_bits

F32 = np.float32


def decode(wp, shape: tuple[int, ...], where: str, channel_axis: int = 0, *, optional: bool = False):
    """Weights of ``shape`` (row-major) as float32; ``channel_axis`` is the output-channel axis that per-channel
    linear quantization runs along. Returns None for empty weights when ``optional``."""
    count = bounded_count(shape, where, "layer weights")
    quant = wp.quantization if wp.HasField("quantization") else None
    if len(wp.floatValue):
        values = np.asarray(wp.floatValue, F32)
    elif len(wp.float16Value):
        values = np.frombuffer(wp.float16Value, "<f2").astype(F32)
    elif len(wp.int8RawValue):
        values = np.frombuffer(wp.int8RawValue, np.int8).astype(F32)
        if quant is not None:
            values = _linear(values, quant, shape, channel_axis, where, with_bias=False)
    elif len(wp.rawValue):
        if quant is None:
            values = np.frombuffer(wp.rawValue, "<f4").astype(F32)
        else:
            values = _quantized(wp.rawValue, quant, shape, channel_axis, where)
    elif optional:
        return None
    else:
        raise ConversionError(f"layer weights of shape {list(shape)} are empty", path=where)
    if values.size != count:
        raise ConversionError(f"layer weights hold {values.size} values, the layer needs {count} ({list(shape)})", path=where)
    return values.reshape(shape)


def _quantized(raw: bytes, quant, shape, channel_axis, where) -> np.ndarray:
    nbits = int(quant.numberOfBits)
    count = bounded_count(shape, where, "layer weights")
    if not 1 <= nbits <= 8:
        raise UnsupportedOperationError(f"{nbits}-bit quantized weights are not supported", path=where)
    q = np.frombuffer(raw, np.uint8)[:count] if nbits == 8 else unpack_bits(raw, nbits, count, msb_first=True)
    if q.size != count:
        raise ConversionError(f"quantized weights hold {q.size} values, the layer needs {count}", path=where)
    kind = quant.WhichOneof("QuantizationType")
    if kind == "linearQuantization":
        return _linear(q.astype(F32), quant, shape, channel_axis, where, with_bias=True)
    if kind == "lookupTableQuantization":
        lut = np.asarray(quant.lookupTableQuantization.floatValue, F32)
        if lut.size != 1 << nbits:
            raise ConversionError(f"lookup table has {lut.size} entries for {nbits}-bit weights", path=where)
        return lut[q]
    raise UnsupportedOperationError(f"weight quantization {kind!r} is not supported", path=where)


def _linear(values, quant, shape, channel_axis, where, *, with_bias: bool) -> np.ndarray:
    params = quant.linearQuantization
    scale = np.asarray(params.scale, F32)
    bias = np.asarray(params.bias, F32) if with_bias and len(params.bias) else np.zeros(1, F32)
    channels = shape[channel_axis] if shape else 1
    for name, p in (("scale", scale), ("bias", bias)):
        if p.size not in (1, channels):
            raise ConversionError(f"linear quantization {name} has {p.size} values for {channels} channels", path=where)
    view = [1] * len(shape)
    if view:
        view[channel_axis] = -1
    w = values.reshape(shape)
    scale = scale.reshape(view) if scale.size > 1 else scale.reshape(())
    bias = bias.reshape(view) if bias.size > 1 else bias.reshape(())
    return (w * scale + bias).reshape(-1)
