"""The ML Program weight file (``weights/weight.bin``), decoded with numpy from its documented layout.

MIL blob storage, version 2 (coremltools ``mlmodel/src/MILBlob/Blob/StorageFormat.hpp``), all little-endian:

* a 64-byte ``storage_header``: ``uint32 count``, ``uint32 version`` (= 2), seven reserved ``uint64``;
* per blob, 64-byte aligned, a 64-byte ``blob_metadata`` record: ``uint32 sentinel`` (``0xDEADBEEF``),
  ``uint32 mil_dtype``, ``uint64 sizeInBytes``, ``uint64 offset`` (of the data, absolute), ``uint64
  padding_size_in_bits`` (unused bits at the end of sub-byte data), four reserved ``uint64``; the data follows.

A program's ``BlobFileValue`` names the file and the offset of the *metadata record*. Sub-byte types (uint1/2/3/4/6,
int4) are packed without gaps, least significant bit first, the same way as packed immediate values.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConversionError, UnsupportedOperationError
from ...safety import MAX_FILE_BYTES, check_elements, read_regular

if TYPE_CHECKING:
    from ...packaging import VerifiedReads

HEADER_BYTES = 64  # sizeof(storage_header): the first metadata record cannot start before it
METADATA_BYTES = 64  # sizeof(blob_metadata)
METADATA_FORMAT = "<IIQQQ"  # sentinel, mil_dtype, sizeInBytes, offset, padding_size_in_bits (then reserved)
SENTINEL = 0xDEADBEEF  # BlobMetadataSentinel: every metadata record starts with it
STORAGE_VERSION = 2  # the only version the format defines for ML Program weights

# BlobDataType (MILBlob/Blob/BlobDataType.hpp) -> (name, numpy dtype of the decoded values, bits per element).
BLOB_TYPES: dict[int, tuple[str, str, int]] = {
    1: ("fp16", "<f2", 16),
    2: ("fp32", "<f4", 32),
    3: ("uint8", "u1", 8),
    4: ("int8", "i1", 8),
    5: ("bf16", "<u2", 16),
    6: ("int16", "<i2", 16),
    7: ("uint16", "<u2", 16),
    8: ("int4", "i1", 4),
    9: ("uint1", "u1", 1),
    10: ("uint2", "u1", 2),
    11: ("uint4", "u1", 4),
    12: ("uint3", "u1", 3),
    13: ("uint6", "u1", 6),
    14: ("int32", "<i4", 32),
    15: ("uint32", "<u4", 32),
    16: ("fp8e4m3fn", "u1", 8),
    17: ("fp8e5m2", "u1", 8),
}
# Types stored packed, several values per byte (also what milvalue unpacks from immediate values).
SUB_BYTE = frozenset({"int4", "uint1", "uint2", "uint3", "uint4", "uint6"})


def bounded_count(shape, where: str, what: str = "tensor") -> int:
    """Element count of a shape a file declares, exact (no int64 overflow) and refused past the memory budget,
    counted as the float32 the executor computes in."""
    return check_elements(shape, itemsize=4, error=ConversionError, where=where, what=what)


# Values unpacked at a time (a multiple of 8, so each piece starts on a byte for any width): unpacking expands each bit
# to a byte and each value's bits to int32 products, 5 x nbits bytes per value; done at once on a 6-bit table of 64
# million indices (48 MB of file) that took 2.4 GB. In pieces the memory is the result and one piece (~30 MB).
UNPACK_CHUNK_VALUES = 1 << 20


def unpack_bits(data, nbits: int, count: int, *, signed: bool = False, msb_first: bool = False) -> np.ndarray:
    """``count`` integers of ``nbits`` bits packed back to back in ``data`` (bytes or uint8 array).

    ML Program packs least significant bit first; NeuralNetwork's quantized weights pack most significant bit
    first (``msb_first``). Signed values are two's complement. Returns int8 when ``signed``, else uint8."""
    raw = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else np.asarray(data)
    raw = raw.astype(np.uint8, copy=False).ravel()
    if count < 0 or raw.size * 8 < count * nbits:
        raise ConversionError(f"packed {nbits}-bit data holds {raw.size * 8 // nbits} values, {count} expected")
    weights = ((1 << np.arange(nbits - 1, -1, -1)) if msb_first else (1 << np.arange(nbits))).astype(np.int32)
    out = np.empty(count, np.int8 if signed else np.uint8)
    for start in range(0, count, UNPACK_CHUNK_VALUES):
        n = min(UNPACK_CHUNK_VALUES, count - start)
        piece = raw[start * nbits // 8 : -(-(start + n) * nbits // 8)]
        bits = np.unpackbits(piece, bitorder="big" if msb_first else "little")[: n * nbits].reshape(n, nbits)
        values = bits.astype(np.int32) @ weights
        if signed:
            values = np.where(values >= 1 << (nbits - 1), values - (1 << nbits), values)
        out[start : start + n] = values
    return out


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 is the top half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class WeightFile:
    """One weight file, read once; ``read`` decodes the blob whose metadata record is at ``offset``."""

    def __init__(self, path: Path, where: str, reads: VerifiedReads | None = None):
        self.path, self.where = Path(path), where
        # a regular file (not a FIFO or /dev/zero), no larger than the memory budget; offsets are checked below. Read
        # through ``reads`` when given, which hashes these bytes, the ones decoded (see CoreMLExecutor)
        read = reads.read if reads is not None else read_regular
        self.data = read(self.path, error=ConversionError, what="weight file", max_bytes=MAX_FILE_BYTES)
        if len(self.data) < HEADER_BYTES:
            raise ConversionError(f"weight file {self.path.name} is {len(self.data)} bytes, shorter than its header", path=where)
        self.count, version = struct.unpack_from("<II", self.data, 0)
        if version != STORAGE_VERSION:
            raise UnsupportedOperationError(
                f"weight file {self.path.name} has storage version {version}, only {STORAGE_VERSION} is supported", path=where
            )

    def metadata(self, offset: int) -> tuple[int, int, int, int]:
        """(BlobDataType code, data size in bytes, data offset, padding bits) of the blob recorded at ``offset``."""
        if offset < HEADER_BYTES or offset + METADATA_BYTES > len(self.data):
            raise ConversionError(f"weight offset {offset} lies outside {self.path.name} ({len(self.data)} bytes)", path=self.where)
        sentinel, code, size, data_offset, padding = struct.unpack_from(METADATA_FORMAT, self.data, offset)
        if sentinel != SENTINEL:
            raise ConversionError(f"no blob record at offset {offset} of {self.path.name} (sentinel {sentinel:#x})", path=self.where)
        if code not in BLOB_TYPES:
            raise UnsupportedOperationError(
                f"blob at offset {offset} of {self.path.name} has unknown data type code {code}", path=self.where
            )
        if data_offset < HEADER_BYTES or data_offset + size > len(self.data):
            raise ConversionError(f"blob at offset {offset} runs past the end of {self.path.name}", path=self.where)
        return code, size, data_offset, padding

    def read(self, offset: int, expected_type: str, count: int) -> np.ndarray:
        """The ``count`` values of the blob at ``offset``, checked to be of ``expected_type`` (a blob type name)."""
        code, size, start, padding = self.metadata(offset)
        name, dtype, nbits = BLOB_TYPES[code]
        if name != expected_type:
            raise ConversionError(
                f"blob at offset {offset} of {self.path.name} holds {name}, the program declares {expected_type}", path=self.where
            )
        if name.startswith("fp8"):
            raise UnsupportedOperationError(
                f"blob at offset {offset} of {self.path.name} holds {name}, which the executor does not decode", path=self.where
            )
        available = size * 8 - padding
        if padding >= 8 or available != count * nbits:
            raise ConversionError(
                f"blob at offset {offset} of {self.path.name} holds {available // nbits} {name} values, the program declares {count}",
                path=self.where,
            )
        payload = self.data[start : start + size]
        if name in SUB_BYTE:
            return unpack_bits(payload, nbits, count, signed=name == "int4")
        values = np.frombuffer(payload, dtype=dtype, count=count)
        if name == "bf16":
            return bfloat16_to_float32(values)
        return values.astype(dtype.lstrip("<"), copy=True)
