"""Checks that cost milliseconds, run before TensorFlow, Keras or coremltools is imported: a mistake in an option, a
missing folder or an existing destination is reported in well under a second instead of after the model loads.

Nothing here imports a heavy library (a test asserts that ``tensorflow`` is not in ``sys.modules`` after a failure).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import ConfigError, DestinationError


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """ " (did you mean 'int8'?)" for the closest valid choice, or "" when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_choice(kind: str, value: str, choices: Iterable[str], where: str = "") -> ConfigError:
    choices = list(choices)
    return ConfigError(f"unknown {kind} {value!r}{where}{did_you_mean(value, choices)}; valid {kind}s are {choices}")


def model_file(path: str | os.PathLike, *, trust_code: bool = False) -> Path:
    """The model file exists, is of a known type, is not empty, and its architecture reads (no Keras needed)."""
    from .loading import inspect_model_file

    p = Path(path)
    inspect_model_file(p, trust_code=trust_code)
    return p


def destination(out: str | os.PathLike, *, overwrite: bool) -> None:
    from .safety import check_component_length

    out = Path(out)
    check_component_length(out.absolute(), error=DestinationError)  # Path.exists raises on a name over 255 bytes
    if out.exists() and not overwrite:
        raise DestinationError("destination already exists", path=out, hint="choose another --out, or pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise DestinationError("destination exists and is not a directory", path=out)


def image_folder(folder: str | os.PathLike, *, option: str) -> None:
    """The folder exists and holds at least one image file (listing only; nothing is decoded)."""
    from .errors import ImageError
    from .images import list_images

    try:
        list_images(Path(folder))
    except ImageError as exc:
        raise ImageError(f"{exc} (given as {option})") from exc


def export_inputs(model_path, labels, out, preprocessing, options) -> None:
    """Everything ``export`` can check without loading the model. Labels and the preprocessing contract are parsed
    (their fit to the model is checked after loading)."""
    from .labels import read_labels
    from .preprocessing import PRESETS, Preprocessing

    model_file(model_path, trust_code=options.trust_code)
    destination(out, overwrite=options.overwrite)
    if isinstance(labels, (str, os.PathLike)):
        read_labels(Path(labels))
    if isinstance(preprocessing, str) and preprocessing in PRESETS:
        pass  # a preset is sized from the model's input, known after loading
    elif isinstance(preprocessing, (str, os.PathLike)):
        Preprocessing.from_file(Path(preprocessing))
    elif isinstance(preprocessing, dict):
        Preprocessing.from_dict(preprocessing)
    needs_calibration = [v.key for v in options.selected if v.needs_calibration]
    if (
        options.variants
        and needs_calibration
        and options.calibration_images is None
        and not (options.quantize == "auto" and options.validation_images is not None)
    ):
        raise ConfigError(
            f"variant {needs_calibration[0]} needs calibration images",
            hint="pass --calibration-images FOLDER (calibration_images=...), or leave the variant out",
        )
    if options.calibration_images is not None:
        image_folder(options.calibration_images, option="--calibration-images")
    if options.validation_images is not None:
        image_folder(options.validation_images, option="--images")
