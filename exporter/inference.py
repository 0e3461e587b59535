"""The Keras model as it runs at inference: its own preprocessing, found wherever it sits, and the layers that do
nothing at inference, removed.

``detect_preprocessing`` follows the input through the layers before the first one with weights (into nested models,
at any depth, past shape-preserving no-ops, past resizes, crops, flips and other moves of the pixels (layers or Keras
ops), which commute with it, past channel reorderings and copies, such as a grayscale input made three channels, and
through forks whose branches all meet the same normalisation, as in test-time augmentation) and composes every
Rescaling and Normalization it meets into one affine contract on 0..255 pixels: ``y[c] = x[c] * scale[c] + bias[c]``.
The exported files still feed the model raw pixels (``in_model: true``), so this is never applied twice; the
composition is what the manifest reports.

``strip_inference_noops`` is a pure transform: a new model (sharing the original's layers and weights) in which
every augmentation, dropout and noise layer is the identity. Each such layer is checked on a probe tensor first: one
that changes its input at inference is refused rather than dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConversionError
from .keras_graph import consumers, first_input_shape, node_arguments, node_tensors

# Layer classes that Keras defines as the identity at inference (training=False). Every instance is still checked on
# a probe before it is removed. Names, not classes: a Keras version without one of them simply has none in its models.
INFERENCE_NOOP_CLASSES = (
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomContrast",
    "RandomTranslation",
    "RandomCrop",
    "RandomBrightness",
    "RandomHue",
    "RandomSaturation",
    "RandomSharpness",
    "RandomShear",
    "RandomColorJitter",
    "RandomColorDegeneration",
    "RandomGrayscale",
    "RandomPosterization",
    "RandomInvert",
    "RandomErasing",
    "RandomGaussianBlur",
    "RandomElasticTransform",
    "RandomPerspective",
    "AugMix",
    "RandAugment",
    "MixUp",
    "CutMix",
)
# Layers the input may pass on its way to the first weighted layer without its values changing.
_PASS_THROUGH_CLASSES = ("InputLayer", "Identity")
# Layers that move or resample pixels within each channel, every output pixel a combination of the input's with weights
# summing to one: a per-channel affine map commutes with them, so a Rescaling or Normalization after one (a model that
# takes any photo size and resizes it first) is still the model's preprocessing of its raw pixels. Resizing is one
# only without pad_to_aspect_ratio (the padding is a constant, which the affine map would move).
_COMMUTING_CLASSES = ("Resizing", "CenterCrop", "Cropping2D")
# A no-op layer must return its probe bit for bit; a crop/resize replacement is compared after float32 resampling.
RESIZE_EQUIVALENCE_TOLERANCE = 1e-4


# ------------------------------------------------------------------------------------------------ preprocessing
@dataclass(frozen=True)
class InModelPreprocessing:
    """The Rescaling/Normalization layers on the input path and their composition on 0..255 pixels."""

    layers: tuple[str, ...] = ()  # paths such as "backbone/rescaling", in the order they apply
    passed: tuple[str, ...] = ()  # no-op layers the input passes on the way
    scale: tuple[float, ...] | None = None  # None when a layer's parameters are not one value per channel
    bias: tuple[float, ...] | None = None
    note: str = ""

    def __bool__(self) -> bool:
        return bool(self.layers)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "layers": list(self.layers),
            "passed_layers": list(self.passed),
            "scale": None if self.scale is None else list(self.scale),
            "bias": None if self.bias is None else list(self.bias),
        }
        if self.note:
            d["note"] = self.note
        return d


def _class_name(layer) -> str:
    return type(layer).__name__


def _is_model(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _is_pass_through(layer) -> bool:
    import keras

    name = _class_name(layer)
    if name in _PASS_THROUGH_CLASSES or name in INFERENCE_NOOP_CLASSES:
        return True
    if name in _COMMUTING_CLASSES:
        return not getattr(layer, "pad_to_aspect_ratio", False)
    if isinstance(layer, keras.layers.Activation):
        return keras.activations.serialize(layer.activation) == "linear"
    return False


def _as_numpy(value) -> np.ndarray:
    import keras

    if isinstance(value, (int, float, list, tuple, np.ndarray)):
        return np.asarray(value, dtype=np.float64)
    return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)  # a backend tensor or variable


def _per_channel(value, channels: int) -> np.ndarray | None:
    """``value`` as one number per channel (last axis), or None when it varies along another axis."""
    a = _as_numpy(value)
    if a.ndim == 0:
        return np.full(channels, float(a))
    if any(d != 1 for d in a.shape[:-1]) or a.shape[-1] not in (1, channels):
        return None
    return np.broadcast_to(a.reshape(-1), (channels,)).astype(np.float64)


def _layer_affine(layer, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, bias) per channel of a Rescaling or Normalization layer, or None if it is not per channel."""
    import keras

    if isinstance(layer, keras.layers.Rescaling):
        s, b = _per_channel(layer.scale, channels), _per_channel(layer.offset, channels)
        return None if s is None or b is None else (s, b)
    mean, var = _per_channel(layer.mean, channels), _per_channel(layer.variance, channels)
    if mean is None or var is None:
        return None
    std = np.maximum(np.sqrt(var), keras.config.epsilon())  # Normalization.call: max(sqrt(variance), epsilon)
    if layer.invert:
        return std, mean
    return 1.0 / std, -mean / std


# Keras ops on a tensor and one constant that are a per-channel affine map of the tensor (what keras.applications'
# preprocess_input computes when called on a model's Input in "tf" and "torch" modes, and ``inputs / 255.0``):
# (scale, bias) of ``x op c`` and of ``c op x`` from the constant; None where the map is not affine (``c / x``).
_OP_AFFINE = {
    "Add": (lambda c: (1.0, c), lambda c: (1.0, c)),
    "Subtract": (lambda c: (1.0, -c), lambda c: (-1.0, c)),
    "Multiply": (lambda c: (c, 0.0), lambda c: (c, 0.0)),
    "TrueDivide": (lambda c: (1.0 / c, 0.0), None),
    "Divide": (lambda c: (1.0 / c, 0.0), None),
}


def _op_affine(op, node, tensor, channels: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, bias) per channel of the Keras op ``op`` applied by ``node`` to ``tensor`` and one constant, or None."""
    import keras

    forms = _OP_AFFINE.get(_class_name(op))
    args, kwargs = node_arguments(node)
    if _class_name(op) == "Negative" and len(args) == 1 and args[0] is tensor and not kwargs:  # -x (255 - x spelled out)
        return np.full(channels, -1.0), np.zeros(channels)
    if forms is None or len(args) != 2 or kwargs or not any(a is tensor for a in args):
        return None
    first = args[0] is tensor
    constant = args[1] if first else args[0]
    form = forms[0] if first else forms[1]
    if form is None or isinstance(constant, keras.KerasTensor):
        return None
    value = _per_channel(constant, channels)
    if value is None or (_class_name(op) in ("TrueDivide", "Divide") and not value.all()):
        return None
    s, b = form(value)
    return np.broadcast_to(np.asarray(s, np.float64), (channels,)), np.broadcast_to(np.asarray(b, np.float64), (channels,))


def _channel_key(key, channels: int) -> int | list[int] | None:
    """What ``x[key]`` takes of the last (channel) axis when it keeps every other axis whole: one channel, the axis
    dropped (an int), the channels a slice keeps, in its order (``[..., ::-1]``, ``[..., :1]``: a list), or None for
    any other indexing."""
    if not isinstance(key, (tuple, list)) or len(key) != 2 or key[0] is not Ellipsis:  # a list once saved and loaded
        return None
    last = key[1]
    if isinstance(last, (int, np.integer)) and not isinstance(last, bool) and -channels <= last < channels:
        return int(last) % channels
    if isinstance(last, slice):
        return list(range(channels))[last] or None
    return None


def _on_channel_axis(axis, rank: int) -> bool:
    return isinstance(axis, int) and not isinstance(axis, bool) and rank > 0 and axis % rank == rank - 1


def _channel_map(op, node, tensor, channels: int) -> list[int] | None:
    """The channels (output channel i is input channel order[i]) of a layer or Keras op that only reorders or copies
    the channels of ``tensor``: ``x[..., ::-1]`` (GetItem), ``keras.ops.flip(x, axis=-1)``, and a grayscale input
    made three channels (``layers.Concatenate()([x, x, x])``, ``keras.ops.concatenate``, ``keras.ops.repeat(x, 3,
    axis=-1)``, ``keras.ops.tile(x, (1, 1, 1, 3))``); None for anything else."""
    args, kwargs = node_arguments(node)
    name, rank = _class_name(op), len(tensor.shape)
    if kwargs or len(args) not in (1, 2):
        return None
    if name == "Concatenate" and len(args) == 1 and isinstance(args[0], (list, tuple)) and args[0]:
        if not all(t is tensor for t in args[0]) or not _on_channel_axis(getattr(op, "axis", None), rank):
            return None
        return list(range(channels)) * len(args[0])
    if args[0] is not tensor:
        return None
    if name == "GetItem" and len(args) == 2:
        order = _channel_key(args[1], channels)
        return order if isinstance(order, list) else None
    if name == "Flip" and len(args) == 1 and getattr(op, "axis", None) in (-1, 3, (-1,), (3,), [-1], [3]):
        return list(range(channels))[::-1]
    repeats = getattr(op, "repeats", None)
    if name == "Repeat" and len(args) == 1 and _on_channel_axis(getattr(op, "axis", None), rank):
        counts = [repeats] * channels if isinstance(repeats, int) else repeats
        if isinstance(counts, (list, tuple)) and len(counts) == channels and all(isinstance(n, int) and n >= 1 for n in counts):
            return [c for c in range(channels) for _ in range(counts[c])]
    if name == "Tile" and len(args) == 1 and isinstance(repeats, (list, tuple)) and 1 <= len(repeats) <= rank:
        if all(isinstance(n, int) for n in repeats) and all(n == 1 for n in repeats[:-1]) and repeats[-1] >= 1:
            return list(range(channels)) * repeats[-1]
    return None


def _split_and_stack(found, users, channels: int):
    """keras.applications' preprocess_input in "caffe" mode on a Keras tensor (ResNet50, VGG): the channels taken one
    by one (``x[..., 2]``, ``x[..., 1]``, ``x[..., 0]``) and stacked again on the last axis. Returns (order, the ops,
    the stacked tensor), or None when the consumers of the tensor are anything else."""
    picks = []
    for op, node in found:
        args = node_arguments(node)[0]
        channel = _channel_key(args[1], channels) if _class_name(op) == "GetItem" and len(args) == 2 else None
        _, outs = node_tensors(node)
        if not isinstance(channel, int) or len(outs) != 1:
            return None
        picks.append((op, outs[0], channel))
    stacks = {id(op): (op, node) for t in (out for _, out, _ in picks) for op, node in users.get(id(t), [])}
    if len(picks) != channels or len(stacks) != 1:
        return None
    stack, node = next(iter(stacks.values()))
    args = node_arguments(node)[0]
    parts = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else []
    by_tensor = {id(out): channel for _, out, channel in picks}
    if _class_name(stack) != "Stack" or getattr(stack, "axis", None) not in (-1, 3) or len(parts) != channels:
        return None
    order = [by_tensor.get(id(t)) for t in parts]
    if sorted(o for o in order if o is not None) != list(range(channels)):
        return None
    _, outs = node_tensors(node)
    return order, [op for op, _, _ in picks] + [stack], outs[0]


def _mixes_channels(op, node, tensor, channels: int) -> bool:
    """A Keras op that makes one channel of all the channels of ``tensor``, a linear map of them: an RGB input made
    grayscale by ``keras.ops.image.rgb_to_grayscale`` or by their mean or sum (``keras.ops.mean(x, axis=-1,
    keepdims=True)``)."""
    args, kwargs = node_arguments(node)
    if kwargs or len(args) != 1 or args[0] is not tensor:
        return False
    name, rank = _class_name(op), len(tensor.shape)
    if name == "RGBToGrayscale":
        return channels == 3 and getattr(op, "data_format", "channels_last") == "channels_last"
    axis = getattr(op, "axis", None)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return name in ("Mean", "Sum") and bool(getattr(op, "keepdims", False)) and len(axes) == 1 and _on_channel_axis(axes[0], rank)


def _spatial_axes(axis, rank: int) -> list[int] | None:
    """``axis`` (an int or a sequence of them, as a Keras op records it) as axes of a rank-``rank`` tensor, or None
    when one of them is the batch or the channel axis."""
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if not axes or not all(isinstance(a, int) and not isinstance(a, bool) and -rank <= a < rank for a in axes):
        return None
    axes = [a % rank for a in axes]
    return axes if all(0 < a < rank - 1 for a in axes) else None


def _spatial_key(key, rank: int) -> bool:
    """``x[key]`` keeps the batch and the channel axes whole and only slices the others (``x[:, 4:-4, 4:-4]``, a
    centre crop; ``x[:, :, ::-1]``, a horizontal flip)."""
    if not isinstance(key, (tuple, list)) or not 2 <= len(key) <= rank or not all(isinstance(k, slice) for k in key):
        return False
    return key[0] == slice(None) and (len(key) < rank or key[-1] == slice(None))


def _moves_pixels(op, node, tensor) -> bool:
    """A Keras op on ``tensor`` that only moves or resamples the pixels of each channel (each output pixel a
    combination of input pixels with weights summing to one), which a per-channel affine map commutes with:
    ``keras.ops.image.resize`` (without padding) and ``crop_images``, ``keras.ops.flip``, ``rot90`` and ``transpose``
    over the image axes (test-time augmentation: the model averages its answers on the image and its mirror), and a
    slice of the image axes (``x[:, 4:-4, 4:-4]``)."""
    args, kwargs = node_arguments(node)
    if kwargs or not args or args[0] is not tensor:
        return False
    name, rank = _class_name(op), len(tensor.shape)
    if getattr(op, "data_format", "channels_last") != "channels_last" or rank < 3:
        return False
    if len(args) == 2:
        return name == "GetItem" and _spatial_key(args[1], rank)
    if len(args) != 1:
        return False
    if name == "Resize":
        return not getattr(op, "pad_to_aspect_ratio", True)
    if name == "CropImages":
        return True
    if name in ("Flip", "Rot90"):
        return _spatial_axes(getattr(op, "axis", getattr(op, "axes", None)), rank) is not None
    if name == "Transpose":
        axes = getattr(op, "axes", None)
        return isinstance(axes, (list, tuple)) and len(axes) == rank and axes[0] == 0 and axes[-1] in (-1, rank - 1)
    return False


def _is_float_cast(op, node, tensor) -> bool:
    """``keras.ops.cast(x, "float32")`` (or another float type) of ``tensor``: a model taking uint8 or float pixels
    casts them before its Rescaling; a float type holds every 8-bit pixel value exactly (bfloat16 too: 0..256)."""
    import keras

    args, kwargs = node_arguments(node)
    dtype = getattr(op, "dtype", None)
    if _class_name(op) != "Cast" or kwargs or len(args) != 1 or args[0] is not tensor or not isinstance(dtype, str):
        return False
    try:
        return bool(keras.backend.is_float_dtype(dtype))
    except ValueError:  # a dtype name this Keras does not know
        return False


def _is_normalizer(layer) -> bool:
    import keras

    return isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))


class _Walk:
    def __init__(self, channels: int):
        self.channels = channels
        self.layers: list[str] = []
        self.passed: list[str] = []
        self.scale = np.ones(channels)
        self.bias = np.zeros(channels)
        self.order = list(range(channels))  # output channel i of the chain is input channel order[i]
        self.composable = True
        self.normalizes = False  # a Rescaling, Normalization or arithmetic met, not only channel reorderings
        self.mixed = False  # the input's channels were mixed into one (an RGB input made grayscale)

    def reorder(self, order: list[int], paths: list[str]) -> None:
        """The channels reordered or copied (a grayscale input made RGB): ``self.channels`` becomes ``len(order)``."""
        self.scale, self.bias = self.scale[order], self.bias[order]
        self.order = [self.order[i] for i in order]
        self.channels = len(order)
        self.layers.extend(paths)

    def step(self, layer, prefix: str, node=None, tensor=None) -> str:
        """Account for one layer; returns "next" to go on, "stop" at the first layer that computes something."""
        import keras

        path = prefix + layer.name
        order = None if node is None else _channel_map(layer, node, tensor, self.channels)
        if order is not None:
            self.reorder(order, [path])
            return "next"
        if not isinstance(layer, keras.layers.Layer):  # a Keras op called on the tensor: an affine map of it or the end
            if _is_float_cast(layer, node, tensor) or _moves_pixels(layer, node, tensor):
                self.passed.append(path)
                return "next"
            if not self.normalizes and _mixes_channels(layer, node, tensor, self.channels):
                self.reorder([0], [path])  # one channel now, a mix of the input's: no longer one scale per channel
                self.mixed = True
                return "next"
            affine = _op_affine(layer, node, tensor, self.channels)
            if affine is None:
                return "stop"
            s, b = affine
            self.scale, self.bias = self.scale * s, self.bias * s + b
            self.layers.append(path)
            self.normalizes = True
            return "next"
        if _is_normalizer(layer):
            affine = _layer_affine(layer, self.channels)
            if affine is None:
                self.composable = False
            else:
                s, b = affine
                self.scale, self.bias = self.scale * s, self.bias * s + b
            self.layers.append(path)
            self.normalizes = True
            return "next"
        if _is_pass_through(layer):
            if _class_name(layer) != "InputLayer":
                self.passed.append(path)
            return "next"
        return "stop"

    def model(self, model, prefix: str) -> bool:
        """Walk ``model`` from its input; True when the whole model was passed (it only preprocesses)."""
        import keras

        if isinstance(model, keras.Sequential):
            for layer in model.layers:
                if not self._enter(layer, prefix):
                    return False
            return True
        inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
        if not inputs or not outputs or len(inputs) != 1 or len(outputs) != 1:
            return False  # several inputs or outputs, or a subclassed model (its call() is code: no graph to walk)
        users = consumers(model)
        return self._follow(users, inputs[0], id(outputs[0]), prefix)

    def _follow(self, users: dict, tensor, end: int, prefix: str, found: list | None = None) -> bool:
        """Walk from ``tensor`` (through ``found``, its consumers, when given) until the first layer that computes
        something (False) or the tensor ``end`` (True)."""
        while id(tensor) != end:
            found = users.get(id(tensor), []) if found is None else found
            layers = {id(layer): layer for layer, _ in found}
            if len(layers) != 1:
                split = _split_and_stack(found, users, self.channels)
                if split is None:
                    self._fork(users, tensor, end, prefix, found)
                    return False  # the input branches (or is unused): the search ends at the fork or in its branches
                order, ops, tensor = split
                self.reorder(order, [prefix + op.name for op in ops])
                found = None
                continue
            layer = next(iter(layers.values()))
            outs = {}  # a node taking the tensor several times (Concatenate()([x, x, x])) is listed once per input
            for _, node in found:
                ins, node_outs = node_tensors(node)
                if ins and all(t is tensor for t in ins) and len(node_outs) == 1:
                    outs[id(node_outs[0])] = node_outs[0]
            nexts = [t for t in outs.values() if id(t) == end or id(t) in users]
            if len(nexts) != 1 or not self._enter(layer, prefix, found[0][1], tensor):
                return False
            tensor, found = nexts[0], None
        return True

    def _fork(self, users: dict, tensor, end: int, prefix: str, found: list) -> None:
        """The tensor feeds several layers (test-time augmentation: a classifier called on the image and on its
        mirror, the two answers averaged). Each branch is walked on its own; when every branch meets the same
        normalisation (the same per-channel scale and bias after the same channel order) before its first
        computation, that is the model's preprocessing of every pixel it reads. A branch that computes on the
        unnormalised pixels (a skip connection of the raw input), or reaches the output, leaves the walk at the fork."""
        ends = []
        for key in dict.fromkeys(id(layer) for layer, _ in found):
            branch = self.copy()
            if branch._follow(users, tensor, end, prefix, [(layer, node) for layer, node in found if id(layer) == key]):
                return  # the output is a preprocessed copy of the input: not a classifier's path
            ends.append(branch)
        first = ends[0]
        if not first.normalizes or not all(first.same_normalisation(b) for b in ends[1:]):
            return
        for b in ends:
            self.layers.extend(p for p in b.layers if p not in self.layers)
            self.passed.extend(p for p in b.passed if p not in self.passed)
        self.scale, self.bias, self.order, self.channels = first.scale, first.bias, first.order, first.channels
        self.composable, self.normalizes, self.mixed = first.composable, first.normalizes, first.mixed

    def copy(self) -> _Walk:
        new = _Walk(self.channels)
        new.layers, new.passed, new.order = list(self.layers), list(self.passed), list(self.order)
        new.scale, new.bias = self.scale.copy(), self.bias.copy()
        new.composable, new.normalizes, new.mixed = self.composable, self.normalizes, self.mixed
        return new

    def same_normalisation(self, other: _Walk) -> bool:
        return (
            self.order == other.order
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.bias, other.bias)
            and (self.composable, self.normalizes, self.mixed) == (other.composable, other.normalizes, other.mixed)
        )

    def _enter(self, layer, prefix: str, node=None, tensor=None) -> bool:
        if _is_model(layer):
            return self.model(layer, f"{prefix}{layer.name}/")
        return self.step(layer, prefix, node, tensor) == "next"


def detect_preprocessing(model) -> InModelPreprocessing:
    """The Rescaling/Normalization chain the input passes before any other computation, composed per channel."""
    channels = int(model.inputs[0].shape[-1]) if model.inputs and model.inputs[0].shape[-1] else 3
    walk = _Walk(channels)
    walk.model(model, "")
    if not walk.normalizes:  # channels reordered or copied, then computation: the model does not normalise its pixels
        return InModelPreprocessing(passed=tuple(walk.passed))
    if walk.mixed:
        return InModelPreprocessing(
            tuple(walk.layers),
            tuple(walk.passed),
            note="the model mixes its input channels into one (grayscale from RGB) before this, so the chain is not "
            "one scale and bias per input channel; the exported files take RGB pixels, and the model still receives "
            "raw pixels",
        )
    if not walk.composable:
        return InModelPreprocessing(
            tuple(walk.layers),
            tuple(walk.passed),
            note="a layer's scale or mean varies along an axis other than the channels, so "
            "the chain is not one value per channel; the model still receives raw pixels",
        )
    note = ""
    if channels == 1 and walk.order != [0]:
        note = (
            f"the model copies its one (grayscale) input channel into {len(walk.order)} before this scale and bias, "
            "which are per channel after the copy; the exported files take one-channel pixels, as the model does"
        )
    elif sorted(walk.order) != list(range(channels)):
        note = (
            f"the model takes channels {walk.order} of its {channels} input channels before this scale and bias, which "
            "are per channel of what it takes; the exported files take RGB pixels, as the model does"
        )
    elif walk.order != list(range(channels)):
        order = "BGR ([2, 1, 0])" if walk.order == list(range(channels))[::-1] else str(walk.order)
        note = (
            f"the model reorders its input channels to {order} before this scale and bias, which are per channel "
            "after the reordering; the exported files take RGB pixels, as the model does"
        )
    return InModelPreprocessing(
        tuple(walk.layers), tuple(walk.passed), tuple(float(v) for v in walk.scale), tuple(float(v) for v in walk.bias), note
    )


# ------------------------------------------------------------------------------------------------ no-op layers
@dataclass(frozen=True)
class RemovedLayer:
    layer: str  # path, e.g. "backbone/random_flip"
    class_name: str
    exported_as: str  # "identity" or the stock layer that reproduces it at inference

    def to_dict(self) -> dict:
        return {"layer": self.layer, "class": self.class_name, "exported_as": self.exported_as}


# clone_model rebuilds these graph models; a subclassed model's call() is code, so its layers cannot be rewired.
_REBUILDABLE_MODELS = ("Functional", "Sequential")


def _noop_layers(model, prefix: str = "") -> list[tuple[str, Any]]:
    """(path, layer) of every inference no-op inside ``model`` and its nested Functional/Sequential models."""
    found: list[tuple[str, Any]] = []
    if _class_name(model) not in _REBUILDABLE_MODELS:
        return found  # subclassed: left as it is (Keras runs its Dropout-like layers as the identity when exported)
    for layer in getattr(model, "layers", []):
        if _is_model(layer):
            found.extend(_noop_layers(layer, f"{prefix}{layer.name}/"))
        elif _class_name(layer) in INFERENCE_NOOP_CLASSES:
            found.append((prefix + layer.name, layer))
    return found


# The side given to an axis of unknown size (a nested model built for any image size, Input((None, None, 3))) when a
# no-op layer is probed: what these layers do at inference does not depend on the image size, RandomCrop's crop aside,
# so a probe of at least the crop size shows it.
PROBE_SIDE = 32


_IDENTITY: list[type] = []


def identity_class() -> type:
    """keras.layers.Identity that also takes the ``training`` argument the removed layer was called with: a nested
    model built for any image size re-runs its graph with each node's recorded arguments when it is called on a fixed
    size, and stock Identity refuses ``training``."""
    if not _IDENTITY:
        import keras

        class Identity(keras.layers.Identity):  # the same name: code that matches layers by class name sees an Identity
            def call(self, inputs, training=None):
                return inputs

            def compute_output_spec(self, inputs, training=None):
                return super().compute_output_spec(inputs)

        _IDENTITY.append(Identity)
    return _IDENTITY[0]


def _probe_sides(layer, dims) -> tuple[int, ...]:
    least = max(PROBE_SIDE, int(getattr(layer, "height", 0) or 0), int(getattr(layer, "width", 0) or 0))
    return tuple(int(d) if d is not None else least for d in dims)


def _replacement(path: str, layer):
    """The stock layer that computes what ``layer`` computes at inference, with a description; checked on a probe."""
    import keras

    shape = first_input_shape(layer)
    if shape is None or len(shape) < 2 or shape[-1] is None:
        raise ConversionError(
            f"layer {path!r} ({_class_name(layer)}) has no known input shape, so the exporter cannot check what it computes at inference"
        )
    probe = np.random.default_rng(0).uniform(0, 255, size=(1, *_probe_sides(layer, shape[1:]))).astype("float32")
    out = np.asarray(layer(probe, training=False))
    if out.shape == probe.shape and np.array_equal(out, probe):
        return identity_class()(name=layer.name), "identity"
    if _class_name(layer) == "RandomCrop":
        # Keras documents a centre crop to the target aspect ratio and a resize at inference (older releases do it)
        crop = keras.layers.Resizing(layer.height, layer.width, crop_to_aspect_ratio=True, name=layer.name)
        want = np.asarray(crop(probe))
        if want.shape == out.shape and np.abs(want - out).max() <= RESIZE_EQUIVALENCE_TOLERANCE * 255:
            return crop, f"Resizing({layer.height}, {layer.width}, crop_to_aspect_ratio=True)"
    raise ConversionError(
        f"layer {path!r} ({_class_name(layer)}) changes its input at inference in this Keras "
        "version, so it cannot be exported as the identity"
    )


def strip_inference_noops(model) -> tuple[Any, list[RemovedLayer]]:
    """A new model without the layers that do nothing at inference (the same object when there are none).

    Layers are shared with ``model`` (no weights are copied); nested Functional and Sequential models are rebuilt
    recursively."""
    import keras

    found = _noop_layers(model)
    if not found:
        return model, []
    replacements: dict[int, Any] = {}
    removed = []
    for path, layer in found:
        if id(layer) not in replacements:
            new, how = _replacement(path, layer)
            replacements[id(layer)] = new
            removed.append(RemovedLayer(path, _class_name(layer), how))

    def clone(layer):
        return replacements.get(id(layer), layer)

    try:
        stripped = keras.models.clone_model(model, clone_function=clone, recursive=True)
    except ValueError as exc:  # a subclassed model, or shapes that only held with the layer's training-time output
        raise ConversionError(
            f"could not rebuild the model without its inference no-op layers "
            f"({', '.join(r.layer for r in removed)}): {str(exc).strip().splitlines()[0][:300]}"
        ) from exc
    return stripped, removed
