"""Runners: one per format, each takes uint8 NHWC pixels in the contract's channel order and returns probabilities."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..preprocessing import Preprocessing


class KerasRunner:
    """The reference: the Keras model fed the contract's numpy preprocessing."""

    def __init__(self, model, pre: Preprocessing):
        self.model, self.pre = model, pre

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(self.model(self.pre.normalize(pixels), training=False), dtype=np.float32)


class OnnxRunner:
    """onnxruntime on the exported file, fed raw pixels (the graph does its own preprocessing) or, for a float-input
    export, the contract's preprocessing."""

    def __init__(self, path: Path, pre: Preprocessing):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.name, self.raw = inp.name, inp.type == "tensor(uint8)"
        self.pre = pre

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        feed = pixels
        if self.raw and self.pre.channel_order == "BGR":
            feed = pixels[..., ::-1]  # the graph takes RGB and reorders itself
        elif not self.raw:
            feed = self.pre.normalize(pixels)
        probs = self.session.run(["probabilities"], {self.name: np.ascontiguousarray(feed)})[0]
        return np.asarray(probs, dtype=np.float32)


class CoreMLRunner:
    """Real Core ML through coremltools: macOS only."""

    def __init__(self, path: Path, pre: Preprocessing, labels: list[str]):
        if platform.system() != "Darwin":
            raise ConfigError("Core ML predictions need macOS (coremltools: 'only supported on macOS')")
        import coremltools as ct

        self.model = ct.models.MLModel(str(path))
        self.pre, self.labels = pre, labels
        spec = self.model.get_spec().description
        self.input = spec.input[0].name
        self.probs = spec.predictedProbabilitiesName

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        from PIL import Image

        rows = []
        for x in pixels:
            rgb = x[..., ::-1] if self.pre.channel_order == "BGR" else x
            out = self.model.predict({self.input: Image.fromarray(np.ascontiguousarray(rgb).squeeze())})
            rows.append([out[self.probs][label] for label in self.labels])
        return np.asarray(rows, dtype=np.float32)
