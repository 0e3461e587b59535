"""The two tasks the sample models learn, and the held-out image files written from data training never sees.

digits: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), upscaled and given to the models as RGB.
        A fixed, seeded split by sample index: held-out samples are different images from the training samples.
photos: scikit-image's bundled photographs, one class per material (brick, grass, gravel, stars, tissue). Training
        crops come only from the left part of each photograph and held-out crops only from the right part, with a
        gap between them, so no pixel of a held-out image was ever seen in training.

This module needs numpy, Pillow, scikit-learn and scikit-image only (no TensorFlow), so tests can check the split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
HELDOUT = ROOT / "heldout"
SEED = 20261123

# ---------------------------------------------------------------------------------------------------------------- digits
DIGIT_LABELS = [str(i) for i in range(10)]
DIGITS_HELDOUT_COUNT = 300


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, 8) uint8 images on 0..255 (ink bright on dark), and (N,) int labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, d.target.astype(np.int64)


def digits_split() -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, heldout): disjoint, seeded, stratified by class."""
    _, y = digits_arrays()
    rng = np.random.default_rng(SEED)
    held = []
    per_class = DIGITS_HELDOUT_COUNT // len(DIGIT_LABELS)
    for c in range(len(DIGIT_LABELS)):
        idx = np.flatnonzero(y == c)
        held.extend(rng.choice(idx, size=per_class, replace=False).tolist())
    held = np.array(sorted(held))
    train = np.setdiff1d(np.arange(len(y)), held)
    return train, held


def render_digit(img8: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """An 8x8 digit as a Pillow 'L' image of (width, height) ``size``, bilinear."""
    return Image.fromarray(img8, mode="L").resize(size, Image.Resampling.BILINEAR)


# ---------------------------------------------------------------------------------------------------------------- photos
PHOTO_LABELS = ["brick", "grass", "gravel", "stars", "tissue"]
_PHOTO_SOURCES = {"brick": "brick", "grass": "grass", "gravel": "gravel", "stars": "hubble_deep_field", "tissue": "immunohistochemistry"}
TRAIN_FRACTION = 0.60  # training crops lie wholly in x < 0.60 W
HELDOUT_START = 0.66  # held-out crops lie wholly in x >= 0.66 W (the gap keeps even resampling kernels apart)
PHOTOS_HELDOUT_PER_CLASS = 40


def photo(label: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, _PHOTO_SOURCES[label])())


def photo_regions(label: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """x-ranges [start, stop) of the training and the held-out region of this class's photograph."""
    width = photo(label).shape[1]
    return (0, int(width * TRAIN_FRACTION)), (int(np.ceil(width * HELDOUT_START)), width)


def random_crop_box(rng, region: tuple[int, int], height: int, min_side: int = 48, max_side: int = 140) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) box inside the x-region, side 48..140 px, aspect ratio 3:4..4:3."""
    x0, x1 = region
    side = int(rng.integers(min_side, max_side + 1))
    aspect = float(rng.uniform(0.75, 4 / 3))
    w = int(min(x1 - x0, max(min_side, round(side * aspect))))
    h = int(min(height, side))
    left = int(rng.integers(x0, x1 - w + 1))
    top = int(rng.integers(0, height - h + 1))
    return left, top, left + w, top + h


def crop(label: str, box: tuple[int, int, int, int]) -> Image.Image:
    arr = photo(label)
    left, top, right, bottom = box
    part = arr[top:bottom, left:right]
    return Image.fromarray(part, mode="L" if part.ndim == 2 else "RGB")


# ---------------------------------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class HeldoutRecord:
    file: str  # relative to HELDOUT
    label: str
    task: str
    source: dict  # digits: {"index": i}; photos: {"photo": name, "box": [l, t, r, b]}


def _save(img: Image.Image, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        img.save(path, format="JPEG", quality=95)
    else:
        img.save(path, format="PNG")


def _variant(img: Image.Image, k: int) -> tuple[Image.Image, str, str]:
    """Vary mode and format the way real folders do: grayscale, RGB, alpha, JPEG and PNG."""
    kind = k % 5
    if kind == 0:
        return img.convert("L"), "png", "PNG"
    if kind == 1:
        return img.convert("RGB"), "jpg", "JPEG"
    if kind == 2:
        rgba = img.convert("RGBA")  # fully opaque alpha: the alpha rule must leave these pixels unchanged
        return rgba, "png", "PNG"
    if kind == 3:
        return img.convert("RGB"), "png", "PNG"
    return img, "jpg" if img.mode == "RGB" else "png", "JPEG" if img.mode == "RGB" else "PNG"


def heldout_photo_crops(rng, per_class: int):
    """(label, n, box, image, extension, format) for ``per_class`` random crops of each photo class's held-out region,
    varied in mode and format (``_variant``), class by class: the held-out folder's photos, and benchmarks/fresh_crops'
    with another generator."""
    for label in PHOTO_LABELS:
        arr = photo(label)
        _, region = photo_regions(label)
        for n in range(per_class):
            box = random_crop_box(rng, region, arr.shape[0])
            yield (label, n, box, *_variant(crop(label, box), n))


def write_heldout() -> list[HeldoutRecord]:
    """(Re)write every held-out image and ``heldout/manifest.json``; returns the records."""
    import shutil

    if HELDOUT.exists():
        shutil.rmtree(HELDOUT)
    records: list[HeldoutRecord] = []
    images, y = digits_arrays()
    _, held = digits_split()
    rng = np.random.default_rng(SEED + 1)
    sizes = [(24, 24), (32, 32), (40, 40), (64, 64), (28, 36), (48, 40)]  # some not square
    for n, i in enumerate(held):
        size = sizes[int(rng.integers(len(sizes)))]
        img, ext, fmt = _variant(render_digit(images[i], size), n)
        rel = f"digits/{DIGIT_LABELS[y[i]]}/digit_{i:04d}.{ext}"
        _save(img, HELDOUT / rel, fmt)
        records.append(HeldoutRecord(rel, DIGIT_LABELS[y[i]], "digits", {"index": int(i)}))
    for label, n, box, img, ext, fmt in heldout_photo_crops(rng, PHOTOS_HELDOUT_PER_CLASS):
        rel = f"photos/{label}/{label}_{n:03d}.{ext}"
        _save(img, HELDOUT / rel, fmt)
        records.append(HeldoutRecord(rel, label, "photos", {"photo": _PHOTO_SOURCES[label], "box": list(box)}))
    manifest = {"seed": SEED, "records": [r.__dict__ for r in records]}
    (HELDOUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return records


def heldout_records() -> list[HeldoutRecord]:
    data = json.loads((HELDOUT / "manifest.json").read_text())
    return [HeldoutRecord(**r) for r in data["records"]]
