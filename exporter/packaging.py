"""Artifacts on disk: atomic output directories, sizes, SHA-256, and the manifest.

An export writes everything into a hidden staging directory next to the destination, on the same file system, and
renames it into place only when every artifact and the manifest are complete and flushed. A failed, interrupted or
killed export therefore leaves the destination absent (or, with ``overwrite``, the previous export intact), never
half-written. Leftover staging directories from a killed process are named ``.DEST.partial-*`` and are removed by the
next export to the same destination.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import DestinationError

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


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a bundle directory (each file's relative path and content, sorted, except the
    ``UNHASHED_BUNDLE_FILES``)."""
    path = Path(path)
    if not path.is_dir():
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q.name not in UNHASHED_BUNDLE_FILES):
        h.update(p.relative_to(path).as_posix().encode() + b"\0" + bytes.fromhex(sha256_of(p)))
    return h.hexdigest()


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


def _clean_stale_staging(dest: Path) -> None:
    for stale in dest.parent.glob(f".{dest.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(dest: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces ``dest`` in one rename, on failure it is removed."""
    dest = Path(dest).absolute()
    if dest.exists() and not overwrite:
        raise DestinationError("destination already exists", path=dest,
                               hint="choose another --out, or pass --overwrite to replace it")
    if dest.exists() and not dest.is_dir():
        raise DestinationError("destination exists and is not a directory", path=dest)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DestinationError(f"cannot create the parent directory: {exc.strerror}", path=parent) from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DestinationError("parent directory is not writable", path=parent)
    _clean_stale_staging(dest)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=parent))
        # mkdtemp makes the folder private (0700); the export becomes the user's folder, so it gets the permissions
        # any folder they create gets (0777 minus their umask).
        os.chmod(staging, 0o777 & ~current_umask())
    except OSError as exc:
        raise DestinationError(f"cannot write here: {exc.strerror}", path=parent) from exc
    try:
        yield staging
        _fsync_tree(staging)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-old-", dir=parent))
            os.rename(dest, old / "previous")
            os.rename(staging, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, dest)
        with contextlib.suppress(OSError):
            fd = os.open(parent, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, DestinationError):
            raise DestinationError(f"writing the export failed: {exc.strerror or exc}", path=dest) from exc
        raise


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def size_table(artifacts: list[Artifact]) -> list[Artifact]:
    """Fill ``ratio_to_fp32`` against the fp32 artifact of the same format."""
    base = {a.format: a.bytes for a in artifacts if a.variant == "fp32"}
    for a in artifacts:
        ref = base.get(a.format)
        a.ratio_to_fp32 = round(a.bytes / ref, 4) if ref else None
    return artifacts


def manifest_dict(*, source: dict, labels: list[str], preprocessing: dict, artifacts: list[Artifact],
                  skipped: list[dict], versions: dict, inference_model: dict | None = None) -> dict:
    manifest = {"schema_version": MANIFEST_SCHEMA_VERSION, "source": source, "labels": labels,
                "preprocessing": preprocessing, "artifacts": [asdict(a) for a in artifacts], "skipped": skipped,
                "versions": versions}
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
        if candidate.exists():
            return candidate
    where = " or ".join(str(t) for t in tried) or "nothing (manifest.json has no source path)"
    raise ModelLoadError(f"the source model recorded in manifest.json was not found (looked for {where})",
                         path=Path(export_dir) / MANIFEST_NAME,
                         hint="pass the Keras model with --model MODEL (model_path=... in Python)")


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DestinationError("no manifest.json: not a folder written by `exporter convert`", path=folder) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DestinationError(f"manifest.json is corrupt: {exc}", path=path) from exc
    if data.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise DestinationError(f"manifest schema_version must be {MANIFEST_SCHEMA_VERSION}, got "
                               f"{data.get('schema_version')!r}", path=path)
    return data
