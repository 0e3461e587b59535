"""Models the way users build them, third round (see tests/test_user_models.py for the first): each case one the
exploratory hunt found broken. The models are tiny (32 px, one or two convolutions); the ones whose exported files are
checked for parity are trained a few epochs on scikit-learn's digits, so their outputs depend on the input, and are
validated on the real held-out digits."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import SAMPLES

from exporter.api import ExportOptions, export, validate
from sample_models.data import digits_arrays, digits_split, render_digit

SIZE = 32
DIGITS = SAMPLES / "heldout" / "digits"
CORE_ML = ExportOptions(formats=("mlpackage",), variants=("fp32",))


def _digits(size=(SIZE, SIZE)):
    """Training digits (never the held-out ones) as RGB float32 on 0..255, with their labels."""
    images, labels = digits_arrays()
    train, _ = digits_split()
    x = np.stack([np.asarray(render_digit(images[i], size).convert("RGB")) for i in train])
    return x.astype("float32"), labels[train]


def _save(model, folder, x, y, epochs=5, classes=10):
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("".join(f"{i}\n" for i in range(classes)))
    return folder / "model.keras", folder / "labels.txt"


def _conv_body(x):
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    return keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)


# ------------------------------------------------------------------------------------- integer input in a nested model
def _uint8_backbone(dtype="uint8"):
    inputs = keras.Input((SIZE, SIZE, 3), dtype=dtype)
    return keras.Model(inputs, _conv_body(keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)), name="backbone")


def _around(backbone, dtype="float32"):
    inputs = keras.Input((SIZE, SIZE, 3), dtype=dtype)
    h = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int32"])
def test_a_nested_integer_input_is_rebuilt_as_the_exact_float_cast(dtype):
    """The Core ML rewrite of a nested model taking integers: whatever its caller gives it (fractions, negatives,
    values past the type's range), the float rebuild computes what Keras' cast to the integer type computes."""
    from exporter.convert.rewrite import integer_input_as_float

    keras.utils.set_random_seed(0)
    model = _around(_uint8_backbone(dtype))
    rebuilt = integer_input_as_float(model)
    assert not any(keras.backend.is_int_dtype(t.dtype) for m in _models(rebuilt) for t in m.inputs)
    rng = np.random.default_rng(0)
    x = rng.uniform(-300, 600, (4, SIZE, SIZE, 3)).astype("float32")
    x[0] = np.rint(x[0])  # whole values too
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(model(x)))


def _models(model):
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _models(layer)


def test_a_uint8_binary_model_under_its_head_is_rebuilt_on_float(tmp_path):
    """A uint8 model ending in Dense(1, sigmoid): the [1 - p, p] head wraps it in a float input, which made it a
    nested uint8 model and stopped its Core ML conversion the same way."""
    from exporter.api import prepare
    from exporter.convert.rewrite import integer_input_as_float

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    h = keras.layers.GlobalAveragePooling2D()(_conv_body(keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)))
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h)).save(tmp_path / "model.keras")
    prepared = prepare(tmp_path / "model.keras", ["no", "yes"], preprocessing=None, options=CORE_ML)
    rebuilt = integer_input_as_float(prepared.export_model)
    assert not any(keras.backend.is_int_dtype(t.dtype) for m in _models(rebuilt) for t in m.inputs)
    x = np.random.default_rng(0).integers(0, 256, (4, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(rebuilt(x)), np.asarray(prepared.loaded.model(x)))


@pytest.fixture(scope="module")
def nested_uint8_model(tmp_path_factory):
    """A uint8 backbone (its own Input(dtype="uint8") and Rescaling) under a uint8 classifier: Core ML conversion
    stopped at the nested model's cast ("Cast: Provided destination type uint8 not supported", exit 5)."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    return _save(_around(_uint8_backbone(), "uint8"), tmp_path_factory.mktemp("nested_uint8"), x.astype("uint8"), y)


@pytest.mark.slow
def test_nested_uint8_backbone_converts_to_core_ml_and_passes_parity(nested_uint8_model, tmp_path):
    model, labels = nested_uint8_model
    options = ExportOptions(formats=("mlpackage", "mlmodel"), variants=("fp32",))
    export(model, labels, tmp_path / "out", preprocessing=None, options=options)  # the backbone's Rescaling is the contract
    report = validate(tmp_path / "out", DIGITS)
    assert report.passed and len(report["artifacts"]) == 2
    assert report["artifacts"][0]["against_labels"]["accuracy"] > 0.3


# ------------------------------------------------------------------------------------- one output in a dict or a list
def _dict_output_model():
    inputs = keras.Input((SIZE, SIZE, 3))
    probs = keras.layers.Dense(10, activation="softmax", name="probs")(keras.layers.GlobalAveragePooling2D()(_conv_body(inputs)))
    return keras.Model(inputs, {"probs": probs}, name="dict_out")


@pytest.fixture(scope="module")
def dict_output_model(tmp_path_factory):
    """``Model(x, {"probs": y})``, trained with a loss per named output: the export stopped with an internal error
    (exit 70, "KeyError: 0" reading the last activation, then the probabilities came back as a dict)."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    model = _dict_output_model()
    model.compile(keras.optimizers.Adam(3e-3), {"probs": "sparse_categorical_crossentropy"})
    model.fit(x / 127.5 - 1, {"probs": y}, epochs=5, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp("dict_output")
    model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("".join(f"{i}\n" for i in range(10)))
    return folder / "model.keras", folder / "labels.txt"


@pytest.mark.slow
def test_one_output_in_a_dict_exports_and_passes_parity(dict_output_model, tmp_path):
    model, labels = dict_output_model
    options = ExportOptions(formats=("mlpackage", "onnx"), variants=("fp32",))
    export(model, labels, tmp_path / "out", preprocessing="tf", options=options)
    report = validate(tmp_path / "out", DIGITS)
    assert report.passed and len(report["artifacts"]) == 2
    assert report["artifacts"][0]["against_labels"]["accuracy"] > 0.3


@pytest.mark.parametrize("wrap", ["dict", "list", "nested_dict"])
def test_one_output_in_a_container_is_read_as_the_probabilities(wrap, tmp_path):
    """The reference the exporter builds returns the model's one output as an array, whichever container holds it,
    also when the dict-output model is nested in another."""
    from exporter.api import prepare

    keras.utils.set_random_seed(0)
    inner = _dict_output_model()
    if wrap == "dict":
        model = inner
    else:
        inputs = keras.Input((SIZE, SIZE, 3))
        out = inner(inputs)
        model = keras.Model(inputs, [out["probs"]] if wrap == "list" else out)
    model.save(tmp_path / "model.keras")
    prepared = prepare(tmp_path / "model.keras", [str(i) for i in range(10)], preprocessing="tf", options=CORE_ML)
    assert prepared.loaded.head.output == "probabilities" and prepared.loaded.num_classes == 10
    x = np.random.default_rng(0).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(prepared.loaded.model(x)), np.asarray(inner(x)["probs"]))


# ------------------------------------------------------------------------------------- binary heads and their labels
def _sigmoid_model(path):
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(h)).save(path)
    return path


@pytest.mark.parametrize("labels", [["cat", "dog", "bird"], ["dog"]])
def test_labels_for_a_sigmoid_model_are_explained_as_a_binary_pair(labels, tmp_path):
    """Dense(1, sigmoid) (cats vs dogs): the error said 'the model outputs 2 classes' of a model with one output, or
    only 'need at least 2 labels' to the user who listed the positive class."""
    from exporter.errors import LabelsError

    model = _sigmoid_model(tmp_path / "model.keras")
    (tmp_path / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    options = ExportOptions(formats=("onnx",), variants=("fp32",))
    with pytest.raises(LabelsError, match="binary classifier.*two labels, the class of outputs below 0.5 first") as info:
        export(model, tmp_path / "labels.txt", tmp_path / "out", preprocessing="tf", options=options)
    assert "labels.txt" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_sequential_built_by_calling_it_loads_from_a_legacy_h5(tmp_path):
    """keras.Sequential([...]) without an Input, built by calling it on a batch of two and saved as .h5 (Keras 3
    writes those too): its saved input has batch size 2 and Keras gives the loaded model no ``.output``; the
    single-output check must not stop there (it did, exit 3, "has never been called")."""
    from exporter.api import prepare

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    x = np.random.default_rng(0).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype("float32")
    model(x[:2])
    model.save(tmp_path / "model.h5")
    prepared = prepare(tmp_path / "model.h5", [str(i) for i in range(10)], preprocessing="tf", options=CORE_ML)
    np.testing.assert_allclose(np.asarray(prepared.loaded.model(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------- saved with zipped=False
@pytest.mark.slow
def test_an_unzipped_keras_model_folder_exports_and_passes_parity(dict_output_model, tmp_path):
    """``model.save(folder, zipped=False)`` (Keras 3: config.json, model.weights.h5, metadata.json in a folder), which
    Keras loads as it loads a .keras file, was refused as 'directory is not a TensorFlow SavedModel' (exit 3)."""
    model, labels = dict_output_model
    keras.saving.load_model(model).save(tmp_path / "model_dir", zipped=False)
    options = ExportOptions(formats=("onnx",), variants=("fp32",))
    manifest = export(tmp_path / "model_dir", labels, tmp_path / "out", preprocessing="tf", options=options)
    assert manifest["source"]["format"] == "keras_dir"
    report = validate(tmp_path / "out", DIGITS)
    assert report.passed and report["artifacts"][0]["against_labels"]["accuracy"] > 0.3


def test_an_unzipped_keras_model_folder_is_scanned_for_code_like_an_archive(tmp_path):
    from exporter.errors import UnsafeModelError
    from exporter.precheck import model_file

    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Lambda(lambda t: t * 2.0, name="doubler")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(h))
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h)).save(tmp_path / "model_dir", zipped=False)
    with pytest.raises(UnsafeModelError, match="'doubler' is a Lambda layer"):
        model_file(tmp_path / "model_dir")


# ------------------------------------------------------------------------------------- grayscale with its own Rescaling
@pytest.mark.parametrize("declared", [None, "raw"])
def test_a_grayscale_model_normalising_itself_gets_a_one_channel_contract(declared, tmp_path):
    """Input((32, 32, 1)) then Rescaling(1/255): the detected contract was built with the three-channel default scale
    and refused itself ('preprocessing scale must have 1 values (one per channel), got 3', exit 2)."""
    from exporter.api import prepare

    inputs = keras.Input((SIZE, SIZE, 1))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs)))
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h)).save(tmp_path / "model.keras")
    prepared = prepare(tmp_path / "model.keras", [str(i) for i in range(10)], preprocessing=declared, options=CORE_ML)
    pre = prepared.info.preprocessing
    assert pre.in_model and pre.channel_order == "L" and pre.scale == (1.0,) and pre.bias == (0.0,)


def test_a_channels_first_model_is_refused_with_the_remedy(tmp_path):
    """Input((3, 32, 32)) with data_format='channels_first' (models trained on a GPU, or ported from PyTorch): the
    refusal only said the shape was not (batch, height, width, 1 or 3)."""
    from exporter.errors import NotAClassifierError

    inputs = keras.Input((3, SIZE, SIZE))
    h = keras.layers.GlobalAveragePooling2D(data_format="channels_first")(inputs)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h)).save(tmp_path / "model.keras")
    with pytest.raises(NotAClassifierError, match="channels-first.*data_format='channels_last'"):
        export(tmp_path / "model.keras", [str(i) for i in range(10)], tmp_path / "out", preprocessing="tf", options=CORE_ML)


# ------------------------------------------------------------------------------------- bfloat16 compute
def _bfloat16_classifier():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((SIZE, SIZE, 3))
        h = keras.layers.GlobalAveragePooling2D()(_conv_body(inputs))
        return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", dtype="float32")(h))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_a_bfloat16_model_is_converted_as_its_float32_twin():
    """The twin computes what the same architecture built under the float32 policy computes with the same weights."""
    from exporter.convert.rewrite import float32_twin

    keras.utils.set_random_seed(0)
    model = _bfloat16_classifier()
    twin = float32_twin(model)
    assert all(layer.dtype_policy.compute_dtype == "float32" for layer in twin.layers)
    inputs = keras.Input((SIZE, SIZE, 3))
    plain = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(_conv_body(inputs))))
    plain.set_weights(model.get_weights())
    x = np.random.default_rng(0).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(twin(x)), np.asarray(plain(x)))


@pytest.mark.slow
def test_a_mixed_bfloat16_model_exports_and_passes_parity(tmp_path):
    """Built under mixed_bfloat16 (TPU training): every converter stopped (coremltools: "'NoneType' object has no
    attribute '__name__'", ONNX: a bfloat16 Conv its checker refuses), exit 5."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    model, labels = _save(_bfloat16_classifier(), tmp_path / "model", x / 127.5 - 1, y, epochs=3)
    options = ExportOptions(formats=("mlpackage", "onnx"), variants=("fp32",))
    export(model, labels, tmp_path / "out", preprocessing="tf", options=options)
    report = validate(tmp_path / "out", DIGITS)  # the files are judged against float64: Keras' bfloat16 is the coarser
    assert report.passed and report["artifacts"][0]["against_labels"]["accuracy"] > 0.3


def test_an_unzipped_keras_model_folder_has_its_layer_sizes_bounded_like_an_archive(tmp_path):
    """The architecture-size bound of .keras archives holds for the folder form too: a config declaring a 1.5 GB
    Dense kernel is refused before Keras allocates it."""
    import json

    from exporter.errors import ModelLoadError
    from exporter.loading import load_model

    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(h)).save(tmp_path / "model_dir", zipped=False)
    config = json.loads((tmp_path / "model_dir" / "config.json").read_text())
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Dense":
            layer["config"]["units"] = 125_000_000  # a (3, units) float32 kernel: 1.5 GB, over the 1 GiB budget
    (tmp_path / "model_dir" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="'head/kernel'.*memory budget"):
        load_model(tmp_path / "model_dir")


# ------------------------------------------------------------------------------------- celu (TensorFlow's Expm1)
@pytest.mark.slow
def test_celu_and_log1p_convert_everywhere_and_pass_parity(tmp_path):
    """Activation('celu') computes TensorFlow's Expm1, which neither coremltools nor tf2onnx converted (exit 5:
    "Conversion for TF op 'Expm1' not implemented"), and keras.ops.log1p TensorFlow's Log1p, which tf2onnx did not."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same")(inputs)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same")(keras.layers.Activation("celu")(h))
    h = keras.ops.log1p(keras.ops.abs(h))  # TensorFlow's Log1p, which tf2onnx lacked
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h)))
    model, labels = _save(model, tmp_path / "model", x / 127.5 - 1, y, epochs=8)
    options = ExportOptions(formats=("mlpackage", "mlmodel", "onnx"), variants=("fp32",))
    export(model, labels, tmp_path / "out", preprocessing="tf", options=options)
    report = validate(tmp_path / "out", DIGITS)
    assert report.passed and len(report["artifacts"]) == 3
    assert report["artifacts"][0]["against_labels"]["accuracy"] > 0.3
