from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
logging.getLogger("coremltools").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
SAMPLE_NAMES = ["mobilenet_v1_digits", "mobilenet_v2_digits", "squeezenet_digits", "transfer_photos"]


def sample(name: str) -> dict:
    folder = SAMPLES / name
    card = json.loads((folder / "card.json").read_text())
    return {
        "name": name,
        "folder": folder,
        "model": folder / "model.keras",
        "labels": folder / "labels.txt",
        "preprocessing": folder / "preprocessing.json",
        "card": card,
        "heldout": SAMPLES / card["heldout_folder"],
    }


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """Each sample model exported once per session with every variant this machine can build."""
    from exporter.api import ExportOptions, export

    cache: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in cache:
            s = sample(name)
            out = tmp_path_factory.mktemp("exports") / name
            manifest = export(
                s["model"], s["labels"], out, preprocessing=s["preprocessing"], options=ExportOptions(calibration_images=s["heldout"])
            )
            cache[name] = (out, manifest)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def small_export(tmp_path_factory):
    """mobilenet_v1_digits exported once as fp32 .mlpackage, .mlmodel and .onnx, and 10 of its held-out images
    (2 from each of 5 classes): the material of the hostile-file tests, which damage copies of it."""
    import shutil

    from exporter.api import ExportOptions, export

    s = sample("mobilenet_v1_digits")
    root = tmp_path_factory.mktemp("hostile")
    out = root / "export"
    export(s["model"], s["labels"], out, preprocessing=s["preprocessing"], options=ExportOptions(variants=("fp32",)))
    images = root / "images"
    for label_dir in sorted(p for p in s["heldout"].iterdir() if p.is_dir())[:5]:
        (images / label_dir.name).mkdir(parents=True)
        for p in sorted(label_dir.iterdir())[:2]:
            shutil.copy(p, images / label_dir.name / p.name)
    return out, images
