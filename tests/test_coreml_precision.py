"""fp32 Core ML files compute what the Keras model computes, to float32 rounding: measured against the same model in
float64, the Core ML error (through the executor) stays within twice onnxruntime's on the fp32 ONNX file.

The model is a small pre-activation residual network (BatchNormalization on the sum of a residual block, as in
ResNetV2 and, on a concatenation, DenseNet): the shape in which coremltools' ``fuse_elementwise_to_batchnorm`` pass
turned each BatchNormalization into a ``batch_norm`` with the default epsilon 1e-5 on a unit variance, scaling every
one of them by 1/sqrt(1 + 1e-5). That pass is skipped now (exporter.convert.coreml.SKIPPED_PASSES); with it, this
model's fp32 Core ML files were 20-100x further from float64 Keras than the ONNX file.
"""

from __future__ import annotations

import numpy as np
import pytest

SIZE = 32
BLOCKS = 8  # pre-activation BN layers in sequence: each one the pass rewrote added its 5e-6 relative error
TRAIN_IMAGES = 512
EPOCHS = 4
# Probabilities near 1 are float32 numbers 6e-8 apart (half an ulp of 1.0): differences below that are rounding of
# the final softmax, where a ratio of two errors means nothing.
PROBABILITY_ROUNDING = 1.2e-7
RATIO_TO_ONNX = 2.0  # issue 13: Core ML error against float64 Keras within 2x of onnxruntime's
FP32_GATE = 1e-5  # the validator's default fp32 max |dp| gate


def _digits(indices, images) -> np.ndarray:
    from sample_models.data import render_digit

    return np.stack([np.asarray(render_digit(images[i], (SIZE, SIZE)).convert("RGB")) for i in indices])


def _build(dtype: str):
    import keras

    keras.config.set_dtype_policy(dtype)
    try:
        inputs = keras.Input((SIZE, SIZE, 3))
        x = keras.layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
        for i in range(BLOCKS):
            y = keras.layers.BatchNormalization(epsilon=1.001e-5, momentum=0.5, name=f"preact_bn_{i}")(x)
            y = keras.layers.ReLU(name=f"relu_{i}")(y)
            y = keras.layers.Conv2D(16, 3, padding="same", name=f"conv_{i}")(y)
            x = keras.layers.Add(name=f"add_{i}")([x, y])
        x = keras.layers.BatchNormalization(epsilon=1.001e-5, momentum=0.5, name="post_bn")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(x))
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(float32 model, the same weights in float64, held-out uint8 digits) after a few epochs on digits."""
    import keras

    from sample_models.data import digits_arrays, digits_split

    images, labels = digits_arrays()
    train, held = digits_split()
    keras.utils.set_random_seed(0)
    model = _build("float32")
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    x = _digits(train[:TRAIN_IMAGES], images)
    model.fit(x / np.float32(255), labels[train[:TRAIN_IMAGES]], epochs=EPOCHS, batch_size=32, verbose=0)
    model64 = _build("float64")
    model64.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return model, model64, _digits(held[:100], images)


@pytest.mark.slow
@pytest.mark.parametrize("backend,suffix", [("mlprogram", "mlpackage"), ("neuralnetwork", "mlmodel")])
def test_fp32_coreml_error_within_twice_onnx_against_float64_keras(trained, tmp_path, backend, suffix):
    import onnxruntime as ort

    from exporter.convert.coreml import ModelInfo, convert, save
    from exporter.convert.onnx import convert_core
    from exporter.preprocessing import Preprocessing
    from exporter.runtime.executor import CoreMLExecutor

    model, model64, pixels = trained
    reference = np.asarray(model64(pixels.astype(np.float64) / 255.0, training=False), np.float64)
    keras32 = np.asarray(model(pixels.astype(np.float32) / np.float32(255), training=False), np.float64)
    # trained enough that the probabilities depend on the input (a near-uniform output could not show an error)
    assert reference.std(axis=0).max() > 0.05 and np.unique(reference.argmax(axis=1)).size >= 3

    pre = Preprocessing((SIZE, SIZE), scale=(1 / 255,) * 3, bias=(0.0,) * 3)
    info = ModelInfo(name="preact", labels=[str(i) for i in range(10)], preprocessing=pre, source_sha256="", source_file="preact.keras")
    path = tmp_path / f"preact.{suffix}"
    save(convert(model, info, backend=backend, precision="fp32"), path)
    coreml = CoreMLExecutor(path).predict(pixels).astype(np.float64)

    session = ort.InferenceSession(convert_core(model, pre).SerializeToString(), providers=["CPUExecutionProvider"])
    feed = pixels.astype(np.float32) * np.float32(1 / 255)
    onnx = np.asarray(session.run(None, {session.get_inputs()[0].name: feed})[0], np.float64)

    coreml_error = np.abs(coreml - reference).max()
    onnx_error = np.abs(onnx - reference).max()
    print(f"{suffix}: max |dp| vs float64 Keras: Core ML {coreml_error:.3g}, ONNX {onnx_error:.3g}")
    assert coreml_error <= RATIO_TO_ONNX * onnx_error + PROBABILITY_ROUNDING, (coreml_error, onnx_error)
    assert np.abs(coreml - keras32).max() <= FP32_GATE


# Per layer, an fp32 Core ML value may be this many times further from float64 Keras than Keras' own float32 value
# is (relative to the layer's largest magnitude): two float32 computations of the same layer differ in summation order
# only, which moves their errors by a small factor, not by the 10-100x of a changed constant (the default batch_norm
# epsilon of fuse_elementwise_to_batchnorm put 5e-6 on every pre-activation BN, 40-80x Keras' own 1e-7 level).
LAYER_RATIO_TO_KERAS32 = 4.0
# float32 rounding of a single value (2^-23 ~ 1.2e-7): a layer error below this is rounding, whatever its ratio
LAYER_ROUNDING = 2.4e-7
OBSERVED_LAYERS = [f"{kind}_{i}" for i in range(BLOCKS) for kind in ("preact_bn", "relu", "add")] + ["post_bn"]


def _keras_layer_outputs(model, x) -> dict[str, np.ndarray]:
    import keras

    probe = keras.Model(model.inputs[0], [model.get_layer(name).output for name in OBSERVED_LAYERS])
    return {name: np.asarray(v, np.float64) for name, v in zip(OBSERVED_LAYERS, probe(x, training=False), strict=True)}


def _coreml_layer(observed: dict[str, np.ndarray], layer: str, like: np.ndarray) -> np.ndarray | None:
    """The last value Core ML computed for the Keras ``layer``, as NHWC. Core ML names carry the TF op path with
    "/" made "_": ``<model>_1_<layer>_1_<op>`` (so ``add_1`` must not match the ``..._batchnorm_add_1`` of a BN)."""
    import re

    pattern = re.compile(r"(^|[/_])" + re.escape(layer) + r"_\d+[/_]")
    for name in reversed(list(observed)):
        value = observed[name]
        if not pattern.search(name) or value.size != like.size:
            continue
        if value.ndim == 4 and value.shape[1:] != like.shape[1:]:
            value = value.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        if value.shape == like.shape:
            return value.astype(np.float64)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("backend,suffix", [("mlprogram", "mlpackage"), ("neuralnetwork", "mlmodel")])
def test_fp32_coreml_layers_stay_at_keras_float32_rounding(trained, tmp_path, backend, suffix):
    """Issue 14 item 4, layer by layer: through the executor's observe hook, every BatchNormalization, ReLU and
    residual sum of the fp32 Core ML file is as close to float64 Keras as Keras float32 is (a deep network's error
    cannot then come from any one op)."""
    from exporter.convert.coreml import ModelInfo, convert
    from exporter.preprocessing import Preprocessing
    from exporter.runtime.executor import CoreMLExecutor

    model, model64, pixels = trained
    pixels = pixels[:32]
    ref = _keras_layer_outputs(model64, pixels.astype(np.float64) / 255.0)
    k32 = _keras_layer_outputs(model, pixels.astype(np.float32) / np.float32(255))
    pre = Preprocessing((SIZE, SIZE), scale=(1 / 255,) * 3, bias=(0.0,) * 3)
    info = ModelInfo(name="preact", labels=[str(i) for i in range(10)], preprocessing=pre, source_sha256="", source_file="preact.keras")
    path = tmp_path / f"preact.{suffix}"
    # saved by coremltools itself: exporter's save() shortens ML Program value names (quantize/names.py), and the
    # values are found here by the Keras layer names the converter put in them (the arithmetic is the same)
    convert(model, info, backend=backend, precision="fp32").save(str(path))
    observed: dict[str, list] = {}
    CoreMLExecutor(path).predict(pixels, observe=lambda name, value: observed.setdefault(name, []).append(np.array(value)))
    values = {name: np.concatenate(parts) for name, parts in observed.items()}

    worse, missing = [], []
    for layer in OBSERVED_LAYERS:
        coreml = _coreml_layer(values, layer, ref[layer])
        if coreml is None:
            missing.append(layer)
            continue
        scale = np.abs(ref[layer]).max()
        coreml_error = np.abs(coreml - ref[layer]).max() / scale
        keras_error = np.abs(k32[layer] - ref[layer]).max() / scale
        if coreml_error > LAYER_RATIO_TO_KERAS32 * keras_error + LAYER_ROUNDING:
            worse.append(f"{layer}: Core ML {coreml_error:.2e} vs Keras fp32 {keras_error:.2e}")
    # most layers must be visible in the file (a fused one is checked through the next visible one)
    assert len(missing) <= len(OBSERVED_LAYERS) // 2, missing
    assert not worse, worse
