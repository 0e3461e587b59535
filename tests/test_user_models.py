"""Models the way users build them, outside the keras.applications families and the layer zoo: each one a case the
exploratory hunt found broken, exported and validated end to end on real held-out digits. The models are tiny (32 px,
one or two convolutions) and trained a few epochs on scikit-learn's digits, so their outputs depend on the input."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import SAMPLES

from exporter.api import ExportOptions, export, validate
from exporter.errors import NotAClassifierError
from sample_models.data import digits_arrays, digits_split, render_digit

SIZE = 32
DIGITS = SAMPLES / "heldout" / "digits"
TF_CONTRACT = {"input_size": [SIZE, SIZE], "scale": [1 / 127.5], "bias": [-1.0]}
FAST = ExportOptions(formats=("mlpackage", "onnx"), variants=("fp32",))


def _digits(size=(SIZE, SIZE)):
    """Training digits (never the held-out ones) as RGB float32 on 0..255, with their labels."""
    images, labels = digits_arrays()
    train, _ = digits_split()
    x = np.stack([np.asarray(render_digit(images[i], size).convert("RGB")) for i in train])
    return x.astype("float32"), labels[train]


def _save(model, folder, x, y, epochs=6):
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("".join(f"{i}\n" for i in range(10)))
    return folder / "model.keras", folder / "labels.txt"


def _any_size_backbone():
    """The transfer-learning recipe's backbone built for any image size (what keras.applications builds with
    input_shape=None), an augmentation layer and a grouped convolution inside."""
    inputs = keras.Input((None, None, 3))
    h = keras.layers.RandomFlip("horizontal")(inputs)
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", groups=2, activation="relu")(h)
    return keras.Model(inputs, h, name="backbone")


def _classifier(inputs, backbone):
    h = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h))


@pytest.fixture(scope="module")
def any_size_model(tmp_path_factory):
    """Takes any image size (Input((None, None, 3))) around the any-size backbone: the common way to write a fully
    convolutional classifier. Trained at 32 px."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    model = _classifier(keras.Input((None, None, 3)), _any_size_backbone())
    return _save(model, tmp_path_factory.mktemp("any_size"), x / 127.5 - 1, y)


@pytest.mark.slow
def test_any_size_model_exports_at_the_contract_size_and_passes_parity(any_size_model, tmp_path):
    model, labels = any_size_model
    manifest = export(model, labels, tmp_path / "out", preprocessing=TF_CONTRACT, options=FAST)
    assert manifest["preprocessing"]["input_size"] == [SIZE, SIZE]
    assert sorted(r["class"] for r in manifest["inference_model"]["removed_layers"]) == ["Dropout", "RandomFlip"]
    report = validate(tmp_path / "out", DIGITS)  # reloads the model at the manifest's size
    assert report.passed
    assert len(report["artifacts"]) == 2 and all(a["status"] == "passed" for a in report["artifacts"])
    assert report["artifacts"][0]["against_labels"]["accuracy"] > 0.2  # trained: twice chance, its outputs depend on the image


def test_any_size_model_without_a_size_is_refused_with_the_remedy(any_size_model, tmp_path):
    model, labels = any_size_model
    with pytest.raises(NotAClassifierError, match="fixed height and width.*input_size"):
        export(model, labels, tmp_path / "out", preprocessing="tf", options=FAST)
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def uint8_model(tmp_path_factory):
    """Takes uint8 pixels (``Input(dtype="uint8")``) and scales them itself: the Core ML conversion used to stop at
    the model's cast of its input to uint8."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    inputs = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    h = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    return _save(keras.Model(inputs, outputs), tmp_path_factory.mktemp("uint8"), x.astype("uint8"), y)


@pytest.mark.slow
def test_uint8_input_model_converts_to_core_ml_and_passes_parity(uint8_model, tmp_path):
    model, labels = uint8_model
    options = ExportOptions(formats=("mlpackage", "mlmodel"), variants=("fp32",))
    export(model, labels, tmp_path / "out", preprocessing=None, options=options)  # its Rescaling is the contract
    report = validate(tmp_path / "out", DIGITS)
    assert report.passed and len(report["artifacts"]) == 2
    assert report["artifacts"][0]["against_labels"]["accuracy"] > 0.3


def test_noops_inside_an_any_size_backbone_are_removed_exactly():
    """A fixed-size classifier around a backbone built for any size: the no-op layers inside it are probed at a
    stand-in size and removed, and the rebuilt model computes exactly what Keras computes at inference."""
    from exporter.inference import strip_inference_noops

    keras.utils.set_random_seed(0)
    model = _classifier(keras.Input((SIZE, SIZE, 3)), _any_size_backbone())
    stripped, removed = strip_inference_noops(model)
    assert sorted((r.class_name, r.layer.startswith("backbone/")) for r in removed) == [("Dropout", False), ("RandomFlip", True)]
    x = _digits()[0][:16] / 127.5 - 1
    np.testing.assert_array_equal(np.asarray(stripped(x)), np.asarray(model(x, training=False)))


@pytest.mark.parametrize(
    "front",
    [
        lambda: keras.layers.Resizing(SIZE, SIZE),
        lambda: keras.layers.CenterCrop(SIZE, SIZE),
        lambda: keras.layers.Cropping2D(((10, 6), (8, 8))),
    ],
    ids=["resizing", "center_crop", "cropping"],
)
def test_rescaling_after_a_resize_or_crop_is_found_as_the_models_preprocessing(front, tmp_path):
    """A model that takes larger photos and resizes or crops them before its own Rescaling: the Rescaling is still its
    preprocessing of raw pixels (it commutes with the resize), so no contract needs declaring."""
    from exporter.api import prepare

    inputs = keras.Input((48, 48, 3))
    h = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit")(front()(inputs))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(h))
    model_path, labels = tmp_path / "model.keras", tmp_path / "labels.txt"
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(h)).save(model_path)
    labels.write_text("".join(f"{i}\n" for i in range(10)))
    prepared = prepare(model_path, labels, preprocessing=None, options=FAST)
    assert prepared.info.preprocessing.in_model and prepared.info.preprocessing.input_size == (48, 48)
    found = prepared.loaded.in_model
    assert found.layers == ("to_unit",)
    np.testing.assert_allclose(found.scale, [1 / 127.5] * 3)
    np.testing.assert_allclose(found.bias, [-1.0] * 3)


def test_a_resize_that_pads_is_not_passed():
    """Resizing(pad_to_aspect_ratio=True) fills with a constant the Rescaling after it would move: not commuting."""
    from exporter.inference import detect_preprocessing

    inputs = keras.Input((48, 32, 3))
    h = keras.layers.Rescaling(1 / 255)(keras.layers.Resizing(SIZE, SIZE, pad_to_aspect_ratio=True)(inputs))
    assert not detect_preprocessing(keras.Model(inputs, keras.layers.Conv2D(4, 3)(h)))


def _head_model(tmp_path, activation, units=3):
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(units, activation=activation)(h)).save(tmp_path / "model.keras")
    return tmp_path / "model.keras"


@pytest.mark.parametrize("add_softmax", [False, True])
def test_multi_label_sigmoid_head_is_refused_as_such(tmp_path, add_softmax):
    """Dense(N, sigmoid): N independent probabilities. --add-softmax used to accept it (its rows do not sum to one)
    and export softmax(sigmoid(z)), a file that silently answers something else than the model."""
    options = ExportOptions(formats=("onnx",), variants=("fp32",), add_softmax=add_softmax)
    with pytest.raises(NotAClassifierError, match="3 sigmoid units, a multi-label head"):
        export(_head_model(tmp_path, "sigmoid"), ["a", "b", "c"], tmp_path / "out", preprocessing="tf", options=options)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("activation", ["relu", "tanh", "softplus"])
def test_add_softmax_after_a_non_logit_activation_is_refused(tmp_path, activation):
    options = ExportOptions(formats=("onnx",), variants=("fp32",), add_softmax=True)
    with pytest.raises(NotAClassifierError, match=f"last activation is '{activation}'"):
        export(_head_model(tmp_path, activation), ["a", "b", "c"], tmp_path / "out", preprocessing="tf", options=options)
    assert not (tmp_path / "out").exists()


def test_add_softmax_after_log_softmax_gives_the_models_probabilities(tmp_path):
    """softmax(log_softmax(z)) = softmax(z): a log-probability head with --add-softmax is the model's distribution."""
    from exporter.api import prepare

    options = ExportOptions(formats=("onnx",), variants=("fp32",), add_softmax=True)
    prepared = prepare(_head_model(tmp_path, "log_softmax"), ["a", "b", "c"], preprocessing="tf", options=options)
    x = np.random.default_rng(0).uniform(-1, 1, (4, SIZE, SIZE, 3)).astype("float32")
    keras_model = prepared.loaded.keras_model
    np.testing.assert_allclose(np.asarray(prepared.loaded.model(x)), np.exp(np.asarray(keras_model(x))), rtol=1e-5, atol=1e-7)


def test_kl_is_never_negative_and_matches_scipy():
    """Probability rows from float32 files sum to one only within rounding; the reported KL used to be negative
    (-1e-10) for files equal to the model. scipy.stats.entropy normalises both rows, as KL's definition needs."""
    from scipy.stats import entropy

    from exporter.validation.accumulate import kl_divergence

    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10), size=200).astype(np.float32)
    q = (p * (1 + rng.normal(0, 1e-6, p.shape))).astype(np.float32)  # nearly equal, each row off one by rounding
    q[:50] = rng.dirichlet(np.ones(10), size=50)  # and some far apart
    kl = kl_divergence(p, q)
    assert (kl >= 0).all()
    np.testing.assert_allclose(kl, entropy(p.astype(np.float64), q.astype(np.float64), axis=1), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "message, target",
    [  # coremltools 9's two wordings (converters/mil/_deployment_compatibility.py)
        (
            "Provided minimum deployment target requires model to be of version 4 but converted model uses following "
            "features which are available from version 5 onwards. Please use a higher minimum deployment target",
            "iOS14",
        ),
        (
            "Provided deployment target requires model to be of version 4 but converted model has version 5 suitable for later releases",
            "iOS14",
        ),
        ("Conversion for TF op 'Foo' not implemented", None),
    ],
)
def test_newer_neuralnetwork_target_is_read_from_either_message(message, target):
    from exporter.convert.coreml import _newer_target_needed

    assert _newer_target_needed(ValueError(message)) == target


@pytest.fixture(scope="module")
def caffe_ops_model(tmp_path_factory):
    """keras.applications.resnet50.preprocess_input called on the Input (channel reversal and ImageNet mean as Keras
    ops in the graph, no Lambda), as transfer-learning tutorials write it; declared contract: raw pixels."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    inputs = keras.Input((SIZE, SIZE, 3))
    h = keras.applications.resnet50.preprocess_input(inputs) / 64.0
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.GlobalAveragePooling2D()(h))
    return _save(keras.Model(inputs, outputs), tmp_path_factory.mktemp("caffe_ops"), x, y)


@pytest.mark.slow
def test_channel_reversal_in_the_model_exports_to_mlmodel_for_ios14(caffe_ops_model, tmp_path):
    model, labels = caffe_ops_model
    raw = {"input_size": [SIZE, SIZE], "scale": [1.0], "bias": [0.0]}
    options = ExportOptions(formats=("mlmodel",), variants=("fp32",))
    manifest = export(model, labels, tmp_path / "out", preprocessing=raw, options=options)
    assert [a["minimum_deployment_target"] for a in manifest["artifacts"]] == ["iOS14"]
    report = validate(tmp_path / "out", DIGITS)
    assert report.passed and report["artifacts"][0]["against_labels"]["accuracy"] > 0.3


def _small_classifier(inputs, **names):
    h = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name=names.get("conv"))(inputs)
    h = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
    return keras.layers.Dense(10, activation="softmax", name=names.get("dense"))(keras.layers.GlobalAveragePooling2D()(h))


@pytest.fixture(scope="module")
def reserved_names_model(tmp_path_factory):
    """A model, its input and its layers named like what the exporter adds (the converters' input ``image``, the
    outputs ``probabilities`` and ``label``, exporter_* steps). A model named ``image`` stopped every Core ML export
    (Keras: name used twice, exit 70) and the ONNX file failed its checker (two tensors named ``image``)."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    inputs = keras.Input((SIZE, SIZE, 3), name="label")
    outputs = _small_classifier(inputs, conv="exporter_cast", dense="probabilities")
    return _save(keras.Model(inputs, outputs, name="image"), tmp_path_factory.mktemp("reserved"), x / 127.5 - 1, y)


@pytest.mark.slow
def test_a_model_named_like_the_exporters_own_tensors_exports_everywhere(reserved_names_model, tmp_path):
    model, labels = reserved_names_model
    options = ExportOptions(formats=("mlpackage", "mlmodel", "onnx"), variants=("fp32",))
    export(model, labels, tmp_path / "out", preprocessing=TF_CONTRACT, options=options)
    report = validate(tmp_path / "out", DIGITS)
    assert report.passed and len(report["artifacts"]) == 3
    assert report["artifacts"][0]["against_labels"]["accuracy"] > 0.3


@pytest.fixture(scope="module")
def float16_output_model(tmp_path_factory):
    """Built under Keras' mixed_float16 policy without a float32 output layer (the mixed-precision guide's advice the
    user skipped): its probabilities are float16. The ONNX file failed its checker (float16 into a float output)."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((SIZE, SIZE, 3))
        model = keras.Model(inputs, _small_classifier(inputs))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.outputs[0].dtype == "float16"
    return _save(model, tmp_path_factory.mktemp("float16_out"), x / 127.5 - 1, y)


@pytest.mark.slow
def test_float16_output_model_exports_to_onnx_with_float32_probabilities(float16_output_model, tmp_path):
    model, labels = float16_output_model
    export(model, labels, tmp_path / "out", preprocessing=TF_CONTRACT, options=ExportOptions(formats=("onnx",), variants=("fp32",)))
    report = validate(tmp_path / "out", DIGITS)
    assert report.passed and report["artifacts"][0]["against_labels"]["accuracy"] > 0.3
