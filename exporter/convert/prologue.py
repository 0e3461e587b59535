"""The exact per-channel step that a single Core ML ImageType scale cannot express.

Core ML's image input applies ``x * scale + bias[c]`` with one scale for all channels. When the contract has a
different scale per channel (a per-channel std), the image input applies ``x - mean[c]`` (scale 1) and this layer,
placed in front of the Keras model before conversion, multiplies by ``scale[c]``: exact, not an approximation.
"""

from __future__ import annotations

from ..preprocessing import Preprocessing


def imagetype_scale_bias(pre: Preprocessing) -> tuple[float, list[float], list[float] | None]:
    """(scale, bias, per-channel multiplier or None) for a Core ML image input that reproduces ``pre`` exactly."""
    if pre.in_model:
        return 1.0, [0.0] * pre.channels, None
    if pre.uniform_scale:
        return pre.scale[0], list(pre.bias), None
    # y = x*s_c + b_c = (x - m_c) * s_c with m_c = -b_c / s_c
    return 1.0, [b / s for s, b in zip(pre.scale, pre.bias, strict=True)], list(pre.scale)


def for_conversion(model, multiplier: list[float] | None, input_name: str = "image"):
    """The Keras model as converters see it: one input named ``input_name`` and, when the contract needs it, the
    exact per-channel multiply in front. Built from stock layers only, so conversion needs no custom code."""
    import keras
    import numpy as np

    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name=input_name)
    x = inputs
    if multiplier is not None:
        scale = np.asarray(multiplier, np.float32).reshape(1, 1, 1, len(multiplier))
        x = keras.layers.Rescaling(scale=scale, offset=0.0, name="exporter_channel_scale")(x)
    return keras.Model(inputs, model(x), name=model.name)
