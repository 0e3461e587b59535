"""Every keras.applications classification family at a size CI can afford, in the two shapes users bring.

    from sample_models import families
    built = families.build("resnet50", shape="application")   # -> Built(model, preprocessing dict, ...)
    families.train(built)                                     # a few epochs on real digits: outputs depend on input

Shapes:
  application  the keras.applications model itself: include_top=True, classes=10, weights=None.
  nested       the transfer-learning recipe: the application with include_top=False as one nested layer, then
               GlobalAveragePooling2D, Dropout and a Dense softmax head.

Each family is built by the very code keras.applications runs (keras.src.applications.*), made small:
  * MobileNet / MobileNetV2 / MobileNetV3: the public constructors with alpha 0.25-0.35 at 32 px.
  * ResNet50/101/152 (v1), ResNet50V2/101V2/152V2: ``resnet.ResNet`` with one residual block per stage (two for v2)
    and 16-128 filters, through the same ``stack_residual_blocks_v1/v2`` functions (the real ones differ only in block counts).
  * DenseNet121/169/201: ``densenet.DenseNet(blocks=[1, 1, 1, 1])`` (the real ones: [6,12,24,16] / [6,12,32,32] /
    [6,12,48,32]).
  * EfficientNetB0-B7: ``efficientnet.EfficientNet`` with width 0.25 and depth 0.1 (B0 is 1.0/1.0, B7 2.0/3.1; the
    blocks, swish, squeeze-excitation, Rescaling+Normalization stem are the same).
  * EfficientNetV2 B0-B3, S: ``efficientnet_v2.EfficientNetV2`` with B0's block table, width 0.25, depth 0.1.
  * NASNetMobile: ``nasnet.NASNet`` with penultimate_filters 96, one block per cell stack, stem 8 (Mobile: 1056, 4,
    32).
  * ConvNeXt Tiny/Small/Base/Large/XLarge: ``convnext.ConvNeXt`` with depths [1,1,1,1] and dims 8-32.
  * Xception, InceptionV3, InceptionResNetV2, VGG16, VGG19: the unmodified keras.applications functions, run with
    every Conv2D/SeparableConv2D/hidden Dense width divided by ``WIDTH_DIVISOR`` (these functions take no width
    argument, so their ``layers`` namespace is swapped for one that narrows the layers while they build);
    InceptionResNetV2 also keeps only the first and last of its repeated residual blocks of each type.
  * SqueezeNet 1.1: the project's own (sample_models.architectures).

Preprocessing contracts are the keras.applications ``preprocess_input`` modes: tf ([-1, 1]), caffe (BGR, ImageNet
mean), torch (ImageNet mean/std), or ``in_model`` when the model starts with its own Rescaling/Normalization, also
when it sits inside the nested backbone (the exporter detects it there).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

CLASSES = 10
WIDTH_DIVISOR = 8

TF_MODE = {"scale": [1 / 127.5], "bias": [-1.0]}
CAFFE_MODE = {"channel_order": "BGR", "scale": [1.0], "bias": [-103.939, -116.779, -123.68]}
TORCH_MODE = {"mean": [0.485 * 255, 0.456 * 255, 0.406 * 255], "std": [0.229 * 255, 0.224 * 255, 0.225 * 255]}
IN_MODEL = {"in_model": True}
IDENTITY = {"scale": [1.0], "bias": [0.0], "in_model": False}


@dataclass(frozen=True)
class Family:
    name: str
    stands_for: str
    size: int
    mode: dict  # the contract of the application shape
    build: Any  # (include_top, size) -> keras.Model
    preprocessing_inside: bool = False  # the model starts with its own Rescaling/Normalization
    lr: float | None = None  # its own learning rate, when the recipe's LEARNING_RATE does not train it


@dataclass
class Built:
    family: Family
    shape: str
    model: Any
    preprocessing: dict  # the contract to declare (or {"in_model": True}), with input_size

    @property
    def name(self) -> str:
        return f"{self.family.name}_{self.shape}"


# ------------------------------------------------------------------------------------------------ narrowing
class _NarrowLayers:
    """Stands in for ``keras.layers`` inside one keras.applications module while it builds: Conv2D,
    SeparableConv2D and hidden Dense layers get 1/divisor of their width; everything else is keras.layers."""

    def __init__(self, divisor: int, keep: re.Pattern | None = None):
        import keras

        self._layers, self._divisor, self._keep = keras.layers, divisor, keep

    def _narrow(self, width: int, name: str | None) -> int:
        if self._keep is not None and name and self._keep.search(name):
            return width  # a projection back to the (already narrow) residual width
        return max(4, width // self._divisor)

    def Conv2D(self, filters, *args, **kwargs):  # noqa: N802 - keras' layer name
        return self._layers.Conv2D(self._narrow(filters, kwargs.get("name")), *args, **kwargs)

    def SeparableConv2D(self, filters, *args, **kwargs):  # noqa: N802
        return self._layers.SeparableConv2D(self._narrow(filters, kwargs.get("name")), *args, **kwargs)

    def Dense(self, units, *args, **kwargs):  # noqa: N802
        if kwargs.get("name") == "predictions":
            return self._layers.Dense(units, *args, **kwargs)
        return self._layers.Dense(self._narrow(units, kwargs.get("name")), *args, **kwargs)

    def __getattr__(self, item):
        return getattr(self._layers, item)


@contextlib.contextmanager
def _narrowed(module, keep: re.Pattern | None = None):
    original = module.layers
    module.layers = _NarrowLayers(WIDTH_DIVISOR, keep)
    try:
        yield
    finally:
        module.layers = original


# ------------------------------------------------------------------------------------------------ builders
def _common(include_top: bool, size: int) -> dict:
    return dict(include_top=include_top, weights=None, input_shape=(size, size, 3), classes=CLASSES)


def _mobilenet(include_top, size):
    import keras

    return keras.applications.MobileNet(alpha=0.25, **_common(include_top, size))


def _mobilenet_v2(include_top, size):
    import keras

    return keras.applications.MobileNetV2(alpha=0.35, **_common(include_top, size))


def _mobilenet_v3(which: str, minimalistic: bool):
    def build(include_top, size):
        import keras

        fn = keras.applications.MobileNetV3Small if which == "small" else keras.applications.MobileNetV3Large
        return fn(
            alpha=0.75 if which == "small" else 0.35, minimalistic=minimalistic, include_preprocessing=True, **_common(include_top, size)
        )

    return build


def _resnet(v2: bool):
    def build(include_top, size):
        from keras.src.applications import resnet

        stack = resnet.stack_residual_blocks_v2 if v2 else resnet.stack_residual_blocks_v1

        blocks = 2 if v2 else 1  # a v2 stack names its first and last block alike when it has only one

        def stack_fn(x):  # ResNet50's stack_fn (resnet.ResNet50 / resnet_v2.ResNet50V2) with fewer, narrower blocks
            if v2:
                x = stack(x, 16, blocks, name="conv2")
                x = stack(x, 32, blocks, name="conv3")
                x = stack(x, 64, blocks, name="conv4")
                return stack(x, 128, blocks, stride1=1, name="conv5")
            x = stack(x, 16, blocks, stride1=1, name="conv2")
            x = stack(x, 32, blocks, name="conv3")
            x = stack(x, 64, blocks, name="conv4")
            return stack(x, 128, blocks, name="conv5")

        return resnet.ResNet(stack_fn, preact=v2, use_bias=True, name="resnet_v2" if v2 else "resnet", **_common(include_top, size))

    return build


def _densenet(include_top, size):
    from keras.src.applications import densenet

    return densenet.DenseNet([1, 1, 1, 1], name="densenet", **_common(include_top, size))


def _efficientnet(include_top, size):
    from keras.src.applications import efficientnet

    return efficientnet.EfficientNet(0.25, 0.1, size, dropout_rate=0.2, name="efficientnet", **_common(include_top, size))


def _efficientnet_v2(include_top, size):
    from keras.src.applications import efficientnet_v2

    return efficientnet_v2.EfficientNetV2(
        0.25,
        0.1,
        size,
        blocks_args=efficientnet_v2.DEFAULT_BLOCKS_ARGS["efficientnetv2-b0"],
        name="efficientnetv2",
        include_preprocessing=True,
        **_common(include_top, size),
    )


def _nasnet(include_top, size):
    from keras.src.applications import nasnet

    return nasnet.NASNet(
        penultimate_filters=96,
        num_blocks=1,
        stem_block_filters=8,
        skip_reduction=False,
        filter_multiplier=2,
        default_size=size,
        name="nasnet",
        **_common(include_top, size),
    )


def _convnext(include_top, size):
    from keras.src.applications import convnext

    return convnext.ConvNeXt(
        depths=[1, 1, 1, 1],
        projection_dims=[8, 16, 24, 32],
        default_size=size,
        name="convnext",
        include_preprocessing=True,
        **_common(include_top, size),
    )


def _fixed(module_name: str, fn_name: str, keep: str | None = None):
    def build(include_top, size):
        import importlib

        module = importlib.import_module(f"keras.src.applications.{module_name}")
        with _narrowed(module, re.compile(keep) if keep else None):
            return getattr(module, fn_name)(**_common(include_top, size))

    return build


def _inception_resnet_v2(include_top, size):
    """InceptionResNetV2 narrowed, keeping the first and the last of each run of its repeated residual blocks."""
    from keras.src.applications import inception_resnet_v2 as irv2

    real_block = irv2.inception_resnet_block
    last = {"block35": 10, "block17": 20, "block8": 10}

    def fewer_blocks(x, scale, block_type, block_idx, activation="relu"):
        if block_idx in (1, last[block_type]):
            return real_block(x, scale, block_type, block_idx, activation=activation)
        return x

    irv2.inception_resnet_block = fewer_blocks
    try:
        return _fixed("inception_resnet_v2", "InceptionResNetV2", keep=r"block(35|17|8)_\d+_conv$")(include_top, size)
    finally:
        irv2.inception_resnet_block = real_block


def _squeezenet(include_top, size):
    import keras

    from . import architectures

    model = architectures.squeezenet_1_1(size, CLASSES)
    if include_top:
        return model
    # the feature extractor: everything up to the last Fire module's output
    return keras.Model(model.inputs, model.get_layer("fire9_concat").output, name="squeezenet_features")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("mobilenet", "MobileNet (alpha 0.25)", 32, TF_MODE, _mobilenet),
        Family("mobilenet_v2", "MobileNetV2 (alpha 0.35)", 32, TF_MODE, _mobilenet_v2),
        Family("mobilenet_v3_small", "MobileNetV3Small (alpha 0.75)", 32, IN_MODEL, _mobilenet_v3("small", False), True),
        Family("mobilenet_v3_large", "MobileNetV3Large (alpha 0.35)", 32, IN_MODEL, _mobilenet_v3("large", False), True),
        Family("mobilenet_v3_minimalistic", "MobileNetV3Small minimalistic (alpha 0.75)", 32, IN_MODEL, _mobilenet_v3("small", True), True),
        Family("efficientnet", "EfficientNetB0-B7 (width 0.25, depth 0.1)", 32, IN_MODEL, _efficientnet, True),
        Family("efficientnet_v2", "EfficientNetV2 B0-B3, S (B0 blocks, width 0.25, depth 0.1)", 32, IN_MODEL, _efficientnet_v2, True),
        Family("resnet", "ResNet50/101/152 (one block per stage, 16-128 filters)", 32, CAFFE_MODE, _resnet(False)),
        Family("resnet_v2", "ResNet50V2/101V2/152V2 (two blocks per stage, 16-128 filters)", 32, TF_MODE, _resnet(True)),
        Family("densenet", "DenseNet121/169/201 (blocks [1, 1, 1, 1])", 32, TORCH_MODE, _densenet),
        Family("nasnet_mobile", "NASNetMobile (penultimate 96 filters, 1 block per stack)", 32, TF_MODE, _nasnet),
        Family("xception", f"Xception (widths / {WIDTH_DIVISOR})", 71, TF_MODE, _fixed("xception", "Xception")),
        Family("inception_v3", f"InceptionV3 (widths / {WIDTH_DIVISOR})", 75, TF_MODE, _fixed("inception_v3", "InceptionV3")),
        Family(
            "inception_resnet_v2", f"InceptionResNetV2 (widths / {WIDTH_DIVISOR}, 2 blocks of each type)", 75, TF_MODE, _inception_resnet_v2
        ),
        Family("convnext", "ConvNeXt Tiny..XLarge (depths [1, 1, 1, 1], dims 8-32)", 32, IN_MODEL, _convnext, True),
        # no BatchNormalization either: at 3e-3 the application's dense top died (accuracy 0.10-0.27); at 1e-3 1.00
        Family("vgg16", f"VGG16 (widths / {WIDTH_DIVISOR})", 32, CAFFE_MODE, _fixed("vgg16", "VGG16"), lr=1e-3),
        Family("vgg19", f"VGG19 (widths / {WIDTH_DIVISOR})", 32, CAFFE_MODE, _fixed("vgg19", "VGG19"), lr=1e-3),
        # no BatchNormalization: at 3e-3 its ReLUs die within the first steps (outputs uniform, accuracy 0.10)
        Family("squeezenet", "SqueezeNet 1.1 (the project's own)", 32, IN_MODEL, _squeezenet, True, lr=1e-3),
    ]
}
SHAPES = ("application", "nested")


def build(name: str, shape: str = "application", seed: int = 0) -> Built:
    """The family ``name`` in ``shape`` ("application" or "nested"), untrained, with its preprocessing contract."""
    import keras

    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
    family = FAMILIES[name]
    keras.utils.set_random_seed(seed)
    size = family.size
    if shape == "application":
        model = family.build(True, size)
        contract = dict(family.mode)
    else:
        backbone = family.build(False, size)
        inputs = keras.Input((size, size, 3), name="image")
        x = backbone(inputs)
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
        x = keras.layers.Dropout(0.2, name="head_dropout")(x)
        outputs = keras.layers.Dense(CLASSES, activation="softmax", name="head_dense")(x)
        model = keras.Model(inputs, outputs, name=f"{name}_transfer")
        contract = dict(IN_MODEL) if family.preprocessing_inside else dict(family.mode)
    contract["input_size"] = [size, size]
    return Built(family, shape, model, contract)


def _contract(built: Built):
    from exporter.preprocessing import Preprocessing

    data = dict(built.preprocessing)
    if data.get("in_model"):
        return Preprocessing(tuple(data["input_size"]), in_model=True)
    return Preprocessing.from_dict(data)


# Sizes the training digits are rendered at before the model's own resize: those of the sample models' training
# (sample_models/train.py), which cover every size the held-out files come in.
RENDER_SIZES = [(8, 8), (16, 16), (24, 24), (32, 32), (40, 40), (64, 64), (28, 36), (48, 40)]
# Grey-level noise added to training pixels (0..255): a model that has seen small pixel changes does not flip its
# answer over the JPEG artefacts of the held-out files, or over the rounding of fp16 and int8 files.
PIXEL_NOISE = 3.0


def training_digits(built: Built, count: int = 1200, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``count`` training digits (never the held-out ones; each training digit as often as ``count`` allows, each
    time at a random size and with fresh noise), fitted to the model's input: float32 model inputs after the
    contract's preprocessing, and labels."""
    from exporter.images import fit

    from . import data

    pre = _contract(built)
    images, y = data.digits_arrays()
    train_idx, _ = data.digits_split()
    rng = np.random.default_rng(seed)
    picked = np.concatenate([rng.permutation(train_idx) for _ in range(-(-count // len(train_idx)))])[:count]
    xs = np.stack([fit(data.render_digit(images[i], RENDER_SIZES[int(rng.integers(len(RENDER_SIZES)))]), pre) for i in picked])
    noisy = np.clip(xs.astype(np.float32) + rng.normal(0.0, PIXEL_NOISE, xs.shape).astype(np.float32), 0, 255)
    return pre.normalize(noisy), y[picked]


# The training recipe (about 20-60 CPU-seconds a model; TensorFlow tracing the train step once is a fixed share of
# it, so steps are cheap and the recipe uses enough of them for every family to learn the digits). Adam at 3e-3
# decaying to a tenth over the run (cosine): fast progress early, and weights that settle at the end, so the
# BatchNormalization statistics gathered over the last steps describe the final weights. Measured on MobileNet (nested,
# alpha 0.25, 32 px): 240 steps on clean renders reached 0.80 held-out accuracy with 7 % of held-out digits within 0.1
# of a tie (int8 weights then moved 6 % of decisions); 720 steps on noisy renders reach 0.94 with 0.3 % near a tie
# (int8 weights move 0.7 %).
TRAIN_STEPS = 720
BATCH = 32
LEARNING_RATE = 3e-3
# BatchNormalization momentum while training: the moving statistics must catch up within a few dozen steps, or
# inference (which uses them) would see activations the trained weights never met and answer near-uniformly.
BN_MOMENTUM = 0.9
# Digits rendered for training: the training split (the held-out digits are never used) twice over, a whole number
# of batches so every step has the same batch shape (a last partial batch makes TensorFlow trace the step again).
TRAIN_IMAGES = 2944


def all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


def train(built: Built, steps: int = TRAIN_STEPS, batch: int = BATCH, lr: float | None = None, seed: int = 1) -> float:
    """Train every layer for ``steps`` batches on real digits; returns the accuracy of the trained model in inference
    mode (moving BatchNormalization statistics, no dropout) on its training digits. Enough for the probabilities to
    depend on the image (a random classifier's near-uniform outputs cannot fail a parity gate)."""
    import keras

    keras.utils.set_random_seed(seed)
    lr = lr or built.family.lr or LEARNING_RATE
    count = max(batch, min(TRAIN_IMAGES, steps * batch) // batch * batch)
    x, y = training_digits(built, count=count, seed=seed)
    model = built.model
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    epochs = max(1, round(steps * batch / len(x)))
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * (len(x) // batch), alpha=0.1)
    optimizer = keras.optimizers.Adam(schedule)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", jit_compile=False)
    # the optimizer's slots created here, eagerly, not inside the traced train step (where each one costs a
    # tf.cond in the graph and seconds of tracing on a 200-layer model)
    optimizer.build(model.trainable_variables)
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=True)
    predicted = np.concatenate([np.asarray(model(x[i : i + 256], training=False)).argmax(1) for i in range(0, len(x), 256)])
    return float((predicted == y).mean())


def save(built: Built, folder) -> dict:
    """model.keras, labels.txt and preprocessing.json in ``folder``; returns their paths."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    built.model.save(folder / "model.keras")
    (folder / "labels.txt").write_text("".join(f"{i}\n" for i in range(CLASSES)))
    paths = {"model": folder / "model.keras", "labels": folder / "labels.txt", "preprocessing": None}
    if not built.preprocessing.get("in_model"):
        (folder / "preprocessing.json").write_text(json.dumps(built.preprocessing))
        paths["preprocessing"] = folder / "preprocessing.json"
    return paths
