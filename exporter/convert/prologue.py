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

    model = named_apart(model, input_name)
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name=input_name)
    x = inputs
    if multiplier is not None:
        scale = np.asarray(multiplier, np.float32).reshape(1, 1, 1, len(multiplier))
        x = keras.layers.Rescaling(scale=scale, offset=0.0, name="exporter_channel_scale")(x)
    return keras.Model(inputs, model(x), name=model.name)


def named_apart(model, *names: str):
    """``model``, or the same graph (same layers and weights) under another name when its name is one of ``names``:
    a wrapper around it names its own input (the converters' ``image``) and layers, and Keras refuses a model in
    which two layers share a name (a user's model named ``image`` stopped every Core ML export with an internal error,
    and tf2onnx then wrote two tensors named ``image``)."""
    import keras

    if model.name not in names:
        return model
    taken = set(names) | {layer.name for layer in model.layers}
    candidates = (f"{model.name}_model_{i}" for i in range(len(taken) + 1))
    return keras.Model(model.inputs, model.outputs, name=next(c for c in candidates if c not in taken))
