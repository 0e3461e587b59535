"""Models the way users build them, fifth round (see tests/test_user_models_4.py for the fourth): each case one the
exploratory hunt found broken. The models are tiny (32 px, one or two convolutions); the ones whose exported files are
checked for parity are trained a few epochs on scikit-learn's digits, so their outputs depend on the input, and are
validated on the real held-out digits."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import SAMPLES
from test_user_models_3 import _conv_body, _digits, _save

from exporter.api import ExportOptions, export, validate
from exporter.inference import detect_preprocessing

SIZE = 32
DIGITS = SAMPLES / "heldout" / "digits"
EVERY_FORMAT = ExportOptions(formats=("mlpackage", "mlmodel", "onnx"), variants=("fp32",))


def _gray_digits():
    x, y = _digits()
    return x[..., :1], y  # the digits are gray: one of the three equal channels


def _classifier(inputs, h):
    h = keras.layers.GlobalAveragePooling2D()(_conv_body(h))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))


# ------------------------------------------------------------------------------------- a grayscale input made RGB
def _three_channels(how: str, x):
    if how == "Concatenate":
        return keras.layers.Concatenate()([x, x, x])
    if how == "ops.concatenate":
        return keras.ops.concatenate([x, x, x], axis=-1)
    if how == "ops.repeat":
        return keras.ops.repeat(x, 3, axis=-1)
    return keras.ops.tile(x, (1, 1, 1, 3))


def _rgb_backbone():
    inputs = keras.Input((SIZE, SIZE, 3))
    return keras.Model(inputs, _conv_body(keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="scale")(inputs)), name="backbone")


@pytest.mark.parametrize("how", ["Concatenate", "ops.concatenate", "ops.repeat", "ops.tile"])
def test_a_grayscale_input_copied_to_three_channels_before_its_rescaling_is_found(how):
    """A one-channel model that copies its input into three channels and then rescales them (the way a grayscale
    dataset meets an RGB backbone): the copy ended the search, so the export asked for a preprocessing although the
    model normalises its pixels itself. The copy is followed as a channel mapping; copies and reorderings alone,
    with no Rescaling, Normalization or arithmetic after them, are not a preprocessing."""
    inputs = keras.Input((SIZE, SIZE, 1))
    found = detect_preprocessing(_classifier(inputs, keras.layers.Rescaling(1 / 255.0)(_three_channels(how, inputs))))
    assert len(found.layers) == 2 and found.scale == (1 / 255.0,) * 3 and found.bias == (0.0,) * 3
    assert "grayscale" in found.note
    nested = detect_preprocessing(keras.Model(inputs, _rgb_backbone()(_three_channels(how, inputs))))
    assert nested.layers[-1] == "backbone/scale" and nested.scale == (1 / 127.5,) * 3 and nested.bias == (-1.0,) * 3
    assert not detect_preprocessing(_classifier(inputs, _three_channels(how, inputs)))  # copied, never normalised
    rgb = keras.Input((SIZE, SIZE, 3))
    assert not detect_preprocessing(_classifier(rgb, rgb[..., ::-1]))  # only reordered: the pixels are not normalised
    other = keras.Input((SIZE, SIZE, 1))  # two different tensors concatenated: not a copy of the input
    mixed = keras.layers.Concatenate()([other, other * 2.0, other])
    assert not detect_preprocessing(_classifier(other, keras.layers.Rescaling(1 / 255.0)(mixed)))


@pytest.mark.slow
def test_a_grayscale_model_feeding_an_rgb_backbone_exports_with_parity(tmp_path):
    """Grayscale digits -> Concatenate([x, x, x]) -> a nested backbone that rescales its input: exported with no
    --preprocessing (it was refused before), a one-channel contract, and every file passes fp32 parity."""
    keras.utils.set_random_seed(0)
    x, y = _gray_digits()
    inputs = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.GlobalAveragePooling2D()(_rgb_backbone()(keras.layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))
    path, labels = _save(model, tmp_path / "model", x, y, epochs=3)
    manifest = export(path, labels, tmp_path / "out", preprocessing=None, options=EVERY_FORMAT)
    assert manifest["preprocessing"]["channel_order"] == "L" and manifest["preprocessing"]["in_model"] is True
    found = manifest["inference_model"]["in_model_preprocessing"]
    assert found["layers"] == ["gray_to_rgb", "backbone/scale"] and "grayscale" in found["note"]
    report = validate(tmp_path / "out", DIGITS)
    assert report["passed"] and len(report["artifacts"]) == 3
    assert report["keras"]["against_labels"]["accuracy"] > 0.2  # trained: the outputs depend on the image
    assert np.isfinite([row["max_abs_prob"] for row in report["artifacts"]]).all()


# ------------------------------------------------------------------------------------- keras.ops.cast before the Rescaling
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_cast_to_float_before_the_rescaling_is_passed(dtype):
    """``x = keras.ops.cast(inputs, "float32")`` then Rescaling (a model fed uint8 images from a tf.data pipeline):
    the Cast op ended the search, so the export asked for a preprocessing the model applies itself. A cast to a float
    type is passed (every 8-bit pixel is exact in it); a cast to an integer type still ends the search."""
    inputs = keras.Input((SIZE, SIZE, 3), dtype=dtype)
    found = detect_preprocessing(_classifier(inputs, keras.layers.Rescaling(1 / 255.0)(keras.ops.cast(inputs, "float32"))))
    assert len(found.layers) == 1 and found.scale == (1 / 255.0,) * 3 and found.passed[0].startswith("cast")
    nested = detect_preprocessing(keras.Model(inputs, _rgb_backbone()(keras.ops.cast(inputs, "float16"))))
    assert nested.layers == ("backbone/scale",) and nested.bias == (-1.0,) * 3
    truncated = keras.ops.cast(keras.ops.cast(inputs, "int32"), "float32")
    assert not detect_preprocessing(_classifier(inputs, keras.layers.Rescaling(1 / 255.0)(truncated)))


@pytest.mark.slow
def test_a_uint8_model_casting_its_input_exports_with_parity(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _digits()
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    model = _classifier(inputs, keras.layers.Rescaling(1 / 127.5, offset=-1.0)(keras.ops.cast(inputs, "float32")))
    path, labels = _save(model, tmp_path / "model", x.astype("uint8"), y, epochs=3)
    manifest = export(path, labels, tmp_path / "out", preprocessing=None, options=EVERY_FORMAT)
    assert manifest["preprocessing"]["in_model"] is True
    assert manifest["inference_model"]["in_model_preprocessing"]["scale"] == [1 / 127.5] * 3
    report = validate(tmp_path / "out", DIGITS)
    assert report["passed"] and len(report["artifacts"]) == 3
    assert report["keras"]["against_labels"]["accuracy"] > 0.2


# ------------------------------------------------------------------------------------- a convolutional head, no Flatten
def _conv_head(kind: str):
    """GlobalAveragePooling2D(keepdims=True) then a 1x1 convolution as the classifier: the output is (batch, 1, 1, N)."""
    units, activation = {"softmax": (10, "softmax"), "logits": (10, None), "sigmoid": (1, "sigmoid")}[kind]
    layers = [keras.layers.Rescaling(1 / 255.0, name="scale"), keras.layers.Conv2D(8, 3, strides=2, activation="relu")]
    layers += [keras.layers.GlobalAveragePooling2D(keepdims=True), keras.layers.Conv2D(units, 1, activation=activation)]
    return layers


@pytest.mark.parametrize("kind,sequential", [("softmax", False), ("softmax", True), ("logits", False), ("sigmoid", True)])
def test_a_convolutional_head_without_flatten_is_read_as_its_probability_vector(kind, sequential, tmp_path):
    """A (batch, 1, 1, N) output (SqueezeNet-style heads, a 1x1 convolution after keepdims pooling) was refused as
    "model output shape is (None, 1, 1, 10)" though it holds one probability row per image; it is reshaped to
    (batch, N), with the head still read from the model's own last layer (softmax, logits, one sigmoid unit)."""
    from exporter.loading import load_model

    keras.utils.set_random_seed(0)
    if sequential:
        model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), *_conv_head(kind)])
    else:
        inputs = keras.Input((SIZE, SIZE, 3))
        h = inputs
        for layer in _conv_head(kind):
            h = layer(h)
        model = keras.Model(inputs, h)
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras", add_softmax=kind == "logits")
    assert loaded.head.output == {"softmax": "probabilities", "logits": "logits", "sigmoid": "sigmoid"}[kind]
    assert loaded.num_classes == (2 if kind == "sigmoid" else 10) and loaded.in_model_preprocessing[-1].endswith("scale")
    x = np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)).astype("float32")
    flat = np.asarray(model(x)).reshape(3, -1)
    np.testing.assert_array_equal(np.asarray(loaded.keras_model(x)), flat)
    assert np.asarray(loaded.model(x)).shape == (3, loaded.num_classes)


@pytest.mark.slow
def test_a_trained_convolutional_head_exports_with_parity(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _digits()
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs))
    h = keras.layers.GlobalAveragePooling2D(keepdims=True)(keras.layers.Conv2D(32, 3, strides=2, activation="relu")(h))
    model = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Conv2D(10, 1)(h)))
    path, labels = _save(model, tmp_path / "model", x, y[:, None, None], epochs=3)
    export(path, labels, tmp_path / "out", preprocessing=None, options=EVERY_FORMAT)
    report = validate(tmp_path / "out", DIGITS)
    assert report["passed"] and len(report["artifacts"]) == 3
    assert report["keras"]["against_labels"]["accuracy"] > 0.2


# ------------------------------------------------------------------------------------- Resizing the converters cannot read
# TensorFlow's area resize sums float32 area weights (thirds, for a 3x enlargement): its copy of a pixel differs from
# the pixel by up to 4e-6 relative (measured, 64x96 from 32x32). A wrong stand-in (another pixel, a bilinear mix) is
# off by a tenth or more on these uniform random pixels.
AREA_WEIGHT_ROUNDING = 1e-5


def _resizing_model(size, **kw):
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Resizing(*size, name="resize", **kw)(keras.layers.Rescaling(1 / 255.0)(inputs))
    return _classifier(inputs, h)


@pytest.mark.parametrize(
    "size,kw,stand_in",
    [
        ((16, 8), dict(interpolation="area"), "AveragePooling2D"),
        ((64, 96), dict(interpolation="area"), "UpSampling2D"),
        ((SIZE, SIZE), dict(interpolation="bicubic"), "Identity"),
        ((SIZE, SIZE), dict(interpolation="lanczos3", antialias=True), "Identity"),
    ],
)
def test_a_resizing_the_converters_cannot_read_gets_its_exact_stand_in(size, kw, stand_in):
    """interpolation='area' (coremltools: "ResizeArea not implemented"; tf2onnx wrote it as a nearest resize, so the
    ONNX file disagreed with Keras) and a resize to the input's own size with an interpolation Core ML lacks (an
    any-size model resizing with 'bicubic' to the size it is exported at) are given to the converters as the stock
    layer computing the same numbers."""
    from exporter.convert.rewrite import for_converters

    keras.utils.set_random_seed(0)
    model = _resizing_model(size, **kw)
    rewritten = for_converters(model)
    assert type(rewritten.get_layer("resize")).__name__ == stand_in
    x = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    # the resized pixels themselves (0..1), not the untrained classifier's near-uniform probabilities after them

    def resized(m):
        return np.asarray(keras.Model(m.input, m.get_layer("resize").output)(x))

    np.testing.assert_allclose(resized(rewritten), resized(model), rtol=AREA_WEIGHT_ROUNDING, atol=1e-7)


def test_an_area_resize_by_another_factor_is_refused_naming_the_layer():
    from exporter.convert.rewrite import for_converters
    from exporter.errors import ConversionError

    for size in ((24, 24), (16, 64)):  # 32 -> 24: not a whole factor; one side shrinking and one growing
        with pytest.raises(ConversionError, match="'resize' \\(Resizing\\) resizes 32x32 to .* interpolation='area'"):
            for_converters(_resizing_model(size, interpolation="area"))
    bilinear = _resizing_model((24, 24))  # what the converters read: left to them
    assert for_converters(bilinear) is bilinear


@pytest.mark.slow
def test_a_trained_model_with_an_area_resize_exports_with_parity(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _digits()
    path, labels = _save(_resizing_model((16, 16), interpolation="area"), tmp_path / "model", x, y, epochs=3)
    export(path, labels, tmp_path / "out", preprocessing=None, options=EVERY_FORMAT)
    report = validate(tmp_path / "out", DIGITS)
    assert report["passed"] and len(report["artifacts"]) == 3, [row["failures"] for row in report["artifacts"]]
    assert report["keras"]["against_labels"]["accuracy"] > 0.2


# ------------------------------------------------------------------------------------- a fixed batch size
def _fixed_batch(batch: int, reshape: bool):
    inputs = keras.Input(batch_shape=(batch, SIZE, SIZE, 3))
    h = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(keras.layers.Rescaling(1 / 255.0)(inputs))
    h = keras.ops.reshape(h, (batch, -1)) if reshape else keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))


def test_a_model_that_only_runs_on_its_fixed_batch_size_is_refused_with_the_remedy(tmp_path):
    """Input(batch_shape=(8, ...)) and a reshape to (8, -1) (a model trained on a TPU with a fixed batch): the
    probe of the model's outputs crashed with Keras' raw ValueError ("Exception encountered when calling
    Functional.call()", no exit code). It is one NotAClassifierError line (exit 3) naming the fixed batch size and
    the remedy, and nothing is written; a fixed batch size the graph does not depend on still exports."""
    from exporter.api import prepare
    from exporter.errors import NotAClassifierError

    keras.utils.set_random_seed(0)
    labels = [str(i) for i in range(10)]
    _fixed_batch(8, reshape=True).save(tmp_path / "reshape.keras")
    with pytest.raises(NotAClassifierError, match="could not run the model on a batch of 6 probe images: .*incompatible") as info:
        export(tmp_path / "reshape.keras", labels, tmp_path / "out", preprocessing=None, options=EVERY_FORMAT)
    assert "fixed batch size of 8" in str(info.value) and "Exception encountered" not in str(info.value)
    assert info.value.exit_code == 3 and not (tmp_path / "out").exists()
    _fixed_batch(8, reshape=False).save(tmp_path / "pooled.keras")
    prepared = prepare(tmp_path / "pooled.keras", labels, preprocessing=None, options=EVERY_FORMAT)
    assert prepared.info.preprocessing.in_model


# ------------------------------------------------------------------------------------- Keras ops in a legacy .h5 file
def test_an_h5_file_holding_keras_ops_is_refused_with_the_remedy(tmp_path):
    """``inputs / 255.0`` (or keras.applications' preprocess_input on a tensor) saved with model.save("model.h5"):
    Keras cannot rebuild the op from the legacy format and its message points at custom_object_scope, which does
    not help; the error now says the file must be saved as .keras (which loads and exports)."""
    from exporter.errors import ModelLoadError
    from exporter.loading import load_model

    inputs = keras.Input((SIZE, SIZE, 3))
    model = _classifier(inputs, inputs / 255.0)
    model.save(tmp_path / "model.h5")  # Keras logs that .h5 is legacy, and saves the op as a layer
    with pytest.raises(ModelLoadError, match="'TrueDivide' is a Keras op .* save the model with model.save\\('model.keras'\\)"):
        load_model(tmp_path / "model.h5")
    model.save(tmp_path / "model.keras")
    assert load_model(tmp_path / "model.keras").in_model.scale == (1 / 255.0,) * 3


def test_a_negated_input_is_an_affine_step_of_the_preprocessing():
    """``keras.ops.negative(x) + 255`` (inverting a grayscale image) then Rescaling: the unary Negative op ended the
    search, though it is the affine map -x like ``255 - x``, which was already followed."""
    inputs = keras.Input((SIZE, SIZE, 3))
    found = detect_preprocessing(_classifier(inputs, keras.layers.Rescaling(1 / 255.0)(keras.ops.negative(inputs) + 255.0)))
    assert len(found.layers) == 3 and found.scale == (-1 / 255.0,) * 3 and found.bias == (1.0,) * 3


def test_a_slice_of_the_input_channels_before_the_rescaling_is_followed(tmp_path):
    """An RGB input of which the model keeps one channel (``x[..., :1]``, a grayscale model fed RGB files) or some
    (``x[..., 1:]``) before its Rescaling: the slice ended the search (only whole reorderings were followed), so the
    export asked for a preprocessing the model applies itself. Also once saved and loaded."""
    from exporter.loading import load_model

    inputs = keras.Input((SIZE, SIZE, 3))
    found = detect_preprocessing(_classifier(inputs, keras.layers.Rescaling(1 / 255.0)(inputs[..., :1])))
    assert found.scale == (1 / 255.0,) and found.bias == (0.0,) and "takes channels [0] of its 3" in found.note
    rescaling = keras.layers.Rescaling([1 / 255.0, 2 / 255.0], offset=[0.0, -1.0])
    model = _classifier(inputs, rescaling(inputs[..., 1:]))
    model.save(tmp_path / "model.keras")
    loaded = load_model(tmp_path / "model.keras").in_model
    assert loaded.scale == (1 / 255.0, 2 / 255.0) and loaded.bias == (0.0, -1.0) and "[1, 2]" in loaded.note


@pytest.mark.parametrize("how", ["rgb_to_grayscale", "mean"])
def test_an_rgb_input_made_grayscale_before_the_rescaling_is_the_models_preprocessing(how):
    """``keras.ops.image.rgb_to_grayscale(x)`` or ``keras.ops.mean(x, axis=-1, keepdims=True)`` (a grayscale model
    fed RGB files) before the Rescaling ended the search, and the export asked for a preprocessing the model applies
    itself. The mix is followed; the chain is then no per-channel scale and bias (scale None, and a note says why)."""

    def gray(x):
        return keras.ops.image.rgb_to_grayscale(x) if how == "rgb_to_grayscale" else keras.ops.mean(x, axis=-1, keepdims=True)

    inputs = keras.Input((SIZE, SIZE, 3))
    found = detect_preprocessing(_classifier(inputs, keras.layers.Rescaling(1 / 255.0)(gray(inputs))))
    assert len(found.layers) == 2 and found.scale is None and "mixes its input channels" in found.note
    assert not detect_preprocessing(_classifier(inputs, gray(inputs)))  # mixed, never normalised
    after = detect_preprocessing(_classifier(inputs, gray(keras.layers.Rescaling(1 / 255.0)(inputs))))
    assert len(after.layers) == 1 and after.scale == (1 / 255.0,) * 3  # the search ends at a mix after the scale
    summed = keras.ops.sum(inputs, axis=-1)[..., None]  # the channel axis dropped: not followed
    assert not detect_preprocessing(_classifier(inputs, keras.layers.Rescaling(1 / 255.0)(summed)))
