"""Issue 13 item 5: the common layers of users' own heads and small networks (sample_models/layer_zoo.py), one small
trained network each, exported to fp32 of every format and checked against Keras on held-out digits. A layer that a
converter cannot handle must fail with a ConversionError naming the layer (or, when coremltools' message carries
no graph node, the feature) and the format; which layers those are is
written down here (UNSUPPORTED), so a layer that starts or stops converting fails the test until this list is updated.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES

from sample_models import layer_zoo

pytestmark = pytest.mark.slow

# (layer, format) pairs a converter refuses today -> a fragment the error must contain besides the format. None now.
UNSUPPORTED: dict[tuple[str, str], str] = {}
# (layer, format) pairs whose file needs a newer target than the format's default: the two bilinear resizes need the
# NeuralNetwork Upsample "align corners" mode, which coremltools only writes for iOS 14 (spec 5), so their .mlmodel
# files are converted for iOS 14 instead of the default iOS 13 (convert/coreml.py, _newer_target_needed).
NEWER_TARGET: dict[tuple[str, str], str] = {
    ("upsampling_bilinear", "mlmodel"): "iOS14",
    ("resizing", "mlmodel"): "iOS14",
}
DEFAULT_TARGET = {"mlpackage": "iOS15", "mlmodel": "iOS13"}
FORMATS = ("mlpackage", "mlmodel", "onnx")
FORMAT_WORDS = {"mlpackage": "mlprogram", "mlmodel": "neuralnetwork", "onnx": "ONNX"}
# fp32 parity on this many held-out digits (every class, several sizes and file types): the gate is the same 1e-5 as
# for every fp32 artifact, and a tiny network's error does not grow with more images.
ZOO_IMAGES = 100
# A classifier whose probabilities barely move between images would pass any parity gate; trained for a few steps,
# each zoo network's top probability varies by more than this across the held-out digits.
MIN_PROBABILITY_SPREAD = 0.05


def test_zoo_lists_every_layer():
    assert list(layer_zoo.zoo()) == layer_zoo.NAMES


@pytest.fixture(scope="module")
def zoo_images(tmp_path_factory) -> Path:
    """A fixed subset of the held-out digits, the same files for every layer."""
    from exporter.images import list_images

    src = SAMPLES / "heldout" / "digits"
    items = list_images(src)
    rng = np.random.default_rng(13)
    dest = tmp_path_factory.mktemp("zoo_images")
    for i in sorted(rng.permutation(len(items))[:ZOO_IMAGES]):
        path = Path(items[i].path)
        (dest / path.parent.name).mkdir(exist_ok=True)
        shutil.copy2(path, dest / path.parent.name / path.name)
    return dest


def _probability_spread(model, images: Path) -> float:
    """How much the top probability moves across the held-out digits."""
    from exporter.images import iter_batches, list_images
    from exporter.preprocessing import Preprocessing

    pre = Preprocessing.from_dict(layer_zoo.PREPROCESSING)
    pixels = np.concatenate([b for _, b in iter_batches(list_images(images), pre, batch_size=64)])
    return float(np.ptp(np.asarray(model.predict(pre.normalize(pixels), verbose=0)).max(axis=1)))


def _export(model_path, tmp_path, formats, trust):
    import exporter

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i}\n" for i in range(layer_zoo.CLASSES)))
    out = tmp_path / f"out_{'_'.join(formats)}"
    return out, exporter.export(
        model_path,
        labels,
        out,
        preprocessing=dict(layer_zoo.PREPROCESSING),
        options=exporter.ExportOptions(formats=formats, variants=("fp32",), trust_code=trust),
    )


@pytest.mark.parametrize("name", layer_zoo.NAMES)
def test_layer_converts_with_fp32_parity_or_is_named(name, tmp_path, zoo_images):
    import exporter
    from exporter.errors import ConversionError

    entry = layer_zoo.zoo()[name]
    model = layer_zoo.build(name)
    layer_zoo.train(model)
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    assert _probability_spread(model, zoo_images) > MIN_PROBABILITY_SPREAD, "the network must depend on the image"
    converting = [f for f in FORMATS if (name, f) not in UNSUPPORTED]
    for fmt in FORMATS:
        if fmt in converting:
            continue
        with pytest.raises(ConversionError) as info:
            _export(model_path, tmp_path, (fmt,), entry.needs_trust)
        text = str(info.value) + " " + str(info.value.__cause__ or "")
        expected = UNSUPPORTED[(name, fmt)]
        assert expected in text and FORMAT_WORDS[fmt] in text, text
    out, manifest = _export(model_path, tmp_path, tuple(converting), entry.needs_trust)
    assert sorted(a["format"] for a in manifest["artifacts"]) == sorted(converting)
    for a in manifest["artifacts"]:
        if a["format"] in DEFAULT_TARGET:
            assert a["minimum_deployment_target"] == NEWER_TARGET.get((name, a["format"]), DEFAULT_TARGET[a["format"]])
    report = exporter.validate(out, zoo_images, trust_code=entry.needs_trust)  # raises ParityError on a failed gate
    assert report["passed"] and report["images"] == ZOO_IMAGES
    assert all(a["status"] == "passed" for a in report["artifacts"]), report["artifacts"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_layer_no_converter_handles_is_named_with_the_format(tmp_path, fmt):
    import keras

    from exporter.errors import ConversionError

    inputs = keras.Input((layer_zoo.ZOO_SIZE, layer_zoo.ZOO_SIZE, 3))
    x = keras.layers.Resizing(12, 12, interpolation="lanczos3", name="odd_resize")(inputs)  # TF's ScaleAndTranslate
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    keras.Model(inputs, keras.layers.Dense(layer_zoo.CLASSES, activation="softmax")(x)).save(tmp_path / "m.keras")
    with pytest.raises(ConversionError) as info:
        _export(tmp_path / "m.keras", tmp_path, (fmt,), False)
    text = str(info.value)
    assert "'odd_resize' (Resizing)" in text and FORMAT_WORDS[fmt] in text and "ScaleAndTranslate" in text, text
