"""Calibration images for the quantization benchmark, drawn from the sample models' TRAINING data (never the held-out
images the benchmark measures on): rendered digits of the training split, and photo crops from the training region
of each photograph. Written as ordinary image folders (label sub-folders), so the exporter reads them like a user's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CALIBRATION_PER_TASK = 64


def write_calibration(task: str, folder: Path, count: int = CALIBRATION_PER_TASK, seed: int = 7) -> Path:
    from sample_models import data

    folder = Path(folder)
    if folder.exists() and any(folder.rglob("*.png")):
        return folder
    rng = np.random.default_rng(seed)
    if task == "digits":
        images, labels = data.digits_arrays()
        train, _held = data.digits_split()
        for i in rng.choice(train, size=count, replace=False):
            out = folder / str(labels[i]) / f"train_{i:04d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            data.render_digit(images[i], (64, 64)).save(out)
    elif task == "photos":
        for k in range(count):
            label = data.PHOTO_LABELS[k % len(data.PHOTO_LABELS)]
            region, _ = data.photo_regions(label)
            box = data.random_crop_box(rng, region, data.photo(label).shape[0])
            out = folder / label / f"train_{k:03d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            data.crop(label, box).convert("RGB").save(out)
    else:
        raise ValueError(f"unknown task {task!r}")
    return folder
