"""Core ML quantization decisions: W8A8 with dead activations, short program names, data-aware palettes and the
``auto`` selection under an accuracy budget."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLES

PHOTOS = SAMPLES / "heldout" / "photos"
PHOTO_LABELS = sorted(p.name for p in PHOTOS.iterdir() if p.is_dir())


def _photo_pixels(pre):
    from exporter.images import iter_batches, list_images

    items = list_images(PHOTOS)
    pixels = np.concatenate([b for _, b in iter_batches(items, pre, batch_size=64)])
    labels = np.array([PHOTO_LABELS.index(it.label) for it in items])
    return pixels, labels


def test_nonzero_ranges_widen_only_degenerate_ranges():
    from exporter.quantize.coreml import MIN_ACTIVATION_BOUND, nonzero_ranges

    stats = {"dead": {"rmin": 0.0, "rmax": 0.0}, "tiny": {"rmin": -1e-9, "rmax": 2e-9},
             "live": {"rmin": -0.5, "rmax": 3.0}, "negative": {"rmin": -2.0, "rmax": -2.0}}
    out = nonzero_ranges(stats)
    assert out["live"] == stats["live"] and out["negative"] == stats["negative"]
    for name in ("dead", "tiny"):
        assert out[name] == {"rmin": -MIN_ACTIVATION_BOUND, "rmax": MIN_ACTIVATION_BOUND}
    # the widened range's int8 step is a normal float16 number, so coremltools' float16 scale is never 0
    step = np.float16(MIN_ACTIVATION_BOUND / 127)
    assert step > 0 and step >= np.finfo(np.float16).tiny
    assert stats["dead"] == {"rmin": 0.0, "rmax": 0.0}  # the input is not modified


@pytest.mark.slow
def test_w8a8_export_survives_activations_too_small_for_a_float16_scale(tmp_path):
    """The reported failure, reproduced: a randomly initialised MobileNetV2 (alpha 0.35, 96 px) whose activations
    shrink layer by layer to 1e-10 on real photographs, below what a float16 quantization scale can hold. coremltools
    used to abort with "quantize op: scale cannot be 0" and no file was written; now the file is written and runs."""
    import keras

    from exporter.api import ExportOptions, export
    from exporter.convert.coreml import ModelInfo, convert
    from exporter.preprocessing import Preprocessing
    from exporter.quantize.coreml import MIN_ACTIVATION_BOUND, activation_ranges
    from exporter.runtime import ExecutorRunner
    from exporter.runtime.coreml_spec import load_spec, op_counts

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=5)
    model.save(tmp_path / "model.keras")
    pre = Preprocessing((96, 96), scale=(1 / 127.5,) * 3, bias=(-1.0,) * 3, resize="center_crop")
    pixels, _ = _photo_pixels(pre)
    info = ModelInfo(name="m", labels=PHOTO_LABELS, preprocessing=pre, source_sha256="0", source_file="m.keras")
    stats = activation_ranges(convert(model, info, backend="mlprogram", precision="fp16", target="iOS17"),
                              [pixels[:16]])
    tiny = [n for n, r in stats.items() if max(abs(r["rmin"]), abs(r["rmax"])) < 1e-6]
    assert tiny  # the condition of the report: activations far below float16's smallest scale
    manifest = export(tmp_path / "model.keras", PHOTO_LABELS, tmp_path / "out", preprocessing=pre.to_dict(),
                      options=ExportOptions(formats=("mlpackage",), variants=("w8a8",), calibration_images=PHOTOS,
                                            calibration_count=16))
    path = tmp_path / "out" / manifest["artifacts"][0]["path"]
    assert op_counts(load_spec(path))["quantize"] > 0
    got = ExecutorRunner(path, pre, PHOTO_LABELS)(pixels[:8])
    assert np.isfinite(got).all() and np.allclose(got.sum(1), 1, atol=1e-3)
    assert MIN_ACTIVATION_BOUND / 127 >= np.finfo(np.float16).tiny
