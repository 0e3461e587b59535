"""One small digits classifier per common layer (issue 13 item 5), for the layer zoo test and the capability table.

Each network is ``Input(ZOO_SIZE, ZOO_SIZE, 3) -> Conv2D(8, 3, relu) -> THE LAYER -> (when the tensor is still 4-D)
Conv2D(16, 3, stride 2, relu) and Flatten -> Dense(10, softmax)``, trained a few steps on real digits so its outputs
depend on the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ZOO_SIZE = 24
CLASSES = 10
PREPROCESSING = {"input_size": [ZOO_SIZE, ZOO_SIZE], "scale": [1 / 127.5], "bias": [-1.0]}


@dataclass(frozen=True)
class ZooEntry:
    name: str
    block: Callable  # (keras tensor) -> keras tensor; the layer under test is named "probe"
    needs_trust: bool = False  # built with a Lambda (the layer has no stock Keras class)


def _two_branches(merge):
    def block(x):
        import keras

        a = keras.layers.Conv2D(8, 1, name="branch_a")(x)
        b = keras.layers.Conv2D(8, 3, padding="same", name="branch_b")(x)
        return merge(name="probe")([a, b])

    return block


def _layer(factory):
    def block(x):
        return factory()(x)

    return block


def _entries() -> list[ZooEntry]:
    import keras
    from keras import layers as L

    def act(name):
        return _layer(lambda: L.Activation(name, name="probe"))

    def gelu_tanh(x):
        # the function is serialised as bytecode and loaded without this module's globals, so it imports keras itself
        return L.Lambda(lambda t: __import__("keras").ops.gelu(t, approximate=True), output_shape=tuple(x.shape[1:]), name="probe")(x)

    def squeeze_excite(pool):
        def block(x):  # how networks use keepdims: the pooled vector rescales the feature map
            pooled = pool(keepdims=True, name="probe")(x)
            return L.Multiply(name="excite")([x, L.Activation("sigmoid", name="gate")(pooled)])

        return block

    def dense_4d(x):
        return L.Dense(6, activation="relu", name="probe")(x)

    def flatten(x):
        return L.Flatten(name="probe")(L.MaxPooling2D(4)(x))

    def reshape(x):
        h, w, c = x.shape[1:]
        return L.Reshape((w, h, c), name="probe")(x)

    def permute(x):
        return L.Permute((2, 1, 3), name="probe")(x)

    return [
        ZooEntry("conv2d_dilated", _layer(lambda: L.Conv2D(8, 3, dilation_rate=2, padding="same", name="probe"))),
        ZooEntry("separable_conv2d", _layer(lambda: L.SeparableConv2D(12, 3, padding="same", name="probe"))),
        ZooEntry("depthwise_conv2d_multiplier", _layer(lambda: L.DepthwiseConv2D(3, depth_multiplier=2, name="probe"))),
        ZooEntry("leaky_relu", _layer(lambda: L.LeakyReLU(0.1, name="probe"))),
        ZooEntry("prelu", _layer(lambda: L.PReLU(alpha_initializer=keras.initializers.Constant(0.2), shared_axes=[1, 2], name="probe"))),
        ZooEntry("elu", _layer(lambda: L.ELU(name="probe"))),
        ZooEntry("gelu_exact", act("gelu")),
        ZooEntry("gelu_tanh", gelu_tanh, needs_trust=True),
        ZooEntry("swish", act("swish")),
        ZooEntry("silu", act("silu")),
        ZooEntry("hard_sigmoid", act("hard_sigmoid")),
        ZooEntry("hard_swish", act("hard_swish")),
        ZooEntry("softplus", act("softplus")),
        ZooEntry("tanh", act("tanh")),
        ZooEntry("layer_normalization", _layer(lambda: L.LayerNormalization(name="probe"))),
        ZooEntry("group_normalization", _layer(lambda: L.GroupNormalization(groups=4, name="probe"))),
        ZooEntry("unit_normalization", _layer(lambda: L.UnitNormalization(name="probe"))),
        ZooEntry("add", _two_branches(L.Add)),
        ZooEntry("multiply", _two_branches(L.Multiply)),
        ZooEntry("concatenate", _two_branches(L.Concatenate)),
        ZooEntry("average", _two_branches(L.Average)),
        ZooEntry("maximum", _two_branches(L.Maximum)),
        ZooEntry("max_pooling_valid", _layer(lambda: L.MaxPooling2D(3, strides=2, padding="valid", name="probe"))),
        ZooEntry("max_pooling_same", _layer(lambda: L.MaxPooling2D(3, strides=2, padding="same", name="probe"))),
        ZooEntry("average_pooling_valid", _layer(lambda: L.AveragePooling2D(3, strides=2, padding="valid", name="probe"))),
        ZooEntry("average_pooling_same", _layer(lambda: L.AveragePooling2D(3, strides=2, padding="same", name="probe"))),
        ZooEntry("global_average_pooling_keepdims", squeeze_excite(L.GlobalAveragePooling2D)),
        ZooEntry("global_max_pooling_keepdims", squeeze_excite(L.GlobalMaxPooling2D)),
        ZooEntry("flatten", flatten),
        ZooEntry("reshape", reshape),
        ZooEntry("permute", permute),
        ZooEntry("cropping2d", _layer(lambda: L.Cropping2D(((1, 2), (2, 1)), name="probe"))),
        ZooEntry("zero_padding2d", _layer(lambda: L.ZeroPadding2D(((1, 2), (2, 1)), name="probe"))),
        ZooEntry("upsampling_nearest", _layer(lambda: L.UpSampling2D(2, interpolation="nearest", name="probe"))),
        ZooEntry("upsampling_bilinear", _layer(lambda: L.UpSampling2D(2, interpolation="bilinear", name="probe"))),
        ZooEntry("resizing", _layer(lambda: L.Resizing(16, 16, interpolation="bilinear", name="probe"))),
        ZooEntry("dense_4d", dense_4d),
    ]


ZOO: dict[str, ZooEntry] = {}


def zoo() -> dict[str, ZooEntry]:
    if not ZOO:
        ZOO.update({e.name: e for e in _entries()})
    return ZOO


NAMES = [
    "conv2d_dilated",
    "separable_conv2d",
    "depthwise_conv2d_multiplier",
    "leaky_relu",
    "prelu",
    "elu",
    "gelu_exact",
    "gelu_tanh",
    "swish",
    "silu",
    "hard_sigmoid",
    "hard_swish",
    "softplus",
    "tanh",
    "layer_normalization",
    "group_normalization",
    "unit_normalization",
    "add",
    "multiply",
    "concatenate",
    "average",
    "maximum",
    "max_pooling_valid",
    "max_pooling_same",
    "average_pooling_valid",
    "average_pooling_same",
    "global_average_pooling_keepdims",
    "global_max_pooling_keepdims",
    "flatten",
    "reshape",
    "permute",
    "cropping2d",
    "zero_padding2d",
    "upsampling_nearest",
    "upsampling_bilinear",
    "resizing",
    "dense_4d",
]


def build(name: str, seed: int = 0):
    """The zoo network for ``name`` (untrained)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((ZOO_SIZE, ZOO_SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="stem")(inputs)
    x = zoo()[name].block(x)
    if len(x.shape) == 4:
        x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="head_conv")(x)
        x = keras.layers.Flatten(name="head_flatten")(x)
    outputs = keras.layers.Dense(CLASSES, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"zoo_{name}")


def train(model, steps: int = 100, batch: int = 32, seed: int = 1) -> float:
    """A few Adam steps on training digits (never the held-out ones); returns the last training accuracy."""
    import keras
    import numpy as np

    from exporter.images import fit
    from exporter.preprocessing import Preprocessing

    from . import data

    keras.utils.set_random_seed(seed)
    pre = Preprocessing.from_dict(PREPROCESSING)
    images, y = data.digits_arrays()
    train_idx, _ = data.digits_split()
    rng = np.random.default_rng(seed)
    picked = rng.choice(train_idx, size=steps * batch, replace=steps * batch > len(train_idx))
    x = pre.normalize(np.stack([fit(data.render_digit(images[i], (16, 16)), pre) for i in picked]))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=False)
    hist = model.fit(x, y[picked], batch_size=batch, epochs=1, verbose=0)
    return float(hist.history["accuracy"][-1])
