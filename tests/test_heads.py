"""Logits and binary heads, and a model full of inference no-ops, exported to Core ML (.mlpackage, .mlmodel) and ONNX
and validated against Keras on real held-out digits. The models are tiny (32 px, two convolutions) and trained for a
few epochs on scikit-learn's digits, so their outputs depend on the input."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest
from conftest import SAMPLES

from exporter.api import ExportOptions, export
from exporter.errors import LabelsError, NotAClassifierError
from exporter.images import iter_batches, list_images
from exporter.inference import INFERENCE_NOOP_CLASSES
from exporter.preprocessing import Preprocessing
from exporter.runtime import ExecutorRunner, OnnxRunner
from exporter.validation.parity import validate
from exporter.validation.tolerances import FP32_MAX_ABS_PROB
from exporter.xcode.golden import write_golden
from sample_models.data import digits_arrays, digits_split, render_digit

pytestmark = pytest.mark.slow
SIZE = 32
FP32_ONLY = ExportOptions(variants=("fp32",))
DIGITS = SAMPLES / "heldout" / "digits"


def _digits(keep=None):
    """Training digits (never the held-out ones) as 32x32 RGB uint8, with labels; only classes in ``keep``."""
    images, labels = digits_arrays()
    train, _ = digits_split()
    if keep is not None:
        train = train[np.isin(labels[train], keep)]
    x = np.stack([np.asarray(render_digit(images[i], (SIZE, SIZE)).convert("RGB")) for i in train])
    return x.astype("float32"), labels[train]


def _conv_body(x, between=lambda t: t):
    x = keras.layers.MaxPooling2D()(between(keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)))
    x = keras.layers.MaxPooling2D()(keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x))
    return keras.layers.Conv2D(32, 3, activation="relu")(x)


def _augment():
    """Every image augmentation layer this Keras has, in a nested Sequential: all are the identity at inference."""
    kwargs = {
        "RandomRotation": dict(factor=0.05),
        "RandomZoom": dict(height_factor=0.1),
        "RandomContrast": dict(factor=0.1),
        "RandomTranslation": dict(height_factor=0.05, width_factor=0.05),
        "RandomCrop": dict(height=SIZE, width=SIZE),
        "RandomBrightness": dict(factor=0.1, value_range=(0, 255)),
        "RandomFlip": dict(mode="horizontal"),
    }
    names = ["RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast", "RandomTranslation", "RandomCrop", "RandomBrightness"]
    return keras.Sequential([keras.Input((SIZE, SIZE, 3))] + [getattr(keras.layers, n)(**kwargs[n]) for n in names], name="augment")


@pytest.fixture(scope="module")
def logits_model(tmp_path_factory):
    """Ten digits, Dense(10) logits (trained from_logits=True); a nested backbone holding the Rescaling; augmentation
    and every dropout/noise layer on the way, so the export must find the preprocessing and strip the no-ops."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    inputs = keras.Input((SIZE, SIZE, 3))
    b_in = keras.Input((SIZE, SIZE, 3))
    b = keras.layers.Rescaling(1 / 255, name="to_unit")(keras.layers.GaussianNoise(1.0)(b_in))
    b = _conv_body(b, between=keras.layers.SpatialDropout2D(0.05))
    flat = keras.layers.Reshape((-1, 32))(b)
    b = keras.layers.Reshape(b.shape[1:])(keras.layers.SpatialDropout1D(0.05)(flat))
    b = keras.layers.Reshape(b.shape[1:])(keras.layers.SpatialDropout3D(0.05)(keras.layers.Reshape((1, *b.shape[1:]))(b)))
    backbone = keras.Model(b_in, keras.layers.GlobalAveragePooling2D()(b), name="backbone")
    regularizers = (
        keras.layers.Dropout(0.2),
        keras.layers.GaussianDropout(0.1),
        keras.layers.AlphaDropout(0.02),
        keras.layers.ActivityRegularization(l2=1e-5),
    )
    logits = keras.layers.Dense(10, name="logits")

    def head(h):
        for layer in regularizers:
            h = layer(h)
        return logits(h)

    # trained without the augmentation (a horizontal flip does not help digits), then saved with it in front,
    # sharing the trained layers: the transfer-learning recipe
    core_in = keras.Input((SIZE, SIZE, 3))
    core = keras.Model(core_in, head(backbone(core_in)))
    core.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    core.fit(x, y, epochs=8, batch_size=32, verbose=0)
    model = keras.Model(inputs, head(backbone(_augment()(inputs))))
    path = tmp_path_factory.mktemp("logits") / "logits.keras"
    model.save(path)
    (path.parent / "labels.txt").write_text("\n".join(str(i) for i in range(10)) + "\n")
    return path


def _binary(tmp_path_factory, activation):
    keras.utils.set_random_seed(0)
    x, y = _digits(keep=[0, 1])
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(_conv_body(inputs))
    out = keras.layers.Dense(1, activation=activation)(features)
    model = keras.Model(inputs, out)
    model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=activation is None))
    model.fit(x / 127.5 - 1, (y == 1).astype("float32"), epochs=6, batch_size=32, verbose=0)
    folder = tmp_path_factory.mktemp(f"binary_{activation}")
    model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("zero\none\n")
    images = folder / "heldout"
    for digit, name in (("0", "zero"), ("1", "one")):
        shutil.copytree(DIGITS / digit, images / name)
    return folder


@pytest.fixture(scope="module")
def sigmoid_model(tmp_path_factory):
    return _binary(tmp_path_factory, "sigmoid")


@pytest.fixture(scope="module")
def logit_model(tmp_path_factory):
    return _binary(tmp_path_factory, None)


def _formats(out, manifest):
    assert {(a["format"], a["variant"]) for a in manifest["artifacts"]} == {("mlpackage", "fp32"), ("mlmodel", "fp32"), ("onnx", "fp32")}
    return [out / a["path"] for a in manifest["artifacts"]]


def _runner(path, pre, labels):
    return OnnxRunner(path, pre, labels) if path.suffix == ".onnx" else ExecutorRunner(path, pre, labels)


def test_logits_are_refused_without_the_flag_with_a_hint(logits_model, tmp_path, capsys):
    from exporter.cli import main

    with pytest.raises(SystemExit) as info:
        main(
            [
                "convert",
                str(logits_model),
                "--labels",
                str(logits_model.parent / "labels.txt"),
                "--out",
                str(tmp_path / "out"),
                "--formats",
                "onnx",
            ]
        )
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "not a probability vector" in err and "--add-softmax" in err and str(logits_model) in err
    assert not (tmp_path / "out").exists()


def test_logits_with_add_softmax_export_everywhere_and_pass_parity(logits_model, tmp_path):
    labels = logits_model.parent / "labels.txt"
    out = tmp_path / "out"
    options = ExportOptions(variants=("fp32",), add_softmax=True)
    manifest = export(logits_model, labels, out, options=options)
    paths = _formats(out, manifest)
    inference = manifest["inference_model"]
    assert inference["head"] == {"model_output": "logits", "units": 10, "appended": "softmax", "add_softmax": True}
    assert manifest["preprocessing"]["in_model"] is True  # found inside the nested backbone
    assert inference["in_model_preprocessing"]["layers"] == ["backbone/to_unit"]
    np.testing.assert_allclose(inference["in_model_preprocessing"]["scale"], [1 / 255] * 3)
    removed = {r["class"] for r in inference["removed_layers"]}
    expected = {
        n
        for n in INFERENCE_NOOP_CLASSES
        if n
        in {
            "RandomFlip",
            "RandomRotation",
            "RandomZoom",
            "RandomContrast",
            "RandomTranslation",
            "RandomCrop",
            "RandomBrightness",
            "GaussianNoise",
            "SpatialDropout1D",
            "SpatialDropout2D",
            "SpatialDropout3D",
            "Dropout",
            "GaussianDropout",
            "AlphaDropout",
            "ActivityRegularization",
        }
    }
    assert removed == expected

    # independently of the exporter's head: softmax of the file's own logits, computed in numpy
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    items = list_images(DIGITS)[::3]
    pixels = np.concatenate([b for _, b in iter_batches(items, pre)])
    logits = np.asarray(keras.saving.load_model(logits_model)(pixels.astype("float32"), training=False), np.float64)
    want = np.exp(logits - logits.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    names = labels.read_text().split()
    for path in paths:
        np.testing.assert_allclose(_runner(path, pre, names)(pixels), want, atol=FP32_MAX_ABS_PROB, err_msg=path.name)
    # trained, not random: far above chance on the held-out digits (sizes, aspect ratios, JPEG it never saw), and
    # many different answers, so a converted file that ignored its input could not match
    assert (want.argmax(axis=1) == np.array([int(it.label) for it in items])).mean() > 0.5
    assert len(set(want.argmax(axis=1).tolist())) >= 5

    report = validate(out, DIGITS)  # reads add_softmax from the manifest to build the same Keras reference
    assert report["passed"] and all(r["status"] == "passed" for r in report["artifacts"])
    golden = write_golden(out, DIGITS, tmp_path / "golden", count=12)
    for record in golden["images"]:
        assert abs(sum(record["probabilities"]) - 1) < 1e-5


@pytest.mark.parametrize("which", ["sigmoid", "logit"])
def test_binary_head_is_two_labels_with_one_minus_p_in_every_format(which, sigmoid_model, logit_model, tmp_path):
    folder = sigmoid_model if which == "sigmoid" else logit_model
    out = tmp_path / "out"
    options = ExportOptions(variants=("fp32",), add_softmax=which == "logit")
    manifest = export(folder / "model.keras", folder / "labels.txt", out, preprocessing="tf", options=options)
    paths = _formats(out, manifest)
    assert manifest["labels"] == ["zero", "one"]
    assert manifest["inference_model"]["head"]["model_output"] == which
    assert manifest["preprocessing"]["notes"].startswith("preset tf")

    pre = Preprocessing.from_dict(manifest["preprocessing"])
    items = list_images(folder / "heldout")
    pixels = np.concatenate([b for _, b in iter_batches(items, pre)])
    z = np.asarray(keras.saving.load_model(folder / "model.keras")(pixels / 127.5 - 1, training=False), np.float64)
    p = z[:, 0] if which == "sigmoid" else 1 / (1 + np.exp(-z[:, 0]))
    want = np.stack([1 - p, p], axis=1)
    assert ((p > 0.5) == np.array([it.label == "one" for it in items])).mean() > 0.9  # it learned 0 vs 1
    for path in paths:
        np.testing.assert_allclose(_runner(path, pre, ["zero", "one"])(pixels), want, atol=FP32_MAX_ABS_PROB, err_msg=path.name)
    report = validate(out, folder / "heldout")
    assert report["passed"] and len(report["artifacts"]) == 3
    assert report["keras"]["against_labels"]["accuracy"] > 0.9


def test_binary_heads_refuse_what_they_cannot_be(sigmoid_model, logit_model, tmp_path):
    with pytest.raises(NotAClassifierError, match="one unit without an activation.*--add-softmax"):
        export(logit_model / "model.keras", logit_model / "labels.txt", tmp_path / "a", preprocessing="tf", options=FP32_ONLY)
    with pytest.raises(NotAClassifierError, match="sigmoid.*already is a probability"):
        export(
            sigmoid_model / "model.keras",
            sigmoid_model / "labels.txt",
            tmp_path / "b",
            preprocessing="tf",
            options=ExportOptions(variants=("fp32",), add_softmax=True),
        )
    (tmp_path / "one.txt").write_text("one\n")
    with pytest.raises(LabelsError, match="2 labels"):
        export(sigmoid_model / "model.keras", tmp_path / "one.txt", tmp_path / "c", preprocessing="tf", options=FP32_ONLY)
    assert not any((tmp_path / d).exists() for d in "abc")


def test_add_softmax_on_a_softmax_model_is_refused(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3))
    features = keras.layers.GlobalAveragePooling2D()(_conv_body(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(features))
    model.save(tmp_path / "m.keras")
    with pytest.raises(NotAClassifierError, match="already outputs probabilities"):
        export(
            tmp_path / "m.keras",
            ["a", "b", "c"],
            tmp_path / "out",
            preprocessing="tf",
            options=ExportOptions(variants=("fp32",), add_softmax=True),
        )


def test_nested_keras_applications_backbone_exports_with_its_own_preprocessing(tmp_path):
    """Issue 13's first case: MobileNetV3 (include_preprocessing) as a backbone inside a transfer model, with
    augmentation in front. No --preprocessing: the Rescaling inside the backbone is found, raw pixels go in."""
    keras.utils.set_random_seed(0)
    x, y = _digits()
    backbone = keras.applications.MobileNetV3Small(
        input_shape=(SIZE, SIZE, 3), alpha=0.75, minimalistic=True, include_top=False, weights=None, pooling="avg"
    )
    for layer in backbone.layers:  # moving statistics that settle within a few hundred steps
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    inputs = keras.Input((SIZE, SIZE, 3))
    head = keras.layers.Dense(10, activation="softmax")
    dropout = keras.layers.Dropout(0.2)
    core = keras.Model(inputs, head(dropout(backbone(inputs))))  # trained without the augmentation, as above
    core.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
    core.fit(x, y, epochs=4, batch_size=32, verbose=0)
    aug_in = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(aug_in, head(dropout(backbone(_augment()(aug_in)))))
    model.save(tmp_path / "transfer.keras")
    manifest = export(
        tmp_path / "transfer.keras",
        [str(i) for i in range(10)],
        tmp_path / "out",
        options=ExportOptions(formats=("mlpackage", "onnx"), variants=("fp32",)),
    )
    assert manifest["preprocessing"]["in_model"] is True
    found = manifest["inference_model"]["in_model_preprocessing"]
    assert len(found["layers"]) == 1 and found["layers"][0].startswith(backbone.name + "/")
    np.testing.assert_allclose(found["scale"], [1 / 127.5] * 3)  # MobileNetV3: Rescaling(1/127.5, offset=-1)
    np.testing.assert_allclose(found["bias"], [-1.0] * 3)
    assert {r["class"] for r in manifest["inference_model"]["removed_layers"]} >= {"RandomFlip", "Dropout"}
    report = validate(tmp_path / "out", DIGITS)
    assert report["passed"] and len(report["artifacts"]) == 2
    assert report["keras"]["against_labels"]["accuracy"] > 0.2  # the head learned something from the features
