"""What the model's output is, and the head the export appends to make it a probability vector.

Four cases, decided from the output width, the last layer's activation and the ``add_softmax`` option:

- ``probabilities``: N >= 2 outputs that already are probabilities; nothing is appended.
- ``logits``: N >= 2 logits (a model trained with ``from_logits=True``); with ``add_softmax`` a Softmax is appended.
- ``sigmoid``: one sigmoid unit p (a binary classifier); the export outputs ``[1 - p, p]`` over two labels.
- ``logit``: one logit z; with ``add_softmax`` the export outputs ``[1 - sigmoid(z), sigmoid(z)]``.

The head is appended in Keras, from stock layers, before conversion, so every exported file and the Keras reference
that validation compares them with compute the same thing. ``check_outputs`` probes the model on pixels in the
contract's real range and refuses a model whose output does not fit the case.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MAX_CAUSE_CHARS, NotAClassifierError
from .preprocessing import Preprocessing

# Softmax rows sum to 1 up to float32 rounding over a few thousand classes; anything further off is not a softmax.
PROBABILITY_SUM_TOLERANCE = 1e-3
# A sigmoid output lies in [0, 1]; float32 rounding cannot push it further out than this.
SIGMOID_RANGE_TOLERANCE = 1e-6
# Probe images: random pixels plus an all-black and an all-white image, so both ends of the pixel range are seen.
PROBE_RANDOM_IMAGES = 4
PROBE_SEED = 0
# Last activations whose outputs a softmax turns into the model's class probabilities: none (logits), log_softmax
# (softmax(log_softmax(z)) = softmax(z)), an activation the layers do not show (None), and softmax itself, which
# check_outputs refuses with its own reason (already probabilities).
LOGIT_ACTIVATIONS = ("linear", "log_softmax", "softmax", None)
ADD_SOFTMAX_HINT = "if it ends in logits (trained with from_logits=True), pass --add-softmax (add_softmax=True)"


@dataclass(frozen=True)
class Head:
    output: str  # "probabilities", "logits", "sigmoid" or "logit": what the Keras model itself outputs
    units: int  # width of the Keras model's output
    add_softmax: bool = False

    @property
    def classes(self) -> int:
        return 2 if self.units == 1 else self.units

    @property
    def appended(self) -> str:
        return {"probabilities": "none", "logits": "softmax", "sigmoid": "[1 - p, p]", "logit": "sigmoid, then [1 - p, p]"}[self.output]

    def to_dict(self) -> dict:
        return {"model_output": self.output, "units": self.units, "appended": self.appended, "add_softmax": self.add_softmax}


def final_activation(model) -> str | None:
    """The activation of the layer that produces the model's output ("sigmoid", "softmax", "linear", ...), following
    nested models; None when it cannot be read from the layer (a SavedModel, a layer without an activation)."""
    import keras

    layer = model
    while isinstance(layer, keras.Model):
        if isinstance(layer, keras.Sequential):
            if not layer.layers:
                return None
            layer = layer.layers[-1]
            continue
        try:  # the saved-config form: [name, node, tensor] for one output, a list or a dict of those for several
            outputs = layer.get_config().get("output_layers") or []
            if isinstance(outputs, dict):  # Model(inputs, {"probs": x})
                outputs = list(outputs.values())
            if outputs and isinstance(outputs[0], str):
                outputs = [outputs]
            if len(outputs) != 1:
                return None
            layer = layer.get_layer(outputs[0][0])
        except (NotImplementedError, TypeError, ValueError, AttributeError, IndexError):
            return None
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None or not callable(activation):
        return None
    name = keras.activations.serialize(activation)
    return name if isinstance(name, str) else None


def plan(units: int, activation: str | None, add_softmax: bool, path: Path | str) -> Head:
    """The head for a model with ``units`` outputs whose last activation is ``activation``."""
    if units >= 2:
        if activation == "sigmoid":
            raise NotAClassifierError(
                f"the model ends in {units} sigmoid units, a multi-label head (each unit its own probability), not one "
                "probability vector over its classes; a softmax over them would not give the model's answers",
                path=path,
                hint="the exporter takes single-label classifiers (softmax, or logits with --add-softmax) and binary ones "
                "ending in Dense(1, activation='sigmoid')",
            )
        if add_softmax and activation not in LOGIT_ACTIVATIONS:
            raise NotAClassifierError(
                f"--add-softmax was given but the model's last activation is {activation!r}: its outputs are not logits, "
                "and a softmax over them would not be the model's class probabilities",
                path=path,
            )
        return Head("logits" if add_softmax else "probabilities", units, add_softmax)
    if activation == "sigmoid":
        if add_softmax:
            raise NotAClassifierError(
                "the model ends in one sigmoid unit, which already is a probability; --add-softmax would squash it a second time",
                path=path,
                hint="drop --add-softmax: it is exported as [1 - p, p] over two labels",
            )
        return Head("sigmoid", 1)
    if activation in ("linear", None):
        if add_softmax:
            return Head("logit", 1, True)
        if activation == "linear":
            raise NotAClassifierError(
                "the model ends in one unit without an activation (a logit), not a probability",
                path=path,
                hint="pass --add-softmax (add_softmax=True) to export [1 - sigmoid(z), sigmoid(z)] over two labels",
            )
        return Head("sigmoid", 1)  # cannot be read from the layers: check_outputs verifies it lies in [0, 1]
    raise NotAClassifierError(
        f"the model ends in one unit with activation {activation!r}, which is not a "
        "probability; a binary classifier ends in Dense(1, activation='sigmoid')",
        path=path,
    )


# the layers with_head appends, by name
HEAD_LAYERS = ("exporter_softmax", "exporter_sigmoid", "exporter_one_minus_p", "exporter_binary")


def with_head(model, head: Head):
    """``model`` followed by the head's appended layers (the same object when nothing is appended)."""
    import keras

    if head.output == "probabilities":
        return model
    from .convert.prologue import named_apart

    model = named_apart(model, "image", *HEAD_LAYERS)
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="image")
    x = model(inputs)
    if head.output == "logits":
        x = keras.layers.Softmax(name="exporter_softmax")(x)
    else:
        if head.output == "logit":
            x = keras.layers.Activation("sigmoid", name="exporter_sigmoid")(x)
        complement = keras.layers.Rescaling(scale=-1.0, offset=1.0, name="exporter_one_minus_p")(x)
        x = keras.layers.Concatenate(axis=-1, name="exporter_binary")([complement, x])
    return keras.Model(inputs, x, name=model.name)


def probe_pixels(pre: Preprocessing) -> np.ndarray:
    """uint8 NHWC probe images at the contract's size: random pixels, all black, all white."""
    h, w = pre.input_size
    rng = np.random.default_rng(PROBE_SEED)
    random = rng.integers(0, 256, size=(PROBE_RANDOM_IMAGES, h, w, pre.channels), dtype=np.uint8)
    ends = np.stack([np.zeros((h, w, pre.channels), np.uint8), np.full((h, w, pre.channels), 255, np.uint8)])
    return np.concatenate([random, ends])


def _is_probability_rows(values: np.ndarray) -> bool:
    return bool((values >= 0).all() and np.allclose(values.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE))


# A model whose Input has batch_shape=(N, ...) and whose graph depends on it (a Reshape to (N, -1)) runs on batches of N
# images only: the exported files, validation and the probe above run other batch sizes.
FIXED_BATCH_HINT = (
    "its input has a fixed batch size of {batch} (batch_shape); rebuild it with keras.Input(shape=(height, width, "
    "channels)) and load its weights (save_weights / load_weights), so that it runs on any number of images"
)


def _keras_reason(exc: BaseException) -> str:
    """The line of a Keras error message that says what went wrong (Keras puts "Exception encountered when calling
    ..." first, and colours its lines with terminal escapes)."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(("Exception encountered", "Arguments received"))]
    return (reasons[0] if reasons else type(exc).__name__)[:MAX_CAUSE_CHARS]


def check_outputs(model, head: Head, pre: Preprocessing, path: Path | str) -> None:
    """Run the model as loaded (before the head) on probe images through the contract and check its output is what
    ``head`` says: probabilities, logits that are not already probabilities, or a sigmoid in [0, 1]."""
    from .keras_memory import activation_bytes, call_in_chunks

    pixels = probe_pixels(pre)
    per_image = activation_bytes(model, path, error=NotAClassifierError)  # the probe's calls stay within the budget
    try:
        raw = np.asarray(call_in_chunks(model, pre.normalize(pixels), per_image, training=False), dtype=np.float64)
    except Exception as exc:  # Keras raises ValueError, TypeError or a backend error for a graph that cannot run
        inputs = list(getattr(model, "inputs", None) or ())
        batch = inputs[0].shape[0] if len(inputs) == 1 else None
        raise NotAClassifierError(
            f"Keras could not run the model on a batch of {len(pixels)} probe images: {_keras_reason(exc)}",
            path=path,
            hint=None if batch is None else FIXED_BATCH_HINT.format(batch=batch),
        ) from exc
    if not np.isfinite(raw).all():
        raise NotAClassifierError("the model outputs NaN or infinity on pixels in its input range", path=path)
    sums = raw.sum(axis=1)
    where = "on pixels in the contract's range"
    if head.output == "probabilities" and not _is_probability_rows(raw):
        raise NotAClassifierError(
            f"model output is not a probability vector {where} (rows sum to {sums.round(4).tolist()}, min {raw.min():.3g})",
            path=path,
            hint=ADD_SOFTMAX_HINT,
        )
    if head.output == "logits" and _is_probability_rows(raw):
        raise NotAClassifierError(
            f"--add-softmax was given but the model already outputs probabilities {where} "
            "(rows sum to 1); a second softmax would flatten them",
            path=path,
            hint="drop --add-softmax",
        )
    if head.output == "sigmoid" and ((raw < -SIGMOID_RANGE_TOLERANCE).any() or (raw > 1 + SIGMOID_RANGE_TOLERANCE).any()):
        raise NotAClassifierError(
            f"the model's single output is not a probability {where} (it ranges from {raw.min():.3g} to {raw.max():.3g})",
            path=path,
            hint="if it is a logit, pass --add-softmax (add_softmax=True)",
        )


def recorded_add_softmax(manifest: dict) -> bool:
    """Whether the export was made with ``add_softmax`` (manifest ``inference_model.head.add_softmax``), so that a
    later validation or golden run builds the same Keras reference. Manifests written before it existed: False."""
    section = manifest.get("inference_model") if isinstance(manifest, dict) else None
    head = section.get("head") if isinstance(section, dict) else None
    return isinstance(head, dict) and head.get("add_softmax") is True


def recorded_output(manifest: dict) -> str | None:
    """The model output the export was made from (manifest ``inference_model.output``, written for a model with
    several outputs), so that a later validation or golden run loads the same one. Manifests without it: None."""
    section = manifest.get("inference_model") if isinstance(manifest, dict) else None
    output = section.get("output") if isinstance(section, dict) else None
    return output if isinstance(output, str) else None
