"""Shared guards for untrusted input (docs/THREAT_MODEL.md): bounded reads of regular files only, JSON that cannot
exhaust the stack, paths that stay inside their folder, names that are safe as file names and in generated code,
archive members checked before they are inflated, and tensor sizes checked against a memory budget.

Every guard raises the caller's typed error (``error=``), so each failure keeps its documented exit code.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from .errors import ConfigError, ExporterError, one_line

# The most memory one tensor, decoded weight or resized image may take. The whole process must stay within a few GB
# on a laptop or a CI runner next to TensorFlow (~1 GB resident by itself); the largest real value the toolkit
# handles (a 224-px MobileNetV2's first activation batch, or VGG16's 400 MB dense kernel) is well under it.
MEMORY_BUDGET_BYTES = 1 << 30
# Largest file read whole into memory: protobufs, weight files, labels, manifests, preprocessing files. Same reason.
MAX_FILE_BYTES = MEMORY_BUDGET_BYTES
# The Core ML executor's computed values alive at once in one forward pass (each one is also held to the budget
# above). Without it a file whose image input and contract both declare 4000 x 4000 pixels ran its first pass with
# 9.5 GB resident, each value under the budget (measured by the round-5 hostile hunt). Measured per image at 224 px
# (fp32, this machine, 2026-12-02): MobileNetV2 6.3 MiB (.mlpackage) / 9.8 MiB (.mlmodel), EfficientNetB0 9.8 / 14.4,
# DenseNet121 8.6 / 8.6, ResNet50 9.8 / 9.8. Activations grow with the pixels, so the worst of these reaches the
# budget near 2,600 px; passes of several images are sized to stay within it (CoreMLExecutor.chunk).
LIVE_ACTIVATION_BUDGET_BYTES = 2 * MEMORY_BUDGET_BYTES
# One image through a Keras model: eager Keras keeps every layer's output until the call returns (keras_memory), so
# the sum of them all is what one image costs, far above what the executor's live values reach. Calls of several
# images are cut to LIVE_ACTIVATION_BUDGET_BYTES (at least one image each); a model is refused only when ONE image is
# over this. keras.applications at their own input sizes, measured with keras_memory (float32, 2026-12-02):
# EfficientNetB7 at 600 px 3,991 MiB, EfficientNetB6 at 528 px 2,310, EfficientNetV2L at 480 px 2,098, ConvNeXtXLarge
# at 384 px 1,527, EfficientNetB5 at 456 px 1,367: a bound of 2 GiB refused B6, B7 and V2L outright. Twice the largest.
KERAS_ONE_IMAGE_BUDGET_BYTES = 4 * LIVE_ACTIVATION_BUDGET_BYTES
# The constants a Core ML file decodes together (weights widened to float32, folded constants), each also held to the
# budget above. The largest real model the toolkit runs, VGG16, holds 528 MB of float32 weights; a float16 file at
# the file-size limit decodes to twice its size. Without it, constants declaring a shape and no data (np.zeros of it,
# a few bytes each in the file), many consts naming one weight blob, or 1-bit weights (32 float32 bytes per file
# byte) decoded to any size: three 200-million-element empty constants took 2.4 GB while the file loaded.
CONSTANT_BUDGET_BYTES = 2 * MEMORY_BUDGET_BYTES
# Text files a person writes (labels, preprocessing, manifest.json): 64 MB holds a million labels; anything larger
# is not a labels or preprocessing file.
MAX_TEXT_BYTES = 64 << 20
# A Keras archive's members, inflated, may not exceed the budget together, nor any member inflate more than this
# ratio when it is over a megabyte: float weights compress by 1.1-3x, JSON configs by 5-20x; a 1 MB member that
# inflates to 1 GB (ratio 1000) is a decompression bomb.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_BYTES = 1 << 20
# Artifact names: NAME plus the longest variant suffix ("_palette8.mlpackage", 19 characters) must fit the 255-byte
# file name limit of every common file system, with room to spare.
MAX_NAME_CHARS = 200
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
# A label or value quoted in an error message is cut at this length (the whole line is bounded in errors.py).
MAX_QUOTE_CHARS = 80
NAME_MAX = 255  # bytes in one path component (Linux, macOS)


def quote(value: Any, limit: int = MAX_QUOTE_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, for echoing untrusted values in an error."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'" + f"({len(str(value)):,} chars)"


# ------------------------------------------------------------------------------------------------ reading files
def open_regular(path: str | Path, *, error: type[ExporterError], what: str = "file", max_bytes: int | None = None) -> BinaryIO:
    """A regular file (symlinks followed) opened for reading in binary, of at most ``max_bytes`` when given. A FIFO,
    a device (/dev/zero), a socket or a folder is refused without blocking: the file is opened non-blocking and
    checked before anything reads it (a plain open of a FIFO waits for a writer forever)."""
    path = Path(path)
    article = "an" if what[:1].lower() in "aeiou" else "a"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise error(f"{what} not found", path=path) from exc
    except IsADirectoryError as exc:
        raise error(f"is a directory, not {article} {what}", path=path) from exc
    except OSError as exc:
        raise error(f"{what} cannot be read: {exc.strerror}", path=path) from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"is a directory, not {article} {what}", path=path)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"is not a regular file (a FIFO, device or socket); refusing to read it as {article} {what}", path=path)
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{what} is {st.st_size:,} bytes, over the limit of {max_bytes:,}", path=path)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, *, error: type[ExporterError], what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file (symlinks followed) of at most ``max_bytes``, opened by ``open_regular``: a
    FIFO, a device, a socket or a folder is refused without blocking."""
    with open_regular(path, error=error, what=what, max_bytes=max_bytes) as f:
        try:
            chunks, total = [], 0
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > max_bytes:  # the file grew while we read it
                    raise error(f"{what} is over the limit of {max_bytes:,} bytes", path=path)
                chunks.append(chunk)
            return b"".join(chunks)
        except OSError as exc:
            raise error(f"{what} cannot be read: {exc.strerror}", path=path) from exc


def check_regular(path: str | Path, *, error: type[ExporterError], what: str = "file") -> None:
    """Refuse anything but a regular file (symlinks followed) without opening it."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise error(f"{what} not found", path=path) from exc
    except OSError as exc:
        raise error(f"{what} cannot be read: {exc.strerror}", path=path) from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise error(f"is {kind}; expected a {what}", path=path)


def load_json(data: bytes | str, *, path: str | Path, error: type[ExporterError], what: str = "JSON") -> Any:
    """Parse JSON; invalid text, invalid UTF-8 and nesting deep enough to exhaust the stack all raise ``error``."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid UTF-8 (byte {exc.start})", path=path) from exc
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path=path) from exc
    except RecursionError as exc:
        raise error(f"{what} is nested too deeply to parse", path=path) from exc


# ------------------------------------------------------------------------------------------------ paths and names
def inside(root: str | Path, relative: Any, *, error: type[ExporterError], where: str | Path, what: str = "path") -> Path:
    """``root / relative`` for a relative path from an untrusted file (a manifest, a package), refused unless it is a
    plain relative path that resolves, symlinks included, inside ``root``."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise error(f"{what} must be a non-empty relative path, got {quote(relative)}", path=where)
    rel = PurePosixPath(relative)
    if rel.is_absolute() or relative.startswith("\\") or re.match(r"[A-Za-z]:", relative) or ".." in rel.parts:
        raise error(f"{what} {quote(relative)} points outside its folder", path=where)
    root = Path(root)
    target = root.joinpath(*rel.parts)
    try:
        resolved, base = target.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise error(f"{what} {quote(relative)} cannot be resolved: {exc}", path=where) from exc
    if resolved != base and base not in resolved.parents:
        raise error(f"{what} {quote(relative)} resolves outside its folder (a symlink?)", path=where)
    return target


def tree(root: str | Path, *, error: type[ExporterError], what: str = "folder", skip: Callable[[str], bool] | None = None) -> list[Path]:
    """Every entry under ``root`` (files, folders and links; a symlinked folder is listed, not entered), sorted, as
    ``sorted(root.rglob("*"))`` gives them, but walked from a list: Path.rglob recursed once per level, so a folder
    nested past Python's recursion limit (a thousand levels, a 2 kB path) raised RecursionError, an internal error.
    ``skip(name)``: names left out, with everything under them. A folder that cannot be listed (a path past PATH_MAX,
    no permission) raises ``error`` naming it, rather than being left out."""
    found: list[Path] = []
    pending = [Path(root)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if skip is not None and skip(entry.name):
                        continue
                    path = Path(entry.path)
                    found.append(path)
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(path)
        except OSError as exc:
            raise error(f"{what} cannot be listed: {exc.strerror or exc}", path=current) from exc
    return sorted(found)


def check_name(name: Any, *, what: str = "--name", error: type[ExporterError] = ConfigError) -> str:
    """A name that becomes a file name and appears in generated code: letters, digits, '.', '_', '-', starting with
    a letter or digit, at most ``MAX_NAME_CHARS`` characters; so no path separator, no '..', no control character."""
    if not isinstance(name, str) or not name:
        raise error(f"{what} must be a non-empty string, got {quote(name)}")
    if len(name) > MAX_NAME_CHARS:
        raise error(f"{what} must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
    if not SAFE_NAME.match(name) or ".." in name:
        raise error(
            f"{what} must use only letters, digits, '.', '_' and '-', start with a letter or digit and not contain '..', got {quote(name)}"
        )
    return name


def safe_stem(text: str) -> str:
    """A name derived from a file name, made safe for ``check_name`` (unsafe characters become '_')."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).replace("..", "_").lstrip("._-")[:MAX_NAME_CHARS]
    return stem or "model"


def check_component_length(path: Path, *, error: type[ExporterError]) -> None:
    if len(os.fsencode(path.name)) > NAME_MAX:
        raise error(
            f"folder name is {len(os.fsencode(path.name))} bytes, over the file system limit of {NAME_MAX}", path=one_line(str(path), 300)
        )


def contains(outer: Path, inner: Path) -> bool:
    """Whether ``inner`` is ``outer`` or lies under it (both resolved)."""
    outer, inner = Path(outer).resolve(), Path(inner).resolve()
    return inner == outer or outer in inner.parents


# ------------------------------------------------------------------------------------------------ bounds
def check_elements(shape, *, itemsize: int = 4, error: type[ExporterError], where: str | Path, what: str = "tensor") -> int:
    """Element count of ``shape`` (exact, no overflow), refused when negative or over the memory budget."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise error(f"{what} has a negative dimension {dims}", path=where)
    count = math.prod(dims)
    if count * itemsize > MEMORY_BUDGET_BYTES:
        raise error(
            f"{what} of shape {dims[:8]} needs {count * itemsize:,} bytes, over the memory budget of {MEMORY_BUDGET_BYTES:,}", path=where
        )
    return count


# Members of a Keras archive: a .keras file holds three (config.json, metadata.json, model.weights.h5) plus a few
# assets, in a central directory of a few hundred bytes. Python's zipfile parses the whole directory into objects of
# ~500 bytes per member when it opens the archive, ten times the 46 bytes a member with a short name takes in the file:
# 2 million empty members in a 100 MB file took a gigabyte before any other check ran. The end record, read first,
# bounds both (zipfile reads the directory by the size the end record declares).
MAX_ARCHIVE_MEMBERS = 10_000
MAX_CENTRAL_DIRECTORY_BYTES = 4 << 20
_EOCD, _ZIP64_LOCATOR, _ZIP64_EOCD = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"


def zip_directory_size(path: str | Path) -> tuple[int, int] | None:
    """(members, central directory bytes) as an archive's end record declares them (the zip64 record's where the
    classic one holds 0xFFFF / 0xFFFFFFFF), read from the file's last 64 kB without parsing the directory; None when
    there is no end record (zipfile then reports the file as not an archive)."""
    import struct

    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - (22 + 0xFFFF)))
        tail = f.read()
        at = tail.rfind(_EOCD)
        if at < 0 or len(tail) - at < 22:
            return None
        count, cd_bytes = struct.unpack("<HI", tail[at + 10 : at + 16])
        locator = at - 20
        if (count == 0xFFFF or cd_bytes == 0xFFFFFFFF) and locator >= 0 and tail[locator : locator + 4] == _ZIP64_LOCATOR:
            offset = struct.unpack("<Q", tail[locator + 8 : locator + 16])[0]
            if offset + 56 <= size:
                f.seek(offset)
                record = f.read(56)
                if record[:4] == _ZIP64_EOCD:
                    count, cd_bytes = struct.unpack("<QQ", record[32:48])
        return count, cd_bytes


def check_zip(path: str | Path, *, error: type[ExporterError]) -> None:
    """Refuse an archive of more than ``MAX_ARCHIVE_MEMBERS`` members or a central directory over
    ``MAX_CENTRAL_DIRECTORY_BYTES`` before the directory is parsed, and one whose members would inflate past the
    memory budget, or a member over a megabyte that inflates more than ``MAX_COMPRESSION_RATIO`` times, before
    anything is read or extracted. Python's zipfile stops a member at its declared size, so the declared sizes are
    what reading can cost."""
    try:
        declared = zip_directory_size(path)
    except OSError as exc:
        raise error(f"model file cannot be read: {exc.strerror or exc}", path=path) from exc
    if declared is not None and (declared[0] > MAX_ARCHIVE_MEMBERS or declared[1] > MAX_CENTRAL_DIRECTORY_BYTES):
        raise error(
            f"archive declares {declared[0]:,} members in a {declared[1]:,}-byte directory, over the limits of "
            f"{MAX_ARCHIVE_MEMBERS:,} and {MAX_CENTRAL_DIRECTORY_BYTES:,} (a Keras model has a handful of members)",
            path=path,
        )
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise error(f"model file is corrupt or truncated ({type(exc).__name__}: {one_line(str(exc), 200)})", path=path) from exc
    total = 0
    for m in members:
        total += m.file_size
        if m.file_size > RATIO_CHECK_BYTES and m.file_size > MAX_COMPRESSION_RATIO * max(m.compress_size, 1):
            raise error(
                f"archive member {quote(m.filename)} inflates from {m.compress_size:,} to {m.file_size:,} bytes "
                f"(over {MAX_COMPRESSION_RATIO}x: a decompression bomb)",
                path=path,
            )
    if total > MEMORY_BUDGET_BYTES:
        raise error(f"archive members inflate to {total:,} bytes, over the limit of {MEMORY_BUDGET_BYTES:,}", path=path)


# ------------------------------------------------------------------------------------------------ protobuf messages
# Parsed protobuf fields cost far more memory than they take in the file: 10 MB of empty NeuralNetwork layers (2 bytes
# each) parsed to 446 MB, so a protobuf under MAX_FILE_BYTES could still need tens of gigabytes. Real files hold their
# weights in a few large packed or bytes fields: a MobileNet .mlmodel or .onnx file has a few thousand field
# occurrences, an ML Program a few tens of thousands; two million (at most ~200 MB parsed, counted in ~4 s) is far
# beyond any model and far below the machine.
MAX_PROTOBUF_FIELDS = 2_000_000


def check_protobuf_fields(data: bytes, descriptor, *, error: type[ExporterError], where: str | Path, what: str = "file") -> int:
    """Count the field occurrences of the serialized message ``data`` (a ``descriptor`` message) by walking its wire
    format, submessages included (known message fields only; bytes, strings and packed arrays are skipped whole),
    and refuse it past ``MAX_PROTOBUF_FIELDS`` before the protobuf library parses it. Returns the count. Malformed
    data ends the walk quietly: the parser then reports it."""
    view = memoryview(data)
    stack = [(0, len(view), descriptor)]
    count = 0
    while stack:
        pos, end, desc = stack.pop()
        fields = desc.fields_by_number if desc is not None else {}
        while pos < end:
            tag, pos = _varint(view, pos, end)
            if tag is None:
                return count
            count += 1
            if count > MAX_PROTOBUF_FIELDS:
                raise error(
                    f"{what} holds over {MAX_PROTOBUF_FIELDS:,} protobuf fields, more than any model (parsing them would need "
                    "many times the file's size in memory)",
                    path=where,
                )
            wire = tag & 7
            if wire == 0:
                value, pos = _varint(view, pos, end)
                if value is None:
                    return count
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                size, pos = _varint(view, pos, end)
                if size is None or pos + size > end:
                    return count
                field = fields.get(tag >> 3)
                if field is not None and field.message_type is not None:
                    stack.append((pos, pos + size, field.message_type))
                pos += size
            else:  # groups (wire types 3 and 4) are not used by Core ML or ONNX protobufs
                return count
    return count


def _varint(view: memoryview, pos: int, end: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < end and shift < 70:
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos
