"""Every artifact the exporter can write: one table, with file names, nominal weight bits and what each needs."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

FORMATS = ("mlpackage", "mlmodel", "onnx")


@dataclass(frozen=True)
class Variant:
    format: str
    name: str
    weight_bits: int  # nominal bits per weight; the theoretical size limit is weight_bits / 32 of fp32
    description: str
    needs_calibration: bool = False

    def filename(self, stem: str) -> str:
        suffix = {"mlpackage": ".mlpackage", "mlmodel": ".mlmodel", "onnx": ".onnx"}[self.format]
        prefix = "nn_" if self.format == "mlmodel" else ""
        return f"{stem}_{prefix}{self.name.replace('-', '_')}{suffix}"

    @property
    def key(self) -> str:
        return f"{self.format}:{self.name}"


VARIANTS: tuple[Variant, ...] = (
    Variant("mlpackage", "fp32", 32, "ML Program, float32 weights and compute"),
    Variant("mlpackage", "fp16", 16, "ML Program, float16 weights and compute"),
    Variant("mlpackage", "int8", 8, "ML Program, int8 affine weights (scale and zero point) per output channel"),
    Variant("mlpackage", "palette8", 8, "ML Program, 8-bit k-means lookup table per tensor"),
    Variant("mlpackage", "palette6", 6, "ML Program, 6-bit k-means lookup table per tensor"),
    Variant("mlpackage", "palette4", 4, "ML Program, 4-bit k-means lookup tables per 16 output channels"),
    Variant("mlpackage", "w8a8", 8, "ML Program, int8 weights and int8 activations calibrated on images",
            needs_calibration=True),
    Variant("mlmodel", "fp32", 32, "NeuralNetwork, float32 weights"),
    Variant("mlmodel", "fp16", 16, "NeuralNetwork, float16 weights"),
    Variant("mlmodel", "int8", 8, "NeuralNetwork, 8-bit linear weights"),
    Variant("onnx", "fp32", 32, "ONNX, float32"),
    Variant("onnx", "fp16", 16, "ONNX, float16 weights and compute, float32 inputs and outputs"),
    Variant("onnx", "int8-dynamic", 8, "ONNX, int8 weights, activations quantized per batch at run time"),
    Variant("onnx", "int8-static", 8, "ONNX, int8 QDQ weights and activations calibrated on images",
            needs_calibration=True),
)


def select(formats: list[str] | None = None, names: list[str] | None = None) -> list[Variant]:
    """Variants of the given formats (default all) whose names are in ``names`` (default all). Unknown values raise
    a ConfigError that lists the valid ones."""
    formats = list(formats or FORMATS)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"unknown format {bad[0]!r}; valid formats are {list(FORMATS)}")
    chosen = [v for v in VARIANTS if v.format in formats]
    if names:
        valid = sorted({v.name for v in chosen})
        bad = [n for n in names if n not in valid]
        if bad:
            raise ConfigError(f"unknown variant {bad[0]!r} for formats {formats}; valid variants are {valid}")
        chosen = [v for v in chosen if v.name in names]
    return chosen
