"""How each preprocessing contract lands in the files: BGR, grayscale, per-channel std, float ONNX input.

These use small models built here with random weights; they check what the files declare and that the ONNX graph
computes what Keras computes on input-dependent outputs (asserted not uniform), not accuracy."""

from __future__ import annotations

import keras
import numpy as np
import onnxruntime as ort
import pytest

from exporter.api import ExportOptions, export
from exporter.runtime.coreml_spec import image_preprocessing, load_spec

BGR_COLOURSPACE, GRAY_COLOURSPACE = 30, 10  # CoreML.Specification.ImageFeatureType.ColorSpace


def _model(channels: int, path):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, channels))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(path)
    return path


@pytest.mark.parametrize(
    "contract, colour, channels",
    [
        ({"input_size": [16, 16], "channel_order": "BGR", "scale": 0.5, "bias": [-10, -20, -30]}, BGR_COLOURSPACE, 3),
        ({"input_size": [16, 16], "channel_order": "L", "scale": 0.25, "bias": -3}, GRAY_COLOURSPACE, 1),
    ],
)
def test_channel_order_and_bias_reach_both_core_ml_formats(tmp_path, contract, colour, channels):
    model = _model(channels, tmp_path / "m.keras")
    manifest = export(
        model,
        ["a", "b", "c"],
        tmp_path / "out",
        preprocessing=contract,
        options=ExportOptions(formats=("mlpackage", "mlmodel"), variants=("fp32",)),
    )
    for art in manifest["artifacts"]:
        spec = load_spec(tmp_path / "out" / art["path"])
        assert spec.description.input[0].type.imageType.colorSpace == colour
        scale, bias = image_preprocessing(spec)
        want_bias = contract["bias"] if isinstance(contract["bias"], list) else [contract["bias"]]
        np.testing.assert_allclose(scale, [contract["scale"]] * channels, rtol=1e-6)
        np.testing.assert_allclose(bias, want_bias, rtol=1e-6)


def test_onnx_bgr_graph_takes_rgb_and_matches_keras(tmp_path):
    model = _model(3, tmp_path / "m.keras")
    contract = {"input_size": [16, 16], "channel_order": "BGR", "mean": [10, 100, 200], "std": [50, 60, 70]}
    export(model, ["a", "b", "c"], tmp_path / "out", preprocessing=contract, options=ExportOptions(formats=("onnx",), variants=("fp32",)))
    rgb = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    s = ort.InferenceSession(str(tmp_path / "out" / "m_fp32.onnx"), providers=["CPUExecutionProvider"])
    got = s.run(["probabilities"], {"image": rgb})[0]
    bgr = rgb[..., ::-1].astype(np.float32)
    want = keras.saving.load_model(model)((bgr - np.array([10, 100, 200])) / np.array([50, 60, 70])).numpy()
    assert want.std(axis=0).max() > 1e-3  # outputs depend on the input
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_onnx_float_input_option(tmp_path):
    model = _model(3, tmp_path / "m.keras")
    export(
        model,
        ["a", "b", "c"],
        tmp_path / "out",
        preprocessing={"input_size": [16, 16], "scale": 0.01},
        options=ExportOptions(formats=("onnx",), variants=("fp32",), onnx_raw_input=False, opset=15),
    )
    s = ort.InferenceSession(str(tmp_path / "out" / "m_fp32.onnx"), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].type == "tensor(float)"
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    np.testing.assert_allclose(
        s.run(["probabilities"], {s.get_inputs()[0].name: x})[0], keras.saving.load_model(model)(x).numpy(), atol=1e-5
    )


def test_per_channel_std_is_exact_in_core_ml(tmp_path):
    model = _model(3, tmp_path / "m.keras")
    contract = {"input_size": [16, 16], "mean": [10, 100, 200], "std": [50, 60, 70]}
    export(
        model, ["a", "b", "c"], tmp_path / "out", preprocessing=contract, options=ExportOptions(formats=("mlpackage",), variants=("fp32",))
    )
    spec = load_spec(tmp_path / "out" / "m_fp32.mlpackage")
    scale, bias = image_preprocessing(spec)
    assert scale == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(bias, [-10, -100, -200], rtol=1e-6)  # the image input subtracts the mean ...
    from exporter.runtime.coreml_spec import _main_ops  # ... and a multiply by 1/std follows in the program

    consts = [op for op in _main_ops(spec) if op.type == "const"]
    vals = [list(op.attributes["val"].immediateValue.tensor.floats.values) for op in consts]
    assert any(np.allclose(v, [1 / 50, 1 / 60, 1 / 70], rtol=1e-6) for v in vals if len(v) == 3)


def test_both_core_ml_formats_name_their_probabilities_alike(small_export):
    # The NeuralNetwork converter kept the TensorFlow graph's output name ("Identity") for the probabilities, so the
    # class Xcode generates for the .mlmodel had an `Identity` property where the .mlpackage's has `classLabel_probs`.
    from exporter.runtime.executor import CoreMLExecutor

    out, images = small_export
    files = {p.suffix: p for p in out.iterdir() if p.suffix in (".mlpackage", ".mlmodel")}
    assert set(files) == {".mlpackage", ".mlmodel"}
    for suffix, path in files.items():
        description = load_spec(path).description
        assert description.predictedProbabilitiesName == "classLabel_probs", suffix
        assert description.predictedFeatureName == "classLabel", suffix
        assert {o.name for o in description.output} == {"classLabel", "classLabel_probs"}, suffix
    nn = load_spec(files[".mlmodel"]).neuralNetworkClassifier
    assert nn.labelProbabilityLayerName == "classLabel_probs"
    assert any("classLabel_probs" in layer.output for layer in nn.layers)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = [CoreMLExecutor(files[s]).predict(pixels) for s in (".mlpackage", ".mlmodel")]
    np.testing.assert_allclose(got[0], got[1], atol=1e-5)
