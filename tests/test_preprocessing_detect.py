"""In-model preprocessing found wherever it sits, presets equal to keras.applications' preprocess_input, no-op layers
removed for export, and double normalisation refused. Fast: no conversion here (tests/test_heads.py converts)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from conftest import SAMPLES

from exporter.errors import ConfigError, ConversionError, NotAClassifierError
from exporter.heads import check_outputs
from exporter.images import iter_batches, list_images
from exporter.inference import INFERENCE_NOOP_CLASSES, detect_preprocessing, strip_inference_noops
from exporter.loading import load_model
from exporter.preprocessing import PRESETS, Preprocessing, declared_contract, resolve

SIZE = 32
# The composed affine is computed in float64 and Keras runs the chain in float32 on values up to ~255 * scale.
AFFINE_TOLERANCE = 1e-5
# preprocess_input divides by std where the contract multiplies by 1/std: float32 rounding of values up to ~2.6.
PRESET_TOLERANCE = 1e-5


def _pixels(n=4, channels=3, size=SIZE):
    return np.random.default_rng(1).integers(0, 256, size=(n, size, size, channels)).astype("float32")


def _chain_model(layers, channels=3):
    """The preprocessing layers alone, so their output on pixels is the expected value of the composed affine."""
    inputs = keras.Input((SIZE, SIZE, channels))
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def _classifier(prefix_layers, channels=3, nest=0, sequential=False):
    """Input -> prefix layers -> conv -> softmax head; with ``nest`` >= 1 the prefix and conv sit inside that many
    levels of nested models (the innermost a Sequential when ``sequential``)."""
    body_layers = [*prefix_layers, keras.layers.Conv2D(4, 3, name="first_conv"), keras.layers.GlobalAveragePooling2D()]
    if nest == 0:
        inputs = keras.Input((SIZE, SIZE, channels))
        return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(_apply(body_layers, inputs)))
    if sequential:
        body = keras.Sequential([keras.Input((SIZE, SIZE, channels)), *body_layers], name="body")
    else:
        inputs = keras.Input((SIZE, SIZE, channels))
        body = keras.Model(inputs, _apply(body_layers, inputs), name="body")
    for level in range(nest - 1):
        inputs = keras.Input((SIZE, SIZE, channels))
        body = keras.Model(inputs, body(inputs), name=f"level{level}")
    inputs = keras.Input((SIZE, SIZE, channels))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(body(inputs)))


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


CHAINS = {
    "rescaling": lambda: [keras.layers.Rescaling(1 / 255)],
    "rescaling_offset": lambda: [keras.layers.Rescaling(1 / 127.5, offset=-1)],
    "per_channel_scale": lambda: [keras.layers.Rescaling([0.01, 0.02, 0.03], offset=[-1.0, 0.5, 2.0])],
    "rescaling_then_normalization": lambda: [
        keras.layers.Rescaling(1 / 255),
        keras.layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.229**2, 0.224**2, 0.225**2]),
    ],
    "normalization_alone": lambda: [keras.layers.Normalization(mean=[123.7, 116.3, 103.5], variance=[58.4**2, 57.1**2, 57.4**2])],
    "normalization_then_rescaling": lambda: [
        keras.layers.Normalization(mean=[100, 110, 120], variance=[400, 900, 1600]),
        keras.layers.Rescaling([0.5, 2.0, 1.0]),
    ],
    "inverted_normalization": lambda: [
        keras.layers.Rescaling(1 / 255),
        keras.layers.Normalization(mean=[0.5, 0.4, 0.3], variance=[4.0, 9.0, 0.25], invert=True),
    ],
    "broadcast_array_scale": lambda: [keras.layers.Rescaling(np.array([0.1, 0.2, 0.3]).reshape(1, 1, 1, 3))],
    "scalar_normalization": lambda: [keras.layers.Normalization(axis=None, mean=127.0, variance=4096.0)],
    "past_noops": lambda: [
        keras.layers.RandomFlip(),
        keras.layers.Rescaling(1 / 255),
        keras.layers.Dropout(0.2),
        keras.layers.Identity(),
        keras.layers.Activation("linear"),
        keras.layers.RandomContrast(0.2),
        keras.layers.Rescaling(2.0, offset=-1),
    ],
}


def _check_composed(found, chain_layers, channels=3):
    assert found, "no preprocessing detected"
    expected = np.asarray(_chain_model(chain_layers, channels)(_pixels(channels=channels), training=False))
    got = _pixels(channels=channels) * np.asarray(found.scale) + np.asarray(found.bias)
    np.testing.assert_allclose(got, expected, atol=AFFINE_TOLERANCE * max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("nest", [0, 1, 2])
def test_each_chain_is_found_and_composed_at_each_depth(chain, nest):
    layers = CHAINS[chain]()
    model = _classifier(layers, nest=nest)
    found = detect_preprocessing(model)
    normalizers = [la for la in layers if isinstance(la, (keras.layers.Rescaling, keras.layers.Normalization))]
    assert [p.rsplit("/", 1)[-1] for p in found.layers] == [la.name for la in normalizers]
    if nest:
        assert all(p.count("/") == nest for p in found.layers)  # reported with the path through the nesting
    _check_composed(found, layers)


def test_sequential_and_a_sequential_nested_in_a_functional_model(tmp_path):
    chain = CHAINS["rescaling_then_normalization"]()
    seq = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            *chain,
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    seq.save(tmp_path / "seq.keras")  # a loaded Sequential has several nodes per layer: the walk must still see it
    _check_composed(load_model(tmp_path / "seq.keras").in_model, chain)
    nested = _classifier(CHAINS["rescaling_offset"](), nest=1, sequential=True)
    nested.save(tmp_path / "nested.keras")
    found = load_model(tmp_path / "nested.keras").in_model
    assert len(found.layers) == 1 and found.layers[0].startswith("body/rescaling")
    assert found.scale == pytest.approx((1 / 127.5,) * 3) and found.bias == pytest.approx((-1.0,) * 3)


def test_a_layer_with_weights_or_a_fork_before_the_rescaling_ends_the_search():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(keras.layers.Conv2D(3, 1)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    assert not detect_preprocessing(model)
    a = keras.layers.Rescaling(1 / 255)(inputs)
    b = keras.layers.Conv2D(3, 1)(inputs)  # the raw input also feeds another branch: not normalised everywhere
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Add()([a, b]))
    assert not detect_preprocessing(keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)))


def _imagenet_pixels(channels_order="RGB"):
    pre = Preprocessing((SIZE, SIZE), channel_order=channels_order)
    items = list_images(SAMPLES / "heldout" / "photos")[::20]
    return np.concatenate([b for _, b in iter_batches(items, pre)]).astype("float32")


@pytest.mark.parametrize(
    "app, kwargs, mode",
    [
        (keras.applications.MobileNetV3Small, dict(alpha=0.75, minimalistic=True), "tf"),
        (keras.applications.EfficientNetV2B0, {}, "torch"),  # Rescaling(1/255) then Normalization(ImageNet mean/var)
        (keras.applications.EfficientNetV2S, {}, "tf"),  # Rescaling(1/128, offset=-1): close to, not exactly, "tf"
        (keras.applications.ConvNeXtTiny, {}, "torch"),  # its own Normalization on 0..255
        (keras.applications.EfficientNetB0, {}, None),  # Rescaling then an un-adapted Normalization (weights=None)
    ],
)
def test_keras_applications_backbones_nested_in_a_transfer_model(app, kwargs, mode):
    backbone = app(input_shape=(SIZE, SIZE, 3), include_top=False, weights=None, pooling="avg", **kwargs)
    inputs = keras.Input((SIZE, SIZE, 3))
    augmented = keras.Sequential([keras.layers.RandomFlip(name="flip"), keras.layers.RandomRotation(0.1, name="rotate")], name="augment")
    x = backbone(augmented(inputs), training=False)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Dropout(0.2)(x)))
    found = detect_preprocessing(model)
    assert found and all(p.startswith(backbone.name + "/") for p in found.layers)
    assert found.passed == ("augment/flip", "augment/rotate")
    pixels = _imagenet_pixels()
    composed = pixels * np.asarray(found.scale) + np.asarray(found.bias)
    prefix = keras.Model(backbone.inputs[0], backbone.get_layer(found.layers[-1].split("/")[-1]).output)
    np.testing.assert_allclose(composed, np.asarray(prefix(pixels)), atol=1e-4)
    if mode and app is not keras.applications.EfficientNetV2S:
        want = keras.applications.imagenet_utils.preprocess_input(pixels.copy(), mode=mode)
        np.testing.assert_allclose(composed, want, atol=1e-4)


@pytest.mark.parametrize("mode", PRESETS)
def test_each_preset_matches_keras_preprocess_input_on_real_images(mode):
    pre = declared_contract(mode, (SIZE, SIZE, 3))
    items = list_images(SAMPLES / "heldout" / "photos")[::10]
    ours = np.concatenate([pre.normalize(b) for _, b in iter_batches(items, pre)])  # pixels in the contract's order
    rgb = np.concatenate([b for _, b in iter_batches(items, Preprocessing((SIZE, SIZE)))]).astype("float32")
    if mode == "raw":
        want = rgb
    else:
        want = keras.applications.imagenet_utils.preprocess_input(rgb.copy(), mode=mode)
    np.testing.assert_allclose(ours, want, atol=PRESET_TOLERANCE * max(1.0, np.abs(want).max()))


def test_presets_need_the_right_channels_and_a_file_stays_possible(tmp_path):
    with pytest.raises(ConfigError, match="RGB"):
        declared_contract("caffe", (SIZE, SIZE, 1))
    assert declared_contract("tf", (SIZE, SIZE, 1)).channel_order == "L"
    path = tmp_path / "pre.json"
    path.write_text(Preprocessing((SIZE, SIZE), scale=0.5).to_json())
    assert declared_contract(str(path), (SIZE, SIZE, 3)).scale == (0.5, 0.5, 0.5)
    with pytest.raises(ConfigError, match="not found"):
        declared_contract("tensorflow", (SIZE, SIZE, 3))


@pytest.mark.parametrize("sequential", [False, True])
def test_declared_scale_on_a_self_normalising_model_is_refused(tmp_path, sequential):
    if sequential:
        model = keras.Sequential(
            [
                keras.Input((SIZE, SIZE, 3)),
                keras.layers.Rescaling(1 / 255),
                keras.layers.Conv2D(4, 3),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(3, activation="softmax"),
            ]
        )
    else:
        model = _classifier(CHAINS["rescaling"](), nest=2)
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    for preset in ("tf", "torch", "caffe"):
        with pytest.raises(ConfigError, match="normalises pixels itself.*second time"):
            resolve(declared_contract(preset, loaded.input_shape), loaded.input_shape, loaded.in_model_preprocessing)
    assert resolve(None, loaded.input_shape, loaded.in_model_preprocessing).in_model
    declared_in_model = Preprocessing((SIZE, SIZE), in_model=True)
    assert resolve(declared_in_model, loaded.input_shape, loaded.in_model_preprocessing) is declared_in_model
    raw = resolve(declared_contract("raw", loaded.input_shape), loaded.input_shape, loaded.in_model_preprocessing)
    assert raw.in_model and raw.is_identity  # raw pixels in is exactly what in_model means


def test_probe_uses_the_contracts_pixel_range(tmp_path):
    """A head that sums to 1 on inputs in [-1, 1] but not on real 0..255 pixels is not a softmax."""
    inputs = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    probs = keras.layers.Dense(3, activation="softmax")(pooled)
    # zero while the mean pixel stays under 1 (any input in [-1, 1]); large on real pixels
    leak = keras.layers.Dense(3, activation="relu", kernel_initializer="ones", bias_initializer=keras.initializers.Constant(-3.0))(pooled)
    keras.Model(inputs, keras.layers.Add()([probs, leak])).save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    unit = np.random.default_rng(0).uniform(-1, 1, size=(4, SIZE, SIZE, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded.keras_model(unit)).sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(NotAClassifierError, match="not a probability vector.*contract's range"):
        check_outputs(loaded.keras_model, loaded.head, declared_contract("raw", loaded.input_shape), loaded.path)


def _noop_instances():
    """One instance of every inference no-op class this Keras has, with the input rank it needs."""
    made = []
    for name in INFERENCE_NOOP_CLASSES:
        cls = getattr(keras.layers, name, None)
        if cls is None:
            continue
        kwargs = {
            "Dropout": dict(rate=0.5),
            "SpatialDropout1D": dict(rate=0.5),
            "SpatialDropout2D": dict(rate=0.5),
            "SpatialDropout3D": dict(rate=0.5),
            "GaussianNoise": dict(stddev=0.5),
            "GaussianDropout": dict(rate=0.5),
            "AlphaDropout": dict(rate=0.5),
            "ActivityRegularization": dict(l1=0.1),
            "RandomRotation": dict(factor=0.2),
            "RandomZoom": dict(height_factor=0.2),
            "RandomContrast": dict(factor=0.5),
            "RandomTranslation": dict(height_factor=0.2, width_factor=0.2),
            "RandomCrop": dict(height=SIZE, width=SIZE),
            "RandomBrightness": dict(factor=0.5),
            "RandomHue": dict(factor=0.5),
            "RandomSaturation": dict(factor=0.5),
            "RandomSharpness": dict(factor=0.5),
            "RandomPosterization": dict(factor=4, value_range=(0, 255)),
            "RandomColorDegeneration": dict(factor=0.5),
        }.get(name, {})
        made.append(pytest.param(name, kwargs, id=name))
    return made


def _wrap_rank(layer, x):
    """Apply ``layer`` at the rank it needs (3-D for SpatialDropout1D, 5-D for 3D) and come back to NHWC."""
    name = type(layer).__name__
    if name == "SpatialDropout1D":
        return keras.layers.Reshape((SIZE, SIZE, 3))(layer(keras.layers.Reshape((SIZE * SIZE, 3))(x)))
    if name == "SpatialDropout3D":
        return keras.layers.Reshape((SIZE, SIZE, 3))(layer(keras.layers.Reshape((1, SIZE, SIZE, 3))(x)))
    return layer(x)


@pytest.mark.parametrize("name, kwargs", _noop_instances())
def test_each_inference_noop_is_removed_anywhere_and_the_model_computes_the_same(name, kwargs):
    inputs = keras.Input((SIZE, SIZE, 3))
    inner = _wrap_rank(getattr(keras.layers, name)(**kwargs, name="noop"), inputs)
    backbone = keras.Model(inputs, keras.layers.Conv2D(4, 3, activation="relu")(inner), name="backbone")
    outer_in = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(outer_in))
    model = keras.Model(outer_in, keras.layers.Dense(3, activation="softmax")(x))
    stripped, removed = strip_inference_noops(model)
    assert [(r.layer, r.class_name, r.exported_as) for r in removed] == [("backbone/noop", name, "identity")]
    stripped_classes = {type(la).__name__ for la in stripped.get_layer("backbone").layers}
    assert name not in stripped_classes and "Identity" in stripped_classes
    pixels = _imagenet_pixels()
    np.testing.assert_array_equal(np.asarray(stripped(pixels)), np.asarray(model(pixels, training=False)))


def test_random_crop_that_shrinks_the_image_is_exported_as_keras_computes_it():
    """In Keras 3.15 RandomCrop passes the image through unchanged at inference (its symbolic output is the crop
    size, its inference output the input size). The exporter reproduces the inference output, whatever it is."""
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.RandomCrop(SIZE // 2, SIZE // 2, name="crop")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    stripped, removed = strip_inference_noops(model)
    pixels = _imagenet_pixels()
    np.testing.assert_allclose(np.asarray(stripped(pixels)), np.asarray(model(pixels, training=False)), atol=1e-6)
    assert removed[0].class_name == "RandomCrop"
    # a Flatten + Dense sized for the crop cannot take what RandomCrop really passes at inference: refused, named
    flat = keras.layers.Dense(3, activation="softmax")(
        keras.layers.Flatten()(keras.layers.RandomCrop(SIZE // 2, SIZE // 2, name="crop")(inputs))
    )
    model = keras.Model(inputs, flat)
    if removed[0].exported_as == "identity":
        with pytest.raises(ConversionError, match="crop"):
            strip_inference_noops(model)


def test_a_model_without_noops_is_left_as_it_is():
    model = _classifier(CHAINS["rescaling"](), nest=1)
    assert strip_inference_noops(model) == (model, [])


def test_a_scale_that_varies_over_pixels_is_reported_not_composed():
    vignette = np.linspace(0.5, 1.0, SIZE * SIZE).reshape(SIZE, SIZE, 1).astype("float32")
    found = detect_preprocessing(_classifier([keras.layers.Rescaling(vignette, name="vignette")], nest=1))
    assert found.layers == ("body/vignette",) and found.scale is None and "channels" in found.note
    assert resolve(None, (SIZE, SIZE, 3), list(found.layers)).in_model  # the model still normalises itself


def test_keras_internals_missing_is_one_clear_error():
    from exporter.errors import UpstreamAPIError
    from exporter.keras_graph import consumers, node_tensors

    class Renamed:
        name = "layer"

    class Model:
        layers = [Renamed()]

    with pytest.raises(UpstreamAPIError, match="_inbound_nodes.*upstream.py"):
        consumers(Model())
    with pytest.raises(UpstreamAPIError, match="input_tensors.*keras_graph.py"):
        node_tensors(object())


def test_a_subclassed_model_is_left_as_it_is():
    """Its call() is code: the layers cannot be rewired, so nothing is reported as removed that was not."""

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.drop = keras.layers.Dropout(0.5)
            self.dense = keras.layers.Dense(3, activation="softmax")

        def call(self, x, training=False):
            return self.dense(self.drop(keras.ops.mean(x, axis=(1, 2)), training=training))

    inner = Subclassed()
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, inner(keras.layers.Dropout(0.2, name="outer_drop")(inputs)))
    stripped, removed = strip_inference_noops(model)
    assert [r.layer for r in removed] == ["outer_drop"]  # the Functional model's own; not the subclassed model's
    pixels = _pixels()
    np.testing.assert_array_equal(np.asarray(stripped(pixels)), np.asarray(model(pixels, training=False)))
    assert strip_inference_noops(inner) == (inner, [])
