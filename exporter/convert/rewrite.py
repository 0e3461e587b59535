"""Exact rewrites of the Keras model before conversion, for layers whose TensorFlow graph a converter cannot read.

Grouped ``Conv2D`` (``groups > 1``; ConvNeXt's 7x7 depthwise convolutions are ``Conv2D(groups=channels)``): Keras'
TensorFlow backend runs grouped convolutions inside a nested ``tf.function(jit_compile=True)`` because TensorFlow's
CPU kernel lacks them, and neither converter reads that nested call: coremltools stops ("Conversion for TF op
'StatefulPartitionedCall' not implemented") and tf2onnx leaves the TensorFlow op in the ONNX graph.
``groups == input channels`` is a depthwise convolution, so the layer becomes a ``DepthwiseConv2D`` with the same
kernel reordered (output channel ``c * m + k`` is input channel ``c``'s
``k``-th filter in both layouts); any other group count becomes one ``Conv2D`` per group on its channel slice,
concatenated. Both are the same arithmetic, weight for weight.

An integer image input (``keras.Input(dtype="uint8")``): the model casts the float image it is given to uint8 first, a
cast Core ML has no type for ("Cast: Provided destination type uint8 not supported"), so for Core ML the model is
called on a float32 input instead (``integer_input_as_float``). A Core ML image input holds whole pixel values 0..255,
which the cast leaves unchanged, so the model computes the same numbers; its first layers cast to their own float
type either way. ONNX keeps the cast (it has uint8). A nested model with an integer input (a backbone saved with
``Input(dtype="uint8")`` inside a float model, or inside the wrapper a binary or logits head adds) casts whatever
its caller gives it, which need not be whole pixels: it is rebuilt on a float32 input behind the cast's exact float
equivalent, TensorFlow's saturating cast ``trunc(clip(x, min, max))`` of the integer type, which Core ML has
(``clip``, ``floor``, ``ceil``, ``select``).

A model computing in bfloat16 (Keras' ``mixed_bfloat16`` policy, TPU training): Core ML has no bfloat16 and ONNX's
convolutions take none, so both converters stopped (coremltools with "'NoneType' object has no attribute
'__name__'", the ONNX checker on a bfloat16 Conv). The policy keeps the variables in float32 and only computes in
bfloat16, so the converters are given the same architecture and the same float32 weights computing in float32
(``float32_twin``): the files are closer to the exact answer than Keras' bfloat16 arithmetic, which validation's
float64 arbiter recognises (validation/float64.py).

A ``Resizing`` layer whose TensorFlow op a converter cannot read or reads wrongly: one to its own input size is the
identity for every interpolation (a model built for any image size and resizing to the size it is exported at, with
``interpolation="bicubic"``: coremltools has no ResizeBicubic); ``interpolation="area"`` by whole-number factors is
the mean of each block when it shrinks (``AveragePooling2D``) and each pixel repeated when it grows
(``UpSampling2D``), the same numbers up to float32 rounding: coremltools has no ResizeArea, and tf2onnx writes it as a nearest resize, whose
file disagreed with Keras. An area resize by other factors is refused, naming the layer. ``interpolation="nearest"``
to another size: coremltools converts a nearest resize that shrinks as a bilinear one (its ResizeNearestNeighbor
hands it to ResizeBilinear), and its .mlmodel upsample by a fractional factor does not pick TensorFlow's half-pixel
rows either, so the files disagreed with Keras by up to 2e-3 in probability; it is given to the converters as the
rows and columns it picks (``keras.ops.take`` along each image axis, the picks read from the layer on a probe), the
same numbers exactly. ``crop_to_aspect_ratio=True``: Keras computes the centre crop from the image's shape at run
time, which tf2onnx leaves as a Slice of data-dependent size (refused: its memory cannot be bounded); it is given as
the static crop (``Cropping2D``, Keras' arithmetic, checked on a probe) and a plain resize.

Every other layer is reused as is (same object, same weights); nested models are rebuilt recursively only when they
contain something to rewrite, so a model without grouped convolutions is returned unchanged.
"""

from __future__ import annotations


def _is_grouped_conv(layer) -> bool:
    import keras

    return type(layer) is keras.layers.Conv2D and int(getattr(layer, "groups", 1)) > 1


def _resize_kind(layer) -> str | None:
    """ "Resizing" for the layer, "resize" for ``keras.ops.image.resize`` called in a functional model (an op of its
    graph with the same arguments: size, interpolation, antialias, crop_to_aspect_ratio, pad_to_aspect_ratio), else
    None."""
    import keras

    if type(layer) is keras.layers.Resizing:
        return "Resizing"
    if type(layer).__name__ == "Resize" and not isinstance(layer, keras.layers.Layer) and hasattr(layer, "size"):
        return "resize" if getattr(layer, "data_format", "channels_last") == "channels_last" else None
    return None


def _resize_sides(layer) -> tuple[int, int, int, int] | None:
    """(input height, input width, height, width) of a Resizing layer or resize op the converters are given a
    stand-in for."""
    from ..keras_graph import first_input_shape

    if _resize_kind(layer) is None or layer.pad_to_aspect_ratio:
        return None
    shape = first_input_shape(layer)
    if shape is None or len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    height, width = (layer.height, layer.width) if _resize_kind(layer) == "Resizing" else layer.size
    sides = int(shape[1]), int(shape[2]), int(height), int(width)
    return sides if sides[:2] == sides[2:] or layer.crop_to_aspect_ratio or layer.interpolation in ("area", "nearest") else None


def _aspect_crop(in_h: int, in_w: int, h: int, w: int) -> tuple[int, int, int, int]:
    """(top, height, left, width) of the centre crop ``Resizing(h, w, crop_to_aspect_ratio=True)`` takes of an
    ``in_h`` x ``in_w`` image: Keras' own arithmetic (float32 quotients truncated to int32)."""
    import numpy as np

    crop_h = max(min(in_h, int(np.float32(in_w * h) / np.float32(w))), 1)
    crop_w = max(min(in_w, int(np.float32(in_h * w) / np.float32(h))), 1)
    return int(np.float32(in_h - crop_h) / np.float32(2)), crop_h, int(np.float32(in_w - crop_w) / np.float32(2)), crop_w


def _cropped_resize(layer, sides: tuple[int, int, int, int]):
    """``Resizing(crop_to_aspect_ratio=True)`` as its static centre crop (``Cropping2D``) and a plain Resizing, itself
    replaced when it needs a stand-in: Keras computes the crop from the image's shape at run time, which tf2onnx
    leaves as a Slice of data-dependent size (refused: its memory cannot be bounded). The layer itself when the
    crop read from Keras' arithmetic does not reproduce it on a probe."""
    import keras
    import numpy as np

    from ..keras_graph import first_input_shape

    in_h, in_w, h, w = sides
    top, crop_h, left, crop_w = _aspect_crop(in_h, in_w, h, w)
    channels = (first_input_shape(layer) or (None,))[-1]
    inputs = keras.Input((in_h, in_w, channels))
    cropped = keras.layers.Cropping2D(((top, in_h - top - crop_h), (left, in_w - left - crop_w)), name=f"{layer.name}_crop")(inputs)
    plain = keras.layers.Resizing(h, w, interpolation=layer.interpolation, antialias=layer.antialias, name=f"{layer.name}_resize")
    out = plain(cropped)
    probe = np.random.default_rng(0).uniform(0, 1, (1, in_h, in_w, channels or 1)).astype(np.float32)
    if not np.array_equal(np.asarray(keras.Model(inputs, out)(probe)), np.asarray(layer(probe))):
        return layer
    inner = _resize_sides(plain)
    if inner is not None:
        out = _resize_replacement(plain, inner)(cropped)
    return keras.Model(inputs, out, name=layer.name)


# The probe of a nearest resize holds pixel coordinates in digits of this base, each exact in any float type a layer
# may compute in (bfloat16 holds whole numbers up to 256), so the picks read back are exact at every image size.
PICK_DIGIT_BASE = 64


def _nearest_picks(layer, in_h: int, in_w: int) -> tuple[list[int], list[int]]:
    """The input rows and columns the nearest-neighbour Resizing ``layer`` takes for each output row and column,
    read from the layer itself (TensorFlow's half-pixel rule, with its own rounding): run on images holding each
    pixel's row, then its column, in digits of PICK_DIGIT_BASE (one channel per digit)."""
    import numpy as np

    from ..errors import ConversionError

    def picks(coordinate: np.ndarray) -> np.ndarray:
        digits = np.stack([coordinate // PICK_DIGIT_BASE, coordinate % PICK_DIGIT_BASE], axis=-1).astype(np.float32)
        out = np.asarray(layer(digits[None]), dtype=np.float64)[0]
        return out[..., 0] * PICK_DIGIT_BASE + out[..., 1]

    rows = picks(np.broadcast_to(np.arange(in_h)[:, None], (in_h, in_w)))
    cols = picks(np.broadcast_to(np.arange(in_w)[None, :], (in_h, in_w)))
    row_of, col_of = rows[:, 0], cols[0, :]
    whole = (
        np.array_equal(rows, np.broadcast_to(row_of[:, None], rows.shape))
        and np.array_equal(cols, np.broadcast_to(col_of[None, :], cols.shape))
        and all(np.array_equal(v, np.clip(np.rint(v), 0, n - 1)) for v, n in ((row_of, in_h), (col_of, in_w)))
    )
    if not whole:
        raise ConversionError(
            f"layer {layer.name!r} ({_resize_kind(layer)}) with interpolation='nearest' does not take whole rows and columns"
        )
    return [int(r) for r in row_of], [int(c) for c in col_of]


def _resize_replacement(layer, sides: tuple[int, int, int, int]):
    """The stock layer computing what the Resizing ``layer`` from ``_resize_sides`` computes (see the module
    docstring)."""
    import keras
    import numpy as np

    from ..errors import ConversionError
    from ..inference import identity_class
    from ..keras_graph import first_input_shape

    in_h, in_w, h, w = sides
    if (in_h, in_w) == (h, w):
        return identity_class()(name=layer.name)
    if layer.crop_to_aspect_ratio and layer.interpolation != "nearest":  # a nearest crop is rows and columns picked
        return _cropped_resize(layer, sides)
    if layer.interpolation == "nearest":
        rows, cols = _nearest_picks(layer, in_h, in_w)
        inputs = keras.Input((in_h, in_w, (first_input_shape(layer) or (None,))[-1]))
        picked = keras.ops.take(keras.ops.take(inputs, np.asarray(rows, np.int32), axis=1), np.asarray(cols, np.int32), axis=2)
        return keras.Model(inputs, picked, name=layer.name)
    if in_h % h == 0 and in_w % w == 0:
        return keras.layers.AveragePooling2D((in_h // h, in_w // w), name=layer.name)
    if h % in_h == 0 and w % in_w == 0:
        return keras.layers.UpSampling2D((h // in_h, w // in_w), interpolation="nearest", name=layer.name)
    raise ConversionError(
        f"layer {layer.name!r} ({_resize_kind(layer)}) resizes {in_h}x{in_w} to {h}x{w} with interpolation='area', which neither Core ML "
        "nor ONNX has (tf2onnx writes a nearest resize): only whole-number factors (both sides shrinking or both "
        "growing) are exported, as block means or repeated pixels; resize with 'bilinear' or to a whole-number factor"
    )


def _is_rewritten(layer) -> bool:
    return _is_grouped_conv(layer) or _resize_sides(layer) is not None


def needs_rewrite(model) -> bool:
    import keras

    for layer in getattr(model, "operations", None) or model.layers:  # a functional model's Keras ops too
        if _is_rewritten(layer):
            return True
        if isinstance(layer, keras.Model) and needs_rewrite(layer):
            return True
    return False


def _grouped_conv_replacement(layer):
    """A layer (or small functional model) computing exactly what the grouped Conv2D ``layer`` computes."""
    import keras
    import numpy as np

    cfg = layer.get_config()
    in_channels = int(layer.input.shape[-1])
    groups = int(layer.groups)
    weights = layer.get_weights()
    kernel = np.asarray(weights[0])  # (kh, kw, in_channels / groups, filters)
    bias = weights[1] if layer.use_bias else None
    common = dict(
        strides=cfg["strides"],
        padding=cfg["padding"],
        dilation_rate=cfg["dilation_rate"],
        activation=cfg["activation"],
        use_bias=layer.use_bias,
        data_format=cfg["data_format"],
    )
    if cfg["data_format"] != "channels_last":
        raise NotImplementedError("grouped Conv2D rewrite handles channels_last only")
    if groups == in_channels:
        multiplier = layer.filters // groups
        new = keras.layers.DepthwiseConv2D(
            kernel_size=cfg["kernel_size"], depth_multiplier=multiplier, name=f"{layer.name}_depthwise", **common
        )
        new.build(tuple(layer.input.shape))
        dw = kernel.reshape(kernel.shape[0], kernel.shape[1], in_channels, multiplier)
        new.set_weights([dw] + ([bias] if bias is not None else []))
        return new
    per_in, per_out = in_channels // groups, layer.filters // groups
    inputs = keras.Input(tuple(layer.input.shape[1:]))
    parts = []
    for g in range(groups):
        conv = keras.layers.Conv2D(per_out, cfg["kernel_size"], name=f"{layer.name}_group{g}", **common)
        part = conv(inputs[..., g * per_in : (g + 1) * per_in])
        conv.set_weights(
            [kernel[..., g * per_out : (g + 1) * per_out]] + ([bias[g * per_out : (g + 1) * per_out]] if bias is not None else [])
        )
        parts.append(part)
    return keras.Model(inputs, keras.layers.Concatenate(axis=-1)(parts), name=f"{layer.name}_grouped")


def _computes_in_bfloat16(model) -> bool:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model) and _computes_in_bfloat16(layer):
            return True
        if getattr(getattr(layer, "dtype_policy", None), "compute_dtype", None) == "bfloat16":
            return True
    return False


def float32_twin(model):
    """The same architecture and weights with every bfloat16 dtype policy (``bfloat16``, ``mixed_bfloat16``) set to
    float32; ``model`` itself when no layer computes in bfloat16 (or its layers cannot be rebuilt from their config:
    the converter then reports what it meets)."""
    import keras

    if not _computes_in_bfloat16(model):
        return model

    def retype(cfg):
        if isinstance(cfg, dict):
            if cfg.get("class_name") == "DTypePolicy" and "bfloat16" in str((cfg.get("config") or {}).get("name", "")):
                return "float32"
            return {k: "float32" if k == "dtype" and isinstance(v, str) and "bfloat16" in v else retype(v) for k, v in cfg.items()}
        if isinstance(cfg, list):
            return [retype(v) for v in cfg]
        return cfg

    try:
        twin = keras.saving.deserialize_keras_object(retype(keras.saving.serialize_keras_object(model)))
        twin.set_weights(model.get_weights())  # mixed_bfloat16 keeps its variables in float32: the same numbers
    except (TypeError, ValueError, AttributeError):
        return model
    return twin


def for_converters(model):
    """``model`` with every grouped Conv2D and unreadable Resizing (also inside nested models) replaced by its exact
    equivalent, computing in float32 when it computed in bfloat16 (``float32_twin``)."""
    import keras

    model = float32_twin(model)
    if not needs_rewrite(model):
        return model

    def clone(layer):
        if _is_grouped_conv(layer):
            return _grouped_conv_replacement(layer)
        sides = _resize_sides(layer)
        if sides is not None:
            return _resize_replacement(layer, sides)
        if isinstance(layer, keras.Model) and needs_rewrite(layer):
            return for_converters(layer)
        return layer

    from keras.src.models.functional import Functional

    if not isinstance(model, (Functional, keras.Sequential)):
        return model  # a subclassed model cannot be rebuilt layer by layer; the converter reports what it meets
    return keras.models.clone_model(model, clone_function=clone)


def _has_integer_input(model) -> bool:
    import keras

    inputs = list(getattr(model, "inputs", None) or ())  # a subclassed model has none: its call() takes what it is given
    return len(inputs) == 1 and keras.backend.is_int_dtype(inputs[0].dtype)


def _has_integer_model_input(model) -> bool:
    """Whether ``model`` or a model nested in it (at any depth) takes an integer input."""
    import keras

    return _has_integer_input(model) or any(isinstance(layer, keras.Model) and _has_integer_model_input(layer) for layer in model.layers)


def _saturating_cast(x, dtype: str):
    """What TensorFlow's cast of the float tensor ``x`` to the integer ``dtype`` gives, in float32: saturated to the
    type's range, then truncated toward zero."""
    import keras
    import numpy as np

    info = np.iinfo(dtype)
    x = keras.ops.clip(x, float(info.min), float(info.max))
    if info.min == 0:
        return keras.ops.floor(x)  # trunc of a non-negative value
    return keras.ops.where(x < 0, keras.ops.ceil(x), keras.ops.floor(x))


def _nested_as_float(layer):
    """A nested model ``layer`` (or one inside it) with an integer input, rebuilt to take float32: its own nested
    models first, then its input behind the exact float form of the cast its caller's tensor went through."""
    import keras

    inner = _nested_integer_models_as_float(layer)
    if not _has_integer_input(layer):
        return inner
    source = layer.inputs[0]
    from ..keras_graph import called_on

    inner = called_on(inner, keras.Input(tuple(source.shape[1:]), dtype="float32"))
    inputs = keras.Input(tuple(source.shape[1:]), dtype="float32", name=source.name)
    return keras.Model(inputs, inner(_saturating_cast(inputs, source.dtype)), name=layer.name)


def _nested_integer_models_as_float(model):
    """``model`` with every nested model taking an integer input rebuilt by ``_nested_as_float``."""
    import keras
    from keras.src.models.functional import Functional

    if not isinstance(model, (Functional, keras.Sequential)):
        return model  # a subclassed model's call() is code: the converter reports what it meets
    if not any(isinstance(layer, keras.Model) and _has_integer_model_input(layer) for layer in model.layers):
        return model

    def clone(layer):
        if isinstance(layer, keras.Model) and _has_integer_model_input(layer):
            return _nested_as_float(layer)
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def integer_input_as_float(model):
    """``model`` called on a float32 input when its input is an integer type (the same layers and weights), and every
    nested model taking an integer input rebuilt to take float32 (``_nested_as_float``); else ``model`` itself. Exact
    for whole pixel values in the integer type's range at the top (see the module docstring)."""
    import keras

    model = _nested_integer_models_as_float(model)
    if not _has_integer_input(model):
        return model
    source = model.inputs[0]
    inputs = keras.Input(tuple(source.shape[1:]), dtype="float32", name=source.name)
    from keras.src.models.functional import Functional

    if isinstance(model, (Functional, keras.Sequential)):
        from ..keras_graph import called_on

        return called_on(model, inputs)
    return model  # a subclassed model's call() is code: the converter reports what it meets
