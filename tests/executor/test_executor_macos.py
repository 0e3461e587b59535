"""The executor against real Core ML, on macOS only: the fp32 and fp16 executor results bracket Core ML's own."""

from __future__ import annotations

import platform

import numpy as np
import pytest
from conftest import sample
from executor_helpers import CoreMLExecutor

from exporter.images import iter_batches, list_images
from exporter.preprocessing import Preprocessing
from exporter.validation.tolerances import FP16_MAX_ABS_PROB


def _heldout(folder, pre: Preprocessing) -> np.ndarray:
    return np.concatenate([b for _, b in iter_batches(list_images(folder), pre, batch_size=128)])


@pytest.mark.macos
@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML predictions need macOS")
def test_executor_agrees_with_core_ml(exports):
    from exporter.runtime import CoreMLRunner

    out, manifest = exports("mobilenet_v2_digits")
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    pixels = _heldout(sample("mobilenet_v2_digits")["heldout"], pre)[:64]
    for art in manifest["artifacts"]:
        if art["format"] in ("mlpackage", "mlmodel") and art["variant"] in ("fp32", "fp16"):
            coreml = CoreMLRunner(out / art["path"], pre, manifest["labels"])(pixels)
            low = CoreMLExecutor(out / art["path"], "fp32").predict(pixels)
            high = CoreMLExecutor(out / art["path"], "fp16").predict(pixels)
            bracket = np.maximum(np.abs(coreml - low), np.abs(coreml - high)).max()
            assert bracket <= FP16_MAX_ABS_PROB, (art["path"], bracket)
