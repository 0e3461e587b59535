"""Shared helpers of the executor tests: small ML Program and NeuralNetwork classifiers built in code around the op
or layer under test, the pixels they get, and the float tensor those pixels become inside the file."""

from __future__ import annotations

import logging

import numpy as np
import pytest

logging.getLogger("coremltools").setLevel(logging.ERROR)
ct = pytest.importorskip("coremltools")
from coremltools.converters.mil.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from exporter.runtime.executor import CoreMLExecutor  # noqa: E402

# Tolerance of one op against its numpy/TensorFlow reference: float32 rounding over at most a few hundred terms.
OP_ATOL = 2e-5
OP_RTOL = 1e-5
SIDE = 9  # odd, so "same" padding is asymmetric and windows do not tile the input exactly
IMAGE_SCALE, IMAGE_BIAS = 1 / 127.5, -1.0  # pixels -> [-1, 1], both signs for the activations
NN_SIDE = 8


def image_pixels(n: int, h: int = SIDE, w: int = SIDE, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def as_input(pix: np.ndarray) -> np.ndarray:
    """The float NCHW tensor the program sees: Core ML's image scale and bias applied to the pixels in float32,
    as the program's own mul and add do (so a floor or ceil sees the very same values)."""
    x = pix.astype(np.float32) * np.float32(IMAGE_SCALE) + np.float32(IMAGE_BIAS)
    return x.transpose(0, 3, 1, 2)


def program_file(tmp_path, body, name="p", shape=(1, 3, SIDE, SIDE), target=None, optimize=True):
    """An ML Program classifier whose "probabilities" are ``body(x)`` flattened (cast to fp32 when the body gives
    ints or bools); x is the scaled image. ``optimize=False`` skips coremltools' graph passes, which would fold
    away an op whose inputs are all known (shape, fill, ...), so that the op under test stays in the file."""
    target = target or ct.target.iOS15

    @mb.program(input_specs=[mb.TensorSpec(shape=shape)], opset_version=target)
    def prog(x):
        out = body(x)
        if out.dtype != types.fp32:
            out = mb.cast(x=out, dtype="fp32")
        return mb.reshape(x=out, shape=[1, -1])

    count = int(np.prod(prog.functions["main"].outputs[0].shape))
    gray = shape[1] == 1
    image = ct.ImageType(
        name="x",
        shape=shape,
        scale=IMAGE_SCALE,
        bias=IMAGE_BIAS if gray else [IMAGE_BIAS] * 3,
        color_layout=ct.colorlayout.GRAYSCALE if gray else ct.colorlayout.RGB,
    )
    kwargs = {} if optimize else {"pass_pipeline": ct.PassPipeline.EMPTY}
    model = ct.convert(
        prog,
        inputs=[image],
        classifier_config=ct.ClassifierConfig([f"o{i}" for i in range(count)]),
        convert_to="mlprogram",
        minimum_deployment_target=target,
        skip_model_load=True,
        compute_precision=ct.precision.FLOAT32,
        **kwargs,
    )
    path = tmp_path / f"{name}.mlpackage"
    model.save(str(path))
    return path


def run_program(tmp_path, body, n=2, **kw) -> tuple[np.ndarray, np.ndarray]:
    """(executor output, one row per image; the input tensor the program saw) for a program built from ``body``."""
    path = program_file(tmp_path, body, **kw)
    shape = kw.get("shape", (1, 3, SIDE, SIDE))
    pix = image_pixels(n, shape[2], shape[3], shape[1])
    return CoreMLExecutor(path).predict(pix), as_input(pix)


def op_types(path) -> set[str]:
    """The op types (ML Program) or layer types (NeuralNetwork) in a saved file."""
    from exporter.runtime.coreml_spec import load_spec, op_counts

    return set(op_counts(load_spec(path)))


def nn_file(tmp_path, build, count: int, name="nn"):
    """A NeuralNetwork classifier on a (3, 8, 8) image scaled to [-1, 1]: ``build(builder, "image")`` adds the
    layers under test and returns the blob whose values, flattened, are the ``count`` "probabilities"."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    builder = NeuralNetworkBuilder(
        [("image", datatypes.Array(3, NN_SIDE, NN_SIDE))], [("probs", None)], mode="classifier", disable_rank5_shape_mapping=True
    )
    builder.add_flatten_to_2d("flat", build(builder, "image"), "probs", axis=1)
    builder.set_class_labels([f"o{i}" for i in range(count)], predicted_feature_name="label", prediction_blob="probs")
    builder.set_pre_processing_parameters(
        image_input_names=["image"], image_scale=IMAGE_SCALE, red_bias=IMAGE_BIAS, green_bias=IMAGE_BIAS, blue_bias=IMAGE_BIAS
    )
    path = tmp_path / f"{name}.mlmodel"
    ct.utils.save_spec(builder.spec, str(path))
    return path


def tf():
    import tensorflow

    return tensorflow


def check_op_case(tmp_path, case: str, body, reference, options: dict) -> None:
    """One op test case ("op" or "op:variant"): the program ``body`` builds (graph passes skipped) holds the op, and
    the executor's output on two images matches ``reference`` on the float64 input (``options``: target, atol)."""
    path = program_file(tmp_path, body, optimize=False, target=options.get("target"))
    name = case.split(":")[0]
    assert name in op_types(path), f"the file has no {name} op"
    pix = image_pixels(2)
    got = CoreMLExecutor(path).predict(pix)
    x = as_input(pix).astype(np.float64)
    want = np.asarray(reference(x), np.float64).reshape(len(x), -1)
    np.testing.assert_allclose(got, want, atol=options.get("atol", OP_ATOL), rtol=OP_RTOL)


__all__ = [
    "CoreMLExecutor",
    "IMAGE_BIAS",
    "IMAGE_SCALE",
    "NN_SIDE",
    "OP_ATOL",
    "OP_RTOL",
    "SIDE",
    "as_input",
    "check_op_case",
    "ct",
    "image_pixels",
    "mb",
    "nn_file",
    "op_types",
    "program_file",
    "run_program",
    "tf",
    "types",
]
