"""The float64 arbiter of the fp32 gate.

The fp32 gate compares a float32 file with float32 Keras. Both round; on most models their difference stays far under
the gate, but a model can amplify float32 rounding until two correct float32 computations of it, in different orders,
differ by more than the gate (the EfficientNet application stand-in of the capability table: its three fp32 files
were 1.2e-5 to 1.5e-5 from Keras float32, while Keras float32 itself was 3.1e-6 from the exact answer and the files
2.0e-6 to 2.1e-6 from it). Neither side is then "the truth", so the gate cannot tell a faithful file from a wrong one.

The exact answer can: the same Keras model with every layer computing in float64 (``float64_twin``). When an fp32
file fails only the max |dp| limit, validation runs the images again through the file, Keras float32 and the float64
twin, and the file passes if it is no further from float64 than Keras float32 is, within
``tolerances.FP32_FLOAT64_RATIO`` (the row's ``float64`` entry says so, with both numbers). A real conversion error
(a wrong bias, a lost epsilon) puts the file orders of magnitude further from float64 than float32 rounding puts
Keras, and it still fails. The twin is built from the model's config: a model whose layers cannot be rebuilt that way
(custom code) keeps the plain gate verdict, and the row says why.
"""

from __future__ import annotations

import numpy as np

from .tolerances import FP32_FLOAT64_RATIO, PROBABILITY_ROUNDING

# Probabilities below this are left out of ``max_relative_error``: a class the model gives less than 1e-4 decides
# nothing, and far below it (1e-30 and less on a confident image) a float32 softmax meets exp()'s underflow, where the
# relative error stops measuring the arithmetic of the network.
RELATIVE_ERROR_FLOOR = 1e-4


def float64_twin(model):
    """The same architecture and weights computing in float64 (every layer's dtype policy set to float64)."""
    import keras

    def retype(cfg):
        if isinstance(cfg, dict):
            return {k: "float64" if k == "dtype" and (isinstance(v, (str, dict)) or v is None) else retype(v) for k, v in cfg.items()}
        if isinstance(cfg, list):
            return [retype(v) for v in cfg]
        return cfg

    twin = keras.saving.deserialize_keras_object(retype(keras.saving.serialize_keras_object(model)))
    twin.set_weights([np.asarray(w, np.float64) for w in model.get_weights()])
    return twin


def normalize64(pre, pixels: np.ndarray) -> np.ndarray:
    """The contract's preprocessing in float64 (not the float32 tensor either runtime computes, so that no runtime's
    input rounding is taken as the truth)."""
    x = np.asarray(pixels, np.float64)
    if pre.in_model:
        return x
    return x * np.asarray(pre.scale, np.float64) + np.asarray(pre.bias, np.float64)


class Float64Distance:
    """Running max |dp| of one artifact and of Keras float32 against the float64 twin."""

    def __init__(self) -> None:
        self.artifact = 0.0
        self.keras = 0.0

    def update(self, exact: np.ndarray, keras32: np.ndarray, got: np.ndarray) -> None:
        self.artifact = max(self.artifact, max_abs_error(got, exact))
        self.keras = max(self.keras, max_abs_error(keras32, exact))

    @property
    def limit(self) -> float:
        return FP32_FLOAT64_RATIO * self.keras + PROBABILITY_ROUNDING

    def summary(self) -> dict:
        passed = self.artifact <= self.limit
        relation = "no further" if passed else "further"
        return {
            "artifact_max_abs_prob": self.artifact,
            "keras_fp32_max_abs_prob": self.keras,
            "limit": self.limit,
            "passed": passed,
            "note": (
                f"against a float64 Keras model of the same weights this file is {self.artifact:.2e} away and Keras "
                f"float32 {self.keras:.2e}: {relation} than {FP32_FLOAT64_RATIO:g}x float32 Keras' own rounding"
                + (" (the model amplifies float32 rounding past the fp32 gate)" if passed else "")
            ),
        }


def max_relative_error(got: np.ndarray, exact: np.ndarray, floor: float = RELATIVE_ERROR_FLOOR) -> float:
    """max |got - exact| / exact over the probabilities with exact >= ``floor``: to first order the error of the
    log-probabilities, that is of the logits relative to their softmax mean, which is what float32 rounding in the
    network moves. Unlike max |dp| it weighs every image alike: |dp| = p * |d log p| is largest on images near a tie
    (p near 0.5), so the max |dp| of a few hundred images is decided by the one or two least confident of them (on the
    ResNetV2 application stand-in, one image at p = 0.63 gave the Core ML file's 4.0e-6, its next image 2.0e-6)."""
    exact = np.asarray(exact, np.float64)
    keep = exact >= floor
    if not keep.any():
        return 0.0
    rel = np.abs(np.asarray(got, np.float64)[keep] - exact[keep]) / exact[keep]
    rel[~np.isfinite(rel)] = np.inf
    return float(rel.max())


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64; a value that is not finite counts as an infinite error (never as NaN, which every
    comparison with a limit would let through)."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    diff[~np.isfinite(diff)] = np.inf
    return float(diff.max()) if diff.size else 0.0
