"""Golden parity files: what the Keras model answers on chosen held-out images, written so Swift can check a Core ML
model on a Mac, simulator or device against it.

The images are stored as the model sees them: decoded, oriented and resized by ``exporter.images`` to the model input
size, as lossless 8-bit RGB PNG. Fed to Core ML at that size, Vision's and Core ML's own resizing is the identity, so
the comparison measures the converted model and not two resamplers. The format is documented in
ios_harness/GOLDEN_FORMAT.md and versioned by ``GOLDEN_SCHEMA_VERSION``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..capabilities import VARIANTS, variant_names
from ..errors import ConfigError
from ..images import ImageItem, iter_batches, list_images
from ..packaging import atomic_directory, write_json
from ..preprocessing import Preprocessing

__all__ = ["as_rgb", "choose_images", "read_golden", "tolerances", "variant_names", "write_golden"]

GOLDEN_SCHEMA_VERSION = 1
GOLDEN_NAME = "golden.json"
IMAGES_FOLDER = "images"
# The choice of images must not change between runs, or two golden sets of one model would disagree for no reason.
SELECTION_SEED = 0
# Keras runs the golden images in batches of this size: memory stays flat for large input sizes.
BATCH_SIZE = 16


def tolerances() -> dict[str, dict]:
    """The default gate of every variant name, as golden.json stores it (null where a gate has no bound).

    golden.json keys gates by variant name alone (its Swift reader does too); a name's gate is that of its first
    entry in the capability table, ML Program first, which is the file the Swift package prefers. The table gives
    every format's variant of one name the same gate today; tests/test_capabilities.py holds that for Core ML."""
    out: dict[str, dict] = {}
    for v in VARIANTS:
        out.setdefault(v.name, {"max_abs_prob": v.gate.max_abs_prob, "min_top1": v.gate.min_top1})
    return out


def choose_images(items: list[ImageItem], count: int | None) -> list[ImageItem]:
    """``count`` images (all when None), taken in turn from each label's sub-folder so every class is represented,
    each class in a seeded random order; returned sorted by path."""
    check_count(count)
    if count is None or count >= len(items):
        return list(items)
    rng = np.random.default_rng(SELECTION_SEED)
    groups: dict[str | None, list[ImageItem]] = {}
    for item in items:
        groups.setdefault(item.label, []).append(item)
    queues = [[group[i] for i in rng.permutation(len(group))] for _, group in sorted(groups.items(), key=lambda kv: str(kv[0]))]
    chosen: list[ImageItem] = []
    while len(chosen) < count:
        for queue in queues:
            if queue and len(chosen) < count:
                chosen.append(queue.pop(0))
    return sorted(chosen, key=lambda it: it.path)


def _text(name: str) -> str:
    """A file or folder name as text for golden.json: a name that is not UTF-8 (a lone surrogate in Python) becomes
    backslash escapes, since Swift's JSONDecoder refuses a lone-surrogate escape and with it the whole golden file."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def check_count(count: int | None) -> None:
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ConfigError(f"golden image count must be a whole number of at least 1 (or None for all), got {count!r}")


def as_rgb(pixels: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """uint8 HxWxC pixels in the contract's channel order -> HxWx3 RGB (gray repeated: any luma weights that sum to
    one give the gray value back)."""
    if pre.channel_order == "BGR":
        return np.ascontiguousarray(pixels[..., ::-1])
    if pre.channel_order == "L":
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    return np.ascontiguousarray(pixels)


def write_golden(
    export_dir: str | Path,
    images_folder: str | Path,
    out_dir: str | Path,
    *,
    count: int | None = None,
    model_path: str | Path | None = None,
    overwrite: bool = False,
    trust_code: bool = False,
) -> dict:
    """Write golden files for the export in ``export_dir`` into ``out_dir`` (atomically) and return golden.json's
    content. ``count`` images are chosen from ``images_folder`` (all when None); the Keras model is the one the
    manifest records unless ``model_path`` is given, and must be the file the export was made from."""
    from PIL import Image

    from .. import __version__
    from ..exports import open_export
    from ..runtime import KerasRunner
    from ..versions import library_versions

    check_count(count)
    opened = open_export(export_dir, model_path=model_path, trust_code=trust_code)
    manifest, pre, labels, loaded = opened.manifest, opened.preprocessing, opened.labels, opened.loaded
    folder = Path(images_folder)
    chosen = choose_images(list_images(folder), count)
    keras_run = KerasRunner(loaded.model, pre)
    height, width = pre.input_size
    records: list[dict] = []
    with atomic_directory(out_dir, overwrite=overwrite, inputs=(opened.root, folder, model_path), ours=(GOLDEN_NAME,)) as stage:
        (stage / IMAGES_FOLDER).mkdir()
        for chunk, pixels in iter_batches(chosen, pre, batch_size=BATCH_SIZE):
            probs = keras_run(pixels)
            for item, x, p in zip(chunk, pixels, probs, strict=True):
                name = f"{IMAGES_FOLDER}/{len(records):04d}.png"
                Image.fromarray(as_rgb(x, pre)).save(stage / name, format="PNG")
                top = int(np.argmax(p))
                records.append(
                    {
                        "file": name,
                        "source": _text(item.path.relative_to(folder).as_posix()),
                        "label": None if item.label is None else _text(item.label),
                        "keras_top_index": top,
                        "keras_top_label": labels[top],
                        "probabilities": [float(v) for v in p],
                    }
                )
        versions = library_versions()
        golden: dict = {
            "schema_version": GOLDEN_SCHEMA_VERSION,
            "generator": {"exporter": __version__, **{k: versions[k] for k in ("keras", "tensorflow", "numpy", "pillow") if k in versions}},
            "source": {"file": loaded.path.name, "sha256": loaded.sha256},
            "artifacts": [
                {"path": a["path"], "format": a["format"], "variant": a["variant"], "sha256": a["sha256"]} for a in manifest["artifacts"]
            ],
            "labels": labels,
            "preprocessing": pre.to_dict(),
            "image_format": {"type": "png", "color": "RGB", "bit_depth": 8, "height": height, "width": width},
            "tolerances": tolerances(),
            "images": records,
        }
        write_json(stage / GOLDEN_NAME, golden)
    return golden


def read_golden(folder: str | Path) -> dict:
    """golden.json of ``folder``, with its schema version checked."""
    from ..errors import DestinationError
    from ..safety import load_json, read_regular

    path = Path(folder) / GOLDEN_NAME
    if not path.exists() and not path.is_symlink():
        raise DestinationError("no golden.json: not a folder written by write_golden", path=folder)
    # a regular file within the file-size budget (not a FIFO, not /dev/zero), parsed without exhausting the stack
    data = load_json(read_regular(path, error=DestinationError, what="golden.json"), path=path, error=DestinationError, what="golden.json")
    if not isinstance(data, dict) or data.get("schema_version") != GOLDEN_SCHEMA_VERSION:
        got = data.get("schema_version") if isinstance(data, dict) else None
        raise DestinationError(f"golden schema_version must be {GOLDEN_SCHEMA_VERSION}, got {got!r}", path=path)
    return data
