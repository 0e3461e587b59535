"""The preprocessing contract: one object, declared once (or detected from the model), that every backend reads.

A model's input is ``y[c] = x[c] * scale[c] + bias[c]`` where ``x`` is the 8-bit pixel (0..255) in ``channel_order``
after resizing to ``input_size`` by ``resize`` with ``interpolation``. Mean/std normalisation is the same thing with
``scale = 1/std`` and ``bias = -mean/std``. When the Keras model starts with its own Rescaling/Normalization layers,
``in_model`` is true and the exported files feed it raw pixels (scale 1, bias 0): the preprocessing is never applied
twice.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .safety import MAX_TEXT_BYTES, load_json, quote, read_regular

CHANNEL_ORDERS = ("RGB", "BGR", "L")
RESIZE_POLICIES = ("stretch", "center_crop")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic")
CONTRACT_VERSION = 1
# Image sides the contract accepts: below 8 px no classifier in the field works (Core ML image inputs and Vision
# crops degenerate), above 4096 px one float32 RGB input is 200 MB before the model runs.
MIN_SIDE, MAX_SIDE = 8, 4096
# keras.applications' preprocess_input modes (keras/src/applications/imagenet_utils.py), by name.
PRESETS = ("tf", "torch", "caffe", "raw")
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # "torch": on [0, 1] pixels
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # "caffe": on 0..255 pixels, after RGB -> BGR


# Every backend computes in float32 (Core ML image scale, ONNX prologue, the numpy reference): a value must stay
# finite there, not only as a Python float (1e39 is a finite double and inf in float32).
FLOAT32_MAX = 3.4028234663852886e38
# Half the smallest float32 subnormal: a value of smaller magnitude rounds to 0 in the float32 the files compute in.
FLOAT32_ZERO_BELOW = 2.0**-150


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _as_floats(name: str, value: Any, channels: int) -> tuple[float, ...]:
    if _is_number(value):
        value = [value] * channels
    if not isinstance(value, (list, tuple)) or not all(_is_number(v) for v in value):
        raise ConfigError(f"preprocessing {name} must be a number or a list of {channels} numbers, got {quote(value)}")
    try:
        values = tuple(float(v) for v in value)
    except OverflowError as exc:
        raise ConfigError(f"preprocessing {name} must be finite in float32, got {quote(value)}") from exc
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ConfigError(f"preprocessing {name} must have {channels} values (one per channel), got {len(values)}")
    if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in values):
        raise ConfigError(f"preprocessing {name} must be finite in float32 (|x| <= {FLOAT32_MAX:.4g}), got {quote(list(values))}")
    return values


@dataclass(frozen=True)
class Preprocessing:
    """How raw 8-bit pixels become the model's input. Checked on construction."""

    input_size: tuple[int, int]  # (height, width)
    channel_order: str = "RGB"
    scale: tuple[float, ...] = (1.0,)  # one value applies to every channel (a grayscale contract has one)
    bias: tuple[float, ...] = (0.0,)
    resize: str = "stretch"
    interpolation: str = "bilinear"
    in_model: bool = False
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        size = tuple(self.input_size) if isinstance(self.input_size, (list, tuple)) else None
        if size is None or len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
            raise ConfigError(f"preprocessing input_size must be [height, width] integers, got {self.input_size!r}")
        if not all(MIN_SIDE <= s <= MAX_SIDE for s in size):
            raise ConfigError(f"preprocessing input_size must be between {MIN_SIDE} and {MAX_SIDE} pixels, got {list(size)}")
        object.__setattr__(self, "input_size", size)
        if self.channel_order not in CHANNEL_ORDERS:
            raise ConfigError(f"preprocessing channel_order must be one of {list(CHANNEL_ORDERS)}, got {self.channel_order!r}")
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"preprocessing resize must be one of {list(RESIZE_POLICIES)}, got {self.resize!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"preprocessing interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}")
        scale = _as_floats("scale", self.scale, self.channels)
        bias = _as_floats("bias", self.bias, self.channels)
        if any(abs(s) <= FLOAT32_ZERO_BELOW for s in scale):  # 1e-320 is not 0.0, but it is 0 in float32
            raise ConfigError(f"preprocessing scale must not be zero in float32 (every pixel would become the bias), got {scale}")
        if self.in_model and (any(s != 1.0 for s in scale) or any(b != 0.0 for b in bias)):
            raise ConfigError(
                "preprocessing with in_model=true must have scale 1 and bias 0: the model normalises pixels itself, "
                "so a second scale/bias would apply it twice"
            )
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "bias", bias)
        if not isinstance(self.notes, str):
            raise ConfigError(f"preprocessing notes must be a string, got {type(self.notes).__name__}")
        if not isinstance(self.in_model, bool):
            raise ConfigError(f"preprocessing in_model must be true or false, got {self.in_model!r}")

    # ---- derived views -------------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "L" else 3

    @property
    def uniform_scale(self) -> bool:
        return len(set(self.scale)) == 1

    @property
    def is_identity(self) -> bool:
        return all(s == 1.0 for s in self.scale) and all(b == 0.0 for b in self.bias)

    @classmethod
    def from_mean_std(cls, input_size, mean, std, **kw) -> Preprocessing:
        """``(x - mean) / std`` on 0..255 pixels, per channel."""
        channels = 1 if kw.get("channel_order") == "L" else 3
        mean = _as_floats("mean", mean, channels)
        std = _as_floats("std", std, channels)
        if any(abs(s) <= FLOAT32_ZERO_BELOW for s in std):
            raise ConfigError(f"preprocessing std must not be zero in float32, got {std}")
        return cls(
            input_size=input_size,
            scale=tuple(1.0 / s for s in std),
            bias=tuple(-m / s for m, s in zip(mean, std, strict=True)),
            **kw,
        )

    @classmethod
    def preset(cls, name: str, input_size, channels: int = 3) -> Preprocessing:
        """The contract of keras.applications' ``preprocess_input(x, mode=name)`` for a model of this size:
        ``tf`` x/127.5 - 1; ``torch`` x/255 then ImageNet mean/std; ``caffe`` RGB -> BGR then minus the ImageNet
        mean; ``raw`` pixels unchanged."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preprocessing preset {name!r}; valid presets are {list(PRESETS)} (or give a JSON file)")
        order = "L" if channels == 1 else "RGB"
        notes = f"preset {name}: keras.applications preprocess_input(mode={name!r})"
        if name in ("torch", "caffe") and channels != 3:
            raise ConfigError(f"preprocessing preset {name!r} is defined for RGB images, but the model input has {channels} channel(s)")
        if name == "tf":
            return cls(input_size, channel_order=order, scale=(1 / 127.5,) * channels, bias=(-1.0,) * channels, notes=notes)
        if name == "torch":
            return cls.from_mean_std(input_size, [255 * m for m in IMAGENET_MEAN_RGB], [255 * s for s in IMAGENET_STD_RGB], notes=notes)
        if name == "caffe":
            return cls(input_size, channel_order="BGR", scale=(1.0,) * 3, bias=tuple(-m for m in CAFFE_MEAN_BGR), notes=notes)
        return cls(input_size, channel_order=order, notes=notes)

    # ---- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["scale"] = list(self.scale)
        d["bias"] = list(self.bias)
        d["version"] = CONTRACT_VERSION
        if not d["notes"]:
            del d["notes"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "preprocessing") -> Preprocessing:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("version", CONTRACT_VERSION)
        if version != CONTRACT_VERSION:
            raise ConfigError(f"{source}: contract version must be {CONTRACT_VERSION}, got {version!r}")
        mean, std = data.pop("mean", None), data.pop("std", None)
        known = {"input_size", "channel_order", "scale", "bias", "resize", "interpolation", "in_model", "notes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown preprocessing keys {unknown}; known keys are {sorted(known | {'mean', 'std'})}")
        if "input_size" not in data:
            raise ConfigError(f"{source}: input_size is required")
        try:
            if mean is not None or std is not None:
                if "scale" in data or "bias" in data:
                    raise ConfigError(f"{source}: give either mean/std or scale/bias, not both")
                return cls.from_mean_std(data.pop("input_size"), mean if mean is not None else 0.0, std if std is not None else 1.0, **data)
            return cls(**data)
        except ConfigError as exc:
            if str(exc).startswith(source):
                raise
            raise ConfigError(f"{source}: {exc}") from exc
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> Preprocessing:
        path = Path(path)
        raw = read_regular(path, error=ConfigError, what="preprocessing file", max_bytes=MAX_TEXT_BYTES)
        data = load_json(raw, path=path, error=ConfigError, what="preprocessing file")
        return cls.from_dict(data, source=str(path))

    # ---- the numpy reference ---------------------------------------------------------------------------------
    def normalize(self, pixels):
        """uint8 NHWC pixels (already resized, in channel_order) -> the float32 tensor the Keras model expects."""
        import numpy as np

        x = np.asarray(pixels, dtype=np.float32)
        if self.in_model:
            return x
        return x * np.asarray(self.scale, np.float32) + np.asarray(self.bias, np.float32)


def declared_contract(value, input_shape: tuple[int, int, int]) -> Preprocessing | None:
    """The contract the user gave: a Preprocessing, a dict, a preset name (``tf``, ``torch``, ``caffe``, ``raw``,
    sized from the model's ``input_shape``), a JSON file path, or None."""
    import os

    if value is None or isinstance(value, Preprocessing):
        return value
    if isinstance(value, dict):
        return Preprocessing.from_dict(value)
    if isinstance(value, str) and value in PRESETS:
        h, w, c = input_shape
        return Preprocessing.preset(value, (h, w), c)
    if isinstance(value, (str, os.PathLike)):
        return Preprocessing.from_file(Path(value))
    raise ConfigError(f"preprocessing must be a preset {list(PRESETS)}, a JSON file, a dict or a Preprocessing, got {type(value).__name__}")


def resolve(
    declared: Preprocessing | None, input_shape: tuple[int, int, int], in_model_layers: list[str], *, source: str = "model"
) -> Preprocessing:
    """The one contract for this model: the declared one checked against the model, or the one the model's own
    Rescaling/Normalization layers imply. Never both: that would normalise twice."""
    h, w, c = input_shape
    if declared is None:
        if not in_model_layers:
            raise ConfigError(
                f"{source}: no preprocessing declared and the model has no Rescaling or Normalization "
                "layer (or arithmetic on constants) on its input path (nested models included); pass --preprocessing "
                f"with a preset ({'|'.join(PRESETS)}) or a JSON file with its scale and bias (or preprocessing=...); "
                "raw if the model normalises its pixels some other way"
            )
        return Preprocessing(
            (h, w), channel_order="RGB" if c == 3 else "L", in_model=True, notes=f"detected in the model: {', '.join(in_model_layers)}"
        )
    if declared.input_size != (h, w):
        raise ConfigError(f"{source}: preprocessing input_size {list(declared.input_size)} does not match the model input {[h, w]}")
    if declared.channels != c:
        raise ConfigError(
            f"{source}: preprocessing channel_order {declared.channel_order} has {declared.channels} channel(s) but the model input has {c}"
        )
    if in_model_layers and not declared.in_model:
        if declared.is_identity:  # "feed raw pixels" is what in_model means: nothing is applied twice
            return Preprocessing(
                declared.input_size,
                channel_order=declared.channel_order,
                resize=declared.resize,
                interpolation=declared.interpolation,
                in_model=True,
                notes=f"detected in the model: {', '.join(in_model_layers)}",
            )
        raise ConfigError(
            f"{source}: the model normalises pixels itself ({', '.join(in_model_layers)}), and the "
            f"declared scale {list(declared.scale)} / bias {list(declared.bias)} would normalise them "
            "a second time; omit --preprocessing or declare in_model: true"
        )
    if declared.in_model and not in_model_layers:
        raise ConfigError(
            f"{source}: preprocessing says in_model but the model has no Rescaling or Normalization "
            "layer on its input path (nested models included); declare its scale and bias instead"
        )
    return declared
