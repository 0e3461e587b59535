"""Safe loading: no code from a model file runs unless the user says they trust it."""

import zipfile

import keras
import numpy as np
import pytest

from exporter.errors import ModelLoadError, NotAClassifierError, UnsafeModelError
from exporter.heads import check_outputs
from exporter.loading import load_model
from exporter.preprocessing import Preprocessing

MARKER = "exporter-test-lambda-ran"


def _tiny(head=None, inputs_shape=(16, 16, 3)):
    inputs = keras.Input(inputs_shape)
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3)(x)
    x = head(x) if head else keras.layers.Softmax()(x)
    return keras.Model(inputs, x)


@pytest.fixture()
def lambda_model(tmp_path):
    # The lambda writes a marker file when it runs: the test can tell whether loading executed it.
    marker = tmp_path / MARKER

    code = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).write_text('ran'), x)[1]"
    model = _tiny(head=lambda x: keras.layers.Softmax()(keras.layers.Lambda(eval(code))(x)))  # noqa: S307
    path = tmp_path / "lambda.keras"
    model.save(path)
    marker.unlink(missing_ok=True)
    return path, marker


def test_lambda_model_is_refused_and_its_code_never_runs(lambda_model):
    path, marker = lambda_model
    with pytest.raises(UnsafeModelError, match="Lambda") as info:
        load_model(path)
    assert str(path) in str(info.value) and "--trust-code" in str(info.value)
    assert not marker.exists()


def test_trusting_the_file_is_explicit(lambda_model):
    path, marker = lambda_model
    loaded = load_model(path, trust_code=True)
    assert loaded.num_classes == 3
    assert marker.exists()  # the code did run, because the user asked for it


def test_custom_class_is_refused(tmp_path):
    @keras.saving.register_keras_serializable(package="evil")
    class Evil(keras.layers.Layer):
        def call(self, x):
            return x

    inputs = keras.Input((16, 16, 3))
    x = Evil()(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    model.save(tmp_path / "custom.keras")
    with pytest.raises(UnsafeModelError, match="custom"):
        load_model(tmp_path / "custom.keras")


def test_legacy_h5_loads(tmp_path):
    model = _tiny()
    model.save(tmp_path / "m.h5")
    loaded = load_model(tmp_path / "m.h5")
    assert loaded.format == "h5" and loaded.input_shape == (16, 16, 3)
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    np.testing.assert_allclose(loaded.model(x), model(x), atol=1e-6)


def test_saved_model_directory_loads(tmp_path):
    model = _tiny()
    model.export(tmp_path / "sm", verbose=False)
    with pytest.raises(UnsafeModelError, match="SavedModel"):  # a SavedModel is a program: trusting it is explicit
        load_model(tmp_path / "sm")
    loaded = load_model(tmp_path / "sm", trust_code=True)
    assert loaded.format == "saved_model" and loaded.num_classes == 3
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    np.testing.assert_allclose(np.asarray(loaded.model(x)), model(x), atol=1e-5)


def test_logits_are_refused_by_the_probe_with_the_add_softmax_hint(tmp_path):
    _tiny(head=lambda x: x).save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")  # loading alone cannot tell: the probe needs the contract's range
    with pytest.raises(NotAClassifierError, match="not a probability vector.*--add-softmax"):
        check_outputs(loaded.keras_model, loaded.head, Preprocessing((16, 16), scale=1 / 255), loaded.path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: keras.Sequential([keras.Input((10,)), keras.layers.Dense(3, activation="softmax")]), "input shape"),
    ],
)
def test_not_a_classifier(tmp_path, make, message):
    make().save(tmp_path / "m.keras")
    with pytest.raises(NotAClassifierError, match=message):
        load_model(tmp_path / "m.keras")


def test_two_inputs(tmp_path):
    a, b = keras.Input((8, 8, 3)), keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
    keras.Model([a, b], keras.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "m.keras")
    with pytest.raises(NotAClassifierError, match="2 inputs"):
        load_model(tmp_path / "m.keras")


def test_missing_empty_corrupt_truncated(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "none.keras")
    (tmp_path / "empty.keras").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model(tmp_path / "empty.keras")
    (tmp_path / "junk.keras").write_bytes(b"junk" * 100)
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(tmp_path / "junk.keras")
    _tiny().save(tmp_path / "good.keras")
    data = (tmp_path / "good.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "cut.keras")
    with zipfile.ZipFile(tmp_path / "noconf.keras", "w") as z:
        z.writestr("metadata.json", "{}")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path / "noconf.keras")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported model file type"):
        load_model(tmp_path / "m.pt")


def test_in_model_rescaling_is_detected(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255, name="to_unit")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "r.keras")
    assert load_model(tmp_path / "r.keras").in_model_preprocessing == ["to_unit"]
