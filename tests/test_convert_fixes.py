"""The converter-path fixes of issue 13: TensorFlow's Erfc (exact GELU) for coremltools and tf2onnx, and grouped
Conv2D (ConvNeXt's depthwise convolutions), which Keras runs inside a nested XLA function coremltools cannot read."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.convert import coreml as cm
from exporter.convert import onnx as ox
from exporter.convert import rewrite
from exporter.preprocessing import Preprocessing

# Rewritten layers compute the same sums in another order (depthwise vs grouped kernels): float32 rounding only.
REWRITE_ATOL = 1e-5
# ONNX Erf vs scipy's float64 erfc, in float32.
ERFC_ATOL = 1e-6


def _info(size: int, classes: int = 3) -> cm.ModelInfo:
    return cm.ModelInfo("m", [str(i) for i in range(classes)], Preprocessing((size, size)), "0", "m.keras")


def _mil_ops(mlmodel) -> list[str]:
    return [op.op_type for f in mlmodel._mil_program.functions.values() for op in f.operations]


def _gelu_model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Activation("gelu", name="exact_gelu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize("backend", ["mlprogram", "neuralnetwork"])
def test_exact_gelu_converts_to_core_ml(backend):
    mlmodel = cm.convert(_gelu_model(), _info(12), backend=backend)
    if backend == "mlprogram":
        ops = _mil_ops(mlmodel)
        # TF's 0.5 * x * erfc(-x / sqrt 2) is folded into the one exact GELU op Core ML has
        assert ops.count("gelu") == 1 and "erf" not in ops, ops
        gelu = next(op for f in mlmodel._mil_program.functions.values() for op in f.operations if op.op_type == "gelu")
        assert gelu.mode.val == "EXACT"
    else:
        layers = [layer.WhichOneof("layer") for layer in mlmodel.get_spec().neuralNetworkClassifier.layers]
        assert "gelu" in layers, layers


def test_erfc_outside_gelu_becomes_one_plus_erf_of_minus_x():
    """A bare erfc (not GELU's pattern) is still converted: erfc(z) = 1 + erf(-z)."""
    import keras
    import tensorflow as tf

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: tf.math.erfc(t), name="bare_erfc")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    ops = _mil_ops(cm.convert(model, _info(8), backend="mlprogram"))
    assert "erf" in ops and "gelu" not in ops, ops


def test_erfc_in_onnx_matches_scipy():
    import onnxruntime as ort
    from scipy.special import erfc

    proto = ox.convert_core(_erfc_only(), Preprocessing((8, 8)))
    assert "Erfc" not in [n.op_type for n in proto.graph.node]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    z = np.linspace(-4, 4, 192, dtype=np.float32).reshape(1, 8, 8, 3)
    got = session.run(None, {session.get_inputs()[0].name: z})[0]
    np.testing.assert_allclose(got.reshape(-1), erfc(z.astype(np.float64)).reshape(-1), atol=ERFC_ATOL)


def _erfc_only():
    import keras
    import tensorflow as tf

    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Lambda(lambda t: tf.math.erfc(t), name="bare_erfc")(inputs))


def _grouped_model(nested: bool):
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(6, 1, name="widen")(inputs)
    x = keras.layers.Conv2D(6, 3, groups=6, padding="same", name="depthwise_like")(x)  # groups == channels
    x = keras.layers.Conv2D(12, 3, groups=3, activation="relu", name="grouped")(x)  # 3 groups of 2 -> 4
    features = keras.Model(inputs, x, name="features")
    if nested:
        outer_in = keras.Input((10, 10, 3))
        x = features(outer_in)
        inputs = outer_in
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    rng = np.random.default_rng(0)
    for w in model.weights:  # biases away from zero so the rewrite's bias handling is checked too
        w.assign(w.numpy() + rng.normal(0, 0.3, w.shape).astype("float32"))
    return model


@pytest.mark.parametrize("nested", [False, True])
def test_grouped_conv_rewrite_is_exact_and_converts(nested):
    import keras

    model = _grouped_model(nested)
    rewritten = rewrite.for_converters(model)
    assert rewritten is not model
    kinds = [type(layer).__name__ for layer in _flat(rewritten)]
    assert "DepthwiseConv2D" in kinds
    assert not any(type(layer) is keras.layers.Conv2D and layer.groups > 1 for layer in _flat(rewritten))
    x = np.random.default_rng(2).uniform(-1, 1, (4, 10, 10, 3)).astype("float32")
    np.testing.assert_allclose(rewritten(x), model(x), atol=REWRITE_ATOL)
    ops = _mil_ops(cm.convert(model, _info(10), backend="mlprogram"))
    assert "conv" in ops
    proto = ox.convert_core(model, Preprocessing((10, 10)))  # tf2onnx would leave StatefulPartitionedCall behind
    assert "StatefulPartitionedCall" not in [n.op_type for n in proto.graph.node]


def test_model_without_grouped_conv_is_not_rebuilt():
    model = _gelu_model()
    assert rewrite.for_converters(model) is model


def _flat(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _flat(layer)


def _ops(mlmodel) -> list[str]:
    spec = mlmodel.get_spec()
    fn = spec.mlProgram.functions["main"]
    return [op.type for op in fn.block_specializations[fn.opset].operations]


@pytest.mark.parametrize("spec_name", ["WEIGHT_ONLY_INT8", "palette6"])
def test_compression_does_not_redo_the_passes_conversion_skipped(spec_name):
    """coremltools' compressors convert their result back with the whole default pass pipeline, which would fold a
    standalone multiply and add (an unfused BatchNormalization) into a batch_norm with epsilon 1e-5 again, the error
    conversion avoids by skipping that pass (and, on a trained NASNetMobile, an fp16 program that failed to build).
    Inside ``compression_without_passes`` (how api.build_artifact runs every transform) the compressed file keeps the
    multiply and the add."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    from exporter.quantize import coreml as qc
    from exporter.upstream import compression_without_passes

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 8, 1, 1)).astype(np.float32)
    scale, shift = rng.uniform(0.5, 2, size=(1, 8, 1, 1)).astype(np.float32), rng.normal(size=(1, 8, 1, 1)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 8, 4, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        x = mb.relu(x=mb.conv(x=x, weight=weight))
        return mb.add(x=mb.mul(x=x, y=scale), y=shift)

    model = ct.convert(prog, convert_to="mlprogram", pass_pipeline=cm.pass_pipeline(), skip_model_load=True)
    assert "batch_norm" not in _ops(model)
    spec = qc.WEIGHT_ONLY_INT8 if spec_name == "WEIGHT_ONLY_INT8" else qc.CompressionSpec("palettize", 6)
    from exporter.errors import ConversionError

    with pytest.raises(ConversionError, match="batch_norm"):  # what coremltools does on its own (NASNetMobile's error)
        qc.compress(model, spec)
    with compression_without_passes(cm.SKIPPED_PASSES):
        ops = _ops(qc.compress(model, spec))
    assert "batch_norm" not in ops and "mul" in ops and "add" in ops
