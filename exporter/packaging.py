"""Artifacts on disk: atomic output directories, sizes, SHA-256, and the manifest.

An export writes everything into a hidden staging directory next to the destination, on the same file system, and
renames it into place only when every artifact and the manifest are complete and flushed. A failed, interrupted or
killed export therefore leaves the destination absent (or, with ``overwrite``, the previous export intact), never
half-written. While it writes, the export holds an exclusive lock (``fcntl.flock`` on ``.DEST.lock``) so that a
second export to the same destination is refused instead of racing it. Staging directories are named
``.DEST.partial-PID-*`` after the process that owns them; the next export to the same destination removes those
whose owner is no longer alive, never a live one.

Manifests are untrusted input (docs/THREAT_MODEL.md): ``read_manifest`` checks their structure, and
``artifact_file`` resolves an artifact's path inside the export folder only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import interrupts
from .errors import DestinationError, ExporterError, one_line
from .safety import (
    MAX_FILE_BYTES,
    MAX_TEXT_BYTES,
    NAME_MAX,
    check_component_length,
    contains,
    inside,
    load_json,
    open_regular,
    quote,
    read_regular,
    tree,
)

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1


def size_on_disk(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# coremltools writes a fresh random UUID for every item into an .mlpackage's Manifest.json, so two identical exports
# would never hash the same. The bundle hash covers the model and weights (Data/) and leaves that file out.
UNHASHED_BUNDLE_FILES = {"Manifest.json"}


def sha256_of(path: Path, *, error: type[ExporterError] = DestinationError, what: str = "file") -> str:
    """SHA-256 of a file, or of a bundle directory (each file's relative path and content, sorted, except the
    ``UNHASHED_BUNDLE_FILES``). Each file is opened by ``safety.open_regular``: one replaced by a FIFO after it was
    listed or checked (an image of the folder, a file of a bundle) is refused with ``error`` naming it, where a
    plain open waited for a writer forever."""
    path = Path(path)
    if path.is_dir():
        return _tree_digest(path, lambda p: sha256_of(p, error=error, what=what))
    h = hashlib.sha256()
    with open_regular(path, error=error, what=what) as f:
        try:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        except OSError as exc:
            raise error(f"{what} cannot be read: {exc.strerror}", path=path) from exc
    return h.hexdigest()


def _tree_digest(path: Path, digest_of: Callable[[Path], str]) -> str:
    """The bundle hash of ``sha256_of``, each file's own SHA-256 given by ``digest_of``."""
    h = hashlib.sha256()
    for p in (q for q in tree(path, error=DestinationError, what="bundle") if q.is_file() and q.name not in UNHASHED_BUNDLE_FILES):
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + bytes.fromhex(digest_of(p)))
    return h.hexdigest()


def _changed(target: Path) -> DestinationError:
    return DestinationError(
        "changed since the export: its SHA-256 differs from the one manifest.json records (replaced or edited "
        "after `exporter convert` wrote it)",
        path=target,
        hint="export again",
    )


class VerifiedReads:
    """The files a loader parses of one artifact, each read into memory once (bounded, regular files only, as
    ``safety.read_regular``), and checked by ``verify`` to be the artifact manifest.json records: the SHA-256 of the
    bytes read, not of the file on disk again, which may have been replaced since ``artifact_file`` checked it (or
    since the read). A bundle's unread files (none in a bundle the exporter wrote) are hashed from disk.
    ``sha256=None`` (a file outside an export) reads without checking."""

    def __init__(self, target: str | Path, sha256: str | None):
        self.target, self.expected = Path(target), sha256
        self.digests: dict[Path, str] = {}  # resolved path -> SHA-256 of the bytes handed to the loader

    def read(self, path: str | Path, *, error: type[ExporterError], what: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        data = read_regular(path, error=error, what=what, max_bytes=max_bytes)
        if self.expected is not None:
            self.digests[Path(path).resolve()] = hashlib.sha256(data).hexdigest()
        return data

    def verify(self) -> None:
        """Refuse (DestinationError, exit 6) unless the bytes read are those of the artifact manifest.json records."""
        if self.expected is None:
            return
        if self.target.is_dir():
            hashed: set[Path] = set()

            def digest_of(p: Path) -> str:
                resolved = p.resolve()
                hashed.add(resolved)
                return self.digests.get(resolved) or sha256_of(p)

            actual: str | None = _tree_digest(self.target, digest_of)
            read = {p for p in self.digests if p.name not in UNHASHED_BUNDLE_FILES}
            if not read <= hashed:  # a file read and then removed or renamed away
                raise _changed(self.target)
        else:
            actual = self.digests.get(self.target.resolve())
        if actual != self.expected:
            raise _changed(self.target)


def copy_verified(source: Path, dest: Path, sha256: str, *, error: type[ExporterError], what: str) -> None:
    """Copy the artifact file or bundle ``source`` to ``dest`` (new files) from bytes read once each
    (bounded, regular files only), then refuse (DestinationError, exit 6) unless those bytes are the artifact whose
    SHA-256 manifest.json records: a file replaced after ``artifact_file`` checked it is never copied as the export's."""
    reads = VerifiedReads(source, sha256)
    files = [p for p in tree(source, error=error, what=what) if not p.is_dir()] if source.is_dir() else [source]
    for p in files:
        out = dest / p.relative_to(source) if source.is_dir() else dest
        _make_parents(out)
        data = reads.read(p, error=error, what=what)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        del data
    reads.verify()


def _make_parents(path: Path) -> None:
    """The missing folders above ``path``, made top down in a loop: Path.mkdir(parents=True) recurses once per
    missing level (a bundle's file nested a thousand folders deep raised RecursionError)."""
    missing = []
    parent = path.parent
    while not parent.is_dir():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()


@dataclass
class Artifact:
    path: str  # relative to the export directory
    format: str  # "mlpackage", "mlmodel", "onnx"
    variant: str
    minimum_deployment_target: str
    bytes: int = 0
    sha256: str = ""
    ratio_to_fp32: float | None = None
    details: dict = field(default_factory=dict)

    def measure(self, root: Path) -> None:
        self.bytes = size_on_disk(root / self.path)
        self.sha256 = sha256_of(root / self.path)


def _fsync_tree(root: Path) -> None:
    for p in [*root.rglob("*"), root]:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# Room the staging suffix needs after its prefix: "PID-" (up to 8 digits) and mkdtemp's 8 random characters.
STAGING_SUFFIX_BYTES = 20
STAGING = re.compile(r"\.(partial|auto)-(\d+)-")


def hidden_name(dest: Path, kind: str) -> str:
    """``.NAME.KIND-`` for a sibling of ``dest`` (staging folder, lock, scratch), shortened with a hash of the name
    when a long (legal) destination name would push the sibling past the file system's name limit."""
    base = dest.name
    if len(os.fsencode(f".{base}.{kind}-")) + STAGING_SUFFIX_BYTES > NAME_MAX:
        base = f"{base[:100]}~{hashlib.sha256(os.fsencode(base)).hexdigest()[:16]}"
    return f".{base}.{kind}-"


def staging_directory(dest: Path, kind: str = "partial") -> Path:
    """A new hidden folder next to ``dest``, named after this process (``.NAME.KIND-PID-XXXXXXXX``)."""
    check_component_length(dest, error=DestinationError)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with interrupts.critical():  # registered before a signal can leave it behind
            staging = interrupts.own_folder(Path(tempfile.mkdtemp(prefix=f"{hidden_name(dest, kind)}{os.getpid()}-", dir=dest.parent)))
        # mkdtemp makes the folder private (0700); the export becomes the user's folder, so it gets the permissions
        # any folder they create gets (0777 minus their umask).
        os.chmod(staging, 0o777 & ~current_umask())
        return staging
    except OSError as exc:
        raise DestinationError(f"cannot write here: {exc.strerror}", path=dest.parent) from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _clean_stale_staging(dest: Path) -> None:
    """Remove staging folders of ``dest`` whose owning process has died (called with the destination locked)."""
    for kind in ("partial", "auto"):
        prefix = hidden_name(dest, kind)
        for stale in dest.parent.glob(f"{glob_escape(prefix)}*"):
            m = re.match(r"(\d+)-", stale.name[len(prefix) :])
            if m and not _alive(int(m.group(1))) and stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def destination_lock(dest: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``dest`` (a ``.NAME.lock-`` file next to it) or refuse at once if another process
    holds it. The lock file is removed on release; a process that opened it just before is told by the inode check
    and retries on the new file."""
    path = dest.parent / f"{hidden_name(dest, 'lock')}file"
    while True:
        try:
            with interrupts.critical():
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
                interrupts.own_file(path)
        except OSError as exc:
            raise DestinationError(f"cannot lock the destination: {exc.strerror}", path=dest) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise DestinationError(
                "another export is writing to this destination right now", path=dest, hint="wait for it to finish, or choose another --out"
            ) from exc
        held = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and (current.st_ino, current.st_dev) == (held.st_ino, held.st_dev):
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        interrupts.disown(path)
        os.close(fd)


def check_inputs_outside(dest: Path, inputs: Iterable) -> None:
    """Refuse a destination that is, or contains, one of the command's inputs: replacing it would delete them."""
    for item in inputs:
        if item is not None and contains(dest, Path(item)):
            raise DestinationError(
                f"the destination contains the input {one_line(str(item), 300)}; replacing it would delete that input",
                path=dest,
                hint="choose another --out",
            )


def check_replaceable(dest: str | Path, ours: Iterable[str]) -> None:
    """--overwrite replaces a folder this toolkit wrote (it holds one of the ``ours`` files) or an empty one, never
    another folder: ``--out . --overwrite`` or a mistyped ``--out ~/thesis`` would otherwise delete it all."""
    dest, ours = Path(dest), tuple(ours)
    if not ours or not dest.is_dir() or dest.is_symlink():
        return
    if any((dest / name).is_file() for name in ours):
        return
    try:
        with os.scandir(dest) as entries:
            empty = next(entries, None) is None
    except OSError as exc:
        raise DestinationError(f"cannot read the destination: {exc.strerror}", path=dest) from exc
    if not empty:
        raise DestinationError(
            f"destination is a folder this toolkit did not write (no {' or '.join(ours)}) and is not empty; "
            "--overwrite replaces only a folder the toolkit wrote, or an empty one",
            path=dest,
            hint="choose another --out",
        )


@contextlib.contextmanager
def atomic_directory(dest: str | Path, *, overwrite: bool = False, inputs: Iterable = (), ours: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``dest`` in one rename, on failure it is removed. ``dest``
    is locked against other exports meanwhile; ``inputs`` (files and folders the command reads) must lie outside
    it. An existing ``dest`` is replaced only with ``overwrite`` and, when ``ours`` names files, only if it holds one
    of them or is empty (check_replaceable)."""
    dest = Path(dest).absolute()
    check_component_length(dest, error=DestinationError)
    check_inputs_outside(dest, inputs)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"cannot create the parent directory: {exc.strerror}", path=parent) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DestinationError("parent directory is not writable", path=parent)
    with destination_lock(dest):
        if dest.exists() and not overwrite:
            raise DestinationError("destination already exists", path=dest, hint="choose another --out, or pass --overwrite to replace it")
        if (dest.exists() or dest.is_symlink()) and not (dest.is_dir() and not dest.is_symlink()):
            raise DestinationError("destination exists and is not a directory", path=dest)
        check_replaceable(dest, ours)
        _clean_stale_staging(dest)
        staging = staging_directory(dest)
        try:
            yield staging
            _fsync_tree(staging)
            with interrupts.critical():  # a signal must not fall between the two renames
                if dest.exists():
                    old = staging_directory(dest)
                    os.rename(dest, old / "previous")
                    os.rename(staging, dest)
                    interrupts.disown(staging)
                    shutil.rmtree(old, ignore_errors=True)
                    interrupts.disown(old)
                else:
                    os.rename(staging, dest)
                    interrupts.disown(staging)
            with contextlib.suppress(OSError):
                fd = os.open(parent, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            interrupts.disown(staging)
            if isinstance(exc, OSError) and not isinstance(exc, DestinationError):
                raise DestinationError(f"writing the export failed: {exc.strerror or exc}", path=dest) from exc
            raise


def check_report_path(path: str | Path | None) -> None:
    """A report file the command will write at the end: refuse a folder or a missing parent before any work."""
    if path is None:
        return
    path = Path(path)
    check_component_length(path.absolute(), error=DestinationError)
    if path.is_dir():
        raise DestinationError("is a folder; the report needs a file name", path=path)
    if path.exists() and not path.is_file():
        raise DestinationError("is not a regular file; refusing to write the report into it", path=path)
    folder = path.absolute().parent
    if not folder.is_dir():
        raise DestinationError("the report's folder does not exist", path=folder)
    # Whether a file can be written there, tried now rather than after the whole run: a read-only folder, or a
    # pseudo file system such as /proc or /sys whose files open for writing (as root) but take no report.
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".exporter-probe-"):
            pass
    except OSError as exc:
        raise DestinationError(f"cannot write the report: creating a file in {folder} failed: {exc.strerror or exc}", path=path) from exc
    if path.exists() and not os.access(path, os.W_OK):
        raise DestinationError("the report file exists and is not writable", path=path)


def write_text_atomic(path: str | Path, text: str, *, errors: str = "strict") -> None:
    """``text`` as the UTF-8 file ``path``, all or nothing: written to a hidden file beside it (removed if the write
    fails or the process is interrupted) and renamed over ``path``, so a full disk, a file size limit or Ctrl-C never
    leaves half a report nor destroys the previous one. A symlink is written through (its target is replaced); a new
    file gets the permissions the umask gives, an existing one keeps its own."""
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name[:100]}.", suffix=".partial")
    temp = interrupts.own_file(Path(name))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors=errors) as f:
            f.write(text)
        os.chmod(temp, mode)
        with interrupts.critical():
            os.replace(temp, target)
            interrupts.disown(temp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        interrupts.disown(temp)
        raise


# Files a report may replace inside a folder the command reads: earlier reports (parity.json, report.html), never the
# manifest, an artifact or its bundle, an image or a model.
REPORT_SUFFIXES = (".json", ".html", ".htm")


def check_report_not_an_input(path: str | Path | None, inputs: Iterable) -> None:
    """Refuse a report path (``--json``, ``--html``) that is one of the command's input files, or a file inside one of
    its input folders that the command reads (anything but an earlier report; manifest.json and .mlpackage contents
    always): writing the report would destroy that input, as an ``--out`` containing it would."""
    if path is None:
        return
    report = Path(path)
    if not report.exists():
        return
    for item in inputs:
        if item is None or not Path(item).exists():
            continue
        item = Path(item)
        if item.is_dir() and item.suffix.lower() != ".mlpackage" and contains(item, report) and report.resolve() != item.resolve():
            inner = report.resolve().relative_to(item.resolve())
            in_bundle = any(part.lower().endswith(".mlpackage") for part in inner.parts[:-1])
            if report.suffix.lower() in REPORT_SUFFIXES and report.name != MANIFEST_NAME and not in_bundle:
                continue
        elif not contains(item, report):
            continue
        raise DestinationError(
            f"is an input of this command (in {one_line(str(item), 300)}); writing the report there would destroy it",
            path=report,
            hint="choose another report file",
        )


def write_json(path: Path, data) -> None:
    """``data`` as UTF-8 JSON. A lone surrogate (a file name that is not UTF-8, such as b"\\xff.png", reaches Python
    as "\\udcff.png") is written as its JSON escape, which reads back as the same string, instead of failing."""
    text = json.dumps(data, indent=2, ensure_ascii=False)
    text = re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)
    path.write_text(text + "\n", encoding="utf-8")


def size_table(artifacts: list[Artifact]) -> list[Artifact]:
    """Fill ``ratio_to_fp32`` against the fp32 artifact of the same format."""
    base = {a.format: a.bytes for a in artifacts if a.variant == "fp32"}
    for a in artifacts:
        ref = base.get(a.format)
        a.ratio_to_fp32 = round(a.bytes / ref, 4) if ref else None
    return artifacts


def manifest_dict(
    *,
    source: dict,
    labels: list[str],
    preprocessing: dict,
    artifacts: list[Artifact],
    skipped: list[dict],
    versions: dict,
    inference_model: dict | None = None,
) -> dict:
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "source": source,
        "labels": labels,
        "preprocessing": preprocessing,
        "artifacts": [asdict(a) for a in artifacts],
        "skipped": skipped,
        "versions": versions,
    }
    if inference_model is not None:
        manifest["inference_model"] = inference_model
    return manifest


def source_paths(model_path: str | Path, export_dir: str | Path) -> dict:
    """The source model's location as the manifest records it: absolute, and relative to the export folder (which
    still works when the export and the model move together, or when validate runs from another directory)."""
    model = Path(model_path).absolute()
    try:
        relative = os.path.relpath(model, Path(export_dir).absolute())
    except ValueError:  # another drive on Windows
        relative = None
    return {"path": str(model), "path_from_export": None if relative is None else Path(relative).as_posix()}


def find_source_model(manifest: dict, export_dir: str | Path) -> Path:
    """The source model of an export: relative to the export folder first, then the absolute (or, in manifests
    written before ``path_from_export`` existed, working-directory relative) path. Raises ModelLoadError naming
    every place tried and the option that fixes it."""
    from .errors import ModelLoadError

    source = manifest.get("source") or {}
    tried = []
    if source.get("path_from_export"):
        tried.append(Path(export_dir) / source["path_from_export"])
    if source.get("path"):
        tried.append(Path(source["path"]))
    for candidate in tried:
        try:
            if candidate.exists():
                return candidate
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not there either
            continue
    where = " or ".join(one_line(str(t), 300) for t in tried) or "nothing (manifest.json has no source path)"
    raise ModelLoadError(
        f"the source model recorded in manifest.json was not found (looked for {where})",
        path=Path(export_dir) / MANIFEST_NAME,
        hint="pass the Keras model with --model MODEL (model_path=... in Python)",
    )


MANIFEST_FORMATS = ("mlpackage", "mlmodel", "onnx")
SHA256 = re.compile(r"[0-9a-f]{64}\Z")
# Artifact file names and target strings from a manifest end up in paths and generated Swift: printable ASCII only.
ARTIFACT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
TARGET_TEXT = re.compile(r"[A-Za-z0-9 ._-]{1,40}\Z")


def read_manifest(folder: str | Path) -> dict:
    """manifest.json of an export folder, with its structure checked: an object with the schema version, labels,
    preprocessing, source and artifacts, each artifact a safe file name inside the folder."""
    from .errors import LabelsError
    from .labels import check_labels

    path = Path(folder) / MANIFEST_NAME
    if not Path(folder).exists():
        raise DestinationError("export folder not found (give the --out folder of `exporter convert`)", path=folder)
    if not path.exists() and not path.is_symlink():
        raise DestinationError("no manifest.json: not a folder written by `exporter convert`", path=folder)
    raw = read_regular(path, error=DestinationError, what="manifest.json", max_bytes=MAX_TEXT_BYTES)
    data = load_json(raw, path=path, error=DestinationError, what="manifest.json")

    def bad(message: str) -> DestinationError:
        return DestinationError(f"manifest.json is malformed: {message}", path=path)

    if not isinstance(data, dict):
        raise bad(f"must be a JSON object, got {type(data).__name__}")
    if data.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise DestinationError(
            f"manifest schema_version must be {MANIFEST_SCHEMA_VERSION}, got {quote(data.get('schema_version'))}", path=path
        )
    for key, kind in (("labels", list), ("preprocessing", dict), ("source", dict), ("artifacts", list)):
        if not isinstance(data.get(key), kind):
            raise bad(
                f"{key!r} must be a JSON {'list' if kind is list else 'object'}, got "
                f"{type(data.get(key)).__name__ if key in data else 'nothing'}"
            )
    try:
        check_labels(data["labels"], source=str(path))
    except LabelsError as exc:  # the manifest is what is broken
        raise bad(exc.problem) from exc
    if "name" in data and not (isinstance(data["name"], str) and ARTIFACT_NAME.match(data["name"])):
        raise bad(f"name must be a plain name, got {quote(data['name'])}")
    source = data["source"]
    if not isinstance(source.get("path"), str) or not isinstance(source.get("sha256"), str):
        raise bad("source must have a 'path' and a 'sha256' string")
    if not isinstance(source.get("path_from_export"), str | None):  # None: the model was not under a common folder
        raise bad(f"source path_from_export must be a string or null, got {type(source['path_from_export']).__name__}")
    seen = set()
    for i, art in enumerate(data["artifacts"]):
        if not isinstance(art, dict):
            raise bad(f"artifact {i} must be an object")
        for key in ("path", "format", "variant", "sha256", "minimum_deployment_target"):
            if not isinstance(art.get(key), str):
                raise bad(f"artifact {i} must have a {key!r} string")
        if not isinstance(art.get("bytes"), int) or isinstance(art.get("bytes"), bool):
            raise bad(f"artifact {i} must have a whole number of 'bytes'")
        if not ARTIFACT_NAME.match(art["path"]) or ".." in art["path"] or len(art["path"]) > NAME_MAX:
            raise bad(f"artifact {i} path {quote(art['path'])} must be a plain file name inside the export folder")
        if art["format"] not in MANIFEST_FORMATS:
            raise bad(f"artifact {i} format must be one of {list(MANIFEST_FORMATS)}, got {quote(art['format'])}")
        if not ARTIFACT_NAME.match(art["variant"]) or not TARGET_TEXT.match(art["minimum_deployment_target"]):
            raise bad(f"artifact {i} variant or target has unexpected characters")
        if not SHA256.match(art["sha256"]):
            raise bad(f"artifact {i} sha256 must be 64 lowercase hex digits")
        if art["path"] in seen:
            raise bad(f"artifact {quote(art['path'])} is listed twice")
        seen.add(art["path"])
    calibration = data.get("calibration")
    if calibration is not None:
        hashes = calibration.get("sha256") if isinstance(calibration, dict) else None
        if not isinstance(hashes, list) or not all(isinstance(h, str) and SHA256.match(h) for h in hashes):
            raise bad("calibration must be an object whose 'sha256' is a list of 64-hex-digit strings")
    return data


def check_bundle(root: Path, bundle: Path, *, error: type[ExporterError], what: str = "bundle") -> None:
    """Every file of an .mlpackage (or another folder read as one file: an unzipped Keras model, ``what``) resolves
    (symlinks included) inside ``root`` and is a regular file or a folder: a FIFO would hang whatever reads the
    package, a symlink would have it read a file from elsewhere."""
    for p in tree(bundle, error=error, what=what):
        if p.is_symlink():  # the walk enters real folders only, so nothing else can lead outside
            inside(root, p.relative_to(root).as_posix(), error=error, where=bundle, what=f"{what} file")
        try:
            mode = p.stat().st_mode
        except OSError as exc:  # a link to nothing
            raise error(f"{what} file cannot be read: {exc.strerror}", path=p) from exc
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise error(f"{what} holds something that is not a regular file (a FIFO or device)", path=p)


def artifact_file(root: str | Path, art: dict) -> Path:
    """The artifact's file or bundle inside ``root``, refused when it resolves outside (symlinks included), is
    missing, is not a regular file (a bundle: a folder of regular files and folders only), or is not the file the
    export wrote: its SHA-256 must be the one manifest.json records (a file swapped or edited since is named)."""
    root = Path(root)
    manifest = root / MANIFEST_NAME
    target = inside(root, art["path"], error=DestinationError, where=manifest, what="artifact")
    if not target.exists():
        raise DestinationError("listed in manifest.json but missing", path=target)
    if art["format"] == "mlpackage":
        if not target.is_dir():
            raise DestinationError("is listed as an .mlpackage but is not a folder", path=target)
        check_bundle(root, target, error=DestinationError)
    else:
        mode = target.stat().st_mode
        if not stat.S_ISREG(mode):
            raise DestinationError("is not a regular file", path=target)
    if sha256_of(target) != art["sha256"]:
        raise _changed(target)
    return target
