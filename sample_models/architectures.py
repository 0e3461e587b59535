"""The sample classifiers' architectures, built with the Keras functional API."""

from __future__ import annotations


def mobilenet_v1(input_size: int, classes: int, alpha: float = 0.25, dropout: float = 0.2):
    import keras

    return keras.applications.MobileNet(
        input_shape=(input_size, input_size, 3), alpha=alpha, weights=None, classes=classes, dropout=dropout, name="mobilenet_v1"
    )


def mobilenet_v2(input_size: int, classes: int, alpha: float = 0.35):
    import keras

    model = keras.applications.MobileNetV2(
        input_shape=(input_size, input_size, 3), alpha=alpha, weights=None, classes=classes, name="mobilenet_v2"
    )
    # keras.applications builds MobileNetV2 with BatchNorm momentum 0.999, tuned for fine-tuning ImageNet weights.
    # Trained from scratch on a few thousand images its moving averages never catch up with the weights, so the
    # model is right in training mode and at chance in inference mode. 0.9 lets the statistics follow.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def _fire(x, squeeze: int, expand: int, name: str):
    """SqueezeNet fire module: a 1x1 squeeze, then 1x1 and 3x3 expands concatenated on channels."""
    from keras import layers

    init = "he_normal"  # ReLU everywhere: He initialisation keeps activations alive from the first step
    s = layers.Conv2D(squeeze, 1, activation="relu", kernel_initializer=init, name=f"{name}_squeeze1x1")(x)
    e1 = layers.Conv2D(expand, 1, activation="relu", kernel_initializer=init, name=f"{name}_expand1x1")(s)
    e3 = layers.Conv2D(expand, 3, padding="same", activation="relu", kernel_initializer=init, name=f"{name}_expand3x3")(s)
    return layers.Concatenate(axis=-1, name=f"{name}_concat")([e1, e3])


def squeezenet_1_1(input_size: int, classes: int, dropout: float = 0.5):
    """SqueezeNet 1.1 (Iandola et al., v1.1 layout), which keras.applications does not have.

    It starts with its own ``Rescaling(1/255)`` layer, so the exporter must detect that and feed raw pixels.
    """
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    x = layers.Conv2D(64, 3, strides=2, activation="relu", kernel_initializer="he_normal", name="conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = _fire(x, 16, 64, "fire2")
    x = _fire(x, 16, 64, "fire3")
    x = layers.MaxPooling2D(3, strides=2, name="pool3")(x)
    x = _fire(x, 32, 128, "fire4")
    x = _fire(x, 32, 128, "fire5")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool5")(x)
    x = _fire(x, 48, 192, "fire6")
    x = _fire(x, 48, 192, "fire7")
    x = _fire(x, 64, 256, "fire8")
    x = _fire(x, 64, 256, "fire9")
    x = layers.Dropout(dropout, name="drop9")(x)
    # As in the paper: the final 1x1 conv starts at N(0, 0.01) and a small positive bias, so its ReLU does not start
    # dead (with all class maps at zero the softmax is uniform and no gradient flows back).
    x = layers.Conv2D(
        classes,
        1,
        activation="relu",
        name="conv10",
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
        bias_initializer=keras.initializers.Constant(0.1),
    )(x)
    x = layers.GlobalAveragePooling2D(name="pool10")(x)
    outputs = layers.Softmax(name="probabilities")(x)
    return keras.Model(inputs, outputs, name="squeezenet_1_1")


def mobilenet_v1_backbone(input_size: int, alpha: float = 0.25):
    """MobileNet v1 without its head: the part the transfer model reuses."""
    import keras

    return keras.applications.MobileNet(
        input_shape=(input_size, input_size, 3), alpha=alpha, weights=None, include_top=False, name="digits_backbone"
    )


def transfer_classifier(backbone, classes: int, dropout: float = 0.3):
    """A frozen backbone nested as one layer, under a new head: global average pooling, dropout, dense softmax."""
    import keras
    from keras import layers

    backbone.trainable = False
    inputs = keras.Input(backbone.input_shape[1:], name="image")
    # training=False keeps the backbone's BatchNorm statistics fixed even when its top layers are fine-tuned.
    x = backbone(inputs, training=False)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    outputs = layers.Dense(classes, activation="softmax", name="head_probabilities")(x)
    return keras.Model(inputs, outputs, name="transfer_photos")
