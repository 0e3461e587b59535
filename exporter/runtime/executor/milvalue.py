"""MIL protobuf values (``MIL.proto`` ``Value``) to numpy: immediate tensors, lists, and tensors stored in the weight
file. Values keep their declared element type (int8 stays int8, uint4 becomes uint8 holding 0..15); the executor
converts floating values to its compute precision afterwards."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConversionError, UnsupportedOperationError
from ...safety import inside
from .blob import SUB_BYTE, WeightFile, bfloat16_to_float32, bounded_count, unpack_bits

if TYPE_CHECKING:
    from ...packaging import VerifiedReads

MODEL_PATH_PREFIX = "@model_path/"  # how ML Program files name weight files relative to model.mlmodel's folder

# MIL.proto DataType -> (name, numpy dtype of decoded values, bits per element).
MIL_TYPES: dict[int, tuple[str, type | None, int]] = {
    1: ("bool", np.bool_, 8),
    2: ("string", None, 0),
    10: ("fp16", np.float16, 16),
    11: ("fp32", np.float32, 32),
    12: ("fp64", np.float64, 64),
    13: ("bf16", np.float32, 16),
    21: ("int8", np.int8, 8),
    22: ("int16", np.int16, 16),
    23: ("int32", np.int32, 32),
    24: ("int64", np.int64, 64),
    25: ("int4", np.int8, 4),
    31: ("uint8", np.uint8, 8),
    32: ("uint16", np.uint16, 16),
    33: ("uint32", np.uint32, 32),
    34: ("uint64", np.uint64, 64),
    35: ("uint4", np.uint8, 4),
    36: ("uint2", np.uint8, 2),
    37: ("uint1", np.uint8, 1),
    38: ("uint6", np.uint8, 6),
    39: ("uint3", np.uint8, 3),
}
BY_NAME = {name: (dtype, bits) for name, dtype, bits in MIL_TYPES.values()}
FLOAT_TYPES = ("fp16", "fp32", "fp64", "bf16")


def type_name(code: int, where: str) -> str:
    if code not in MIL_TYPES:
        raise UnsupportedOperationError(f"MIL data type code {code} is not supported by the executor", path=where)
    return MIL_TYPES[code][0]


def tensor_type(value_type, where: str) -> tuple[str, tuple[int, ...] | None]:
    """(element type name, static shape or None when a dimension is unknown) of a tensor ValueType."""
    kind = value_type.WhichOneof("type")
    if kind != "tensorType":
        raise UnsupportedOperationError(f"MIL value of kind {kind} is not supported by the executor", path=where)
    tt = value_type.tensorType
    dims = []
    for d in tt.dimensions:
        if d.WhichOneof("dimension") != "constant":
            return type_name(tt.dataType, where), None
        dims.append(int(d.constant.size))
    bounded_count(dims, where, "a declared tensor")  # no value the file declares may exceed the memory budget
    return type_name(tt.dataType, where), tuple(dims)


class WeightFiles:
    """The weight files a program refers to, opened once, resolved inside the model's own folder only."""

    def __init__(self, model_dir: Path | None, where: str, reads: VerifiedReads | None = None):
        self.model_dir, self.where, self.reads = model_dir, where, reads
        self.files: dict = {}

    def get(self, file_name: str) -> WeightFile:
        if file_name not in self.files:
            if self.model_dir is None or not file_name.startswith(MODEL_PATH_PREFIX):
                raise ConversionError(f"weight file {file_name!r} is not inside the model package", path=self.where)
            rel = PurePosixPath(file_name[len(MODEL_PATH_PREFIX) :])
            if rel.is_absolute() or ".." in rel.parts:
                raise ConversionError(f"weight file {file_name!r} points outside the model package", path=self.where)
            # symlinks too: the weight file must resolve inside the folder of the model protobuf
            path = inside(self.model_dir, rel.as_posix(), error=ConversionError, where=self.where, what="weight file")
            self.files[file_name] = WeightFile(path, self.where, self.reads)
        return self.files[file_name]


def _from_bytes(raw: bytes, name: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    count = bounded_count(shape, where)
    dtype, nbits = BY_NAME[name]
    if name in SUB_BYTE:
        return unpack_bits(raw, nbits, count, signed=name == "int4").reshape(shape)
    if name == "bf16":
        return bfloat16_to_float32(np.frombuffer(raw, "<u2", count)).reshape(shape)
    if dtype is None or len(raw) != count * nbits // 8:
        raise ConversionError(f"immediate {name} value of shape {list(shape)} has {len(raw)} bytes", path=where)
    return np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"), count).astype(dtype).reshape(shape)


def _immediate_tensor(tensor, name: str, shape: tuple[int, ...], where: str):
    field = tensor.WhichOneof("value")
    if name == "string":
        values = list(tensor.strings.values)
        return values[0] if shape == () and values else values
    if field is None:
        return np.zeros(shape, BY_NAME[name][0])
    if field == "bytes":
        return _from_bytes(tensor.bytes.values, name, shape, where)
    values = getattr(tensor, field).values
    array = np.asarray(values, dtype=BY_NAME[name][0])
    if array.size != bounded_count(shape, where):
        raise ConversionError(f"immediate value holds {array.size} elements, its type declares shape {list(shape)}", path=where)
    return array.reshape(shape)


def decode(value, files: WeightFiles, where: str):
    """A MIL Value as numpy (tensors), str (string scalars) or list (lists and string tensors)."""
    kind = value.WhichOneof("value")
    vtype = value.type.WhichOneof("type")
    if vtype == "listType" or (kind == "immediateValue" and value.immediateValue.WhichOneof("value") == "list"):
        return [decode(v, files, where) for v in value.immediateValue.list.values]
    name, shape = tensor_type(value.type, where)
    if shape is None:
        raise ConversionError("a constant value has an unknown dimension", path=where)
    if kind == "blobFileValue":
        blob = value.blobFileValue
        count = bounded_count(shape, where)
        data = files.get(blob.fileName).read(int(blob.offset), name, count)
        return data.reshape(shape)
    if kind == "immediateValue":
        imm = value.immediateValue
        if imm.WhichOneof("value") != "tensor":
            raise UnsupportedOperationError(f"immediate MIL value of kind {imm.WhichOneof('value')} is not supported", path=where)
        return _immediate_tensor(imm.tensor, name, shape, where)
    raise ConversionError(f"MIL value has no content ({kind})", path=where)
