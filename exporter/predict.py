"""``exporter predict``: classify images with exported files, top-k labels per image and artifact.

Core ML files run through real Core ML on macOS and through the toolkit's executor elsewhere; ONNX files through
onnxruntime. Each artifact brings its own labels and preprocessing (from the export's manifest.json, or embedded in
the file), so one file copied out of its export still works. A Core ML classifier made elsewhere (no exporter
contract in it) runs in the executor, fed its own image input's size (``_own_contract``).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import _callable_as
from .errors import ConfigError, ConversionError, ImageError, ModelLoadError
from .packaging import MANIFEST_NAME

_callable_as(__name__, "exporter.predict:predict")  # exporter.predict(...) stays the function once this is imported

if TYPE_CHECKING:
    from .preprocessing import Preprocessing

ARTIFACT_SUFFIXES = {".mlpackage": "mlpackage", ".mlmodel": "mlmodel", ".onnx": "onnx"}


@dataclass(frozen=True)
class _Target:
    path: Path
    format: str
    variant: str
    preprocessing: dict | None  # from the manifest; None: read it from the file
    sha256: str | None = None  # from the manifest: the runner holds the bytes it loads to it


def _targets(target: Path) -> list[_Target]:
    if target.is_dir() and target.suffix != ".mlpackage":
        from .packaging import artifact_file, read_manifest

        # the export folder is untrusted: every artifact it lists must stay inside it and be a regular file (a FIFO
        # would hang onnxruntime's read, a symlink would run a file from elsewhere), as validate requires
        manifest = read_manifest(target)
        return [
            _Target(artifact_file(target, a), a["format"], a["variant"], manifest["preprocessing"], a["sha256"])
            for a in manifest["artifacts"]
        ]
    fmt = ARTIFACT_SUFFIXES.get(target.suffix.lower())
    if fmt is None:
        raise ConfigError(f"not an export folder or a {', '.join(ARTIFACT_SUFFIXES)} file", path=target)
    if fmt != "mlpackage":
        from .safety import check_regular

        check_regular(target, error=ModelLoadError, what=f"{target.suffix} file")
    elif target.is_dir():
        from .packaging import check_bundle

        check_bundle(target, target, error=ConversionError)  # before anything reads the package: no FIFO, no way out
    manifest_file = target.parent / MANIFEST_NAME
    if manifest_file.is_file():
        from .errors import DestinationError
        from .packaging import artifact_file, read_manifest

        try:
            listing: dict | None = read_manifest(target.parent)
        except DestinationError:
            listing = None  # not this file's manifest (or not a readable one): use what the file embeds
        art = next((a for a in listing["artifacts"] if a["path"] == target.name), None) if listing else None
        if listing and art and art["format"] == fmt:
            # an export's artifact given by its path is held to its manifest as the folder's artifacts are: the file
            # must still be the one the export wrote (its SHA-256), inside the folder and a regular file
            return [_Target(artifact_file(target.parent, art), fmt, art["variant"], listing["preprocessing"], art["sha256"])]
    return [_Target(target, fmt, "", None)]


def _image_files(images: list[str | os.PathLike]) -> list[Path]:
    from .images import list_images

    files: list[Path] = []
    for item in map(Path, images):
        if item.is_dir():
            files += [it.path for it in list_images(item)]
        elif item.is_file():
            files.append(item)
        elif item.exists():
            raise ImageError("is not a regular file (a FIFO, device or socket); expected an image file", path=item)
        else:
            raise ImageError("image not found", path=item)
    return files


def _embedded(path: Path, fmt: str, sha256: str | None = None) -> tuple[dict[str, str], object | None]:
    """The file's own metadata (labels and preprocessing contract), from bytes held to the manifest's ``sha256``, and
    a Core ML file's model description (its inputs: ``_own_contract``), read in the same pass; None for ONNX."""
    if fmt == "onnx":
        from .runtime import load_onnx  # bounded, regular files only, external data kept inside the folder

        return {p.key: p.value for p in load_onnx(path, sha256).metadata_props}, None
    from .packaging import VerifiedReads
    from .runtime.executor import load_spec  # the package's paths kept inside it, regular files only, bounded

    reads = VerifiedReads(path, sha256)
    spec = load_spec(path, reads)[0]
    reads.verify()
    return dict(spec.description.metadata.userDefined), spec.description


def _runner(t: _Target):
    from .preprocessing import Preprocessing
    from .runtime import CoreMLRunner, ExecutorRunner, OnnxRunner
    from .safety import load_json

    meta = None
    if t.preprocessing is None:
        meta, description = _embedded(t.path, t.format)
        if "exporter.preprocessing" not in meta:
            if t.format == "onnx":
                raise ConfigError(
                    "the ONNX file embeds no preprocessing contract (exporter.preprocessing), and an ONNX input does not say "
                    "how its pixels are normalised; predict reads ONNX files written by `exporter convert`",
                    path=t.path,
                )
            # a Core ML classifier made elsewhere (coremltools, Create ML, a model gallery): its image input holds its
            # own normalisation, so it needs no contract, only the size, which the file gives
            own = _own_contract(description, t.path)
            foreign = ExecutorRunner(t.path, own, sha256=t.sha256)
            foreign.engine = {**foreign.engine, "contract": own.notes}
            return foreign, _checked(list(foreign.executor.labels), t.path), own
        embedded = load_json(meta["exporter.preprocessing"], path=t.path, error=ConversionError, what="embedded preprocessing contract")
        pre = Preprocessing.from_dict(embedded, source=str(t.path))
    else:
        pre = Preprocessing.from_dict(t.preprocessing, source=str(t.path.parent / MANIFEST_NAME))
    if t.format == "onnx":
        onnx_runner = OnnxRunner(t.path, pre, sha256=t.sha256)
        return onnx_runner, _checked(onnx_runner.labels, t.path), pre
    if platform.system() == "Darwin":
        meta = meta or _embedded(t.path, t.format, t.sha256)[0]
        labels = _checked(load_json(meta.get("exporter.labels", ""), path=t.path, error=ConversionError, what="embedded labels"), t.path)
        return CoreMLRunner(t.path, pre, labels, t.sha256), labels, pre
    runner = ExecutorRunner(t.path, pre, sha256=t.sha256)
    return runner, _checked(list(runner.executor.labels), t.path), pre


def _own_contract(description, path: Path) -> Preprocessing:
    """The preprocessing of a Core ML file that embeds no exporter contract, from its image input (``description``,
    the file's model description as ``_embedded`` read it): its size and colour space, every normalisation left to the
    file, and the image fitted as Vision fits it by default (VNImageCropAndScaleOption.centerCrop: the central
    square, then scaled). Such a file runs in the executor on every platform (its labels and probabilities come from
    the file's classifier)."""
    from .preprocessing import Preprocessing
    from .runtime.executor.image import image_input

    image = image_input(description, str(path))
    return Preprocessing(
        input_size=(image.height, image.width),
        channel_order="L" if image.channels == 1 else "RGB",  # the file reorders RGB to BGR itself
        resize="center_crop",
        in_model=True,
        notes=f"no exporter contract in the file: its own {image.width}x{image.height} {image.order} image input, "
        "the image centre-cropped and scaled as Vision does by default",
    )


def _checked(labels: list[str], path: Path) -> list[str]:
    """The labels a file embeds, held to the rules labels files are (no control or bidi characters, unique): a file
    from elsewhere is as untrusted as a labels file."""
    from .errors import LabelsError
    from .labels import check_labels

    try:
        return check_labels(labels, source=str(path))
    except LabelsError as exc:  # the file is what is broken
        raise ConversionError(f"its embedded labels are unusable: {exc.problem}", path=path) from exc


def predict(
    target: str | os.PathLike, images: list[str | os.PathLike] | str | os.PathLike, *, top_k: int = 5, verbose: bool = False
) -> dict:
    """Top-k labels with probabilities for every image under every artifact of ``target`` (an export folder or one
    .mlpackage/.mlmodel/.onnx file). Returns ``{"predictions": [{"image", "artifact", "engine", "top": [{"label",
    "probability"}]}], "environment": ...}``."""
    from .console import quiet_libraries

    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    target = Path(target)
    if not target.exists():
        raise ModelLoadError("artifact or export folder not found", path=target)
    targets = _targets(target)
    files = _image_files(list(images))
    if not targets:  # an export folder listing no artifacts: printing nothing and exiting 0 would read as "done"
        from .errors import DestinationError

        raise DestinationError("manifest.json lists no artifacts: there is nothing to predict with", path=target)
    with quiet_libraries(verbose, preload=any(t.format != "onnx" for t in targets)):
        return _predict(targets, files, top_k)


def _predict(targets: list[_Target], files: list[Path], top_k: int) -> dict:
    import numpy as np

    from .images import load_image
    from .validation.parity import environment

    rows = []
    for t in targets:
        runner, labels, pre = _runner(t)
        for f in files:
            probs = runner(load_image(f, pre)[None])[0]
            order = np.argsort(-probs, kind="stable")[:top_k]
            rows.append(
                {
                    "image": str(f),
                    "artifact": t.path.name,
                    "format": t.format,
                    "variant": t.variant,
                    "engine": runner.engine,
                    "top": [{"label": labels[i], "probability": float(probs[i])} for i in order],
                }
            )
    return {"predictions": rows, "environment": environment()}


def format_predictions(result: dict) -> str:
    """The terminal table. Image file names and labels are untrusted text (a folder's file names, a file's embedded
    labels): control and bidirectional formatting characters are shown escaped, never sent to the terminal."""
    from .errors import printable
    from .runtime import engine_text

    lines: list[str] = []
    by_image: dict[str, list[dict]] = {}
    for row in result["predictions"]:
        by_image.setdefault(row["image"], []).append(row)
    width = max((len(printable(r["artifact"])) for r in result["predictions"]), default=0)
    for image, rows in by_image.items():
        lines.append(printable(image))
        for r in rows:
            top = "  ".join(f"{printable(t['label'])} {t['probability']:.4f}" for t in r["top"])
            lines.append(f"  {printable(r['artifact']).ljust(width)}  {top}   [{engine_text(r['engine'])}]")
    return "\n".join(lines)
